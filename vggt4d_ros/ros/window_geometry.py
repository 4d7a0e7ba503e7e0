"""One processed window as a :class:`~vggt4d_ros.windows.WindowGeometry`, the stitcher's input.

The network's (or the test-only synthetic source's) result for the window's frames is cleaned and made
consistent before stitching: invalid depths are zeroed, pixels below the window's confidence percentile are
dropped from the map and the alignment, focal lengths follow camera_info when it is known, and the frames' metric
``odom -> camera`` poses (from TF, :meth:`vggt4d_ros.ros.tf_io.TfBridge.window_odometry`) are attached.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from vggt4d_ros.model.preprocess import intrinsics_to_model
from vggt4d_ros.windows import Window, WindowGeometry, focal_rescale

__all__ = ["window_geometry"]


def window_geometry(part: Window, result: Any, frames: Sequence[Any], conf_threshold: float,
                    use_camera_info: bool, odom_c2w: np.ndarray | None) -> WindowGeometry:
    """The geometry of ``part``.

    Args:
        part: the window (stamps, segment, index).
        result: its VGGT4D result: ``extrinsic [S, 3, 4]``, ``intrinsic [S, 3, 3]``, ``depth``, ``depth_conf``,
            ``dynamic_mask`` ``[S, H, W]`` on the model grid (arrays or CPU tensors).
        frames: the window's node frames (``model_image [3, H, W]``, ``K``, ``prep``).
        conf_threshold: percentile (0-100) of the static pixels' confidence below which a pixel gets confidence 0.
        use_camera_info: rescale the focal lengths to the camera_info intrinsics when every frame has them.
        odom_c2w: ``[S, 4, 4]`` metric camera-to-odom poses of the frames, or None.
    """
    depth = np.asarray(result.depth, dtype=np.float32)
    conf = np.asarray(result.depth_conf, dtype=np.float32)
    dyn = np.asarray(result.dynamic_mask, dtype=bool)
    bad = ~(np.isfinite(depth) & np.isfinite(conf) & (depth > 0))
    depth = np.where(bad, 0.0, depth).astype(np.float32)
    conf = np.where(bad, 0.0, conf).astype(np.float32)
    candidates = ~bad & ~dyn
    if conf_threshold > 0 and candidates.any():
        thr = np.percentile(conf[candidates], conf_threshold)
        conf = np.where(conf >= thr, conf, 0.0).astype(np.float32)
    images = torch.stack([f.model_image for f in frames])
    images_u8 = (images.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    geom = WindowGeometry(stamps=part.stamps_ns, extrinsic=np.asarray(result.extrinsic, dtype=np.float64),
                          intrinsic=np.asarray(result.intrinsic, dtype=np.float64), depth=depth, conf=conf,
                          dynamic_mask=dyn, images=images_u8, segment=part.segment, index=part.index,
                          odom_c2w=odom_c2w)
    if use_camera_info and all(f.K is not None for f in frames):
        known = intrinsics_to_model(np.stack([f.K for f in frames]), [f.prep for f in frames])
        geom = focal_rescale(geom, known)
    return geom
