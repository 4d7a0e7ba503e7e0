"""Publishing one stitched window: the per-frame images and their camera_info twins, odometry, TF, clouds, path
and the ``~/window`` message (topics and QoS: :mod:`vggt4d_ros.ros.publishers`; TF: :mod:`vggt4d_ros.ros.tf_io`).

Everything geometric comes from the stitched window (:class:`~vggt4d_ros.windows.StitchResult` and the window's
geometry mapped by its Sim(3)), so the poses, ``~/depth``, ``~/static_cloud``, ``~/dynamic_cloud``, ``~/path``
and the map share one frame (``map_frame``) and one scale (metres when the stitcher has a metric scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from vggt4d_ros.dynamic.masks import overlay_mask
from vggt4d_ros.model.preprocess import PreprocessInfo, intrinsics_to_original, mask_to_original
from vggt4d_ros.windows import Stitcher, StitchResult, WindowGeometry, w2c_to_c2w

from .conversions import (
    depth_to_image,
    mask_to_image,
    matrices_to_poses,
    ns_to_stamp,
    points_to_pointcloud2,
    rgb_to_image,
)
from .publishers import OutputPublishers, make_camera_info, make_header, make_odometry, make_path
from .tf_io import TfBridge

__all__ = ["WindowOutputs", "FrameOutputs"]


@dataclass
class FrameOutputs:
    """What one window gives per frame at the input resolution.

    Attributes:
        c2w: ``[S, 4, 4]`` camera-to-map poses of the optical camera frame.
        masks: ``[S, h, w]`` bool dynamic masks.
        depth: ``[S, h, w]`` float32 depth in map units (metres when metric), 0 where unknown.
        K: ``[S, 3, 3]`` intrinsics at the input resolution.
    """

    c2w: np.ndarray
    masks: np.ndarray
    depth: np.ndarray
    K: np.ndarray


class WindowOutputs:
    """The named publishing steps of one window (called by the node's worker thread)."""

    def __init__(self, params: Any, pubs: OutputPublishers, tf: TfBridge, window_type: type) -> None:
        self.p = params
        self.pubs = pubs
        self.tf = tf
        self.window_type = window_type

    # ------------------------------------------------------------------ per frame
    def frame_outputs(self, stitch: StitchResult, mapped: WindowGeometry,
                      infos: Sequence[PreprocessInfo]) -> FrameOutputs:
        """Poses, masks, depth and intrinsics of every frame of the window at the input resolution."""
        c2w = w2c_to_c2w(stitch.extrinsic)
        masks = mask_to_original(mapped.dynamic_mask, infos)
        depth = mask_to_original(np.where(np.isfinite(mapped.depth), mapped.depth, 0.0).astype(np.float32), infos,
                                 interpolation="nearest")  # nearest: no blending across depth edges
        K = np.asarray(intrinsics_to_original(mapped.intrinsic, infos), dtype=np.float64)
        return FrameOutputs(c2w=c2w, masks=masks, depth=depth, K=K)

    def publish_frames(self, frames: Sequence[Any], fresh: Sequence[int], out: FrameOutputs, camera: str,
                       stitch: StitchResult) -> None:
        """For every frame index in ``fresh`` (processed for the first time): mask + camera_info, overlay,
        depth + camera_info, odometry."""
        pubs = self.pubs
        for i in fresh:
            f = frames[i]
            h, w = out.masks.shape[1:]
            info = make_camera_info(out.K[i], w, h, f.header, template=getattr(f, "camera_info", None))
            pubs.mask.publish(mask_to_image(out.masks[i], f.header))
            pubs.mask_info.publish(info)
            if pubs.overlay is not None:
                pubs.overlay.publish(rgb_to_image(overlay_mask(f.image, out.masks[i]), f.header))
            pubs.depth.publish(depth_to_image(out.depth[i], f.header))
            pubs.depth_info.publish(info)
            child, cam_T_child = self.tf.odometry_child(camera, f.stamp_ns)
            pubs.odometry.publish(make_odometry(out.c2w[i] @ cam_T_child, f.header.stamp, self.p.map_frame, child,
                                                stitch.covariance))

    def publish_tf(self, frames: Sequence[Any], fresh: Sequence[int], out: FrameOutputs,
                   stitch: StitchResult) -> None:
        """TF of the window (per frame in map_to_camera, the new map -> odom in map_to_odom)."""
        self.tf.publish_window(out.c2w[list(fresh)], [frames[i].header for i in fresh], stitch.map_to_odom)

    # ------------------------------------------------------------------ per window
    def publish_clouds(self, stitch: StitchResult, mapped: WindowGeometry, stamp: Any) -> None:
        """``~/static_cloud`` (the points this window added to the map) and ``~/dynamic_cloud`` (moving points
        of the newest frame), both in the map frame."""
        header = make_header(stamp, self.p.map_frame)
        pts = np.asarray(getattr(stitch, "points", np.zeros((0, 3))), dtype=np.float64).reshape(-1, 3)
        cols = getattr(stitch, "colors", None)
        cols = None if cols is None else np.asarray(cols, dtype=np.uint8).reshape(-1, 3)
        self.pubs.static_cloud.publish(points_to_pointcloud2(pts, cols, header))
        i = mapped.num_frames - 1
        sel = mapped.dynamic_mask[i] & np.isfinite(mapped.depth[i]) & (mapped.depth[i] > 0)
        dyn_cols = mapped.images[i][sel] if mapped.images is not None else None
        self.pubs.dynamic_cloud.publish(points_to_pointcloud2(mapped.frame_points(i, sel), dyn_cols, header))

    def publish_path(self, stitcher: Stitcher) -> None:
        traj = stitcher.trajectory
        n = self.p.max_path_length
        stamps, poses = traj.stamps()[-n:], traj.poses()[-n:]
        self.pubs.path.publish(make_path([ns_to_stamp(int(s)) for s in stamps], poses, self.p.map_frame))

    def publish_window_msg(self, part: Any, frames: Sequence[Any], out: FrameOutputs, stitch: StitchResult,
                           timings: dict[str, float]) -> None:
        """``~/window``: stamps, dynamic fractions, poses, intrinsics, alignment and scale, stage times."""
        msg = self.window_type()
        msg.header = make_header(frames[-1].header.stamp, self.p.map_frame)
        msg.window_index = int(part.index)
        msg.segment_index = int(part.segment)
        msg.frame_stamps = [f.header.stamp for f in frames]
        msg.dynamic_fraction = [float(x) for x in out.masks.reshape(len(frames), -1).mean(axis=1)]
        msg.camera_poses = matrices_to_poses(out.c2w)
        msg.intrinsics = [float(x) for x in out.K.reshape(-1)]
        msg.image_height, msg.image_width = (int(x) for x in out.masks.shape[1:])
        msg.alignment_scale = float(stitch.scale)
        msg.alignment_residual = float(stitch.residual)
        msg.alignment_points = int(stitch.num_correspondences)
        msg.metric = bool(stitch.metric)
        msg.scale_source = stitch.scale_source
        msg.anchor = stitch.anchor
        msg.stage_names = [str(k) for k in timings]
        msg.stage_times = [float(v) for v in timings.values()]
        self.pubs.window.publish(msg)
