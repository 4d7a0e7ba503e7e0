"""The input side of ``vggt4d replay``: which topics of the bag are replayed, and how many frames may be in flight.

Back-pressure (:func:`frames_in_flight_limit`) reads only the node's own accounting on ``/diagnostics``: an image
is *in flight* from its publication until the node's input thread has taken it (``frames_in``) or dropped it
(``input_overflow``). Keeping fewer in flight than both the node's input queue (``input_queue_size``) and the
DDS histories hold means nothing is lost in transit or in the node's input queue; with ``drop_policy: wait``
(replay sets it at ``--rate 0``) the node's input thread waits for room in its window queue instead of dropping a
window, so at ``--rate 0`` every frame offered is processed, skipped (not a keyframe) or invalid -- through
segment breaks, idle flushes and out-of-memory retries alike, since none of them is modelled here.

TF (:func:`select_tf_topics`): the bag's ``/tf`` and ``/tf_static`` (``tf2_msgs/msg/TFMessage``) are forwarded
too, as ``ros2 bag play`` does, so that a bag recorded on a robot joins the node to its TF tree. A TF topic of
another type, or without messages, is skipped with a warning. TF messages are not frames: they never count for
back-pressure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from vggt4d_ros.bags import TF_TYPE
from vggt4d_ros.cli import CLIError

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_TYPE",
    "COMPRESSED_TYPE",
    "CAMERA_INFO_TYPE",
    "TF_TYPE",
    "TF_TOPIC",
    "TF_STATIC_TOPIC",
    "InputSelection",
    "select_input_topics",
    "select_tf_topics",
    "tf_description",
    "open_reader",
    "diag_int",
    "frames_in_flight",
    "frames_in_flight_limit",
]

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"


def diag_int(values: Mapping[str, Any], key: str) -> int:
    """An integer value of the node's ``/diagnostics`` (0 when missing or not a number)."""
    try:
        return int(float(values.get(key)))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def frames_in_flight(offered: int, diag: Mapping[str, Any]) -> int:
    """Images published but not yet taken (``frames_in``) or dropped (``input_overflow``) by the node's input
    thread."""
    return offered - diag_int(diag, "frames_in") - diag_int(diag, "input_overflow")


def frames_in_flight_limit(input_queue_size: int, input_qos_depth: int, publisher_depth: int) -> int:
    """Most images that may be in flight: one less than the smallest of the node's input queue, its DDS reader
    history and replay's publisher history (at least 1)."""
    return max(1, min(int(input_queue_size), int(input_qos_depth), int(publisher_depth)) - 1)


@dataclass(frozen=True)
class InputSelection:
    """Topics of the input bag that are replayed.

    Attributes:
        image_topic: topic of the images; ``image_type`` is its message type (Image or CompressedImage).
        camera_info_topic: CameraInfo topic, or ``None``.
        frames: number of image messages (the frames offered to the node).
        start_ns, end_ns: bag time of the first and last message of the bag.
        tf: ``((topic, messages), ...)``: the TF topics forwarded (``/tf``, ``/tf_static``) and their message
            counts; empty when the bag has none or ``--no-tf`` was given.
    """

    image_topic: str
    image_type: str
    camera_info_topic: Optional[str]
    frames: int
    start_ns: int
    end_ns: int
    tf: tuple[tuple[str, int], ...] = ()


def _topics(connections: Sequence[Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in connections:
        out.setdefault(c.topic, c.msgtype)
    return out


def select_input_topics(connections: Sequence[Any], image_topic: Optional[str] = None,
                        camera_info_topic: Optional[str] = None) -> tuple[str, str, Optional[str]]:
    """Choose the image and camera_info topics among a bag's ``connections`` (objects with ``topic`` and
    ``msgtype``).

    Returns:
        ``(image_topic, image_type, camera_info_topic or None)``.

    Raises:
        ValueError: a requested topic is missing or has the wrong type, or the choice is ambiguous.
    """
    topics = _topics(connections)
    listing = ", ".join(f"{t} ({ty})" for t, ty in sorted(topics.items())) or "none"
    if image_topic:
        if image_topic not in topics:
            raise ValueError(f"the bag has no topic {image_topic!r}; its topics: {listing}")
        if topics[image_topic] not in (IMAGE_TYPE, COMPRESSED_TYPE):
            raise ValueError(f"topic {image_topic!r} is {topics[image_topic]}, expected {IMAGE_TYPE} or "
                             f"{COMPRESSED_TYPE}")
        chosen = image_topic
    else:
        chosen = ""
        for wanted in (IMAGE_TYPE, COMPRESSED_TYPE):
            found = sorted(t for t, ty in topics.items() if ty == wanted)
            if len(found) > 1:
                raise ValueError(f"the bag has several {wanted} topics ({', '.join(found)}): choose one with "
                                 f"--image-topic")
            if found:
                chosen = found[0]
                break
        if not chosen:
            raise ValueError(f"the bag has no {IMAGE_TYPE} or {COMPRESSED_TYPE} topic; its topics: {listing}")
    image_type = topics[chosen]

    if camera_info_topic == "":
        return chosen, image_type, None
    if camera_info_topic:
        if topics.get(camera_info_topic) != CAMERA_INFO_TYPE:
            raise ValueError(f"the bag has no {CAMERA_INFO_TYPE} topic {camera_info_topic!r}; its topics: "
                             f"{listing}")
        return chosen, image_type, camera_info_topic
    infos = sorted(t for t, ty in topics.items() if ty == CAMERA_INFO_TYPE)
    if len(infos) <= 1:
        return chosen, image_type, (infos[0] if infos else None)
    base = chosen[: -len("/compressed")] if chosen.endswith("/compressed") else chosen
    sibling = base.rsplit("/", 1)[0] + "/camera_info"
    if sibling in infos:
        return chosen, image_type, sibling
    raise ValueError(f"the bag has several {CAMERA_INFO_TYPE} topics ({', '.join(infos)}): choose one with "
                     f"--camera-info-topic ('' for none)")


def select_tf_topics(connections: Sequence[Any]) -> tuple[tuple[str, int], ...]:
    """The TF topics of a bag that are forwarded, among its ``connections`` (objects with ``topic``, ``msgtype``
    and ``msgcount``).

    ``/tf`` and ``/tf_static`` are taken when they carry ``tf2_msgs/msg/TFMessage`` messages (only the
    connections of that type; a bag may hold a topic under several types). A TF topic of another type, or one
    without messages, is skipped with a warning (logged); this never raises.

    Returns:
        ``((topic, message count), ...)`` in the order ``/tf``, ``/tf_static``.
    """
    taken = []
    for topic in (TF_TOPIC, TF_STATIC_TOPIC):
        conns = [c for c in connections if c.topic == topic]
        if not conns:
            continue
        good = [c for c in conns if c.msgtype == TF_TYPE]
        others = sorted({str(c.msgtype) for c in conns if c.msgtype != TF_TYPE})
        if others:
            logger.warning("not forwarding the bag's %s messages of type %s: TF is %s%s", topic, ", ".join(others),
                           TF_TYPE, " (its TFMessage messages are forwarded)" if good else "")
        if not good:
            continue
        count = sum(int(getattr(c, "msgcount", 0) or 0) for c in good)
        if count <= 0:
            logger.warning("the bag's %s (%s) has no messages: nothing to forward", topic, TF_TYPE)
            continue
        taken.append((topic, count))
    return tuple(taken)


def tf_description(selection: InputSelection, in_bag: Sequence[str], forward: bool) -> str:
    """The TF part of replay's start-up log line: which TF topics are forwarded and how many messages."""
    if selection.tf:
        parts = [f"{topic} ({n} message{'s' if n != 1 else ''})" for topic, n in selection.tf]
        return "forwarding TF: " + " and ".join(parts)
    if not in_bag:
        return f"no TF forwarded (the bag has no {TF_TOPIC} or {TF_STATIC_TOPIC})"
    if not forward:
        return f"TF not forwarded (--no-tf; the bag has {', '.join(in_bag)})"
    return f"no TF forwarded (the bag's {', '.join(in_bag)}: wrong type or no messages)"


def open_reader(path: Path):
    from rosbags.rosbag2 import Reader

    if path.is_file() and (path.parent / "metadata.yaml").is_file():
        path = path.parent
    if not (path / "metadata.yaml").is_file():
        raise CLIError(f"{path} is not a rosbag2 directory (no metadata.yaml)")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several error types for unreadable bags
        raise CLIError(f"cannot open bag {path}: {type(exc).__name__}: {exc}") from exc
    return reader
