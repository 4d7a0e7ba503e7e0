"""Per-window geometry, window-to-window Sim(3) alignment, and intrinsics consistency.

Every VGGT4D window lives in its own world frame (the first camera of the window) and its own scale.
:func:`align_window` estimates the Sim(3) that maps one window's world into the previous window's (already
global) world from the frames both windows contain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np

from .geometry import backproject_pixels, camera_centers, w2c_to_c2w
from .sim3 import Sim3, robust_sim3
from .window import Window

logger = logging.getLogger(__name__)

__all__ = [
    "WindowGeometry",
    "match_frames",
    "align_window",
    "focal_rescale",
    "rescale_intrinsics",
    "intrinsics_residual",
]


def _as_uint8_images(images: Any) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 4 and arr.shape[1] == 3 and arr.shape[-1] != 3:
        arr = np.transpose(arr, (0, 2, 3, 1))
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        if np.nanmax(arr, initial=0.0) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.round(np.nan_to_num(arr)), 0, 255).astype(np.uint8)
    return arr


def _as_float(arr: Any) -> np.ndarray:
    """float32/float64 arrays keep their precision, anything else becomes float32."""
    arr = np.asarray(arr)
    if arr.dtype in (np.float32, np.float64):
        return arr
    return arr.astype(np.float32)


@dataclass
class WindowGeometry:
    """The geometry VGGT4D produced for one window.

    Attributes:
        stamps: ``[S]`` int64 frame stamps in nanoseconds (identify frames across windows).
        extrinsic: ``[S, 3, 4]`` world-to-camera (OpenCV) in the window's world frame.
        intrinsic: ``[S, 3, 3]`` pinhole intrinsics for the ``[H, W]`` depth grid.
        depth: ``[S, H, W]`` depth (camera ``z``) in the window's units (float32 or float64 is kept, other
            dtypes become float32).
        conf: ``[S, H, W]`` depth confidence (larger is better; dtype handled like ``depth``).
        dynamic_mask: ``[S, H, W]`` bool, true on moving objects (all false when None is given).
        images: ``[S, H, W, 3]`` uint8 colours or None.
        segment: stream segment number (a change restarts stitching).
        index: window number (for logs), ``-1`` when unknown.
        odom_c2w: optional ``[S, 4, 4]`` metric camera-to-odom poses of the frames (the robot's odometry
            composed with the camera's mounting, e.g. from TF ``odom -> camera``); the
            :class:`~vggt4d_ros.windows.stitcher.Stitcher` uses them for metric scale and anchoring.
    """

    stamps: np.ndarray
    extrinsic: np.ndarray
    intrinsic: np.ndarray
    depth: np.ndarray
    conf: np.ndarray
    dynamic_mask: np.ndarray | None = None
    images: np.ndarray | None = None
    segment: int = 0
    index: int = -1
    odom_c2w: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.stamps = np.asarray(self.stamps, dtype=np.int64).reshape(-1)
        S = len(self.stamps)
        if S < 1:
            raise ValueError("WindowGeometry needs at least one frame")
        if len(np.unique(self.stamps)) != S:
            raise ValueError("WindowGeometry stamps must be unique")
        self.extrinsic = np.asarray(self.extrinsic, dtype=np.float64)
        self.intrinsic = np.asarray(self.intrinsic, dtype=np.float64)
        self.depth = _as_float(self.depth)
        self.conf = _as_float(self.conf)
        if self.extrinsic.shape != (S, 3, 4):
            raise ValueError(f"extrinsic must be [S={S}, 3, 4], got {self.extrinsic.shape}")
        if self.intrinsic.shape != (S, 3, 3):
            raise ValueError(f"intrinsic must be [S={S}, 3, 3], got {self.intrinsic.shape}")
        if self.depth.ndim != 3 or self.depth.shape[0] != S:
            raise ValueError(f"depth must be [S={S}, H, W], got {self.depth.shape}")
        if self.conf.shape != self.depth.shape:
            raise ValueError(f"conf must match depth {self.depth.shape}, got {self.conf.shape}")
        if self.dynamic_mask is None:
            self.dynamic_mask = np.zeros(self.depth.shape, dtype=bool)
        else:
            self.dynamic_mask = np.asarray(self.dynamic_mask).astype(bool, copy=False)
            if self.dynamic_mask.shape != self.depth.shape:
                raise ValueError(f"dynamic_mask must match depth {self.depth.shape}, got {self.dynamic_mask.shape}")
        if self.images is not None:
            self.images = np.asarray(self.images)
            if self.images.shape != self.depth.shape + (3,) or self.images.dtype != np.uint8:
                raise ValueError(
                    f"images must be uint8 [S, H, W, 3] = {self.depth.shape + (3,)}, got "
                    f"{self.images.dtype} {self.images.shape}"
                )
        if not (np.all(np.isfinite(self.extrinsic)) and np.all(np.isfinite(self.intrinsic))):
            raise ValueError("extrinsic and intrinsic must be finite")
        if self.odom_c2w is not None:
            self.odom_c2w = np.asarray(self.odom_c2w, dtype=np.float64)
            if self.odom_c2w.shape != (S, 4, 4) or not np.all(np.isfinite(self.odom_c2w)):
                raise ValueError(f"odom_c2w must be a finite [S={S}, 4, 4] array, got {self.odom_c2w.shape}")

    @classmethod
    def from_prediction(
        cls,
        prediction: Mapping[str, Any],
        window: Window | None = None,
        *,
        stamps: np.ndarray | None = None,
        segment: int = 0,
        index: int = -1,
        odom_c2w: np.ndarray | None = None,
    ) -> "WindowGeometry":
        """Build from a VGGT4D result mapping.

        Keys: ``extrinsic`` ``[S, 3, 4]``, ``intrinsic`` ``[S, 3, 3]``, ``depth`` ``[S, H, W]`` or
        ``[S, H, W, 1]``, ``depth_conf`` (or ``conf``) ``[S, H, W]``, optional ``dynamic_mask`` ``[S, H, W]`` and
        ``images`` (``[S, H, W, 3]`` or ``[S, 3, H, W]``, uint8 or float in ``[0, 1]``). A leading batch
        dimension of 1 is removed. Arrays may be anything ``np.asarray`` accepts (CPU tensors included).
        Stamps, segment and index come from ``window`` when given, else from the keyword arguments;
        ``odom_c2w`` (``[S, 4, 4]``, metres) is passed through.
        """
        def get(name: str, *alts: str, required: bool = True) -> np.ndarray | None:
            for key in (name,) + alts:
                if key in prediction and prediction[key] is not None:
                    return np.asarray(prediction[key])
            if required:
                raise ValueError(f"prediction is missing {name!r} (keys: {sorted(prediction)})")
            return None

        def squeeze(arr: np.ndarray | None, core_ndim: int) -> np.ndarray | None:
            """Drop a leading batch dimension of size 1 (recognised by the number of dimensions)."""
            if arr is None:
                return None
            if arr.ndim == core_ndim + 1 and arr.shape[0] == 1:
                arr = arr[0]
            return arr

        ext = squeeze(get("extrinsic"), 3)
        intr = squeeze(get("intrinsic"), 3)
        depth = get("depth")
        if depth.ndim >= 4 and depth.shape[-1] == 1:
            depth = depth[..., 0]
        depth = squeeze(depth, 3)
        conf = get("depth_conf", "conf")
        if conf.ndim >= 4 and conf.shape[-1] == 1:
            conf = conf[..., 0]
        conf = squeeze(conf, 3)
        dyn = squeeze(get("dynamic_mask", required=False), 3)
        images = get("images", required=False)
        if images is not None:
            images = squeeze(images, 4)
            images = _as_uint8_images(images)
        if window is not None:
            stamps = window.stamps_ns
            segment = window.segment
            index = window.index
        if stamps is None:
            raise ValueError("from_prediction needs a window or stamps")
        return cls(stamps=stamps, extrinsic=ext, intrinsic=intr, depth=depth, conf=conf,
                   dynamic_mask=dyn, images=images, segment=segment, index=index, odom_c2w=odom_c2w)

    @property
    def num_frames(self) -> int:
        return int(len(self.stamps))

    @property
    def hw(self) -> tuple[int, int]:
        """``(H, W)`` of the depth grid."""
        return int(self.depth.shape[1]), int(self.depth.shape[2])

    def camera_centers(self) -> np.ndarray:
        """``[S, 3]`` camera centres in the window's world."""
        return camera_centers(self.extrinsic)

    def c2w(self) -> np.ndarray:
        """``[S, 4, 4]`` camera-to-world poses."""
        return w2c_to_c2w(self.extrinsic)

    def transformed(self, sim3: Sim3) -> "WindowGeometry":
        """Geometry re-expressed in the world ``X' = s R X + t``: extrinsics mapped with
        :meth:`Sim3.transform_pose_w2c` and depths multiplied by ``s`` (arrays not affected are shared)."""
        return replace(self, extrinsic=sim3.transform_pose_w2c(self.extrinsic), depth=self.depth * self.depth.dtype.type(sim3.s))

    def valid_mask(self, i: int, conf_threshold: float = 0.0, static_only: bool = True) -> np.ndarray:
        """``[H, W]`` bool: finite positive depth, ``conf > conf_threshold`` and (optionally) static."""
        d = self.depth[i]
        m = np.isfinite(d) & (d > 0) & (self.conf[i] > conf_threshold)
        if static_only:
            m &= ~self.dynamic_mask[i]
        return m

    def frame_points(self, i: int, mask: np.ndarray) -> np.ndarray:
        """World points ``[N, 3]`` of frame ``i`` at the true pixels of ``mask`` ``[H, W]`` (row-major order)."""
        v, u = np.nonzero(mask)
        return backproject_pixels(u, v, self.depth[i][v, u], self.intrinsic[i], self.extrinsic[i])


def match_frames(stamps_a: np.ndarray, stamps_b: np.ndarray) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)`` with ``stamps_a[i] == stamps_b[j]``, ordered by stamp."""
    _, ia, ib = np.intersect1d(np.asarray(stamps_a, dtype=np.int64), np.asarray(stamps_b, dtype=np.int64),
                               assume_unique=True, return_indices=True)
    return [(int(a), int(b)) for a, b in zip(ia, ib)]


def align_window(
    prev: WindowGeometry,
    cur: WindowGeometry,
    shared_frame_pairs: list[tuple[int, int]] | None = None,
    conf_threshold: float = 0.0,
    max_points: int = 20_000,
    rng: np.random.Generator | int | None = None,
    center_weight: float = 10.0,
    method: str = "irls",
    **robust_kwargs: Any,
) -> tuple[Sim3, dict[str, Any]]:
    """Sim(3) that maps ``cur``'s world into ``prev``'s world.

    Correspondences come from the frames both windows contain: for each shared frame, every pixel that is
    static and has finite positive depth with ``conf > conf_threshold`` in **both** windows is back-projected
    with each window's own depth and cameras (``src`` from ``cur``, ``dst`` from ``prev``), weighted by the
    product of the two confidences. If there are more than ``max_points`` such pixels, ``max_points`` are
    drawn without replacement with ``rng`` (None: seed 0, so the choice is deterministic). The camera centres
    of the shared frames are added as correspondences with weight ``center_weight`` times the largest
    pixel weight (1 when there are no pixels). The fit is :func:`robust_sim3` with ``method``.

    Args:
        prev: previous window, already expressed in the global (map) frame.
        cur: window to align, in its own frame.
        shared_frame_pairs: ``(i_prev, i_cur)`` frame index pairs; None matches frames by stamp.
        conf_threshold: minimum confidence (exclusive) in both windows.
        max_points: maximum pixel correspondences, ``>= 3``.
        rng: generator or seed for the subsampling and RANSAC.
        center_weight: weight factor of the camera-centre correspondences, ``>= 0``.
        method: :data:`~vggt4d_ros.windows.sim3.SIM3_METHODS` entry.
        **robust_kwargs: passed on to :func:`robust_sim3`.

    Returns:
        ``(sim3, info)``; ``info``: ``residual`` (weighted RMS of the inliers, in ``prev``'s = map units),
        ``scale``, ``inliers``, ``inlier_ratio``, ``num_correspondences`` (pixels + centres),
        ``num_point_correspondences``, ``num_shared_frames``, ``center_residual`` (RMS distance of the
        mapped centres to ``prev``'s), ``extent`` (RMS spread of the ``dst`` points), ``fit`` (the full
        :func:`robust_sim3` info).

    Raises:
        ValueError: no shared frames, mismatched depth grids, or too few / degenerate correspondences.
    """
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 3:
        raise ValueError(f"max_points must be an integer >= 3, got {max_points!r}")
    if not center_weight >= 0:
        raise ValueError(f"center_weight must be >= 0, got {center_weight!r}")
    pairs = match_frames(prev.stamps, cur.stamps) if shared_frame_pairs is None else \
        [(int(a), int(b)) for a, b in shared_frame_pairs]
    if not pairs:
        raise ValueError("align_window: the windows share no frames (no matching stamps)")
    for a, b in pairs:
        if not (0 <= a < prev.num_frames and 0 <= b < cur.num_frames):
            raise ValueError(f"frame pair {(a, b)} out of range for windows of {prev.num_frames} and {cur.num_frames} frames")
    if prev.hw != cur.hw:
        raise ValueError(f"windows have different depth grids {prev.hw} vs {cur.hw}; cannot match pixels")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)

    pair_idx, vs, us, ws = [], [], [], []
    for k, (a, b) in enumerate(pairs):
        m = prev.valid_mask(a, conf_threshold) & cur.valid_mask(b, conf_threshold)
        v, u = np.nonzero(m)
        pair_idx.append(np.full(len(v), k, dtype=np.int64))
        vs.append(v)
        us.append(u)
        ws.append(prev.conf[a][v, u].astype(np.float64) * cur.conf[b][v, u].astype(np.float64))
    pk, v, u, w = (np.concatenate(x) for x in (pair_idx, vs, us, ws))
    if len(v) > max_points:
        keep = np.sort(gen.choice(len(v), size=max_points, replace=False))
        pk, v, u, w = pk[keep], v[keep], u[keep], w[keep]

    src_parts, dst_parts = [], []
    for k, (a, b) in enumerate(pairs):
        sel = pk == k
        if not np.any(sel):
            continue
        dst_parts.append(backproject_pixels(u[sel], v[sel], prev.depth[a][v[sel], u[sel]],
                                            prev.intrinsic[a], prev.extrinsic[a]))
        src_parts.append(backproject_pixels(u[sel], v[sel], cur.depth[b][v[sel], u[sel]],
                                            cur.intrinsic[b], cur.extrinsic[b]))
    ia = np.array([a for a, _ in pairs])
    ib = np.array([b for _, b in pairs])
    c_dst = prev.camera_centers()[ia]
    c_src = cur.camera_centers()[ib]
    wc = np.full(len(pairs), center_weight * (float(w.max()) if len(w) else 1.0))
    # pixels are grouped by ascending pair index (built pair by pair, subsampled with sorted indices), so the
    # per-pair blocks line up with w
    src = np.concatenate(src_parts + [c_src])
    dst = np.concatenate(dst_parts + [c_dst])
    weights = np.concatenate([w, wc])
    if center_weight == 0:
        keep = weights > 0
        src, dst, weights = src[keep], dst[keep], weights[keep]
    if len(src) < 3:
        raise ValueError(
            f"align_window: only {len(src)} correspondences ({len(v)} pixels, {len(pairs)} centres); need >= 3"
        )
    sim, fit = robust_sim3(src, dst, weights, method=method, rng=gen, **robust_kwargs)
    center_res = float(np.sqrt(np.mean(np.sum((sim.apply(c_src) - c_dst) ** 2, axis=1))))
    extent = float(np.sqrt(np.mean(np.sum((dst - dst.mean(axis=0)) ** 2, axis=1))))
    info = {
        "residual": fit["residual_rms"],
        "scale": sim.s,
        "inliers": fit["num_inliers"],
        "inlier_ratio": fit["inlier_ratio"],
        "num_correspondences": int(len(src)),
        "num_point_correspondences": int(len(v)),
        "num_shared_frames": len(pairs),
        "center_residual": center_res,
        "extent": extent,
        "fit": fit,
    }
    return sim, info


def rescale_intrinsics(K: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics ``[..., 3, 3]`` of an image resized (no crop) from ``src_hw`` to ``dst_hw`` ``(H, W)``.

    Uses pixel-centre-consistent scaling: ``fx' = fx * W'/W``, ``cx' = (cx + 0.5) * W'/W - 0.5`` (same for y).
    """
    K = np.asarray(K, dtype=np.float64)
    if K.shape[-2:] != (3, 3):
        raise ValueError(f"K must be [..., 3, 3], got {K.shape}")
    sy = dst_hw[0] / src_hw[0]
    sx = dst_hw[1] / src_hw[1]
    out = K.copy()
    out[..., 0, 0] *= sx
    out[..., 0, 1] *= sx
    out[..., 1, 1] *= sy
    out[..., 0, 2] = (K[..., 0, 2] + 0.5) * sx - 0.5
    out[..., 1, 2] = (K[..., 1, 2] + 0.5) * sy - 0.5
    return out


def focal_rescale(geometry: WindowGeometry, known_K: np.ndarray) -> WindowGeometry:
    """Make a window's geometry consistent with known intrinsics.

    Rule: frame ``i`` gets ``intrinsic[i] = known_K`` and ``depth[i] *= r_i`` with
    ``r_i = sqrt((fx_known * fy_known) / (fx_est_i * fy_est_i))``; extrinsics are unchanged.

    Justification: what the images fix is pixel motion. For two frames with baseline ``b`` a point at depth
    ``Z`` moves by the disparity ``du = f b / Z``. The network's output is self-consistent with its own focal:
    ``du = f_est b' / Z'``. Keeping its baselines ``b'`` (its extrinsics, hence its scale) and the observed
    ``du``, the depth consistent with the true focal is ``Z'' = f_known b' / du = Z' f_known / f_est``. The
    lateral coordinates then stay what the network predicted, ``(u - cx) Z'' / f_known = (u - cx) Z' / f_est``,
    so only the depth axis is corrected. Simply swapping K while keeping the depths would instead keep the
    depth/baseline ratio that belongs to ``f_est`` and stretch every frame laterally by ``f_est / f_known``,
    making the frames of a window disagree with each other. When the network reconstructs the scene
    correctly up to scale except for its focal/depth trade-off (lateral coordinates and baselines right up to
    scale, depths off by ``f_est / f_true``) the rule recovers a similarity of the true scene exactly; a
    uniform error of the window's scale is absorbed by the Sim(3) alignment anyway. The geometric mean of the
    x and y ratios is used per frame, since the depth is one number per pixel. The principal point is taken
    from ``known_K`` (it does not affect depth).

    Args:
        geometry: window geometry with estimated intrinsics.
        known_K: ``[3, 3]`` or ``[S, 3, 3]`` true intrinsics **for the depth grid** (use
            :func:`rescale_intrinsics` for a resized camera_info K).

    Returns:
        A new :class:`WindowGeometry`.
    """
    K = np.asarray(known_K, dtype=np.float64)
    S = geometry.num_frames
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (S, 3, 3)).copy()
    if K.shape != (S, 3, 3):
        raise ValueError(f"known_K must be [3, 3] or [S={S}, 3, 3], got {np.shape(known_K)}")
    fk = K[:, 0, 0] * K[:, 1, 1]
    fe = geometry.intrinsic[:, 0, 0] * geometry.intrinsic[:, 1, 1]
    if not (np.all(fk > 0) and np.all(fe > 0)):
        raise ValueError("focal lengths must be positive in both the known and the estimated intrinsics")
    ratio = np.sqrt(fk / fe).astype(geometry.depth.dtype)
    return replace(geometry, intrinsic=K, depth=geometry.depth * ratio[:, None, None])


def intrinsics_residual(
    geom_a: WindowGeometry,
    geom_b: WindowGeometry,
    known_K: np.ndarray | None = None,
    conf_threshold: float = 0.0,
    max_points: int = 20_000,
    rng: np.random.Generator | int | None = None,
    method: str = "umeyama",
) -> dict[str, Any]:
    """Measure how much focal-length disagreement between two windows hurts their Sim(3) alignment.

    Aligns ``geom_b`` to ``geom_a`` over their shared frames with :func:`align_window` (plain least squares by
    default so no residual is hidden as outliers), once with the windows' own intrinsics and, when
    ``known_K`` is given, once after :func:`focal_rescale` of both.

    Returns:
        dict with ``residual`` and ``relative_residual`` (residual / RMS spread of ``geom_a``'s points),
        ``focal_a``, ``focal_b`` (mean geometric-mean focal over the shared frames), ``focal_ratio``
        (``focal_b / focal_a``), and with ``known_K`` also ``residual_fixed``, ``relative_residual_fixed``.
    """
    pairs = match_frames(geom_a.stamps, geom_b.stamps)
    if not pairs:
        raise ValueError("intrinsics_residual: the windows share no frames")
    ia = np.array([a for a, _ in pairs])
    ib = np.array([b for _, b in pairs])
    fa = float(np.mean(np.sqrt(geom_a.intrinsic[ia, 0, 0] * geom_a.intrinsic[ia, 1, 1])))
    fb = float(np.mean(np.sqrt(geom_b.intrinsic[ib, 0, 0] * geom_b.intrinsic[ib, 1, 1])))
    _, info = align_window(geom_a, geom_b, pairs, conf_threshold=conf_threshold, max_points=max_points,
                           rng=rng, method=method)
    out: dict[str, Any] = {
        "residual": info["residual"],
        "relative_residual": info["residual"] / max(info["extent"], np.finfo(np.float64).tiny),
        "focal_a": fa,
        "focal_b": fb,
        "focal_ratio": fb / fa,
    }
    if known_K is not None:
        _, fixed = align_window(focal_rescale(geom_a, known_K), focal_rescale(geom_b, known_K), pairs,
                                conf_threshold=conf_threshold, max_points=max_points, rng=rng, method=method)
        out["residual_fixed"] = fixed["residual"]
        out["relative_residual_fixed"] = fixed["residual"] / max(fixed["extent"], np.finfo(np.float64).tiny)
    return out
