"""Parameters of the VGGT4D node: one table of specs, declaration with descriptors, and validation.

Every parameter is declared with a :class:`rcl_interfaces.msg.ParameterDescriptor` (description, allowed
choices in ``additional_constraints``, integer / floating-point ranges). Values are checked in two places:

* at declaration, rclpy enforces the type and range. A bad override (from a parameters file or ``-p``) does
  *not* abort the node's construction here: the error is recorded, the parameter falls back to its default and
  the ``configure`` transition then fails with one clear message (so a misconfigured node still answers the
  lifecycle services and says what is wrong);
* at ``configure`` (:func:`read_node_parameters`), every value and the cross-parameter rules (e.g.
  ``window_overlap < window_size``) are validated together, and all problems are reported at once.

Run-time changes (``ros2 param set``) are checked by :func:`check_parameter_update` and rejected when
invalid. Apart from ``save_directory`` (read when ``~/save_map`` is called), new values take effect at the
next ``configure``.

The table :data:`PARAMETER_SPECS` is the single source for names, defaults and documentation; the shipped
``config/vggt4d.yaml`` mirrors it (a test keeps the two in sync).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any, Sequence

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.exceptions import (
    InvalidParameterTypeException,
    InvalidParameterValueException,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

from vggt4d_ros.dynamic.pipeline import PASS2_MASKS
from vggt4d_ros.model.checkpoint import DEFAULT_WEIGHTS

__all__ = [
    "ParamSpec",
    "PARAMETER_SPECS",
    "SPEC_BY_NAME",
    "NodeParams",
    "ParameterError",
    "declare_node_parameters",
    "read_node_parameters",
    "validate_values",
    "check_parameter_update",
    "resolve_device",
    "resolve_dtype",
    "unknown_overrides",
]

# Parameters read at the moment they are used rather than at configure.
LIVE_PARAMETERS = frozenset({"save_directory"})

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_FRAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter.

    Attributes:
        name: parameter name.
        default: default value; its Python type fixes the ROS parameter type (bool, int, float, str).
        description: one-line meaning, shown by ``ros2 param describe`` and used for the config comments.
        choices: allowed string values (``None``: any string that passes ``check``).
        int_range: inclusive ``(from, to, step)`` for integers (step 0 = any integer in range).
        float_range: inclusive ``(from, to)`` for floating-point values.
        constraints: human-readable extra rule (exclusive bounds, formats), also in the descriptor.
    """

    name: str
    default: Any
    description: str
    choices: tuple[str, ...] | None = None
    int_range: tuple[int, int, int] | None = None
    float_range: tuple[float, float] | None = None
    constraints: str = ""

    @property
    def ros_type(self) -> int:
        if isinstance(self.default, bool):
            return ParameterType.PARAMETER_BOOL
        if isinstance(self.default, int):
            return ParameterType.PARAMETER_INTEGER
        if isinstance(self.default, float):
            return ParameterType.PARAMETER_DOUBLE
        return ParameterType.PARAMETER_STRING

    def descriptor(self) -> ParameterDescriptor:
        """The ROS descriptor (type, description, constraints text, ranges)."""
        constraints = []
        if self.choices is not None:
            constraints.append("one of: " + ", ".join(repr(c) for c in self.choices))
        if self.constraints:
            constraints.append(self.constraints)
        if self.name not in LIVE_PARAMETERS and self.name != "autostart":
            constraints.append("takes effect at the next configure")
        desc = ParameterDescriptor(
            name=self.name,
            type=self.ros_type,
            description=self.description,
            additional_constraints="; ".join(constraints),
            read_only=False,
        )
        if self.int_range is not None:
            lo, hi, step = self.int_range
            desc.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=step)]
        if self.float_range is not None:
            lo, hi = self.float_range
            desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
        return desc


PARAMETER_SPECS: tuple[ParamSpec, ...] = (
    # ---------------------------------------------------------------- model
    ParamSpec("weights", DEFAULT_WEIGHTS,
              "VGGT checkpoint: a Hugging Face hub id or a local file/directory (.safetensors or .pt); the default "
              "is the official VGGT4D demo's, 'facebook/VGGT-1B' is the original VGGT release.",
              constraints="non-empty"),
    ParamSpec("model_config", "vggt-1b",
              "Network configuration: a preset name (e.g. 'vggt-1b') or the path of a JSON config file.",
              constraints="non-empty"),
    ParamSpec("device", "auto",
              "Torch device: 'auto' (first CUDA device when available, else CPU), 'cpu', 'cuda' or 'cuda:N'.",
              constraints="'auto', 'cpu', 'cuda' or 'cuda:N' with N an available device index"),
    ParamSpec("dtype", "auto",
              "Inference precision: 'auto' (bfloat16 autocast on CUDA, float32 on CPU), 'float32' or 'bfloat16'.",
              choices=("auto", "float32", "bfloat16")),
    ParamSpec("preprocess_mode", "crop",
              "How frames are brought to the model size: 'crop' (width = target_size, centre-crop the height) "
              "or 'pad' (longer side = target_size, pad with white).",
              choices=("crop", "pad")),
    ParamSpec("target_size", 518,
              "Model input size in pixels (a multiple of 14; VGGT-1B was trained at 518).",
              int_range=(28, 1036, 14), constraints="multiple of 14"),
    ParamSpec("warmup", True,
              "Run one tiny forward pass at configure so the first window does not pay the start-up cost."),
    # ---------------------------------------------------------------- VGGT4D
    ParamSpec("refine", True,
              "Run VGGT4D's projection-gradient refinement of the coarse dynamic masks."),
    ParamSpec("pass2_mask", "coarse",
              "Mask hidden in the second (camera) pass: 'coarse' (the official order: pass 2 right after the coarse "
              "mask, refinement with the pass-2 cameras) or 'refined' (refine first, then hide the refined mask).",
              choices=PASS2_MASKS),
    ParamSpec("conf_threshold", 50.0,
              "Depth-confidence percentile (0-100) of each window below which static points are left out of "
              "the clouds and the map.",
              float_range=(0.0, 99.9)),
    ParamSpec("max_points_per_frame", 20000,
              "Upper bound of static points taken from one frame into the clouds (deterministic thinning).",
              int_range=(100, 1000000, 0)),
    # ---------------------------------------------------------------- windows
    ParamSpec("window_size", 16, "Keyframes per sliding window processed together by VGGT4D.",
              int_range=(2, 256, 0)),
    ParamSpec("window_overlap", 6,
              "Keyframes shared by consecutive windows (used to align each window to the map).",
              int_range=(1, 255, 0), constraints="smaller than window_size"),
    ParamSpec("keyframe_stride", 1, "Take every N-th frame as a keyframe (1 = every frame).",
              int_range=(1, 10000, 0)),
    ParamSpec("keyframe_min_period", 0.0, "Minimum time between keyframes in seconds (image stamps; 0 = off).",
              float_range=(0.0, 3600.0)),
    ParamSpec("max_gap", 1.0,
              "A stamp gap longer than this (seconds) between consecutive images starts a new segment.",
              float_range=(0.001, 86400.0)),
    ParamSpec("flush_timeout", 1.0,
              "When no image arrives for this long (seconds, wall clock) while the worker is idle, the partial "
              "window is processed and the next image starts a new segment (0 = never flush on idle).",
              float_range=(0.0, 86400.0)),
    ParamSpec("queue_size", 2, "Windows allowed to wait for the worker thread; more are dropped (and counted).",
              int_range=(1, 100, 0)),
    ParamSpec("drop_policy", "drop_oldest",
              "What a full window queue does with a new window: 'drop_oldest' queues it and drops the oldest "
              "waiting one, 'drop_newest' rejects it, 'wait' makes the input thread wait for room (images wait "
              "in the input queue; for senders with back-pressure such as vggt4d replay --rate 0).",
              choices=("drop_oldest", "drop_newest", "wait")),
    ParamSpec("diagnostics_period", 1.0,
              "Seconds between /diagnostics messages (vggt4d replay sets 0.2: its back-pressure reads them).",
              float_range=(0.05, 60.0)),
    ParamSpec("oom_retry", True,
              "Retry a window that ran out of memory once, as two overlapping halves."),
    ParamSpec("use_camera_info", True,
              "When camera_info arrives, use its intrinsics to make the windows' focal lengths consistent "
              "before stitching."),
    # ---------------------------------------------------------------- input
    ParamSpec("input_transport", "raw",
              "Subscribe to 'image' (sensor_msgs/Image, raw) or 'image/compressed' "
              "(sensor_msgs/CompressedImage, JPEG/PNG).",
              choices=("raw", "compressed")),
    ParamSpec("input_qos", "sensor_data",
              "QoS of the image subscription: 'sensor_data' (best effort) or 'reliable' (use with bag replay "
              "between processes).",
              choices=("sensor_data", "reliable")),
    ParamSpec("input_qos_depth", 20,
              "History depth of the image subscription (the DDS reader's queue in front of the input queue).",
              int_range=(1, 1000, 0)),
    ParamSpec("input_queue_size", 32,
              "Images waiting for the input thread (decode, preprocessing, windows); when full the oldest is "
              "dropped and counted as input_overflow.",
              int_range=(1, 10000, 0)),
    ParamSpec("output_qos_depth", 0,
              "History depth of the per-frame outputs (masks, overlays, odometry), published in one burst per "
              "window; 0 = auto (max(10, 2 x window_size)). Larger values also raise the other outputs' depth.",
              int_range=(0, 10000, 0)),
    ParamSpec("strict_parameters", False,
              "Fail configure when a parameter override names no parameter of the node (e.g. a misspelt "
              "-p windw_size:=8); when false such overrides are listed in one warning."),
    # ---------------------------------------------------------------- frames, map, outputs
    ParamSpec("map_frame", "map",
              "Frame of the map (REP-105): frame of odometry, path, clouds and ~/window, and the TF parent the "
              "node publishes. With odometry it coincides with odom_frame at the first processed frame; "
              "without, it is the first camera's pose turned to REP-103 body axes (x forward, y left, z up).",
              constraints="valid frame id without a leading '/'"),
    ParamSpec("odom_frame", "odom",
              "The robot's odometry frame: odom_frame -> camera_frame poses (looked up on /tf) give the metric "
              "scale and the anchoring, and map_to_odom mode publishes map_frame -> odom_frame.",
              constraints="valid frame id without a leading '/', different from map_frame"),
    ParamSpec("base_frame", "base_link",
              "The robot's body frame: ~/odometry gives its pose (child_frame_id) when TF has "
              "base_frame -> camera_frame; otherwise the camera's.",
              constraints="valid frame id without a leading '/'"),
    ParamSpec("camera_frame", "",
              "Optical camera frame (z forward, x right, y down) used for TF lookups; '' = the image's "
              "header.frame_id.",
              constraints="'' or a valid frame id without a leading '/', different from map_frame"),
    ParamSpec("tf_mode", "auto",
              "How the node joins the TF tree: 'map_to_odom' publishes map_frame -> odom_frame (REP-105); "
              "'map_to_camera' publishes map_frame -> camera frame (or map_frame -> <camera>_vggt4d when the "
              "camera frame already has a parent); 'auto' picks map_to_odom when odom_frame -> camera frame "
              "is on /tf within tf_timeout, else map_to_camera; 'none' neither listens to nor publishes TF.",
              choices=("auto", "map_to_odom", "map_to_camera", "none")),
    ParamSpec("publish_tf", True,
              "Broadcast the transform of tf_mode on /tf (false: still listen to TF for scale, anchoring and "
              "~/odometry, but publish nothing on /tf)."),
    ParamSpec("tf_publish_rate", 20.0,
              "map_to_odom: rate (Hz) at which map_frame -> odom_frame is republished, stamped "
              "now + transform_tolerance.",
              float_range=(0.1, 1000.0)),
    ParamSpec("transform_tolerance", 0.1,
              "map_to_odom: seconds the published map_frame -> odom_frame is future-dated, so consumers can "
              "always look it up.",
              float_range=(0.0, 10.0)),
    ParamSpec("tf_timeout", 2.0,
              "Seconds after the first image that tf_mode 'auto' waits for odom_frame -> camera frame before it "
              "falls back to map_to_camera; also the longest wait for one window's odometry lookups.",
              float_range=(0.0, 60.0)),
    ParamSpec("tf_cache_time", 60.0,
              "Seconds of /tf history kept (static transforms are kept forever); must cover the time a window "
              "waits in the queue and is processed, since its frames are looked up at their stamps.",
              float_range=(1.0, 3600.0)),
    ParamSpec("scale_source", "auto",
              "Metric scale of the map: 'odometry' from odom_frame -> camera frame (windows without odometry "
              "keep the previous scale), 'auto' odometry when available else the first window's scale, "
              "'none' the first window's scale (map units, not metres).",
              choices=("auto", "odometry", "none")),
    ParamSpec("min_motion", 0.1,
              "Metres the camera must move within a window (by odometry) for the window's metric scale to be "
              "fitted; below it the previous scale is kept.",
              float_range=(0.0, 100.0)),
    ParamSpec("geometry_source", "network",
              "TEST ONLY. 'network' runs VGGT4D. 'synthetic' replaces the network by the synthetic scene's true "
              "depth and cameras (vggt4d_ros.synthetic, in a random scale per window, with noise) so tests can "
              "check TF, scale, map and path against the truth; the model is then not loaded.",
              choices=("network", "synthetic")),
    ParamSpec("synthetic_scene", "",
              "TEST ONLY, with geometry_source 'synthetic': the scene as 'key=value' pairs separated by spaces, "
              "e.g. 'seed=3 frames=24' (keys: seed, frames, fps, depth_noise, pose_noise, noise_seed; the "
              "arguments of vggt4d_ros.synthetic.render_scene and the source's noise).",
              constraints="'' or space-separated key=value pairs"),
    ParamSpec("voxel_size", 0.05, "Voxel edge of the map's downsampling grid, in map units.",
              float_range=(1e-6, 100.0)),
    ParamSpec("max_map_points", 500000, "Upper bound of points kept in the map (memory stays flat).",
              int_range=(1000, 100000000, 0)),
    ParamSpec("map_publish_period", 2.0, "Seconds between ~/map_cloud publications (when the map changed).",
              float_range=(0.05, 3600.0)),
    ParamSpec("max_path_length", 10000, "Poses kept in ~/path (oldest dropped first).",
              int_range=(10, 10000000, 0)),
    ParamSpec("publish_overlay", False, "Publish ~/dynamic_overlay (input image with the mask tinted red)."),
    ParamSpec("save_directory", "",
              "Directory written by ~/save_map (map.ply + trajectory.txt); '' = $ROS_HOME/vggt4d "
              "(~/.ros/vggt4d). Read when the service is called."),
    ParamSpec("autostart", False,
              "Configure and activate the node right after start (the launch file passes true)."),
)

SPEC_BY_NAME: dict[str, ParamSpec] = {s.name: s for s in PARAMETER_SPECS}


@dataclass(frozen=True)
class NodeParams:
    """Validated parameter values (see :data:`PARAMETER_SPECS` for the meaning of each)."""

    weights: str
    model_config: str
    device: str
    dtype: str
    preprocess_mode: str
    target_size: int
    warmup: bool
    refine: bool
    pass2_mask: str
    conf_threshold: float
    max_points_per_frame: int
    window_size: int
    window_overlap: int
    keyframe_stride: int
    keyframe_min_period: float
    max_gap: float
    flush_timeout: float
    queue_size: int
    drop_policy: str
    diagnostics_period: float
    oom_retry: bool
    use_camera_info: bool
    input_transport: str
    input_qos: str
    input_qos_depth: int
    input_queue_size: int
    output_qos_depth: int
    strict_parameters: bool
    map_frame: str
    odom_frame: str
    base_frame: str
    camera_frame: str
    tf_mode: str
    publish_tf: bool
    tf_publish_rate: float
    transform_tolerance: float
    tf_timeout: float
    tf_cache_time: float
    scale_source: str
    min_motion: float
    geometry_source: str
    synthetic_scene: str
    voxel_size: float
    max_map_points: int
    map_publish_period: float
    max_path_length: int
    publish_overlay: bool
    save_directory: str
    autostart: bool


assert {f.name for f in fields(NodeParams)} == set(SPEC_BY_NAME), "NodeParams and PARAMETER_SPECS disagree"


class ParameterError(ValueError):
    """Invalid node parameters; ``problems`` lists one message per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid parameters: " + "; ".join(self.problems))


def _check_one(spec: ParamSpec, value: Any) -> str | None:
    """Return a problem message for one value, or ``None`` when it is fine."""
    name = spec.name
    expected = type(spec.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not expected:
        return (f"{name} must be of type {expected.__name__}, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number, got {value!r}"
    if spec.choices is not None and value not in spec.choices:
        return f"{name} must be one of {', '.join(repr(c) for c in spec.choices)}; got {value!r}"
    if spec.int_range is not None:
        lo, hi, step = spec.int_range
        if not lo <= value <= hi:
            return f"{name} must be in [{lo}, {hi}], got {value}"
        if step and (value - lo) % step:
            return f"{name} must be {lo} plus a multiple of {step}, got {value}"
    if spec.float_range is not None:
        lo, hi = spec.float_range
        if not lo <= value <= hi:
            return f"{name} must be in [{lo:g}, {hi:g}], got {value:g}"
    return None


def validate_values(values: dict[str, Any]) -> list[str]:
    """Check a complete set of parameter values; return the problems (empty when valid).

    Checks types, choices and ranges of every parameter plus the rules that span parameters or formats:
    device syntax, frame-id syntax, non-empty model paths, ``window_overlap < window_size``.
    """
    problems: list[str] = []
    for spec in PARAMETER_SPECS:
        if spec.name not in values:
            problems.append(f"{spec.name} is missing")
            continue
        msg = _check_one(spec, values[spec.name])
        if msg is not None:
            problems.append(msg)
    bad = {p.split(" ", 1)[0] for p in problems}

    def ok(name: str) -> bool:
        return name in values and name not in bad

    for name in ("weights", "model_config"):
        if ok(name) and not values[name].strip():
            problems.append(f"{name} must not be empty")
    if ok("device") and not _DEVICE_RE.match(values["device"]):
        problems.append(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {values['device']!r}")
    frames = ("map_frame", "odom_frame", "base_frame")
    for name in frames:
        if ok(name) and not _FRAME_RE.match(values[name]):
            problems.append(f"{name} must be a frame id like 'map' (no leading '/', no spaces), "
                            f"got {values[name]!r}")
    if ok("camera_frame") and values["camera_frame"]:
        if not _FRAME_RE.match(values["camera_frame"]):
            problems.append(f"camera_frame must be '' or a frame id like 'camera_optical_vggt' (no leading '/', "
                            f"no spaces), got {values['camera_frame']!r}")
    named = [n for n in frames + ("camera_frame",) if ok(n) and values[n]]
    for i, a in enumerate(named):
        for b in named[i + 1:]:
            if values[a] == values[b]:
                problems.append(f"{b} must differ from {a} (both {values[a]!r})")
    if ok("tf_mode") and ok("scale_source") and values["tf_mode"] == "none" and values["scale_source"] == "odometry":
        problems.append("scale_source 'odometry' needs the odometry on TF: tf_mode must not be 'none'")
    if ok("geometry_source") and ok("synthetic_scene") and values["geometry_source"] == "synthetic":
        from .synthetic_source import parse_scene

        try:
            parse_scene(values["synthetic_scene"])
        except ValueError as exc:
            problems.append(f"synthetic_scene: {exc}")
    if ok("window_size") and ok("window_overlap") and values["window_overlap"] >= values["window_size"]:
        problems.append(f"window_overlap ({values['window_overlap']}) must be smaller than window_size "
                        f"({values['window_size']})")
    return problems


def declare_node_parameters(node: Node) -> list[str]:
    """Declare every parameter of :data:`PARAMETER_SPECS` on ``node``.

    An override that rclpy rejects (wrong type, out of range) is recorded and the parameter is declared with
    its default instead, so the node is still created; the returned problems make ``configure`` fail.
    """
    problems: list[str] = []
    overrides = getattr(node, "_parameter_overrides", {})
    for spec in PARAMETER_SPECS:
        try:
            node.declare_parameter(spec.name, spec.default, spec.descriptor())
            continue
        except (InvalidParameterTypeException, InvalidParameterValueException, TypeError, ValueError) as exc:
            error = exc
        given = overrides.get(spec.name)
        shown = given.value if isinstance(given, Parameter) else given
        node.declare_parameter(spec.name, spec.default, spec.descriptor(), ignore_override=True)
        if isinstance(spec.default, float) and isinstance(shown, int) and not isinstance(shown, bool):
            # "-p voxel_size:=1" arrives as an integer: accept it as the double it means.
            result = node.set_parameters([Parameter(spec.name, Parameter.Type.DOUBLE, float(shown))])[0]
            if result.successful:
                continue
            problems.append(f"{spec.name}: rejected value {shown!r} ({result.reason})")
            continue
        msg = _check_one(spec, shown) if given is not None else None
        problems.append(msg or f"{spec.name}: rejected value {shown!r} ({error})")
    return problems


def unknown_overrides(node: Node) -> list[str]:
    """Parameter overrides (``-p``, parameters files) that name no declared parameter of ``node``, each with a
    close match when there is one (``"windw_size (did you mean window_size?)"``). QoS overrides
    (``qos_overrides.*``) are not reported."""
    import difflib

    declared = set(node._parameters)  # noqa: SLF001 - rclpy has no public list of declared names
    out = []
    for name in sorted(getattr(node, "_parameter_overrides", {})):
        if name in declared or name.startswith("qos_overrides."):
            continue
        close = difflib.get_close_matches(name, sorted(declared), n=1)
        out.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return out


def _current_values(node: Node) -> dict[str, Any]:
    return {spec.name: node.get_parameter(spec.name).value for spec in PARAMETER_SPECS}


def read_node_parameters(node: Node, declaration_problems: Sequence[str] = ()) -> NodeParams:
    """Read and validate all parameters of ``node``.

    Raises:
        ParameterError: listing ``declaration_problems`` and every problem found now.
    """
    values = _current_values(node)
    problems = list(declaration_problems) + validate_values(values)
    if problems:
        raise ParameterError(problems)
    for spec in PARAMETER_SPECS:
        if isinstance(spec.default, float):
            values[spec.name] = float(values[spec.name])
    return NodeParams(**values)


def check_parameter_update(node: Node, params: Sequence[Parameter]) -> SetParametersResult:
    """``add_on_set_parameters_callback`` handler: accept a change only when the result stays valid."""
    values = _current_values(node)
    for p in params:
        if p.name in SPEC_BY_NAME:
            values[p.name] = p.value
    problems = validate_values(values)
    if problems:
        return SetParametersResult(successful=False, reason="; ".join(problems))
    return SetParametersResult(successful=True)


def resolve_device(device: str) -> str:
    """The ``device`` parameter as a concrete torch device string (see
    :func:`vggt4d_ros.model.resolve_device`).

    Raises:
        ValueError: CUDA requested but not available, or an out-of-range CUDA index.
    """
    from vggt4d_ros.model.checkpoint import resolve_device as _resolve

    return str(_resolve(device))


def resolve_dtype(dtype: str, device: str) -> str:
    """Concrete precision for ``dtype`` on ``device``: 'float32' or 'bfloat16' (bf16 only on CUDA that
    supports it).

    Raises:
        ValueError: 'bfloat16' requested on a device without bfloat16 support.
    """
    import torch

    if dtype == "float32":
        return "float32"
    on_cuda = device.startswith("cuda")
    bf16_ok = on_cuda and torch.cuda.is_bf16_supported()
    if dtype == "bfloat16":
        if not bf16_ok:
            raise ValueError(f"dtype 'bfloat16' needs a CUDA device with bfloat16 support, got device {device!r}; "
                             f"use dtype 'float32' or 'auto'")
        return "bfloat16"
    return "bfloat16" if bf16_ok else "float32"
