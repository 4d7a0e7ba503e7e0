"""Clean shutdown of the node process on SIGINT/SIGTERM at random moments, through real DDS on localhost.

Each run starts ``lib/vggt4d_ros/vggt4d_node`` from the install space (autostart, the tiny fixture model) while
this process publishes images to it continuously, and sends SIGINT or SIGTERM after a random delay: during the
imports, the model loading, idle, while a window is processed or its outputs published. Every run must end
with status 0, no traceback and no ERROR/FATAL line. Signals within the first 0.2 s are not drawn: they land
in the Python interpreter's own start-up (``site`` and the ROS wheels' ``.pth`` hook, which re-executes the
interpreter) before any code of the program runs, where no program can handle them.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from ros_helpers import install_env, require_install_space, ros_context

RUNS = 24
PARALLEL = 3
MAX_DELAY_S = 7.0


def _node_command(prefix: Path, fixtures_dir: Path, run: int) -> list[str]:
    return [str(prefix / "lib" / "vggt4d_ros" / "vggt4d_node"), "--ros-args", "-r", f"__ns:=/run{run}",
            "-r", "image:=/image", "-p", "autostart:=true",
            "-p", f"weights:={fixtures_dir / 'tiny_dino_weights.safetensors'}",
            "-p", f"model_config:={fixtures_dir / 'tiny_dino_config.json'}", "-p", "device:=cpu",
            "-p", "target_size:=56", "-p", "window_size:=4", "-p", "window_overlap:=2",
            "-p", "input_qos:=reliable", "-p", "flush_timeout:=0.3", "-p", "map_publish_period:=0.1",
            "-p", "diagnostics_period:=0.1", "-p", "warmup:=false"]


def test_sigint_and_sigterm_at_random_moments_exit_cleanly(fixtures_dir: Path):
    prefix = require_install_space()
    rng = random.Random(12)
    with ros_context() as ros:
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image

        from vggt4d_ros.ros.conversions import ns_to_stamp
        from vggt4d_ros.ros.qos import reliable_qos

        pub_node = ros.node("shutdown_feeder")
        pub = pub_node.create_publisher(Image, "/image", reliable_qos(10))
        stop = threading.Event()

        def feed() -> None:
            img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
            i = 0
            while not stop.is_set():
                msg = Image(height=48, width=64, encoding="rgb8", step=64 * 3, data=img.tobytes())
                msg.header.stamp = ns_to_stamp(1_700_000_000_000_000_000 + i * 50_000_000)
                msg.header.frame_id = "cam"
                pub.publish(msg)
                i += 1
                time.sleep(0.05)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        executor = SingleThreadedExecutor(context=ros.context)
        executor.add_node(pub_node)
        env = install_env(domain_id=ros.domain_id)
        env["OMP_NUM_THREADS"] = "1"
        failures = []
        active_runs = 0
        try:
            runs = list(range(RUNS))
            while runs:
                batch, runs = runs[:PARALLEL], runs[PARALLEL:]
                procs = []
                for run in batch:
                    sig = signal.SIGINT if run % 2 == 0 else signal.SIGTERM
                    delay = rng.uniform(0.2, MAX_DELAY_S)
                    proc = subprocess.Popen(_node_command(prefix, fixtures_dir, run), env=env,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                    procs.append((run, sig, delay, time.monotonic(), proc))
                for run, sig, delay, t0, proc in sorted(procs, key=lambda p: p[2]):
                    while time.monotonic() - t0 < delay:
                        executor.spin_once(timeout_sec=0.02)
                    proc.send_signal(sig)
                for run, sig, delay, t0, proc in procs:
                    try:
                        out, _ = proc.communicate(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        out, _ = proc.communicate()
                    active_runs += "active: listening" in out
                    bad = [ln for ln in out.splitlines() if "Traceback" in ln or "[ERROR]" in ln or "[FATAL]" in ln]
                    if proc.returncode != 0 or bad:
                        failures.append(f"run {run}: {signal.Signals(sig).name} after {delay:.2f} s -> status "
                                        f"{proc.returncode}; {bad[:3]}; last output: {out[-800:]!r}")
        finally:
            stop.set()
            feeder.join(5)
    assert not failures, "\n".join(failures)
    assert active_runs >= RUNS // 3, f"only {active_runs} of {RUNS} runs were signalled after activation"
