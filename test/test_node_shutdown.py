"""Clean shutdown of the node process on SIGINT/SIGTERM at random moments, through real DDS on localhost.

Each run starts ``lib/vggt4d_ros/vggt4d_node`` from the install space (autostart, the tiny fixture model) while
this process publishes images to it continuously, and sends SIGINT or SIGTERM after a random delay: a third of
the runs during start-up (imports, model loading), the others at a random moment after the node reported
``active`` (idle, while a window is processed or its outputs published; frames keep arriving). Every run must
end with status 0, no traceback and no ERROR/FATAL line. Signals within the first 0.2 s are not drawn: they land
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

RUNS = 18
PARALLEL = 3
STARTUP_DELAY_S = (0.2, 3.0)
ACTIVE_DELAY_S = (0.0, 2.5)


class _Run:
    """One node process whose output is read on a thread, noting when it reports ``active``."""

    def __init__(self, cmd: list[str], env: dict, run: int, rng: random.Random) -> None:
        self.run = run
        self.sig = signal.SIGINT if run % 2 == 0 else signal.SIGTERM
        self.after_active = run % 3 != 0
        self.delay = rng.uniform(*(ACTIVE_DELAY_S if self.after_active else STARTUP_DELAY_S))
        self.lines: list[str] = []
        self.active = threading.Event()
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "active: listening" in line:
                self.active.set()

    def due(self) -> float | None:
        """Monotonic time at which to signal (``None`` while waiting for ``active``)."""
        if not self.after_active:
            return self.t0 + self.delay
        if not self.active.is_set():
            return None
        if not hasattr(self, "_active_at"):
            self._active_at = time.monotonic()
        return self._active_at + self.delay


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
        try:
            runs = list(range(RUNS))
            while runs:
                batch, runs = runs[:PARALLEL], runs[PARALLEL:]
                procs = [_Run(_node_command(prefix, fixtures_dir, run), env, run, rng) for run in batch]
                pending = list(procs)
                deadline = time.monotonic() + 120.0
                while pending and time.monotonic() < deadline:
                    for r in list(pending):
                        due = r.due()
                        if due is not None and time.monotonic() >= due or r.proc.poll() is not None:
                            r.proc.send_signal(r.sig)
                            pending.remove(r)
                    executor.spin_once(timeout_sec=0.01)
                for r in procs:
                    try:
                        r.proc.wait(30)
                    except subprocess.TimeoutExpired:
                        r.proc.kill()
                        r.proc.wait()
                    r.reader.join(5)
                    out = "".join(r.lines)
                    bad = [ln for ln in out.splitlines() if "Traceback" in ln or "[ERROR]" in ln or "[FATAL]" in ln]
                    if r.after_active and not r.active.is_set():
                        bad.append("never became active")
                    if r.proc.returncode != 0 or bad:
                        failures.append(f"run {r.run}: {signal.Signals(r.sig).name} "
                                        f"{'after active' if r.after_active else 'after start'} + {r.delay:.2f} s "
                                        f"-> status {r.proc.returncode}; {bad[:3]}; last output: {out[-800:]!r}")
        finally:
            stop.set()
            feeder.join(5)
    assert not failures, "\n".join(failures)
