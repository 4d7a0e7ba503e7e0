"""VGGT4D projection refinement of a coarse dynamic mask (the official stage, batched on the device).

The coarse mask from the attention cues is blobby: it leaks onto static background and misses thin parts of
moving objects. Refinement tests every dynamic region for *multi-view consistency*: a static surface re-projects
onto itself in the other frames (same depth, same colour), a moving one does not.

Steps (``S`` frames of ``H x W``), as the reference implementation runs them:

1. **Back-projection** from pixel centres: ``X_cam = K^-1 (u + 0.5, v + 0.5, 1) * depth``,
   ``X_world = R^T (X_cam - t)`` for the world-to-camera extrinsic ``[R | t]``.
2. **Statistical outliers** (Open3D's ``remove_statistical_outlier(20, 2.5)``) on the frame's valid points:
   the mean distance of a point to its ``outlier_neighbors`` nearest points of the **whole frame** (the point
   itself, at distance 0, counts as one); the frame's mean ``m`` and sample std ``sd`` of these distances over
   the points with a non-zero mean distance; a point is an inlier iff ``0 < d < m + outlier_std_ratio * sd``.
   Only the coarse-mask points need a label, so only they and the statistics need neighbours: the
   statistics come from ``stats_sample`` valid points per frame drawn without replacement by a generator
   seeded with ``seed`` (``stats_sample = 0``: from every point, Open3D exactly, at the cost of every point's
   neighbours). Neighbours are exact: SciPy ``cKDTree`` per frame on the CPU (``neighbor_search="kdtree"``,
   the default for CPU data) or blocked ``cdist`` + ``topk`` on the device (``"torch"``, the default
   elsewhere); no ``N x N`` matrix is held. On the stage fixtures the sampled statistics give Open3D's
   outlier set on every coarse-mask point (``test/test_stage_parity.py``).
3. **Clustering.** Dynamic points = coarse-mask inliers. Per frame, k-means (``num_clusters``, seed
   ``kmeans_seed``, :func:`vggt4d_ros.dynamic.kmeans.batched_kmeans`, all frames at once) on their xyz. Steps 2
   and 3 only use distances within a frame, which a rigid camera motion keeps, so they run on camera-frame
   points and need no pose (:func:`cluster_dynamic_points`; VGGT4D runs them while pass 2 estimates the poses).
4. **Projection test.** Every dynamic point is projected into every *other* frame ``j`` (``u, v`` in pixels
   with ``K_j``); samples use ``grid_sample(align_corners=True)`` at ``u / (W - 1) * 2 - 1``: nearest for
   depth, bilinear then ``> 0.5`` for the coarse mask, bilinear for colour. A projection *counts* when
   ``0 < u < W``, ``0 < v < H``, ``z > 0``, the target pixel is static in frame ``j``'s coarse mask and
   ``z - depth_tolerance < D_j`` (absolute units). A cluster with fewer than ``min_visible_fraction`` of its
   ``size x (S - 1)`` projections counted stays dynamic (its losses are reported as ``1e10``); otherwise
   ``depth_loss = mean |z - D_j|``, ``rgb_loss = mean sum_c |rgb_src - rgb_j|`` over the counted projections,
   ``total = depth_loss + rgb_loss / 3``, and the cluster stays dynamic iff ``total > dynamic_threshold``.
5. **Morphology.** The kept clusters' pixels are closed with a ``close_kernel`` ellipse, then dilated with a
   ``dilate_kernel`` square (one iteration each, OpenCV conventions: :mod:`vggt4d_ros.dynamic.morphology`).

Pixels in the coarse mask without valid depth (non-finite, ``<= 0`` or, with ``conf`` given, confidence
``<= min_confidence``) take no part in steps 2-4 and stay dynamic (no evidence against them). Everything runs in
torch on the depth's device (except the ``"kdtree"`` search, CPU); no per-point or per-cluster Python loops.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .kmeans import batched_kmeans
from .morphology import binary_close, binary_dilate, ellipse_kernel, square_kernel

__all__ = ["NO_EVIDENCE_LOSS", "RefineConfig", "cluster_dynamic_points", "refine_dynamic_mask", "statistical_outliers"]

logger = logging.getLogger(__name__)

#: Loss reported for a cluster with too few counted projections (it stays dynamic), as in the reference.
NO_EVIDENCE_LOSS = 1e10


@dataclass(frozen=True)
class RefineConfig:
    """Parameters of :func:`refine_dynamic_mask` (defaults: the reference implementation's).

    Attributes:
        enabled: if False, :func:`refine_dynamic_mask` returns the coarse mask unchanged (no morphology).
        outlier_neighbors: neighbours of the statistical outlier test, the point itself included (0 disables it).
        outlier_std_ratio: inliers have a mean neighbour distance below ``mean + ratio * std``.
        neighbor_search: ``"auto"`` (``"kdtree"`` on the CPU, ``"torch"`` elsewhere), ``"kdtree"`` or ``"torch"``.
        stats_sample: points per frame behind the outlier statistics (0: every point, Open3D exactly).
        num_clusters: k-means clusters per frame.
        kmeans_seed: k-means ``RandomState`` seed (the reference uses ``random_state=42``).
        kmeans_iters: maximum Lloyd iterations.
        min_visible_fraction: minimum fraction of counted projections for a cluster to be judged.
        dynamic_threshold: total loss above which a cluster stays dynamic.
        depth_tolerance: absolute slack of the visibility test ``z - tol < D``.
        close_kernel: size of the elliptical closing kernel (odd; 1 disables the closing).
        dilate_kernel: size of the square dilation kernel (odd; 1 disables the dilation).
        min_confidence: with ``conf`` given, pixels with ``conf <= min_confidence`` count as invalid depth.
        chunk_pairs: (point, frame) projections per block, bounding the memory of the projection test.
        knn_block: most point-to-point distances per block of the ``"torch"`` neighbour search (memory bound;
            ``2**26`` float32 distances are 256 MiB).
        seed: seed of the statistics sample.
        search_workers: threads of the ``"kdtree"`` neighbour queries (``-1``: every core). VGGT4D, when it runs
            the search while pass 2 runs on the CPU, gives it only the cores torch leaves free.
    """

    enabled: bool = True
    outlier_neighbors: int = 20
    outlier_std_ratio: float = 2.5
    neighbor_search: str = "auto"
    stats_sample: int = 8192
    num_clusters: int = 30
    kmeans_seed: int = 42
    kmeans_iters: int = 300
    min_visible_fraction: float = 0.05
    dynamic_threshold: float = 0.1
    depth_tolerance: float = 0.01
    close_kernel: int = 5
    dilate_kernel: int = 3
    min_confidence: float = 0.0
    chunk_pairs: int = 1 << 18
    knn_block: int = 1 << 26
    seed: int = 0
    search_workers: int = -1

    def __post_init__(self) -> None:
        if self.outlier_neighbors < 0:
            raise ValueError(f"outlier_neighbors must be >= 0, got {self.outlier_neighbors}")
        if self.outlier_std_ratio < 0:
            raise ValueError(f"outlier_std_ratio must be >= 0, got {self.outlier_std_ratio}")
        if self.neighbor_search not in ("auto", "kdtree", "torch"):
            raise ValueError(f"neighbor_search must be 'auto', 'kdtree' or 'torch', got {self.neighbor_search!r}")
        if self.stats_sample != 0 and self.stats_sample < 2:
            raise ValueError(f"stats_sample must be 0 (whole frame) or >= 2, got {self.stats_sample}")
        if self.num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {self.num_clusters}")
        if not 0.0 <= self.min_visible_fraction <= 1.0:
            raise ValueError(f"min_visible_fraction must be in [0, 1], got {self.min_visible_fraction}")
        if self.depth_tolerance < 0:
            raise ValueError(f"depth_tolerance must be >= 0, got {self.depth_tolerance}")
        for name in ("close_kernel", "dilate_kernel"):
            size = getattr(self, name)
            if size < 1 or size % 2 == 0:
                raise ValueError(f"{name} must be an odd size >= 1, got {size}")
        if self.kmeans_iters < 0:
            raise ValueError(f"kmeans_iters must be >= 0, got {self.kmeans_iters}")
        if self.search_workers == 0 or self.search_workers < -1:
            raise ValueError(f"search_workers must be -1 (every core) or >= 1, got {self.search_workers}")
        if self.chunk_pairs < 1 or self.knn_block < 1:
            raise ValueError(f"chunk_pairs and knn_block must be >= 1, got {self.chunk_pairs}, {self.knn_block}")


def _postprocess(mask: Tensor, config: RefineConfig) -> Tensor:
    if config.close_kernel > 1:
        mask = binary_close(mask, ellipse_kernel(config.close_kernel))
    if config.dilate_kernel > 1:
        mask = binary_dilate(mask, square_kernel(config.dilate_kernel))
    return mask


def _camera_points(depth: Tensor, intrinsic: Tensor) -> Tensor:
    """Camera-frame points ``[S, H, W, 3]`` of the pixel centres: ``K^-1 (u + 0.5, v + 0.5, 1) * depth``."""
    S, H, W = depth.shape
    v, u = torch.meshgrid(torch.arange(H, device=depth.device, dtype=depth.dtype) + 0.5,
                          torch.arange(W, device=depth.device, dtype=depth.dtype) + 0.5, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1)  # [H, W, 3]
    k_inv = torch.linalg.inv(intrinsic.double()).to(depth.dtype)  # [S, 3, 3]
    return torch.einsum("sij,hwj->shwi", k_inv, pix) * depth[..., None]


def _to_world(cam: Tensor, extrinsic: Tensor) -> Tensor:
    """``R^T (X_cam - t)`` for camera points ``[S, ..., 3]`` and world-to-camera ``[S, 3, 4]``."""
    R = extrinsic[:, :, :3]
    t = extrinsic[:, :, 3]
    shape = cam.shape
    flat = cam.reshape(shape[0], -1, 3)
    return torch.einsum("sni,sij->snj", flat - t[:, None, :], R).reshape(shape)


def _backproject(depth: Tensor, extrinsic: Tensor, intrinsic: Tensor) -> Tensor:
    """World points ``[S, H, W, 3]`` of the pixel centres (see the module docstring)."""
    cam = _camera_points(depth, intrinsic)
    R = extrinsic[:, :, :3]
    t = extrinsic[:, :, 3]
    return torch.einsum("shwi,sij->shwj", cam - t[:, None, None, :], R)  # R^T (X_cam - t)


# ----------------------------------------------------------------------------------------------------
# statistical outliers
# ----------------------------------------------------------------------------------------------------


def _frame_threshold(mean_d: Tensor, ok: Tensor, std_ratio: float) -> Tensor:
    """Per-frame ``mean + ratio * std`` of ``mean_d [S, M]`` over the entries with ``ok & mean_d > 0``."""
    use = ok & (mean_d > 0)
    n = use.sum(1).to(mean_d.dtype)
    m = torch.where(use, mean_d, torch.zeros_like(mean_d)).sum(1) / n.clamp(min=1)
    sq = torch.where(use, (mean_d - m[:, None]) ** 2, torch.zeros_like(mean_d)).sum(1)
    sd = torch.sqrt(sq / (n - 1).clamp(min=1))
    return m + std_ratio * sd


def _knn_mean_kdtree(queries: Tensor, qvalid: Tensor, points: Tensor, valid: Tensor, k: int,
                     workers: int = -1) -> Tensor:
    """Exact mean distance ``[S, Q]`` (float64) of ``queries [S, Q, 3]`` to their ``k`` nearest valid
    ``points [S, N, 3]``: SciPy's ``cKDTree``, one tree per frame, on the CPU, queries on ``workers`` threads
    (``-1``: every core)."""
    from scipy.spatial import cKDTree

    S, Q, _ = queries.shape
    pts = points.detach().to("cpu", torch.float64).numpy()
    qs = queries.detach().to("cpu", torch.float64).numpy()
    ok = valid.cpu().numpy()
    qok = qvalid.cpu().numpy()
    out = np.zeros((S, Q), dtype=np.float64)
    for s in range(S):  # one tree per frame; each query is vectorised
        sel = np.flatnonzero(ok[s])
        qsel = np.flatnonzero(qok[s])
        if sel.size == 0 or qsel.size == 0:
            continue
        kk = min(k, sel.size)
        tree = cKDTree(pts[s, sel], balanced_tree=False, compact_nodes=False)  # faster build, same answers
        dist, _ = tree.query(qs[s, qsel], k=kk, workers=workers)
        out[s, qsel] = np.asarray(dist).reshape(qsel.size, kk).mean(axis=1)
    return torch.from_numpy(out).to(points.device)


def _knn_mean_torch(queries: Tensor, qvalid: Tensor, points: Tensor, valid: Tensor, k: int,
                    block: int) -> Tensor:
    """Exact mean distance ``[S, Q]`` of ``queries [S, Q, 3]`` to their ``k`` nearest valid ``points [S, N, 3]``
    (blocks of at most ``block`` distances, on the points' device)."""
    S, Q, _ = queries.shape
    N = points.shape[1]
    kk = max(1, min(k, N))
    out = torch.zeros(S, Q, dtype=points.dtype, device=points.device)
    rows = max(1, block // max(N * S, 1))
    far = torch.finfo(points.dtype).max
    n_ok = valid.sum(1).clamp(max=kk)  # fewer valid points than k: average over those
    for start in range(0, Q, rows):
        d = torch.cdist(queries[:, start : start + rows], points)  # [S, q, N]
        d = torch.where(valid[:, None, :], d, torch.full_like(d, far))
        nn = torch.topk(d, kk, dim=2, largest=False).values
        nn = torch.where(torch.arange(kk, device=d.device)[None, None, :] < n_ok[:, None, None], nn,
                         torch.zeros_like(nn))
        out[:, start : start + rows] = nn.sum(2) / n_ok.clamp(min=1)[:, None].to(nn.dtype)
    return torch.where(qvalid, out, torch.zeros_like(out))


def _pack(sel: Tensor) -> tuple[Tensor, Tensor]:
    """Indices ``[S, M]`` of the true entries of ``sel [S, N]`` first (in order), and their validity ``[S, M]``."""
    counts = sel.sum(1)
    m = int(counts.max()) if sel.shape[0] else 0
    order = torch.argsort((~sel).to(torch.int8), dim=1, stable=True)[:, :m]
    return order, torch.arange(m, device=sel.device)[None, :] < counts[:, None]


def statistical_outliers(
    points: Tensor,
    valid: Tensor,
    query: Tensor | None = None,
    neighbors: int = 20,
    std_ratio: float = 2.5,
    method: str = "kdtree",
    stats_sample: int = 0,
    seed: int = 0,
    block: int = 1 << 24,
    workers: int = -1,
) -> Tensor:
    """Open3D-style statistical outliers of every frame's point set (``remove_statistical_outlier``).

    Each point's mean distance to its ``neighbors`` nearest frame points (itself included) is compared with
    ``mean + std_ratio * std`` of the frame's mean distances (those > 0; sample std); inliers lie strictly below
    and above 0.

    Args:
        points: ``[S, N, 3]`` points of each frame.
        valid: ``[S, N]`` bool, the frame's points (the others are ignored and never outliers).
        query: ``[S, N]`` bool, the points to label (default: all valid points); neighbours are always searched
            among all valid points of the frame.
        neighbors: ``k`` (the point itself included, as Open3D counts it).
        std_ratio: threshold ``mean + std_ratio * std``.
        method: ``"kdtree"`` (SciPy ``cKDTree`` per frame, CPU) or ``"torch"`` (blocked ``cdist`` + ``topk`` on
            the points' device); both exact.
        stats_sample: 0 -- frame statistics over every valid point (Open3D exactly; needs every point's
            neighbours); ``n > 0`` -- over ``n`` valid points per frame drawn without replacement by a generator
            seeded with ``seed`` (the query points still get exact neighbours); frames of at most ``n`` points use
            them all.
        block: most distances per ``"torch"`` block (memory bound).
        workers: threads of the ``"kdtree"`` queries (``-1``: every core).

    Returns:
        ``outlier [S, N]`` bool on ``points``' device, true only on queried valid points.
    """
    S, N, _ = points.shape
    device = points.device
    query = valid if query is None else (query & valid)
    if neighbors <= 0 or N == 0 or S == 0:
        return torch.zeros(S, N, dtype=torch.bool, device=device)
    if method not in ("kdtree", "torch"):
        raise ValueError(f"method must be 'kdtree' or 'torch', got {method!r}")
    pts = points.float()

    def mean_dist(sel_idx: Tensor, sel_ok: Tensor) -> Tensor:
        batch = torch.arange(S, device=device)[:, None]
        q = pts[batch, sel_idx]
        if method == "kdtree":
            return _knn_mean_kdtree(q, sel_ok, pts, valid, neighbors, workers)
        return _knn_mean_torch(q, sel_ok, pts, valid, neighbors, block)

    if 0 < stats_sample < int(valid.sum(1).max()):  # a sample no smaller than the frame is the whole frame
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        key = torch.rand(S, N, generator=gen).to(device)
        key = torch.where(valid, key, torch.full_like(key, 2.0))
        s_idx = torch.topk(key, min(stats_sample, N), dim=1, largest=False).indices  # [S, m]
        s_ok = valid[torch.arange(S, device=device)[:, None], s_idx]
        thr = _frame_threshold(mean_dist(s_idx, s_ok), s_ok, std_ratio)
        q_idx, q_ok = _pack(query)
        q_mean = mean_dist(q_idx, q_ok)
    else:
        q_idx, q_ok = _pack(valid)  # every point: its mean distance enters the statistics
        q_mean = mean_dist(q_idx, q_ok)
        thr = _frame_threshold(q_mean, q_ok, std_ratio)
        q_ok = q_ok & query[torch.arange(S, device=device)[:, None], q_idx]
    q_out = q_ok & ~((q_mean > 0) & (q_mean < thr[:, None].to(q_mean.dtype)))
    out = torch.zeros(S, N, dtype=torch.bool, device=device)
    rows = torch.arange(S, device=device)[:, None].expand_as(q_idx)
    out[rows[q_ok], q_idx[q_ok]] = q_out[q_ok]
    return out


# ----------------------------------------------------------------------------------------------------
# main entry
# ----------------------------------------------------------------------------------------------------


def _validate(coarse_mask: Tensor, depth: Tensor, extrinsic: Tensor, intrinsic: Tensor, images: Tensor,
              conf: Tensor | None, labels: Tensor | None) -> None:
    if depth.ndim != 3:
        raise ValueError(f"depth must be [S, H, W], got {tuple(depth.shape)}")
    S, H, W = depth.shape
    if tuple(coarse_mask.shape) != (S, H, W):
        raise ValueError(f"coarse_mask must be [S, H, W] = {(S, H, W)} like depth, got {tuple(coarse_mask.shape)}")
    if tuple(extrinsic.shape) != (S, 3, 4):
        raise ValueError(f"extrinsic must be world-to-camera [S, 3, 4] = {(S, 3, 4)}, got {tuple(extrinsic.shape)}")
    if tuple(intrinsic.shape) != (S, 3, 3):
        raise ValueError(f"intrinsic must be [S, 3, 3] = {(S, 3, 3)}, got {tuple(intrinsic.shape)}")
    if tuple(images.shape) != (S, 3, H, W):
        raise ValueError(f"images must be [S, 3, H, W] = {(S, 3, H, W)} in [0, 1], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point RGB in [0, 1], got dtype {images.dtype}")
    if conf is not None and tuple(conf.shape) != (S, H, W):
        raise ValueError(f"conf must be [S, H, W] = {(S, H, W)} or None, got {tuple(conf.shape)}")
    if labels is not None and (tuple(labels.shape) != (S, H, W) or labels.is_floating_point()):
        raise ValueError(f"labels must be integer [S, H, W] = {(S, H, W)} or None, got {labels.dtype} "
                         f"{tuple(labels.shape)}")


def _valid_depth(depth: Tensor, conf: Tensor | None, config: RefineConfig) -> Tensor:
    valid = torch.isfinite(depth) & (depth > 0)
    if conf is not None:
        valid &= torch.isfinite(conf) & (conf > config.min_confidence)
    return valid


@torch.no_grad()
def cluster_dynamic_points(
    coarse_mask: Tensor,
    depth: Tensor,
    intrinsic: Tensor,
    conf: Tensor | None = None,
    config: RefineConfig | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Steps 2-3 of the refinement: statistical outliers and per-frame k-means of the coarse-mask points.

    Both depend only on distances within a frame, which a rigid camera motion preserves, so they run on the
    camera-frame points and need no camera pose: VGGT4D runs them while pass 2 estimates the poses.

    Args:
        coarse_mask: ``[S, H, W]`` bool; depth: ``[S, H, W]``; intrinsic: ``[S, 3, 3]``; conf: optional
            ``[S, H, W]``; config: :class:`RefineConfig`.

    Returns:
        ``labels [S, H, W]`` long on the depth's device (``-2`` outlier, ``-1`` not a dynamic point, ``k >= 0``
        the point's cluster in its frame) and ``info`` with ``neighbor_search`` and ``timings``.
    """
    config = config or RefineConfig()
    device = depth.device
    S, H, W = depth.shape
    HW = H * W
    depth = depth.to(torch.float32)
    conf = None if conf is None else conf.to(device=device, dtype=torch.float32)
    coarse_mask = coarse_mask.to(device=device, dtype=torch.bool)
    t0 = time.perf_counter()
    valid = _valid_depth(depth, conf, config)
    cam = _camera_points(torch.where(valid, depth, torch.ones_like(depth)), intrinsic.to(device, torch.float32))
    valid &= torch.isfinite(cam).all(dim=-1)
    cam = cam.reshape(S, HW, 3)
    valid_f = valid.reshape(S, HW)
    candidates = coarse_mask.reshape(S, HW) & valid_f
    method = config.neighbor_search
    if method == "auto":
        method = "kdtree" if device.type == "cpu" else "torch"
    outlier = statistical_outliers(cam, valid_f, candidates, config.outlier_neighbors, config.outlier_std_ratio,
                                   method, config.stats_sample, config.seed, config.knn_block,
                                   config.search_workers)
    _sync(device)
    t1 = time.perf_counter()
    dyn = candidates & ~outlier  # [S, HW]
    counts = dyn.sum(1)
    n_max = int(counts.max()) if S else 0
    lab = torch.full((S, HW), -1, dtype=torch.long, device=device)
    if n_max > 0:
        order = torch.argsort((~dyn).to(torch.int8), dim=1, stable=True)[:, :n_max]  # row-major, dynamic first
        batch = torch.arange(S, device=device)[:, None].expand_as(order)
        plab, _ = batched_kmeans(cam[batch, order], config.num_clusters, counts=counts, seed=config.kmeans_seed,
                                 max_iter=config.kmeans_iters)
        ok = plab >= 0
        lab[batch[ok], order[ok]] = plab[ok]
    lab = torch.where(outlier, torch.full_like(lab, -2), lab)  # only coarse-mask points are queried
    _sync(device)
    timings = {"outliers": t1 - t0, "clustering": time.perf_counter() - t1}
    return lab.reshape(S, H, W), {"neighbor_search": method, "timings": timings}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def refine_dynamic_mask(
    coarse_mask: Tensor,
    depth: Tensor,
    extrinsic: Tensor,
    intrinsic: Tensor,
    images: Tensor,
    conf: Tensor | None = None,
    config: RefineConfig | None = None,
    labels: Tensor | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Refine a coarse dynamic mask by multi-view projection consistency (see the module docstring).

    Args:
        coarse_mask: ``[S, H, W]`` bool coarse dynamic mask.
        depth: ``[S, H, W]`` depth (camera ``z``).
        extrinsic: ``[S, 3, 4]`` world-to-camera (OpenCV); VGGT4D passes the pass-2 cameras.
        intrinsic: ``[S, 3, 3]`` pinhole intrinsics.
        images: ``[S, 3, H, W]`` float RGB in ``[0, 1]``.
        conf: optional ``[S, H, W]`` depth confidence (pixels with ``conf <= config.min_confidence`` have no
            valid depth).
        config: :class:`RefineConfig` (defaults if None). With ``enabled=False`` the coarse mask is returned
            unchanged (as bool on the depth's device) and no morphology is applied.
        labels: optional ``[S, H, W]`` integer per-frame labels (``-2`` outlier, ``-1`` not dynamic, ``k >= 0``
            cluster); when given, steps 2-3 are skipped and these are used (stage parity with stored labels).

    Returns:
        ``(mask [S, H, W] bool, info)`` on the depth's device. ``info``: ``labels [S, H, W]`` long (as the
        ``labels`` argument), ``cluster_table [N, 6]`` float64 (frame, label, depth_loss, rgb_loss, total,
        visible_fraction per cluster, sorted by frame then label), ``cluster_dynamic [N]`` bool,
        ``refined_before_morphology [S, H, W]`` bool, ``clusters``, ``clusters_dynamic``, ``clusters_static``,
        ``clusters_no_evidence``, ``outliers``, ``dynamic_points``, ``coarse_pixels``, ``refined_pixels``,
        ``neighbor_search`` and ``timings`` (seconds per step).
    """
    config = config or RefineConfig()
    depth = torch.as_tensor(depth)
    device = depth.device
    coarse_mask = torch.as_tensor(coarse_mask).to(device=device, dtype=torch.bool)
    extrinsic = torch.as_tensor(extrinsic)
    intrinsic = torch.as_tensor(intrinsic)
    images = torch.as_tensor(images)
    conf = None if conf is None else torch.as_tensor(conf)
    labels = None if labels is None else torch.as_tensor(labels)
    _validate(coarse_mask, depth, extrinsic, intrinsic, images, conf, labels)
    if not config.enabled:
        return coarse_mask.clone(), {"enabled": False, "timings": {}}

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    S, H, W = depth.shape
    HW = H * W
    depth = depth.to(torch.float32)
    extrinsic = extrinsic.to(device=device, dtype=torch.float32)
    intrinsic = intrinsic.to(device=device, dtype=torch.float32)
    images = images.to(device=device, dtype=torch.float32)
    conf = None if conf is None else conf.to(device=device, dtype=torch.float32)

    if labels is None:
        labels, cinfo = cluster_dynamic_points(coarse_mask, depth, intrinsic, conf, config)
        timings.update(cinfo["timings"])
        method = cinfo["neighbor_search"]
    else:
        method = "given"
    t0 = time.perf_counter()
    valid = _valid_depth(depth, conf, config)
    world = _backproject(torch.where(valid, depth, torch.ones_like(depth)), extrinsic, intrinsic)
    valid &= torch.isfinite(world).all(dim=-1)
    world = world.reshape(S, HW, 3)
    valid_f = valid.reshape(S, HW)
    lab = labels.to(device=device, dtype=torch.long).reshape(S, HW)
    lab = torch.where(valid_f | (lab < 0), lab, torch.full_like(lab, -1))
    K = max(config.num_clusters, int(lab.max()) + 1 if lab.numel() else 1)
    _sync(device)
    timings["backproject"] = time.perf_counter() - t0

    # ---- projection test --------------------------------------------------------------------------
    t0 = time.perf_counter()
    num_ids = S * K
    acc = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    counted = torch.zeros(num_ids, dtype=acc, device=device)
    depth_sum = torch.zeros(num_ids, dtype=acc, device=device)
    rgb_sum = torch.zeros(num_ids, dtype=acc, device=device)
    size = torch.zeros(num_ids, dtype=acc, device=device)
    pts_idx = torch.nonzero((lab >= 0).reshape(-1)).flatten()  # flat (frame * HW + pixel)
    if pts_idx.numel() > 0:
        src_frame = pts_idx // HW
        gid_all = src_frame * K + lab.reshape(-1)[pts_idx]
        size.index_add_(0, gid_all, torch.ones(gid_all.numel(), dtype=acc, device=device))
    if pts_idx.numel() > 0 and S > 1:
        world_flat = world.reshape(S * HW, 3)
        rgb_flat = images.permute(0, 2, 3, 1).reshape(S * HW, 3)
        depth_in = torch.where(valid, depth, torch.zeros_like(depth))[:, None]  # [S, 1, H, W]
        mask_in = coarse_mask.to(torch.float32)[:, None]
        R = extrinsic[:, :, :3]
        t = extrinsic[:, :, 3]
        frames = torch.arange(S, device=device)[:, None]
        chunk = max(1, config.chunk_pairs // S)
        for start in range(0, int(pts_idx.numel()), chunk):
            flat = pts_idx[start : start + chunk]
            gid = gid_all[start : start + chunk]
            src = src_frame[start : start + chunk]
            cam = torch.einsum("sij,nj->sni", R, world_flat[flat]) + t[:, None, :]  # [S, n, 3]
            pix = torch.einsum("sij,snj->sni", intrinsic, cam)
            z = cam[..., 2]
            u = pix[..., 0] / pix[..., 2]
            v = pix[..., 1] / pix[..., 2]
            grid = torch.stack([u / (W - 1) * 2 - 1, v / (H - 1) * 2 - 1], dim=-1)[:, :, None, :]  # [S, n, 1, 2]
            grid = torch.nan_to_num(grid, nan=-4.0, posinf=-4.0, neginf=-4.0)
            d_t = F.grid_sample(depth_in, grid, mode="nearest", align_corners=True)[:, 0, :, 0]  # [S, n]
            m_t = F.grid_sample(mask_in, grid, mode="bilinear", align_corners=True)[:, 0, :, 0]
            c_t = F.grid_sample(images, grid, mode="bilinear", align_corners=True)[:, :, :, 0]  # [S, 3, n]
            ok = ((u > 0) & (u < W) & (v > 0) & (v < H) & (z > 0) & (frames != src[None, :])
                  & ~(m_t > 0.5) & (z - config.depth_tolerance < d_t))
            dz = torch.where(ok, (z - d_t).abs(), torch.zeros_like(z))
            drgb = (c_t - rgb_flat[flat].T[None]).abs().sum(1)  # [S, n]
            drgb = torch.where(ok, drgb, torch.zeros_like(drgb))
            counted.index_add_(0, gid, ok.sum(0).to(acc))
            depth_sum.index_add_(0, gid, dz.sum(0).to(acc))
            rgb_sum.index_add_(0, gid, drgb.sum(0).to(acc))
    _sync(device)
    t1 = time.perf_counter()
    timings["projection"] = t1 - t0

    # ---- decisions --------------------------------------------------------------------------------
    used = size > 0
    total_pairs = size * max(S - 1, 0)
    visible = torch.where(total_pairs > 0, counted / total_pairs.clamp(min=1), torch.zeros_like(counted))
    no_evidence = visible < config.min_visible_fraction
    no_evidence |= counted == 0
    depth_loss = torch.where(no_evidence, torch.full_like(counted, NO_EVIDENCE_LOSS), depth_sum / counted.clamp(min=1))
    rgb_loss = torch.where(no_evidence, torch.full_like(counted, NO_EVIDENCE_LOSS), rgb_sum / counted.clamp(min=1))
    total = torch.where(no_evidence, torch.full_like(counted, NO_EVIDENCE_LOSS), depth_loss + rgb_loss / 3.0)
    cluster_dynamic = no_evidence | (total > config.dynamic_threshold)

    frame_of = torch.arange(S, device=device)[:, None].expand(S, HW)
    gid_map = frame_of * K + lab.clamp(min=0)
    before = torch.where(lab >= 0, cluster_dynamic[gid_map], torch.zeros_like(lab, dtype=torch.bool))
    before |= coarse_mask.reshape(S, HW) & ~valid_f  # no depth: no evidence, stays dynamic
    before = before.reshape(S, H, W)
    refined = _postprocess(before, config)
    _sync(device)
    timings["morphology"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t_start

    ids = torch.nonzero(used).flatten()
    table = torch.stack([(ids // K).to(acc), (ids % K).to(acc), depth_loss[ids], rgb_loss[ids], total[ids],
                         visible[ids]], dim=1).to(torch.float64 if acc == torch.float64 else acc)
    info: dict[str, Any] = {
        "enabled": True,
        "neighbor_search": method,
        "labels": lab.reshape(S, H, W),
        "cluster_table": table,
        "cluster_dynamic": cluster_dynamic[ids],
        "refined_before_morphology": before,
        "clusters": int(ids.numel()),
        "clusters_dynamic": int(cluster_dynamic[ids].sum()),
        "clusters_static": int((~cluster_dynamic[ids]).sum()),
        "clusters_no_evidence": int(no_evidence[ids].sum()),
        "outliers": int((lab == -2).sum()),
        "dynamic_points": int(pts_idx.numel()),
        "coarse_pixels": int(coarse_mask.sum()),
        "refined_pixels": int(refined.sum()),
        "timings": timings,
    }
    logger.debug("refinement: %d clusters, %d static, %d dynamic (%d without evidence), %d outliers, %.3fs",
                 info["clusters"], info["clusters_static"], info["clusters_dynamic"], info["clusters_no_evidence"],
                 info["outliers"], timings["total"])
    return refined, info
