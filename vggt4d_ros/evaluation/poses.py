"""Camera trajectory evaluation: ATE and RPE after Sim(3) (or SE(3)) alignment, computed with ``evo``.

Protocol (the TUM RGB-D benchmark's, as the VGGT/VGGT4D pose tables use it):

1. Both trajectories are read from TUM files: one pose per line, ``timestamp tx ty tz qx qy qz qw``, the pose
   of the camera in the world (camera-to-world), timestamps in seconds; ``#`` starts a comment, commas are
   accepted as separators. Quaternions are normalised.
2. Poses are associated by timestamp: each pose of the shorter trajectory is paired with the nearest pose of
   the other when they are at most ``max_diff`` seconds apart (``evo.core.sync.associate_trajectories``,
   default 0.01 s); unpaired poses are dropped. At least 3 pairs are needed (and ``delta + 1`` for RPE).
3. The prediction is aligned to the ground truth with Umeyama's least-squares method on the camera positions:
   a similarity (rotation, translation and scale, Sim(3)) by default, a rigid motion (SE(3)) with
   ``correct_scale=False``. VGGT's poses have an arbitrary scale, so Sim(3) is the meaningful default.
4. **ATE** (absolute trajectory error): the distances ``|t_gt,i - t_aligned,i|`` between associated
   positions; reported as RMSE, mean, median, std, min and max, in the ground truth's unit (metres for TUM
   RGB-D and Bonn).
5. **RPE** (relative pose error) over ``delta`` associated frames (default 1, consecutive pairs):
   ``E_i = (Q_i^-1 Q_i+delta)^-1 (P_i^-1 P_i+delta)`` with Q the ground truth and P the aligned prediction; the
   translation part ``|trans(E_i)|`` is in the ground truth's unit per ``delta`` frames, the rotation part is
   the angle of ``rot(E_i)`` in **degrees**. Same statistics as ATE.

``evo`` is an optional dependency (``pip install 'vggt4d_ros[eval]'``); it is imported when a function here
first needs it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vggt4d_ros.evaluation.errors import EvaluationError

if TYPE_CHECKING:  # pragma: no cover
    from evo.core.trajectory import PoseTrajectory3D

logger = logging.getLogger(__name__)

DEFAULT_MAX_DIFF = 0.01
"""Largest timestamp difference (seconds) for two poses to be associated."""

MIN_POSES = 3
"""Fewest associated poses an alignment accepts."""

STATISTICS = ("rmse", "mean", "median", "std", "min", "max")

_SEPARATORS = re.compile(r"[\s,]+")


def _evo() -> dict[str, Any]:
    """The evo modules used here, imported on first use with a clear error when evo is not installed."""
    try:
        from evo import EvoException
        from evo.core import metrics, sync
        from evo.core.geometry import GeometryException
        from evo.core.trajectory import PoseTrajectory3D
    except ImportError as exc:
        raise EvaluationError(
            f"pose evaluation needs the evo package ({exc}); install it with: pip install 'vggt4d_ros[eval]'"
        ) from exc
    return {"metrics": metrics, "sync": sync, "PoseTrajectory3D": PoseTrajectory3D,
            "GeometryException": GeometryException, "EvoException": EvoException}


def parse_tum(text: str, source: str = "<text>") -> np.ndarray:
    """Parse TUM trajectory text into ``[N, 8]`` float64 rows ``t tx ty tz qx qy qz qw``.

    Raises:
        EvaluationError: a line without 8 numbers, non-finite values, a zero quaternion, or no poses at all.
    """
    rows: list[list[float]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        fields = _SEPARATORS.split(body)
        if len(fields) != 8:
            raise EvaluationError(
                f"{source}:{lineno}: expected 8 values 'timestamp tx ty tz qx qy qz qw', got {len(fields)}"
            )
        try:
            rows.append([float(v) for v in fields])
        except ValueError as exc:
            raise EvaluationError(f"{source}:{lineno}: not a number in {body!r}") from exc
    if not rows:
        raise EvaluationError(f"{source}: no poses (expected lines 'timestamp tx ty tz qx qy qz qw')")
    data = np.asarray(rows, dtype=np.float64)
    bad = ~np.all(np.isfinite(data), axis=1)
    if bad.any():
        raise EvaluationError(f"{source}: {int(bad.sum())} poses have non-finite values (first at pose "
                              f"{int(np.argmax(bad))})")
    norms = np.linalg.norm(data[:, 4:8], axis=1)
    if np.any(norms < 1e-9):
        raise EvaluationError(f"{source}: pose {int(np.argmax(norms < 1e-9))} has a zero quaternion")
    return data


def trajectory_from_tum_rows(rows: np.ndarray, name: str | None = None) -> "PoseTrajectory3D":
    """evo trajectory from ``[N, 8]`` TUM rows; quaternions normalised, poses sorted by time."""
    evo = _evo()
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != 8:
        raise ValueError(f"TUM rows must have shape [N, 8], got {rows.shape}")
    order = np.argsort(rows[:, 0], kind="stable")
    if np.any(order != np.arange(len(order))):
        logger.warning("%s: timestamps are not increasing; poses sorted by time", name or "trajectory")
        rows = rows[order]
    quat_xyzw = rows[:, 4:8] / np.linalg.norm(rows[:, 4:8], axis=1, keepdims=True)
    quat_wxyz = np.roll(quat_xyzw, 1, axis=1)
    return evo["PoseTrajectory3D"](positions_xyz=rows[:, 1:4], orientations_quat_wxyz=quat_wxyz,
                                   timestamps=rows[:, 0], name=name)


def read_tum(path: str | Path) -> "PoseTrajectory3D":
    """Read a TUM trajectory file (``timestamp tx ty tz qx qy qz qw`` per line) as an evo trajectory."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EvaluationError(f"cannot read trajectory {path}: {exc.strerror or exc}") from exc
    return trajectory_from_tum_rows(parse_tum(text, str(path)), name=path.name)


def trajectory_from_matrices(stamps_s: np.ndarray, c2w: np.ndarray, name: str | None = None) -> "PoseTrajectory3D":
    """evo trajectory from timestamps ``[N]`` (seconds) and camera-to-world poses ``[N, 4, 4]`` or ``[N, 3, 4]``."""
    evo = _evo()
    stamps = np.asarray(stamps_s, dtype=np.float64).reshape(-1)
    m = np.asarray(c2w, dtype=np.float64)
    if m.ndim != 3 or m.shape[1:] not in ((4, 4), (3, 4)) or m.shape[0] != stamps.shape[0]:
        raise ValueError(f"c2w must be [N, 4, 4] or [N, 3, 4] with N = {stamps.shape[0]} stamps, got {m.shape}")
    poses = np.tile(np.eye(4), (m.shape[0], 1, 1))
    poses[:, :3, :] = m[:, :3, :]
    return evo["PoseTrajectory3D"](poses_se3=list(poses), timestamps=stamps, name=name)


@dataclass
class PoseMetrics:
    """ATE and RPE of one associated, aligned trajectory pair (units in the module docstring).

    Attributes:
        num_matched: associated pose pairs used; ``num_pred`` / ``num_gt``: poses in each file.
        alignment: ``"sim3"`` or ``"se3"``; ``scale``: scale applied to the prediction (1 for SE(3)).
        rotation / translation: the alignment applied to the prediction (``[3, 3]``, ``[3]``).
        ate: translation ATE statistics; rpe_trans: RPE translation; rpe_rot_deg: RPE rotation in degrees.
    """

    num_matched: int
    num_pred: int
    num_gt: int
    max_diff: float
    alignment: str
    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    delta: int
    ate: dict[str, float]
    rpe_trans: dict[str, float]
    rpe_rot_deg: dict[str, float]

    def to_dict(self) -> dict:
        return {
            "num_matched": self.num_matched, "num_pred": self.num_pred, "num_gt": self.num_gt,
            "max_diff_s": self.max_diff, "alignment": self.alignment, "scale": self.scale,
            "alignment_rotation": self.rotation.tolist(), "alignment_translation": self.translation.tolist(),
            "rpe_delta_frames": self.delta,
            "units": {"ate": "ground-truth unit (m)", "rpe_trans": "ground-truth unit (m) per delta frames",
                      "rpe_rot_deg": "degrees per delta frames"},
            "ate": dict(self.ate), "rpe_trans": dict(self.rpe_trans), "rpe_rot_deg": dict(self.rpe_rot_deg),
        }


def _stats(metric: Any) -> dict[str, float]:
    values = metric.get_all_statistics()
    return {k: float(values[k]) for k in STATISTICS}


def evaluate_trajectories(
    pred: "PoseTrajectory3D",
    gt: "PoseTrajectory3D",
    max_diff: float = DEFAULT_MAX_DIFF,
    correct_scale: bool = True,
    delta: int = 1,
) -> PoseMetrics:
    """Associate, align (Sim(3) or SE(3)) and score a predicted trajectory against the ground truth.

    The inputs are not modified.

    Raises:
        EvaluationError: fewer than ``max(3, delta + 1)`` associated poses, or a degenerate alignment (e.g.
            all matched positions identical or collinear).
    """
    if max_diff < 0:
        raise ValueError(f"max_diff must be >= 0 seconds, got {max_diff}")
    if delta < 1:
        raise ValueError(f"delta must be >= 1 frame, got {delta}")
    evo = _evo()
    metrics, sync = evo["metrics"], evo["sync"]
    need = max(MIN_POSES, delta + 1)
    span_pred = (float(pred.timestamps[0]), float(pred.timestamps[-1]))
    span_gt = (float(gt.timestamps[0]), float(gt.timestamps[-1]))
    try:
        gt_sync, pred_sync = sync.associate_trajectories(gt, pred, max_diff=max_diff)
    except evo["EvoException"]:
        gt_sync = None
    matched = 0 if gt_sync is None else gt_sync.num_poses
    if matched < need:
        raise EvaluationError(
            f"only {matched} poses of the prediction ({pred.num_poses} poses, t = {span_pred[0]:.3f}.."
            f"{span_pred[1]:.3f} s) match the ground truth ({gt.num_poses} poses, t = {span_gt[0]:.3f}.."
            f"{span_gt[1]:.3f} s) within {max_diff} s; need at least {need} (check that both use the same clock "
            f"in seconds, or raise --max-diff)"
        )
    try:
        rotation, translation, scale = pred_sync.align(gt_sync, correct_scale=correct_scale)
    except evo["GeometryException"] as exc:
        raise EvaluationError(
            f"cannot align the {matched} matched poses ({exc}); the predicted or ground-truth camera positions "
            f"are degenerate (identical or collinear)"
        ) from exc
    data = (gt_sync, pred_sync)
    ate = metrics.APE(metrics.PoseRelation.translation_part)
    ate.process_data(data)
    rpe_t = metrics.RPE(metrics.PoseRelation.translation_part, delta=delta, delta_unit=metrics.Unit.frames,
                        all_pairs=False)
    rpe_t.process_data(data)
    rpe_r = metrics.RPE(metrics.PoseRelation.rotation_angle_deg, delta=delta, delta_unit=metrics.Unit.frames,
                        all_pairs=False)
    rpe_r.process_data(data)
    logger.info("matched %d of %d predicted poses; ATE RMSE %.4f, scale %.4f", matched, pred.num_poses,
                _stats(ate)["rmse"], float(scale))
    return PoseMetrics(
        num_matched=int(matched), num_pred=int(pred.num_poses), num_gt=int(gt.num_poses), max_diff=float(max_diff),
        alignment="sim3" if correct_scale else "se3", scale=float(scale),
        rotation=np.asarray(rotation, dtype=np.float64), translation=np.asarray(translation, dtype=np.float64),
        delta=int(delta), ate=_stats(ate), rpe_trans=_stats(rpe_t), rpe_rot_deg=_stats(rpe_r),
    )


def evaluate_pose_files(
    pred_path: str | Path,
    gt_path: str | Path,
    max_diff: float = DEFAULT_MAX_DIFF,
    correct_scale: bool = True,
    delta: int = 1,
) -> PoseMetrics:
    """:func:`evaluate_trajectories` on two TUM files (e.g. ``poses_tum.txt`` of ``vggt4d run`` and
    ``groundtruth.txt`` of a TUM RGB-D / Bonn sequence)."""
    return evaluate_trajectories(read_tum(pred_path), read_tum(gt_path), max_diff=max_diff,
                                 correct_scale=correct_scale, delta=delta)
