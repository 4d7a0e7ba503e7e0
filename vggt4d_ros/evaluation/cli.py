"""``vggt4d eval``: DAVIS mask scores, ATE/RPE pose scores, and whole dataset sequences.

::

    vggt4d eval masks    --pred DIR --gt DIR [--allow-missing] [--target-size 518] [--json OUT]
    vggt4d eval poses    --pred poses_tum.txt --gt groundtruth.txt [--max-diff 0.01] [--no-scale] [--json OUT]
    vggt4d eval sequence --dataset {davis,tum,bonn} --root DIR --sequence NAME --output DIR
                         [--weights W --config C --device D --dtype T] [--start --stride --max-frames]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from vggt4d_ros.cli import CLIError
from vggt4d_ros.evaluation.errors import EvaluationError

logger = logging.getLogger(__name__)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _add_mask_scoring(p: argparse.ArgumentParser) -> None:
    from vggt4d_ros.evaluation.masks import BOUND_TH

    p.add_argument("--bound-th", type=float, default=BOUND_TH,
                   help="boundary tolerance, fraction of the image diagonal (default: %(default)s)")
    p.add_argument("--allow-missing", action="store_true",
                   help="score frames without a predicted mask as empty instead of failing")


def _add_pose_scoring(p: argparse.ArgumentParser) -> None:
    from vggt4d_ros.evaluation.poses import DEFAULT_MAX_DIFF

    p.add_argument("--max-diff", type=_non_negative_float, default=DEFAULT_MAX_DIFF,
                   help="largest timestamp difference in seconds for associated poses (default: %(default)s)")
    p.add_argument("--no-scale", action="store_true", help="SE(3) alignment instead of Sim(3) (no scale)")
    p.add_argument("--delta", type=_positive_int, default=1, help="RPE step in frames (default: %(default)s)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``masks``, ``poses`` and ``sequence`` sub-commands of ``vggt4d eval``."""
    from vggt4d_ros.model.preprocess import DEFAULT_TARGET_SIZE
    from vggt4d_ros.offline import add_model_arguments

    sub = parser.add_subparsers(dest="eval_command", metavar="KIND", required=True)

    p = sub.add_parser("masks", help="DAVIS J and F of predicted masks against ground-truth masks",
                       description="DAVIS J (IoU) and F (boundary) with mean / recall / decay. Frames are matched "
                                   "by file stem; any non-zero pixel is foreground. A prediction at the ground "
                                   "truth's size is compared there; one at the model geometry (TARGET_SIZE wide, "
                                   "height a multiple of 14, centre-cropped) is compared with the ground truth "
                                   "resized to it (nearest).")
    p.add_argument("--pred", required=True, help="folder of predicted masks (or of one folder per sequence)")
    p.add_argument("--gt", required=True, help="folder of ground-truth masks (or of one folder per sequence)")
    p.add_argument("--target-size", type=int, default=DEFAULT_TARGET_SIZE,
                   help="model width that defines the model geometry (default: %(default)s)")
    _add_mask_scoring(p)
    p.add_argument("--json", default=None, help="also write the full report (per-frame scores) to this file")
    p.set_defaults(eval_func=_run_masks)

    p = sub.add_parser("poses", help="ATE and RPE of a TUM trajectory against the ground truth (evo)",
                       description="Associates poses by timestamp, aligns the prediction with Sim(3) (Umeyama "
                                   "with scale; SE(3) with --no-scale), and reports ATE and RPE (translation in "
                                   "the ground truth's unit, rotation in degrees).")
    p.add_argument("--pred", required=True, help="predicted trajectory, TUM format (e.g. poses_tum.txt)")
    p.add_argument("--gt", required=True, help="ground-truth trajectory, TUM format (e.g. groundtruth.txt)")
    _add_pose_scoring(p)
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    p.set_defaults(eval_func=_run_poses)

    p = sub.add_parser("sequence", help="run VGGT4D on a DAVIS / TUM RGB-D / Bonn sequence and score it",
                       description="Runs `vggt4d run` on the selected frames of a dataset sequence and scores "
                                   "the masks (DAVIS) or the poses (TUM RGB-D, Bonn); writes OUTPUT/run/ and "
                                   "OUTPUT/report.json.")
    p.add_argument("--dataset", required=True, choices=("davis", "tum", "bonn"), help="dataset layout")
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--sequence", required=True, help="sequence name")
    p.add_argument("--output", required=True, help="output folder (must be empty unless --overwrite)")
    add_model_arguments(p)
    p.add_argument("--no-refine", action="store_true", help="skip the projection refinement")
    p.add_argument("--mode", default="crop", choices=("crop", "pad"), help="preprocessing mode (default: crop)")
    p.add_argument("--target-size", type=int, default=DEFAULT_TARGET_SIZE,
                   help="model input width in pixels (default: %(default)s)")
    p.add_argument("--start", type=int, default=0, help="first frame index used (default: 0)")
    p.add_argument("--stride", type=_positive_int, default=1, help="use every N-th frame (default: 1)")
    p.add_argument("--max-frames", type=_positive_int, default=None, help="use at most this many frames")
    p.add_argument("--resolution", default="480p", help="DAVIS resolution folder (default: %(default)s)")
    _add_mask_scoring(p)
    _add_pose_scoring(p)
    p.add_argument("--overwrite", action="store_true", help="replace the contents of an existing output folder")
    p.set_defaults(eval_func=_run_sequence)


def _write_json(path: Optional[str], data: dict) -> None:
    if not path:
        return
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(data, indent=1))
    except OSError as exc:
        raise CLIError(f"cannot write {target}: {exc.strerror or exc}") from exc
    logger.info("wrote %s", target)


def _print(lines: list[str]) -> None:
    sys.stdout.write("\n".join(lines) + "\n")


def _run_masks(args: argparse.Namespace) -> int:
    from vggt4d_ros.evaluation.masks import evaluate_masks
    from vggt4d_ros.evaluation.sequence import format_mask_table

    report = evaluate_masks(args.pred, args.gt, allow_missing=args.allow_missing, target_size=args.target_size,
                            bound_th=args.bound_th).to_dict()
    _print(format_mask_table(report))
    _write_json(args.json, report)
    return 0


def _run_poses(args: argparse.Namespace) -> int:
    from vggt4d_ros.evaluation.poses import evaluate_pose_files
    from vggt4d_ros.evaluation.sequence import format_pose_lines

    metrics = evaluate_pose_files(args.pred, args.gt, max_diff=args.max_diff, correct_scale=not args.no_scale,
                                  delta=args.delta).to_dict()
    _print(format_pose_lines(metrics))
    _write_json(args.json, metrics)
    return 0


def _run_sequence(args: argparse.Namespace) -> int:
    from vggt4d_ros.evaluation.datasets import open_sequence
    from vggt4d_ros.evaluation.sequence import RunSettings, ScoringSettings, evaluate_sequence, headline

    frames = open_sequence(args.dataset, args.root, args.sequence, start=args.start, stride=args.stride,
                           max_frames=args.max_frames, resolution=args.resolution)
    settings = RunSettings(weights=args.weights, config=args.config, device=args.device, dtype=args.dtype,
                           refine=not args.no_refine, mode=args.mode, target_size=args.target_size)
    scoring = ScoringSettings(target_size=args.target_size, bound_th=args.bound_th,
                              allow_missing=args.allow_missing, max_diff=args.max_diff,
                              correct_scale=not args.no_scale, delta=args.delta)
    selection = {"start": args.start, "stride": args.stride, "max_frames": args.max_frames}
    report = evaluate_sequence(frames, args.output, settings, scoring, overwrite=args.overwrite,
                               selection=selection)
    _print(headline(report) + [f"report: {Path(args.output) / 'report.json'}"])
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``vggt4d eval``: runs the chosen sub-command; evaluation errors become one-line errors."""
    func = getattr(args, "eval_func", None)
    if func is None:
        raise CLIError("choose what to evaluate: masks, poses or sequence")
    try:
        return int(func(args) or 0)
    except EvaluationError as exc:
        raise CLIError(str(exc)) from exc
