"""``vggt4d bench``: VGGT4D against plain VGGT on one device, in one run.

Sections (each can be skipped with ``--skip``):

* ``timing``: end-to-end VGGT4D vs one VGGT inference at the same ``S x H x W`` (warm-up, then the median of
  ``--repeats`` interleaved runs), VGGT4D's per-stage times, and the cost of the streamed cue accumulator,
  measured on the q/k of a real forward pass; also the time of the "store every layer" reference cues.
* ``cues``: peak memory of one forward with the streamed accumulator vs one storing every needed layer's q/k
  and computing the cues after, each in a fresh process, plus the exact bytes each observer holds.
* ``memory``: peak memory vs frames, VGGT4D and plain VGGT side by side, one fresh process per point, with a
  least-squares line per model (slope = bytes per extra frame).
* ``max_frames``: the largest ``S`` whose VGGT4D run fits ``--memory-budget-gb`` (galloping + bisection over
  fresh-process probes, starting from the memory line's prediction).
* ``node``: keyframe throughput and latency of the ROS node on a replayed bag (needs ``vggt4d_ros.ros.replay``).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from .stats import LinearFit, fit_line, largest_fitting, proc_kib, safe_ratio, summarize

logger = logging.getLogger(__name__)

SECTIONS = ("timing", "cues", "memory", "max_frames", "node", "drift")
STAGES = ("pass1", "cues", "clustering", "refinement", "pass2", "points")
TARGETS = {"vggt4d_over_vggt": 1.8, "refine_over_vggt": 0.15, "cue_overhead_over_pass1": 0.10,
           "peak_mem_over_vggt": 1.05}
GIB = float(1 << 30)

QUICK_DEFAULTS = {"frames": (3, 4, 6), "timing_frames": 4, "repeats": 3, "budget_gb": 0.25, "max_frames_limit": 32,
                  "probe_timeout": 180.0}
FULL_DEFAULTS = {"frames": (4, 8, 16, 32), "timing_frames": 16, "repeats": 5, "budget_gb": None,
                 "max_frames_limit": 512, "probe_timeout": 600.0}


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive frame counts, got {text!r}")
    return tuple(sorted(set(values)))


def _skip_list(text: str) -> tuple[str, ...]:
    names = tuple(v for v in text.replace(" ", "").split(",") if v)
    bad = [n for n in names if n not in SECTIONS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vggt4d bench``."""
    parser.add_argument("--quick", action="store_true",
                        help="reduced-width copy of the 1B graph on the CPU, a few frames (CI smoke, ~2 min)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="device (default: auto = cuda when available; --quick defaults to cpu)")
    parser.add_argument("--output", type=Path, default=Path("bench_out"),
                        help="directory for results.json, results.md and the PNG plots (default: bench_out)")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON results to this file")
    parser.add_argument("--frames", type=_int_list, default=None,
                        help="frame counts of the memory-vs-frames sweep (default: 3,4,6 quick; 4,8,16,32 full)")
    parser.add_argument("--timing-frames", type=int, default=None,
                        help="frames of the timing and cue comparisons (default: 4 quick, 16 full)")
    parser.add_argument("--height", type=int, default=294, help="image height, a multiple of 14 (default 294)")
    parser.add_argument("--width", type=int, default=518, help="image width, a multiple of 14 (default 518)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, median reported (3 quick, 5 full)")
    parser.add_argument("--memory-budget-gb", type=float, default=None,
                        help="budget of the largest-S search in GiB (default: 0.25 quick; 90%% of GPU memory)")
    parser.add_argument("--max-frames-limit", type=int, default=None,
                        help="largest S the search may try (default: 32 quick, 512 full)")
    parser.add_argument("--skip", type=_skip_list, action="append", default=[],
                        help=f"comma-separated sections to skip: {', '.join(SECTIONS)}")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads, fixed for the whole run (default: 1 for --quick on CPU)")
    parser.add_argument("--embed-dim", type=int, default=64,
                        help="--quick model width (multiple of 64; the 1B has 1024)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and the input scene")
    parser.add_argument("--probe-timeout", type=float, default=None,
                        help="seconds allowed per fresh-process memory probe (default 180 quick, 600 full)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="memory probes run at once (default: CPU cores / threads, at most 2, on CPU; 1 on "
                             "CUDA, where probes share the GPU's memory)")
    parser.add_argument("--node", action="store_true",
                        help="also run the node section in --quick mode (it is part of the full run by default)")
    parser.add_argument("--bag", type=Path, default=None,
                        help="bag for the node section's live run (default: the synthetic bag)")
    parser.add_argument("--node-frames", type=int, default=None,
                        help="frames of the node section's synthetic bag (default: 4 windows)")
    parser.add_argument("--node-window", type=int, default=None,
                        help="node window size (default: 16 on CUDA, --timing-frames on CPU)")
    parser.add_argument("--node-timeout", type=float, default=1800.0,
                        help="seconds allowed per node replay (default 1800)")
    parser.add_argument("--soak", type=int, default=None, metavar="N",
                        help="instead of the benchmark: N frames through the ROS node with resets, segment breaks and "
                             "bad frames; reports RSS slope, every counter and lost outputs (see bench/soak.py)")
    parser.add_argument("--profile", action="store_true",
                        help="also write profile.txt: torch.profiler operator table of one VGGT4D run")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``vggt4d bench``: run the benchmark and write the results; returns the exit code."""
    if getattr(args, "soak", None):
        from .soak import soak_main

        return soak_main(args.soak, args.output, args.json)
    settings = BenchSettings.from_args(args)
    results = run_benchmark(settings)
    paths = write_outputs(results, settings.output, settings.json_path)
    logger.info("bench results: %s", ", ".join(str(p) for p in paths))
    for key in TARGETS:
        logger.info("%s = %s (target <= %s)", key, _fmt(results.get(key)), TARGETS[key])
    return 0


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------------------------


class BenchSettings:
    """Resolved benchmark settings (defaults depend on ``quick``)."""

    def __init__(self, *, quick: bool, device: str = "auto", output: Path = Path("bench_out"),
                 json_path: Optional[Path] = None, frames: Optional[tuple[int, ...]] = None,
                 timing_frames: Optional[int] = None, height: int = 294, width: int = 518,
                 repeats: Optional[int] = None, budget_gb: Optional[float] = None,
                 max_frames_limit: Optional[int] = None, skip: tuple[str, ...] = (), threads: Optional[int] = None,
                 embed_dim: int = 64, seed: int = 0, probe_timeout: Optional[float] = None,
                 bag: Optional[Path] = None, profile: bool = False, jobs: Optional[int] = None,
                 node: bool = False, node_frames: Optional[int] = None, node_window: Optional[int] = None,
                 node_timeout: float = 1800.0) -> None:
        import torch

        from vggt4d_ros.model.checkpoint import resolve_device

        from .models import check_image_size, default_threads

        defaults = QUICK_DEFAULTS if quick else FULL_DEFAULTS
        self.quick = quick
        self.device = resolve_device("cpu" if quick and device == "auto" else device)
        self.output = Path(output)
        self.json_path = Path(json_path) if json_path is not None else None
        self.frames = tuple(sorted(set(frames or defaults["frames"])))
        self.timing_frames = int(timing_frames or defaults["timing_frames"])
        check_image_size(height, width)
        self.height, self.width = int(height), int(width)
        self.repeats = int(repeats or defaults["repeats"])
        self.max_frames_limit = int(max_frames_limit or defaults["max_frames_limit"])
        self.skip = tuple(skip)
        self.threads = default_threads(self.device, quick, threads)
        self.embed_dim = int(embed_dim)
        self.seed = int(seed)
        self.probe_timeout = float(probe_timeout or defaults["probe_timeout"])
        self.bag = bag
        self.node = bool(node)
        self.node_frames = node_frames
        self.node_window = node_window
        self.node_timeout = float(node_timeout)
        self.profile = bool(profile)
        if jobs is None:
            jobs = 1 if self.device.type == "cuda" else max(1, min(2, (os.cpu_count() or 1) // self.threads))
        if jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {jobs}")
        self.jobs = int(jobs)
        if self.repeats < 1 or self.timing_frames < 1 or self.max_frames_limit < 1:
            raise ValueError("--repeats, --timing-frames and --max-frames-limit must be >= 1")
        if "memory" not in self.skip and len(self.frames) < 2:
            raise ValueError(f"the memory-vs-frames sweep needs at least two frame counts, got {self.frames}")
        if budget_gb is None:
            budget_gb = defaults["budget_gb"]
        if budget_gb is None:
            if self.device.type == "cuda":
                budget_gb = 0.9 * torch.cuda.get_device_properties(self.device).total_memory / GIB
            else:
                budget_gb = 0.5 * _mem_available_bytes() / GIB
        if not budget_gb > 0:
            raise ValueError(f"--memory-budget-gb must be > 0, got {budget_gb}")
        if self.device.type == "cpu" and budget_gb * GIB > 0.9 * _mem_available_bytes():
            raise ValueError(f"--memory-budget-gb {budget_gb:.2f} exceeds 90% of the available RAM "
                             f"({_mem_available_bytes() / GIB:.2f} GiB); a probe could exhaust the machine")
        self.budget_bytes = int(budget_gb * GIB)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "BenchSettings":
        skip = tuple(name for group in (args.skip or []) for name in group)
        return cls(quick=args.quick, device=args.device, output=args.output, json_path=args.json,
                   frames=args.frames, timing_frames=args.timing_frames, height=args.height, width=args.width,
                   repeats=args.repeats, budget_gb=args.memory_budget_gb, max_frames_limit=args.max_frames_limit,
                   skip=skip, threads=args.threads, embed_dim=args.embed_dim, seed=args.seed,
                   probe_timeout=args.probe_timeout, bag=args.bag, profile=args.profile, jobs=args.jobs,
                   node=args.node, node_frames=args.node_frames, node_window=args.node_window,
                   node_timeout=args.node_timeout)

    def probe_spec(self, workload: str, frames: int) -> dict[str, Any]:
        return {"workload": workload, "model": "quick" if self.quick else "vggt-1b", "embed_dim": self.embed_dim,
                "device": self.device.type, "frames": int(frames), "height": self.height, "width": self.width,
                "seed": self.seed, "threads": self.threads}


def _mem_available_bytes() -> int:
    available = proc_kib("/proc/meminfo", "MemAvailable")
    return available if available is not None else 8 << 30


# ----------------------------------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------------------------------


def run_benchmark(settings: BenchSettings,
                  probe: Optional[Callable[[dict[str, Any], float], dict[str, Any]]] = None) -> dict[str, Any]:
    """Run every section not skipped and return the results dictionary (see ``bench/README.md``).

    ``probe(spec, timeout)`` runs one fresh-process memory measurement (default: :func:`._probe.run_probe`).
    """
    import torch

    from ._probe import run_probe

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        return _run_sections(settings, probe or run_probe)
    finally:
        torch.set_num_threads(previous_threads)


def _run_sections(settings: BenchSettings,
                  probe: Callable[[dict[str, Any], float], dict[str, Any]]) -> dict[str, Any]:
    from .models import bench_config, config_summary, count_parameters_of, device_info

    started = time.perf_counter()
    cfg = bench_config(settings.quick, settings.embed_dim)
    results: dict[str, Any] = {
        "schema": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if settings.quick else "full",
        "device": device_info(settings.device, settings.threads),
        "model": config_summary(cfg),
        "params": count_parameters_of(cfg),
        "weights": "random (seeded); camera-head field-of-view outputs fixed at ~1 rad",
        "precision": "bf16 autocast (aggregator), float32 heads" if settings.device.type == "cuda" else "float32",
        "image_size": [settings.height, settings.width],
        "seed": settings.seed,
        "repeats": settings.repeats,
        "targets": dict(TARGETS),
        "skipped": {},
    }
    for name in settings.skip:
        results["skipped"][name] = "skipped with --skip"
    probes: dict[tuple[str, int], dict[str, Any]] = {}

    def measure(workload: str, frames: int) -> dict[str, Any]:
        key = (workload, int(frames))
        if key not in probes:
            logger.info("memory probe: %s, S=%d", workload, frames)
            probes[key] = probe(settings.probe_spec(workload, frames), settings.probe_timeout)
            if not probes[key].get("ok"):
                logger.warning("memory probe %s S=%d failed: %s", workload, frames, probes[key].get("error"))
        return probes[key]

    if "timing" not in settings.skip:
        results["timing"] = _timing_section(settings, cfg)
        results["vggt4d_over_vggt"] = results["timing"]["vggt4d_over_vggt"]
        results["refine_over_vggt"] = results["timing"]["refine_over_vggt"]
        results["cue_overhead_over_pass1"] = results["timing"]["cue_overhead_over_pass1"]
    # The fixed set of fresh-process probes runs first, ``settings.jobs`` at a time (peaks are per process).
    wanted: list[tuple[str, int]] = []
    if "cues" not in settings.skip:
        wanted += [(w, settings.timing_frames) for w in ("vggt", "streamed", "stored")]
    if "memory" not in settings.skip:
        wanted += [(w, S) for S in sorted(settings.frames, reverse=True) for w in ("vggt4d", "vggt")]
    wanted = list(dict.fromkeys(wanted))
    if settings.jobs > 1 and len(wanted) > 1:
        with ThreadPoolExecutor(max_workers=settings.jobs) as pool:
            list(pool.map(lambda key: measure(*key), wanted))
    if "cues" not in settings.skip:
        results["cues"] = _cues_section(settings, measure, results.get("timing"))
    if "memory" not in settings.skip:
        results["memory"] = _memory_section(settings, measure)
        results["peak_mem_over_vggt"] = results["memory"]["peak_mem_over_vggt"]
    if "max_frames" not in settings.skip:
        results["max_frames"] = _max_frames_section(settings, measure, results.get("memory"))
    if "drift" not in settings.skip:
        from .drift import run_drift_bench

        results["drift"] = run_drift_bench()
    if settings.quick and not settings.node and "node" not in settings.skip:
        results["skipped"]["node"] = "not part of --quick unless --node is given (it needs ROS 2 and node runs)"
    elif "node" not in settings.skip:
        from .node import node_section

        try:
            node = node_section(settings)
        except Exception as exc:  # noqa: BLE001 - a failed node run must not discard the other sections
            logger.warning("node section failed: %s: %s", type(exc).__name__, exc)
            node = {"error": f"{type(exc).__name__}: {exc}"}
        if node.get("skipped"):
            results["skipped"]["node"] = node["skipped"]
        results["node"] = node
    results["probes"] = list(probes.values())
    results["meets_targets"] = {k: (results[k] <= v) for k, v in TARGETS.items()
                                if isinstance(results.get(k), float)}
    results["elapsed_seconds"] = time.perf_counter() - started
    return results


def _release(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _timing_section(settings: BenchSettings, cfg: Any) -> dict[str, Any]:
    import torch

    from vggt4d_ros.dynamic.cues import CUE_NAMES, CueAccumulator, CueConfig
    from vggt4d_ros.dynamic.pipeline import VGGT4D, VGGT4DConfig

    from .breakdown import ModuleTimer
    from .models import bench_images, build_model, sync
    from .observers import StoredQKObserver, max_cue_difference, replay_streamed, time_stored

    device, S = settings.device, settings.timing_frames
    H, W = settings.height, settings.width
    grid = (H // cfg.patch_size, W // cfg.patch_size)
    model = build_model(cfg, device, settings.seed)
    images = bench_images(S, H, W, settings.seed, device)
    pipe = VGGT4D(model, VGGT4DConfig())
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        return time.perf_counter() - t0, out

    # Warm-up; the first forward also captures the needed layers' global q/k for the cue comparisons.
    stored = StoredQKObserver(CueConfig())
    with torch.inference_mode(), autocast:
        model(images, attention_observer=stored)
    timed(lambda: pipe.run(images))

    plain_times: list[float] = []
    observed_times: list[float] = []
    total_times: list[float] = []
    stage_times: dict[str, list[float]] = {name: [] for name in STAGES}
    dynamic_fraction = coarse_fraction = 0.0
    pass2_ran = True
    refine_timings: dict[str, list[float]] = {}
    breakdown: dict[str, dict[str, float]] = {}
    for repeat in range(settings.repeats):
        # The last repeat is also instrumented (time per module group, pass by pass; the hooks cost microseconds).
        last = repeat == settings.repeats - 1
        with ModuleTimer(model, enabled=last) as plain_timer:
            seconds, _ = timed(lambda: model.predict(images))
        plain_times.append(seconds)
        # the same forward with the streamed cue observer (VGGT4D's pass 1 may stop early and finish during
        # pass 2, so its stage time is not a whole forward)
        seconds, _ = timed(lambda: model.predict(images, attention_observer=CueAccumulator(S, grid, CueConfig())))
        observed_times.append(seconds)
        with ModuleTimer(model, enabled=last) as pipe_timer:
            seconds, res = timed(lambda: pipe.run(images))
        total_times.append(seconds)
        if last:
            passes = pipe_timer.result()
            breakdown = {"vggt": plain_timer.result()[0], "pass1": passes[0],
                         "pass2": passes[1] if len(passes) > 1 else {}}
        for name in STAGES:
            stage_times[name].append(float(res.timings.get(name, 0.0)))
        dynamic_fraction = float(res.dynamic_mask.float().mean())
        coarse_fraction = float(res.coarse_mask.float().mean())
        pass2_ran = bool(res.dynamic_mask.any())
        for name, value in ((res.info.get("refine") or {}).get("timings") or {}).items():
            refine_timings.setdefault(name, []).append(float(value))
        del res

    observe: list[float] = []
    finalize: list[float] = []
    reference: list[float] = []
    streamed_out = replay_streamed(stored, S, grid, track_bytes=True)
    stored_out = time_stored(stored, S, grid)
    for _ in range(settings.repeats):
        out = replay_streamed(stored, S, grid)
        observe.append(out["observe_seconds"])
        finalize.append(out["finalize_seconds"])
        reference.append(time_stored(stored, S, grid)["seconds"])
    cue_difference = max_cue_difference(streamed_out["cues"], stored_out["cues"], (*CUE_NAMES, "dyn"))
    held_stored = stored.held_bytes()
    held_streamed = int(streamed_out["peak_held_bytes"])
    profile_table = _profile(pipe, images) if settings.profile else None
    del stored, streamed_out, stored_out, pipe, model, images
    _release(device)

    plain = summarize(plain_times)
    total = summarize(total_times)
    stages = {name: summarize(values) for name, values in stage_times.items()}
    t_plain = plain["median"]
    cue_seconds = float(summarize(observe)["median"] + summarize(finalize)["median"])
    section: dict[str, Any] = {
        "frames": S,
        "vggt_seconds": plain,
        "vggt4d_seconds": total,
        "stages": stages,
        "stage_share": {name: safe_ratio(stages[name]["median"], total["median"]) for name in STAGES},
        "vggt4d_over_vggt": safe_ratio(total["median"], t_plain),
        "cue_observer_seconds": summarize(observe),
        "cue_finalize_seconds": summarize(finalize),
        "cue_overhead_over_pass1": safe_ratio(cue_seconds, t_plain),
        "vggt_with_cue_observer_seconds": summarize(observed_times),
        "cue_overhead_over_pass1_by_difference": safe_ratio(summarize(observed_times)["median"] - t_plain, t_plain),
        "pass2_over_vggt": safe_ratio(stages["pass2"]["median"], t_plain),
        "refine_over_vggt": safe_ratio(stages["refinement"]["median"], t_plain),
        "stored_cues_seconds": summarize(reference),
        "stored_over_streamed_cue_time": safe_ratio(summarize(reference)["median"], cue_seconds),
        "streamed_vs_stored_max_abs_diff": cue_difference,
        "observer_held_bytes": {"streamed_peak": held_streamed, "stored": held_stored},
        "breakdown_seconds": breakdown,
        "refinement_seconds": {name: summarize(values)["median"] for name, values in refine_timings.items()},
        "pass2_ran": pass2_ran,
        "dynamic_fraction": dynamic_fraction,
        "coarse_fraction": coarse_fraction,
    }
    if not pass2_ran:
        section["warning"] = "the refined mask was empty, so VGGT4D skipped pass 2: the ratio is optimistic"
    if profile_table is not None:
        section["profile_table"] = profile_table
    return section


def _profile(pipe: Any, images: Any) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if images.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        pipe.run(images)
    sort_by = "self_cuda_time_total" if images.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=30)


def _peak(result: dict[str, Any]) -> Optional[int]:
    return int(result["peak_bytes"]) if result.get("ok") else None


def _cues_section(settings: BenchSettings, measure: Callable[[str, int], dict[str, Any]],
                  timing: Optional[dict[str, Any]]) -> dict[str, Any]:
    S = settings.timing_frames
    plain = _peak(measure("vggt", S))
    streamed = _peak(measure("streamed", S))
    stored = _peak(measure("stored", S))
    section: dict[str, Any] = {
        "frames": S,
        "peak_bytes": {"vggt": plain, "streamed": streamed, "stored": stored},
        "stored_over_streamed_peak": safe_ratio(stored, streamed),
        "streamed_over_vggt_peak": safe_ratio(streamed, plain),
        "stored_over_vggt_peak": safe_ratio(stored, plain),
        "extra_peak_bytes": {"streamed": None if None in (streamed, plain) else streamed - plain,
                             "stored": None if None in (stored, plain) else stored - plain},
    }
    if timing is not None:
        section["observer_held_bytes"] = timing["observer_held_bytes"]
        section["observer_held_ratio"] = safe_ratio(timing["observer_held_bytes"]["stored"],
                                                    timing["observer_held_bytes"]["streamed_peak"])
        section["seconds"] = {"streamed": timing["cue_observer_seconds"]["median"]
                              + timing["cue_finalize_seconds"]["median"],
                              "stored": timing["stored_cues_seconds"]["median"]}
        section["max_abs_diff"] = timing["streamed_vs_stored_max_abs_diff"]
    return section


def _memory_section(settings: BenchSettings, measure: Callable[[str, int], dict[str, Any]]) -> dict[str, Any]:
    frames = list(settings.frames)
    peaks: dict[str, list[Optional[int]]] = {"vggt": [], "vggt4d": []}
    for S in frames:
        for workload in ("vggt", "vggt4d"):
            peaks[workload].append(_peak(measure(workload, S)))
    section: dict[str, Any] = {"frames": frames, "peak_bytes": peaks,
                               "measure": ("torch.cuda.max_memory_allocated" if settings.device.type == "cuda"
                                           else "peak RSS (VmHWM) minus the RSS after imports, fresh process per point")}
    fits: dict[str, Optional[LinearFit]] = {}
    for workload, values in peaks.items():
        pts = [(s, v) for s, v in zip(frames, values) if v is not None]
        fits[workload] = fit_line([p[0] for p in pts], [p[1] for p in pts]) if len({p[0] for p in pts}) >= 2 \
            else None
        section[f"{workload}_fit"] = fits[workload].as_dict() if fits[workload] else None
    largest = max((i for i in range(len(frames)) if None not in (peaks["vggt"][i], peaks["vggt4d"][i])),
                  default=None)
    section["peak_mem_over_vggt"] = (safe_ratio(peaks["vggt4d"][largest], peaks["vggt"][largest])
                                     if largest is not None else None)
    section["ratio_frames"] = frames[largest] if largest is not None else None
    section["per_frame"] = [{"frames": s, "vggt": a, "vggt4d": b, "ratio": safe_ratio(b, a),
                             "vggt4d_dynamic_fraction": measure("vggt4d", s).get("dynamic_fraction")}
                            for s, a, b in zip(frames, peaks["vggt"], peaks["vggt4d"])]
    if largest is not None:
        section["vggt4d_peak_timeline"] = measure("vggt4d", frames[largest]).get("peak_timeline")
    if fits["vggt"] and fits["vggt4d"]:
        section["slope_ratio"] = safe_ratio(fits["vggt4d"].slope, fits["vggt"].slope)
    return section


def _max_frames_section(settings: BenchSettings, measure: Callable[[str, int], dict[str, Any]],
                        memory: Optional[dict[str, Any]]) -> dict[str, Any]:
    budget = settings.budget_bytes
    workloads = ("vggt4d",) if settings.quick else ("vggt4d", "vggt")
    section: dict[str, Any] = {"budget_bytes": budget, "budget_gib": budget / GIB,
                               "limit": settings.max_frames_limit}
    for workload in workloads:
        guess = settings.frames[-1] if settings.frames else settings.timing_frames
        fit = (memory or {}).get(f"{workload}_fit")
        if fit:
            solved = LinearFit(fit["slope"], fit["intercept"], fit["r2"]).solve(budget)
            if solved is not None and math.isfinite(solved):
                guess = int(math.floor(solved))
        guess = min(max(guess, 1), settings.max_frames_limit)

        def fits(S: int, workload: str = workload) -> bool:
            result = measure(workload, S)
            return bool(result.get("ok")) and int(result["peak_bytes"]) <= budget

        search = largest_fitting(fits, start=guess, lower=1, upper=settings.max_frames_limit)
        entry = search.as_dict()
        entry["guess"] = guess
        entry["peak_bytes_at_best"] = _peak(measure(workload, search.best)) if search.best else None
        section[workload] = entry
    section["frames"] = section["vggt4d"]["best"]
    if "vggt" in section:
        section["frames_over_vggt"] = safe_ratio(section["vggt4d"]["best"], section["vggt"]["best"])
    return section


# ----------------------------------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------------------------------


def write_outputs(results: dict[str, Any], output: Path, json_path: Optional[Path] = None) -> list[Path]:
    """Write ``results.json``, ``results.md``, the PNG plots (and ``profile.txt``) under ``output``; also the
    JSON to ``json_path`` when given. Returns the written paths."""
    from .report import markdown_report, write_plots

    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    profile_table = (results.get("timing") or {}).pop("profile_table", None)
    if profile_table:
        (output / "profile.txt").write_text(profile_table, encoding="utf-8")
        written.append(output / "profile.txt")
    text = json.dumps(results, indent=2, sort_keys=False, default=_json_default) + "\n"
    for path in (output / "results.json", json_path):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    (output / "results.md").write_text(markdown_report(results), encoding="utf-8")
    written.append(output / "results.md")
    written.extend(write_plots(results, output))
    return written


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")
