"""Output topics of the VGGT4D node and the builders of their messages.

Topic names (relative to the node, ``~/`` = ``<namespace>/<node name>/``):

=====================  ==============================  ===============================================
topic                  type                            QoS / content
=====================  ==============================  ===============================================
``~/dynamic_mask``     sensor_msgs/Image mono8         reliable, depth B; 255 = dynamic, input size,
                                                       the input image's header
``~/dynamic_overlay``  sensor_msgs/Image rgb8          only with ``publish_overlay``; input tinted red; depth B
``/tf``                tf2_msgs/TFMessage              reliable, depth 100; world_frame -> camera frame
``~/odometry``         nav_msgs/Odometry               reliable, depth B; one per processed frame
``~/path``             nav_msgs/Path                   reliable, depth 10; after every window
``~/static_cloud``     sensor_msgs/PointCloud2         reliable, depth 5; static points of the window
``~/map_cloud``        sensor_msgs/PointCloud2         reliable + transient local, depth 1
``~/dynamic_cloud``    sensor_msgs/PointCloud2         reliable, depth 5; moving points, newest frame
``~/window``           vggt4d_ros/Window               reliable, depth 10; one per window
=====================  ==============================  ===============================================

The per-frame topics (masks, overlays, odometry) go out in one burst of up to ``window_size`` messages per
window, so their history depth ``B`` is sized to the burst (:func:`output_depths`): ``output_qos_depth``, or
when it is 0, ``max(10, 2 * window_size)`` (two windows' bursts), so that a reliable subscriber that acknowledges
a little late does not lose samples overwritten in the publisher's KEEP_LAST history. Every publication is
counted per topic (:meth:`OutputPublishers.published`, ``published.<name>`` on ``/diagnostics``), which lets a
recorder check that it got everything.

Every pose is that of the camera's *optical* frame (z forward, x right, y down; REP-103 "_optical"
convention) in ``world_frame``. The map's scale is the scale of the first window of a segment (VGGT
reconstructs up to scale), so distances are in "map units", not metres, unless the scene scale is known.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

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
    "PER_FRAME_TOPICS",
    "output_depths",
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
#: Topics with one message per processed frame, published in a burst per window.
PER_FRAME_TOPICS = ("~/dynamic_mask", "~/dynamic_overlay", "~/odometry")


def output_depths(output_qos_depth: int, window_size: int) -> dict[str, int]:
    """History depth of every output topic: the per-frame topics get ``output_qos_depth`` (0 = auto:
    ``max(10, 2 * window_size)``); the others keep their depth of :data:`OUTPUT_TOPICS` (``~/window`` 10,
    ``/tf`` 100), or ``output_qos_depth`` when that is larger (``~/map_cloud`` always keeps 1)."""
    burst = int(output_qos_depth) if output_qos_depth > 0 else max(10, 2 * int(window_size))
    depths = {topic: depth for topic, (_, depth, _) in OUTPUT_TOPICS.items()}
    depths.update({"~/window": 10, "/tf": 100})
    for topic in depths:
        if topic == "~/map_cloud":
            continue
        depths[topic] = burst if topic in PER_FRAME_TOPICS else max(depths[topic], int(output_qos_depth))
    return depths


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


class CountingPublisher:
    """A lifecycle publisher that counts what it sent and asks ``gate()`` first (``False``: the message is
    silently not published, e.g. an output of a window discarded by ``~/reset``)."""

    def __init__(self, publisher, gate: Callable[[], bool] | None) -> None:
        self.publisher = publisher
        self._gate = gate
        self._lock = threading.Lock()
        self.count = 0

    def publish(self, msg) -> None:
        if self._gate is not None and not self._gate():
            return
        if not self.publisher.is_activated:
            self.publisher.publish(msg)  # logs rclpy's "not activated" warning, sends nothing
            return
        self.publisher.publish(msg)
        with self._lock:
            self.count += 1

    @property
    def topic_name(self) -> str:
        return self.publisher.topic_name

    def __getattr__(self, name: str):
        return getattr(self.publisher, name)


class OutputPublishers:
    """Creates (at configure) and destroys (at cleanup) the node's lifecycle publishers.

    Lifecycle publishers only send while the node is active; the ``/diagnostics`` publisher is a plain one
    owned by the node itself. ``~/window`` and ``/tf`` get their types from the caller (the generated
    ``vggt4d_ros/msg/Window`` and ``tf2_msgs/msg/TFMessage``, imported at configure). ``depths`` maps topics
    to history depths (:func:`output_depths`; default: :data:`OUTPUT_TOPICS`); every publisher counts what it
    sent (:meth:`published`) and consults ``gate`` before sending.
    """

    def __init__(self, node, window_msg_type: type, tf_msg_type: type, publish_overlay: bool,
                 depths: dict[str, int] | None = None, gate: Callable[[], bool] | None = None) -> None:
        self._node = node
        depths = dict(depths or output_depths(0, 5))
        self._named: dict[str, CountingPublisher] = {}

        def make(topic: str, msg_type: type | None = None) -> CountingPublisher:
            default_type, _, latched = OUTPUT_TOPICS.get(topic, (None, 10, False))
            depth = depths.get(topic, 10)
            qos = map_cloud_qos(depth) if latched else reliable_qos(depth)
            pub = CountingPublisher(node.create_lifecycle_publisher(msg_type or default_type, topic, qos), gate)
            self._named[topic.removeprefix("~/").lstrip("/")] = pub
            return pub

        self.mask = make("~/dynamic_mask")
        self.overlay = make("~/dynamic_overlay") if publish_overlay else None
        self.odometry = make("~/odometry")
        self.path = make("~/path")
        self.static_cloud = make("~/static_cloud")
        self.map_cloud = make("~/map_cloud")
        self.dynamic_cloud = make("~/dynamic_cloud")
        self.window = make("~/window", window_msg_type)
        self.tf = make("/tf", tf_msg_type)

    def all(self) -> list:
        return [p for p in (self.mask, self.overlay, self.odometry, self.path, self.static_cloud, self.map_cloud,
                            self.dynamic_cloud, self.window, self.tf) if p is not None]

    def published(self) -> dict[str, int]:
        """Messages sent per output: ``{'dynamic_mask': n, ..., 'tf': n}`` (names without ``~/``)."""
        return {name: pub.count for name, pub in self._named.items()}

    def topics(self) -> dict[str, str]:
        """``name -> resolved topic`` of every output (the keys of :meth:`published`)."""
        return {name: pub.topic_name for name, pub in self._named.items()}

    def destroy(self) -> None:
        for pub in self.all():
            self._node.destroy_lifecycle_publisher(pub.publisher)
