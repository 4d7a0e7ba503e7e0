"""vggt4d_ros: training-free dynamic-object masks, camera poses and static maps from a camera stream.

Subpackages (imports go one way: model <- dynamic <- windows <- ros):

* :mod:`vggt4d_ros.model`   -- the VGGT network, preprocessing, geometry and checkpoint loading.
* :mod:`vggt4d_ros.dynamic` -- VGGT4D: attention cues, masks, refinement, masked second pass.
* :mod:`vggt4d_ros.windows` -- sliding windows, keyframes, Sim(3) stitching, map accumulation.
* :mod:`vggt4d_ros.ros`     -- the ROS 2 node (the only package importing rclpy).
"""

__version__ = "0.1.0"
