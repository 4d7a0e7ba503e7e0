"""Node parameters: declarations, validation at configure, run-time checks, and config/vggt4d.yaml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from rcl_interfaces.msg import ParameterType
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter

from ros_helpers import ros_context, use_install_space_in_process
from vggt4d_ros.ros.params import (
    PARAMETER_SPECS,
    SPEC_BY_NAME,
    resolve_device,
    resolve_dtype,
    validate_values,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "vggt4d.yaml"
DEFAULTS = {s.name: s.default for s in PARAMETER_SPECS}


def _problems(**changes):
    values = dict(DEFAULTS)
    values.update(changes)
    return validate_values(values)


def test_defaults_are_valid_and_names_cover_the_issue():
    assert validate_values(DEFAULTS) == []
    for name in ("weights", "model_config", "device", "dtype", "window_size", "window_overlap", "keyframe_stride",
                 "map_frame", "odom_frame", "base_frame", "camera_frame", "tf_mode", "tf_publish_rate",
                 "transform_tolerance", "tf_timeout", "scale_source", "min_motion", "voxel_size", "max_map_points", "max_gap", "queue_size",
                 "drop_policy", "input_transport", "input_qos", "refine", "conf_threshold", "map_publish_period",
                 "publish_overlay", "publish_tf", "preprocess_mode", "target_size", "keyframe_min_period",
                 "autostart"):
        assert name in SPEC_BY_NAME, name
    assert DEFAULTS["weights"] == "facebook/VGGT_tracker_fixed" and DEFAULTS["pass2_mask"] == "coarse" and DEFAULTS["window_size"] == 16
    assert DEFAULTS["window_overlap"] == 6 and DEFAULTS["map_frame"] == "map" and DEFAULTS["odom_frame"] == "odom"
    assert DEFAULTS["base_frame"] == "base_link" and DEFAULTS["tf_mode"] == "auto"
    assert DEFAULTS["tf_publish_rate"] == 20.0 and DEFAULTS["transform_tolerance"] == 0.1
    assert DEFAULTS["geometry_source"] == "network"  # the synthetic source is for tests only


@pytest.mark.parametrize("changes, fragment", [
    ({"window_overlap": 16}, "window_overlap (16) must be smaller than window_size (16)"),
    ({"window_size": 1}, "window_size must be in [2, 256]"),
    ({"target_size": 100}, "target_size must be 28 plus a multiple of 14"),
    ({"device": "gpu"}, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ({"dtype": "float16"}, "dtype must be one of"),
    ({"input_transport": "theora"}, "input_transport must be one of"),
    ({"drop_policy": "random"}, "drop_policy must be one of"),
    ({"camera_frame": "map"}, "camera_frame must differ from map_frame"),
    ({"odom_frame": "map"}, "odom_frame must differ from map_frame"),
    ({"map_frame": "/map"}, "map_frame must be a frame id"),
    ({"base_frame": "base link"}, "base_frame must be a frame id"),
    ({"tf_mode": "map_to_base"}, "tf_mode must be one of"),
    ({"scale_source": "imu"}, "scale_source must be one of"),
    ({"scale_source": "odometry", "tf_mode": "none"}, "tf_mode must not be 'none'"),
    ({"tf_publish_rate": 0.0}, "tf_publish_rate must be in"),
    ({"geometry_source": "synthetic", "synthetic_scene": "seed=1"}, "synthetic_scene: the scene needs frames=N"),
    ({"geometry_source": "synthetic", "synthetic_scene": "seed=x frames=3"}, "seed must be of type int"),
    ({"geometry_source": "synthetic", "synthetic_scene": "colour=red frames=3"}, "unknown key 'colour'"),
    ({"camera_frame": "my camera"}, "camera_frame must be '' or a frame id"),
    ({"weights": "  "}, "weights must not be empty"),
    ({"voxel_size": 0.0}, "voxel_size must be in"),
    ({"voxel_size": float("nan")}, "voxel_size must be a finite number"),
    ({"window_size": 4.0}, "window_size must be of type int"),
    ({"publish_tf": "yes"}, "publish_tf must be of type bool"),
])
def test_validation_names_the_problem(changes, fragment):
    problems = _problems(**changes)
    assert any(fragment in p for p in problems), problems


def test_validation_reports_every_problem_at_once():
    problems = _problems(window_size=1, device="tpu", input_qos="lossy")
    assert len(problems) == 3


def test_descriptors_carry_ranges_and_descriptions():
    for spec in PARAMETER_SPECS:
        d = spec.descriptor()
        assert d.description, spec.name
        assert d.name == spec.name
    ws = SPEC_BY_NAME["window_size"].descriptor()
    assert ws.type == ParameterType.PARAMETER_INTEGER
    assert (ws.integer_range[0].from_value, ws.integer_range[0].to_value) == (2, 256)
    vs = SPEC_BY_NAME["voxel_size"].descriptor()
    assert vs.type == ParameterType.PARAMETER_DOUBLE and vs.floating_point_range[0].to_value == 100.0
    assert "one of: 'raw', 'compressed'" in SPEC_BY_NAME["input_transport"].descriptor().additional_constraints


def test_config_yaml_documents_every_parameter_with_its_default():
    text = CONFIG.read_text()
    data = yaml.safe_load(text)
    assert list(data) == ["/**/vggt4d"]
    params = data["/**/vggt4d"]["ros__parameters"]
    assert set(params) == set(DEFAULTS)
    for name, default in DEFAULTS.items():
        assert params[name] == default and type(params[name]) is type(default), name
    lines = text.splitlines()
    for name in DEFAULTS:
        idx = next(i for i, line in enumerate(lines) if re.match(rf"^\s+{name}:", line))
        assert lines[idx - 1].strip().startswith("#"), f"{name} has no comment above it"
    assert "optical" in text.lower() and "map_to_odom" in text and "_vggt4d" in text


def test_resolve_device_and_dtype():
    assert resolve_device("cpu") == "cpu"
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("float32", "cpu") == "float32"
    if torch.cuda.is_available():
        assert resolve_device("cuda") == "cuda:0"
        assert resolve_device("auto") == "cuda:0"
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        assert resolve_device("auto") == "cpu"
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
        with pytest.raises(ValueError, match="bfloat16"):
            resolve_dtype("bfloat16", "cpu")


# ------------------------------------------------------------------------------------------------
# In a node
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def ros():
    use_install_space_in_process()  # the generated vggt4d_ros.msg (configure imports it)
    with ros_context() as ctx:
        yield ctx


def _node(ros, overrides):
    from vggt4d_ros.ros.node import VGGT4DNode

    node = VGGT4DNode(parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    ros.nodes.append(node)
    return node


def test_bad_overrides_do_not_crash_the_node_but_fail_configure(ros, fixtures_dir):
    node = _node(ros, {"window_size": 1, "dtype": "fp16", "input_qos_depth": 2.5,
                       "weights": str(fixtures_dir / "tiny_dino_weights.safetensors")})
    # the node exists (with defaults in place of the rejected values) and answers, but cannot configure
    assert node.get_parameter("window_size").value == 16
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    err = node.configure_error
    assert err.startswith("invalid parameters:")
    assert "window_size must be in [2, 256], got 1" in err
    assert "dtype must be one of 'auto', 'float32', 'bfloat16'; got 'fp16'" in err
    assert "input_qos_depth must be of type int, got float 2.5" in err
    assert node.model is None and node.state_label == "unconfigured"
    values = node.diagnostics_values()
    assert values["state"] == "unconfigured" and "window_size" in values["configure_error"]


def test_integer_for_double_is_accepted_and_runtime_changes_are_checked(ros):
    node = _node(ros, {"voxel_size": 1, "max_gap": 3})
    assert node.get_parameter("voxel_size").value == 1.0
    assert node.get_parameter("max_gap").value == 3.0
    assert node._declaration_problems == []
    bad = node.set_parameters([Parameter("window_overlap", value=20)])[0]
    assert not bad.successful and "window_overlap (20) must be smaller than window_size (16)" in bad.reason
    out_of_range = node.set_parameters([Parameter("queue_size", value=0)])[0]
    assert not out_of_range.successful
    ok = node.set_parameters([Parameter("camera_frame", value="camera_optical_vggt")])[0]
    assert ok.successful and node.get_parameter("camera_frame").value == "camera_optical_vggt"


def test_missing_weights_fail_configure_with_one_clear_message(ros, tmp_path):
    missing = tmp_path / "nope.safetensors"
    node = _node(ros, {"weights": str(missing), "device": "cpu"})
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert str(missing) in node.configure_error
    assert node.configure_error.startswith("cannot load weights")


def test_weights_that_do_not_fit_the_config_fail_configure(ros, fixtures_dir):
    node = _node(ros, {"weights": str(fixtures_dir / "tiny_dino_weights.safetensors"), "model_config": "vggt-1b",
                       "device": "cpu"})
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "CheckpointMismatchError" in node.configure_error
    assert "does not fit the model" in node.configure_error


def test_unknown_overrides_are_reported_at_configure(ros, fixtures_dir):
    model = {"weights": str(fixtures_dir / "tiny_dino_weights.safetensors"),
             "model_config": str(fixtures_dir / "tiny_dino_config.json"), "device": "cpu", "warmup": False}
    node = _node(ros, {**model, "windw_size": 8, "qos_overrides./tf.publisher.depth": 5})
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.configure_error
    # one warning listing them (also on /diagnostics); QoS overrides are not parameters of the node's own
    assert node.diagnostics_values()["unknown_parameters"] == "windw_size (did you mean window_size?)"
    assert node.get_parameter("window_size").value == 16

    strict = _node(ros, {**model, "windw_size": 8, "strict_parameters": True})
    assert strict.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "windw_size (did you mean window_size?)" in strict.configure_error
    assert "strict_parameters" in strict.configure_error
