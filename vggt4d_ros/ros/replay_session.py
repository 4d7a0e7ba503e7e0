"""One ``vggt4d replay`` session: the node process, replay's own rclpy node, the input reader, the recorder.

Phases (driven by :func:`vggt4d_ros.ros.replay.replay`): :meth:`ReplaySession.open_input`, ``start_node``,
``start_ros``, ``open_output``, ``create_publishers``, ``wait_until_active``, ``read_node_parameters``,
``discover_outputs``, ``prime_inputs``, ``publish_bag``, ``wait_for_the_end``, then ``stop_node`` and
``close``.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from vggt4d_ros.cli import CLIError

from .install_space import (
    NODE_NAME,
    PACKAGE,
    find_install_prefix,
    message_class,
    node_command,
    node_environment,
)
from .qos import map_cloud_qos, reliable_qos
from .replay_input import (
    CAMERA_INFO_TYPE,
    COMPRESSED_TYPE,
    TF_STATIC_TOPIC,
    TF_TOPIC,
    TF_TYPE,
    InputSelection,
    diag_int,
    frames_in_flight,
    frames_in_flight_limit,
    open_reader,
    select_input_topics,
    select_tf_topics,
    tf_description,
)
from .replay_params import (
    FORCED_PARAMETERS,
    node_ros_arguments,
    normalise_namespace,
    parse_parameter_override,
    replay_parameters,
    write_parameters_file,
)
from .replay_process import NodeProcess
from .replay_recorder import DIAGNOSTICS_TOPIC, OutputRecorder

logger = logging.getLogger(__name__)

__all__ = ["ReplayOptions", "ReplaySummary", "ReplaySession", "ReplayFailed", "PUBLISHER_DEPTH", "TF_DEPTH",
           "NODE_PARAMETERS", "tf_qos"]

#: Depth of replay's own publishers.
PUBLISHER_DEPTH = 100
#: History depth of the forwarded ``/tf`` (tf2's broadcaster and listener use 100).
TF_DEPTH = 100
#: Parameters of the node that replay reads back after start.
NODE_PARAMETERS = ("window_size", "window_overlap", "queue_size", "keyframe_stride", "flush_timeout",
                   "input_qos_depth", "input_queue_size", "map_publish_period", "drop_policy", "tf_mode")


def tf_qos(topic: str, messages: int):
    """QoS of a forwarded TF topic, as tf2 uses: ``/tf`` reliable, volatile, keep-last :data:`TF_DEPTH`;
    ``/tf_static`` reliable, transient local, keep-last deep enough for all ``messages`` static messages of the bag
    (a node that subscribes late still gets every one)."""
    if topic == TF_STATIC_TOPIC:
        return map_cloud_qos(max(1, int(messages)))
    return reliable_qos(TF_DEPTH)


@dataclass
class ReplayOptions:
    """Everything :func:`vggt4d_ros.ros.replay.replay` needs (the parsed command line)."""

    input: Path
    output: Path
    storage: str = "mcap"
    params_file: Optional[Path] = None
    overrides: list[str] = field(default_factory=list)
    rate: float = 1.0
    namespace: str = "/"
    image_topic: Optional[str] = None
    camera_info_topic: Optional[str] = None
    timeout: float = 0.0
    startup_timeout: float = 600.0
    node_log: Optional[Path] = None
    model: dict[str, Optional[str]] = field(default_factory=dict)
    forward_tf: bool = True  # --no-tf: False


@dataclass
class ReplaySummary:
    """Outcome of a replay (also the source of the printed summary line).

    ``published`` and ``recorded`` are per resolved topic; ``missing`` lists ``topic -> (recorded, published)``
    for every output the recording lost messages of (empty on success).
    """

    ok: bool
    reason: str
    frames_offered: int
    diagnostics: dict[str, str]
    recorded: dict[str, int]
    output: Path
    node_log: Optional[Path]
    elapsed_s: float
    published: dict[str, int] = field(default_factory=dict)
    missing: dict[str, tuple[int, int]] = field(default_factory=dict)

    def value(self, key: str) -> int:
        return diag_int(self.diagnostics, key)

    def by_prefix(self, prefix: str) -> dict[str, int]:
        return {k[len(prefix):]: diag_int(self.diagnostics, k) for k in sorted(self.diagnostics)
                if k.startswith(prefix) and diag_int(self.diagnostics, k) > 0}

    def line(self) -> str:
        """The one-line summary."""
        def detail(prefix: str) -> str:
            parts = self.by_prefix(prefix)
            return " (" + ", ".join(f"{k} {v}" for k, v in parts.items()) + ")" if parts else ""

        text = (f"replay {'done' if self.ok else 'FAILED'}: {self.frames_offered} frames offered, "
                f"{self.value('frames_in')} received by the node, {self.value('frames_processed')} processed, "
                f"{self.value('frames_dropped')} dropped{detail('dropped.')}, "
                f"{self.value('frames_invalid')} invalid{detail('invalid.')}, "
                f"{self.value('frames_skipped')} skipped (not keyframes), "
                f"{self.value('input_overflow')} lost in the input queue, "
                f"{self.value('windows_processed')} windows ({self.value('windows_failed')} failed), "
                f"{sum(self.recorded.values())} messages on {len(self.recorded)} topics recorded to "
                f"{self.output} in {self.elapsed_s:.1f} s")
        if not self.ok:
            text += f"; {self.reason}"
            if self.node_log is not None:
                text += f" (node log: {self.node_log})"
        return text


class ReplayFailed(Exception):
    """Ends a replay early with a reason (node died, timeout, ...)."""


class ReplaySession:
    """One replay (see the module docstring)."""

    def __init__(self, opts: ReplayOptions) -> None:
        self.opts = opts
        self.t_start = time.monotonic()
        self.prefix = find_install_prefix()
        self.namespace = normalise_namespace(opts.namespace)
        self.private = self.namespace.rstrip("/") + "/" + NODE_NAME
        self.process: Optional[NodeProcess] = None
        self.tmpdir: Optional[Path] = None
        self.context = None
        self.node = None
        self.executor = None
        self.recorder: Optional[OutputRecorder] = None
        self.reader = None
        self.selection: Optional[InputSelection] = None
        self.clock_ns = 0
        self.offered = 0
        self.tf_pubs: dict[str, Any] = {}
        self.tf_forwarded: dict[str, int] = {}
        self.params: dict[str, Any] = {}
        self.topic_window = f"{self.private}/window"
        self.topic_map = f"{self.private}/map_cloud"

    # ------------------------------------------------------------------ views
    @property
    def diag(self) -> dict[str, str]:
        return self.recorder.diag if self.recorder is not None else {}

    @property
    def recorded(self) -> dict[str, int]:
        return self.recorder.recorded if self.recorder is not None else {}

    @property
    def log_path(self) -> Optional[Path]:
        return self.process.log_path if self.process is not None else None

    def log_excerpt(self) -> str:
        return self.process.log_excerpt() if self.process is not None else ""

    def elapsed(self) -> float:
        return time.monotonic() - self.t_start

    def check_alive(self, phase: str) -> None:
        code = self.process.exited() if self.process is not None else None
        if code is not None:
            raise ReplayFailed(f"the node exited with status {code} {phase}" + self.log_excerpt())
        if self.opts.timeout > 0 and self.elapsed() > self.opts.timeout:
            raise ReplayFailed(f"timeout: {self.opts.timeout:g} s passed {phase}")

    def spin(self, seconds: float) -> None:
        """Spin replay's executor for about ``seconds`` (at least one pass)."""
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            self.executor.spin_once(timeout_sec=max(0.0, min(0.05, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                return

    def spin_until(self, predicate: Callable[[], bool], timeout_s: float, phase: str) -> bool:
        """Spin until ``predicate()`` holds (True) or ``timeout_s`` passes (False); the node must stay alive."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            self.check_alive(phase)
            if time.monotonic() > deadline:
                return False
            self.executor.spin_once(timeout_sec=0.05)
        return True

    # ------------------------------------------------------------------ set-up
    def open_input(self) -> None:
        self.reader = open_reader(self.opts.input)
        try:
            image_topic, image_type, info_topic = select_input_topics(
                self.reader.connections, self.opts.image_topic, self.opts.camera_info_topic)
        except ValueError as exc:
            raise CLIError(str(exc)) from exc
        image_conns = [c for c in self.reader.connections if c.topic == image_topic]
        frames = sum(int(c.msgcount) for c in image_conns)
        if frames == 0:
            raise CLIError(f"topic {image_topic} of {self.opts.input} has no messages")
        tf_in_bag = sorted({c.topic for c in self.reader.connections if c.topic in (TF_TOPIC, TF_STATIC_TOPIC)})
        tf = select_tf_topics(self.reader.connections) if self.opts.forward_tf else ()
        self.selection = InputSelection(image_topic=image_topic, image_type=image_type,
                                        camera_info_topic=info_topic, frames=frames,
                                        start_ns=int(self.reader.start_time), end_ns=int(self.reader.end_time),
                                        tf=tf)
        logger.info("input %s: %d frames on %s (%s)%s, %.1f s of bag time; %s", self.opts.input, frames,
                    image_topic, image_type, f", camera_info on {info_topic}" if info_topic else ", no camera_info",
                    (self.selection.end_ns - self.selection.start_ns) * 1e-9,
                    tf_description(self.selection, tf_in_bag, self.opts.forward_tf))

    def start_node(self) -> None:
        sel = self.selection
        assert sel is not None
        transport = "compressed" if sel.image_type == COMPRESSED_TYPE else "raw"
        backpressure = self.opts.rate == 0
        for text in self.opts.overrides:
            name, _ = parse_parameter_override(text)
            if name in FORCED_PARAMETERS and (name != "drop_policy" or backpressure):
                logger.warning("-p %s is ignored: replay sets %s itself", text, name)
        self.tmpdir = Path(tempfile.mkdtemp(prefix="vggt4d_replay_"))
        values = replay_parameters(self.opts.overrides, self.opts.model, transport, backpressure=backpressure)
        params_files = [Path(self.opts.params_file)] if self.opts.params_file is not None else []
        params_files.append(write_parameters_file(self.tmpdir / "replay_params.yaml", values,
                                                  self.opts.params_file))
        ros_args = node_ros_arguments(namespace=self.namespace, params_files=params_files,
                                      input_transport=transport, image_topic=sel.image_topic,
                                      camera_info_topic=sel.camera_info_topic)
        cmd = node_command(self.prefix) + ros_args
        if self.prefix is None:
            logger.warning("no install space of %s found (build it with tools/setup_env.sh or colcon): starting "
                           "the node with %s -m vggt4d_ros.ros.node_main", PACKAGE, sys.executable)
        logger.info("starting the node: %s (replay's parameters: %s)", " ".join(cmd),
                    ", ".join(f"{k}={v}" for k, v in values.items()))
        self.process = NodeProcess(self.opts.node_log)
        self.process.start(cmd, node_environment(self.prefix))

    def start_ros(self) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        if not os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE"):
            os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        self.context = Context()
        # explicit args: rclpy would otherwise parse replay's own command line (its -p name:=value) as ROS rules
        rclpy.init(args=["vggt4d_replay"], context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("vggt4d_replay", context=self.context, start_parameter_services=False)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.recorder = OutputRecorder(self.node, self.namespace, self._record_stamp, self.prefix)

    def _record_stamp(self) -> int:
        return self.clock_ns or (self.selection.start_ns if self.selection else 0)

    def open_output(self) -> None:
        self.recorder.open(self.opts.output, self.opts.storage)

    def create_publishers(self) -> None:
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        sel = self.selection
        assert sel is not None
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=PUBLISHER_DEPTH,
                         reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        self.image_pub = self.node.create_publisher(message_class(sel.image_type), sel.image_topic, qos)
        self.info_pub = (self.node.create_publisher(message_class(CAMERA_INFO_TYPE), sel.camera_info_topic, qos)
                         if sel.camera_info_topic else None)
        self.clock_pub = self.node.create_publisher(Clock, "/clock", qos)
        self._clock_class = Clock
        self._create_tf_publishers()
        self.recorder.watch_diagnostics()

    def _create_tf_publishers(self) -> None:
        """Publishers of the forwarded TF topics (:func:`tf_qos`)."""
        sel = self.selection
        if not sel.tf:
            return
        try:
            tf_class = message_class(TF_TYPE)
        except (ImportError, AttributeError) as exc:
            logger.warning("not forwarding the bag's TF: %s is not importable here (%s)", TF_TYPE, exc)
            return
        for topic, messages in sel.tf:
            self.tf_pubs[topic] = self.node.create_publisher(tf_class, topic, tf_qos(topic, messages))

    def wait_until_active(self) -> None:
        def ready() -> bool:
            return self.diag.get("state") == "active" and self.image_pub.get_subscription_count() > 0

        if not self.spin_until(ready, self.opts.startup_timeout, "before becoming active"):
            state = self.diag.get("state", "no diagnostics yet")
            error = self.diag.get("configure_error", "")
            raise ReplayFailed(f"the node did not become active within {self.opts.startup_timeout:g} s (state: "
                               f"{state}{'; ' + error if error else ''})" + self.log_excerpt())
        twins = [i for i in self.node.get_publishers_info_by_topic(DIAGNOSTICS_TOPIC)
                 if i.node_name == NODE_NAME and i.node_namespace == self.namespace]
        if len(twins) > 1:
            raise ReplayFailed(f"{len(twins)} nodes named {self.private} run in ROS_DOMAIN_ID="
                               f"{os.environ.get('ROS_DOMAIN_ID', '0')}: their outputs cannot be told apart; "
                               f"stop the other one, or use another --node-namespace or ROS_DOMAIN_ID")
        if self.info_pub is not None:
            self.spin_until(lambda: self.info_pub.get_subscription_count() > 0, 10.0, "while connecting")
        logger.info("node active after %.1f s", self.elapsed())

    def read_node_parameters(self) -> None:
        """Effective values of :data:`NODE_PARAMETERS` through the node's parameter services."""
        from rclpy.parameter import parameter_value_to_python
        from rclpy.parameter_client import AsyncParameterClient

        from .params import SPEC_BY_NAME

        values = {name: SPEC_BY_NAME[name].default for name in NODE_PARAMETERS}
        client = AsyncParameterClient(self.node, self.private)
        if client.wait_for_services(timeout_sec=10.0):
            future = client.get_parameters(list(NODE_PARAMETERS))
            if self.spin_until(future.done, 10.0, "while reading its parameters") and future.result():
                for name, value in zip(NODE_PARAMETERS, future.result().values):
                    values[name] = parameter_value_to_python(value)
            else:
                logger.warning("reading the node's parameters timed out: assuming the defaults")
        else:
            logger.warning("the node's parameter services did not appear: assuming the defaults")
        self.params = values
        if float(values["flush_timeout"]) <= 0:
            raise CLIError("the node's flush_timeout is 0, so it never processes the last partial window and "
                           "replay cannot finish: set flush_timeout > 0 (e.g. -p flush_timeout:=1.0)")
        logger.info("node parameters: %s", ", ".join(f"{k}={v}" for k, v in values.items()))
        if self.tf_pubs and values.get("tf_mode") == "none":
            logger.warning("the node runs with tf_mode none: it ignores the TF replay forwards")

    def discover_outputs(self, settle_s: float = 1.0, timeout_s: float = 10.0) -> None:
        """Subscribe to every topic the node publishes (once its core topics are visible and the list stopped
        changing for ``settle_s``), then wait until every recording subscription has matched."""
        core = {f"{self.private}/dynamic_mask", self.topic_window, DIAGNOSTICS_TOPIC}
        deadline = time.monotonic() + timeout_s
        last: Optional[frozenset] = None
        stable_since = time.monotonic()
        while True:
            self.check_alive("while discovering its topics")
            found = self.recorder.node_topics()
            key = frozenset(found)
            if key != last:
                last, stable_since = key, time.monotonic()
            if core <= set(found) and time.monotonic() - stable_since >= settle_s:
                break
            if time.monotonic() > deadline:
                missing = sorted(core - set(found))
                if missing:
                    logger.warning("topics of the node not discovered within %.0f s: %s", timeout_s,
                                   ", ".join(missing))
                break
            self.spin(0.1)
        self.recorder.subscribe_outputs()
        self.spin_until(self.recorder.all_matched, 10.0, "while connecting to its outputs")

    # ------------------------------------------------------------------ publishing
    def _room_to_publish(self) -> bool:
        """Whether one more image may go out now: fewer in flight than the node's input queue and the DDS
        histories hold (at ``--rate 0`` the node's ``drop_policy: wait`` does the rest)."""
        limit = frames_in_flight_limit(int(self.params.get("input_queue_size", 32)),
                                       int(self.params.get("input_qos_depth", 100)), PUBLISHER_DEPTH)
        return frames_in_flight(self.offered, self.diag) < limit

    def _publish_clock(self, stamp_ns: int) -> None:
        from builtin_interfaces.msg import Time

        if stamp_ns <= self.clock_ns:
            return
        msg = self._clock_class()
        msg.clock = Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))
        self.clock_pub.publish(msg)
        self.clock_ns = stamp_ns

    def prime_inputs(self, timeout_s: float = 15.0) -> None:
        """Make sure the node's readers know replay's writers before the first frame goes out.

        A reliable sample sent before the *reader* has matched the writer (discovery is not symmetric in time) is
        only repaired a heartbeat period later, long enough for the node's idle flush to cut the stream. The
        bag's first camera_info is therefore repeated (harmless: the node keeps the latest intrinsics) until the
        node counts one on ``/diagnostics``; both readers of the node are matched in the same discovery exchange.
        Without camera_info a short grace period has to do.
        """
        sel = self.selection
        assert sel is not None
        self._connect_tf()
        if not sel.camera_info_topic:
            self.spin(1.0)
            return
        conns = [c for c in self.reader.connections if c.topic == sel.camera_info_topic]
        first = next((bytes(raw) for _, _, raw in self.reader.messages(connections=conns)), None)
        if first is None:
            self.spin(1.0)
            return
        deadline = time.monotonic() + timeout_s
        while diag_int(self.diag, "camera_info_received") < 1:
            self.check_alive("while connecting")
            if time.monotonic() > deadline:
                logger.warning("the node has not confirmed camera_info within %.0f s; publishing anyway", timeout_s)
                break
            self.info_pub.publish(first)
            self.spin(0.2)
        self.spin(0.2)

    def _node_listens_to_tf(self) -> bool:
        for topic in self.tf_pubs:
            infos = self.node.get_subscriptions_info_by_topic(topic)
            if not any(i.node_name == NODE_NAME and i.node_namespace == self.namespace for i in infos):
                return False
        return True

    def _connect_tf(self, timeout_s: float = 10.0) -> None:
        """Wait until the node subscribes to the forwarded TF topics (``/tf`` is volatile: a transform sent
        before would be lost). Not in ``tf_mode: none``, where the node never subscribes."""
        if not self.tf_pubs or self.params.get("tf_mode") == "none":
            return
        if not self.spin_until(self._node_listens_to_tf, timeout_s, "while connecting"):
            logger.warning("the node did not subscribe to %s within %.0f s; forwarding the bag's TF anyway",
                           " and ".join(self.tf_pubs), timeout_s)

    def _tf_connections(self, topic: str) -> list:
        """The bag's connections of a forwarded TF topic (those of type TFMessage only)."""
        if topic not in self.tf_pubs:
            return []
        return [c for c in self.reader.connections if c.topic == topic and c.msgtype == TF_TYPE]

    def _forward_tf(self, topic: str, raw: bytes) -> None:
        self.tf_pubs[topic].publish(raw)
        self.tf_forwarded[topic] = self.tf_forwarded.get(topic, 0) + 1

    def publish_static_tf(self) -> None:
        """Every ``/tf_static`` message of the bag, in bag order, before the first image (transient local, so
        the node has all of them whenever it subscribed)."""
        conns = self._tf_connections(TF_STATIC_TOPIC)
        if not conns:
            return
        for _, _, raw in self.reader.messages(connections=conns):
            self._forward_tf(TF_STATIC_TOPIC, bytes(raw))
        self.executor.spin_once(timeout_sec=0.0)
        logger.info("%d %s messages published", self.tf_forwarded.get(TF_STATIC_TOPIC, 0), TF_STATIC_TOPIC)

    def publish_bag(self) -> None:
        """The bag's images, camera_info and ``/tf`` in bag order (``/tf_static`` first: :meth:`publish_static_tf`),
        each preceded by ``/clock`` at its bag time; at ``--rate R > 0`` paced at ``R`` times the bag's speed;
        only images count as frames for back-pressure."""
        sel = self.selection
        assert sel is not None
        topics = {sel.image_topic} | ({sel.camera_info_topic} if sel.camera_info_topic else set())
        conns = [c for c in self.reader.connections if c.topic in topics] + self._tf_connections(TF_TOPIC)
        self._publish_clock(sel.start_ns)
        self.publish_static_tf()
        wall0: Optional[float] = None
        bag0 = sel.start_ns
        last_log = time.monotonic()
        for conn, stamp, raw in self.reader.messages(connections=conns):
            stamp = int(stamp)
            if self.opts.rate > 0:
                if wall0 is None:
                    wall0 = time.monotonic()
                due = wall0 + (stamp - bag0) * 1e-9 / self.opts.rate
                while time.monotonic() < due:
                    self.check_alive("during playback")
                    self.executor.spin_once(timeout_sec=max(0.0, min(0.05, due - time.monotonic())))
            is_image = conn.topic == sel.image_topic
            if is_image:
                while not self._room_to_publish():
                    self.check_alive("during playback")
                    self.executor.spin_once(timeout_sec=0.05)
            self._publish_clock(stamp)
            if is_image:
                self.image_pub.publish(bytes(raw))
                self.offered += 1
            elif conn.topic == sel.camera_info_topic:
                self.info_pub.publish(bytes(raw))
            else:
                self._forward_tf(conn.topic, bytes(raw))
            self.executor.spin_once(timeout_sec=0.0)
            if time.monotonic() - last_log > 10.0:
                last_log = time.monotonic()
                logger.info("%d/%d frames published, %d processed", self.offered, sel.frames,
                            diag_int(self.diag, "frames_processed"))
        forwarded = ", ".join(f"{n} on {t}" for t, n in sorted(self.tf_forwarded.items()))
        logger.info("all %d frames%s published after %.1f s; waiting for the node to finish", self.offered,
                    f" (and TF: {forwarded})" if forwarded else "", self.elapsed())

    # ------------------------------------------------------------------ the end
    def node_finished(self) -> bool:
        d = self.diag
        return (frames_in_flight(self.offered, d) <= 0 and "keyframes_pending" in d
                and diag_int(d, "keyframes_pending") == 0 and diag_int(d, "queue_depth") == 0
                and diag_int(d, "input_queue_depth") == 0 and d.get("worker_busy", "False") != "True")

    def missing_outputs(self) -> dict[str, tuple[int, int]]:
        """``topic -> (recorded, published)`` for outputs the recording has fewer messages of than the node
        published (by its own counters)."""
        return self.recorder.shortfall()

    def wait_for_the_end(self) -> Optional[str]:
        """Wait until the node has handled every frame and every output it published is recorded; returns a
        problem or ``None``."""
        stuck_since, last_in = time.monotonic(), -1
        while not self.node_finished():
            self.check_alive("before it finished")
            taken = self.offered - frames_in_flight(self.offered, self.diag)
            if taken != last_in:
                stuck_since, last_in = time.monotonic(), taken
            elif taken < self.offered and time.monotonic() - stuck_since > 30.0:
                raise ReplayFailed(f"the node received only {taken} of {self.offered} frames")
            self.executor.spin_once(timeout_sec=0.05)
        # the final map: published by the node's timer after the last window
        if self.topic_map in self.recorder.connections and self.topic_window in self.recorder.last_received:
            window_t = self.recorder.last_received[self.topic_window]
            period = float(self.params.get("map_publish_period", 2.0))
            if not self.spin_until(lambda: self.recorder.last_received.get(self.topic_map, -math.inf) > window_t,
                                   period + 3.0, "while waiting for the final map"):
                logger.warning("no ~/map_cloud after the last window within %.1f s", period + 3.0)
        # a fresh /diagnostics (its published.* counters include the last outputs), then every output recorded
        updates = self.recorder.diag_updates
        self.spin_until(lambda: self.recorder.diag_updates >= updates + 2, 10.0, "while reading its counters")
        if not self.spin_until(lambda: not self.missing_outputs(), 10.0, "while its last outputs arrived"):
            missing = self.missing_outputs()
            return ("outputs missing from the recording (recorded/published): "
                    + ", ".join(f"{t} {r}/{n}" for t, (r, n) in missing.items()))
        self.spin(0.3)
        return None

    def stop_node(self) -> Optional[int]:
        return self.process.stop() if self.process is not None else None

    def close(self, keep_log: bool) -> None:
        import rclpy

        if self.recorder is not None:
            self.recorder.close()
        if self.node is not None:
            self.node.destroy_node()
            self.node = None
        if self.executor is not None:
            self.executor.shutdown(timeout_sec=1.0)
        if self.context is not None:
            rclpy.try_shutdown(context=self.context)
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.process is not None:
            self.process.close(keep_log)
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
