"""The ROS 2 side of vggt4d_ros: the lifecycle node, message conversions, QoS, parameters and bag replay.

This is the only subpackage that imports rclpy. Nothing is imported here, so importing one module (for example
:mod:`vggt4d_ros.ros.conversions`) does not pull in the node or the generated ``vggt4d_ros.msg``.
"""
