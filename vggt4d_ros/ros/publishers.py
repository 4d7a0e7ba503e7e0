"""Output topics of the VGGT4D node and the builders of their messages.

Topic names (relative to the node, ``~/`` = ``<namespace>/<node name>/``):

=====================  ==============================  ===============================================
topic                  type                            QoS / content
=====================  ==============================  ===============================================
``~/dynamic_mask``     sensor_msgs/Image mono8         reliable, depth 10; 255 = dynamic, input size,
                                                       the input image's header
``~/dynamic_overlay``  sensor_msgs/Image rgb8          only with ``publish_overlay``; input tinted red
``/tf``                tf2_msgs/TFMessage              reliable, depth 100; world_frame -> camera frame
``~/odometry``         nav_msgs/Odometry               reliable, depth 10; one per processed frame
``~/path``             nav_msgs/Path                   reliable, depth 10; after every window
``~/static_cloud``     sensor_msgs/PointCloud2         reliable, depth 5; static points of the window
``~/map_cloud``        sensor_msgs/PointCloud2         reliable + transient local, depth 1
``~/dynamic_cloud``    sensor_msgs/PointCloud2         reliable, depth 5; moving points, newest frame
``~/window``           vggt4d_ros/Window               reliable, depth 10; one per window
=====================  ==============================  ===============================================

Every pose is that of the camera's *optical* frame (z forward, x right, y down; REP-103 "_optical"
convention) in ``world_frame``. The map's scale is the scale of the first window of a segment (VGGT
reconstructs up to scale), so distances are in "map units", not metres, unless the scene scale is known.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, TransformStamped
from nav_msgs.msg import Odometry, Path
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Header

from .conversions import matrices_to_poses, matrix_to_pose, matrix_to_transform_stamped
from .qos import map_cloud_qos, reliable_qos

__all__ = [
    "OUTPUT_TOPICS",
    "make_header",
    "make_transform",
    "make_odometry",
    "make_path",
    "OutputPublishers",
]

#: name -> (message type, QoS depth, transient local)
OUTPUT_TOPICS: dict[str, tuple[type, int, bool]] = {
    "~/dynamic_mask": (Image, 10, False),
    "~/dynamic_overlay": (Image, 10, False),
    "~/odometry": (Odometry, 10, False),
    "~/path": (Path, 10, False),
    "~/static_cloud": (PointCloud2, 5, False),
    "~/map_cloud": (PointCloud2, 1, True),
    "~/dynamic_cloud": (PointCloud2, 5, False),
}


def make_header(stamp: Time, frame_id: str) -> Header:
    header = Header()
    header.stamp = stamp
    header.frame_id = frame_id
    return header


def make_transform(c2w: np.ndarray, stamp: Time, parent: str, child: str) -> TransformStamped:
    """``parent -> child`` transform whose matrix is the camera-to-world pose ``c2w`` ``[4, 4]``."""
    return matrix_to_transform_stamped(c2w, stamp, parent, child)


def make_odometry(c2w: np.ndarray, stamp: Time, parent: str, child: str) -> Odometry:
    """Odometry of the optical camera frame; covariances are not estimated (left at zero) and the twist is
    zero (VGGT4D estimates poses, not velocities)."""
    odom = Odometry()
    odom.header = make_header(stamp, parent)
    odom.child_frame_id = child
    odom.pose.pose = matrix_to_pose(c2w)
    return odom


def make_path(stamps: Sequence[Time], poses: np.ndarray, frame_id: str) -> Path:
    """``nav_msgs/Path`` of camera-to-world poses ``[N, 4, 4]`` with their stamps; the header carries the
    newest stamp."""
    path = Path()
    path.header = make_header(stamps[-1] if len(stamps) else Time(), frame_id)
    out = []
    for stamp, pose in zip(stamps, matrices_to_poses(np.asarray(poses).reshape(-1, 4, 4)) if len(stamps) else []):
        ps = PoseStamped()
        ps.header = make_header(stamp, frame_id)
        ps.pose = pose
        out.append(ps)
    path.poses = out
    return path


class OutputPublishers:
    """Creates (at configure) and destroys (at cleanup) the node's lifecycle publishers.

    Lifecycle publishers only send while the node is active; the ``/diagnostics`` publisher is a plain one
    owned by the node itself. ``~/window`` and ``/tf`` get their types from the caller (the generated
    ``vggt4d_ros/msg/Window`` and ``tf2_msgs/msg/TFMessage``, imported at configure).
    """

    def __init__(self, node, window_msg_type: type, tf_msg_type: type, publish_overlay: bool) -> None:
        self._node = node

        def make(topic: str):
            msg_type, depth, latched = OUTPUT_TOPICS[topic]
            qos = map_cloud_qos(depth) if latched else reliable_qos(depth)
            return node.create_lifecycle_publisher(msg_type, topic, qos)

        self.mask = make("~/dynamic_mask")
        self.overlay = make("~/dynamic_overlay") if publish_overlay else None
        self.odometry = make("~/odometry")
        self.path = make("~/path")
        self.static_cloud = make("~/static_cloud")
        self.map_cloud = make("~/map_cloud")
        self.dynamic_cloud = make("~/dynamic_cloud")
        self.window = node.create_lifecycle_publisher(window_msg_type, "~/window", reliable_qos(10))
        self.tf = node.create_lifecycle_publisher(tf_msg_type, "/tf", reliable_qos(100))

    def all(self) -> list:
        return [p for p in (self.mask, self.overlay, self.odometry, self.path, self.static_cloud, self.map_cloud,
                            self.dynamic_cloud, self.window, self.tf) if p is not None]

    def destroy(self) -> None:
        for pub in self.all():
            self._node.destroy_lifecycle_publisher(pub)
