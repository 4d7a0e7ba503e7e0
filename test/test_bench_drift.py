"""`vggt4d bench` reports the stitching drift (1000 synthetic keyframes, with and without odometry)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.timeout(300)
def test_bench_cli_reports_stitching_drift(tmp_path: Path) -> None:
    from vggt4d_ros.cli import main

    out = tmp_path / "out"
    code = main(["bench", "--quick", "--skip", "timing,cues,memory,max_frames,node", "--output", str(out)])
    assert code == 0
    drift = json.loads((out / "results.json").read_text(encoding="utf-8"))["drift"]
    assert drift["keyframes"] == 1000 and drift["window"] == 16 and drift["overlap"] == 6
    odo, plain = drift["with_odometry"], drift["without_odometry"]
    assert odo["metric"] and not plain["metric"]
    # odometry pins the scale: metric trajectory within 2 % of the path without any alignment
    assert odo["max_error_over_path"] < 0.02 and abs(odo["end_scale_error"]) < 0.02
    # without odometry the scale is only relative, but the symmetric Sim(3) scale keeps it from drifting (Umeyama's
    # scale, biased by the depth noise, drifted by about -40 % over the same loop)
    assert abs(plain["scale_drift"]) < 0.1 and plain["ate_over_path"] < 0.02
    report = (out / "results.md").read_text(encoding="utf-8")
    assert "## Stitching drift, 1000 synthetic keyframes" in report and "| with odometry |" in report
