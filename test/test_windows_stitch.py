"""Back-projection, window alignment, intrinsics consistency and end-to-end stitching on a synthetic room.

The scene is the inside of a box (5 planes); depth maps are ray-cast analytically for known cameras, then
each window is expressed in its own random Sim(3) gauge, as VGGT4D's per-window outputs are.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vggt4d_ros.windows import (
    Frame,
    KeyframeSelector,
    SegmentTracker,
    Sim3,
    Stitcher,
    VoxelMap,
    WindowAssembler,
    WindowBuilder,
    WindowGeometry,
    WindowWorker,
    align_window,
    backproject_pixels,
    camera_centers,
    focal_rescale,
    intrinsics_residual,
    rescale_intrinsics,
    umeyama,
    w2c_to_c2w,
)

H, W = 24, 32
F_TRUE = 28.0
K_TRUE = np.array([[F_TRUE, 0, (W - 1) / 2], [0, F_TRUE, (H - 1) / 2], [0, 0, 1.0]])
# planes n . X = h (room walls, floor, ceiling; camera y points down)
PLANES = [(np.array([0, 0, 1.0]), 7.0), (np.array([1.0, 0, 0]), 3.5), (np.array([1.0, 0, 0]), -3.5),
          (np.array([0, 1.0, 0]), 1.6), (np.array([0, 1.0, 0]), -2.0)]


def with_f(f: float) -> np.ndarray:
    K = K_TRUE.copy()
    K[0, 0] = K[1, 1] = f
    return K


def true_cameras(n: int) -> np.ndarray:
    """World-to-camera ``[n, 3, 4]`` along a curved path looking roughly down +z."""
    s = np.linspace(0, 1, n)
    centres = np.stack([-1.5 + 3.0 * s, 0.3 * np.sin(3 * s), 0.5 + 2.0 * s], axis=1)
    rot_c2w = Rotation.from_euler("yxz", np.stack([np.deg2rad(-25 + 50 * s), np.deg2rad(8 * np.cos(4 * s)),
                                                   np.deg2rad(5 * s)], axis=1)).as_matrix()
    R = np.swapaxes(rot_c2w, 1, 2)
    t = -np.einsum("nij,nj->ni", R, centres)
    return np.concatenate([R, t[:, :, None]], axis=2)


def render_depth(ext: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Ray-cast the room: ``[n, H, W]`` camera-z depth."""
    v, u = np.mgrid[0:H, 0:W]
    rays_cam = np.linalg.solve(K, np.stack([u.ravel(), v.ravel(), np.ones(H * W)]))  # [3, HW], z = 1
    out = np.empty((len(ext), H, W))
    for i, E in enumerate(ext):
        R, t = E[:, :3], E[:, 3]
        c = -R.T @ t
        d = R.T @ rays_cam
        best = np.full(H * W, np.inf)
        for n, h in PLANES:
            denom = n @ d
            with np.errstate(divide="ignore", invalid="ignore"):
                lam = (h - n @ c) / denom
            lam = np.where((lam > 1e-9) & np.isfinite(lam), lam, np.inf)
            best = np.minimum(best, lam)
        out[i] = best.reshape(H, W)
    return out


def plane_distance(points: np.ndarray) -> np.ndarray:
    return np.min(np.stack([np.abs(points @ n - h) for n, h in PLANES]), axis=0)


def random_gauge(rng: np.random.Generator) -> Sim3:
    return Sim3(float(np.exp(rng.uniform(-1.0, 1.0))), Rotation.random(random_state=rng).as_matrix(),
                rng.normal(scale=3.0, size=3))


def make_window(frame_ids, ext_true, depth_true, gauge: Sim3, rng, *, f_est: float = F_TRUE,
                depth_noise: float = 0.0, pose_noise: float = 0.0, outlier_frac: float = 0.0,
                dynamic: bool = False, segment: int = 0, index: int = 0) -> WindowGeometry:
    """A window as VGGT4D would return it: geometry in ``gauge`` (its own frame and scale).

    ``f_est`` models a wrong focal estimate with self-consistent multi-view geometry: baselines and lateral
    extent stay right (up to the gauge scale), depths are off by ``f_est / F_TRUE``.
    """
    ids = np.asarray(frame_ids)
    S = len(ids)
    ext = gauge.transform_pose_w2c(ext_true[ids])
    if pose_noise:
        dR = Rotation.from_rotvec(rng.normal(scale=pose_noise, size=(S, 3))).as_matrix()
        ext[:, :, :3] = dR @ ext[:, :, :3]
        ext[:, :, 3] += rng.normal(scale=pose_noise * gauge.s, size=(S, 3))
    depth = depth_true[ids] * gauge.s * (f_est / F_TRUE)
    depth = depth * (1.0 + depth_noise * rng.standard_normal(depth.shape))
    conf = rng.uniform(2.0, 4.0, size=depth.shape)
    dyn = np.zeros(depth.shape, dtype=bool)
    if outlier_frac:
        bad = rng.random(depth.shape) < outlier_frac
        depth[bad] *= rng.uniform(0.3, 2.5, size=int(bad.sum()))  # confident but wrong
        low = rng.random(depth.shape) < 0.05
        conf[low] = 0.5  # unconfident pixels with garbage depth (below the threshold used below)
        depth[low] *= 3.0
    if dynamic:
        dyn[:, 5:12, 8:16] = True  # a "moving object" in front of the walls
        depth[dyn] *= 0.4
    images = np.zeros(depth.shape + (3,), dtype=np.uint8)
    images[..., 0] = (np.arange(W) * 8)[None, None, :]
    images[..., 1] = (np.arange(H) * 10)[None, :, None]
    images[..., 2] = (ids * 20)[:, None, None]
    return WindowGeometry(stamps=1_000_000_000 + ids * 50_000_000, extrinsic=ext,
                          intrinsic=np.broadcast_to(with_f(f_est), (S, 3, 3)), depth=depth, conf=conf,
                          dynamic_mask=dyn, images=images, segment=segment, index=index)


def test_backproject_pixels_inverts_projection():
    rng = np.random.default_rng(0)
    ext = true_cameras(3)[1]
    X = rng.uniform([-2, -1, 3], [2, 1, 6], size=(40, 3))
    cam = X @ ext[:, :3].T + ext[:, 3]
    uvw = cam @ K_TRUE.T
    u, v = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
    np.testing.assert_allclose(backproject_pixels(u, v, cam[:, 2], K_TRUE, ext), X, atol=1e-9)
    # integer pixel (cx, cy) at depth d lies on the optical axis
    centre = backproject_pixels(np.array([15.5]), np.array([11.5]), np.array([2.0]), K_TRUE, ext)
    np.testing.assert_allclose(centre[0], camera_centers(ext) + 2.0 * ext[2, :3], atol=1e-9)
    c2w = w2c_to_c2w(ext)
    np.testing.assert_allclose(c2w[:3, :3] @ ext[:, :3], np.eye(3), atol=1e-12)
    with pytest.raises(ValueError):
        backproject_pixels(u, v[:3], cam[:, 2], K_TRUE, ext)


def test_rendered_depth_lies_on_planes():
    ext = true_cameras(2)
    depth = render_depth(ext, K_TRUE)
    g = WindowGeometry(stamps=[0, 1], extrinsic=ext, intrinsic=np.stack([K_TRUE] * 2), depth=depth,
                       conf=np.ones_like(depth))
    pts = g.frame_points(1, g.valid_mask(1))
    assert len(pts) == H * W
    assert plane_distance(pts).max() < 1e-9


def test_align_window_recovers_relative_sim3_exactly():
    rng = np.random.default_rng(1)
    ext = true_cameras(10)
    depth = render_depth(ext, K_TRUE)
    ga, gb = random_gauge(rng), random_gauge(rng)
    prev = make_window(range(0, 6), ext, depth, ga, rng)
    cur = make_window(range(3, 10), ext, depth, gb, rng)
    sim, info = align_window(prev, cur, conf_threshold=1.0, max_points=500, rng=0)
    expected = ga.compose(gb.inverse())
    np.testing.assert_allclose(sim.as_matrix(), expected.as_matrix(), atol=1e-8 * max(1, ga.s / gb.s))
    assert info["num_shared_frames"] == 3
    assert info["num_correspondences"] == 503 and info["num_point_correspondences"] == 500
    assert info["residual"] < 1e-8 and info["scale"] == pytest.approx(ga.s / gb.s)
    assert info["center_residual"] < 1e-8
    # explicit pairs give the same answer; subsampling is deterministic for a given seed
    sim2, info2 = align_window(prev, cur, shared_frame_pairs=[(3, 0), (4, 1), (5, 2)], conf_threshold=1.0,
                               max_points=500, rng=0)
    np.testing.assert_allclose(sim2.as_matrix(), sim.as_matrix(), atol=1e-10)
    assert info2["num_correspondences"] == info["num_correspondences"]
    # mapping cur by the result puts its shared cameras on prev's
    mapped = cur.transformed(sim)
    np.testing.assert_allclose(mapped.camera_centers()[:3], prev.camera_centers()[3:], atol=1e-7 * ga.s)
    np.testing.assert_allclose(mapped.depth[:3], prev.depth[3:], rtol=1e-9)


def test_align_window_robust_to_outliers_and_dynamic_pixels():
    rng = np.random.default_rng(2)
    ext = true_cameras(10)
    depth = render_depth(ext, K_TRUE)
    ga, gb = random_gauge(rng), random_gauge(rng)
    prev = make_window(range(0, 6), ext, depth, ga, rng, depth_noise=0.002, outlier_frac=0.1, dynamic=True)
    cur = make_window(range(3, 10), ext, depth, gb, rng, depth_noise=0.002, outlier_frac=0.1, dynamic=True)
    expected = ga.compose(gb.inverse())
    sim, info = align_window(prev, cur, conf_threshold=1.0)
    assert abs(sim.s / expected.s - 1) < 5e-3
    assert np.abs(sim.R - expected.R).max() < 5e-3
    assert 0.7 < info["inlier_ratio"] < 0.9
    # correspondences: pixels static and confident in both windows; dynamic pixels never take part
    shared = [(3, 0), (4, 1), (5, 2)]
    expected_count = sum(int((prev.valid_mask(a, 1.0) & cur.valid_mask(b, 1.0)).sum()) for a, b in shared)
    assert info["num_point_correspondences"] == expected_count
    with_dyn = sum(int((prev.valid_mask(a, 1.0, static_only=False) & cur.valid_mask(b, 1.0, static_only=False)
                        & prev.dynamic_mask[a]).sum()) for a, b in shared)
    assert with_dyn > 100 and not np.any(prev.valid_mask(3, 1.0) & prev.dynamic_mask[3])
    plain, _ = align_window(prev, cur, conf_threshold=1.0, method="umeyama")
    assert abs(plain.s / expected.s - 1) > 3 * abs(sim.s / expected.s - 1)


def test_align_window_errors():
    rng = np.random.default_rng(3)
    ext = true_cameras(8)
    depth = render_depth(ext, K_TRUE)
    a = make_window(range(0, 4), ext, depth, Sim3.identity(), rng)
    b = make_window(range(4, 8), ext, depth, Sim3.identity(), rng)
    with pytest.raises(ValueError, match="share no frames"):
        align_window(a, b)
    c = make_window(range(3, 6), ext, depth, Sim3.identity(), rng)
    c.conf[:] = 0.0  # nothing confident: only one camera centre remains
    with pytest.raises(ValueError, match="correspondences"):
        align_window(a, c, conf_threshold=1.0)


def test_intrinsics_residual_and_known_K_fix():
    rng = np.random.default_rng(4)
    ext = true_cameras(9)
    depth = render_depth(ext, K_TRUE)
    a = make_window(range(0, 6), ext, depth, random_gauge(rng), rng, f_est=0.8 * F_TRUE)
    b = make_window(range(3, 9), ext, depth, random_gauge(rng), rng, f_est=1.3 * F_TRUE)
    res = intrinsics_residual(a, b, known_K=K_TRUE)
    assert res["focal_ratio"] == pytest.approx(1.3 / 0.8)
    assert res["relative_residual"] > 1e-2
    assert res["relative_residual_fixed"] < 1e-9
    # the fix makes all frames of a window together a similarity of the true room; without it they are not
    truth = make_window(range(0, 6), ext, depth, Sim3.identity(), rng)

    def all_points(g: WindowGeometry) -> np.ndarray:
        return np.concatenate([g.frame_points(i, truth.valid_mask(i)) for i in range(6)])

    p_true = all_points(truth)
    for geom, tol_ok in ((focal_rescale(a, K_TRUE), True), (a, False)):
        p = all_points(geom)
        err = np.abs(umeyama(p, p_true).apply(p) - p_true).max()
        assert (err < 1e-7) if tol_ok else (err > 1e-2)
    # swapping K without rescaling depth keeps the windows inconsistent
    swapped = intrinsics_residual(replace(a, intrinsic=np.stack([K_TRUE] * 6)),
                                  replace(b, intrinsic=np.stack([K_TRUE] * 6)))
    assert swapped["relative_residual"] > 1e-3
    # same focal in both windows: consistent even without known K
    c = make_window(range(3, 9), ext, depth, random_gauge(rng), rng, f_est=0.8 * F_TRUE)
    assert intrinsics_residual(a, c)["relative_residual"] < 1e-9


def test_rescale_intrinsics_pixel_centres():
    K = rescale_intrinsics(K_TRUE, (H, W), (2 * H, 2 * W))
    assert K[0, 0] == 2 * F_TRUE and K[0, 2] == pytest.approx(2 * W / 2 - 0.5)
    np.testing.assert_allclose(rescale_intrinsics(K, (2 * H, 2 * W), (H, W)), K_TRUE)


def ate(est_centres: np.ndarray, gt_centres: np.ndarray) -> tuple[float, Sim3]:
    g = umeyama(est_centres, gt_centres)
    return float(np.sqrt(np.mean(np.sum((g.apply(est_centres) - gt_centres) ** 2, axis=1)))), g


@pytest.mark.parametrize("method", ["irls", "ransac"])
def test_stitcher_end_to_end(method):
    rng = np.random.default_rng(5)
    n, size, overlap = 18, 6, 2
    ext = true_cameras(n)
    depth = render_depth(ext, K_TRUE)
    starts = list(range(0, n - overlap, size - overlap))  # 0, 4, 8, 12
    gauges = [random_gauge(rng) for _ in starts]
    windows = [make_window(range(s0, min(s0 + size, n)), ext, depth, g, rng, depth_noise=0.003,
                           pose_noise=1e-3, outlier_frac=0.1, dynamic=True, index=k)
               for k, (s0, g) in enumerate(zip(starts, gauges))]
    st = Stitcher(VoxelMap(voxel_size=0.05, max_points=50_000), align_conf_threshold=1.0,
                  map_conf_threshold=1.0, method=method)
    results = [st.add(w) for w in windows]
    assert [r.status for r in results] == ["anchor", "aligned", "aligned", "aligned"]
    assert results[0].residual == 0.0 and results[0].scale == 1.0
    for k, r in enumerate(results[1:], start=1):
        expected = gauges[0].compose(gauges[k].inverse())  # window frame -> map (window 0's frame)
        assert abs(r.scale / expected.s - 1) < 0.01, (k, r.scale, expected.s)
        assert r.num_shared_frames == overlap
        assert 0 < r.residual < 0.05 * gauges[0].s
        assert 0.6 < r.inlier_ratio < 0.95
    # the last window's poses are the latest estimates of its frames
    last = np.stack([st.trajectory.get(int(s)) for s in windows[-1].stamps])
    np.testing.assert_allclose(last, w2c_to_c2w(results[-1].extrinsic), atol=1e-12)
    # trajectory: all frames, matches ground truth up to one global Sim(3)
    stamps, poses = st.trajectory.stamps(), st.trajectory.poses()
    assert len(stamps) == n
    gt_c2w = w2c_to_c2w(ext)
    err, g = ate(poses[:, :3, 3], gt_c2w[:, :3, 3])
    path_len = np.sum(np.linalg.norm(np.diff(gt_c2w[:, :3, 3], axis=0), axis=1))
    assert err < 0.01 * path_len, err
    # orientations relative to the first frame (gauge-free)
    rel_est = poses[0, :3, :3].T @ poses[:, :3, :3]
    rel_gt = gt_c2w[0, :3, :3].T @ gt_c2w[:, :3, :3]
    rot_err = Rotation.from_matrix(rel_est @ np.swapaxes(rel_gt, 1, 2)).magnitude()
    assert np.rad2deg(rot_err).max() < 0.5
    # map (window 0's first camera in body axes: results[0].sim3^-1 takes it to window 0's frame, gauges[0]^-1
    # to the room): most points lie on the room's planes
    pts = st.map.points()
    assert len(pts) > 500
    d = plane_distance(gauges[0].inverse().compose(results[0].sim3.inverse()).apply(pts))
    assert np.median(d) < 0.02 and np.mean(d < 0.1) > 0.85
    assert sum(r.points_inserted for r in results) <= n * (H * W - 7 * 8)


def test_stitcher_outperforms_plain_least_squares():
    rng = np.random.default_rng(6)
    n = 14
    ext = true_cameras(n)
    depth = render_depth(ext, K_TRUE)
    gauges = [random_gauge(rng) for _ in range(3)]
    windows = [make_window(range(s0, s0 + 6), ext, depth, g, rng, depth_noise=0.003, outlier_frac=0.1, index=k)
               for k, (s0, g) in enumerate(zip([0, 4, 8], gauges))]
    errs = {}
    for method in ("irls", "umeyama"):
        st = Stitcher(align_conf_threshold=1.0, map_conf_threshold=1.0, method=method)
        for w in windows:
            st.add(w)
        errs[method] = ate(st.trajectory.poses()[:, :3, 3], w2c_to_c2w(ext)[:, :3, 3])[0]
    assert errs["umeyama"] > 3 * errs["irls"]


def test_stitcher_segments_priors_fallback_and_dynamic_only():
    rng = np.random.default_rng(7)
    ext = true_cameras(16)
    depth = render_depth(ext, K_TRUE)
    g0, g1, g2 = (random_gauge(rng) for _ in range(3))
    st = Stitcher(align_conf_threshold=1.0, map_conf_threshold=1.0)
    r0 = st.add(make_window(range(0, 5), ext, depth, g0, rng, index=0))
    # no shared frames in the same segment (a dropped window): continuity prior
    w1 = make_window(range(7, 11), ext, depth, g1, rng, index=1)
    r1 = st.add(w1)
    assert r1.status == "fallback" and np.isnan(r1.residual) and r1.anchor == "continuity"
    # scale carried by depth continuity: close to the true relative scale of the two gauges
    assert abs(np.log(r1.scale / (g0.s / g1.s))) < 0.2, (r1.scale, g0.s / g1.s)
    c_prev_last = st.trajectory.get(int(1_000_000_000 + 4 * 50_000_000))
    np.testing.assert_allclose(st.trajectory.get(int(w1.stamps[0])), c_prev_last, atol=1e-9)
    # a new segment (no odometry) continues at the last known camera pose with the last scale, never at identity
    last_pose = st.trajectory.get(int(w1.stamps[-1]))
    w2 = make_window(range(10, 14), ext, depth, g2, rng, segment=1, index=2)
    r2 = st.add(w2)
    assert r2.status == "anchor" and r2.anchor == "continuity" and abs(np.log(r2.scale / (g0.s / g2.s))) < 0.2
    np.testing.assert_allclose(st.trajectory.get(int(w2.stamps[0])), last_pose, atol=1e-9)
    assert not np.allclose(r2.sim3.as_matrix(), np.eye(4))
    # a supplied prior wins
    prior = Sim3(2.0, np.eye(3), np.array([1.0, 2.0, 3.0]))
    st.start_segment(prior)
    r3 = st.add(make_window(range(12, 16), ext, depth, g2, rng, segment=1, index=3))
    assert r3.status == "anchor" and r3.anchor == "prior" and np.allclose(r3.sim3.as_matrix(), prior.as_matrix())
    # all-dynamic window: aligned to nothing static -> nothing inserted
    st2 = Stitcher()
    w = make_window(range(0, 4), ext, depth, g0, rng)
    w.dynamic_mask[:] = True
    assert st2.add(w).points_inserted == 0 and len(st2.map) == 0
    pts, cols, stamps, poses = st.snapshot()
    assert len(pts) == len(cols) and len(stamps) == len(poses) == 14  # frames 5 and 6 never seen
    with pytest.raises(ValueError):
        st.add("not a window")


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError."""


def test_pipeline_assembler_worker_stitcher_with_oom_split():
    rng = np.random.default_rng(10)
    n = 20
    ext = true_cameras(n)
    depth = render_depth(ext, K_TRUE)
    asm = WindowAssembler(WindowBuilder(window_size=6, overlap=2), KeyframeSelector(stride=1),
                          SegmentTracker(max_gap_s=1.0))
    st = Stitcher(align_conf_threshold=1.0, map_conf_threshold=1.0)
    results, sizes = [], []

    def process(window):
        if window.index == 1 and len(window) == 6:
            raise OutOfMemoryError("CUDA out of memory")
        sizes.append(len(window))
        ids = [f.seq for f in window.frames]
        return make_window(ids, ext, depth, random_gauge(rng), rng, depth_noise=0.002, outlier_frac=0.05,
                           segment=window.segment, index=window.index)

    worker = WindowWorker(process, max_queue=8, on_result=lambda w, geom: results.append(st.add(geom)))
    for i in range(n):
        f = Frame(stamp_ns=1_000_000_000 + i * 50_000_000, image=np.zeros((H, W, 3), np.uint8), frame_id="cam",
                  seq=i)
        for window in asm.push(f).windows:
            worker.submit(window)
    tail = asm.finish()
    if tail is not None:
        worker.submit(tail)
    assert worker.stop(30.0, drain=True)
    stats = worker.stats()
    assert stats["oom_retries"] == 1 and stats["errors"] == 0 and stats["dropped_windows"] == 0
    # window 1 ran as two halves sharing 2 frames; the flushed tail holds frames 16..19
    assert sizes == [6, 4, 4, 6, 6, 4]
    assert [r.status for r in results] == ["anchor"] + ["aligned"] * 5
    gt = w2c_to_c2w(ext)[:, :3, 3]
    np.testing.assert_array_equal(st.trajectory.stamps(), 1_000_000_000 + np.arange(n) * 50_000_000)
    err, _ = ate(st.trajectory.poses()[:, :3, 3], gt)
    assert err < 0.01 * np.sum(np.linalg.norm(np.diff(gt, axis=0), axis=1))


def test_stitcher_map_subsampling_bounds_points():
    rng = np.random.default_rng(9)
    ext = true_cameras(6)
    depth = render_depth(ext, K_TRUE)
    w = make_window(range(0, 6), ext, depth, Sim3.identity(), rng)
    full = Stitcher(VoxelMap(voxel_size=1e-4), map_conf_threshold=1.0).add(w).points_inserted
    assert full == 6 * H * W
    strided = Stitcher(VoxelMap(voxel_size=1e-4), map_conf_threshold=1.0, map_pixel_stride=2).add(w)
    assert strided.points_inserted == 6 * (H // 2) * (W // 2)
    capped = Stitcher(VoxelMap(voxel_size=1e-4), map_conf_threshold=1.0, map_pixel_stride=2,
                      max_points_per_frame=40).add(w)
    assert capped.points_inserted == 6 * 40
    with pytest.raises(ValueError):
        Stitcher(map_pixel_stride=0)


def test_window_geometry_from_prediction_and_validation():
    rng = np.random.default_rng(8)
    S = 3
    pred = {
        "extrinsic": np.tile(np.eye(4)[:3], (1, S, 1, 1)),
        "intrinsic": np.tile(K_TRUE, (1, S, 1, 1)),
        "depth": rng.uniform(1, 2, size=(1, S, H, W, 1)),
        "depth_conf": rng.uniform(1, 2, size=(1, S, H, W)),
        "images": rng.uniform(0, 1, size=(1, S, 3, H, W)).astype(np.float32),
    }
    g = WindowGeometry.from_prediction(pred, stamps=[5, 6, 7], segment=2, index=4)
    assert g.depth.shape == (S, H, W) and g.images.shape == (S, H, W, 3) and g.images.dtype == np.uint8
    assert g.dynamic_mask.shape == (S, H, W) and not g.dynamic_mask.any()
    assert g.segment == 2 and g.index == 4
    single = {k: v[:, :1] for k, v in pred.items()}
    g1 = WindowGeometry.from_prediction(single, stamps=[5])
    assert g1.extrinsic.shape == (1, 3, 4) and g1.depth.shape == (1, H, W)
    np.testing.assert_array_equal(g1.images[0], g.images[0])
    with pytest.raises(ValueError, match="missing"):
        WindowGeometry.from_prediction({"extrinsic": pred["extrinsic"]}, stamps=[5, 6, 7])
    with pytest.raises(ValueError, match="unique"):
        WindowGeometry(stamps=[1, 1, 2], extrinsic=g.extrinsic, intrinsic=g.intrinsic, depth=g.depth, conf=g.conf)
    with pytest.raises(ValueError, match="conf"):
        WindowGeometry(stamps=[1, 2, 3], extrinsic=g.extrinsic, intrinsic=g.intrinsic, depth=g.depth,
                       conf=g.conf[:, :2])
    # odometry poses pass through, are validated, and survive a re-expression of the window
    odom = np.tile(np.eye(4), (S, 1, 1))
    go = WindowGeometry.from_prediction(pred, stamps=[5, 6, 7], odom_c2w=odom)
    np.testing.assert_array_equal(go.transformed(Sim3(2.0, np.eye(3), np.ones(3))).odom_c2w, odom)
    for bad in (odom[:2], np.full((S, 4, 4), np.nan)):
        with pytest.raises(ValueError, match="odom_c2w"):
            WindowGeometry.from_prediction(pred, stamps=[5, 6, 7], odom_c2w=bad)
