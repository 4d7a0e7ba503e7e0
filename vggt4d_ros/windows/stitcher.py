"""Chain window results into one map frame and accumulate the static point map and trajectory."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .align import WindowGeometry, align_window
from .map import VoxelMap
from .sim3 import Sim3
from .trajectory import Trajectory

logger = logging.getLogger(__name__)

__all__ = ["Stitcher", "StitchResult", "STITCH_STATUSES"]

STITCH_STATUSES = ("anchor", "aligned", "fallback")


@dataclass
class StitchResult:
    """Outcome of stitching one window.

    Attributes:
        window_index: the window's ``index``.
        segment: the window's segment.
        status: ``'anchor'`` (first window of a segment: identity or the caller's prior), ``'aligned'``
            (Sim(3) estimated from the shared frames) or ``'fallback'`` (alignment impossible, continuity
            prior used; see :class:`Stitcher`).
        sim3: Sim(3) mapping the window's world into the map frame.
        extrinsic: ``[S, 3, 4]`` world-to-camera in the map frame (depths of the window scale by ``scale``).
        residual: weighted RMS alignment residual of the inliers in map units (0 for anchors, NaN for
            fallbacks).
        scale: ``sim3.s``.
        inlier_ratio: inlier fraction of the correspondences (NaN when not aligned).
        num_correspondences: correspondences used (0 when not aligned).
        num_shared_frames: frames shared with the previous window.
        points_inserted: points given to the voxel map.
        info: :func:`~vggt4d_ros.windows.align.align_window` info (empty when not aligned).
    """

    window_index: int
    segment: int
    status: str
    sim3: Sim3
    extrinsic: np.ndarray
    residual: float
    scale: float
    inlier_ratio: float = float("nan")
    num_correspondences: int = 0
    num_shared_frames: int = 0
    points_inserted: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class Stitcher:
    """Align successive window geometries into one map frame.

    * The first window of a segment defines the map frame: its Sim(3) is the identity, or the prior given to
      :meth:`start_segment`. A window whose ``segment`` differs from the previous window's starts a segment.
      The map and trajectory are kept across segments, so without a prior a new segment's geometry is not
      registered to the old one.
    * Every other window is aligned to the previous window (already in the map frame) with
      :func:`~vggt4d_ros.windows.align.align_window` on the frames both contain (matched by stamp).
    * When that is impossible (no shared frames, e.g. the worker dropped the window in between, or degenerate
      correspondences) the window is placed by a continuity prior (status ``'fallback'``, logged): its first
      camera gets the pose of the previous window's last camera and its scale the previous window's scale.
    * Poses of all frames go to the :class:`~vggt4d_ros.windows.trajectory.Trajectory` (latest estimate wins).
    * Points of static pixels with finite positive depth and ``conf > map_conf_threshold`` go to the
      :class:`~vggt4d_ros.windows.map.VoxelMap`, taking every ``map_pixel_stride``-th row and column and at
      most ``max_points_per_frame`` per frame (seeded random choice). By default only frames not inserted
      with the previous window are inserted (overlap frames were already mapped).

    All public methods hold an internal lock, so results can be consumed on another thread than the one
    calling :meth:`add` (use :meth:`snapshot`).

    Args:
        voxel_map: map to fill (a default :class:`VoxelMap` when None).
        trajectory: trajectory store (a new one when None).
        align_conf_threshold: confidence threshold for alignment correspondences.
        map_conf_threshold: confidence threshold for map points.
        max_align_points: maximum pixel correspondences per alignment.
        map_pixel_stride: pixel stride for map insertion, ``>= 1``.
        max_points_per_frame: cap of map points per frame, or None.
        insert_overlap_frames: also insert frames already inserted with the previous window.
        weight_by_conf: use the confidence as the voxel running-mean weight.
        center_weight: weight factor of camera-centre correspondences.
        method: robust Sim(3) method for alignment.
        seed: seed of the random generator used for subsampling.
        **align_kwargs: further arguments of :func:`~vggt4d_ros.windows.align.align_window`.
    """

    def __init__(
        self,
        voxel_map: VoxelMap | None = None,
        trajectory: Trajectory | None = None,
        align_conf_threshold: float = 0.0,
        map_conf_threshold: float = 0.0,
        max_align_points: int = 20_000,
        map_pixel_stride: int = 1,
        max_points_per_frame: int | None = None,
        insert_overlap_frames: bool = False,
        weight_by_conf: bool = True,
        center_weight: float = 10.0,
        method: str = "irls",
        seed: int = 0,
        **align_kwargs: Any,
    ) -> None:
        if isinstance(map_pixel_stride, bool) or not isinstance(map_pixel_stride, int) or map_pixel_stride < 1:
            raise ValueError(f"map_pixel_stride must be an integer >= 1, got {map_pixel_stride!r}")
        if max_points_per_frame is not None and (not isinstance(max_points_per_frame, int) or max_points_per_frame < 1):
            raise ValueError(f"max_points_per_frame must be None or an integer >= 1, got {max_points_per_frame!r}")
        self.map = voxel_map if voxel_map is not None else VoxelMap()
        self.trajectory = trajectory if trajectory is not None else Trajectory()
        self.align_conf_threshold = float(align_conf_threshold)
        self.map_conf_threshold = float(map_conf_threshold)
        self.max_align_points = max_align_points
        self.map_pixel_stride = map_pixel_stride
        self.max_points_per_frame = max_points_per_frame
        self.insert_overlap_frames = bool(insert_overlap_frames)
        self.weight_by_conf = bool(weight_by_conf)
        self.center_weight = float(center_weight)
        self.method = method
        self.align_kwargs = align_kwargs
        self._rng = np.random.default_rng(seed)
        self._lock = threading.RLock()
        self._prev: WindowGeometry | None = None
        self._prev_sim: Sim3 | None = None
        self._segment: int | None = None
        self._anchor_next = True
        self._prior: Sim3 | None = None
        self.num_windows = 0

    def start_segment(self, prior: Sim3 | None = None) -> None:
        """Make the next window the first of a new segment, anchored at ``prior`` (identity when None)."""
        with self._lock:
            self._anchor_next = True
            self._prior = prior

    def reset(self, clear_map: bool = False) -> None:
        """Forget the previous window (next window anchors at identity); optionally clear map and trajectory."""
        with self._lock:
            self._prev = None
            self._prev_sim = None
            self._segment = None
            self._anchor_next = True
            self._prior = None
            if clear_map:
                self.map.clear()
                self.trajectory.clear()

    def snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(points [N, 3], colors [N, 3] uint8, stamps [M], c2w [M, 4, 4])`` copied under the lock."""
        with self._lock:
            return self.map.points(), self.map.colors(), self.trajectory.stamps(), self.trajectory.poses()

    def add(self, geom: WindowGeometry) -> StitchResult:
        """Stitch one window result; see the class docstring for the rules."""
        if not isinstance(geom, WindowGeometry):
            raise ValueError(f"Stitcher.add expects a WindowGeometry, got {type(geom).__name__}")
        with self._lock:
            return self._add(geom)

    def _add(self, geom: WindowGeometry) -> StitchResult:
        new_segment = self._anchor_next or self._prev is None or geom.segment != self._segment
        info: dict[str, Any] = {}
        shared = 0
        if new_segment:
            sim = self._prior if self._prior is not None else Sim3.identity()
            status = "anchor"
            residual = 0.0
            logger.info("window %d anchors segment %d", geom.index, geom.segment)
        else:
            try:
                sim, info = align_window(
                    self._prev, geom, conf_threshold=self.align_conf_threshold, max_points=self.max_align_points,
                    rng=self._rng, center_weight=self.center_weight, method=self.method, **self.align_kwargs,
                )
                status = "aligned"
                residual = float(info["residual"])
                shared = int(info["num_shared_frames"])
                logger.debug("window %d aligned: scale %.4f residual %.4g inliers %.2f", geom.index, sim.s,
                             residual, info["inlier_ratio"])
            except ValueError as exc:
                sim = self._continuity_prior(geom)
                status = "fallback"
                residual = float("nan")
                logger.warning("window %d could not be aligned (%s); using the continuity prior", geom.index, exc)
        mapped = geom.transformed(sim)
        self.trajectory.update(mapped.stamps, mapped.c2w(), window_index=geom.index)
        if new_segment or self.insert_overlap_frames or self._prev is None:
            frames = np.arange(mapped.num_frames)
        else:
            frames = np.flatnonzero(~np.isin(mapped.stamps, self._prev.stamps))
        inserted = self._insert_points(mapped, frames)
        self._prev = mapped
        self._prev_sim = sim
        self._segment = geom.segment
        self._anchor_next = False
        self._prior = None
        self.num_windows += 1
        return StitchResult(
            window_index=geom.index, segment=geom.segment, status=status, sim3=sim, extrinsic=mapped.extrinsic,
            residual=residual, scale=sim.s, inlier_ratio=float(info.get("inlier_ratio", float("nan"))),
            num_correspondences=int(info.get("num_correspondences", 0)), num_shared_frames=shared,
            points_inserted=inserted, info=info,
        )

    def _continuity_prior(self, geom: WindowGeometry) -> Sim3:
        """Sim(3) putting ``geom``'s first camera at the previous window's last camera pose, with the previous
        window's scale."""
        assert self._prev is not None and self._prev_sim is not None
        s = self._prev_sim.s
        target = self._prev.c2w()[-1]  # map frame
        source = geom.c2w()[0]  # window frame
        R = target[:3, :3] @ source[:3, :3].T
        t = target[:3, 3] - s * (R @ source[:3, 3])
        return Sim3(s, R, t)

    def _insert_points(self, mapped: WindowGeometry, frames: np.ndarray) -> int:
        if len(frames) == 0:
            return 0
        H, W = mapped.hw
        grid = np.zeros((H, W), dtype=bool)
        grid[:: self.map_pixel_stride, :: self.map_pixel_stride] = True
        pts, cols, wts = [], [], []
        for i in frames:
            mask = mapped.valid_mask(int(i), self.map_conf_threshold) & grid
            v, u = np.nonzero(mask)
            if self.max_points_per_frame is not None and len(v) > self.max_points_per_frame:
                keep = np.sort(self._rng.choice(len(v), size=self.max_points_per_frame, replace=False))
                v, u = v[keep], u[keep]
            if len(v) == 0:
                continue
            sel = np.zeros((H, W), dtype=bool)
            sel[v, u] = True
            pts.append(mapped.frame_points(int(i), sel))
            if mapped.images is not None:
                cols.append(mapped.images[i][sel])
            else:
                cols.append(np.full((len(v), 3), 128, dtype=np.uint8))
            wts.append(mapped.conf[i][sel].astype(np.float64))
        if not pts:
            return 0
        weights = np.concatenate(wts) if self.weight_by_conf else None
        if weights is not None:
            weights = np.where(weights > 0, weights, 0.0)
        return self.map.insert(np.concatenate(pts), np.concatenate(cols), weights)
