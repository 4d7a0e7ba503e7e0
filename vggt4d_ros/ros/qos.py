"""Named QoS profiles of the VGGT4D node.

* Input images: ``sensor_data`` by default (BEST_EFFORT, VOLATILE, KEEP_LAST), what camera drivers
  offer. A best-effort subscription also matches a reliable publisher. Between processes,
  best-effort delivery loses a large share of big images (30-65 % of 518x518 rgb8 frames were
  measured lost on localhost), so bag replay publishes reliably and selects ``reliable`` here.
* Input history: ``input_qos_depth`` (default 20). The image callback only queues the message for the node's
  input thread, so the reader history only has to cover scheduling hiccups of the executor; what it still
  overwrites is counted from the DDS sequence numbers (``input_gaps`` on ``/diagnostics``).
* Outputs: reliable, volatile; the per-frame outputs' depth is sized to a window's burst
  (:func:`vggt4d_ros.ros.publishers.output_depths`).
* ``~/map_cloud``: reliable + transient local, depth 1, so that a late subscriber (rviz2) still gets
  the latest map.

Compatibility (as in every ROS 2 DDS): a RELIABLE subscription receives nothing from a BEST_EFFORT
publisher, and a TRANSIENT_LOCAL subscription nothing from a VOLATILE publisher.
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

__all__ = [
    "INPUT_QOS_NAMES",
    "DEFAULT_INPUT_QOS",
    "DEFAULT_INPUT_DEPTH",
    "qos_from_name",
    "sensor_data_qos",
    "reliable_qos",
    "best_effort_qos",
    "map_cloud_qos",
]

#: Names accepted by :func:`qos_from_name` (values of the node's ``input_qos`` parameter).
INPUT_QOS_NAMES: tuple[str, ...] = ("sensor_data", "reliable", "best_effort")
DEFAULT_INPUT_QOS = "sensor_data"
#: History depth of rclpy's ``qos_profile_sensor_data``.
DEFAULT_INPUT_DEPTH = 5


def _check_depth(depth: int) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"QoS history depth must be an integer >= 1, got {depth!r}")
    return depth


def _keep_last(depth: int, reliability: ReliabilityPolicy, durability: DurabilityPolicy) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=_check_depth(depth), reliability=reliability,
                      durability=durability)


def sensor_data_qos(depth: int = DEFAULT_INPUT_DEPTH) -> QoSProfile:
    """BEST_EFFORT, VOLATILE, KEEP_LAST ``depth`` (rclpy's sensor-data profile with a chosen depth)."""
    return _keep_last(depth, ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE)


def best_effort_qos(depth: int = 10) -> QoSProfile:
    """BEST_EFFORT, VOLATILE, KEEP_LAST ``depth`` (the sensor-data policies, default depth 10)."""
    return sensor_data_qos(depth)


def reliable_qos(depth: int = 10) -> QoSProfile:
    """RELIABLE, VOLATILE, KEEP_LAST ``depth``."""
    return _keep_last(depth, ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE)


def map_cloud_qos(depth: int = 1) -> QoSProfile:
    """RELIABLE, TRANSIENT_LOCAL, KEEP_LAST ``depth``: late subscribers get the last ``depth`` samples."""
    return _keep_last(depth, ReliabilityPolicy.RELIABLE, DurabilityPolicy.TRANSIENT_LOCAL)


def qos_from_name(name: str, depth: int = DEFAULT_INPUT_DEPTH) -> QoSProfile:
    """QoS profile for an input subscription by name.

    Args:
        name: ``"sensor_data"`` (best effort), ``"reliable"`` or ``"best_effort"``.
        depth: KEEP_LAST history depth, >= 1.

    Raises:
        ValueError: unknown name or invalid depth.
    """
    if name == "sensor_data":
        return sensor_data_qos(depth)
    if name == "reliable":
        return reliable_qos(depth)
    if name == "best_effort":
        return best_effort_qos(depth)
    raise ValueError(f"unknown QoS profile name {name!r}; expected one of {list(INPUT_QOS_NAMES)}")
