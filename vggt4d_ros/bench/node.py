"""Node section of ``vggt4d bench``: the ROS 2 node on a replayed bag, through DDS (``vggt4d replay``).

The node runs in its own process with the benchmark's model (the same random weights, written to a temporary
safetensors file) on synthetic bags at the benchmark's image size (10 frames/s):

* **throughput** -- two replays at ``--rate 0`` (as fast as the node accepts, with back-pressure, so nothing is
  dropped) of the first ``n/2`` and of all ``n`` frames; keyframes/s is the difference in keyframes processed over
  the difference in wall time, so the node's start-up (model load, warm-up) and the final idle flush cancel out;
* **live** -- one replay at ``--rate 1`` (the bag's own speed, as from a camera) of the long synthetic bag or
  ``--bag``: latency p50/p95 and drops as
  counted by the node on ``/diagnostics``. The node measures latency from the moment it received an image to the
  publication of that image's mask (the image header stamp is bag time, not comparable with wall time), so DDS
  transport of the image into the node is not included; the wait for the window to fill is.

Needs rclpy, :mod:`vggt4d_ros.ros.replay` and the built ``vggt4d_ros`` messages; when any is missing the section
reports why instead of failing the benchmark.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DIAG_KEYS = ("frames_in", "frames_processed", "frames_dropped", "frames_invalid", "frames_skipped", "keyframes",
             "windows_processed", "windows_failed", "oom_retries", "latency_p50_s", "latency_p95_s")


def node_available() -> tuple[bool, str]:
    """Whether the node benchmark can run here, and the reason when it cannot."""
    for module in ("rclpy", "rosbags", "vggt4d_ros.ros.replay"):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return False, f"module {module} is not available"
    from vggt4d_ros.ros import replay

    if not replay.import_package_messages(replay.find_install_prefix()):
        return False, "the generated vggt4d_ros messages are not importable (build the package: tools/setup_env.sh)"
    return True, ""


def node_window(settings: Any) -> tuple[int, int]:
    """Window size and overlap of the node runs: ``--node-window`` (default 16, the node's default, on CUDA and
    the timing frame count on CPU) with the node's overlap ratio 6/16 (at least 1)."""
    size = int(settings.node_window or (16 if settings.device.type == "cuda" else settings.timing_frames))
    if size < 2:
        raise ValueError(f"--node-window must be >= 2, got {size}")
    return size, max(1, min(size - 1, round(size * 6 / 16)))


def _write_model(settings: Any, folder: Path) -> tuple[Path, str]:
    """Save the benchmark model's random weights (and, for --quick, its config as JSON); returns the weights path
    and the ``model_config`` parameter."""
    import torch
    from safetensors.torch import save_file

    from .models import bench_config, build_model

    cfg = bench_config(settings.quick, settings.embed_dim)
    model = build_model(cfg, torch.device("cpu"), settings.seed)
    weights = folder / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    del model
    if not settings.quick:
        return weights, "vggt-1b"
    data = {"name": cfg.name, "img_size": cfg.img_size, "patch_size": cfg.patch_size, "embed_dim": cfg.embed_dim,
            "aggregator": asdict(cfg.aggregator), "patch_embed": asdict(cfg.patch_embed),
            "camera_head": asdict(cfg.camera_head) if cfg.camera_head else None,
            "depth_head": asdict(cfg.depth_head) if cfg.depth_head else None,
            "point_head": asdict(cfg.point_head) if cfg.point_head else None}
    config_path = folder / "config.json"
    config_path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return weights, str(config_path)


def _write_bag(settings: Any, folder: Path, frames: int, name: str) -> Path:
    from vggt4d_ros.bags import write_camera_bag
    from vggt4d_ros.synthetic import render_scene

    seq = render_scene(num_frames=frames, width=settings.width, height=settings.height, seed=settings.seed)
    return write_camera_bag(folder / name, seq.images, seq.stamps_ns, intrinsics=seq.intrinsics)


@contextlib.contextmanager
def _node_threads(threads: int):
    """Give the node process the benchmark's torch thread count (``OMP_NUM_THREADS``, read by torch at start-up);
    oversubscribed intra-op threads slow torch down many times on a busy machine."""
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(int(threads))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def _replay(settings: Any, bag: Path, out: Path, rate: float, weights: Path, model_config: str,
            window: tuple[int, int]) -> dict[str, Any]:
    from vggt4d_ros.ros.replay import ReplayOptions, replay

    overrides = [f"window_size:={window[0]}", f"window_overlap:={window[1]}", f"target_size:={settings.width}"]
    opts = ReplayOptions(input=bag, output=out, rate=rate, overrides=overrides, timeout=settings.node_timeout,
                         model={"weights": str(weights), "model_config": model_config,
                                "device": settings.device.type, "dtype": None})
    with _node_threads(settings.threads):
        summary = replay(opts)
    diag = {key: summary.diagnostics.get(key) for key in DIAG_KEYS}
    numbers: dict[str, Any] = {}
    for key, value in diag.items():
        try:
            numbers[key] = float(value) if key.startswith("latency") else int(float(value))
        except (TypeError, ValueError):
            numbers[key] = None
    return {"rate": rate, "ok": summary.ok, "reason": summary.reason, "frames_offered": summary.frames_offered,
            "elapsed_s": summary.elapsed_s, **numbers}


def node_section(settings: Any) -> dict[str, Any]:
    """Throughput (keyframes/s), latency p50/p95 and drops of the node; ``{"skipped": reason}`` when it cannot
    run here."""
    ok, reason = node_available()
    if not ok:
        logger.info("node benchmark skipped: %s", reason)
        return {"skipped": reason}
    window = node_window(settings)
    with tempfile.TemporaryDirectory(prefix="vggt4d_bench_node_") as tmp:
        folder = Path(tmp)
        weights, model_config = _write_model(settings, folder)
        frames = int(settings.node_frames or 4 * window[0])
        if frames < 4:
            raise ValueError(f"--node-frames must be >= 4, got {frames}")
        long_bag = _write_bag(settings, folder, frames, "long_bag")
        short_bag = _write_bag(settings, folder, frames // 2, "short_bag")
        live_bag = Path(settings.bag) if settings.bag is not None else long_bag
        section: dict[str, Any] = {"window_size": window[0], "window_overlap": window[1], "frames": frames,
                                   "live_bag": str(settings.bag) if settings.bag is not None else "synthetic",
                                   "latency_definition": "node receive time -> mask publication (node-measured)"}
        logger.info("node throughput runs: %d and %d frames at --rate 0", frames // 2, frames)
        runs = [_replay(settings, short_bag, folder / "out_short", 0.0, weights, model_config, window),
                _replay(settings, long_bag, folder / "out_long", 0.0, weights, model_config, window)]
        section["throughput_runs"] = runs
        d_frames = (runs[1]["frames_processed"] or 0) - (runs[0]["frames_processed"] or 0)
        d_time = runs[1]["elapsed_s"] - runs[0]["elapsed_s"]
        if all(r["ok"] for r in runs) and d_frames > 0 and d_time > 0:
            section["keyframes_per_s"] = d_frames / d_time
        else:
            section["throughput_error"] = ("; ".join(r["reason"] for r in runs if r["reason"])
                                           or "the longer replay did not take longer")
        logger.info("node live run at --rate 1 on %s", live_bag)
        live = _replay(settings, live_bag, folder / "out_live", 1.0, weights, model_config, window)
        section["live"] = live
        for key in ("latency_p50_s", "latency_p95_s", "frames_dropped", "frames_processed"):
            section[key] = live.get(key)
        if not live["ok"]:
            section["live_error"] = live["reason"]
    return section
