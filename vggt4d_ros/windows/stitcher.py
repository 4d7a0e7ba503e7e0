"""Chain window results into one map frame and accumulate the static point map and trajectory."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .align import WindowGeometry, align_window, match_frames
from .fusion import MapOdomFilter, fuse_log_scale, position_misfit, rotation_misfit
from .geometry import OPTICAL_TO_BODY
from .map import VoxelMap
from .odometry import SCALE_SOURCES, ScaleFit, fit_metric_scale
from .sim3 import Sim3
from .trajectory import Trajectory

logger = logging.getLogger(__name__)

__all__ = ["ANCHOR_KINDS", "STITCH_STATUSES", "Stitcher", "StitchResult", "UNKNOWN_VARIANCE", "pose_covariance"]

STITCH_STATUSES = ("anchor", "aligned", "fallback")


#: Variance reported for pose components whose uncertainty is unknown (m^2 / rad^2); large enough that
#: consumers (robot_localization, Nav2) treat the component as unconstrained.
UNKNOWN_VARIANCE = 1.0e6
#: Smallest reported position variance (map units^2) and rotation variance (rad^2).
MIN_POSITION_VARIANCE = 1.0e-4
MIN_ROTATION_VARIANCE = 1.0e-6

#: How the first window of a segment was placed: ``'identity'`` (very first segment, or after a reset that
#: cleared the map), ``'odometry'`` (odometry motion since the last processed frame composed with its map
#: pose), ``'continuity'`` (at the last known camera pose with the last scale), ``'prior'`` (a pose given to
#: :meth:`Stitcher.start_segment`). Aligned windows have ``''``.
ANCHOR_KINDS = ("identity", "odometry", "continuity", "prior")


@dataclass
class StitchResult:
    """Outcome of stitching one window.

    Attributes:
        window_index: the window's ``index``.
        segment: the window's segment.
        status: ``'anchor'`` (first window of a segment, placed as ``anchor`` says), ``'aligned'`` (Sim(3)
            estimated from the frames shared with the previous window) or ``'fallback'`` (alignment
            impossible; placed from odometry or by the continuity prior, see :class:`Stitcher`).
        sim3: Sim(3) mapping the window's world into the map frame.
        extrinsic: ``[S, 3, 4]`` world-to-camera in the map frame (depths of the window scale by ``scale``).
        residual: weighted RMS alignment residual of the inliers in map units (0 for anchors, NaN for
            fallbacks).
        scale: ``sim3.s`` (map units per window unit; metres per window unit when ``metric``).
        inlier_ratio: inlier fraction of the correspondences (NaN when not aligned).
        num_correspondences: correspondences used (0 when not aligned).
        num_shared_frames: frames shared with the previous window.
        points_inserted: points given to the voxel map.
        info: :func:`~vggt4d_ros.windows.align.align_window` info (empty when not aligned).
        metric: the map is in metres (a window's scale has been measured from odometry).
        scale_source: ``'odometry'`` (this window's scale measured from its odometry), ``'previous'`` (a
            metric map, this window's scale carried over from the previous window: too little motion or no
            odometry for it) or ``'first_window'`` (no metric scale yet: the map is in the first window's units).
        anchor: one of :data:`ANCHOR_KINDS` for anchors and fallbacks, ``''`` for aligned windows.
        covariance: ``[6, 6]`` covariance of the newest frame's pose in the map (x, y, z, rotation about x, y,
            z; map units and radians): standard errors of this window's registration from its alignment and
            odometry-fit residuals (:func:`pose_covariance`). Components without an estimate (anchors and
            fallbacks without odometry) are :data:`UNKNOWN_VARIANCE`. It describes this window's registration,
            not the drift accumulated along the chain.
        scale_fit: the odometry :class:`~vggt4d_ros.windows.odometry.ScaleFit` of this window, or None.
        map_to_odom: ``[4, 4]`` map->odom after this window (:meth:`Stitcher.map_to_odom`), or None.
        points: ``[N, 3]`` the points this window gave to the voxel map, in the map frame (``points_inserted``
            of them; the map itself holds their voxel means).
        colors: ``[N, 3]`` uint8 colours of ``points``.
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
    metric: bool = False
    scale_source: str = "first_window"
    anchor: str = ""
    covariance: np.ndarray = field(default_factory=lambda: np.eye(6) * UNKNOWN_VARIANCE)
    scale_fit: ScaleFit | None = None
    map_to_odom: np.ndarray | None = None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    colors: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.uint8))


class Stitcher:
    """Align successive window geometries into one map frame.

    **Map frame.** With odometry (``WindowGeometry.odom_c2w``) the map frame is the odom frame at the first
    frame of the first segment: the first camera is placed at its odometry pose, so the map is as level as
    the robot's odometry, and map->odom starts as the identity. Without odometry the map frame is the first
    camera's pose rotated from optical axes to REP-103 body axes (x forward, y left, z up,
    :data:`~vggt4d_ros.windows.geometry.OPTICAL_TO_BODY`), so a level camera gives a level, z-up map.

    **Scale.** When a window has odometry poses with enough motion (``min_motion`` metres between two of its
    cameras), its metric scale is fitted from them (:func:`~vggt4d_ros.windows.odometry.fit_metric_scale`),
    fused with the scale the chain of alignments predicts (a scalar Kalman filter on the log scale: the chain
    adds ``scale_chain_noise`` per window, the fit brings its own standard error), and the aligned window is
    rescaled to that scale about the cameras it shares with the previous window, so scale errors stay bounded
    instead of accumulating along the chain. Otherwise the scale is carried over from the previous window by
    the Sim(3) alignment, whose symmetric scale (``symmetric_scale``) is not biased by the depth noise. Until
    the first scale is measured the map is in the first window's units; when it is, map and trajectory are
    rescaled to metres about the first camera. ``scale_source='none'`` ignores odometry
    entirely (no metric scale, no odometry anchoring, :meth:`map_to_odom` is None); ``'odometry'`` expects
    it and logs windows that lack it; ``'auto'`` uses it when there.

    **Chaining.** A window of the same segment as the previous one is aligned to it (already in the map frame)
    with :func:`~vggt4d_ros.windows.align.align_window` on the frames both contain (matched by stamp). With
    odometry, the alignment's rotation is fused with the rotation the odometry predicts (the last map->odom
    composed with the window's odometry poses), each weighted by its variance: the alignment's from how much
    the shared frames' orientations disagree after it, the odometry's from how much its per-frame predictions
    disagree plus ``odom_rotation_drift`` per metre travelled since the last window. In a metric map the
    translation is fused the same way (the shared cameras' position misfit against the odometry's
    prediction, with ``odom_translation_drift`` of the distance travelled). The map->odom transform behind
    these predictions is itself filtered window by window (:class:`~vggt4d_ros.windows.fusion.MapOdomFilter`).
    Drift then grows no faster than the better of the two sources allows.

    **Segments and fallbacks.** The first window of a new segment (a different ``segment`` number, or after
    :meth:`start_segment` / :meth:`reset` without clearing) and a window that cannot be aligned (no shared
    frames, e.g. the worker dropped the window in between, or degenerate correspondences; status
    ``'fallback'``) are placed so that their first camera lies at

    * the odometry motion since the last processed frame composed with that frame's map pose
      (``map_T_odom @ odom_c2w[0]``, anchor ``'odometry'``) when the window and an earlier one have odometry;
    * else the last processed frame's map pose (anchor ``'continuity'``).

    Their scale is the odometry's when measured, else carried over by depth continuity: the median static
    depth of the last processed frame (map units) over that of the window's first frame.

    The identity anchor is used only for the very first window and after ``reset(clear_map=True)``; a prior
    given to :meth:`start_segment` overrides all of this for the next window.

    **Outputs.** Poses of all frames go to the :class:`~vggt4d_ros.windows.trajectory.Trajectory` (latest
    estimate wins). Points of static pixels with finite positive depth and ``conf > map_conf_threshold`` go
    to the :class:`~vggt4d_ros.windows.map.VoxelMap`, taking every ``map_pixel_stride``-th row and column and
    at most ``max_points_per_frame`` per frame (seeded random choice). By default only frames not inserted
    with the previous window are inserted (overlap frames were already mapped).

    All public methods hold an internal lock, so results can be consumed on another thread than the one
    calling :meth:`add` (use :meth:`snapshot`, :meth:`map_to_odom`).

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
        scale_source: one of :data:`~vggt4d_ros.windows.odometry.SCALE_SOURCES`.
        min_motion: metres of odometry motion within a window needed to measure its scale, ``>= 0``.
        scale_chain_noise: relative scale error one chained Sim(3) alignment adds (standard deviation), for
            fusing the chain's scale with the odometry's (see **Scale**).
        odom_rotation_drift: heading error of the odometry per metre travelled (radians, standard deviation),
            for fusing the alignment's rotation with the odometry's (see **Chaining**); ``inf`` ignores
            odometry rotations.
        odom_translation_drift: position error of the odometry as a fraction of the distance travelled
            (standard deviation), for fusing the alignment's translation with the odometry's in a metric map;
            ``inf`` ignores odometry translations.
        symmetric_scale: Sim(3) alignments use the symmetric scale (:func:`~vggt4d_ros.windows.sim3.umeyama`):
            both windows' depths are noisy, and Umeyama's scale, which treats the new window as exact, is biased
            low by the noise, a bias that compounds along the chain (about -40 % over 100 windows at 5 % depth
            noise; ``vggt4d bench``, drift section).
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
        scale_source: str = "auto",
        min_motion: float = 0.1,
        symmetric_scale: bool = True,
        scale_chain_noise: float = 0.005,
        odom_rotation_drift: float = 0.01,
        odom_translation_drift: float = 0.02,
        **align_kwargs: Any,
    ) -> None:
        if isinstance(map_pixel_stride, bool) or not isinstance(map_pixel_stride, int) or map_pixel_stride < 1:
            raise ValueError(f"map_pixel_stride must be an integer >= 1, got {map_pixel_stride!r}")
        if max_points_per_frame is not None and (not isinstance(max_points_per_frame, int) or max_points_per_frame < 1):
            raise ValueError(f"max_points_per_frame must be None or an integer >= 1, got {max_points_per_frame!r}")
        if scale_source not in SCALE_SOURCES:
            raise ValueError(f"scale_source must be one of {SCALE_SOURCES}, got {scale_source!r}")
        try:
            motion = float(min_motion)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"min_motion must be a number >= 0 (metres), got {min_motion!r}") from exc
        if not (np.isfinite(motion) and motion >= 0):
            raise ValueError(f"min_motion must be a finite number >= 0 (metres), got {min_motion!r}")
        for key in ("with_scale", "symmetric"):
            if key in align_kwargs:
                raise ValueError(f"{key} is chosen by the Stitcher (rigid at a measured metric scale; symmetric_scale)")
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
        self.scale_source = scale_source
        self.min_motion = motion
        self.symmetric_scale = bool(symmetric_scale)
        try:
            chain = float(scale_chain_noise)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"scale_chain_noise must be a number >= 0, got {scale_chain_noise!r}") from exc
        if not (np.isfinite(chain) and chain >= 0):
            raise ValueError(f"scale_chain_noise must be a finite number >= 0, got {scale_chain_noise!r}")
        self.scale_chain_noise = chain
        self._odom_filter = MapOdomFilter(odom_rotation_drift, odom_translation_drift)
        self.align_kwargs = align_kwargs
        self._rng = np.random.default_rng(seed)
        self._lock = threading.RLock()
        self.num_windows = 0
        self.num_missing_odometry = 0
        self._clear_state()

    def _clear_state(self) -> None:
        self._prev: WindowGeometry | None = None
        self._prev_sim: Sim3 | None = None
        self._segment: int | None = None
        self._anchor_next = True
        self._prior: Sim3 | None = None
        self._last_pose: np.ndarray | None = None  # [4, 4] map pose of the newest processed frame
        self._last_odom: np.ndarray | None = None  # [4, 4] odom pose of the newest frame that had odometry
        self._last_scale = 1.0
        self._map_T_odom: np.ndarray | None = None  # at the newest frame (published)
        self._odom_filter.clear()  # filtered map->odom behind the odometry's predictions
        self._metric = False
        self._scale_var = 0.0  # variance of log(scale) of the last window in a metric map
        self._origin = np.zeros(3)  # first camera centre in the map: fixed point of the metric rescale

    def start_segment(self, prior: Sim3 | None = None) -> None:
        """Make the next window the first of a new segment, placed by ``prior`` (a Sim(3) from its world to
        the map) when given, else from odometry or by continuity (see the class docstring)."""
        with self._lock:
            self._anchor_next = True
            self._prior = prior

    def reset(self, clear_map: bool = False) -> None:
        """Start a new segment; with ``clear_map`` also forget map, trajectory, scale and map->odom, so the next
        window is anchored at the identity (a fresh map)."""
        with self._lock:
            if clear_map:
                self.map.clear()
                self.trajectory.clear()
                self._clear_state()
            else:
                self._anchor_next = True
                self._prior = None

    @property
    def metric(self) -> bool:
        """Whether the map is in metres."""
        with self._lock:
            return self._metric

    def map_to_odom(self) -> np.ndarray | None:
        """``[4, 4]`` map->odom (pose of the odom frame in the map) at the newest frame processed with
        odometry, so that ``map_to_odom @ odom_T_camera`` is the camera's estimated map pose; None before any
        window had odometry (or with ``scale_source='none'``)."""
        with self._lock:
            return None if self._map_T_odom is None else self._map_T_odom.copy()

    def snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(points [N, 3], colors [N, 3] uint8, stamps [M], c2w [M, 4, 4])`` in the map frame, copied under the
        lock (metres when :attr:`metric`)."""
        with self._lock:
            return self.map.points(), self.map.colors(), self.trajectory.stamps(), self.trajectory.poses()

    def add(self, geom: WindowGeometry) -> StitchResult:
        """Stitch one window result; see the class docstring for the rules."""
        if not isinstance(geom, WindowGeometry):
            raise ValueError(f"Stitcher.add expects a WindowGeometry, got {type(geom).__name__}")
        with self._lock:
            return self._add(geom)

    # ------------------------------------------------------------------ internals (lock held)
    def _align(self, geom: WindowGeometry, with_scale: bool = True) -> tuple[Sim3, dict[str, Any]]:
        assert self._prev is not None
        return align_window(self._prev, geom, conf_threshold=self.align_conf_threshold,
                            max_points=self.max_align_points, rng=self._rng, center_weight=self.center_weight,
                            method=self.method, with_scale=with_scale, symmetric=with_scale and self.symmetric_scale,
                            **self.align_kwargs)

    def _odometry_of(self, geom: WindowGeometry) -> np.ndarray | None:
        if self.scale_source == "none":
            return None
        if geom.odom_c2w is None and self.scale_source == "odometry":
            self.num_missing_odometry += 1
            if self.num_missing_odometry == 1 or self.num_missing_odometry % 100 == 0:
                logger.warning("window %d has no odometry poses although scale_source is 'odometry' (%d so far)",
                               geom.index, self.num_missing_odometry)
        return geom.odom_c2w

    def _anchor_target(self, geom: WindowGeometry, odom: np.ndarray | None, first: bool) -> tuple[np.ndarray, str]:
        """Map pose ``[4, 4]`` for the window's first camera and the anchor kind."""
        if first:
            if odom is not None:
                return odom[0], "identity"  # map frame = odom frame at this frame
            target = np.eye(4)
            target[:3, :3] = OPTICAL_TO_BODY
            return target, "identity"
        if odom is not None and self._map_T_odom is not None:
            return self._map_T_odom @ odom[0], "odometry"
        assert self._last_pose is not None
        return self._last_pose, "continuity"

    def _travelled(self, geom: WindowGeometry, odom: np.ndarray) -> float | None:
        """Metres of odometry between the last window with odometry and this window's newest frame."""
        if self._last_odom is None:
            return None
        return float(np.linalg.norm(odom[int(np.argmax(geom.stamps)), :3, 3] - self._last_odom[:3, 3]))

    def _shared(self, geom: WindowGeometry) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the frames shared with the previous window: ``(in prev, in geom)``."""
        assert self._prev is not None
        pairs = match_frames(self._prev.stamps, geom.stamps)
        return np.array([p for p, _ in pairs], dtype=int), np.array([c for _, c in pairs], dtype=int)

    def _fuse_with_odometry(self, geom: WindowGeometry, sim: Sim3, odom: np.ndarray, scale: float,
                            metric: bool) -> tuple[Sim3, float, float]:
        """An aligned window's placement fused with the odometry (see **Chaining**): rotation, then the
        (fused) metric ``scale`` about the shared cameras, then (metric maps) translation. Returns the placement
        and the variances of its rotation and position."""
        assert self._prev is not None
        ip, ic = self._shared(geom)
        travelled = self._travelled(geom, odom) or 0.0
        c_win = geom.camera_centers()
        R_win = geom.c2w()[:, :3, :3]
        var_rot = rotation_misfit(self._prev.c2w()[ip, :3, :3], sim.R @ R_win[ic])
        sim, var_rot = self._odom_filter.fuse_rotation(sim, R_win, odom, travelled, var_rot,
                                                       pivot=sim.apply(c_win[ic]).mean(axis=0))
        if scale != sim.s:
            # keep the rotation and the fit at the overlap, take the fused metric scale: rescale about the shared
            # cameras (already in the map), so the overlap stays where the alignment put it
            pivot = sim.apply(c_win[ic]).mean(axis=0)
            ratio = scale / sim.s
            sim = Sim3(ratio, np.eye(3), pivot - ratio * pivot).compose(sim)
        var_pos = float("inf")
        if metric:
            var_pos = position_misfit(self._prev.camera_centers()[ip], sim.apply(c_win[ic]))
            sim, var_pos = self._odom_filter.fuse_translation(sim, c_win, odom, travelled, var_pos)
        return sim, var_rot, var_pos

    def _fuse_scale(self, predicted: float, metric: bool, chained: bool, fit: ScaleFit | None) -> tuple[float, float]:
        """Scale of the window and the variance of its log: the chain's ``predicted`` scale (``chained``: it comes
        from an alignment, else from depth continuity) fused with the odometry ``fit`` when the map was already
        metric; the fit alone when it makes the map metric."""
        if not metric:
            return (fit.scale, fit.std ** 2) if fit is not None else (predicted, 0.0)
        growth = self.scale_chain_noise ** 2 if chained else 0.1 ** 2  # continuity is a much weaker prediction
        return fuse_log_scale(predicted, self._scale_var + growth, fit)

    def _carried_scale(self, geom: WindowGeometry) -> float:
        """Scale for a window that shares no frames with the map: the median static depth of the newest
        processed frame (map units) over that of the window's first frame (window units) -- the camera is
        assumed to see a similar scene from about the same place (continuity) -- or the last window's scale
        when either has no valid depth."""
        if self._prev is not None:
            newest = int(np.argmax(self._prev.stamps))
            a = self._prev.depth[newest][self._prev.valid_mask(newest, self.map_conf_threshold)]
            b = geom.depth[0][geom.valid_mask(0, self.map_conf_threshold)]
            if len(a) and len(b):
                ratio = float(np.median(a)) / float(np.median(b))
                if np.isfinite(ratio) and ratio > 0:
                    return ratio
        return self._last_scale

    def _adopt_metric(self, factor: float) -> Sim3:
        """Rescale map, trajectory and state by ``factor`` (to metres) about the first camera centre; returns the
        rescaling Sim(3)."""
        fix = Sim3(factor, np.eye(3), self._origin - factor * self._origin)
        self.map.transform(fix)
        self.trajectory.transform(fix)
        if self._prev is not None and self._prev_sim is not None:
            self._prev = self._prev.transformed(fix)
            self._prev_sim = fix.compose(self._prev_sim)
        if self._last_pose is not None:
            self._last_pose = fix.transform_pose_c2w(self._last_pose)
            if self._last_odom is not None:
                self._map_T_odom = self._last_pose @ np.linalg.inv(self._last_odom)
        self._last_scale *= factor
        self._odom_filter.reset_translation()  # map units change: the translation filter starts again in metres
        self._metric = True
        logger.info("first metric scale from odometry: map and trajectory rescaled by %.4g to metres", factor)
        return fix

    def _add(self, geom: WindowGeometry) -> StitchResult:
        odom = self._odometry_of(geom)
        fit = fit_metric_scale(geom.c2w(), odom, min_motion=self.min_motion) if odom is not None else None
        first = self._last_pose is None
        new_segment = self._anchor_next or self._prev is None or geom.segment != self._segment
        info: dict[str, Any] = {}
        visual: Sim3 | None = None
        var_vis = float("inf")  # rotation variance of an aligned window's placement
        var_pos = float("inf")  # its position variance (metric maps)
        if not new_segment:
            try:
                visual, info = self._align(geom)
            except ValueError as exc:
                logger.warning("window %d could not be aligned (%s); placing it from %s", geom.index, exc,
                               "odometry" if odom is not None and self._map_T_odom is not None else "continuity")
        carried = 1.0 if first else (visual.s if visual is not None else self._carried_scale(geom))
        was_metric = self._metric
        if fit is not None and not was_metric and not first:
            fix = self._adopt_metric(fit.scale / carried)
            visual = None if visual is None else fix.compose(visual)
        scale, scale_var = self._fuse_scale(carried, was_metric, visual is not None, fit)
        anchor = ""
        residual = 0.0
        if new_segment:
            status = "anchor"
            if self._prior is not None:
                sim, anchor = self._prior, "prior"
            else:
                target, anchor = self._anchor_target(geom, odom, first)
                sim = Sim3.anchoring(geom.c2w()[0], target, scale)
            logger.info("window %d anchors segment %d (%s)", geom.index, geom.segment, anchor)
        elif visual is not None:
            status = "aligned"
            sim = visual
            if odom is not None:  # a fitted scale implies odometry: without it, scale is the alignment's
                sim, var_vis, var_pos = self._fuse_with_odometry(geom, sim, odom, scale, was_metric)
            residual = float(info["residual"])
            logger.debug("window %d aligned: scale %.4f residual %.4g inliers %.2f", geom.index, sim.s, residual,
                         info["inlier_ratio"])
        else:
            status = "fallback"
            residual = float("nan")
            target, anchor = self._anchor_target(geom, odom, False)
            sim = Sim3.anchoring(geom.c2w()[0], target, scale)
        mapped = geom.transformed(sim)
        c2w = mapped.c2w()
        self.trajectory.update(mapped.stamps, c2w, window_index=geom.index)
        if new_segment or self.insert_overlap_frames or self._prev is None:
            frames = np.arange(mapped.num_frames)
        else:
            frames = np.flatnonzero(~np.isin(mapped.stamps, self._prev.stamps))
        inserted, points, colors = self._insert_points(mapped, frames)
        newest = int(np.argmax(mapped.stamps))
        if first:
            self._origin = c2w[0, :3, 3].copy()
        if fit is not None:
            self._metric = True
        self._last_pose = c2w[newest].copy()
        self._last_scale = sim.s
        self._scale_var = scale_var
        if odom is not None:
            self._odom_filter.update(c2w, odom, self._travelled(geom, odom), var_vis, var_pos, self._metric)
            self._last_odom = odom[newest].copy()
            self._map_T_odom = self._last_pose @ np.linalg.inv(self._last_odom)
        self._prev = mapped
        self._prev_sim = sim
        self._segment = geom.segment
        self._anchor_next = False
        self._prior = None
        self.num_windows += 1
        scale_source = "odometry" if fit is not None else ("previous" if self._metric else "first_window")
        return StitchResult(
            window_index=geom.index, segment=geom.segment, status=status, sim3=sim, extrinsic=mapped.extrinsic,
            residual=residual, scale=sim.s, inlier_ratio=float(info.get("inlier_ratio", float("nan"))),
            num_correspondences=int(info.get("num_correspondences", 0)),
            num_shared_frames=int(info.get("num_shared_frames", 0)), points_inserted=inserted, info=info,
            metric=self._metric, scale_source=scale_source, anchor=anchor,
            covariance=pose_covariance(residual if status == "aligned" else float("nan"),
                                       float(info.get("extent", float("nan"))), fit,
                                       int(info.get("fit", {}).get("num_inliers", 1))),
            scale_fit=fit, map_to_odom=None if self._map_T_odom is None else self._map_T_odom.copy(),
            points=points, colors=colors,
        )

    def _insert_points(self, mapped: WindowGeometry, frames: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """Insert the selected pixels of ``frames``; returns the number of points the map used and those points
        ``[N, 3]`` with their colours ``[N, 3]`` uint8 (finite, positive weight)."""
        pts, cols, wts = [], [], []
        H, W = mapped.hw
        grid = np.zeros((H, W), dtype=bool)
        grid[:: self.map_pixel_stride, :: self.map_pixel_stride] = True
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
            return 0, np.zeros((0, 3)), np.zeros((0, 3), dtype=np.uint8)
        points, colors = np.concatenate(pts), np.concatenate(cols)
        weights = np.concatenate(wts) if self.weight_by_conf else None
        if weights is not None:
            weights = np.where(weights > 0, weights, 0.0)
        used = self.map.insert(points, colors, weights)
        ok = np.all(np.isfinite(points), axis=1) & (weights > 0 if weights is not None else True)
        return used, points[ok], colors[ok]

def pose_covariance(residual: float, extent: float, fit: ScaleFit | None = None, num_points: int = 1) -> np.ndarray:
    """``[6, 6]`` diagonal pose covariance (x, y, z, rotation about x, y, z) of a stitched window.

    Standard errors of the registration: position variance ``residual^2 / num_points`` (alignment residual
    over the inlier correspondences) plus ``fit.residual^2 / fit.num_pairs`` (odometry scale fit); rotation
    variance ``(residual / extent)^2 / num_points`` (a residual spread over points ``extent`` away tilts the
    fit by about that angle). Estimates are floored at :data:`MIN_POSITION_VARIANCE` and
    :data:`MIN_ROTATION_VARIANCE` (noise-free data would otherwise read as "perfectly known"); components without
    a finite estimate are :data:`UNKNOWN_VARIANCE`.
    """
    n = max(int(num_points), 1)
    var_p = residual ** 2 / n if np.isfinite(residual) else float("nan")
    if fit is not None and np.isfinite(fit.residual):
        var_p = (var_p if np.isfinite(var_p) else 0.0) + fit.residual ** 2 / max(fit.num_pairs, 1)
    ok_r = np.isfinite(residual) and np.isfinite(extent) and extent > 0
    var_r = (residual / extent) ** 2 / n if ok_r else float("nan")
    var_p = max(var_p, MIN_POSITION_VARIANCE) if np.isfinite(var_p) else UNKNOWN_VARIANCE
    var_r = max(var_r, MIN_ROTATION_VARIANCE) if np.isfinite(var_r) else UNKNOWN_VARIANCE
    return np.diag([var_p] * 3 + [var_r] * 3)
