"""Metric scale from odometry, the z-up map and continuous segments, on a synthetic loop of 1000 keyframes.

Windows 16/6, every window in its own frame and a random scale in [0.2, 5], 5 % depth noise, 1 % pose noise
(vggt4d_ros.bench.drift builds them; the Stitcher under test never sees the truth except through odometry).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vggt4d_ros.bench.drift import LoopScene, drift_metrics, loop_windows, make_loop, stitch
from vggt4d_ros.windows import OPTICAL_TO_BODY, Sim3, Stitcher, WindowGeometry, fit_metric_scale, w2c_to_c2w

BREAKS = (330, 661)


@pytest.fixture(scope="module")
def loop() -> LoopScene:
    return make_loop(1000)


def truth_of(scene: LoopScene, stamps: np.ndarray) -> np.ndarray:
    return scene.c2w[np.searchsorted(scene.stamps, stamps)]


def test_fit_metric_scale():
    rng = np.random.default_rng(0)
    # straight-line motion (a full Sim(3) of the centres would be degenerate), noisy window cameras
    odom = np.tile(np.eye(4), (16, 1, 1))
    odom[:, :3, 3] = np.linspace([0, 0, 0], [1.5, 0, 0], 16)
    rot = Rotation.random(random_state=1).as_matrix()
    win = np.tile(np.eye(4), (16, 1, 1))
    win[:, :3, 3] = 0.37 * odom[:, :3, 3] @ rot.T + rng.normal(scale=0.01 * 0.37 * 1.5, size=(16, 3))
    fit = fit_metric_scale(win, odom, min_motion=0.1)
    assert fit is not None and fit.scale == pytest.approx(1 / 0.37, rel=0.01)
    assert fit.motion == pytest.approx(1.5) and fit.num_pairs == 120 and 0 < fit.residual < 0.05
    # gross outliers (two frames with broken poses) are down-weighted
    win[3, :3, 3] += 5.0
    win[9, :3, 3] -= 3.0
    assert fit_metric_scale(win, odom).scale == pytest.approx(1 / 0.37, rel=0.03)
    # motions that do not match (the window's cameras stand still while the odometry moves): rejected
    still = np.tile(np.eye(4), (16, 1, 1))
    still[:, :3, 3] = rng.normal(scale=1e-3, size=(16, 3))
    assert fit_metric_scale(still, odom) is None
    # too little motion: not observable
    assert fit_metric_scale(win, odom, min_motion=2.0) is None
    with pytest.raises(ValueError):
        fit_metric_scale(win[:3], odom)
    with pytest.raises(ValueError):
        fit_metric_scale(win[:1], odom[:1])


def test_loop_with_odometry_is_metric_without_scale_alignment_and_breaks_do_not_move_it(loop):
    windows = loop_windows(loop, odometry=True, breaks=BREAKS, seed=1)
    st, results = stitch(windows)
    stamps, poses = st.snapshot()[2:]
    truth = truth_of(loop, stamps)
    assert len(stamps) == 1000
    assert all(r.metric and r.scale_source == "odometry" for r in results)
    anchors = [(r.window_index, r.anchor) for r in results if r.status == "anchor"]
    assert [a for _, a in anchors] == ["identity", "odometry", "odometry"]
    # the map frame is the odom frame at the first frame: no alignment of any kind before comparing
    m = drift_metrics(poses, truth, align=False)
    assert m["max_error_over_path"] < 0.02, m
    assert abs(m["end_scale_error"]) < 0.02, m
    # a segment break does not move the trajectory: the step across it is the true step
    err = poses[:, :3, 3] - truth[:, :3, 3]
    for b in BREAKS:
        assert np.linalg.norm(err[b] - err[b - 1]) < 0.05, (b, err[b - 1], err[b])
    # map -> odom: composing it with a frame's odometry gives the frame's map pose
    last = windows[-1]
    np.testing.assert_allclose(st.map_to_odom() @ last.odom_c2w[-1], poses[-1], atol=1e-9)
    np.testing.assert_allclose(results[-1].map_to_odom, st.map_to_odom())
    assert np.linalg.norm(st.map_to_odom()[:3, 3]) < 0.02 * loop.path_length
    # the map is metric too: points lie on the room's walls (truth frame = map frame), within the depth noise
    pts = st.map.points()
    lo, hi = np.array([-12.0, -12.0, 0.0]), np.array([12.0, 12.0, 4.0])
    wall = np.minimum(np.abs(pts - lo), np.abs(pts - hi)).min(axis=1)
    assert np.median(wall) < 0.05 * np.median(loop.depth)
    # covariance: finite, positive, never "perfectly known"
    cov = results[-1].covariance
    assert np.all(np.diag(cov) > 0) and np.all(np.diag(cov) < 1.0)


def test_loop_without_odometry_continues_segments_instead_of_identity(loop):
    windows = loop_windows(loop, odometry=False, breaks=BREAKS, seed=2)
    st, results = stitch(windows)
    assert st.map_to_odom() is None and not st.metric
    assert all(r.scale_source == "first_window" and not r.metric for r in results)
    anchors = [r for r in results if r.status == "anchor"]
    assert [r.anchor for r in anchors] == ["identity", "continuity", "continuity"]
    stamps, poses = st.snapshot()[2:]
    truth = truth_of(loop, stamps)
    step = np.linalg.norm(np.diff(truth[:, :3, 3], axis=0), axis=1).max()
    # map units are the first window's: express the estimate in metres with the first window's known scale
    unit = 1.0 / results[0].sim3.s / windows[0].depth[0].mean() * loop.depth[0].mean()
    for b in BREAKS:
        jump = np.linalg.norm(poses[b, :3, 3] - poses[b - 1, :3, 3]) * unit
        assert jump < 3 * step, (b, jump, step)  # continuity: no jump to the map origin
        assert np.linalg.norm(poses[b, :3, 3]) * unit > 1.0  # not re-anchored at the identity (origin)
        np.testing.assert_allclose(poses[b, :3, :3], poses[b - 1, :3, :3], atol=0.1)
    # the whole trajectory still has the right shape (one Sim(3) for the whole map, breaks included)
    assert drift_metrics(poses, truth, align=True)["ate_over_path"] < 0.05


def test_z_up_map_without_odometry(loop):
    windows = loop_windows(loop, odometry=False, seed=3)[:30]
    st, results = stitch(windows)
    # the first camera (level, facing forward) sits at the origin with optical axes rotated to body axes
    first = w2c_to_c2w(results[0].extrinsic)[0]
    np.testing.assert_allclose(first[:3, :3], OPTICAL_TO_BODY, atol=1e-9)
    np.testing.assert_allclose(first[:3, 3], 0.0, atol=1e-9)
    # the camera drives on a (nearly) level ellipse: in the map its height barely changes
    c = st.snapshot()[3][:, :3, 3]
    assert np.ptp(c[:, 2]) < 0.1 * np.ptp(c[:, :2], axis=0).max()
    # the floor (1.2 m below the camera, about a tenth of the drive's extent) is down, not sideways: z-up map
    pts = st.map.points()
    extent = np.ptp(c[:, :2], axis=0).max()
    assert np.percentile(pts[:, 2], 2) < -0.05 * extent


def test_metric_scale_adopted_late_and_scale_source_none(loop):
    # the robot stands still for the first 40 keyframes: no metric scale until it moves
    N = 40
    idx = np.concatenate([np.zeros(N, dtype=int), np.arange(600)])
    scene = LoopScene(c2w=loop.c2w[idx], K=loop.K, depth=loop.depth[idx],
                      stamps=loop.stamps[0] + np.arange(len(idx), dtype=np.int64) * 100_000_000)
    windows = loop_windows(scene, odometry=True, odom_noise=0.0, seed=4)
    st, results = stitch(windows)
    sources = [r.scale_source for r in results]
    assert sources[0] == "first_window" and not results[0].metric
    k = sources.index("odometry")
    assert k >= 2 and all(r.metric for r in results[k:])
    stamps, poses = st.snapshot()[2:]
    truth = truth_of(scene, stamps)
    assert drift_metrics(poses[N:], truth[N:], align=False)["max_error_over_path"] < 0.02
    # scale_source none: odometry ignored entirely
    st2, res2 = stitch(windows[:5], scale_source="none")
    assert st2.map_to_odom() is None and not any(r.metric for r in res2)
    # scale_source odometry: windows without odometry are counted (and logged), stitching goes on
    st3 = Stitcher(scale_source="odometry")
    st3.add(replace(windows[0], odom_c2w=None))
    assert st3.num_missing_odometry == 1
    with pytest.raises(ValueError):
        Stitcher(scale_source="gps")
    with pytest.raises(ValueError):
        Stitcher(min_motion=-1.0)
    for bad in ({"odom_rotation_drift": -0.1}, {"odom_translation_drift": float("nan")}, {"scale_chain_noise": -1},
                {"with_scale": False}, {"symmetric": True}):
        with pytest.raises(ValueError):
            Stitcher(**bad)


def test_reset_clear_map_reanchors_at_identity_and_plain_reset_continues(loop):
    windows = loop_windows(loop, odometry=False, seed=5)[:6]
    st, _ = stitch(windows[:3])
    last = st.snapshot()[3][-1]
    st.reset()
    r = st.add(windows[4])  # no shared frame with window 2: continuity
    assert r.anchor == "continuity"
    np.testing.assert_allclose(w2c_to_c2w(r.extrinsic)[0], last, atol=1e-9)
    st.reset(clear_map=True)
    assert len(st.map) == 0 and len(st.trajectory) == 0
    r = st.add(windows[5])
    assert r.anchor == "identity"
    # identity anchor: the window's first camera gets the body-axes orientation at the origin
    np.testing.assert_allclose(w2c_to_c2w(r.extrinsic)[0][:3, :3], OPTICAL_TO_BODY, atol=1e-9)
    np.testing.assert_allclose(w2c_to_c2w(r.extrinsic)[0][:3, 3], 0.0, atol=1e-9)


def test_noisy_window_cameras_fuse_odometry_scale_with_the_chain(loop):
    """Held-out style: every window in a random full Sim(3) gauge, rotation noise applied to world-to-camera
    (so camera centres move with the gauge's translation: noisy scale fits and a noisy chain). The fused scale
    beats the fits, and the fused rotation and translation beat the bare chain."""
    rng = np.random.default_rng(11)
    ext_true = np.linalg.inv(loop.c2w)[:, :3, :]
    windows, gauges, start = [], [], 0
    while True:
        ids = np.arange(start, min(start + 16, 1000))
        s = float(np.exp(rng.uniform(np.log(0.2), np.log(5.0))))
        g = Sim3(s, Rotation.random(random_state=rng).as_matrix(), rng.normal(scale=3.0, size=3))
        ext = g.transform_pose_w2c(ext_true[ids])
        ext[:, :, :3] = Rotation.from_rotvec(rng.normal(scale=0.01, size=(len(ids), 3))).as_matrix() @ ext[:, :, :3]
        ext[:, :, 3] += rng.normal(scale=0.01 * s, size=(len(ids), 3))
        depth = loop.depth[ids] * s * (1.0 + 0.05 * rng.standard_normal((len(ids),) + loop.depth.shape[1:]))
        windows.append(WindowGeometry(stamps=loop.stamps[ids], extrinsic=ext,
                                      intrinsic=np.broadcast_to(loop.K, (len(ids), 3, 3)), depth=depth,
                                      conf=np.ones(depth.shape), index=len(windows), odom_c2w=loop.c2w[ids]))
        gauges.append(s)
        if ids[-1] == 999:
            break
        start = ids[-1] + 1 - 6
    st, results = stitch(windows)
    used = [(r.scale * s - 1.0, r.scale_fit.scale * s - 1.0) for r, s in zip(results, gauges) if r.scale_fit]
    fused, fitted = np.array(used).T
    assert len(used) > 0.6 * len(results)
    assert np.sqrt(np.mean(fused ** 2)) < 0.6 * np.sqrt(np.mean(fitted ** 2))
    poses = st.snapshot()[3]
    m = drift_metrics(poses, loop.c2w, align=False)
    assert m["ate_over_path"] < 0.01 and m["max_error_over_path"] < 0.02 and abs(m["end_scale_error"]) < 0.03, m
    # fusing the odometry's rotation and translation is what keeps the noisy chain in place
    unfused = stitch(windows, odom_rotation_drift=float("inf"), odom_translation_drift=float("inf"))[0]
    m_unfused = drift_metrics(unfused.snapshot()[3], loop.c2w, align=False)
    assert m_unfused["ate_over_path"] > 2 * m["ate_over_path"], (m_unfused, m)
