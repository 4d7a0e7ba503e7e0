"""The colcon install space built by tools/setup_env.sh: layout, launchers, the generated Window
message (import, CDR round trip, type hash, DDS), and the tf2_msgs TFMessage type."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ros_helpers import (
    PACKAGE,
    REPO_ROOT,
    install_env,
    install_site_packages,
    require_install_space,
    ros_context,
    spin_until,
    use_install_space_in_process,
)

#: RIHS01 hash of tf2_msgs/msg/TFMessage on Jazzy/Kilted (and of the stand-in in ros_setup/).
TFMESSAGE_RIHS01 = "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087"

LAUNCHERS = {"vggt4d_node": ("vggt4d_ros.ros.node_main", "main"), "vggt4d": ("vggt4d_ros.cli", "main")}


@pytest.fixture(scope="module")
def prefix() -> Path:
    return require_install_space()


def _run_installed_python(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``code`` with the venv Python in the install space's environment, from a neutral cwd."""
    return subprocess.run(
        [sys.executable, "-c", code], env=install_env(), cwd="/", capture_output=True, text=True, timeout=timeout
    )


def test_install_space_layout(prefix):
    assert (prefix / "share" / PACKAGE / "package.xml").is_file()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    assert (prefix / "share" / PACKAGE / "msg" / "Window.msg").is_file()
    assert (prefix / "share" / PACKAGE / "msg" / "Window.idl").is_file()
    for kind in ("c", "fastrtps_c", "introspection_c"):
        assert (prefix / "lib" / f"lib{PACKAGE}__rosidl_typesupport_{kind}.so").is_file()
    site = install_site_packages(prefix) / PACKAGE
    # The hand-written package and the generated msg/ share one directory (rosidl_python#141 workaround).
    assert (site / "__init__.py").read_text() == (REPO_ROOT / PACKAGE / "__init__.py").read_text()
    assert (site / "ros" / "conversions.py").is_file()
    assert (site / "msg" / "_window.py").is_file()
    # Byte-code caches of the source tree are not installed (rosidl compiles its own generated files).
    stray = [p for p in site.rglob("__pycache__") if p.parent not in (site, site / "msg")]
    assert not stray, f"installed __pycache__ directories: {stray}"
    for launch_dir in ("launch", "config"):
        if (REPO_ROOT / launch_dir).is_dir():
            for src in (REPO_ROOT / launch_dir).iterdir():
                if src.is_file():
                    assert (prefix / "share" / PACKAGE / launch_dir / src.name).is_file(), src


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launchers(prefix, name):
    path = prefix / "lib" / PACKAGE / name
    assert path.is_file() and os.access(path, os.X_OK), f"{path} missing or not executable"
    lines = path.read_text().splitlines()
    interpreter = Path(lines[0][2:])
    assert lines[0].startswith("#!") and interpreter.is_file() and os.access(interpreter, os.X_OK)
    # The shebang is the venv's Python (runs without activation), not whatever python3 is on PATH.
    assert interpreter.parent.parent.resolve() == Path(sys.prefix).resolve()
    module, function = LAUNCHERS[name]
    assert f"from {module} import {function}" in path.read_text()
    compile(path.read_text(), str(path), "exec")


def test_window_message_round_trip_in_install_env(prefix):
    code = """
import json
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose
from rclpy.serialization import deserialize_message, serialize_message
import vggt4d_ros
from vggt4d_ros.msg import Window

pose = Pose()
pose.position.x, pose.orientation.z, pose.orientation.w = 1.5, 0.6, 0.8
msg = Window(window_index=7, segment_index=2, frame_stamps=[Time(sec=1, nanosec=2), Time(sec=3)],
             dynamic_fraction=[0.25, 0.5], camera_poses=[pose, Pose()], intrinsics=[float(i) for i in range(18)],
             image_width=640, image_height=480, alignment_scale=1.25, alignment_residual=0.01,
             alignment_points=1234, stage_names=["vggt", "stitch"], stage_times=[0.5, 0.125])
msg.header.frame_id = "vggt4d_map"
raw = serialize_message(msg)
back = deserialize_message(raw, Window)
print(json.dumps({"equal": back == msg, "bytes": len(raw), "pkg": vggt4d_ros.__file__,
                  "type": Window.__module__, "names": list(back.stage_names),
                  "pose_x": back.camera_poses[0].position.x, "k": list(back.intrinsics)[:3],
                  "stamp": [back.frame_stamps[0].sec, back.frame_stamps[0].nanosec]}))
"""
    result = _run_installed_python(code)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["equal"] is True
    assert out["pkg"].startswith(str(install_site_packages(prefix)))
    assert out["type"] == "vggt4d_ros.msg._window"
    assert out["names"] == ["vggt", "stitch"] and out["pose_x"] == 1.5 and out["k"] == [0.0, 1.0, 2.0]
    assert out["stamp"] == [1, 2]


def test_window_type_hash_matches_rosbags(prefix):
    """The RIHS01 hash that rosidl generated equals the one rosbags computes from Window.msg, so
    bags recorded with rosbags carry the hash that ROS 2 tools expect."""
    from rosbags.typesys import Stores, get_typestore, get_types_from_msg

    description = json.loads((prefix / "share" / PACKAGE / "msg" / "Window.json").read_text())
    hashes = {h["type_name"]: h["hash_string"] for h in description["type_hashes"]}
    typestore = get_typestore(Stores.ROS2_KILTED)
    name = f"{PACKAGE}/msg/Window"
    typestore.register(get_types_from_msg((REPO_ROOT / "msg" / "Window.msg").read_text(), name))
    assert hashes[name].startswith("RIHS01_")
    assert typestore.hash_rihs01(name) == hashes[name]


def test_tf2_msgs_tfmessage():
    code = """
import json, os
from ament_index_python.packages import get_package_share_directory
from geometry_msgs.msg import TransformStamped
from rclpy.serialization import deserialize_message, serialize_message
from tf2_msgs.msg import TFMessage

t = TransformStamped()
t.header.frame_id, t.child_frame_id = "vggt4d_map", "cam_optical"
t.transform.translation.x = 2.0
msg = TFMessage(transforms=[t, TransformStamped()])
back = deserialize_message(serialize_message(msg), TFMessage)
desc = json.load(open(os.path.join(get_package_share_directory("tf2_msgs"), "msg", "TFMessage.json")))
print(json.dumps({"equal": back == msg, "hashes": {h["type_name"]: h["hash_string"] for h in desc["type_hashes"]}}))
"""
    result = _run_installed_python(code)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["equal"] is True
    assert out["hashes"]["tf2_msgs/msg/TFMessage"] == TFMESSAGE_RIHS01


def test_source_install_setup_bash(prefix):
    """`source install/setup.bash` (colcon's) also makes the generated message usable."""
    setup = prefix.parent / "setup.bash"
    assert setup.is_file()
    env = {k: v for k, v in install_env().items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != str(prefix / "lib")
    )
    script = (
        f'source "{setup}" && exec "{sys.executable}" -c '
        '"from rclpy.serialization import serialize_message as s; from vggt4d_ros.msg import Window; '
        'print(len(s(Window(window_index=1))))"'
    )
    result = subprocess.run(["bash", "-c", script], env=env, cwd="/", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip().splitlines()[-1]) > 0


def test_window_over_dds_in_process(prefix):
    """use_install_space_in_process() makes the generated message usable by in-process tests."""
    use_install_space_in_process(prefix)
    from vggt4d_ros.msg import Window
    from vggt4d_ros.ros.qos import reliable_qos

    topic = f"/window_test_{uuid.uuid4().hex[:8]}"
    got: list = []
    with ros_context() as ros:
        pub_node, sub_node = ros.node("window_pub"), ros.node("window_sub")
        sub_node.create_subscription(Window, topic, got.append, reliable_qos(10))
        pub = pub_node.create_publisher(Window, topic, reliable_qos(10))
        executor = ros.executor()
        executor.add_node(pub_node)
        executor.add_node(sub_node)
        msg = Window(window_index=11, stage_names=["a"], stage_times=[0.25])
        deadline = time.monotonic() + 20.0
        while not got and time.monotonic() < deadline:
            pub.publish(msg)
            spin_until(executor, lambda: bool(got), timeout_s=0.2)
        executor.shutdown()
    assert got, "no Window message received within 20 s"
    assert got[0] == msg
