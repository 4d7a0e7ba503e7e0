"""The node answers a Nav2 lifecycle manager's bond (vggt4d_ros/ros/bond.py) through real DDS.

A bondpy ``Bond`` in this process plays the manager's side (topic ``bond``, id = the node's name, Nav2's
heartbeat period 0.1 s and timeout 4 s); the node runs from the install space as its own process with the tiny
model. Skips, saying why, where bondpy or the bond messages are not importable (tools/setup_env.sh installs them
from ../shared/ros-wheels when that folder exists; an apt ROS 2 has them).
"""

from __future__ import annotations

import importlib.util
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ros_helpers import install_env, require_install_space, ros_context, stop_process


def _missing() -> str | None:
    for module in ("bondpy", "smclib", "bond"):
        if importlib.util.find_spec(module) is None:
            return (f"{module} is not importable: run tools/setup_env.sh with ../shared/ros-wheels present, "
                    f"or use an apt ROS 2")
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def _change_state(executor, client, transition_id: int) -> bool:
    from lifecycle_msgs.srv import ChangeState

    assert client.wait_for_service(timeout_sec=30.0), "no change_state service"
    request = ChangeState.Request()
    request.transition.id = transition_id
    future = client.call_async(request)
    deadline = time.monotonic() + 120.0
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert future.done(), f"transition {transition_id} did not answer"
    return bool(future.result().success)


def test_node_answers_the_lifecycle_managers_bond_while_active(fixtures_dir: Path):
    from bond.msg import Status
    from bondpy.bondpy import Bond
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from rclpy.duration import Duration
    from rclpy.executors import MultiThreadedExecutor

    prefix = require_install_space()
    with ros_context() as ros:
        env = install_env(ros.domain_id)
        exe = prefix / "lib" / "vggt4d_ros" / "vggt4d_node"
        proc = subprocess.Popen(
            [str(exe), "--ros-args", "-p", f"weights:={fixtures_dir / 'tiny_dino_weights.safetensors'}",
             "-p", f"model_config:={fixtures_dir / 'tiny_dino_config.json'}", "-p", "device:=cpu",
             "-p", "autostart:=false", "-p", "warmup:=false", "-p", "target_size:=140"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        manager = ros.node("lifecycle_manager")
        heard: list = []
        manager.create_subscription(Status, "bond", lambda m: heard.append(m) if m.id == "vggt4d" else None, 50)
        change = manager.create_client(ChangeState, "/vggt4d/change_state")
        executor = MultiThreadedExecutor(num_threads=2, context=ros.context)
        executor.add_node(manager)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        bond = None
        bonds: list = []
        try:
            assert _change_state(executor, change, Transition.TRANSITION_CONFIGURE), "configure failed"
            time.sleep(1.5)
            assert not heard, "the node answered a bond before it was active"

            bond = Bond(manager, "bond", "vggt4d")
            bond.heartbeat_period = 0.1
            bond.heartbeat_timeout = 4.0
            bond.start()
            bonds.append(bond)
            assert _change_state(executor, change, Transition.TRANSITION_ACTIVATE), "activate failed"
            assert bond.wait_until_formed(Duration(seconds=10.0)), "the node did not form the bond within 10 s of activation"
            mine = [m for m in heard if m.instance_id != bond.instance_id]
            assert mine and all(m.active for m in mine)
            assert abs(mine[-1].heartbeat_period - 0.1) < 1e-6 and abs(mine[-1].heartbeat_timeout - 4.0) < 1e-6
            time.sleep(1.0)
            assert not bond.is_broken(), "the bond broke while the node was active"

            assert _change_state(executor, change, Transition.TRANSITION_DEACTIVATE), "deactivate failed"
            assert bond.wait_until_broken(Duration(seconds=5.0)), "deactivating the node did not break the bond"
            assert any(not m.active for m in heard if m.instance_id != bond.instance_id)

            # re-activation answers a new manager bond; SIGINT while bonded ends the node cleanly
            second = Bond(manager, "bond", "vggt4d")
            second.heartbeat_period, second.heartbeat_timeout = 0.1, 4.0
            second.start()
            bonds.append(second)
            assert _change_state(executor, change, Transition.TRANSITION_ACTIVATE), "re-activate failed"
            assert second.wait_until_formed(Duration(seconds=10.0)), "no bond after re-activation"
        finally:
            executor.shutdown(timeout_sec=2.0)
            spinner.join(5.0)
            code = stop_process(proc, timeout_s=30.0)
            for b in bonds:  # bondpy's shutdown destroys its subscription: not while an executor waits on it
                b.shutdown()
            output = proc.stdout.read()
        assert code == 0, output
        assert "Traceback" not in output, output
        assert "answering a lifecycle manager's bond on /bond (id vggt4d)" in output


def test_without_a_manager_the_bond_gives_up_quietly(caplog: pytest.LogCaptureFixture):
    """No lifecycle manager (a node used without Nav2): after the connect timeout one info line, no warning, and
    stop() afterwards is clean."""
    import logging

    from rclpy.executors import SingleThreadedExecutor

    from vggt4d_ros.ros.bond import ManagerBond

    with ros_context() as ros:
        node = ros.node("lonely_node")
        executor = SingleThreadedExecutor(context=ros.context)
        executor.add_node(node)
        bond = ManagerBond(node, connect_timeout=1.0)
        with caplog.at_level(logging.INFO, logger="vggt4d_ros.ros.bond"):
            assert bond.start() and bond.active
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and "no lifecycle manager answered" not in caplog.text:
                executor.spin_once(timeout_sec=0.1)
            bond.stop()
        executor.shutdown()
    assert "no lifecycle manager answered the bond within 1 s" in caplog.text, caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert not bond.active
