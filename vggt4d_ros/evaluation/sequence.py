"""One dataset sequence end to end: stage its frames, run ``vggt4d run`` on them, score the output.

Output folder layout (``OUT``)::

    run/            the complete ``vggt4d run`` output (masks/, poses_tum.txt, summary.json, ...)
    report.json     dataset, sequence, frame selection, run settings and timings, and the metrics:
                    ``masks`` (DAVIS J/F, see :mod:`.masks`) or ``poses`` (ATE/RPE, see :mod:`.poses`)

The staged frame folder (links to the dataset images) lives in a temporary folder inside ``OUT`` and is
removed when the run ends.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from vggt4d_ros.evaluation.datasets import SequenceFrames, stage_frames
from vggt4d_ros.evaluation.errors import EvaluationError
from vggt4d_ros.evaluation.masks import BOUND_TH, evaluate_mask_folders, MaskReport
from vggt4d_ros.evaluation.poses import DEFAULT_MAX_DIFF, evaluate_pose_files
from vggt4d_ros.model.preprocess import DEFAULT_TARGET_SIZE

logger = logging.getLogger(__name__)

RUN_SUBDIR = "run"
REPORT_NAME = "report.json"


@dataclass
class RunSettings:
    """What ``vggt4d run`` is given besides the frames (see ``vggt4d run --help``)."""

    weights: str
    config: Optional[str] = None
    device: str = "auto"
    dtype: str = "auto"
    refine: bool = True
    mode: str = "crop"
    target_size: int = DEFAULT_TARGET_SIZE

    def to_argv(self) -> list[str]:
        argv = ["--weights", str(self.weights), "--device", self.device, "--dtype", self.dtype,
                "--mode", self.mode, "--target-size", str(self.target_size)]
        if self.config:
            argv += ["--config", str(self.config)]
        if not self.refine:
            argv.append("--no-refine")
        return argv

    def to_dict(self) -> dict:
        return {"weights": str(self.weights), "config": self.config or "vggt-1b", "device": self.device,
                "dtype": self.dtype, "refine": self.refine, "mode": self.mode, "target_size": self.target_size}


@dataclass
class ScoringSettings:
    """How the run output is scored: mask geometry and boundary tolerance, pose association and alignment."""

    target_size: int = DEFAULT_TARGET_SIZE
    bound_th: float = BOUND_TH
    allow_missing: bool = False
    max_diff: float = DEFAULT_MAX_DIFF
    correct_scale: bool = True
    delta: int = 1


def run_offline(frames_dir: Path, run_dir: Path, settings: RunSettings,
                runner: Optional[Callable[[argparse.Namespace], int]] = None) -> None:
    """Run ``vggt4d run`` (:func:`vggt4d_ros.offline.run`) on a folder of frames into ``run_dir``.

    The arguments are parsed by the offline command's own parser, so every option it has keeps its default.
    ``runner`` replaces :func:`vggt4d_ros.offline.run` (same signature).
    """
    from vggt4d_ros import offline

    parser = argparse.ArgumentParser(prog="vggt4d run")
    offline.add_arguments(parser)
    ns = parser.parse_args(["--input", str(frames_dir), "--output", str(run_dir), "--overwrite",
                            *settings.to_argv()])
    rc = (runner or offline.run)(ns)
    if rc:
        raise EvaluationError(f"vggt4d run on {frames_dir} failed with exit code {rc}")


def score_run(frames: SequenceFrames, run_dir: str | Path, scoring: ScoringSettings) -> dict:
    """Score an existing ``vggt4d run`` output folder against the sequence's ground truth.

    DAVIS: ``run_dir/masks`` against the annotations of the selected frames. TUM / Bonn:
    ``run_dir/poses_tum.txt`` against ``groundtruth.txt``. Returns ``{"masks": ...}`` or ``{"poses": ...}``.
    """
    run_dir = Path(run_dir)
    if frames.gt_masks is not None:
        result = evaluate_mask_folders(run_dir / "masks", frames.gt_masks, frames=frames.frame_names,
                                       allow_missing=scoring.allow_missing, name=frames.name,
                                       target_size=scoring.target_size, bound_th=scoring.bound_th)
        return {"masks": MaskReport([result], scoring.target_size, scoring.bound_th).to_dict()}
    if frames.gt_trajectory is not None:
        pred = run_dir / "poses_tum.txt"
        if not pred.is_file():
            raise EvaluationError(f"{pred} not found; is {run_dir} a vggt4d run output?")
        metrics = evaluate_pose_files(pred, frames.gt_trajectory, max_diff=scoring.max_diff,
                                      correct_scale=scoring.correct_scale, delta=scoring.delta)
        return {"poses": metrics.to_dict()}
    raise EvaluationError(f"sequence {frames.name} has no ground truth to score")


def evaluate_sequence(
    frames: SequenceFrames,
    output: str | Path,
    settings: RunSettings,
    scoring: Optional[ScoringSettings] = None,
    overwrite: bool = False,
    selection: Optional[dict] = None,
    runner: Optional[Callable[[argparse.Namespace], int]] = None,
) -> dict:
    """Run VGGT4D on a dataset sequence and score it; writes ``OUT/run/`` and ``OUT/report.json``.

    Args:
        frames: the sequence and its selected frames (:func:`.datasets.open_sequence`).
        output: output folder; must be absent or empty unless ``overwrite``.
        settings: model and preprocessing settings for ``vggt4d run``.
        scoring: scoring settings (default :class:`ScoringSettings` with ``settings.target_size``).
        selection: frame-selection parameters to record in the report.
        runner: replacement for :func:`vggt4d_ros.offline.run`.

    Returns:
        The report (also written to ``OUT/report.json``).
    """
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise EvaluationError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise EvaluationError(f"output folder {out} exists and is not empty (use --overwrite)")
    scoring = scoring or ScoringSettings(target_size=settings.target_size)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_NAME).unlink(missing_ok=True)  # never leave an old report beside a new, failed run
    run_dir = out / RUN_SUBDIR
    with tempfile.TemporaryDirectory(prefix=".frames-", dir=out) as staging:
        stage_frames(frames, staging)
        logger.info("running VGGT4D on %d frames of %s/%s", len(frames), frames.dataset, frames.name)
        run_offline(Path(staging), run_dir, settings, runner)
    metrics = score_run(frames, run_dir, scoring)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    report = {
        "dataset": frames.dataset,
        "sequence": frames.name,
        "frames": {"selected": len(frames), "total": frames.total_frames, **(selection or {}),
                   "names": list(frames.frame_names)},
        "run": {"folder": RUN_SUBDIR, "settings": settings.to_dict(), "timings_s": summary.get("timings_s", {})},
        **metrics,
    }
    (out / REPORT_NAME).write_text(json.dumps(report, indent=1))
    logger.info("wrote %s", out / REPORT_NAME)
    return report


def headline(report: dict) -> list[str]:
    """Short human-readable lines for a report of :func:`evaluate_sequence` (used by the CLI)."""
    lines = [f"{report['dataset']}/{report['sequence']}: {report['frames']['selected']} frames"]
    if "masks" in report:
        lines += format_mask_table(report["masks"])
    if "poses" in report:
        lines += format_pose_lines(report["poses"])
    return lines


def format_mask_table(report: dict) -> list[str]:
    """Table lines (one per sequence plus the mean) of a :meth:`MaskReport.to_dict` report."""
    head = f"{'sequence':<24} {'J&F':>6} {'J-mean':>7} {'J-rec':>6} {'J-dec':>6} {'F-mean':>7} {'F-rec':>6} " \
           f"{'F-dec':>6} {'frames':>6}"
    lines = [head]
    rows: Sequence[tuple[str, dict]] = list(report["sequences"].items())
    if len(rows) > 1:
        rows = [*rows, ("mean", report["overall"])]
    for name, r in rows:
        lines.append(f"{name[:24]:<24} {r['J&F']:6.3f} {r['J']['mean']:7.3f} {r['J']['recall']:6.3f} "
                     f"{r['J']['decay']:6.3f} {r['F']['mean']:7.3f} {r['F']['recall']:6.3f} {r['F']['decay']:6.3f} "
                     f"{r['num_frames']:6d}")
    return lines


def format_pose_lines(metrics: dict) -> list[str]:
    """Lines for a :meth:`PoseMetrics.to_dict` result."""
    a, t, r = metrics["ate"], metrics["rpe_trans"], metrics["rpe_rot_deg"]
    return [
        f"matched {metrics['num_matched']} poses (pred {metrics['num_pred']}, gt {metrics['num_gt']}), "
        f"alignment {metrics['alignment']}, scale {metrics['scale']:.4f}",
        f"ATE       rmse {a['rmse']:.4f}  mean {a['mean']:.4f}  median {a['median']:.4f}  max {a['max']:.4f}  (m)",
        f"RPE trans rmse {t['rmse']:.4f}  mean {t['mean']:.4f}  (m / {metrics['rpe_delta_frames']} frame)",
        f"RPE rot   rmse {r['rmse']:.4f}  mean {r['mean']:.4f}  (deg / {metrics['rpe_delta_frames']} frame)",
    ]
