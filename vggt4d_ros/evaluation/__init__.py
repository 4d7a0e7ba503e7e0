"""Evaluation harness: DAVIS mask scores (J, F), trajectory scores (ATE, RPE via evo), dataset sequences.

``vggt4d eval`` is :func:`add_arguments` / :func:`run` (from :mod:`.cli`). The other public names are imported
lazily, so ``import vggt4d_ros.evaluation`` stays light (no torch, no evo) until one of them is used.
"""

from importlib import import_module

from vggt4d_ros.evaluation.cli import add_arguments, run
from vggt4d_ros.evaluation.errors import EvaluationError

_EXPORTS = {
    # masks
    "region_similarity": "masks", "boundary_map": "masks", "boundary_scores": "masks",
    "boundary_f_measure": "masks", "boundary_tolerance": "masks", "disk": "masks",
    "sequence_statistics": "masks", "SequenceStatistics": "masks", "model_geometry": "masks",
    "gt_to_model_geometry": "masks", "align_geometry": "masks", "read_mask": "masks", "mask_files": "masks",
    "evaluate_frames": "masks", "evaluate_mask_folders": "masks", "evaluate_masks": "masks",
    "SequenceResult": "masks", "MaskReport": "masks",
    # poses
    "parse_tum": "poses", "read_tum": "poses", "trajectory_from_tum_rows": "poses",
    "trajectory_from_matrices": "poses", "evaluate_trajectories": "poses", "evaluate_pose_files": "poses",
    "PoseMetrics": "poses",
    # datasets and sequences
    "DATASETS": "datasets", "SequenceFrames": "datasets", "open_sequence": "datasets",
    "list_sequences": "datasets", "read_rgb_list": "datasets", "stage_frames": "datasets",
    "RunSettings": "sequence", "ScoringSettings": "sequence", "run_offline": "sequence",
    "score_run": "sequence", "evaluate_sequence": "sequence",
}

__all__ = sorted([*_EXPORTS, "add_arguments", "run", "EvaluationError"])


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
