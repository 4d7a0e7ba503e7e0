"""``vggt4d bench --soak N`` (short version): frames through the node with resets, segment breaks and bad
frames, through real DDS on localhost; the report must show no lost output and an exact accounting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ros_helpers import require_install_space, ros_env


def test_short_soak_loses_nothing(tmp_path: Path):
    require_install_space()
    env = ros_env()
    env["OMP_NUM_THREADS"] = "1"
    script = Path(sys.executable).parent / "vggt4d"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "vggt4d_ros.cli"]
    proc = subprocess.run(cmd + ["bench", "--soak", "48", "--output", str(tmp_path), "--json",
                                 str(tmp_path / "out.json")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "out.json").read_text())["soak"]
    assert report["ok"] and all(report["accounting"].values()), report["accounting"]
    assert report["lost"] and all(n == 0 for n in report["lost"].values()), report["lost"]
    assert report["published"]["dynamic_mask"] == report["counters"]["frames_processed"] > 0
    assert report["resets"] >= 1 and report["segment_breaks"] >= 2 and report["bad_frames"] >= 3
    assert report["counters"]["invalid.size_mismatch"] == report["bad_frames"]
    assert report["counters"]["segments"] >= 2
    assert report["reset_round_trip_s_max"] < 1.0
    assert report["rss_mib"] and "rss_slope_mib_per_1000_frames" in report
    assert "soak ok" in proc.stderr + proc.stdout
