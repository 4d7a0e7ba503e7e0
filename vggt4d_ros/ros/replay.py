"""``vggt4d replay``: play a bag through the VGGT4D node (its own process) and record every output into a bag.

What happens, in order:

1. The input bag (rosbag2, sqlite3 or mcap) is opened with ``rosbags``; its image topic (``sensor_msgs/Image``,
   or ``sensor_msgs/CompressedImage``) and camera_info topic are chosen (``--image-topic`` /
   ``--camera-info-topic`` when the bag has several). Its ``/tf`` and ``/tf_static`` (``tf2_msgs/msg/TFMessage``)
   are forwarded too, as ``ros2 bag play`` does, unless ``--no-tf`` is given: a bag recorded on a robot (``odom ->
   base_link`` on ``/tf``, ``base_link -> camera`` on ``/tf_static``) puts the node's ``tf_mode: auto`` into
   ``map_to_odom`` (REP-105), as on the robot. A TF topic of another type, or without messages, is skipped with a
   warning. The start-up log line names the TF topics forwarded and their message counts.
2. The node starts as its own process: the installed ``lib/vggt4d_ros/vggt4d_node`` when an install space is
   found (``$VGGT4D_ROS_INSTALL``, ``$AMENT_PREFIX_PATH``, the install space this module lives in, or the
   repository's ``install/vggt4d_ros``), else ``python -m vggt4d_ros.ros.node_main``. Its parameters are the
   ``--params-file`` (if any) followed by a parameters file replay writes (:func:`write_parameters_file`) with the
   ``--weights/--config/--device/--dtype`` options, every ``-p name:=value``, and the settings replay depends on:
   ``autostart:=true input_qos:=reliable input_qos_depth:=100 input_queue_size:=64 use_sim_time:=true
   diagnostics_period:=0.2 input_transport:=raw|compressed`` and, at ``--rate 0``, ``drop_policy:=wait``;
   the node's ``image`` (or ``image/compressed``) and ``camera_info`` are remapped to the bag's topic names.
   ``ROS_AUTOMATIC_DISCOVERY_RANGE`` is set to ``LOCALHOST`` when unset (a value that is set is kept), the
   caller's ``ROS_DOMAIN_ID`` is kept, and the node's environment gets the install space's paths
   (:func:`node_environment`), so nothing has to be sourced.
3. Replay waits until the node reports ``state=active`` on ``/diagnostics`` and its image subscription has
   matched, reads the node's effective parameters (window size, overlap, queue size, ...) through its parameter
   services, discovers every topic the node publishes (``~/...``, ``/tf``, ``/diagnostics``; ``/rosout`` and
   ``/parameter_events`` are left out) and subscribes to each with the publisher's reliability and durability
   (transient local for ``~/map_cloud``) to record the raw CDR bytes.
4. Before the first frame, the bag's first camera_info is repeated until the node has counted one (so its
   readers have matched replay's writers: a sample sent earlier would only be repaired a heartbeat period later).
   Then the bag's image and camera_info messages are published as raw CDR bytes with RELIABLE QoS, and
   ``rosgraph_msgs/Clock`` on ``/clock`` carries the bag time (the node runs with ``use_sim_time``).
   The forwarded TF goes out with tf2's QoS: every ``/tf_static`` message first, before the first image
   (reliable, transient local, a history as deep as the bag's static messages), then ``/tf`` (reliable,
   volatile, keep-last 100) interleaved with the images in bag order, so a transform recorded before an image is
   published before it. TF messages are not frames: they never wait for back-pressure, and at ``--rate R > 0``
   they follow the bag timing like the images. Replay's own ``/tf`` samples are not recorded (only the node's).
   Nothing is lost in transit: fewer images are in flight (published but not yet taken by the node's input
   thread, ``frames_in + input_overflow`` on ``/diagnostics``) than the node's input queue and both DDS
   histories hold, so the reliable protocol redelivers any sample until the node has taken it (a per-message
   ``wait_for_all_acked`` is not used: acknowledgements follow the writer's heartbeat period, seconds, which
   would stall playback and trip the node's idle flush). ``--rate R`` paces the messages at ``R`` times the bag's
   speed (1 = real time, the default, like ``ros2 bag play``; the node's own ``drop_policy`` applies, as for a
   camera); ``--rate 0`` publishes as fast as the node accepts: replay sets ``drop_policy: wait``, so the node's
   input thread waits for room in its window queue and the images wait in its input queue, which replay never
   overfills -- whatever the segments, idle flushes or out-of-memory retries, every frame offered is processed,
   skipped (not a keyframe) or invalid, and nothing is dropped for a full queue. Whatever the node drops is
   counted on ``/diagnostics`` by reason.
5. Replay ends when every offered frame is accounted for: ``frames_in`` equals the frames offered, no keyframe
   is pending (the node processes the last partial window once its input has been idle for ``flush_timeout``),
   the worker queue is empty and idle, the map published after the last window has been recorded, and *every*
   output topic holds at least as many messages as the node says it published (its ``published.<output>``
   counters on ``/diagnostics``). It then stops the node (SIGINT, then SIGTERM, then SIGKILL), closes the output
   bag and prints a one-line summary. The exit status is 0 on success and 1 when the node died, the timeout
   passed or outputs are missing from the recording (the failure names each topic with its recorded/published
   counts).

Modules: :mod:`~vggt4d_ros.ros.install_space` (finding and using the install space),
:mod:`~vggt4d_ros.ros.replay_params` (the node's parameters and ROS arguments),
:mod:`~vggt4d_ros.ros.replay_input` (topic selection, back-pressure), :mod:`~vggt4d_ros.ros.replay_recorder`
(recording and completeness), :mod:`~vggt4d_ros.ros.replay_process` (the node process),
:mod:`~vggt4d_ros.ros.replay_session` (one session); this module holds the command line.

The recorded bag (mcap by default) stores each topic with its type's message definition from the ROS 2 Kilted
type store of ``rosbags``; ``vggt4d_ros/msg/Window`` is registered from ``msg/Window.msg``. Message times in the
bag are the bag (sim) time at which replay received them.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import signal
from pathlib import Path
from typing import Any, Mapping

from vggt4d_ros.bags import STORAGES
from vggt4d_ros.cli import CLIError

from .install_space import (
    NODE_EXECUTABLE,
    NODE_NAME,
    PACKAGE,
    find_install_prefix,
    import_package_messages,
    install_site_packages,
    message_class,
    node_command,
    node_environment,
    window_msg_definition,
)
from .replay_input import (
    InputSelection,
    frames_in_flight,
    frames_in_flight_limit,
    select_input_topics,
    select_tf_topics,
)
from .replay_params import (
    FORCED_PARAMETERS,
    node_ros_arguments,
    normalise_namespace,
    parse_parameter_override,
    replay_parameters,
    write_parameters_file,
)
from .replay_recorder import published_counts
from .replay_session import ReplayFailed, ReplayOptions, ReplaySession, ReplaySummary

logger = logging.getLogger(__name__)

__all__ = [
    "PACKAGE",
    "NODE_NAME",
    "NODE_EXECUTABLE",
    "FORCED_PARAMETERS",
    "ReplayOptions",
    "ReplaySummary",
    "InputSelection",
    "add_arguments",
    "run",
    "replay",
    "find_install_prefix",
    "install_site_packages",
    "node_environment",
    "node_command",
    "node_ros_arguments",
    "replay_parameters",
    "write_parameters_file",
    "window_msg_definition",
    "import_package_messages",
    "message_class",
    "select_input_topics",
    "select_tf_topics",
    "parse_parameter_override",
    "frames_in_flight",
    "frames_in_flight_limit",
    "published_counts",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vggt4d replay``."""
    parser.add_argument("input", metavar="IN_BAG", help="input rosbag2 (sqlite3 or mcap) with camera images")
    parser.add_argument("--output", "-o", required=True, metavar="OUT_BAG",
                        help="output rosbag2 directory for every topic the node publishes (must not exist)")
    parser.add_argument("--storage", default="mcap", choices=STORAGES,
                        help="storage of the output bag (default: %(default)s)")
    parser.add_argument("--params-file", type=Path, default=None, metavar="YAML",
                        help="node parameters file (e.g. config/vggt4d.yaml)")
    parser.add_argument("-p", "--param", dest="params", action="append", default=[], metavar="NAME:=VALUE",
                        help="node parameter override, repeatable (e.g. -p window_size:=8)")
    parser.add_argument("--rate", type=float, default=1.0,
                        help="playback speed relative to the bag time; 0 = as fast as the node accepts, with "
                             "back-pressure so that the node drops nothing (default: %(default)s)")
    parser.add_argument("--node-namespace", default="/", metavar="NS", help="namespace of the node (default: /)")
    parser.add_argument("--image-topic", default=None,
                        help="image topic of the bag (default: its only Image, else CompressedImage topic)")
    parser.add_argument("--camera-info-topic", default=None,
                        help="camera_info topic of the bag (default: its CameraInfo topic, if any; '' = none)")
    parser.add_argument("--no-tf", dest="forward_tf", action="store_false",
                        help="do not forward the bag's /tf and /tf_static to the node (default: forward them, "
                             "with tf2's QoS, in bag order, when the bag has them)")
    parser.add_argument("--timeout", type=float, default=0.0, metavar="S",
                        help="give up after S seconds in total (default: 0 = no limit)")
    parser.add_argument("--startup-timeout", type=float, default=600.0, metavar="S",
                        help="seconds the node may take to load the model and become active (default: "
                             "%(default)s)")
    parser.add_argument("--node-log", type=Path, default=None, metavar="FILE",
                        help="write the node's console output here (default: a temporary file, kept and shown "
                             "only when something fails)")
    parser.add_argument("--weights", default=None, help="node parameter 'weights': hub id or local checkpoint")
    parser.add_argument("--config", default=None,
                        help="node parameter 'model_config': preset name (vggt-1b) or JSON file")
    parser.add_argument("--device", default=None, help="node parameter 'device': auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default=None, choices=("auto", "float32", "bfloat16"),
                        help="node parameter 'dtype'")


def replay(opts: ReplayOptions) -> ReplaySummary:
    """Run one replay (see the module docstring) and return its summary.

    Raises:
        CLIError: a problem with the arguments or the input, found before the node starts (or a node setting
            that makes replay impossible).
    """
    if opts.rate < 0 or not math.isfinite(opts.rate):
        raise CLIError(f"--rate must be >= 0 (0 = as fast as the node accepts), got {opts.rate:g}")
    if opts.timeout < 0 or opts.startup_timeout <= 0:
        raise CLIError("--timeout must be >= 0 and --startup-timeout > 0")
    if opts.storage not in STORAGES:
        raise CLIError(f"--storage must be one of {', '.join(STORAGES)}, got {opts.storage!r}")
    for text in opts.overrides:
        try:
            parse_parameter_override(text)
        except ValueError as exc:
            raise CLIError(str(exc)) from exc
    try:
        normalise_namespace(opts.namespace)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    if opts.params_file is not None and not Path(opts.params_file).is_file():
        raise CLIError(f"parameters file not found: {opts.params_file}")
    if Path(opts.output).exists():
        raise CLIError(f"output bag {opts.output} exists already; choose a new path")
    if not Path(opts.output).resolve().parent.is_dir():
        raise CLIError(f"the folder of the output bag does not exist: {Path(opts.output).resolve().parent}")

    session = ReplaySession(opts)
    ok, reason = False, ""
    try:
        session.open_input()
        if not import_package_messages(session.prefix):
            raise CLIError(f"the generated {PACKAGE}.msg messages are not importable: build the package first "
                           f"(bash tools/setup_env.sh, or colcon build and source install/setup.bash)")
        session.start_node()
        session.start_ros()
        session.open_output()
        session.create_publishers()
        try:
            session.wait_until_active()
            session.read_node_parameters()
            session.discover_outputs()
            session.prime_inputs()
            session.publish_bag()
            problem = session.wait_for_the_end()
            ok, reason = problem is None, problem or ""
        except ReplayFailed as exc:
            reason = str(exc)
        code = session.stop_node()
        if ok and code not in (0, None, -signal.SIGINT):
            ok, reason = False, f"the node exited with status {code} when stopped" + session.log_excerpt()
    except BaseException as exc:
        session.stop_node()
        session.close(keep_log=not isinstance(exc, (KeyboardInterrupt, CLIError)))
        _remove_empty_output(opts.output, session.recorded)
        raise
    summary = ReplaySummary(ok=ok, reason=reason, frames_offered=session.offered, diagnostics=dict(session.diag),
                            recorded={t: n for t, n in session.recorded.items()}, output=Path(opts.output),
                            node_log=None, elapsed_s=session.elapsed(),
                            published=session.recorder.published() if session.recorder is not None else {},
                            missing=session.missing_outputs() if session.recorder is not None else {})
    session.close(keep_log=not ok or opts.node_log is not None)
    summary.node_log = session.log_path
    if not ok:
        _remove_empty_output(opts.output, session.recorded)
    return summary


def _remove_empty_output(path: Path, recorded: Mapping[str, int]) -> None:
    """A replay that failed before the node published anything leaves no empty bag behind."""
    if Path(path).is_dir() and sum(recorded.values()) == 0:
        shutil.rmtree(path, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    """``vggt4d replay``: prints the one-line summary; exit status 0 on success, 1 on failure."""
    model = {"weights": args.weights, "model_config": args.config, "device": args.device, "dtype": args.dtype}
    opts = ReplayOptions(input=Path(args.input), output=Path(args.output), storage=args.storage,
                         params_file=args.params_file, overrides=list(args.params), rate=args.rate,
                         namespace=args.node_namespace, image_topic=args.image_topic,
                         camera_info_topic=args.camera_info_topic, timeout=args.timeout,
                         startup_timeout=args.startup_timeout, node_log=args.node_log, model=model,
                         forward_tf=args.forward_tf)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        summary = replay(opts)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(summary.line(), flush=True)
    return 0 if summary.ok else 1


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM ends a replay like Ctrl-C: the node is stopped and the output bag closed before exiting."""
    raise KeyboardInterrupt(f"signal {signum}")
