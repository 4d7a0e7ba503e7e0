"""The node parameters and ROS arguments ``vggt4d replay`` passes to the node it starts.

Replay's own settings (:data:`FORCED_PARAMETERS`) win over the user's ``--params-file`` and ``-p`` overrides:
``autostart``, reliable input with a deep history, ``use_sim_time``, the input transport of the bag, a short
``diagnostics_period`` (replay's back-pressure and end detection read the node's counters there) and, at
``--rate 0``, ``drop_policy: wait`` (the node's input thread waits for room in its window queue instead of
dropping a window, so nothing is dropped while replay keeps at most ``input_queue_size`` images in flight).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from vggt4d_ros.cli import CLIError

from .install_space import NODE_NAME

__all__ = [
    "FORCED_PARAMETERS",
    "INPUT_DEPTH",
    "INPUT_QUEUE",
    "DIAGNOSTICS_PERIOD",
    "parse_parameter_override",
    "normalise_namespace",
    "parameter_value",
    "replay_parameters",
    "write_parameters_file",
    "node_ros_arguments",
]

#: Parameters replay sets last (they override the parameters file and ``-p``); ``drop_policy`` only at
#: ``--rate 0``.
FORCED_PARAMETERS = ("autostart", "input_qos", "input_qos_depth", "input_queue_size", "use_sim_time",
                     "input_transport", "diagnostics_period", "drop_policy")
#: Input history depth replay gives the node (DDS reader queue) and the node's input queue.
INPUT_DEPTH = 100
INPUT_QUEUE = 64
#: Seconds between the node's /diagnostics while replayed (back-pressure and end detection read them).
DIAGNOSTICS_PERIOD = 0.2

_PARAM_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*):=(.*)$", re.DOTALL)
_NAMESPACE_RE = re.compile(r"^/?([A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*)?/?$")


def parse_parameter_override(text: str) -> tuple[str, str]:
    """Split ``name:=value`` (the ``-p`` syntax of ``ros2 run``).

    Raises:
        ValueError: when ``text`` is not ``name:=value`` with a valid parameter name.
    """
    match = _PARAM_RE.match(text)
    if match is None:
        raise ValueError(f"parameter override must look like name:=value (e.g. window_size:=8), got {text!r}")
    return match.group(1), match.group(2)


def normalise_namespace(ns: str) -> str:
    if not _NAMESPACE_RE.match(ns or ""):
        raise ValueError(f"node namespace must look like /robot1 or robot1/camera, got {ns!r}")
    ns = "/" + ns.strip("/")
    return ns


def parameter_value(text: str) -> Any:
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
                      input_transport: str, backpressure: bool = False) -> dict[str, Any]:
    """The node parameters replay passes: the model options (``--weights`` ... as strings), the user's ``-p``
    overrides in order, then :data:`FORCED_PARAMETERS` (``drop_policy: wait`` only with ``backpressure``,
    i.e. ``--rate 0``)."""
    values: dict[str, Any] = {}
    for name in ("weights", "model_config", "device", "dtype"):
        value = model.get(name)
        if value:
            values[name] = str(value)
    for text in overrides:
        name, raw = parse_parameter_override(text)
        values[name] = parameter_value(raw)
    values.update(autostart=True, input_qos="reliable", input_qos_depth=INPUT_DEPTH, input_queue_size=INPUT_QUEUE,
                  use_sim_time=True, input_transport=input_transport, diagnostics_period=DIAGNOSTICS_PERIOD)
    if backpressure:
        values["drop_policy"] = "wait"
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
