"""The real `ros2 launch vggt4d_ros vggt4d.launch.py` and the real `ros2` command line against the install space.

Every command runs as its own process group (`start_new_session`), with localhost-only DDS on a random domain
(test/ros_helpers.py), `--no-daemon` for the ros2 CLI, and is stopped (SIGINT to the group, then SIGKILL) when the
test ends. The node uses the tiny random-weight model of test/fixtures.

`launch`, `launch_ros`, `ros2launch` and `ros2cli` are not on PyPI; `tools/setup_env.sh` installs them from
`../shared/ros-wheels` when that folder exists (an apt ROS 2 has them). Where they cannot be imported these tests
skip, with one line saying why.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ros_helpers import install_env, require_install_space, ros_context, spin_until

#: Top-level modules the real commands need (module -> what provides it).
TOOL_MODULES = {
    "launch": "launch", "launch_ros": "launch_ros", "ros2launch": "ros2launch", "ros2cli": "ros2cli",
    "ros2param": "ros2param", "ros2topic": "ros2topic", "ros2lifecycle": "ros2lifecycle", "ros2node": "ros2node",
    "rosidl_runtime_py": "rosidl_runtime_py", "composition_interfaces": "composition_interfaces (interfaces)",
}


def missing_ros2_tools() -> str | None:
    """Why the real `ros2 launch` / `ros2` commands cannot run here, or None when they can."""
    missing = [what for mod, what in TOOL_MODULES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        return (f"ros2 launch / ros2 CLI not importable ({', '.join(missing)} missing): run tools/setup_env.sh "
                f"with ../shared/ros-wheels present, or use an apt ROS 2")
    if ros2_executable() is None:
        return "no `ros2` executable next to this Python or on PATH"
    return None


def ros2_executable() -> str | None:
    local = Path(sys.executable).parent / "ros2"
    return str(local) if local.is_file() else shutil.which("ros2")


_REASON = missing_ros2_tools()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

WINDOW, OVERLAP, FRAMES = 4, 1, 10


class Launched:
    """A command started in its own process group, its output in a file (no pipe to fill up)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.cmd, self.log = cmd, log
        self._fh = open(log, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._fh, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=str(log.parent))

    def output(self) -> str:
        if not self._fh.closed:
            self._fh.flush()
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 30.0) -> int:
        """Signal the whole group (as Ctrl-C in a terminal does), then SIGKILL it after ``timeout_s``."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10.0)
        try:  # children left behind by a failed shutdown
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._fh.close()
        return self.proc.returncode


#: Discovery time each `ros2 --no-daemon` command allows itself (ros2cli's default of 0.5 s misses nodes on a
#: loaded machine).
SPIN_TIME_S = 2.0
#: What `ros2` prints when discovery has not yet seen the node (a late discovery: tried again).
_NOT_DISCOVERED = ("Node not found", "Unable to find node", "Waiting for service", "Unknown topic")


def ros2(env: dict[str, str], *args: str, timeout: float = 60.0, attempts: int = 3) -> subprocess.CompletedProcess:
    """One `ros2` CLI command (its own process group, killed on timeout). Without the daemon each command
    discovers the graph afresh (0.1-0.5 s, outliers of seconds): a "Node not found" answer is tried again."""
    for _ in range(attempts - 1):
        result = _ros2_once(env, args, timeout)
        if not any(text in result.stdout for text in _NOT_DISCOVERED):
            return result
        time.sleep(1.0)
    return _ros2_once(env, args, timeout)


def _ros2_once(env: dict[str, str], args: tuple[str, ...], timeout: float) -> subprocess.CompletedProcess:
    verb = list(args[:2])
    cmd = ([ros2_executable(), *verb, "--no-daemon", "--spin-time", str(SPIN_TIME_S), *args[2:]]
           if args[0] != "launch" else [ros2_executable(), *args])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{' '.join(cmd)} timed out after {timeout} s:\n{out}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def wait_for(predicate, timeout_s: float, what: str, launched: Launched | None = None, period: float = 0.5):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        if launched is not None and launched.proc.poll() is not None:
            raise AssertionError(f"launch exited ({launched.proc.returncode}) while waiting for {what}:\n"
                                 f"{launched.output()[-4000:]}")
        time.sleep(period)
    tail = launched.output()[-4000:] if launched is not None else ""
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{tail}")


def lifecycle_state(env: dict[str, str], node: str) -> str:
    result = ros2(env, "lifecycle", "get", node)
    return result.stdout.strip().split(" ")[0] if result.returncode == 0 else ""


@pytest.fixture(scope="module")
def prefix() -> Path:
    return require_install_space()


@pytest.fixture
def tiny(fixtures_dir: Path) -> list[str]:
    return [f"weights:={fixtures_dir / 'tiny_dino_weights.safetensors'}",
            f"model_config:={fixtures_dir / 'tiny_dino_config.json'}", "device:=cpu"]


def _params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"/**/vggt4d": {"ros__parameters": {
        "target_size": 140, "window_size": WINDOW, "window_overlap": OVERLAP, "warmup": False,
        "input_qos": "reliable", "input_qos_depth": 50, "queue_size": 10, "flush_timeout": 1.0,
        "map_publish_period": 0.5,
        "weights": "facebook/VGGT-1B", "model_config": "vggt-1b"}}}))
    return path


def _write_bag(path: Path) -> Path:
    from vggt4d_ros.bags import write_camera_bag
    from vggt4d_ros.synthetic import render_scene

    seq = render_scene(num_frames=FRAMES, width=160, height=120, seed=1)
    return write_camera_bag(path, seq.images, seq.stamps_ns, intrinsics=seq.intrinsics, frame_id="cam_optical",
                            image_topic="/cam/color/image_raw", info_topic="/cam/color/camera_info")


def _play_bag(ros, bag: Path, topic_prefix: str = "") -> int:
    """Publish the bag's image and camera_info messages (raw CDR, RELIABLE) in bag order, about 10 Hz, once the
    node's subscriptions have matched. Returns the number of images sent."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosbags.rosbag2 import Reader
    from sensor_msgs.msg import CameraInfo, Image

    node = ros.node("bag_player")
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    types = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CameraInfo": CameraInfo}
    sent = 0
    with Reader(bag) as reader:
        pubs = {c.topic: node.create_publisher(types[c.msgtype], topic_prefix + c.topic, qos)
                for c in reader.connections}
        executor = ros.executor()
        executor.add_node(node)
        assert spin_until(executor, lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), 30.0), \
            "the launched node did not subscribe to the remapped image and camera_info topics"
        time.sleep(1.0)  # late-joiner repair: let the reliable readers settle before the first sample
        for conn, _, raw in reader.messages():
            pubs[conn.topic].publish(bytes(raw))
            if conn.msgtype == "sensor_msgs/msg/Image":
                sent += 1
                executor.spin_once(timeout_sec=0.1)
        executor.shutdown()
    return sent


def test_ros2_launch_arguments_bag_param_topic_and_sigint(prefix: Path, tiny: list[str], tmp_path: Path):
    """One launch exercising image remapping (camera_info follows as the sibling), params_file, namespace,
    log_level, use_sim_time=false; then a bag replayed into the launched node gives masks and windows,
    `ros2 param get/set` (a bad value refused with its reason), `ros2 topic echo --once` of ~/window and
    /diagnostics, `ros2 lifecycle get`, and SIGINT ends everything with status 0 and no traceback."""
    from sensor_msgs.msg import Image

    with ros_context() as ros:
        env = install_env(ros.domain_id)
        params = _params_file(tmp_path)
        launched = Launched(
            [ros2_executable(), "launch", "vggt4d_ros", "vggt4d.launch.py", *tiny,
             "image_topic:=/cam/color/image_raw", f"params_file:={params}", "namespace:=robot",
             "log_level:=debug", "use_sim_time:=false"], env, tmp_path / "launch.log")
        try:
            node = "/robot/vggt4d"
            wait_for(lambda: lifecycle_state(env, node) == "active", 120.0, "the node to become active", launched)
            out = launched.output()
            assert "[DEBUG]" in out, "log_level:=debug did not reach the node"
            assert "active: listening on /cam/color/image_raw" in out

            got = ros2(env, "param", "get", node, "window_size")
            assert got.returncode == 0 and got.stdout.split()[-1] == str(WINDOW), got.stdout  # from params_file
            got = ros2(env, "param", "get", node, "weights")
            assert got.stdout.strip().endswith("tiny_dino_weights.safetensors"), got.stdout  # argument wins
            got = ros2(env, "param", "get", node, "use_sim_time")
            assert "False" in got.stdout, got.stdout
            info = ros2(env, "topic", "info", "/cam/color/camera_info")
            assert "Subscription count: 1" in info.stdout, info.stdout  # the sibling of the image topic

            # ~/window is volatile: the echo must be listening before the bag plays
            echo = Launched([ros2_executable(), "topic", "echo", "--no-daemon", "--once", f"{node}/window",
                             "vggt4d_ros/msg/Window"], env, tmp_path / "echo_window.log")
            masks: list = []
            sub_node = ros.node("mask_counter")
            sub_node.create_subscription(Image, f"{node}/dynamic_mask", masks.append, 50)
            try:
                wait_for(lambda: "Subscription count: 1" in ros2(env, "topic", "info", f"{node}/window").stdout,
                         30.0, "ros2 topic echo to subscribe to ~/window", launched)
                sent = _play_bag(ros, _write_bag(tmp_path / "bag"))
                assert sent == FRAMES
                executor = ros.executor()
                executor.add_node(sub_node)
                assert spin_until(executor, lambda: len(masks) >= FRAMES, 180.0), \
                    f"{len(masks)} of {FRAMES} masks\n{launched.output()[-3000:]}"
                executor.shutdown()
                echo.proc.wait(60.0)
            finally:
                echo.stop()
            window_yaml = echo.output()
            assert echo.proc.returncode == 0, window_yaml
            assert re.search(r"^window_index: 0$", window_yaml, re.M), window_yaml
            assert {m.header.frame_id for m in masks} == {"cam_optical"}
            assert (masks[0].width, masks[0].height) == (160, 120)

            diag = ros2(env, "topic", "echo", "--once", "/diagnostics", "diagnostic_msgs/msg/DiagnosticArray")
            assert diag.returncode == 0 and "vggt4d: vggt4d pipeline" in diag.stdout, diag.stdout
            processed = re.search(r"key: frames_processed\s+value: '(\d+)'", diag.stdout)
            assert processed and int(processed.group(1)) == FRAMES, diag.stdout

            bad = ros2(env, "param", "set", node, "window_overlap", "7")  # >= window_size: refused
            assert "Setting parameter failed" in bad.stdout and "window_overlap" in bad.stdout, bad.stdout
            bad = ros2(env, "param", "set", node, "input_qos", "fastest")
            assert "Setting parameter failed" in bad.stdout and "input_qos" in bad.stdout, bad.stdout
            good = ros2(env, "param", "set", node, "window_size", "6")
            assert "Set parameter successful" in good.stdout, good.stdout
            assert ros2(env, "param", "get", node, "window_size").stdout.split()[-1] == "6"
        finally:
            code = launched.stop(signal.SIGINT)
        out = launched.output()
        assert code == 0, out[-4000:]
        assert "Traceback" not in out, out[-4000:]
        assert "process has finished cleanly" in out, out[-4000:]


def test_ros2_launch_autostart_false_then_ros2_lifecycle_set(prefix: Path, tiny: list[str], tmp_path: Path):
    """autostart:=false leaves the node unconfigured for `ros2 lifecycle set`; also camera_info_topic and
    use_sim_time:=true."""
    with ros_context() as ros:
        env = install_env(ros.domain_id)
        launched = Launched([ros2_executable(), "launch", "vggt4d_ros", "vggt4d.launch.py", *tiny,
                             "autostart:=false", "image_topic:=/cam/image", "camera_info_topic:=/other/info",
                             "use_sim_time:=true"], env, tmp_path / "launch.log")
        try:
            wait_for(lambda: lifecycle_state(env, "/vggt4d") == "unconfigured", 60.0, "the unconfigured node",
                     launched)
            result = ros2(env, "lifecycle", "set", "/vggt4d", "configure", timeout=120.0)
            assert "Transitioning successful" in result.stdout, result.stdout + launched.output()[-3000:]
            assert lifecycle_state(env, "/vggt4d") == "inactive"
            result = ros2(env, "lifecycle", "set", "/vggt4d", "activate")
            assert "Transitioning successful" in result.stdout, result.stdout
            assert lifecycle_state(env, "/vggt4d") == "active"
            wait_for(lambda: "/vggt4d" in ros2(env, "node", "list").stdout.split(), 30.0, "ros2 node list")
            assert "True" in ros2(env, "param", "get", "/vggt4d", "use_sim_time").stdout
            info = ros2(env, "topic", "info", "/other/info")
            assert "Subscription count: 1" in info.stdout, info.stdout  # explicit camera_info_topic
        finally:
            code = launched.stop(signal.SIGINT)
        out = launched.output()
        assert code == 0 and "Traceback" not in out, out[-4000:]
        assert "active: listening on /cam/image" in out


def test_ros2_launch_shows_its_arguments_and_refuses_a_bad_one_with_a_reason(prefix: Path, tmp_path: Path):
    with ros_context() as ros:
        env = install_env(ros.domain_id)
    shown = ros2(env, "launch", "vggt4d_ros", "vggt4d.launch.py", "--show-args", timeout=60.0)
    assert shown.returncode == 0, shown.stdout
    for name in ("image_topic", "camera_info_topic", "params_file", "weights", "model_config", "device", "namespace",
                 "autostart", "use_sim_time", "log_level"):
        assert f"'{name}':" in shown.stdout, (name, shown.stdout)
    default_params = prefix / "share" / "vggt4d_ros" / "config" / "vggt4d.yaml"
    assert f"(default: '{default_params}')" in shown.stdout, shown.stdout
    result = ros2(env, "launch", "vggt4d_ros", "vggt4d.launch.py", "log_level:=loud", timeout=60.0)
    assert result.returncode != 0
    assert "log_level:='loud' is not one of debug, info, warn, error, fatal" in result.stdout, result.stdout
    assert "process started" not in result.stdout
