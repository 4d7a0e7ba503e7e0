"""``vggt4d replay``: play a bag through the VGGT4D node (its own process) and record every output into a bag.

What happens, in order:

1. The input bag (rosbag2, sqlite3 or mcap) is opened with ``rosbags``; its image topic (``sensor_msgs/Image``,
   or ``sensor_msgs/CompressedImage``) and camera_info topic are chosen (``--image-topic`` /
   ``--camera-info-topic`` when the bag has several).
2. The node starts as its own process: the installed ``lib/vggt4d_ros/vggt4d_node`` when an install space is
   found (``$VGGT4D_ROS_INSTALL``, ``$AMENT_PREFIX_PATH``, the install space this module lives in, or the
   repository's ``install/vggt4d_ros``), else ``python -m vggt4d_ros.ros.node``. Its parameters are the
   ``--params-file`` (if any) followed by a parameters file replay writes (:func:`write_parameters_file`) with the
   ``--weights/--config/--device/--dtype`` options, every ``-p name:=value``, and the settings replay depends on:
   ``autostart:=true input_qos:=reliable input_qos_depth:=100 use_sim_time:=true input_transport:=raw|compressed``;
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
   Nothing is lost in transit: fewer frames are in flight (published but not yet counted in ``frames_in`` on
   ``/diagnostics``) than both the node's input history (``input_qos_depth``) and replay's reliable publisher
   history hold, so the reliable protocol redelivers any sample until the node has taken it (a per-message
   ``wait_for_all_acked`` is not used: acknowledgements follow the writer's heartbeat period, seconds, which
   would stall playback and trip the node's idle flush). ``--rate R`` paces the messages at
   ``R`` times the bag's speed (1 = real time, the default, like ``ros2 bag play``); ``--rate 0`` publishes as
   fast as the node accepts, i.e. with back-pressure: no more frames are outstanding than the node can hold
   without its window queue overflowing (``(queue_size + 1) * (window_size - window_overlap) - 1`` keyframes), so
   every frame is processed unless the node itself fails. Whatever the node drops is counted on
   ``/diagnostics`` by reason.
5. Replay ends when every offered frame is accounted for: ``frames_in`` equals the frames offered, no keyframe
   is pending (the node processes the last partial window once its input has been idle for ``flush_timeout``),
   the worker queue is empty and idle, the recorded masks and windows match the node's counters, and the map
   published after the last window has been recorded. It then stops the node (SIGINT, then SIGTERM, then
   SIGKILL), closes the output bag and prints a one-line summary. The exit status is 0 on success and 1 when
   the node died, the timeout passed or outputs are missing from the recording.

The recorded bag (mcap by default) stores each topic with its type's message definition from the ROS 2 Kilted
type store of ``rosbags``; ``vggt4d_ros/msg/Window`` is registered from ``msg/Window.msg``. Message times in the
bag are the bag (sim) time at which replay received them.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import importlib
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from vggt4d_ros.bags import STORAGES
from vggt4d_ros.cli import CLIError

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
    "select_input_topics",
    "parse_parameter_override",
    "backpressure_budget",
]

PACKAGE = "vggt4d_ros"
NODE_NAME = "vggt4d"
NODE_EXECUTABLE = "vggt4d_node"
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
WINDOW_TYPE = f"{PACKAGE}/msg/Window"
DIAGNOSTICS_TOPIC = "/diagnostics"
#: Topics of the node that are ROS infrastructure rather than its output.
SKIPPED_OUTPUTS = ("/rosout", "/parameter_events", "/bond")  # /bond: the lifecycle-manager bond (ros/bond.py)
#: Parameters replay sets last (they override the parameters file and ``-p``).
FORCED_PARAMETERS = ("autostart", "input_qos", "input_qos_depth", "use_sim_time", "input_transport")
#: Input history depth replay gives the node: frames in flight are kept below it.
INPUT_DEPTH = 100
#: Depth of replay's own publishers and recording subscriptions.
PUBLISHER_DEPTH = 100
RECORD_DEPTH = 1000
#: Parameters of the node that replay reads back after start.
NODE_PARAMETERS = ("window_size", "window_overlap", "queue_size", "keyframe_stride", "flush_timeout",
                   "input_qos_depth", "map_publish_period")

_PARAM_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*):=(.*)$", re.DOTALL)
_NAMESPACE_RE = re.compile(r"^/?([A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*)?/?$")


# ================================================================================================ install space
def install_site_packages(prefix: Path) -> Path:
    """``<prefix>/lib/pythonX.Y/site-packages`` for the running Python."""
    return Path(prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def _is_install_prefix(prefix: Path) -> bool:
    return (prefix / "share" / PACKAGE / "package.xml").is_file() and \
        (prefix / "lib" / PACKAGE / NODE_EXECUTABLE).is_file()


def _install_prefix_candidates(env: Mapping[str, str]) -> list[Path]:
    candidates: list[Path] = []
    explicit = env.get("VGGT4D_ROS_INSTALL")
    if explicit:
        candidates.append(Path(explicit))
    for entry in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if entry:
            candidates.append(Path(entry))
    here = Path(__file__).resolve()
    # <prefix>/lib/pythonX.Y/site-packages/vggt4d_ros/ros/replay.py: this module inside an install space
    if len(here.parents) > 5 and here.parents[3].name == "site-packages":
        candidates.append(here.parents[5])
    # <repo>/vggt4d_ros/ros/replay.py: the source tree, built into <repo>/install/vggt4d_ros by tools/setup_env.sh
    repo = here.parents[2]
    if (repo / "package.xml").is_file():
        candidates.append(repo / "install" / PACKAGE)
    return candidates


def find_install_prefix(env: Optional[Mapping[str, str]] = None) -> Optional[Path]:
    """The install prefix holding ``lib/vggt4d_ros/vggt4d_node`` and ``share/vggt4d_ros/package.xml``.

    Searched in order: ``$VGGT4D_ROS_INSTALL``, each entry of ``$AMENT_PREFIX_PATH``, the install space this
    module was loaded from, the repository's ``install/vggt4d_ros``. ``None`` when there is none.
    """
    env = os.environ if env is None else env
    for prefix in _install_prefix_candidates(env):
        if _is_install_prefix(prefix):
            return prefix.resolve()
    return None


def _prepend_path(value: Optional[str], *entries: str) -> str:
    parts = [p for p in (value or "").split(os.pathsep) if p]
    return os.pathsep.join([e for e in entries if e not in parts] + parts)


def node_environment(prefix: Optional[Path], base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """Environment for a process that runs the node (or imports the generated messages) from ``prefix``
    without sourcing ``setup.bash``.

    * ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` when unset (a value that is set is never changed);
      ``ROS_DOMAIN_ID`` and everything else are inherited from ``base`` (default ``os.environ``).
    * With an install prefix: its ``site-packages`` first on ``PYTHONPATH`` (ahead of a source tree or an
      editable install, which lack the generated ``vggt4d_ros.msg``), ``<prefix>/lib`` first on
      ``LD_LIBRARY_PATH`` (the typesupport libraries are loaded by name), the prefix first on
      ``AMENT_PREFIX_PATH`` and the running venv after it when it holds an ament index (the PyPI ROS wheels),
      and ``PYTHONSAFEPATH=1`` so that a working directory at the repository root cannot shadow the installed
      package.
    """
    env = dict(os.environ if base is None else base)
    if not env.get("ROS_AUTOMATIC_DISCOVERY_RANGE"):
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONUNBUFFERED"] = "1"
    if prefix is None:
        return env
    prefix = Path(prefix)
    env["PYTHONPATH"] = _prepend_path(env.get("PYTHONPATH"), str(install_site_packages(prefix)))
    env["LD_LIBRARY_PATH"] = _prepend_path(env.get("LD_LIBRARY_PATH"), str(prefix / "lib"))
    ament = [str(prefix)]
    if (Path(sys.prefix) / "share" / "ament_index").is_dir():
        ament.append(sys.prefix)
    rest = [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p and p not in ament]
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(ament + rest)
    env["PYTHONSAFEPATH"] = "1"
    return env


def node_command(prefix: Optional[Path]) -> list[str]:
    """The node's command line without ROS arguments: the installed executable, else ``python -m``."""
    if prefix is not None:
        exe = Path(prefix) / "lib" / PACKAGE / NODE_EXECUTABLE
        if exe.is_file() and os.access(exe, os.X_OK):
            return [str(exe)]
    return [sys.executable, "-m", "vggt4d_ros.ros.node"]


def window_msg_definition(prefix: Optional[Path]) -> Optional[str]:
    """Text of ``msg/Window.msg``: from the install space (``share/vggt4d_ros/msg``), else the source tree."""
    candidates = []
    if prefix is not None:
        candidates.append(Path(prefix) / "share" / PACKAGE / "msg" / "Window.msg")
    candidates.append(Path(__file__).resolve().parents[2] / "msg" / "Window.msg")
    for path in candidates:
        if path.is_file():
            return path.read_text()
    return None


def import_package_messages(prefix: Optional[Path]) -> bool:
    """Make the generated ``vggt4d_ros.msg`` importable in this process; returns whether it is.

    When the running ``vggt4d_ros`` is the source tree (an editable install, which has no ``msg``), the
    install space's package directory is added to ``vggt4d_ros.__path__`` and its generated libraries are
    loaded by absolute path (global symbols), so that the typesupport's load by library name finds them
    without ``LD_LIBRARY_PATH``.
    """
    try:
        importlib.import_module(f"{PACKAGE}.msg")
        return True
    except ImportError:
        pass
    if prefix is None:
        return False
    import vggt4d_ros

    pkg_dir = install_site_packages(Path(prefix)) / PACKAGE
    if not (pkg_dir / "msg").is_dir():
        return False
    if str(pkg_dir) not in vggt4d_ros.__path__:
        vggt4d_ros.__path__.append(str(pkg_dir))
    for lib in sorted(glob.glob(str(Path(prefix) / "lib" / f"lib{PACKAGE}__rosidl_*.so"))):
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    os.environ["AMENT_PREFIX_PATH"] = _prepend_path(os.environ.get("AMENT_PREFIX_PATH"), str(prefix))
    sys.modules.pop(f"{PACKAGE}.msg", None)
    try:
        importlib.import_module(f"{PACKAGE}.msg")
        return True
    except ImportError as exc:
        logger.warning("cannot import %s.msg from %s: %s", PACKAGE, prefix, exc)
        return False


def _message_class(type_name: str) -> type:
    """``pkg/msg/Name`` -> the rclpy message class (without rosidl_runtime_py)."""
    parts = type_name.split("/")
    if len(parts) != 3:
        raise ValueError(f"message type must look like 'pkg/msg/Name', got {type_name!r}")
    module = importlib.import_module(f"{parts[0]}.{parts[1]}")
    return getattr(module, parts[2])


# ================================================================================================ arguments
def parse_parameter_override(text: str) -> tuple[str, str]:
    """Split ``name:=value`` (the ``-p`` syntax of ``ros2 run``).

    Raises:
        ValueError: when ``text`` is not ``name:=value`` with a valid parameter name.
    """
    match = _PARAM_RE.match(text)
    if match is None:
        raise ValueError(f"parameter override must look like name:=value (e.g. window_size:=8), got {text!r}")
    return match.group(1), match.group(2)


def _normalise_namespace(ns: str) -> str:
    if not _NAMESPACE_RE.match(ns or ""):
        raise ValueError(f"node namespace must look like /robot1 or robot1/camera, got {ns!r}")
    ns = "/" + ns.strip("/")
    return ns


def _parameter_value(text: str) -> Any:
    """A ``-p`` value typed as ROS types it (YAML scalars and lists): ``8`` -> 8, ``true`` -> True, ``0.5`` -> 0.5,
    anything else stays a string."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if value is None:
        return ""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return value
    return text


def replay_parameters(overrides: Sequence[str], model: Mapping[str, Optional[str]],
                      input_transport: str) -> dict[str, Any]:
    """The node parameters replay passes: the model options (``--weights`` ... as strings), the user's ``-p``
    overrides in order, then :data:`FORCED_PARAMETERS`."""
    values: dict[str, Any] = {}
    for name in ("weights", "model_config", "device", "dtype"):
        value = model.get(name)
        if value:
            values[name] = str(value)
    for text in overrides:
        name, raw = parse_parameter_override(text)
        values[name] = _parameter_value(raw)
    values.update(autostart=True, input_qos="reliable", input_qos_depth=INPUT_DEPTH, use_sim_time=True,
                  input_transport=input_transport)
    return values


def write_parameters_file(path: Path, values: Mapping[str, Any], user_params_file: Optional[Path]) -> Path:
    """Write ``values`` as a ROS parameters file that wins over ``user_params_file`` when passed after it.

    ROS applies parameter entries in the order their node key (``/**/vggt4d``, ``/vggt4d``, ``/**`` ...) first
    appears among all ``--params-file`` and ``-p`` arguments, so plain ``-p`` overrides (key ``/**``) can lose
    against a file's more specific ``/**/vggt4d`` entry. The values are therefore written under
    ``/**/vggt4d`` *and* under every top-level key of the user's file: whatever the order of the entries, each one
    that matches the node carries replay's values.
    """
    import yaml

    keys = [f"/**/{NODE_NAME}"]
    if user_params_file is not None:
        try:
            doc = yaml.safe_load(Path(user_params_file).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise CLIError(f"cannot read the parameters file {user_params_file}: {exc}") from exc
        if not isinstance(doc, dict):
            raise CLIError(f"the parameters file {user_params_file} is not a mapping of node names to "
                           f"'ros__parameters'")
        keys += [str(k) for k in doc if str(k) not in keys]
    params = {key: {"ros__parameters": dict(values)} for key in keys}
    Path(path).write_text("# Written by vggt4d replay: its settings for the node (see vggt4d_ros/ros/replay.py).\n"
                          + yaml.safe_dump(params, default_flow_style=False, sort_keys=False))
    return Path(path)


def node_ros_arguments(*, namespace: str, params_files: Sequence[Path], input_transport: str, image_topic: str,
                       camera_info_topic: Optional[str]) -> list[str]:
    """ROS arguments of the node: the parameters files in order (the user's, then replay's from
    :func:`write_parameters_file`), the namespace, and the remappings of the node's inputs (``image`` or
    ``image/compressed``, ``camera_info``) to the bag's topics."""
    args = ["--ros-args"]
    for path in params_files:
        args += ["--params-file", str(path)]
    if namespace != "/":
        args += ["-r", f"__ns:={namespace}"]
    node_input = "image/compressed" if input_transport == "compressed" else "image"
    args += ["-r", f"{node_input}:={image_topic}"]
    if camera_info_topic:
        args += ["-r", f"camera_info:={camera_info_topic}"]
    return args


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


# ================================================================================================ input bag
@dataclass(frozen=True)
class InputSelection:
    """Topics of the input bag that are replayed.

    Attributes:
        image_topic: topic of the images; ``image_type`` is its message type (Image or CompressedImage).
        camera_info_topic: CameraInfo topic, or ``None``.
        frames: number of image messages (the frames offered to the node).
        start_ns, end_ns: bag time of the first and last replayed message.
    """

    image_topic: str
    image_type: str
    camera_info_topic: Optional[str]
    frames: int
    start_ns: int
    end_ns: int


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


def _open_reader(path: Path):
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


# ================================================================================================ back-pressure
def backpressure_budget(window_size: int, window_overlap: int, queue_size: int, keyframe_stride: int,
                        first_window_done: bool) -> int:
    """Frames that may be outstanding (offered but not yet processed, dropped, skipped or rejected) so that the
    node's window queue never overflows.

    With ``s = window_size - window_overlap`` new keyframes per window and the frames up to the end of window
    ``j - 1`` processed, ``P`` unprocessed keyframes complete windows up to ``j - 1 + P // s``; at most
    ``queue_size`` of them may be unfinished, *counting* window ``j`` even while it is being processed (right
    after a window's outputs are published the worker has not yet taken the next one from the queue, so the queue
    may still hold ``queue_size`` windows). Hence ``P <= (queue_size + 1) * s - 1``. Before the first window of a
    stream is done, ``window_size`` keyframes must be allowed so that it can form at all. Multiplied by
    ``keyframe_stride`` to count frames rather than keyframes.
    """
    step = max(1, window_size - window_overlap)
    keyframes = (queue_size + 1) * step - 1
    if not first_window_done:
        keyframes = max(keyframes, window_size)
    keyframes = max(keyframes, step)
    return keyframes * max(1, keyframe_stride)


# ================================================================================================ replay
@dataclass
class ReplayOptions:
    """Everything :func:`replay` needs (the parsed command line)."""

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


@dataclass
class ReplaySummary:
    """Outcome of a replay (also the source of the printed summary line)."""

    ok: bool
    reason: str
    frames_offered: int
    diagnostics: dict[str, str]
    recorded: dict[str, int]
    output: Path
    node_log: Optional[Path]
    elapsed_s: float

    def value(self, key: str) -> int:
        return _int(self.diagnostics.get(key))

    def by_prefix(self, prefix: str) -> dict[str, int]:
        return {k[len(prefix):]: _int(v) for k, v in sorted(self.diagnostics.items())
                if k.startswith(prefix) and _int(v) > 0}

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
                f"{self.value('windows_processed')} windows ({self.value('windows_failed')} failed), "
                f"{sum(self.recorded.values())} messages on {len(self.recorded)} topics recorded to "
                f"{self.output} in {self.elapsed_s:.1f} s")
        if not self.ok:
            text += f"; {self.reason}"
            if self.node_log is not None:
                text += f" (node log: {self.node_log})"
        return text


def _int(value: Any) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0


class _ReplayFailed(Exception):
    """Ends a replay early with a reason (node died, timeout, ...)."""


class _Replay:
    """One replay session: the node process, replay's own rclpy node, the input reader and the output writer."""

    def __init__(self, opts: ReplayOptions) -> None:
        self.opts = opts
        self.t_start = time.monotonic()
        self.prefix = find_install_prefix()
        self.namespace = _normalise_namespace(opts.namespace)
        self.private = (self.namespace.rstrip("/") + "/" + NODE_NAME)
        self.status_name = f"{NODE_NAME}: vggt4d pipeline"
        self.proc: Optional[subprocess.Popen] = None
        self.log_path: Optional[Path] = None
        self._log_is_temp = False
        self._log_file = None
        self.tmpdir: Optional[Path] = None
        self.context = None
        self.node = None
        self.executor = None
        self.writer = None
        self.typestore = None
        self.reader = None
        self.selection: Optional[InputSelection] = None
        self.connections: dict[str, Any] = {}
        self.subscriptions: dict[str, Any] = {}
        self.recorded: dict[str, int] = {}
        self.last_received: dict[str, float] = {}
        self.diag: dict[str, str] = {}
        self.clock_ns = 0
        self.offered = 0
        self.params: dict[str, Any] = {}
        self.topic_mask = f"{self.private}/dynamic_mask"
        self.topic_window = f"{self.private}/window"
        self.topic_map = f"{self.private}/map_cloud"
        self._diag_class = None
        self._deserialize: Optional[Callable] = None

    # ------------------------------------------------------------------ helpers
    def elapsed(self) -> float:
        return time.monotonic() - self.t_start

    def check_alive(self, phase: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise _ReplayFailed(f"the node exited with status {self.proc.returncode} {phase}"
                                + self._log_excerpt())
        if self.opts.timeout > 0 and self.elapsed() > self.opts.timeout:
            raise _ReplayFailed(f"timeout: {self.opts.timeout:g} s passed {phase}")

    def _log_excerpt(self, lines: int = 6) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errors = [ln for ln in text if "ERROR" in ln or "FATAL" in ln]
        chosen = errors[-lines:] if errors else text[-2:]
        return (": " + " | ".join(s.strip() for s in chosen)) if chosen else ""

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
        self.reader = _open_reader(self.opts.input)
        try:
            image_topic, image_type, info_topic = select_input_topics(
                self.reader.connections, self.opts.image_topic, self.opts.camera_info_topic)
        except ValueError as exc:
            raise CLIError(str(exc)) from exc
        image_conns = [c for c in self.reader.connections if c.topic == image_topic]
        frames = sum(int(c.msgcount) for c in image_conns)
        if frames == 0:
            raise CLIError(f"topic {image_topic} of {self.opts.input} has no messages")
        self.selection = InputSelection(image_topic=image_topic, image_type=image_type,
                                        camera_info_topic=info_topic, frames=frames,
                                        start_ns=int(self.reader.start_time), end_ns=int(self.reader.end_time))
        logger.info("input %s: %d frames on %s (%s)%s, %.1f s of bag time", self.opts.input, frames, image_topic,
                    image_type, f", camera_info on {info_topic}" if info_topic else ", no camera_info",
                    (self.selection.end_ns - self.selection.start_ns) * 1e-9)

    def start_node(self) -> None:
        sel = self.selection
        assert sel is not None
        transport = "compressed" if sel.image_type == COMPRESSED_TYPE else "raw"
        for text in self.opts.overrides:
            name, _ = parse_parameter_override(text)
            if name in FORCED_PARAMETERS:
                logger.warning("-p %s is ignored: replay sets %s itself", text, name)
        self.tmpdir = Path(tempfile.mkdtemp(prefix="vggt4d_replay_"))
        values = replay_parameters(self.opts.overrides, self.opts.model, transport)
        params_files = [Path(self.opts.params_file)] if self.opts.params_file is not None else []
        params_files.append(write_parameters_file(self.tmpdir / "replay_params.yaml", values,
                                                  self.opts.params_file))
        ros_args = node_ros_arguments(namespace=self.namespace, params_files=params_files,
                                      input_transport=transport, image_topic=sel.image_topic,
                                      camera_info_topic=sel.camera_info_topic)
        cmd = node_command(self.prefix) + ros_args
        env = node_environment(self.prefix)
        if self.opts.node_log is not None:
            self.log_path = Path(self.opts.node_log)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            fd, name = tempfile.mkstemp(prefix="vggt4d_replay_node_", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
            self._log_is_temp = True
        self._log_file = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        if self.prefix is None:
            logger.warning("no install space of %s found (build it with tools/setup_env.sh or colcon): starting "
                           "the node with %s -m vggt4d_ros.ros.node", PACKAGE, sys.executable)
        logger.info("starting the node: %s (replay's parameters: %s)", " ".join(cmd),
                    ", ".join(f"{k}={v}" for k, v in values.items()))
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    def start_ros(self) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.serialization import deserialize_message
        from rclpy.signals import SignalHandlerOptions
        from diagnostic_msgs.msg import DiagnosticArray

        if not os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE"):
            os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        self.context = Context()
        # explicit args: rclpy would otherwise parse replay's own command line (its -p name:=value) as ROS rules
        rclpy.init(args=["vggt4d_replay"], context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("vggt4d_replay", context=self.context,
                                      start_parameter_services=False)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._diag_class = DiagnosticArray
        self._deserialize = deserialize_message

    def open_output(self) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import get_types_from_msg

        from vggt4d_ros.bags import typestore

        self.typestore = typestore()
        text = window_msg_definition(self.prefix)
        if text is not None and WINDOW_TYPE not in self.typestore.types:
            self.typestore.register(get_types_from_msg(text, WINDOW_TYPE))
        plugin = StoragePlugin.MCAP if self.opts.storage == "mcap" else StoragePlugin.SQLITE3
        self.writer = Writer(self.opts.output, version=9, storage_plugin=plugin)
        self.writer.open()

    # ------------------------------------------------------------------ publishers and the node's readiness
    def create_publishers(self) -> None:
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        sel = self.selection
        assert sel is not None
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=PUBLISHER_DEPTH,
                         reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        self.image_pub = self.node.create_publisher(_message_class(sel.image_type), sel.image_topic, qos)
        self.info_pub = (self.node.create_publisher(_message_class(CAMERA_INFO_TYPE), sel.camera_info_topic, qos)
                         if sel.camera_info_topic else None)
        self.clock_pub = self.node.create_publisher(Clock, "/clock", qos)
        self._clock_class = Clock
        # /diagnostics is watched from the start (it is recorded too, once the node's topics are discovered)
        self._watch_diagnostics()

    def _watch_diagnostics(self) -> None:
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=RECORD_DEPTH,
                         reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        self.subscriptions[DIAGNOSTICS_TOPIC] = self.node.create_subscription(
            self._diag_class, DIAGNOSTICS_TOPIC, lambda data: self._on_message(DIAGNOSTICS_TOPIC, data), qos,
            raw=True)

    def _on_message(self, topic: str, data: bytes) -> None:
        self.last_received[topic] = time.monotonic()
        conn = self.connections.get(topic)
        if conn is not None:
            stamp = self.clock_ns or (self.selection.start_ns if self.selection else 0)
            self.writer.write(conn, stamp, data)
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

    def wait_until_active(self) -> None:
        def ready() -> bool:
            return self.diag.get("state") == "active" and self.image_pub.get_subscription_count() > 0

        if not self.spin_until(ready, self.opts.startup_timeout, "before becoming active"):
            state = self.diag.get("state", "no diagnostics yet")
            error = self.diag.get("configure_error", "")
            raise _ReplayFailed(f"the node did not become active within {self.opts.startup_timeout:g} s (state: "
                                f"{state}{'; ' + error if error else ''})" + self._log_excerpt())
        twins = [i for i in self.node.get_publishers_info_by_topic(DIAGNOSTICS_TOPIC)
                 if i.node_name == NODE_NAME and i.node_namespace == self.namespace]
        if len(twins) > 1:
            raise _ReplayFailed(f"{len(twins)} nodes named {self.private} run in ROS_DOMAIN_ID="
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

    # ------------------------------------------------------------------ recording
    def discover_outputs(self, settle_s: float = 1.0, timeout_s: float = 10.0) -> None:
        """Subscribe to every topic the node publishes (once its core topics are visible and the list stopped
        changing for ``settle_s``)."""
        core = {self.topic_mask, self.topic_window, DIAGNOSTICS_TOPIC}
        deadline = time.monotonic() + timeout_s
        last: Optional[frozenset] = None
        stable_since = time.monotonic()
        while True:
            self.check_alive("while discovering its topics")
            found = self._node_topics()
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
        self.subscribe_outputs()
        # wait until every recording subscription has matched its publisher
        self.spin_until(lambda: all(s.get_publisher_count() > 0 for s in self.subscriptions.values()), 10.0,
                        "while connecting to its outputs")

    def _node_topics(self) -> dict[str, str]:
        name_ns = (NODE_NAME, self.namespace)
        try:
            pairs = self.node.get_publisher_names_and_types_by_node(*name_ns)
        except Exception:  # noqa: BLE001 - the node may not be visible yet
            return {}
        return {topic: types[0] for topic, types in pairs if topic not in SKIPPED_OUTPUTS and types}

    def subscribe_outputs(self) -> None:
        for topic, type_name in sorted(self._node_topics().items()):
            if topic in self.connections:
                continue
            self._record_topic(topic, type_name)

    def _record_topic(self, topic: str, type_name: str) -> None:
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        if type_name not in self.typestore.types:
            logger.warning("not recording %s: type %s is unknown to the bag type store", topic, type_name)
            return
        try:
            msg_class = _message_class(type_name)
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
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=RECORD_DEPTH, reliability=reliability,
                         durability=durability)
        self.connections[topic] = self.writer.add_connection(
            topic, type_name, typestore=self.typestore,
            offered_qos_profiles=_bag_qos(reliability, durability, depth))
        self.recorded.setdefault(topic, 0)
        if topic == DIAGNOSTICS_TOPIC and topic in self.subscriptions:
            return  # already subscribed (watched since start-up); from now on it is also written
        self.subscriptions[topic] = self.node.create_subscription(
            msg_class, topic, lambda data, t=topic: self._on_message(t, data), qos, raw=True)
        logger.info("recording %s (%s, %s, %s)", topic, type_name, reliability.name.lower(),
                    durability.name.lower())

    # ------------------------------------------------------------------ publishing
    def handled_frames(self) -> int:
        """Frames the node has finished with: processed (the larger of the recorded masks and its counter),
        dropped, skipped or rejected."""
        d = self.diag
        processed = max(self.recorded.get(self.topic_mask, 0), _int(d.get("frames_processed")))
        return processed + _int(d.get("frames_dropped")) + _int(d.get("frames_skipped")) + \
            _int(d.get("frames_invalid"))

    def _room_to_publish(self) -> bool:
        """Whether one more frame may go out now (transport and, at ``--rate 0``, back-pressure)."""
        in_transit = self.offered - _int(self.diag.get("frames_in"))
        if in_transit >= max(1, min(int(self.params["input_qos_depth"]), PUBLISHER_DEPTH) - 1):
            return False
        if self.opts.rate > 0:
            return True
        budget = backpressure_budget(int(self.params["window_size"]), int(self.params["window_overlap"]),
                                     int(self.params["queue_size"]), int(self.params["keyframe_stride"]),
                                     first_window_done=self.recorded.get(self.topic_window, 0) > 0
                                     or _int(self.diag.get("windows_processed")) > 0)
        return self.offered - self.handled_frames() < budget

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
        if not sel.camera_info_topic:
            self.spin(1.0)
            return
        conns = [c for c in self.reader.connections if c.topic == sel.camera_info_topic]
        first = next((bytes(raw) for _, _, raw in self.reader.messages(connections=conns)), None)
        if first is None:
            self.spin(1.0)
            return
        deadline = time.monotonic() + timeout_s
        while _int(self.diag.get("camera_info_received")) < 1:
            self.check_alive("while connecting")
            if time.monotonic() > deadline:
                logger.warning("the node has not confirmed camera_info within %.0f s; publishing anyway", timeout_s)
                break
            self.info_pub.publish(first)
            self.spin(0.2)
        self.spin(0.2)

    def publish_bag(self) -> None:
        sel = self.selection
        assert sel is not None
        topics = {sel.image_topic} | ({sel.camera_info_topic} if sel.camera_info_topic else set())
        conns = [c for c in self.reader.connections if c.topic in topics]
        self._publish_clock(sel.start_ns)
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
            (self.image_pub if is_image else self.info_pub).publish(bytes(raw))
            if is_image:
                self.offered += 1
            self.executor.spin_once(timeout_sec=0.0)
            if time.monotonic() - last_log > 10.0:
                last_log = time.monotonic()
                logger.info("%d/%d frames published, %d processed", self.offered, sel.frames,
                            _int(self.diag.get("frames_processed")))
        logger.info("all %d frames published after %.1f s; waiting for the node to finish", self.offered,
                    self.elapsed())

    # ------------------------------------------------------------------ the end
    def node_finished(self) -> bool:
        d = self.diag
        return (_int(d.get("frames_in")) >= self.offered and "keyframes_pending" in d
                and _int(d.get("keyframes_pending")) == 0 and _int(d.get("queue_depth")) == 0
                and d.get("worker_busy", "False") != "True")

    def outputs_complete(self) -> bool:
        d = self.diag
        return (self.recorded.get(self.topic_mask, 0) >= _int(d.get("frames_processed"))
                and self.recorded.get(self.topic_window, 0) >= _int(d.get("windows_processed")))

    def wait_for_the_end(self) -> Optional[str]:
        """Wait until the node has handled every frame and its outputs are recorded; returns a problem or
        ``None``."""
        stuck_since, last_in = time.monotonic(), -1
        while not self.node_finished():
            self.check_alive("before it finished")
            frames_in = _int(self.diag.get("frames_in"))
            if frames_in != last_in:
                stuck_since, last_in = time.monotonic(), frames_in
            elif frames_in < self.offered and time.monotonic() - stuck_since > 30.0:
                raise _ReplayFailed(f"the node received only {frames_in} of {self.offered} frames")
            self.executor.spin_once(timeout_sec=0.05)
        # the counters say done: give the last outputs time to arrive
        if not self.spin_until(self.outputs_complete, 10.0, "while its last outputs arrived"):
            problem = (f"recorded {self.recorded.get(self.topic_mask, 0)} masks and "
                       f"{self.recorded.get(self.topic_window, 0)} windows but the node published "
                       f"{_int(self.diag.get('frames_processed'))} and {_int(self.diag.get('windows_processed'))}")
            return problem
        if self.topic_map in self.connections and self.topic_window in self.last_received:
            window_t = self.last_received[self.topic_window]
            period = float(self.params.get("map_publish_period", 2.0))
            if not self.spin_until(lambda: self.last_received.get(self.topic_map, -math.inf) > window_t,
                                   period + 3.0, "while waiting for the final map"):
                logger.warning("no ~/map_cloud after the last window within %.1f s", period + 3.0)
        self.spin(0.3)
        return None

    def stop_node(self) -> Optional[int]:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            for sig, wait_s in ((signal.SIGINT, 20.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                proc.send_signal(sig)
                try:
                    proc.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    logger.warning("the node did not stop after %s within %.0f s", signal.Signals(sig).name,
                                   wait_s)
        return proc.returncode

    def close(self, keep_log: bool) -> None:
        import rclpy

        if self.node is not None:
            for sub in self.subscriptions.values():
                self.node.destroy_subscription(sub)
            self.subscriptions.clear()
            self.node.destroy_node()
            self.node = None
        if self.executor is not None:
            self.executor.shutdown(timeout_sec=1.0)
        if self.context is not None:
            rclpy.try_shutdown(context=self.context)
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
        if self._log_is_temp and self.log_path is not None and not keep_log:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when replay dies, so the node never outlives it (Linux)."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


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
        _normalise_namespace(opts.namespace)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    if opts.params_file is not None and not Path(opts.params_file).is_file():
        raise CLIError(f"parameters file not found: {opts.params_file}")
    if Path(opts.output).exists():
        raise CLIError(f"output bag {opts.output} exists already; choose a new path")
    if not Path(opts.output).resolve().parent.is_dir():
        raise CLIError(f"the folder of the output bag does not exist: {Path(opts.output).resolve().parent}")

    session = _Replay(opts)
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
        except _ReplayFailed as exc:
            reason = str(exc)
        code = session.stop_node()
        if ok and code not in (0, None, -signal.SIGINT):
            ok, reason = False, f"the node exited with status {code} when stopped" + session._log_excerpt()
    except BaseException as exc:
        session.stop_node()
        session.close(keep_log=not isinstance(exc, (KeyboardInterrupt, CLIError)))
        _remove_empty_output(opts.output, session.recorded)
        raise
    summary = ReplaySummary(ok=ok, reason=reason, frames_offered=session.offered, diagnostics=dict(session.diag),
                            recorded={t: n for t, n in session.recorded.items()}, output=Path(opts.output),
                            node_log=None, elapsed_s=session.elapsed())
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
                         startup_timeout=args.startup_timeout, node_log=args.node_log, model=model)
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
