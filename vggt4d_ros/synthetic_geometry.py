"""TEST ONLY: windows of true geometry in a random per-window scale with noise, shaped like a VGGT4D result.

Geometry through the whole node (TF, metric scale, map, path) cannot be judged with a random-weight model, so
tests and benchmarks replace the network by the truth of a synthetic scene, degraded the way a per-window
reconstruction is: every window lives in its own frame (its first camera is the identity, as VGGT's) and its
own random scale, its cameras carry pose noise and its depths multiplicative noise. Windows, stitching, TF and
publishing stay the real code.

* :func:`noisy_window` degrades the true cameras and depths of one window (shared by the node's test source
  and the drift benchmark, :mod:`vggt4d_ros.bench.drift`).
* :class:`SyntheticGeometrySource` answers the node's "run this window" for frames of
  :func:`vggt4d_ros.synthetic.render_scene` (same arguments), at the model grid of each frame.
* :data:`SCENE_TO_ODOM`, :func:`camera_poses_in_odom` and :func:`odom_to_base` express the scene's cameras
  in a z-up odom frame, for the ``/tf`` a test publishes.

Noise model (``pose_noise``, ``depth_noise``; defaults 1 % and 5 %): frames after the first get a rotation
error with ``pose_noise`` radians standard deviation per axis and a position error with standard deviation
``pose_noise`` times the camera extent (largest distance from the first camera) per axis; every depth is multiplied by
``1 + depth_noise * N(0, 1)`` (clipped at 0.05). Scales are drawn log-uniformly from ``scale_range``.
Numpy only; never used with a real camera.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from vggt4d_ros.synthetic import DEFAULT_BASE_STAMP_NS, _build_scene, _cast
from vggt4d_ros.windows.geometry import OPTICAL_TO_BODY, camera_centers, w2c_to_c2w
from vggt4d_ros.windows.sim3 import Sim3

logger = logging.getLogger(__name__)

__all__ = [
    "SCENE_TO_ODOM",
    "SyntheticGeometrySource",
    "SyntheticResult",
    "camera_poses_in_odom",
    "noisy_window",
    "odom_to_base",
]

#: ``[4, 4]`` pose of the synthetic scene's world (x right, y down = gravity, z forward) in a z-up odom frame
#: (x forward, y left, z up) with the same origin: ``odom_T_world``.
SCENE_TO_ODOM = np.eye(4)
SCENE_TO_ODOM[:3, :3] = OPTICAL_TO_BODY


def camera_poses_in_odom(extrinsics: np.ndarray) -> np.ndarray:
    """``[N, 4, 4]`` camera-to-odom poses (``SCENE_TO_ODOM @ c2w``) of world-to-camera ``[N, 3, 4]``
    extrinsics of the synthetic scene."""
    return SCENE_TO_ODOM @ w2c_to_c2w(extrinsics)


def odom_to_base(extrinsics: np.ndarray, base_T_camera: np.ndarray) -> np.ndarray:
    """``[N, 4, 4]`` ``odom_T_base_link`` for a camera mounted at ``base_T_camera`` ``[4, 4]`` (pose of the
    optical frame in base_link), so that ``odom_T_base @ base_T_camera`` is :func:`camera_poses_in_odom`."""
    mount = np.asarray(base_T_camera, dtype=np.float64)
    if mount.shape != (4, 4):
        raise ValueError(f"base_T_camera must be [4, 4], got {mount.shape}")
    return camera_poses_in_odom(extrinsics) @ np.linalg.inv(mount)


def noisy_window(
    extrinsic: np.ndarray,
    depth: np.ndarray,
    rng: np.random.Generator,
    depth_noise: float = 0.05,
    pose_noise: float = 0.01,
    scale_range: tuple[float, float] = (0.2, 5.0),
) -> tuple[np.ndarray, np.ndarray, float]:
    """One window's true geometry as a per-window reconstruction would give it.

    Args:
        extrinsic: ``[S, 3, 4]`` true world-to-camera of the window's frames (metres).
        depth: ``[S, H, W]`` true z-depth (metres; non-positive or non-finite pixels stay as they are).
        rng: noise generator.
        depth_noise: relative depth noise (standard deviation).
        pose_noise: rotation noise in radians and position noise relative to the window's size (see the module
            docstring).
        scale_range: ``(low, high)`` of the log-uniform window scale.

    Returns:
        ``(extrinsic [S, 3, 4], depth [S, H, W] float32, scale)``: world-to-camera in the window's frame (first
        camera = identity up to nothing: it gets no noise) and units (``scale`` window units per metre).
    """
    E = np.asarray(extrinsic, dtype=np.float64)
    D = np.asarray(depth, dtype=np.float64)
    if E.ndim != 3 or E.shape[1:] != (3, 4) or D.ndim != 3 or len(D) != len(E):
        raise ValueError(f"extrinsic must be [S, 3, 4] and depth [S, H, W], got {E.shape} and {D.shape}")
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    S = len(E)
    s = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    gauge = Sim3(s, E[0, :, :3], s * E[0, :, 3])  # world -> first camera frame, in window units
    ext = gauge.transform_pose_w2c(E)
    valid = np.isfinite(D) & (D > 0)
    size = float(np.max(np.linalg.norm(camera_centers(ext) - camera_centers(ext)[0], axis=1)))
    if S > 1 and pose_noise > 0:
        dR = Rotation.from_rotvec(rng.normal(scale=pose_noise, size=(S - 1, 3))).as_matrix()
        c2w = w2c_to_c2w(ext[1:])
        c2w[:, :3, :3] = dR @ c2w[:, :3, :3]
        c2w[:, :3, 3] += rng.normal(scale=pose_noise * size, size=(S - 1, 3))
        R = np.swapaxes(c2w[:, :3, :3], 1, 2)
        ext[1:, :, :3] = R
        ext[1:, :, 3] = -np.einsum("nij,nj->ni", R, c2w[:, :3, 3])
    factor = 1.0 + depth_noise * rng.standard_normal(D.shape)
    out = np.where(valid, s * D * np.maximum(factor, 0.05), D).astype(np.float32)
    return ext, out, s


@dataclass
class SyntheticResult:
    """What the node reads from a VGGT4D result, for ``S`` frames on the model grid ``H x W``.

    Attributes:
        extrinsic: ``[S, 3, 4]`` world-to-camera in the window's frame and scale.
        intrinsic: ``[S, 3, 3]`` true intrinsics on the model grid.
        depth: ``[S, H, W]`` float32 noisy depth in window units.
        depth_conf: ``[S, H, W]`` float32, 1 on the image content, 0 on padding.
        dynamic_mask: ``[S, H, W]`` bool, true on the moving boxes.
        points: ``[0, 3]`` float32 (the map gets its points from the stitcher).
        colors: ``[0, 3]`` uint8.
        timings: ``{"synthetic": seconds}``.
        scale: window units per metre of this window.
        frame_indices: ``[S]`` frame numbers in the scene.
    """

    extrinsic: np.ndarray
    intrinsic: np.ndarray
    depth: np.ndarray
    depth_conf: np.ndarray
    dynamic_mask: np.ndarray
    scale: float
    frame_indices: np.ndarray
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.float32))
    colors: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.uint8))
    timings: dict[str, float] = field(default_factory=dict)


class SyntheticGeometrySource:
    """True geometry of :func:`vggt4d_ros.synthetic.render_scene` windows, degraded by :func:`noisy_window`.

    The constructor takes ``render_scene``'s scene arguments (same values as the test's call); image size and
    model grid come from each frame's :class:`~vggt4d_ros.model.preprocess.PreprocessInfo` (only its
    ``original_size``, ``model_size``, ``content_box`` and ``original_to_model_matrix()`` are used). Noise is
    drawn from a generator seeded with ``(noise_seed, first frame, number of frames)``, so a window gives the
    same result whenever it is run.
    """

    def __init__(
        self,
        seed: int,
        num_frames: int,
        fps: float = 10.0,
        base_stamp_ns: int = DEFAULT_BASE_STAMP_NS,
        depth_noise: float = 0.05,
        pose_noise: float = 0.01,
        noise_seed: int = 0,
        *,
        num_boxes: int = 1,
        focal_scale: float = 0.9,
        camera_motion: bool = True,
        rotate_boxes: bool = True,
        scale_range: tuple[float, float] = (0.2, 5.0),
    ) -> None:
        if num_frames < 1 or fps <= 0 or focal_scale <= 0:
            raise ValueError(f"need num_frames >= 1, fps > 0, focal_scale > 0; got {num_frames}, {fps}, {focal_scale}")
        if depth_noise < 0 or pose_noise < 0:
            raise ValueError(f"noise levels must be >= 0, got depth {depth_noise}, pose {pose_noise}")
        self._scene = _build_scene(num_frames, seed, num_boxes, camera_motion, rotate_boxes)
        self.num_frames = int(num_frames)
        self.fps = float(fps)
        self.base_stamp_ns = int(base_stamp_ns)
        self.depth_noise = float(depth_noise)
        self.pose_noise = float(pose_noise)
        self.noise_seed = int(noise_seed)
        self.focal_scale = float(focal_scale)
        self.scale_range = scale_range
        self._cache: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    @property
    def extrinsics(self) -> np.ndarray:
        """``[N, 3, 4]`` true world-to-camera of all frames (metres)."""
        return self._scene.extrinsics.copy()

    @property
    def stamps_ns(self) -> np.ndarray:
        """``[N]`` stamps of the frames, as ``render_scene`` gives them."""
        return self.base_stamp_ns + np.round(np.arange(self.num_frames) * (1e9 / self.fps)).astype(np.int64)

    def frame_index(self, stamp_ns: int) -> int:
        """Frame number of a stamp; ValueError when the stamp is not a frame of the scene."""
        k = int(round((int(stamp_ns) - self.base_stamp_ns) * self.fps / 1e9))
        if not 0 <= k < self.num_frames or abs(int(self.stamps_ns[k]) - int(stamp_ns)) > 1_000_000:
            raise ValueError(f"stamp {stamp_ns} is not a frame of the synthetic scene "
                             f"({self.num_frames} frames from {self.base_stamp_ns} at {self.fps:g} fps)")
        return k

    def true_intrinsics(self, height: int, width: int) -> np.ndarray:
        """``[3, 3]`` intrinsics of ``render_scene`` images of this size."""
        f = self.focal_scale * width
        return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])

    def _truth(self, k: int, K: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """True depth ``[H, W]`` and moving-object mask of frame ``k`` for intrinsics ``K`` on an ``hw`` grid."""
        key = (k, hw, K.tobytes())
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        H, W = hw
        E = self._scene.extrinsics[k]
        R, t = E[:, :3], E[:, 3]
        v, u = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
        d_cam = np.stack([(u.ravel() - K[0, 2]) / K[0, 0], (v.ravel() - K[1, 2]) / K[1, 1], np.ones(H * W)], axis=1)
        t_hit, _, obj, _, _, _ = _cast(self._scene, k, -R.T @ t, d_cam @ R)  # unit camera z: t is the z-depth
        out = (t_hit.reshape(H, W).astype(np.float32), obj.reshape(H, W) >= 0)
        self._cache[key] = out
        while len(self._cache) > 64:
            self._cache.popitem(last=False)
        return out

    def run(self, stamps_ns: Sequence[int], infos: Sequence[Any]) -> SyntheticResult:
        """Geometry of the window with these frame stamps; ``infos`` are the frames' PreprocessInfo.

        Raises:
            ValueError: a stamp that is not a frame of the scene, or infos of another length.
        """
        t0 = time.perf_counter()
        idx = np.array([self.frame_index(s) for s in stamps_ns], dtype=np.int64)
        if len(infos) != len(idx) or len(idx) == 0:
            raise ValueError(f"need one PreprocessInfo per stamp, got {len(infos)} for {len(idx)} stamps")
        Ks, depths, masks, confs = [], [], [], []
        for k, info in zip(idx, infos):
            h, w = info.original_size
            K = np.asarray(info.original_to_model_matrix(), dtype=np.float64) @ self.true_intrinsics(h, w)
            hw = tuple(int(x) for x in info.model_size)
            d, m = self._truth(int(k), K, hw)
            conf = np.zeros(hw, dtype=np.float32)
            top, left, bottom, right = info.content_box
            conf[top:bottom, left:right] = 1.0
            Ks.append(K)
            depths.append(d)
            masks.append(m)
            confs.append(conf)
        rng = np.random.default_rng([self.noise_seed, int(idx[0]), len(idx)])
        ext, depth, scale = noisy_window(self._scene.extrinsics[idx], np.stack(depths), rng,
                                         depth_noise=self.depth_noise, pose_noise=self.pose_noise,
                                         scale_range=self.scale_range)
        return SyntheticResult(extrinsic=ext, intrinsic=np.stack(Ks), depth=depth, depth_conf=np.stack(confs),
                               dynamic_mask=np.stack(masks), scale=scale, frame_indices=idx,
                               timings={"synthetic": time.perf_counter() - t0})
