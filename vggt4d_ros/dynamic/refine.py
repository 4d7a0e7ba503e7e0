"""VGGT4D projection refinement of a coarse dynamic mask.

The coarse mask from the attention cues is blobby: it leaks onto static background and misses thin parts
of moving objects. Refinement tests every dynamic region for *multi-view consistency*: a static surface
re-projects onto itself in the other frames (same depth, same colour), a moving one does not.

Steps (``S`` frames of ``H x W``):

1. **Back-projection.** Pixel ``(u, v)`` (integer column/row, ``u = 0..W-1``) with depth ``d`` becomes
   ``X_cam = ((u - cx) d / fx, (v - cy) d / fy, d)`` and ``X_world = R^T (X_cam - t)`` for the
   world-to-camera extrinsic ``[R | t]`` (intrinsic skew is ignored).
2. **Statistical outliers.** Per frame, over that frame's coarse-dynamic points with valid depth: the mean
   distance of every point to its ``outlier_neighbors`` nearest neighbours; points whose mean distance
   exceeds ``mean + outlier_std_ratio * std`` (sample std over the frame's points) are dropped. Dropped
   points are removed from the dynamic mask (they are flying pixels whose geometry cannot be trusted; the
   reference VGGT4D implementation does the same). ``outlier_neighbors = 0`` disables the step. The
   neighbour search uses :class:`scipy.spatial.cKDTree` on CPU copies of the points.
3. **Clustering.** Per frame, the remaining points are clustered into ``num_clusters`` groups with k-means
   on their 3-D world positions (:func:`vggt4d_ros.dynamic.kmeans.kmeans`).
4. **Projection test.** Every point of a cluster is projected into every *other* frame ``j``. The pair
   (point, ``j``) *counts* if the projection lands in bounds (nearest pixel), in front of the camera
   (``z > 0``), on a pixel with valid depth ``D_j`` that is static in frame ``j``'s coarse mask, and is
   *visible*: ``z <= D_j * (1 + occlusion_tolerance)`` -- a point further away than the surface seen at
   that pixel (beyond the relative tolerance) is occluded there and says nothing about itself. If fewer
   than ``min_visible_fraction`` of the cluster's ``points x (S - 1)`` pairs count, the cluster stays
   dynamic (no evidence). Otherwise its score is::

       mean(|z - D_j| / D_j) + mean(sum_c |rgb_src_c - rgb_j_c|) / 3

   over the counted pairs: the *relative* depth error (scale invariant, because VGGT depth has an
   arbitrary global scale) plus the mean absolute colour difference per channel (colours in ``[0, 1]``;
   the target colour is bilinearly interpolated at the projected position). A score above
   ``dynamic_threshold`` keeps the cluster dynamic; otherwise all its pixels become static.
5. **Morphology.** Each frame's mask is closed with a ``close_kernel`` elliptical structuring element
   (OpenCV's ``MORPH_ELLIPSE`` shape) and then dilated with a ``dilate_kernel`` square, on the device.
   Border handling follows OpenCV's defaults: pixels outside the image count as background for dilation
   and as foreground for erosion, so the closing never erodes a mask that touches the image border.
   (In SciPy terms: ``binary_dilation(..., border_value=0)`` and ``binary_erosion(..., border_value=1)``.)

Pixels that are dynamic in the coarse mask but have no valid depth (non-finite, ``<= 0``, or a confidence
``<= min_confidence`` when ``conf`` is given) never enter steps 2-4 and stay dynamic.

With ``max_points`` set, frames with more dynamic points than that use a deterministic random subset
(seeded by ``seed`` and the frame index) as the neighbour-search reference set, as the k-means sample and
as the projected set; every other point is still tested as an outlier against the subset and takes the
label of its nearest cluster centre.
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

from .kmeans import kmeans

__all__ = [
    "ELLIPSE_5X5",
    "RefineConfig",
    "binary_close",
    "binary_dilate",
    "binary_erode",
    "ellipse_kernel",
    "refine_dynamic_mask",
    "square_kernel",
]

logger = logging.getLogger(__name__)

#: OpenCV ``getStructuringElement(MORPH_ELLIPSE, (5, 5))``.
ELLIPSE_5X5 = torch.tensor(
    [
        [0, 0, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [0, 0, 1, 0, 0],
    ],
    dtype=torch.bool,
)

_EPS = 1e-6


@dataclass(frozen=True)
class RefineConfig:
    """Parameters of :func:`refine_dynamic_mask` (defaults follow VGGT4D).

    Attributes:
        enabled: if False, :func:`refine_dynamic_mask` returns the coarse mask unchanged (no morphology).
        outlier_neighbors: neighbours for the statistical outlier test (0 disables it).
        outlier_std_ratio: a point is an outlier if its mean neighbour distance exceeds
            ``mean + outlier_std_ratio * std``.
        num_clusters: k-means clusters per frame.
        min_visible_fraction: minimum fraction of counted (point, other frame) pairs for a cluster to be
            judged; below it the cluster stays dynamic.
        dynamic_threshold: score above which a cluster stays dynamic.
        occlusion_tolerance: relative depth slack of the visibility test (``z <= D * (1 + tol)``).
        close_kernel: size of the elliptical closing kernel (odd; 1 disables the closing).
        dilate_kernel: size of the square dilation kernel (odd; 1 disables the dilation).
        max_points: per-frame cap on the points used for neighbour statistics, k-means and projection
            (``None`` for no cap).
        min_confidence: with ``conf`` given, pixels with ``conf <= min_confidence`` count as invalid depth.
        kmeans_iters: Lloyd iterations of the k-means.
        chunk_pairs: (point, frame) pairs projected per block, bounding the memory of the projection test.
        seed: seed for the subsampling and the k-means initialisation.
    """

    enabled: bool = True
    outlier_neighbors: int = 20
    outlier_std_ratio: float = 2.5
    num_clusters: int = 30
    min_visible_fraction: float = 0.05
    dynamic_threshold: float = 0.1
    occlusion_tolerance: float = 0.05
    close_kernel: int = 5
    dilate_kernel: int = 3
    max_points: int | None = 16384
    min_confidence: float = 0.0
    kmeans_iters: int = 20
    chunk_pairs: int = 1 << 18
    seed: int = 0

    def __post_init__(self) -> None:
        if self.outlier_neighbors < 0:
            raise ValueError(f"outlier_neighbors must be >= 0, got {self.outlier_neighbors}")
        if self.outlier_std_ratio < 0:
            raise ValueError(f"outlier_std_ratio must be >= 0, got {self.outlier_std_ratio}")
        if self.num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {self.num_clusters}")
        if not 0.0 <= self.min_visible_fraction <= 1.0:
            raise ValueError(f"min_visible_fraction must be in [0, 1], got {self.min_visible_fraction}")
        if self.occlusion_tolerance < 0:
            raise ValueError(f"occlusion_tolerance must be >= 0, got {self.occlusion_tolerance}")
        for name in ("close_kernel", "dilate_kernel"):
            size = getattr(self, name)
            if size < 1 or size % 2 == 0:
                raise ValueError(f"{name} must be an odd size >= 1, got {size}")
        if self.max_points is not None and self.max_points < 2:
            raise ValueError(f"max_points must be >= 2 or None, got {self.max_points}")
        if self.kmeans_iters < 0:
            raise ValueError(f"kmeans_iters must be >= 0, got {self.kmeans_iters}")
        if self.chunk_pairs < 1:
            raise ValueError(f"chunk_pairs must be >= 1, got {self.chunk_pairs}")


# ----------------------------------------------------------------------------------------------------
# morphology
# ----------------------------------------------------------------------------------------------------


def ellipse_kernel(size: int) -> Tensor:
    """Elliptical structuring element ``[size, size]`` bool, the shape of OpenCV's ``MORPH_ELLIPSE``.

    OpenCV's definition for a square kernel: with ``r = size // 2``, row ``i`` (``dy = i - r``) is set on
    columns ``r - dx .. r + dx`` where ``dx = round(r * sqrt(1 - dy^2 / r^2))``. ``size`` must be odd.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"ellipse kernel size must be odd and >= 1, got {size}")
    if size == 5:
        return ELLIPSE_5X5.clone()
    r = size // 2
    if r == 0:
        return torch.ones(1, 1, dtype=torch.bool)
    dy = torch.arange(size, dtype=torch.float64) - r
    dx = torch.round(r * torch.sqrt(torch.clamp(1.0 - dy**2 / r**2, min=0.0)))
    cols = torch.arange(size, dtype=torch.float64) - r
    return cols[None, :].abs() <= dx[:, None]


def square_kernel(size: int) -> Tensor:
    """Square structuring element ``[size, size]`` of ones (bool)."""
    if size < 1:
        raise ValueError(f"kernel size must be >= 1, got {size}")
    return torch.ones(size, size, dtype=torch.bool)


def _check_morph_args(mask: Tensor, kernel: Tensor) -> tuple[Tensor, Tensor, bool]:
    if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"structuring element must be 2-D with odd sides, got {tuple(kernel.shape)}")
    squeeze = mask.ndim == 2
    if squeeze:
        mask = mask[None]
    if mask.ndim != 3:
        raise ValueError(f"mask must be [H, W] or [S, H, W], got {tuple(mask.shape)}")
    return mask.bool(), kernel.to(device=mask.device, dtype=torch.float32), squeeze


def _hit_count(mask: Tensor, weights: Tensor, pad_value: float) -> Tensor:
    """``out[s, y, x] = sum_ij weights[i, j] * mask_padded[s, y + i - ry, x + j - rx]`` (float counts)."""
    kh, kw = weights.shape
    x = mask.to(torch.float32)[:, None]
    x = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode="constant", value=pad_value)
    return F.conv2d(x, weights[None, None])[:, 0]


def binary_dilate(mask: Tensor, kernel: Tensor) -> Tensor:
    """Binary dilation ``out[z] = OR_b mask[z - b]`` over the offsets ``b`` set in ``kernel`` (centred).

    Pixels outside the image are background (OpenCV's default; SciPy's ``border_value=0``).

    Args:
        mask: ``[S, H, W]`` or ``[H, W]`` bool.
        kernel: ``[kh, kw]`` structuring element with odd sides.

    Returns:
        Dilated mask, same shape, bool, on the mask's device.
    """
    mask, weights, squeeze = _check_morph_args(mask, kernel)
    out = _hit_count(mask, torch.flip(weights, dims=(0, 1)), 0.0) > 0.5
    return out[0] if squeeze else out


def binary_erode(mask: Tensor, kernel: Tensor) -> Tensor:
    """Binary erosion ``out[z] = AND_b mask[z + b]`` over the offsets ``b`` set in ``kernel`` (centred).

    Pixels outside the image are foreground (OpenCV's default; SciPy's ``border_value=1``).

    Args:
        mask: ``[S, H, W]`` or ``[H, W]`` bool.
        kernel: ``[kh, kw]`` structuring element with odd sides.

    Returns:
        Eroded mask, same shape, bool, on the mask's device.
    """
    mask, weights, squeeze = _check_morph_args(mask, kernel)
    total = float(weights.sum())
    out = _hit_count(mask, weights, 1.0) > total - 0.5
    return out[0] if squeeze else out


def binary_close(mask: Tensor, kernel: Tensor) -> Tensor:
    """Binary closing (dilation then erosion) with OpenCV's border handling (see :func:`binary_dilate`,
    :func:`binary_erode`): a mask touching the image border is not eroded there."""
    return binary_erode(binary_dilate(mask, kernel), kernel)


def _postprocess(mask: Tensor, config: RefineConfig) -> Tensor:
    if config.close_kernel > 1:
        mask = binary_close(mask, ellipse_kernel(config.close_kernel))
    if config.dilate_kernel > 1:
        mask = binary_dilate(mask, square_kernel(config.dilate_kernel))
    return mask


# ----------------------------------------------------------------------------------------------------
# geometry helpers
# ----------------------------------------------------------------------------------------------------


def _backproject(depth: Tensor, extrinsic: Tensor, intrinsic: Tensor) -> Tensor:
    """World points ``[S, H, W, 3]`` of every pixel (see the module docstring for the convention)."""
    S, H, W = depth.shape
    v, u = torch.meshgrid(
        torch.arange(H, device=depth.device, dtype=depth.dtype),
        torch.arange(W, device=depth.device, dtype=depth.dtype),
        indexing="ij",
    )
    fx = intrinsic[:, 0, 0].view(S, 1, 1)
    fy = intrinsic[:, 1, 1].view(S, 1, 1)
    cx = intrinsic[:, 0, 2].view(S, 1, 1)
    cy = intrinsic[:, 1, 2].view(S, 1, 1)
    cam = torch.stack([(u - cx) * depth / fx, (v - cy) * depth / fy, depth], dim=-1)  # [S, H, W, 3]
    R = extrinsic[:, :, :3]
    t = extrinsic[:, :, 3]
    # X_world = R^T (X_cam - t); as row vectors: (X_cam - t) @ R
    return torch.einsum("shwi,sij->shwj", cam - t[:, None, None, :], R)


def _mean_knn_distance(points: np.ndarray, ref_index: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean distance of each point to its ``k`` nearest reference points (excluding itself).

    Args:
        points: ``[N, 3]`` float64.
        ref_index: indices of the reference subset (``None``: all points are references).
        k: neighbours (``1 <= k < number of references``).

    Returns:
        ``(mean_dist [N], is_reference [N] bool)``.
    """
    from scipy.spatial import cKDTree

    n = points.shape[0]
    is_ref = np.ones(n, dtype=bool) if ref_index is None else np.zeros(n, dtype=bool)
    if ref_index is not None:
        is_ref[ref_index] = True
    ref = points if ref_index is None else points[ref_index]
    dist, _ = cKDTree(ref).query(points, k=k + 1, workers=-1)
    dist = np.asarray(dist).reshape(n, k + 1)
    # a reference point finds itself first (distance 0): use neighbours 1..k; others use 0..k-1
    mean_ref = dist[:, 1:].mean(axis=1)
    mean_other = dist[:, :k].mean(axis=1)
    return np.where(is_ref, mean_ref, mean_other), is_ref


def _nearest_center(x: Tensor, centers: Tensor, chunk: int = 65536) -> Tensor:
    out = [torch.cdist(x[i : i + chunk], centers).argmin(dim=1) for i in range(0, x.shape[0], chunk)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------
# main entry
# ----------------------------------------------------------------------------------------------------


def _validate(
    coarse_mask: Tensor, depth: Tensor, extrinsic: Tensor, intrinsic: Tensor, images: Tensor, conf: Tensor | None
) -> None:
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


@torch.no_grad()
def refine_dynamic_mask(
    coarse_mask: Tensor,
    depth: Tensor,
    extrinsic: Tensor,
    intrinsic: Tensor,
    images: Tensor,
    conf: Tensor | None = None,
    config: RefineConfig | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Refine a coarse dynamic mask by multi-view projection consistency (see the module docstring).

    Args:
        coarse_mask: ``[S, H, W]`` bool coarse dynamic mask.
        depth: ``[S, H, W]`` depth (camera ``z``; any global scale).
        extrinsic: ``[S, 3, 4]`` world-to-camera (OpenCV).
        intrinsic: ``[S, 3, 3]`` pinhole intrinsics.
        images: ``[S, 3, H, W]`` float RGB in ``[0, 1]``.
        conf: optional ``[S, H, W]`` depth confidence; pixels with ``conf <= config.min_confidence`` are
            treated as having no valid depth.
        config: :class:`RefineConfig` (defaults if None). With ``enabled=False`` the coarse mask is returned
            unchanged (same values, as bool on the depth's device) and no morphology is applied.

    Returns:
        ``(mask [S, H, W] bool, info)`` on the depth's device. ``info`` holds ``enabled``, ``clusters``
        (judged clusters), ``clusters_dynamic`` (kept dynamic, including ``clusters_no_evidence``),
        ``clusters_static`` (flipped to static), ``outliers_dropped``, ``dynamic_points``,
        ``evaluated_points``, ``coarse_pixels``, ``refined_pixels``, ``timings`` (seconds per stage),
        ``cluster_labels`` (CPU ``[S, H, W]`` int32: global cluster id ``frame * num_clusters + k`` of every
        clustered pixel, ``-2`` for dropped outliers, ``-1`` elsewhere) and per-cluster CPU tensors (one
        entry per judged cluster) ``cluster_id``, ``cluster_frame``, ``cluster_size`` (projected points),
        ``cluster_visible_fraction``, ``cluster_depth_error``, ``cluster_rgb_error``, ``cluster_score``
        and ``cluster_dynamic``.
    """
    config = config or RefineConfig()
    depth = torch.as_tensor(depth)
    device = depth.device
    coarse_mask = torch.as_tensor(coarse_mask).to(device=device, dtype=torch.bool)
    extrinsic = torch.as_tensor(extrinsic)
    intrinsic = torch.as_tensor(intrinsic)
    images = torch.as_tensor(images)
    conf = None if conf is None else torch.as_tensor(conf)
    _validate(coarse_mask, depth, extrinsic, intrinsic, images, conf)

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

    valid = torch.isfinite(depth) & (depth > 0)
    if conf is not None:
        conf = conf.to(device=device, dtype=torch.float32)
        valid &= torch.isfinite(conf) & (conf > config.min_confidence)
    safe_depth = torch.where(valid, depth, torch.ones_like(depth))
    world = _backproject(safe_depth, extrinsic, intrinsic)  # [S, H, W, 3]
    valid &= torch.isfinite(world).all(dim=-1)
    _sync(device)
    t_now = time.perf_counter()
    timings["backproject"] = t_now - t_start

    world_flat = world.reshape(S * HW, 3)
    rgb_flat = images.permute(0, 2, 3, 1).reshape(S * HW, 3)
    candidates = (coarse_mask & valid).reshape(S, HW)

    # ---- per-frame outlier removal and clustering ------------------------------------------------
    K = config.num_clusters
    label_flat = torch.full((S * HW,), -1, dtype=torch.long, device=device)  # global cluster id
    outlier_flat = torch.zeros(S * HW, dtype=torch.bool, device=device)
    eval_index: list[Tensor] = []  # flat pixel indices of the projected points
    t_outlier = 0.0
    t_cluster = 0.0
    for s in range(S):
        t0 = time.perf_counter()
        idx = torch.nonzero(candidates[s]).flatten() + s * HW  # [n] flat indices
        n = int(idx.numel())
        if n == 0:
            continue
        ref_local: Tensor | None = None
        if config.max_points is not None and n > config.max_points:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(int(config.seed) * 1_000_003 + s)
            ref_local = torch.randperm(n, generator=gen)[: config.max_points].sort().values
        n_ref = n if ref_local is None else int(ref_local.numel())
        k_nn = min(config.outlier_neighbors, n_ref - 1)
        if k_nn >= 1 and n_ref >= 3:
            pts_np = world_flat[idx].cpu().double().numpy()
            ref_np = None if ref_local is None else ref_local.numpy()
            mean_d, is_ref = _mean_knn_distance(pts_np, ref_np, k_nn)
            ref_d = mean_d[is_ref]
            thr = ref_d.mean() + config.outlier_std_ratio * ref_d.std(ddof=1)
            inlier_local = torch.from_numpy(mean_d <= thr).to(device)
        else:
            inlier_local = torch.ones(n, dtype=torch.bool, device=device)
        outlier_flat[idx[~inlier_local]] = True
        t1 = time.perf_counter()
        t_outlier += t1 - t0

        # projected / clustered set: the reference subset's inliers (all inliers without a cap)
        in_ref = torch.zeros(n, dtype=torch.bool, device=device)
        if ref_local is None:
            in_ref[:] = True
        else:
            in_ref[ref_local.to(device)] = True
        sample = idx[in_ref & inlier_local]
        if sample.numel() == 0:
            continue
        labels, centers = kmeans(world_flat[sample], K, iters=config.kmeans_iters, seed=config.seed)
        label_flat[sample] = labels + s * K
        rest = idx[~in_ref & inlier_local]
        if rest.numel() > 0:
            label_flat[rest] = _nearest_center(world_flat[rest], centers.to(world_flat.dtype)) + s * K
        eval_index.append(sample)
        t_cluster += time.perf_counter() - t1
    timings["outliers"] = t_outlier
    timings["clustering"] = t_cluster

    # ---- projection test --------------------------------------------------------------------------
    t0 = time.perf_counter()
    num_ids = S * K
    acc = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    counted = torch.zeros(num_ids, dtype=acc, device=device)
    depth_err = torch.zeros(num_ids, dtype=acc, device=device)
    rgb_err = torch.zeros(num_ids, dtype=acc, device=device)
    size = torch.zeros(num_ids, dtype=acc, device=device)
    all_eval = torch.cat(eval_index) if eval_index else torch.zeros(0, dtype=torch.long, device=device)
    if all_eval.numel() > 0 and S > 1:
        depth_tf = torch.where(valid, depth, torch.zeros_like(depth)).reshape(S * HW)
        target_ok = (valid & ~coarse_mask).reshape(S * HW)
        R = extrinsic[:, :, :3]
        t = extrinsic[:, :, 3]
        fx, fy = intrinsic[:, 0, 0, None], intrinsic[:, 1, 1, None]
        cx, cy = intrinsic[:, 0, 2, None], intrinsic[:, 1, 2, None]
        frames = torch.arange(S, device=device)[:, None]
        chunk = max(1, config.chunk_pairs // S)
        for start in range(0, int(all_eval.numel()), chunk):
            flat = all_eval[start : start + chunk]
            gid = label_flat[flat]
            src_frame = flat // HW
            p = world_flat[flat]  # [n, 3]
            cam = torch.einsum("sij,nj->sni", R, p) + t[:, None, :]  # [S, n, 3]
            z = cam[..., 2]
            z_safe = torch.where(z > _EPS, z, torch.ones_like(z))
            u = fx * cam[..., 0] / z_safe + cx  # [S, n]
            v = fy * cam[..., 1] / z_safe + cy
            finite = torch.isfinite(u) & torch.isfinite(v)  # degenerate cameras (e.g. zero FoV) give inf/NaN
            u = torch.where(finite, u, torch.full_like(u, -1.0))
            v = torch.where(finite, v, torch.full_like(v, -1.0))
            ui = torch.round(u)
            vi = torch.round(v)
            ok = (z > _EPS) & (ui >= 0) & (ui <= W - 1) & (vi >= 0) & (vi <= H - 1) & (frames != src_frame[None, :])
            ui = ui.clamp(0, W - 1).long()
            vi = vi.clamp(0, H - 1).long()
            tgt = frames * HW + vi * W + ui  # [S, n]
            d_t = depth_tf[tgt]
            ok &= target_ok[tgt] & (z <= d_t * (1.0 + config.occlusion_tolerance))
            rel = torch.where(ok, (z - d_t).abs() / torch.where(ok, d_t, torch.ones_like(d_t)), torch.zeros_like(z))
            # bilinear colour of the target frame at (u, v)
            uc = u.clamp(0, W - 1)
            vc = v.clamp(0, H - 1)
            u0 = uc.floor()
            v0 = vc.floor()
            fu = (uc - u0)[..., None]
            fv = (vc - v0)[..., None]
            u0 = u0.long()
            v0 = v0.long()
            u1 = (u0 + 1).clamp(max=W - 1)
            v1 = (v0 + 1).clamp(max=H - 1)
            base = frames * HW
            c00 = rgb_flat[base + v0 * W + u0]
            c01 = rgb_flat[base + v0 * W + u1]
            c10 = rgb_flat[base + v1 * W + u0]
            c11 = rgb_flat[base + v1 * W + u1]
            col = (c00 * (1 - fu) + c01 * fu) * (1 - fv) + (c10 * (1 - fu) + c11 * fu) * fv  # [S, n, 3]
            diff = (col - rgb_flat[flat][None]).abs().sum(dim=-1) / 3.0
            diff = torch.where(ok, diff, torch.zeros_like(diff))
            counted.index_add_(0, gid, ok.sum(dim=0).to(acc))
            depth_err.index_add_(0, gid, rel.sum(dim=0).to(acc))
            rgb_err.index_add_(0, gid, diff.sum(dim=0).to(acc))
            size.index_add_(0, gid, torch.ones_like(gid, dtype=acc))
    elif all_eval.numel() > 0:
        size.index_add_(0, label_flat[all_eval], torch.ones(all_eval.numel(), dtype=acc, device=device))
    _sync(device)
    t1 = time.perf_counter()
    timings["projection"] = t1 - t0

    # ---- decisions --------------------------------------------------------------------------------
    pairs = size * max(S - 1, 0)
    visible_fraction = torch.where(pairs > 0, counted / pairs.clamp(min=1.0), torch.zeros_like(pairs))
    mean_depth = torch.where(counted > 0, depth_err / counted.clamp(min=1.0), torch.zeros_like(counted))
    mean_rgb = torch.where(counted > 0, rgb_err / counted.clamp(min=1.0), torch.zeros_like(counted))
    score = mean_depth + mean_rgb
    no_evidence = (visible_fraction < config.min_visible_fraction) | (counted == 0)
    cluster_dynamic = no_evidence | (score > config.dynamic_threshold)
    used = size > 0

    labelled = label_flat >= 0
    pixel_dynamic = torch.where(labelled, cluster_dynamic[label_flat.clamp(min=0)], torch.ones_like(labelled))
    refined = coarse_mask.reshape(S * HW) & ~outlier_flat & pixel_dynamic
    refined = _postprocess(refined.reshape(S, H, W), config)
    _sync(device)
    timings["morphology"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t_start

    used_ids = torch.nonzero(used).flatten()
    cluster_labels = torch.where(outlier_flat, torch.full_like(label_flat, -2), label_flat).reshape(S, H, W)
    cluster_labels = cluster_labels.to(torch.int32)
    info: dict[str, Any] = {
        "enabled": True,
        "clusters": int(used.sum()),
        "clusters_dynamic": int((cluster_dynamic & used).sum()),
        "clusters_static": int((~cluster_dynamic & used).sum()),
        "clusters_no_evidence": int((no_evidence & used).sum()),
        "outliers_dropped": int(outlier_flat.sum()),
        "dynamic_points": int(candidates.sum()),
        "evaluated_points": int(all_eval.numel()),
        "coarse_pixels": int(coarse_mask.sum()),
        "refined_pixels": int(refined.sum()),
        "timings": timings,
        "cluster_labels": cluster_labels.cpu(),
        "cluster_id": used_ids.cpu(),
        "cluster_frame": (used_ids // K).cpu(),
        "cluster_size": size[used_ids].long().cpu(),
        "cluster_visible_fraction": visible_fraction[used_ids].float().cpu(),
        "cluster_depth_error": mean_depth[used_ids].float().cpu(),
        "cluster_rgb_error": mean_rgb[used_ids].float().cpu(),
        "cluster_score": score[used_ids].float().cpu(),
        "cluster_dynamic": cluster_dynamic[used_ids].cpu(),
    }
    logger.debug(
        "refinement: %d clusters, %d static, %d dynamic (%d without evidence), %d outliers, %.3fs",
        info["clusters"], info["clusters_static"], info["clusters_dynamic"], info["clusters_no_evidence"],
        info["outliers_dropped"], timings["total"],
    )
    return refined, info
