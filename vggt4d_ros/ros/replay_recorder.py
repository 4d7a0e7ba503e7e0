"""The recording side of ``vggt4d replay``: every topic the node publishes goes into the output bag.

Each output is subscribed to with the publisher's reliability and durability and a deep KEEP_LAST history
(:data:`RECORD_DEPTH`), and recorded as raw CDR bytes. The node's own per-topic publication counters
(``published.<output>`` on ``/diagnostics``, see :mod:`vggt4d_ros.ros.publishers`) are the reference of
:meth:`OutputRecorder.shortfall`: a topic with fewer recorded messages than the node published lost some.

Replay itself publishes on some of the topics it records (``/tf``: the bag's transforms it forwards to the node);
those samples are not the node's output and are left out of the recording: on such a topic each sample's
publisher (its GID, from the message info) is compared with replay's own publishers.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

from .install_space import NODE_NAME, message_class, window_msg_definition
from .replay_input import diag_int

logger = logging.getLogger(__name__)

__all__ = ["OutputRecorder", "DIAGNOSTICS_TOPIC", "SKIPPED_OUTPUTS", "RECORD_DEPTH", "WINDOW_TYPE",
           "published_counts"]

DIAGNOSTICS_TOPIC = "/diagnostics"
#: Topics of the node that are ROS infrastructure rather than its output.
SKIPPED_OUTPUTS = ("/rosout", "/parameter_events", "/bond")  # /bond: the lifecycle-manager bond (ros/bond.py)
#: History depth of the recording subscriptions.
RECORD_DEPTH = 1000
#: Bytes of a publisher GID that identify it (rmw GID storage is 16 bytes since Jazzy, 24 before, zero-padded).
_GID_BYTES = 16
WINDOW_TYPE = "vggt4d_ros/msg/Window"


def published_counts(diag: Mapping[str, Any], private: str) -> dict[str, int]:
    """``resolved topic -> messages published`` from the node's ``published.<output>`` values (``tf`` is
    ``/tf``, every other output ``<private>/<output>``)."""
    out = {}
    for key in diag:
        if key.startswith("published."):
            name = key[len("published."):]
            topic = "/tf" if name == "tf" else f"{private.rstrip('/')}/{name}"
            out[topic] = diag_int(diag, key)
    return out


def _gid_key(gid: Any) -> bytes:
    """A publisher GID (``TopicEndpointInfo.endpoint_gid``, or the ``publisher_gid`` of a message info: a dict
    with ``data``) as comparable bytes."""
    if isinstance(gid, dict):
        gid = gid.get("data", b"")
    return bytes(bytearray(gid or b""))[:_GID_BYTES]


def _bag_qos(reliability: Any, durability: Any, depth: int) -> list:
    """The publisher's QoS in the form rosbag2 stores (``offered_qos_profiles``), so ``ros2 bag play`` offers
    the same reliability and durability (e.g. transient local for ``~/map_cloud``)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    try:
        rel = QosReliability(int(reliability))
        dur = QosDurability(int(durability))
    except ValueError:
        return []
    never = QosTime(sec=0x7FFFFFFF, nsec=0xFFFFFFFF)
    return [Qos(history=QosHistory.KEEP_LAST, depth=max(1, int(depth)), reliability=rel, durability=dur,
                deadline=never, lifespan=never, liveliness=QosLiveliness.AUTOMATIC,
                liveliness_lease_duration=never, avoid_ros_namespace_conventions=False)]


class OutputRecorder:
    """Records the outputs of the node ``<namespace>/vggt4d`` into a rosbag2 written with ``rosbags``.

    Args:
        node: replay's rclpy node.
        namespace: the node's namespace (``/`` or ``/ns``).
        clock_ns: returns the bag time to stamp recorded messages with.
        prefix: install prefix (for ``msg/Window.msg``), or ``None``.
    """

    def __init__(self, node: Any, namespace: str, clock_ns: Callable[[], int], prefix: Any = None) -> None:
        self.node = node
        self.namespace = namespace
        self.private = namespace.rstrip("/") + "/" + NODE_NAME
        self.status_name = f"{NODE_NAME}: vggt4d pipeline"
        self._clock_ns = clock_ns
        self._prefix = prefix
        self.writer = None
        self.typestore = None
        self.connections: dict[str, Any] = {}
        self.subscriptions: dict[str, Any] = {}
        self.recorded: dict[str, int] = {}
        self.last_received: dict[str, float] = {}
        self.diag: dict[str, str] = {}
        self.diag_updates = 0
        self.own_skipped: dict[str, int] = {}
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.serialization import deserialize_message

        self._diag_class = DiagnosticArray
        self._deserialize = deserialize_message

    # ------------------------------------------------------------------ output bag
    def open(self, output: Any, storage: str) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import get_types_from_msg

        from vggt4d_ros.bags import typestore

        self.typestore = typestore()
        text = window_msg_definition(self._prefix)
        if text is not None and WINDOW_TYPE not in self.typestore.types:
            self.typestore.register(get_types_from_msg(text, WINDOW_TYPE))
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self.writer = Writer(output, version=9, storage_plugin=plugin)
        self.writer.open()

    def close(self) -> None:
        for sub in self.subscriptions.values():
            self.node.destroy_subscription(sub)
        self.subscriptions.clear()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # ------------------------------------------------------------------ subscriptions
    def _qos(self, reliability: Any, durability: Any):
        from rclpy.qos import HistoryPolicy, QoSProfile

        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=RECORD_DEPTH, reliability=reliability,
                          durability=durability)

    def watch_diagnostics(self) -> None:
        """Follow ``/diagnostics`` from the start (it is also written once :meth:`subscribe_outputs` ran)."""
        from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

        self.subscriptions[DIAGNOSTICS_TOPIC] = self.node.create_subscription(
            self._diag_class, DIAGNOSTICS_TOPIC, lambda data: self._on_message(DIAGNOSTICS_TOPIC, data),
            self._qos(ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE), raw=True)

    def node_topics(self) -> dict[str, str]:
        """``topic -> type`` of every topic the node publishes (infrastructure topics left out)."""
        try:
            pairs = self.node.get_publisher_names_and_types_by_node(NODE_NAME, self.namespace)
        except Exception:  # noqa: BLE001 - the node may not be visible yet
            return {}
        return {topic: types[0] for topic, types in pairs if topic not in SKIPPED_OUTPUTS and types}

    def subscribe_outputs(self) -> None:
        for topic, type_name in sorted(self.node_topics().items()):
            if topic not in self.connections:
                self._record_topic(topic, type_name)

    def all_matched(self) -> bool:
        return all(s.get_publisher_count() > 0 for s in self.subscriptions.values())

    def _record_topic(self, topic: str, type_name: str) -> None:
        from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

        if type_name not in self.typestore.types:
            logger.warning("not recording %s: type %s is unknown to the bag type store", topic, type_name)
            return
        try:
            msg_type = message_class(type_name)
        except (ImportError, AttributeError, ValueError) as exc:
            logger.warning("not recording %s: cannot import %s (%s)", topic, type_name, exc)
            return
        reliability, durability, depth = ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE, 10
        for info in self.node.get_publishers_info_by_topic(topic):
            if info.node_name == NODE_NAME and info.node_namespace == self.namespace:
                reliability = info.qos_profile.reliability
                durability = info.qos_profile.durability
                depth = info.qos_profile.depth
                break
        self.connections[topic] = self.writer.add_connection(
            topic, type_name, typestore=self.typestore, offered_qos_profiles=_bag_qos(reliability, durability, depth))
        self.recorded.setdefault(topic, 0)
        if topic == DIAGNOSTICS_TOPIC and topic in self.subscriptions:
            return  # already subscribed (watched since start-up); from now on it is also written
        own = self.own_publishers(topic)
        if own:
            def callback(data: bytes, info: Any, t: str = topic, own: frozenset = own) -> None:
                if _gid_key(info.get("publisher_gid")) in own:
                    self.own_skipped[t] = self.own_skipped.get(t, 0) + 1
                    return
                self._on_message(t, data)
        else:
            def callback(data: bytes, t: str = topic) -> None:
                self._on_message(t, data)
        self.subscriptions[topic] = self.node.create_subscription(
            msg_type, topic, callback, self._qos(reliability, durability), raw=True)
        logger.info("recording %s (%s, %s, %s)%s", topic, type_name, reliability.name.lower(),
                    durability.name.lower(), " without replay's own messages on it" if own else "")

    def own_publishers(self, topic: str) -> frozenset:
        """GIDs of replay's own publishers on ``topic`` (whose samples are not recorded)."""
        name, namespace = self.node.get_name(), self.node.get_namespace()
        return frozenset(_gid_key(i.endpoint_gid) for i in self.node.get_publishers_info_by_topic(topic)
                         if i.node_name == name and i.node_namespace == namespace)

    def _on_message(self, topic: str, data: bytes) -> None:
        self.last_received[topic] = time.monotonic()
        conn = self.connections.get(topic)
        if conn is not None:
            self.writer.write(conn, self._clock_ns(), data)
            self.recorded[topic] = self.recorded.get(topic, 0) + 1
        if topic == DIAGNOSTICS_TOPIC:
            self._on_diagnostics(data)

    def _on_diagnostics(self, data: bytes) -> None:
        try:
            array = self._deserialize(data, self._diag_class)
        except Exception:  # noqa: BLE001 - a malformed foreign message must not end the replay
            return
        for status in array.status:
            if status.name == self.status_name:
                self.diag = {kv.key: kv.value for kv in status.values}
                self.diag_updates += 1

    # ------------------------------------------------------------------ completeness
    def published(self) -> dict[str, int]:
        """Messages the node says it published, per resolved topic (from its latest ``/diagnostics``)."""
        return published_counts(self.diag, self.private)

    def shortfall(self) -> dict[str, tuple[int, int]]:
        """``topic -> (recorded, published)`` for every output with fewer messages recorded than published."""
        return {topic: (self.recorded.get(topic, 0), n) for topic, n in sorted(self.published().items())
                if self.recorded.get(topic, 0) < n}
