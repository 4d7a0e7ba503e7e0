"""Trajectory evaluation (vggt4d_ros.evaluation.poses, evo based) and ``vggt4d eval poses``: known answers.

Construction with an exact answer: clean camera-to-world poses ``G``; the ground truth is ``G`` with position
noise ``n`` made orthogonal to ``[1, p_x, p_y, p_z]`` over the frames (so it has zero mean and no correlation
with the positions); the prediction is a known Sim(3) ``S`` applied to ``G``. The best alignment of the
prediction to the ground truth is then exactly ``S^-1`` (cross-covariance symmetric, scale term unchanged), so
the ATE errors are exactly ``|n_i|`` and the aligned prediction is exactly ``G``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vggt4d_ros.cli import main
from vggt4d_ros.evaluation import EvaluationError
from vggt4d_ros.evaluation.poses import (
    evaluate_pose_files,
    evaluate_trajectories,
    parse_tum,
    read_tum,
    trajectory_from_matrices,
)
from vggt4d_ros.windows.trajectory import save_tum

N = 30
T0 = 1_305_031_102_000_000_000  # TUM-like clock, ns


def clean_poses(n: int = N) -> np.ndarray:
    """Smooth non-planar camera-to-world poses ``[n, 4, 4]``."""
    t = np.linspace(0.0, 3.0, n)
    pos = np.stack([np.cos(t), 0.5 * np.sin(1.3 * t), 0.3 * t + 0.1 * t * t], axis=1)
    rot = Rotation.from_euler("zyx", np.stack([0.4 * t, 0.2 * np.sin(t), 0.1 * t], axis=1)).as_matrix()
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, :3, :3] = rot
    poses[:, :3, 3] = pos
    return poses


def orthogonal_noise(positions: np.ndarray, rms: float, seed: int = 0) -> np.ndarray:
    """``[n, 3]`` noise with RMS norm ``rms``, zero mean and zero correlation with the positions."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=positions.shape)
    basis = np.concatenate([np.ones((len(positions), 1)), positions], axis=1)
    noise -= basis @ np.linalg.lstsq(basis, noise, rcond=None)[0]
    return noise * rms / np.sqrt(np.mean(np.sum(noise**2, axis=1)))


def sim3(scale: float, rotvec, translation) -> tuple[float, np.ndarray, np.ndarray]:
    return scale, Rotation.from_rotvec(rotvec).as_matrix(), np.asarray(translation, dtype=np.float64)


def apply_sim3(s, R, t, poses: np.ndarray) -> np.ndarray:
    """World change of camera-to-world poses: position ``s R p + t``, orientation ``R R_i``."""
    out = poses.copy()
    out[:, :3, :3] = R @ poses[:, :3, :3]
    out[:, :3, 3] = s * poses[:, :3, 3] @ R.T + t
    return out


def stamps_s(n: int = N, period_ns: int = 100_000_000, offset_ns: int = 0) -> np.ndarray:
    return (T0 + offset_ns + np.arange(n) * period_ns) / 1e9


S_KNOWN = sim3(2.5, [0.3, -0.2, 0.5], [1.0, -2.0, 3.0])


def case(noise_rms: float = 0.02, s=S_KNOWN):
    g = clean_poses()
    noise = orthogonal_noise(g[:, :3, 3], noise_rms) if noise_rms else np.zeros((N, 3))
    gt = g.copy()
    gt[:, :3, 3] += noise
    pred = apply_sim3(*s, g)
    return g, gt, pred, noise


def rpe_reference(gt: np.ndarray, aligned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TUM RPE over consecutive frames, straight from the definition: translation norms and angles (deg)."""
    q_rel = np.linalg.inv(gt[:-1]) @ gt[1:]
    p_rel = np.linalg.inv(aligned[:-1]) @ aligned[1:]
    e = np.linalg.inv(q_rel) @ p_rel
    trans = np.linalg.norm(e[:, :3, 3], axis=1)
    cos = np.clip((np.trace(e[:, :3, :3], axis1=1, axis2=2) - 1) / 2, -1, 1)
    return trans, np.degrees(np.arccos(cos))


def rmse(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


def test_ate_equals_the_known_noise():
    g, gt, pred, noise = case(noise_rms=0.02)
    m = evaluate_trajectories(trajectory_from_matrices(stamps_s(), pred), trajectory_from_matrices(stamps_s(), gt))
    norms = np.linalg.norm(noise, axis=1)
    assert m.num_matched == N and m.alignment == "sim3"
    assert m.ate["rmse"] == pytest.approx(0.02, rel=1e-9)
    assert m.ate["mean"] == pytest.approx(norms.mean(), rel=1e-9)
    assert m.ate["median"] == pytest.approx(np.median(norms), rel=1e-9)
    assert m.ate["max"] == pytest.approx(norms.max(), rel=1e-9)
    assert m.scale == pytest.approx(1 / 2.5, rel=1e-9)
    np.testing.assert_allclose(m.rotation, S_KNOWN[1].T, atol=1e-9)
    # the aligned prediction is exactly the clean trajectory: RPE from the definition
    trans, angle = rpe_reference(gt, g)
    assert m.rpe_trans["rmse"] == pytest.approx(rmse(trans), rel=1e-7)
    assert m.rpe_rot_deg["rmse"] == pytest.approx(rmse(angle), abs=1e-6)


def test_noise_free_prediction_scores_zero():
    _, gt, pred, _ = case(noise_rms=0.0)
    m = evaluate_trajectories(trajectory_from_matrices(stamps_s(), pred), trajectory_from_matrices(stamps_s(), gt))
    assert m.ate["rmse"] < 1e-9 and m.ate["max"] < 1e-9
    assert m.rpe_trans["rmse"] < 1e-9
    assert m.rpe_rot_deg["rmse"] < 1e-5


def test_rpe_rotation_of_one_perturbed_orientation():
    _, gt, pred, _ = case(noise_rms=0.0)
    theta = 2.0
    pred[10, :3, :3] = pred[10, :3, :3] @ Rotation.from_rotvec([0, np.radians(theta), 0]).as_matrix()
    m = evaluate_trajectories(trajectory_from_matrices(stamps_s(), pred), trajectory_from_matrices(stamps_s(), gt))
    # pairs (9, 10) and (10, 11) are off by theta, the other N - 3 pairs by 0; positions are untouched
    assert m.rpe_rot_deg["max"] == pytest.approx(theta, rel=1e-7)
    assert m.rpe_rot_deg["rmse"] == pytest.approx(theta * np.sqrt(2 / (N - 1)), rel=1e-7)
    assert m.ate["rmse"] < 1e-9


def test_se3_alignment_keeps_the_scale():
    rigid = sim3(1.0, [0.1, 0.2, -0.3], [0.5, 0.0, -1.0])
    _, gt, pred, _ = case(noise_rms=0.05, s=rigid)
    m = evaluate_trajectories(trajectory_from_matrices(stamps_s(), pred), trajectory_from_matrices(stamps_s(), gt),
                              correct_scale=False)
    assert m.alignment == "se3" and m.scale == 1.0
    assert m.ate["rmse"] == pytest.approx(0.05, rel=1e-9)
    _, gt, pred, _ = case(noise_rms=0.05)  # scale 2.5: SE(3) cannot undo it
    m = evaluate_trajectories(trajectory_from_matrices(stamps_s(), pred), trajectory_from_matrices(stamps_s(), gt),
                              correct_scale=False)
    assert m.ate["rmse"] > 0.3


def test_timestamp_association():
    g, gt, pred, noise = case(noise_rms=0.01)
    # ground truth at 100 Hz (10x the poses; the extra ones far from any prediction), prediction 4 ms late
    dense = np.repeat(gt, 10, axis=0)
    off = np.arange(len(dense)) % 10 != 0
    dense[off, :3, 3] += np.random.default_rng(1).normal(scale=2.0, size=(int(off.sum()), 3))
    gt_traj = trajectory_from_matrices(stamps_s(10 * N, period_ns=10_000_000), dense)
    late = trajectory_from_matrices(stamps_s(offset_ns=4_000_000), pred)
    m = evaluate_trajectories(late, gt_traj)
    assert m.num_matched == N and m.num_gt == 10 * N and m.num_pred == N
    assert m.ate["rmse"] == pytest.approx(0.01, rel=1e-9)
    # 20 ms late: the nearest ground-truth pose is now 10 i + 2, one of the displaced ones
    very_late = trajectory_from_matrices(stamps_s(offset_ns=20_000_000), pred)
    assert evaluate_trajectories(very_late, gt_traj).ate["rmse"] > 1.0
    sparse_gt = trajectory_from_matrices(stamps_s(), gt)
    with pytest.raises(EvaluationError, match="only 0 poses .* within 0.01 s; need at least 3"):
        evaluate_trajectories(very_late, sparse_gt)
    assert evaluate_trajectories(very_late, sparse_gt, max_diff=0.03).num_matched == N


def test_too_few_and_degenerate_poses():
    _, gt, pred, _ = case(noise_rms=0.0)
    two = trajectory_from_matrices(stamps_s()[:2], pred[:2])
    with pytest.raises(EvaluationError, match="only 2 poses .* need at least 3"):
        evaluate_trajectories(two, trajectory_from_matrices(stamps_s(), gt))
    with pytest.raises(EvaluationError, match="need at least 6"):
        evaluate_trajectories(trajectory_from_matrices(stamps_s()[:5], pred[:5]),
                              trajectory_from_matrices(stamps_s(), gt), delta=5)
    still = pred.copy()
    still[:, :3, 3] = [1.0, 2.0, 3.0]
    with pytest.raises(EvaluationError, match="cannot align"):
        evaluate_trajectories(trajectory_from_matrices(stamps_s(), still), trajectory_from_matrices(stamps_s(), gt))


def test_tum_parsing(tmp_path):
    rows = parse_tum("# header\n1.0 0 0 0 0 0 0 2\n\n2.5, 1, 2, 3, 0, 0, 0, 1  # comment\n")
    np.testing.assert_allclose(rows, [[1, 0, 0, 0, 0, 0, 0, 2], [2.5, 1, 2, 3, 0, 0, 0, 1]])
    with pytest.raises(EvaluationError, match=r"f:2: expected 8 values"):
        parse_tum("1 0 0 0 0 0 0 1\n2 0 0 0 0 0 1\n", "f")
    with pytest.raises(EvaluationError, match="zero quaternion"):
        parse_tum("1 0 0 0 0 0 0 0\n")
    with pytest.raises(EvaluationError, match="no poses"):
        parse_tum("# nothing\n")
    with pytest.raises(EvaluationError, match="not a number"):
        parse_tum("1 0 0 0 0 0 0 x\n")
    with pytest.raises(EvaluationError, match="cannot read trajectory"):
        read_tum(tmp_path / "missing.txt")


def test_tum_files_round_trip(tmp_path):
    _, gt, pred, noise = case(noise_rms=0.03)
    stamps_ns = T0 + np.arange(N, dtype=np.int64) * 100_000_000
    save_tum(tmp_path / "gt.txt", stamps_ns, gt)
    save_tum(tmp_path / "pred.txt", stamps_ns, pred)
    traj = read_tum(tmp_path / "gt.txt")
    np.testing.assert_allclose(np.stack(traj.poses_se3), gt, atol=1e-8)  # quaternion order xyzw in the file
    np.testing.assert_allclose(traj.timestamps, stamps_ns / 1e9)
    m = evaluate_pose_files(tmp_path / "pred.txt", tmp_path / "gt.txt")
    assert m.ate["rmse"] == pytest.approx(0.03, rel=1e-6)


def test_cli_poses(tmp_path, capsys):
    _, gt, pred, _ = case(noise_rms=0.03)
    stamps_ns = T0 + np.arange(N, dtype=np.int64) * 100_000_000
    save_tum(tmp_path / "gt.txt", stamps_ns, gt)
    save_tum(tmp_path / "pred.txt", stamps_ns + 15_000_000, pred)
    out = tmp_path / "poses.json"
    args = ["eval", "poses", "--pred", str(tmp_path / "pred.txt"), "--gt", str(tmp_path / "gt.txt")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "only 0 poses" in err and "--max-diff" in err
    assert main([*args, "--max-diff", "0.02", "--json", str(out)]) == 0
    assert "ATE" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["ate"]["rmse"] == pytest.approx(0.03, rel=1e-6)
    assert report["num_matched"] == N and report["alignment"] == "sim3"
    assert report["units"]["rpe_rot_deg"].startswith("degrees")
    assert main([*args, "--max-diff", "0.02", "--no-scale"]) == 0
    assert "alignment se3" in capsys.readouterr().out
