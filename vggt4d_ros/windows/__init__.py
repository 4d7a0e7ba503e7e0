"""Sliding windows, keyframes, background processing, Sim(3) stitching and map accumulation (numpy only).

Pipeline: :class:`WindowAssembler` (segments + keyframes + :class:`WindowBuilder`) emits :class:`Window`\\ s,
:class:`WindowWorker` runs VGGT4D on them off the callback thread, each result becomes a
:class:`WindowGeometry`, and :class:`Stitcher` aligns it into the map frame with a robust Sim(3)
(:func:`align_window`), updating the :class:`Trajectory` and the :class:`VoxelMap`. With the robot's odometry
(``WindowGeometry.odom_c2w``) the scale is metric (:func:`fit_metric_scale`) and the map frame is the odom frame
at the first frame. :class:`TransformBuffer` is a ROS-free, time-indexed TF tree the node fills from ``/tf``.
"""

from .align import (
    WindowGeometry,
    align_window,
    focal_rescale,
    intrinsics_residual,
    match_frames,
    rescale_intrinsics,
)
from .fusion import MapOdomFilter
from .geometry import OPTICAL_TO_BODY, backproject_pixels, camera_centers, w2c_to_c2w
from .keyframes import KeyframeSelector
from .map import VoxelMap, read_ply, write_ply
from .odometry import SCALE_SOURCES, ScaleFit, fit_metric_scale
from .sim3 import SIM3_METHODS, Sim3, robust_sim3, umeyama
from .stitcher import ANCHOR_KINDS, STITCH_STATUSES, UNKNOWN_VARIANCE, Stitcher, StitchResult, pose_covariance
from .tf_buffer import TransformBuffer, TransformLookupError
from .trajectory import Trajectory, format_tum, read_tum, save_tum
from .window import (
    SEGMENT_REASONS,
    AssemblerStep,
    Frame,
    SegmentTracker,
    Window,
    WindowAssembler,
    WindowBuilder,
)
from .worker import DROP_POLICIES, DROP_REASONS, WindowWorker, is_out_of_memory, split_window

__all__ = [
    "ANCHOR_KINDS",
    "AssemblerStep",
    "DROP_POLICIES",
    "DROP_REASONS",
    "Frame",
    "KeyframeSelector",
    "MapOdomFilter",
    "OPTICAL_TO_BODY",
    "SCALE_SOURCES",
    "SEGMENT_REASONS",
    "SIM3_METHODS",
    "STITCH_STATUSES",
    "ScaleFit",
    "SegmentTracker",
    "Sim3",
    "StitchResult",
    "Stitcher",
    "Trajectory",
    "TransformBuffer",
    "TransformLookupError",
    "UNKNOWN_VARIANCE",
    "VoxelMap",
    "Window",
    "WindowAssembler",
    "WindowBuilder",
    "WindowGeometry",
    "WindowWorker",
    "align_window",
    "backproject_pixels",
    "camera_centers",
    "fit_metric_scale",
    "focal_rescale",
    "format_tum",
    "intrinsics_residual",
    "is_out_of_memory",
    "match_frames",
    "pose_covariance",
    "read_ply",
    "read_tum",
    "rescale_intrinsics",
    "robust_sim3",
    "save_tum",
    "split_window",
    "umeyama",
    "w2c_to_c2w",
    "write_ply",
]
