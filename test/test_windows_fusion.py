"""Variance-weighted fusion of the window chain with odometry: scale in log space, map->odom filter."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vggt4d_ros.windows import ScaleFit, Sim3
from vggt4d_ros.windows.fusion import MapOdomFilter, fuse_log_scale, mean_rotation, position_misfit, rotation_misfit


def test_fuse_log_scale_weights_by_variance():
    fit = ScaleFit(scale=2.0, residual=0.01, motion=1.0, num_pairs=120, inlier_ratio=1.0, std=0.1)
    s, var = fuse_log_scale(1.0, 0.01, fit)  # equal variances: geometric mean
    assert s == pytest.approx(np.sqrt(2.0)) and var == pytest.approx(0.005)
    assert fuse_log_scale(1.0, 1e-9, fit)[0] == pytest.approx(1.0, abs=1e-6)  # a sure prediction wins
    assert fuse_log_scale(1.0, float("inf"), fit) == (pytest.approx(2.0), pytest.approx(0.01))
    assert fuse_log_scale(1.5, 0.2, None) == (1.5, 0.2)


def test_misfits_and_mean_rotation():
    R = Rotation.from_rotvec([[0, 0, 0.1], [0, 0, -0.1], [0, 0, 0.0]]).as_matrix()
    np.testing.assert_allclose(mean_rotation(R), np.eye(3), atol=1e-12)
    assert rotation_misfit(R, np.tile(np.eye(3), (3, 1, 1))) == pytest.approx((0.01 + 0.01) / 3 / 3, rel=1e-6)
    assert position_misfit(np.zeros((4, 3)), np.ones((4, 3))) == pytest.approx(3.0 / 4, rel=1e-6)


def poses(yaws, xs) -> np.ndarray:
    T = np.tile(np.eye(4), (len(yaws), 1, 1))
    T[:, :3, :3] = Rotation.from_euler("z", np.asarray(yaws)[:, None]).as_matrix()
    T[:, 0, 3] = xs
    return T


def test_map_odom_filter_predicts_and_blends():
    flt = MapOdomFilter(rotation_drift=0.01, translation_drift=0.02)
    offset = np.eye(4)
    offset[:3, :3] = Rotation.from_euler("z", 0.2).as_matrix()
    offset[:3, 3] = [1.0, 2.0, 0.0]
    odom = poses(np.linspace(0, 0.3, 8), np.linspace(0, 1, 8))
    flt.update(offset @ odom, odom, None, float("inf"), float("inf"), metric=True)  # the first window
    np.testing.assert_allclose(flt.R, offset[:3, :3], atol=1e-12)
    np.testing.assert_allclose(flt.t, offset[:3, 3], atol=1e-12)
    # the chain puts the next window 0.05 rad and 0.3 m off; with a noisy chain, odometry pulls it back
    nxt = poses(np.linspace(0.3, 0.6, 8), np.linspace(1, 2, 8))
    R_win = nxt[:, :3, :3]  # the window's frame is the odom frame here, so its rotations are odometry's
    centres = nxt[:, :3, 3]
    truth = Sim3(1.0, offset[:3, :3], offset[:3, 3])
    chain = Sim3(1.0, Rotation.from_euler("z", 0.25).as_matrix(), offset[:3, 3] + [0.3, 0.0, 0.0])
    fused, var = flt.fuse_rotation(chain, R_win, nxt, 1.0, var_chain=1.0, pivot=np.zeros(3))
    assert var < 1.0
    assert Rotation.from_matrix(fused.R @ truth.R.T).magnitude() < 0.01
    sure, _ = flt.fuse_rotation(chain, R_win, nxt, 1.0, var_chain=1e-12, pivot=np.zeros(3))
    np.testing.assert_allclose(sure.R, chain.R, atol=1e-6)  # a sure chain is kept
    moved, _ = flt.fuse_translation(Sim3(1.0, offset[:3, :3], offset[:3, 3] + [0.3, 0, 0]), centres, nxt, 1.0, 1.0)
    np.testing.assert_allclose(moved.apply(centres), truth.apply(centres), atol=0.05)
    # inf drift: odometry ignored
    off = MapOdomFilter(rotation_drift=float("inf"), translation_drift=float("inf"))
    off.update(offset @ odom, odom, None, 1.0, 1.0, metric=True)
    assert off.fuse_rotation(chain, R_win, nxt, 1.0, 1.0, np.zeros(3))[0] is chain
    assert off.fuse_translation(chain, centres, nxt, 1.0, 1.0)[0] is chain
    with pytest.raises(ValueError):
        MapOdomFilter(rotation_drift=-1.0)
