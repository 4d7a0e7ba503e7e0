"""launch/vggt4d.launch.py against the install space, and the node started exactly as that file starts it.

These tests need no `launch`/`launch_ros` (not on PyPI; test_ros2_launch.py runs the real `ros2 launch` where
they are importable). They check the package, executable and parameter file the launch file names exist in the install space, the
node started with the launch file's arguments (node name, namespace, parameter file, overrides, remappings)
reaches `active`, subscribes to the remapped topic, exits 0 on SIGINT, and exits 1 with one clear error when
configuration fails.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from ros_helpers import install_env, require_install_space, ros_context, stop_process

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prefix() -> Path:
    return require_install_space()


@pytest.fixture(scope="module")
def launch_module(prefix: Path):
    path = prefix / "share" / "vggt4d_ros" / "launch" / "vggt4d.launch.py"
    assert path.is_file(), f"{path} is not installed"
    assert path.read_text() == (REPO / "launch" / "vggt4d.launch.py").read_text(), "install space is stale"
    spec = importlib.util.spec_from_file_location("vggt4d_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(prefix: Path) -> dict[str, str]:
    env = install_env()
    assert env["AMENT_PREFIX_PATH"].split(os.pathsep)[0] == str(prefix)
    return env


@pytest.fixture(autouse=True)
def _ament_index(prefix: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launch file finds its default parameter file through the ament index, as under `ros2 launch`."""
    monkeypatch.setenv("AMENT_PREFIX_PATH", _env(prefix)["AMENT_PREFIX_PATH"])


def test_launch_file_references_exist_in_the_install_space(launch_module, prefix: Path):
    kwargs = launch_module.node_arguments()
    assert kwargs["package"] == "vggt4d_ros" and kwargs["name"] == "vggt4d"
    package_xml = (prefix / "share" / kwargs["package"] / "package.xml").read_text()
    assert f"<name>{kwargs['package']}</name>" in package_xml
    exe = prefix / "lib" / kwargs["package"] / kwargs["executable"]
    assert exe.is_file() and os.access(exe, os.X_OK)
    params_file = Path(kwargs["parameters"][0])
    assert params_file == prefix / "share" / "vggt4d_ros" / "config" / "vggt4d.yaml"
    assert params_file.read_text() == (REPO / "config" / "vggt4d.yaml").read_text()
    assert "vggt4d" in yaml.safe_load(params_file.read_text())["/**/vggt4d"]["ros__parameters"]["world_frame"]
    # empty weights/device keep the file's values
    assert kwargs["parameters"][1] == {"autostart": True, "use_sim_time": False}
    assert ("image", "image") in kwargs["remappings"] and ("camera_info", "camera_info") in kwargs["remappings"]
    assert kwargs["ros_arguments"] == ["--log-level", "info"]
    assert (prefix / "share" / "vggt4d_ros" / "config" / "vggt4d.rviz").is_file()
    # every launch argument is passed through
    full = launch_module.node_arguments(image_topic="/cam/image", params_file="/p.yaml", weights="w.pt",
                                        model_config="cfg.json", device="cuda:1", namespace="robot",
                                        autostart="false", camera_info_topic="/cam/info", use_sim_time="true",
                                        log_level="warn")
    assert full["parameters"] == ["/p.yaml", {"autostart": False, "use_sim_time": True, "weights": "w.pt",
                                              "model_config": "cfg.json", "device": "cuda:1"}]
    assert full["ros_arguments"] == ["--log-level", "warn"]
    assert full["namespace"] == "robot"
    assert full["remappings"] == [("image", "/cam/image"), ("image/compressed", "/cam/image/compressed"),
                                  ("camera_info", "/cam/info")]
    assert set(launch_module.LAUNCH_ARGUMENTS) == {"image_topic", "camera_info_topic", "params_file", "weights",
                                                   "model_config", "device", "namespace", "autostart",
                                                   "use_sim_time", "log_level"}
    # the README documents every launch argument
    readme = (REPO / "README.md").read_text()
    for name in launch_module.LAUNCH_ARGUMENTS:
        assert f"`{name}`" in readme, f"launch argument {name} is not in README.md"


@pytest.mark.parametrize("image_topic,expected", [
    ("image", "camera_info"), ("/camera/color/image_raw", "/camera/color/camera_info"),
    ("/cam/image/", "/cam/camera_info"), ("/image", "/camera_info"), ("ns/img", "ns/camera_info")])
def test_camera_info_defaults_to_the_image_topics_sibling(launch_module, image_topic: str, expected: str):
    assert launch_module.camera_info_sibling(image_topic) == expected
    kwargs = launch_module.node_arguments(image_topic=image_topic, params_file="/p.yaml")
    assert ("camera_info", expected) in kwargs["remappings"]
    # an explicit camera_info_topic wins
    kwargs = launch_module.node_arguments(image_topic=image_topic, params_file="/p.yaml", camera_info_topic="/ci")
    assert ("camera_info", "/ci") in kwargs["remappings"]


@pytest.mark.parametrize("kwargs,message", [
    ({"log_level": "loud"}, "log_level:='loud' is not one of"), ({"autostart": "maybe"}, "autostart:='maybe'"),
    ({"use_sim_time": "2"}, "use_sim_time:='2' is not a boolean")])
def test_bad_launch_arguments_are_refused_with_a_reason(launch_module, kwargs: dict, message: str):
    with pytest.raises(ValueError, match=re.escape(message)):
        launch_module.node_arguments(params_file="/p.yaml", **kwargs)


def _start(prefix: Path, launch_module, env: dict[str, str], **kwargs) -> tuple[subprocess.Popen, list[str]]:
    args = launch_module.node_arguments(**kwargs)
    exe = prefix / "lib" / args["package"] / args["executable"]
    cmd = [str(exe)] + launch_module.ros_arguments(args)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, cmd


def test_node_starts_with_the_launch_arguments(launch_module, prefix: Path, fixtures_dir: Path):
    from lifecycle_msgs.srv import GetState

    with ros_context() as ros:
        env = _env(prefix)
        env["ROS_DOMAIN_ID"] = str(ros.domain_id)
        proc, cmd = _start(
            prefix, launch_module, env, image_topic="/cam/image", namespace="launch_test",
            weights=str(fixtures_dir / "tiny_dino_weights.safetensors"),
            model_config=str(fixtures_dir / "tiny_dino_config.json"), device="cpu", autostart="true")
        try:
            assert "--params-file" in cmd and str(prefix / "share" / "vggt4d_ros" / "config" / "vggt4d.yaml") in cmd
            client = ros.node("launch_test_client")
            cli = client.create_client(GetState, "/launch_test/vggt4d/get_state")
            executor = ros.executor()
            executor.add_node(client)
            state = ""
            deadline = time.monotonic() + 120.0
            while time.monotonic() < deadline and proc.poll() is None and state != "active":
                if cli.wait_for_service(timeout_sec=0.5):
                    future = cli.call_async(GetState.Request())
                    executor.spin_until_future_complete(future, timeout_sec=5.0)
                    if future.done():
                        state = future.result().current_state.label
                time.sleep(0.2)
            assert state == "active", f"node did not become active (exit {proc.poll()})"

            def subscribed() -> bool:
                infos = client.get_subscriptions_info_by_topic("/cam/image")
                return any(i.node_name == "vggt4d" and i.node_namespace == "/launch_test" for i in infos)

            deadline = time.monotonic() + 20.0
            while not subscribed() and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.1)
            assert subscribed(), "the image remapping did not reach the node"
        finally:
            code = stop_process(proc, timeout_s=30.0)
            output = proc.stdout.read()
        assert code == 0, output
        assert "active: listening on /cam/image" in output


def test_configure_failure_exits_with_status_1_and_one_clear_message(launch_module, prefix: Path, tmp_path: Path):
    missing = tmp_path / "missing_weights.safetensors"
    proc, _ = _start(prefix, launch_module, _env(prefix), weights=str(missing), device="cpu", autostart="true")
    try:
        code = proc.wait(timeout=120.0)
    finally:
        stop_process(proc)
    output = proc.stdout.read()
    assert code == 1, output
    errors = [line for line in output.splitlines() if "configure failed" in line]
    assert errors and str(missing) in errors[0], output


def test_rviz_config_shows_the_node_outputs():
    config = yaml.safe_load((REPO / "config" / "vggt4d.rviz").read_text())
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "vggt4d_map"  # the default world_frame
    displays = {d["Class"]: d for d in manager["Displays"]}
    for cls in ("rviz_default_plugins/Image", "rviz_default_plugins/PointCloud2", "rviz_default_plugins/TF",
                "rviz_default_plugins/Path"):
        assert cls in displays, cls
    topics = {d["Topic"]["Value"]: d["Topic"] for d in manager["Displays"] if "Topic" in d}
    assert set(topics) == {"/vggt4d/map_cloud", "/vggt4d/dynamic_cloud", "/vggt4d/path", "/vggt4d/dynamic_mask"}
    # the map is latched (transient local): rviz must ask for the same durability to receive it
    assert topics["/vggt4d/map_cloud"]["Durability Policy"] == "Transient Local"
    assert all(t["Reliability Policy"] == "Reliable" for t in topics.values())
