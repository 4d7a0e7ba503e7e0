"""``vggt4d bench --soak N``: N frames through the ROS node with periodic resets, segment breaks and bad frames.

The node runs in this process (:class:`vggt4d_ros.ros.soak_rig.SoakRig`, real DDS on localhost) with the
benchmark's ``--quick`` model (random weights) and a small map cap (``max_map_points``), fed with the synthetic
scene under back-pressure (never more images in flight than the node's input queue holds; ``drop_policy: wait``).
The schedule, by frame number ``i``:

* every ``reset_every`` frames: ``~/reset`` (the round-trip time is recorded; it must not wait for a window);
* every ``break_every`` frames: a segment break, alternately a stamp gap longer than ``max_gap`` and stamps
  jumping back;
* every ``bad_every`` frames: one extra bad image (one row short), which the node must count as invalid.

Reported (``soak`` in the JSON): every counter of the node's ``/diagnostics`` at the end, the frames offered,
the outputs the node says it published and the ones the soak's subscribers received per topic (``lost`` must
be 0 everywhere), the process RSS sampled after every window, and its slope (MiB per 1000 frames) fitted over
the samples taken after the map first reached its cap -- flat memory means a slope near 0. The run fails
(exit status 1) when outputs were lost or the accounting does not add up.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from vggt4d_ros.ros.replay_input import diag_int as _int

from .stats import fit_line

logger = logging.getLogger(__name__)

__all__ = ["SoakSettings", "run_soak", "soak_main", "rss_bytes"]

MIB = float(1 << 20)


def rss_bytes() -> int:
    """Resident set size of this process (``/proc/self/statm``)."""
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class SoakSettings:
    """What one soak run does (see the module docstring); defaults scale with ``frames``."""

    def __init__(self, frames: int, *, width: int = 160, height: int = 120, window_size: int = 6,
                 window_overlap: int = 2, max_map_points: int = 3000, reset_every: Optional[int] = None,
                 break_every: Optional[int] = None, bad_every: Optional[int] = None, seed: int = 0,
                 embed_dim: int = 64, timeout_s: float = 120.0) -> None:
        if frames < 2 * window_size:
            raise ValueError(f"--soak needs at least {2 * window_size} frames, got {frames}")
        self.frames = int(frames)
        self.width, self.height = int(width), int(height)
        self.window_size, self.window_overlap = int(window_size), int(window_overlap)
        self.max_map_points = int(max_map_points)
        self.reset_every = int(reset_every or max(2 * window_size, frames // 3))
        self.break_every = int(break_every or max(window_size + 1, frames // 5))
        self.bad_every = int(bad_every or max(3, frames // 8))
        self.seed = int(seed)
        self.embed_dim = int(embed_dim)
        self.timeout_s = float(timeout_s)


def _node_parameters(settings: SoakSettings, weights: Path, model_config: str) -> dict[str, Any]:
    return {"weights": str(weights), "model_config": model_config, "device": "cpu", "target_size": 112,
            "window_size": settings.window_size, "window_overlap": settings.window_overlap,
            "max_map_points": settings.max_map_points, "max_points_per_frame": 1000, "voxel_size": 0.01,
            "input_qos": "reliable", "drop_policy": "wait", "queue_size": 2, "flush_timeout": 0.5,
            "map_publish_period": 0.2, "diagnostics_period": 0.1, "warmup": False, "max_gap": 1.0}


def _write_model(settings: SoakSettings, folder: Path) -> tuple[Path, str]:
    from types import SimpleNamespace

    from .node import _write_model as write_bench_model

    return write_bench_model(SimpleNamespace(quick=True, embed_dim=settings.embed_dim, seed=settings.seed), folder)


def run_soak(settings: SoakSettings) -> dict[str, Any]:
    """Run one soak; returns the report (``ok`` false when outputs were lost or the accounting is off)."""
    from vggt4d_ros.ros.replay_input import frames_in_flight, frames_in_flight_limit  # noqa: F811
    from vggt4d_ros.ros.soak_rig import SoakRig
    from vggt4d_ros.synthetic import render_scene

    scene = render_scene(num_frames=min(settings.frames, 48), width=settings.width, height=settings.height,
                         seed=settings.seed)
    t0_ns, dt_ns = 1_700_000_000_000_000_000, 100_000_000
    with tempfile.TemporaryDirectory(prefix="vggt4d_soak_") as tmp:
        weights, model_config = _write_model(settings, Path(tmp))
        params = _node_parameters(settings, weights, model_config)
        with SoakRig(params, timeout_s=settings.timeout_s) as rig:
            limit = frames_in_flight_limit(32, 20, 100)
            offered, stamp, resets, breaks, bad = 0, t0_ns, [], 0, 0
            rss: list[tuple[int, int]] = []
            capped_at: Optional[int] = None
            last_windows = -1
            started = time.monotonic()

            def wait_room() -> None:
                deadline = time.monotonic() + settings.timeout_s
                while frames_in_flight(offered, rig.values()) >= limit:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the node stopped taking images")
                    time.sleep(0.005)

            for i in range(settings.frames):
                if i and i % settings.reset_every == 0:
                    resets.append(rig.reset())
                if i and i % settings.break_every == 0:
                    breaks += 1
                    stamp += 5_000_000_000 if breaks % 2 else -20_000_000_000  # gap, then stamps going back
                if i and i % settings.bad_every == 0:
                    wait_room()
                    rig.send(scene.images[i % len(scene.images)], stamp + dt_ns // 2, bad=True)
                    offered += 1
                    bad += 1
                wait_room()
                rig.send(scene.images[i % len(scene.images)], stamp)
                offered += 1
                stamp += dt_ns
                values = rig.values()
                windows = _int(values, "windows_processed")
                if windows != last_windows:
                    last_windows = windows
                    rss.append((i + 1, rss_bytes()))
                    if capped_at is None and _int(values, "map_points") >= 0.9 * settings.max_map_points:
                        capped_at = len(rss) - 1
            # the end: every image handled, every published output received
            deadline = time.monotonic() + settings.timeout_s

            def finished() -> bool:
                v = rig.values()
                return (frames_in_flight(offered, v) <= 0 and _int(v, "keyframes_pending") == 0
                        and not v.get("worker_busy") and _int(v, "queue_depth") == 0
                        and _int(v, "input_queue_depth") == 0)

            while not finished() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)  # the idle flush and the map timer
            while time.monotonic() < deadline:
                v = rig.values()
                published = {k[len("published."):]: _int(v, k) for k in v if k.startswith("published.")}
                received = rig.received_counts()
                if all(received.get(k, 0) >= n for k, n in published.items()):
                    break
                time.sleep(0.1)
            elapsed = time.monotonic() - started
            values = rig.values()
            received = rig.received_counts()
    published = {k[len("published."):]: _int(values, k) for k in values if k.startswith("published.")}
    lost = {k: max(0, n - received.get(k, 0)) for k, n in sorted(published.items()) if k in received or n}
    after_cap = rss[capped_at:] if capped_at is not None else []
    slope = None
    if len(after_cap) >= 3 and len({x for x, _ in after_cap}) >= 2:
        fit = fit_line([x for x, _ in after_cap], [y / MIB for _, y in after_cap])
        slope = fit.slope * 1000.0
    accounting = {
        "frames_in": _int(values, "frames_in") == _int(values, "frames_invalid") + _int(values, "frames_skipped")
        + _int(values, "keyframes"),
        "keyframes": _int(values, "keyframes") == _int(values, "frames_processed") + _int(values, "frames_dropped")
        + _int(values, "keyframes_pending"),
        "all_received": _int(values, "frames_received") == offered,
        "bad_frames_invalid": _int(values, "invalid.size_mismatch") == bad,
        "no_queue_full": _int(values, "dropped.queue_full") == 0 and _int(values, "input_overflow") == 0,
    }
    report = {
        "frames": settings.frames, "frames_offered": offered, "bad_frames": bad, "segment_breaks": breaks,
        "resets": len(resets), "reset_round_trip_s_max": max(resets) if resets else None,
        "elapsed_s": elapsed, "frames_per_s": offered / elapsed if elapsed > 0 else None,
        "published": published, "received": received, "lost": lost,
        "rss_mib": [(x, y / MIB) for x, y in rss], "map_cap_reached_at_frame": rss[capped_at][0] if after_cap else None,
        "rss_slope_mib_per_1000_frames": slope, "accounting": accounting,
        "counters": {k: v for k, v in sorted(values.items()) if isinstance(v, (int, float, str)) or v is None},
    }
    report["ok"] = all(n == 0 for n in lost.values()) and all(accounting.values())
    return report


def soak_main(frames: int, output: Path, json_path: Optional[Path] = None) -> int:
    """The ``--soak N`` hook of ``vggt4d bench``: run, write ``<output>/soak.json`` (and ``json_path``), log a
    summary; exit status 0 when nothing was lost and the accounting holds."""
    report = run_soak(SoakSettings(frames))
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"soak": report}, indent=1, default=str)
    (output / "soak.json").write_text(text, encoding="utf-8")
    if json_path is not None:
        Path(json_path).write_text(text, encoding="utf-8")
    slope = report["rss_slope_mib_per_1000_frames"]
    logger.info("soak %s: %d frames offered (%d bad, %d segment breaks, %d resets, reset round trip max %s s), "
                "%.1f frames/s, lost outputs %s, RSS slope after the map cap %s MiB/1000 frames, accounting %s",
                "ok" if report["ok"] else "FAILED", report["frames_offered"], report["bad_frames"],
                report["segment_breaks"], report["resets"],
                f"{report['reset_round_trip_s_max']:.3f}" if report["reset_round_trip_s_max"] is not None else "-",
                report["frames_per_s"] or 0.0, report["lost"],
                f"{slope:.2f}" if slope is not None else "n/a (cap not reached)", report["accounting"])
    return 0 if report["ok"] else 1
