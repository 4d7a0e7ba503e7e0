"""Stitching drift over a long synthetic loop, with and without the robot's odometry (numpy only, no model).

The scene is the inside of a 24 x 24 x 4 m room (z up); a camera at about 1.2 m height drives two laps of an
ellipse (about 66 m) with wobbling yaw and pitch. Depth is ray-cast analytically on a tiny image (16 x 12
pixels: enough correspondences, seconds for 1000 keyframes). Keyframes are grouped into windows (16 frames,
6 shared with the previous window, as the node's defaults), and each window is degraded by
:func:`vggt4d_ros.synthetic_geometry.noisy_window`: its own frame and a random scale in ``[0.2, 5]``, 1 %
pose noise and 5 % depth noise by default. The windows go through the real
:class:`~vggt4d_ros.windows.stitcher.Stitcher`:

* with odometry (true camera poses plus 5 mm noise) the estimate is compared with the truth as it is
  (map frame = odom frame at the first frame, metric): ATE / path length and the scale error at the end;
* without odometry the estimate is first aligned to the truth by one Sim(3); the scale drift is the ratio of
  the scales that fit the last and the first 10 % of the trajectory.

Optional segment breaks (``breaks``: keyframe indices where a new segment starts, with no overlap to the
previous window) exercise segment anchoring.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from vggt4d_ros.synthetic_geometry import noisy_window
from vggt4d_ros.windows import OPTICAL_TO_BODY, Stitcher, VoxelMap, WindowGeometry, umeyama

logger = logging.getLogger(__name__)

__all__ = ["LoopScene", "drift_markdown", "drift_metrics", "loop_windows", "make_loop", "run_drift_bench", "stitch"]

ROOM_MIN = np.array([-12.0, -12.0, 0.0])
ROOM_MAX = np.array([12.0, 12.0, 4.0])
_H, _W, _F = 12, 16, 12.0
_BASE_NS = 1_700_000_000_000_000_000
_PERIOD_NS = 100_000_000


@dataclass(frozen=True)
class LoopScene:
    """Ground truth of the loop.

    Attributes:
        c2w: ``[N, 4, 4]`` camera(optical)-to-world poses, world z up (this is also the odom frame).
        K: ``[3, 3]`` intrinsics of the ``[H, W]`` grid.
        depth: ``[N, H, W]`` z-depth in metres.
        stamps: ``[N]`` int64 nanoseconds (10 Hz).
    """

    c2w: np.ndarray
    K: np.ndarray
    depth: np.ndarray
    stamps: np.ndarray

    @property
    def path_length(self) -> float:
        return float(np.sum(np.linalg.norm(np.diff(self.c2w[:, :3, 3], axis=0), axis=1)))


def make_loop(num_keyframes: int = 1000, laps: float = 2.0) -> LoopScene:
    """The loop's ground truth (deterministic)."""
    if num_keyframes < 2:
        raise ValueError(f"num_keyframes must be >= 2, got {num_keyframes}")
    u = np.linspace(0.0, 2.0 * np.pi * laps, num_keyframes, endpoint=False)
    pos = np.stack([6.0 * np.cos(u), 4.5 * np.sin(u), 1.2 + 0.1 * np.sin(3.0 * u)], axis=1)
    heading = np.arctan2(4.5 * np.cos(u), -6.0 * np.sin(u))  # direction of motion
    yaw = heading + np.deg2rad(10.0) * np.sin(5.0 * u)
    pitch = np.deg2rad(3.0) * np.sin(7.0 * u)
    body = Rotation.from_euler("ZY", np.stack([yaw, pitch], axis=1)).as_matrix()  # body-to-world, z up
    c2w = np.tile(np.eye(4), (num_keyframes, 1, 1))
    c2w[:, :3, :3] = body @ OPTICAL_TO_BODY
    c2w[:, :3, 3] = pos
    K = np.array([[_F, 0.0, (_W - 1) / 2.0], [0.0, _F, (_H - 1) / 2.0], [0.0, 0.0, 1.0]])
    v, uu = np.mgrid[0:_H, 0:_W]
    rays = np.stack([(uu.ravel() - K[0, 2]) / _F, (v.ravel() - K[1, 2]) / _F, np.ones(_H * _W)])  # [3, P], z = 1
    depth = np.empty((num_keyframes, _H, _W))
    for i in range(num_keyframes):
        d = c2w[i, :3, :3] @ rays  # world directions, lambda along them is the z-depth
        o = c2w[i, :3, 3][:, None]
        with np.errstate(divide="ignore"):
            lam = np.where(d > 0, (ROOM_MAX[:, None] - o) / d, (ROOM_MIN[:, None] - o) / d)
        depth[i] = np.min(np.where(np.isfinite(lam) & (lam > 0), lam, np.inf), axis=0).reshape(_H, _W)
    stamps = _BASE_NS + np.arange(num_keyframes, dtype=np.int64) * _PERIOD_NS
    return LoopScene(c2w=c2w, K=K, depth=depth, stamps=stamps)


def loop_windows(
    scene: LoopScene,
    window: int = 16,
    overlap: int = 6,
    depth_noise: float = 0.05,
    pose_noise: float = 0.01,
    odometry: bool = True,
    odom_noise: float = 0.005,
    breaks: Sequence[int] = (),
    seed: int = 0,
) -> list[WindowGeometry]:
    """Noisy windows of the loop, in processing order.

    Args:
        window, overlap: window size and frames shared by consecutive windows of a segment.
        depth_noise, pose_noise: see :func:`~vggt4d_ros.synthetic_geometry.noisy_window`.
        odometry: attach ``odom_c2w`` (the true poses plus ``odom_noise`` metres of position noise).
        breaks: keyframe indices that start a new segment (the window there shares no frame with the previous).
        seed: noise seed.
    """
    rng = np.random.default_rng(seed)
    N = len(scene.stamps)
    cuts = sorted({0, *[int(b) for b in breaks if 0 < int(b) < N]}) + [N]
    out: list[WindowGeometry] = []
    ext_true = np.linalg.inv(scene.c2w)[:, :3, :]
    for seg, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        start = a
        while True:
            stop = min(start + window, b)
            if stop - start < 2:
                break
            ids = np.arange(start, stop)
            ext, depth, _ = noisy_window(ext_true[ids], scene.depth[ids], rng, depth_noise=depth_noise,
                                         pose_noise=pose_noise)
            odom = None
            if odometry:
                odom = scene.c2w[ids].copy()
                odom[:, :3, 3] += rng.normal(scale=odom_noise, size=(len(ids), 3))
            out.append(WindowGeometry(stamps=scene.stamps[ids], extrinsic=ext,
                                      intrinsic=np.broadcast_to(scene.K, (len(ids), 3, 3)), depth=depth,
                                      conf=np.ones(depth.shape, dtype=np.float32), segment=seg, index=len(out),
                                      odom_c2w=odom))
            if stop == b:
                break
            start = stop - overlap
    return out


def stitch(windows: Sequence[WindowGeometry], **stitcher_kwargs: Any) -> tuple[Stitcher, list[Any]]:
    """Run the windows through a :class:`Stitcher` (a coarse voxel map: the map is not measured here)."""
    kwargs = {"voxel_map": VoxelMap(voxel_size=0.25, max_points=50_000), "max_points_per_frame": 16}
    kwargs.update(stitcher_kwargs)
    st = Stitcher(**kwargs)
    return st, [st.add(w) for w in windows]


def drift_metrics(est_c2w: np.ndarray, true_c2w: np.ndarray, align: bool) -> dict[str, float]:
    """Position error of ``[N, 4, 4]`` estimated poses against the truth.

    With ``align`` the estimate is first mapped by the least-squares Sim(3) onto the truth. Returns
    ``ate_over_path`` (RMS position error / path length), ``max_error_over_path``, ``scale_drift`` (scale fitting
    the last 10 % of the trajectory over that fitting the first 10 %, minus 1) and ``end_scale_error`` (scale of
    the estimate over the last 10 %, against metres, minus 1; meaningful for metric estimates).
    """
    est = np.asarray(est_c2w, dtype=np.float64)[:, :3, 3]
    tru = np.asarray(true_c2w, dtype=np.float64)[:, :3, 3]
    if align:
        est = umeyama(est, tru).apply(est)
    err = np.linalg.norm(est - tru, axis=1)
    path = float(np.sum(np.linalg.norm(np.diff(tru, axis=0), axis=1)))
    k = max(3, len(est) // 10)
    s_first = umeyama(est[:k], tru[:k]).s
    s_last = umeyama(est[-k:], tru[-k:]).s
    return {
        "ate_over_path": float(np.sqrt(np.mean(err ** 2)) / path),
        "max_error_over_path": float(err.max() / path),
        "scale_drift": float(s_first / s_last - 1.0),
        "end_scale_error": float(1.0 / s_last - 1.0),
    }


def run_drift_bench(num_keyframes: int = 1000, seed: int = 0, depth_noise: float = 0.05,
                    pose_noise: float = 0.01) -> dict[str, Any]:
    """The drift section of ``vggt4d bench``: the loop with and without odometry."""
    scene = make_loop(num_keyframes)
    out: dict[str, Any] = {"keyframes": num_keyframes, "window": 16, "overlap": 6, "depth_noise": depth_noise,
                           "pose_noise": pose_noise, "path_length_m": scene.path_length}
    for name, odometry in (("with_odometry", True), ("without_odometry", False)):
        t0 = time.perf_counter()
        windows = loop_windows(scene, depth_noise=depth_noise, pose_noise=pose_noise, odometry=odometry, seed=seed)
        st, _ = stitch(windows)
        stamps, poses = st.snapshot()[2:]
        truth = scene.c2w[np.searchsorted(scene.stamps, stamps)]
        metrics = drift_metrics(poses, truth, align=not odometry)
        metrics["metric"] = st.metric
        metrics["windows"] = len(windows)
        metrics["seconds"] = time.perf_counter() - t0
        out[name] = metrics
        logger.info("drift %s: ATE/path %.4f, scale drift %+.4f", name, metrics["ate_over_path"],
                    metrics["scale_drift"])
    return out


def drift_markdown(section: dict[str, Any]) -> list[str]:
    """Markdown lines of the drift section for the bench report."""
    lines = [f"## Stitching drift, {section['keyframes']} synthetic keyframes ({section['path_length_m']:.1f} m loop)",
             "", f"Windows {section['window']}/{section['overlap']}, random scale per window, "
             f"{100 * section['depth_noise']:g} % depth noise, {100 * section['pose_noise']:g} % pose noise "
             "(vggt4d_ros/bench/drift.py). With odometry: no alignment before comparing (metric map); without: "
             "one Sim(3) for the whole trajectory.", "",
             "| | ATE / path | max error / path | scale drift (end vs start) | scale error at the end | s |",
             "|---|---|---|---|---|---|"]
    for name in ("with_odometry", "without_odometry"):
        m = section.get(name)
        if m:
            end = f"{100 * m['end_scale_error']:+.1f} %" if m.get("metric") else "(not metric)"
            lines.append(f"| {name.replace('_', ' ')} | {100 * m['ate_over_path']:.2f} % | "
                         f"{100 * m['max_error_over_path']:.2f} % | {100 * m['scale_drift']:+.1f} % | {end} | "
                         f"{m['seconds']:.1f} |")
    return lines + [""]
