"""Tests of ``vggt4d bench``: the slope fit, the largest-S search, the orchestration with a fake memory probe, and
one real (tiny) ``vggt4d bench --quick`` run through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from vggt4d_ros.bench import BenchSettings, fit_line, largest_fitting, run_benchmark, write_outputs

MIB = 1 << 20


# ------------------------------------------------------------------------------------------------ slope fit


def test_fit_line_recovers_slope_and_intercept() -> None:
    frames = [2, 4, 8, 16]
    peaks = [100 * MIB + 7.5 * MIB * s for s in frames]
    fit = fit_line(frames, peaks)
    assert fit.slope == pytest.approx(7.5 * MIB)
    assert fit.intercept == pytest.approx(100 * MIB)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.solve(fit.predict(11)) == pytest.approx(11)


def test_fit_line_least_squares_with_noise() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([2.1, 3.9, 6.2, 7.8])  # about 2x
    fit = fit_line(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    assert fit.slope == pytest.approx(slope)
    assert fit.intercept == pytest.approx(intercept)
    assert 0.95 < fit.r2 < 1.0


def test_fit_line_rejects_degenerate_input() -> None:
    with pytest.raises(ValueError, match="two distinct"):
        fit_line([4, 4], [1.0, 2.0])
    with pytest.raises(ValueError, match="equal length"):
        fit_line([1, 2, 3], [1.0, 2.0])


# ------------------------------------------------------------------------------------------------ search


def _fake(limit: int):
    calls: list[int] = []

    def fits(n: int) -> bool:
        calls.append(n)
        return n <= limit

    return fits, calls


@pytest.mark.parametrize("limit", [1, 2, 7, 13, 64, 100])
@pytest.mark.parametrize("start", [1, 5, 13, 40, 200])
def test_largest_fitting_finds_the_limit(limit: int, start: int) -> None:
    fits, calls = _fake(limit)
    result = largest_fitting(fits, start=start, lower=1, upper=200)
    assert result.best == limit
    assert result.first_failure == limit + 1
    assert not result.capped and not result.exhausted
    assert len(calls) == len(set(calls))  # no value probed twice
    assert [p[0] for p in result.probes] == calls
    assert len(calls) <= 2 * math.ceil(math.log2(200)) + 2


def test_largest_fitting_good_guess_needs_two_probes() -> None:
    fits, calls = _fake(37)
    result = largest_fitting(fits, start=37, upper=1000)
    assert result.best == 37 and calls == [37, 38]


def test_largest_fitting_nothing_fits_and_capped() -> None:
    fits, _ = _fake(0)
    none = largest_fitting(fits, start=9, lower=1, upper=50)
    assert none.best == 0 and none.first_failure == 1 and not none.exhausted
    fits, _ = _fake(10_000)
    capped = largest_fitting(fits, start=3, lower=1, upper=50)
    assert capped.best == 50 and capped.capped and capped.first_failure is None


def test_largest_fitting_probe_allowance() -> None:
    fits, calls = _fake(500)
    result = largest_fitting(fits, start=1, upper=4096, max_probes=4)
    assert len(calls) == 4 and result.exhausted and result.best == max(c for c in calls if c <= 500)
    with pytest.raises(ValueError):
        largest_fitting(fits, start=1, lower=5, upper=4)


# ------------------------------------------------------------------------------------------------ orchestration


def test_memory_and_max_frames_sections_with_fake_probe(tmp_path: Path) -> None:
    """Memory vs frames and the largest-S search on synthetic peaks: 60 MiB + 10 MiB/frame for VGGT, +5 % for
    VGGT4D; budget 200 MiB -> S = 13 for VGGT4D (60 + 10.5 * 13 = 196.5)."""
    seen: list[tuple[str, int]] = []

    def probe(spec: dict, timeout: float) -> dict:
        seen.append((spec["workload"], spec["frames"]))
        assert spec["device"] == "cpu" and spec["model"] == "quick" and timeout > 0
        per_frame = 10.5 if spec["workload"] == "vggt4d" else 10.0
        return {"ok": True, "workload": spec["workload"], "frames": spec["frames"],
                "peak_bytes": int((60 + per_frame * spec["frames"]) * MIB)}

    settings = BenchSettings(quick=True, device="cpu", output=tmp_path, frames=(2, 4, 8), budget_gb=200 / 1024,
                             skip=("timing", "cues", "drift"))
    results = run_benchmark(settings, probe=probe)
    memory = results["memory"]
    assert memory["vggt_fit"]["slope"] == pytest.approx(10 * MIB)
    assert memory["vggt4d_fit"]["slope"] == pytest.approx(10.5 * MIB)
    assert memory["slope_ratio"] == pytest.approx(1.05)
    assert results["peak_mem_over_vggt"] == pytest.approx((60 + 84) / (60 + 80))
    assert results["max_frames"]["frames"] == 13
    assert results["max_frames"]["vggt4d"]["probes"][:2] == [{"frames": 13, "fits": True},
                                                             {"frames": 14, "fits": False}]
    assert len(seen) == len(set(seen))  # every point measured once
    assert "node" in results["skipped"] and "timing" in results["skipped"]
    paths = write_outputs(results, tmp_path)
    assert (tmp_path / "memory_vs_frames.png") in paths
    assert "| 8 |" in (tmp_path / "results.md").read_text(encoding="utf-8")


def test_failed_probe_counts_as_not_fitting(tmp_path: Path) -> None:
    def probe(spec: dict, timeout: float) -> dict:
        if spec["frames"] > 5:
            return {"ok": False, "workload": spec["workload"], "frames": spec["frames"], "error": "killed"}
        return {"ok": True, "workload": spec["workload"], "frames": spec["frames"],
                "peak_bytes": spec["frames"] * MIB}

    settings = BenchSettings(quick=True, device="cpu", output=tmp_path, frames=(2, 4), budget_gb=1.0,
                             skip=("timing", "cues", "drift"), max_frames_limit=64)
    results = run_benchmark(settings, probe=probe)
    assert results["max_frames"]["frames"] == 5
    assert results["max_frames"]["vggt4d"]["first_failure"] == 6


def test_settings_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiples of the patch size"):
        BenchSettings(quick=True, device="cpu", output=tmp_path, height=100)
    with pytest.raises(ValueError, match="at least two frame counts"):
        BenchSettings(quick=True, device="cpu", output=tmp_path, frames=(4,))
    with pytest.raises(ValueError, match="memory-budget-gb"):
        BenchSettings(quick=True, device="cpu", output=tmp_path, budget_gb=-1.0)


# ------------------------------------------------------------------------------------------------ real run


@pytest.mark.timeout(120)
def test_quick_bench_cli_end_to_end(tmp_path: Path) -> None:
    from vggt4d_ros.cli import main

    out = tmp_path / "out"
    json_path = tmp_path / "quick.json"
    code = main(["bench", "--quick", "--frames", "2,3", "--timing-frames", "3", "--width", "266", "--height", "140",
                 "--repeats", "1", "--threads", "1", "--memory-budget-gb", "0.1", "--max-frames-limit", "6",
                 "--output", str(out), "--json", str(json_path)])
    assert code == 0
    results = json.loads(json_path.read_text(encoding="utf-8"))
    assert results == json.loads((out / "results.json").read_text(encoding="utf-8"))
    for key in ("vggt4d_over_vggt", "refine_over_vggt", "cue_overhead_over_pass1", "peak_mem_over_vggt"):
        value = results[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    timing = results["timing"]
    assert timing["frames"] == 3 and results["image_size"] == [140, 266]
    for stage in ("pass1", "cues", "clustering", "refinement", "pass2"):
        assert math.isfinite(timing["stages"][stage]["median"]) and timing["stages"][stage]["median"] >= 0
    assert timing["vggt_seconds"]["median"] > 0 and len(timing["vggt_seconds"]["all"]) == 1
    assert timing["streamed_vs_stored_max_abs_diff"] < 1e-3  # both cue implementations agree
    assert timing["observer_held_bytes"]["stored"] > timing["observer_held_bytes"]["streamed_peak"] > 0
    assert results["model"]["aggregator"]["depth"] == 24 and results["model"]["patch_embed"]["depth"] == 24
    assert all(p["ok"] for p in results["probes"]), results["probes"]
    assert results["memory"]["frames"] == [2, 3]
    assert all(v > 0 for v in results["memory"]["peak_bytes"]["vggt4d"])
    assert results["max_frames"]["vggt4d"]["probes"]
    assert results["device"]["torch_threads"] == 1 and results["device"]["cpu"]
    for name in ("results.md", "stages.png", "memory_vs_frames.png", "cues_memory.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "stages.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "vggt4d_over_vggt" in (out / "results.md").read_text(encoding="utf-8")
