"""Sliding windows, keyframes, background processing, Sim(3) stitching and map accumulation (numpy only).

Pipeline: :class:`WindowAssembler` (segments + keyframes + :class:`WindowBuilder`) emits :class:`Window`\\ s,
:class:`WindowWorker` runs VGGT4D on them off the callback thread, each result becomes a
:class:`WindowGeometry`, and :class:`Stitcher` aligns it into the map frame with a robust Sim(3)
(:func:`align_window`), updating the :class:`Trajectory` and the :class:`VoxelMap`.
"""

from .align import (
    WindowGeometry,
    align_window,
    focal_rescale,
    intrinsics_residual,
    match_frames,
    rescale_intrinsics,
)
from .geometry import backproject_pixels, camera_centers, w2c_to_c2w
from .keyframes import KeyframeSelector
from .map import VoxelMap, read_ply, write_ply
from .sim3 import SIM3_METHODS, Sim3, robust_sim3, umeyama
from .stitcher import STITCH_STATUSES, Stitcher, StitchResult
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
    "AssemblerStep",
    "DROP_POLICIES",
    "DROP_REASONS",
    "Frame",
    "KeyframeSelector",
    "SEGMENT_REASONS",
    "SIM3_METHODS",
    "STITCH_STATUSES",
    "SegmentTracker",
    "Sim3",
    "StitchResult",
    "Stitcher",
    "Trajectory",
    "VoxelMap",
    "Window",
    "WindowAssembler",
    "WindowBuilder",
    "WindowGeometry",
    "WindowWorker",
    "align_window",
    "backproject_pixels",
    "camera_centers",
    "focal_rescale",
    "format_tum",
    "intrinsics_residual",
    "is_out_of_memory",
    "match_frames",
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
