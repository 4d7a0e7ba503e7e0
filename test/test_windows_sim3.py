"""Sim(3) algebra, Umeyama and robust estimation (vggt4d_ros.windows.sim3)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vggt4d_ros.windows import Sim3, camera_centers, robust_sim3, umeyama


def random_sim3(rng: np.random.Generator) -> Sim3:
    R = Rotation.from_rotvec(rng.normal(size=3)).as_matrix()
    return Sim3(float(np.exp(rng.uniform(-1.5, 1.5))), R, rng.normal(scale=5.0, size=3))


def sim3_close(a: Sim3, b: Sim3, rtol: float) -> bool:
    return (abs(a.s / b.s - 1) < rtol and np.abs(a.R - b.R).max() < rtol
            and np.linalg.norm(a.t - b.t) < rtol * max(1.0, np.linalg.norm(b.t)))


def test_sim3_algebra():
    rng = np.random.default_rng(0)
    a, b = random_sim3(rng), random_sim3(rng)
    x = rng.normal(size=(20, 3))
    np.testing.assert_allclose(a.compose(b).apply(x), a.apply(b.apply(x)), atol=1e-10)
    np.testing.assert_allclose(a.inverse().apply(a.apply(x)), x, atol=1e-10)
    np.testing.assert_allclose(a.as_matrix() @ b.as_matrix(), a.compose(b).as_matrix(), atol=1e-10)
    hom = np.concatenate([x, np.ones((20, 1))], axis=1)
    np.testing.assert_allclose((hom @ a.as_matrix().T)[:, :3], a.apply(x), atol=1e-10)
    back = Sim3.from_matrix(a.as_matrix())
    assert sim3_close(back, a, 1e-12)
    np.testing.assert_allclose(Sim3.identity().apply(x), x)
    with pytest.raises(ValueError, match="scale"):
        Sim3(-1.0, np.eye(3), np.zeros(3))
    with pytest.raises(ValueError, match="rotation"):
        Sim3(1.0, np.diag([1.0, 1.0, -1.0]), np.zeros(3))
    with pytest.raises(ValueError, match="rotation"):
        Sim3(1.0, 2.0 * np.eye(3), np.zeros(3))


def test_transform_pose_w2c_moves_centres_and_scales_camera_frame():
    rng = np.random.default_rng(1)
    g = random_sim3(rng)
    R = Rotation.random(4, random_state=3).as_matrix()
    t = rng.normal(size=(4, 3))
    ext = np.concatenate([R, t[:, :, None]], axis=2)
    new = g.transform_pose_w2c(ext)
    # centres follow the world map
    np.testing.assert_allclose(camera_centers(new), g.apply(camera_centers(ext)), atol=1e-9)
    # camera-to-world rotation becomes R_g @ Rc2w
    np.testing.assert_allclose(np.swapaxes(new[:, :, :3], 1, 2), g.R @ np.swapaxes(R, 1, 2), atol=1e-12)
    # camera-frame coordinates of a mapped world point are the old ones times s
    X = rng.normal(size=(4, 3))
    cam_old = np.einsum("sij,sj->si", R, X) + t
    cam_new = np.einsum("sij,sj->si", new[:, :, :3], g.apply(X)) + new[:, :, 3]
    np.testing.assert_allclose(cam_new, g.s * cam_old, atol=1e-9)
    # 4x4 inputs keep their shape
    ext4 = np.tile(np.eye(4), (4, 1, 1))
    ext4[:, :3] = ext
    np.testing.assert_allclose(g.transform_pose_w2c(ext4)[:, :3], new, atol=1e-12)


def test_umeyama_exact_recovery():
    rng = np.random.default_rng(2)
    for _ in range(5):
        g = random_sim3(rng)
        src = rng.normal(size=(50, 3))
        est = umeyama(src, g.apply(src))
        assert sim3_close(est, g, 1e-9)
    # rigid mode keeps s == 1
    g = Sim3(1.0, Rotation.random(random_state=5).as_matrix(), np.array([1.0, -2.0, 0.5]))
    src = rng.normal(size=(10, 3))
    est = umeyama(src, g.apply(src), with_scale=False)
    assert est.s == 1.0 and sim3_close(est, g, 1e-9)


def test_umeyama_weights_ignore_zero_weight_points():
    rng = np.random.default_rng(3)
    g = random_sim3(rng)
    src = rng.normal(size=(40, 3))
    dst = g.apply(src)
    dst[:10] += rng.normal(scale=10.0, size=(10, 3))
    w = np.ones(40)
    w[:10] = 0.0
    assert sim3_close(umeyama(src, dst, w), g, 1e-9)
    assert not sim3_close(umeyama(src, dst), g, 1e-2)


def make_outlier_problem(seed: int, n: int = 400, frac: float = 0.3):
    rng = np.random.default_rng(seed)
    g = random_sim3(rng)
    src = rng.uniform(-1, 1, size=(n, 3))
    dst = g.apply(src) + rng.normal(scale=0.002 * g.s, size=(n, 3))
    out = rng.permutation(n)[: int(frac * n)]
    dst[out] = g.t + g.s * rng.uniform(-15, 15, size=(len(out), 3))
    return g, src, dst, out


@pytest.mark.parametrize("method", ["irls", "ransac"])
def test_robust_recovery_with_30_percent_gross_outliers(method):
    for seed in range(3):
        g, src, dst, out = make_outlier_problem(seed)
        est, info = robust_sim3(src, dst, method=method)
        assert sim3_close(est, g, 5e-3), (method, seed)
        assert info["inlier_ratio"] == pytest.approx(0.7, abs=0.03)
        assert info["residual_rms"] < 0.01 * g.s
        assert info["scale"] == est.s and info["num_points"] == len(src)
        plain, plain_info = robust_sim3(src, dst, method="umeyama")
        assert not sim3_close(plain, g, 5e-2)
        assert plain_info["residual_rms"] > 10 * info["residual_rms"]


def test_ransac_with_fixed_threshold():
    g, src, dst, _ = make_outlier_problem(7)
    est, info = robust_sim3(src, dst, method="ransac", ransac_threshold=0.02 * g.s, ransac_iters=64, rng=1)
    assert sim3_close(est, g, 5e-3)


def test_robust_noise_free_is_exact_and_all_inliers():
    rng = np.random.default_rng(4)
    g = random_sim3(rng)
    src = rng.normal(size=(30, 3))
    est, info = robust_sim3(src, g.apply(src))
    assert sim3_close(est, g, 1e-9)
    assert info["inlier_ratio"] == 1.0
    assert info["residual_rms"] < 1e-9 * g.s


def test_degenerate_inputs_raise_clear_errors():
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="at least 3"):
        umeyama(rng.normal(size=(2, 3)), rng.normal(size=(2, 3)))
    line = np.outer(np.linspace(0, 1, 10), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="collinear"):
        umeyama(line, line * 2.0 + 1.0)
    same = np.ones((5, 3))
    with pytest.raises(ValueError, match="coincide"):
        umeyama(same, rng.normal(size=(5, 3)))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        umeyama(rng.normal(size=(5, 2)), rng.normal(size=(5, 2)))
    with pytest.raises(ValueError, match="match"):
        umeyama(rng.normal(size=(5, 3)), rng.normal(size=(6, 3)))
    with pytest.raises(ValueError, match="finite"):
        umeyama(np.full((5, 3), np.nan), rng.normal(size=(5, 3)))
    with pytest.raises(ValueError, match="at least 3"):
        umeyama(rng.normal(size=(5, 3)), rng.normal(size=(5, 3)), weights=[1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="collinear"):
        robust_sim3(line, line)
    with pytest.raises(ValueError, match="method"):
        robust_sim3(rng.normal(size=(5, 3)), rng.normal(size=(5, 3)), method="lsq")


def test_symmetric_scale_is_unbiased_when_both_sides_are_noisy():
    """Noise on the source inflates its spread: Umeyama's scale comes out low by var / (var + noise), the
    symmetric scale (ratio of spreads) does not when both sides carry the same relative noise."""
    rng = np.random.default_rng(0)
    X = rng.normal(scale=1.0, size=(20_000, 3))
    truth = Sim3(2.5, Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix(), np.array([1.0, -2.0, 0.5]))
    src = X + rng.normal(scale=0.3, size=X.shape)
    dst = truth.apply(X + rng.normal(scale=0.3, size=X.shape))
    plain = umeyama(src, dst)
    sym = umeyama(src, dst, symmetric=True)
    assert plain.s == pytest.approx(2.5 / (1 + 0.09), rel=0.02)  # the bias
    assert sym.s == pytest.approx(2.5, rel=0.01)
    np.testing.assert_allclose(sym.R, truth.R, atol=0.01)
    robust, _ = robust_sim3(src, dst, symmetric=True)
    assert robust.s == pytest.approx(2.5, rel=0.03)
    # noise-free: both agree exactly
    assert umeyama(X, truth.apply(X), symmetric=True).s == pytest.approx(2.5, rel=1e-9)
