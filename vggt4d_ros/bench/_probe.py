"""One memory measurement in a fresh process, so that peaks of different measurements cannot contaminate each other.

Run as ``python -m vggt4d_ros.bench._probe '<json spec>'``; the last stdout line is a JSON result. The spec names a
``workload`` (``vggt``: one plain VGGT inference; ``vggt4d``: the whole VGGT4D pipeline; ``streamed``: one forward
with the streamed cue accumulator, then its cues; ``stored``: one forward storing every needed layer's global q/k,
then :func:`cues_from_qk`), the model (``quick`` + ``embed_dim``, or ``vggt-1b``), ``device``, ``frames``,
``height``, ``width``, ``seed`` and ``threads``.

Peak memory: on CPU the peak resident size (``VmHWM``, reset after the imports) minus the resident size after the
imports, so it counts the weights, the activations and anything torch allocates on first use, but not the
interpreter and libraries (:func:`run_probe` fixes glibc's mmap threshold so freed tensors leave the RSS); on CUDA
``torch.cuda.max_memory_allocated`` (weights included). For ``vggt4d`` the result also has ``peak_timeline``: the
running peak at pass boundaries (see :class:`~vggt4d_ros.bench.breakdown.PeakTimeline`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

WORKLOADS = ("vggt", "vggt4d", "streamed", "stored")


def _measure(spec: dict[str, Any], rss_after_import: int) -> dict[str, Any]:
    import torch

    from vggt4d_ros.dynamic.cues import CueAccumulator, CueConfig
    from vggt4d_ros.dynamic.pipeline import VGGT4D, VGGT4DConfig

    from .breakdown import PeakTimeline
    from .models import (bench_config, bench_images, build_model, current_rss_bytes, max_rss_bytes, sync)
    from .observers import StoredQKObserver

    workload = spec["workload"]
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; expected one of {WORKLOADS}")
    device = torch.device(spec["device"])
    torch.set_num_threads(int(spec["threads"]))
    frames, height, width = int(spec["frames"]), int(spec["height"]), int(spec["width"])
    cfg = bench_config(spec["model"] == "quick", int(spec.get("embed_dim", 64)))
    images = bench_images(frames, height, width, int(spec["seed"]), device)
    model = build_model(cfg, device, int(spec["seed"]))
    sync(device)
    rss_after_build = current_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    grid = (height // cfg.patch_size, width // cfg.patch_size)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    result: dict[str, Any] = {}
    t0 = time.perf_counter()
    if workload == "vggt":
        model.predict(images)
    elif workload == "vggt4d":
        read_peak = ((lambda: int(torch.cuda.max_memory_allocated(device))) if device.type == "cuda"
                     else (lambda: max_rss_bytes() - rss_after_import))
        with PeakTimeline(model, read_peak) as timeline:
            res = VGGT4D(model, VGGT4DConfig()).run(images)
        sync(device)
        result["peak_timeline"] = timeline.marks + [("end", read_peak())]
        result["dynamic_fraction"] = float(res.dynamic_mask.float().mean())
    else:
        with torch.inference_mode(), autocast:
            if workload == "streamed":
                observer: Any = CueAccumulator(frames, grid, CueConfig())
                model(images, attention_observer=observer)
                observer.finalize()
            else:
                observer = StoredQKObserver(CueConfig())
                model(images, attention_observer=observer)
                result["observer_held_bytes"] = observer.held_bytes()
                observer.cues(frames, grid)
    sync(device)
    result["seconds"] = time.perf_counter() - t0
    result.update({"rss_after_import": rss_after_import, "rss_after_build": rss_after_build,
                   "max_rss": max_rss_bytes()})
    if device.type == "cuda":
        result["peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
        result["peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
    else:
        result["peak_bytes"] = result["max_rss"] - rss_after_import
    return result


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m vggt4d_ros.bench._probe '<json spec>'\n")
        return 2
    spec = json.loads(argv[0])
    import torch  # noqa: F401 - imported before the baseline so the libraries are not counted

    import vggt4d_ros.dynamic.pipeline  # noqa: F401
    import vggt4d_ros.synthetic  # noqa: F401

    from .models import current_rss_bytes, reset_peak_rss

    rss_after_import = current_rss_bytes()
    out: dict[str, Any] = {"workload": spec.get("workload"), "frames": spec.get("frames"),
                           "peak_reset": reset_peak_rss()}
    try:
        out.update(_measure(spec, rss_after_import))
        out["ok"] = True
    except torch.cuda.OutOfMemoryError as exc:
        out.update({"ok": False, "oom": True, "error": str(exc).splitlines()[0]})
    except MemoryError as exc:
        out.update({"ok": False, "oom": True, "error": f"MemoryError: {exc}"})
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def run_probe(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one probe in a fresh interpreter (``sys.executable``) and return its result.

    A probe that crashes, is killed (e.g. by the kernel's OOM killer) or times out gives ``ok: False`` with the
    reason; it never raises for those.
    """
    env = dict(os.environ)
    root = _package_root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", str(spec.get("threads", 1)))
    # A fixed glibc mmap threshold: large tensors are always mmap'd and returned to the kernel when freed, so the
    # peak RSS follows the live tensor bytes instead of heap fragmentation (run-to-run spread < 1 %).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    cmd = [sys.executable, "-m", "vggt4d_ros.bench._probe", json.dumps(spec)]
    base = {"workload": spec.get("workload"), "frames": spec.get("frames"), "ok": False}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**base, "error": f"probe timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        reason = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit code {proc.returncode}"
        return {**base, "error": f"{reason}: {' | '.join(tail)}", "returncode": proc.returncode}
    return json.loads(lines[-1])


if __name__ == "__main__":
    sys.exit(main())
