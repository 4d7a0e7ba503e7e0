"""The node in this process, driven through real DDS on localhost, for the soak run of ``vggt4d bench --soak``.

:class:`SoakRig` runs a :class:`~vggt4d_ros.ros.node.VGGT4DNode` and a client node (an image publisher, a
``~/reset`` client and one counting subscription per output) on one multi-threaded executor in its own rclpy
context, on an isolated DDS set-up (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` unless set; the caller's
``ROS_DOMAIN_ID``). The arithmetic of the soak (schedule, RSS slope, report) is in
:mod:`vggt4d_ros.bench.soak`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from typing import Any, Mapping, Optional

import numpy as np

from .install_space import find_install_prefix, import_package_messages

logger = logging.getLogger(__name__)

__all__ = ["SoakRig"]

#: Output name (as in ``published.<name>``) -> topic relative to the node ("~/" private, else absolute).
_OUTPUTS = ("dynamic_mask", "dynamic_mask/camera_info", "depth", "depth/camera_info", "odometry", "path",
            "static_cloud", "map_cloud", "dynamic_cloud", "window", "tf")


class SoakRig:
    """The node under soak and its client (see the module docstring).

    Args:
        parameters: node parameter overrides (name -> value).
        timeout_s: how long to wait for the node's answers (services, deliveries).
    """

    def __init__(self, parameters: Mapping[str, Any], timeout_s: float = 60.0) -> None:
        self.parameters = dict(parameters)
        self.timeout_s = timeout_s
        self.received: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.context = None
        self.node = None
        self.client = None
        self.executor = None
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ life
    def __enter__(self) -> "SoakRig":
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.lifecycle import TransitionCallbackReturn
        from rclpy.parameter import Parameter
        from rclpy.signals import SignalHandlerOptions

        if not import_package_messages(find_install_prefix()):
            raise RuntimeError("the generated vggt4d_ros messages are not importable (build the package: "
                               "tools/setup_env.sh)")
        from tf2_msgs.msg import TFMessage
        from diagnostic_msgs.msg import DiagnosticArray  # noqa: F401 - type support loaded early
        from nav_msgs.msg import Odometry, Path
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        from std_srvs.srv import Trigger

        from vggt4d_ros.msg import Window as WindowMsg

        from .node import VGGT4DNode
        from .qos import map_cloud_qos, reliable_qos

        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        self.context = Context()
        rclpy.init(args=["vggt4d_soak"], context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = VGGT4DNode(context=self.context,
                               parameter_overrides=[Parameter(k, value=v) for k, v in self.parameters.items()])
        if self.node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise RuntimeError(f"configure failed: {self.node.configure_error}")
        if self.node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            raise RuntimeError("activate failed")
        self.client = rclpy.create_node("vggt4d_soak_client", context=self.context)
        types = {"dynamic_mask": Image, "dynamic_mask/camera_info": CameraInfo, "depth": Image,
                 "depth/camera_info": CameraInfo, "odometry": Odometry, "path": Path, "static_cloud": PointCloud2,
                 "map_cloud": PointCloud2, "dynamic_cloud": PointCloud2, "window": WindowMsg, "tf": TFMessage}
        ns = self.node.get_fully_qualified_name()
        for name in _OUTPUTS:
            topic = "/tf" if name == "tf" else f"{ns}/{name}"
            qos = map_cloud_qos(1) if name == "map_cloud" else reliable_qos(1000)
            self.client.create_subscription(types[name], topic, lambda msg, n=name: self._count(n), qos, raw=True)
        self.image_pub = self.client.create_publisher(Image, self.node.resolve_topic_name("image"),
                                                      reliable_qos(100))
        self.reset_cli = self.client.create_client(Trigger, f"{ns}/reset")
        self._image_type = Image
        self._trigger = Trigger
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.client)
        self._thread = threading.Thread(target=self.executor.spin, name="vggt4d-soak-executor", daemon=True)
        self._thread.start()
        self._wait(lambda: self.image_pub.get_subscription_count() > 0, "the node's image subscription")
        time.sleep(0.5)  # the first reliable samples right after matching can need a heartbeat to arrive
        return self

    def __exit__(self, *exc: object) -> None:
        import rclpy

        try:
            if self.node is not None and self.node.state_label == "active":
                self.node.trigger_deactivate()
        finally:
            if self.executor is not None:
                self.executor.shutdown(timeout_sec=5.0)
            if self._thread is not None:
                self._thread.join(10.0)
            for n in (self.client, self.node):
                if n is not None:
                    n.destroy_node()
            if self.context is not None:
                rclpy.try_shutdown(context=self.context)

    # ------------------------------------------------------------------ driving
    def _count(self, name: str) -> None:
        with self._lock:
            self.received[name] += 1

    def _wait(self, predicate, what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.01)

    def values(self) -> dict[str, Any]:
        """The node's ``/diagnostics`` values (read in process)."""
        return self.node.diagnostics_values()

    def send(self, image: np.ndarray, stamp_ns: int, frame_id: str = "soak_camera", bad: bool = False) -> None:
        """Publish one rgb8 image (``bad``: its data one row short, which the node must count as invalid)."""
        from .conversions import ns_to_stamp

        h, w = image.shape[:2]
        data = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
        if bad:
            data = data[: len(data) - w * 3]
        msg = self._image_type(height=h, width=w, encoding="rgb8", step=w * 3, data=data)
        msg.header.stamp = ns_to_stamp(int(stamp_ns))
        msg.header.frame_id = frame_id
        self.image_pub.publish(msg)

    def reset(self) -> float:
        """Call ``~/reset`` through DDS; returns the round-trip time in seconds."""
        self._wait(lambda: self.reset_cli.service_is_ready(), "the ~/reset service")
        t0 = time.monotonic()
        future = self.reset_cli.call_async(self._trigger.Request())
        self._wait(future.done, "the ~/reset answer")
        if not future.result().success:
            raise RuntimeError(f"~/reset failed: {future.result().message}")
        return time.monotonic() - t0

    def received_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.received)
