"""Similarity transforms (Sim(3)) and their estimation from 3D-3D correspondences.

A :class:`Sim3` maps points as ``X' = s R X + t``. :func:`umeyama` is the closed-form weighted least-squares
estimate (Umeyama 1991, "Least-squares estimation of transformation parameters between two point
patterns"); :func:`robust_sim3` wraps it with IRLS (Huber weights, scale from the median residual) and an
optional RANSAC / least-median-of-squares initialisation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Sim3", "umeyama", "robust_sim3", "SIM3_METHODS", "CHI3_MEDIAN"]

SIM3_METHODS = ("umeyama", "irls", "ransac")

#: Median of the norm of a 3D standard normal vector (sqrt of the chi-square(3) median, 2.36597):
#: ``median(|e|) = CHI3_MEDIAN * sigma`` for isotropic Gaussian residuals with per-axis std ``sigma``.
CHI3_MEDIAN = 1.538172

_REL_RANK_TOL = 1e-9  # second singular value of the cross-covariance relative to the first
_REL_FLOOR = 1e-9  # residual scale floor relative to the point cloud extent


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


@dataclass
class Sim3:
    """Similarity transform ``X' = s R X + t``.

    Attributes:
        s: scale, ``> 0``.
        R: rotation ``[3, 3]``.
        t: translation ``[3]``.
    """

    s: float
    R: np.ndarray
    t: np.ndarray

    def __post_init__(self) -> None:
        self.s = float(self.s)
        self.R = np.asarray(self.R, dtype=np.float64).reshape(3, 3).copy()
        self.t = np.asarray(self.t, dtype=np.float64).reshape(3).copy()
        if not (np.isfinite(self.s) and self.s > 0.0):
            raise ValueError(f"Sim3 scale must be finite and > 0, got {self.s}")
        if not (np.all(np.isfinite(self.R)) and np.all(np.isfinite(self.t))):
            raise ValueError("Sim3 rotation and translation must be finite")
        ortho = float(np.abs(self.R.T @ self.R - np.eye(3)).max())
        if ortho > 1e-6 or np.linalg.det(self.R) <= 0:
            raise ValueError(f"Sim3 R must be a rotation matrix (orthonormality error {ortho:.2e}, "
                             f"det {np.linalg.det(self.R):.3f})")

    @classmethod
    def identity(cls) -> "Sim3":
        """The identity transform."""
        return cls(1.0, np.eye(3), np.zeros(3))

    @classmethod
    def anchoring(cls, source_c2w: np.ndarray, target_c2w: np.ndarray, s: float = 1.0) -> "Sim3":
        """The Sim(3) with scale ``s`` that maps a camera with pose ``source_c2w`` ``[4, 4]`` onto the pose
        ``target_c2w`` ``[4, 4]`` (rotation ``R = R_target R_source^T``, centre ``s R c_source + t = c_target``)."""
        src = np.asarray(source_c2w, dtype=np.float64)
        dst = np.asarray(target_c2w, dtype=np.float64)
        if src.shape != (4, 4) or dst.shape != (4, 4):
            raise ValueError(f"poses must be [4, 4], got {src.shape} and {dst.shape}")
        R = dst[:3, :3] @ src[:3, :3].T
        U, _, Vt = np.linalg.svd(R)  # remove rounding so the product stays a rotation to 1e-6
        R = U @ np.diag([1.0, 1.0, float(np.sign(np.linalg.det(U @ Vt)))]) @ Vt
        return cls(s, R, dst[:3, 3] - s * (R @ src[:3, 3]))

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> "Sim3":
        """Build from a ``[4, 4]`` matrix ``[[s R, t], [0, 1]]``."""
        M = np.asarray(matrix, dtype=np.float64)
        if M.shape != (4, 4):
            raise ValueError(f"Sim3 matrix must be [4, 4], got {M.shape}")
        A = M[:3, :3]
        det = np.linalg.det(A)
        if not det > 0.0:
            raise ValueError(f"Sim3 matrix block must have positive determinant, got {det}")
        s = float(np.cbrt(det))
        return cls(s, A / s, M[:3, 3])

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform points ``[..., 3]`` -> ``[..., 3]``."""
        points = np.asarray(points, dtype=np.float64)
        if points.shape[-1] != 3:
            raise ValueError(f"points must be [..., 3], got {points.shape}")
        return self.s * (points @ self.R.T) + self.t

    def inverse(self) -> "Sim3":
        """The inverse transform ``X = (1/s) R^T (X' - t)``."""
        inv_s = 1.0 / self.s
        return Sim3(inv_s, self.R.T, -inv_s * (self.R.T @ self.t))

    def compose(self, other: "Sim3") -> "Sim3":
        """``self ∘ other``: ``self.compose(other).apply(x) == self.apply(other.apply(x))``."""
        return Sim3(self.s * other.s, self.R @ other.R, self.s * (self.R @ other.t) + self.t)

    def as_matrix(self) -> np.ndarray:
        """``[4, 4]`` homogeneous matrix ``[[s R, t], [0, 1]]``."""
        M = np.eye(4)
        M[:3, :3] = self.s * self.R
        M[:3, 3] = self.t
        return M

    def transform_pose_w2c(self, extrinsic: np.ndarray) -> np.ndarray:
        """Re-express world-to-camera extrinsics for the mapped world ``X' = s R X + t``.

        A camera with world-to-camera ``(Rw, tw)`` has camera-to-world rotation ``Rc = Rw^T`` and centre
        ``c = -Rw^T tw``. In the new world its rotation is ``R Rc`` and its centre ``s R c + t``, so the new
        world-to-camera is ``Rw' = Rw R^T`` and ``tw' = -Rw' (s R c + t) = s tw - Rw R^T t``. Camera-frame
        coordinates are then in the new world's units: ``Rw' X' + tw' = s (Rw X + tw)``, i.e. depths of this
        camera must be multiplied by ``s``.

        Args:
            extrinsic: ``[..., 3, 4]`` (or ``[..., 4, 4]``) world-to-camera.

        Returns:
            Same shape as the input.
        """
        E = np.asarray(extrinsic, dtype=np.float64)
        if E.shape[-2:] not in ((3, 4), (4, 4)):
            raise ValueError(f"extrinsic must be [..., 3, 4] or [..., 4, 4], got {E.shape}")
        Rw = E[..., :3, :3]
        tw = E[..., :3, 3]
        out = E.copy()
        out[..., :3, :3] = Rw @ self.R.T
        out[..., :3, 3] = self.s * tw - np.einsum("...ij,j->...i", Rw @ self.R.T, self.t)
        return out

    def transform_pose_c2w(self, c2w: np.ndarray) -> np.ndarray:
        """Map camera-to-world ``[..., 4, 4]`` poses: rotation ``R Rc``, centre ``s R c + t``."""
        P = np.asarray(c2w, dtype=np.float64)
        if P.shape[-2:] != (4, 4):
            raise ValueError(f"c2w must be [..., 4, 4], got {P.shape}")
        out = P.copy()
        out[..., :3, :3] = self.R @ P[..., :3, :3]
        out[..., :3, 3] = self.apply(P[..., :3, 3])
        return out


def _umeyama_batch(
    src: np.ndarray, dst: np.ndarray, w: np.ndarray, with_scale: bool, symmetric: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted Umeyama for a batch of problems.

    Args:
        src, dst: ``[B, N, 3]``.
        w: non-negative weights ``[B, N]``.
        with_scale: estimate the scale.
        symmetric: scale ``sqrt(var_dst / var_src)`` (Horn's symmetric form) instead of Umeyama's
            ``trace(D S) / var_src``, see :func:`umeyama`.

    Returns:
        ``s [B]``, ``R [B, 3, 3]``, ``t [B, 3]``, ``valid [B]`` (well-posed problems), ``var_src [B]``,
        ``sv [B, 3]`` singular values of the cross-covariance.
    """
    W = w.sum(axis=1)
    safe_W = np.where(W > 0, W, 1.0)
    wn = w / safe_W[:, None]
    mu_s = np.einsum("bn,bni->bi", wn, src)
    mu_d = np.einsum("bn,bni->bi", wn, dst)
    xs = src - mu_s[:, None, :]
    xd = dst - mu_d[:, None, :]
    var_s = np.einsum("bn,bni,bni->b", wn, xs, xs)
    cov = np.einsum("bn,bni,bnj->bij", wn, xd, xs)  # E[(y - mu_y)(x - mu_x)^T]
    U, D, Vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(U) * np.linalg.det(Vt))
    d = np.where(d == 0, 1.0, d)
    Sdiag = np.ones((len(d), 3))
    Sdiag[:, 2] = d
    R = (U * Sdiag[:, None, :]) @ Vt
    valid = (W > 0) & (var_s > 0) & (D[:, 0] > 0) & (D[:, 1] > _REL_RANK_TOL * D[:, 0])
    if with_scale:
        trace = (D * Sdiag).sum(axis=1)
        safe_var = np.where(var_s > 0, var_s, 1.0)
        if symmetric:
            var_d = np.einsum("bn,bni,bni->b", wn, xd, xd)
            s = np.where(valid & (trace > 0), np.sqrt(var_d / safe_var), 1.0)
        else:
            s = np.where(valid, trace / safe_var, 1.0)
        valid &= (s > 0) & (trace > 0)
        s = np.where(valid, s, 1.0)
    else:
        s = np.ones(len(d))
    t = mu_d - s[:, None] * np.einsum("bij,bj->bi", R, mu_s)
    return s, R, t, valid, var_s, D


def _validate_pair(src: Any, dst: Any, weights: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 3:
        raise ValueError(f"src must be [N, 3], got {src.shape}")
    if dst.shape != src.shape:
        raise ValueError(f"dst must match src's shape {src.shape}, got {dst.shape}")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise ValueError("src and dst must be finite")
    if weights is None:
        w = np.ones(len(src))
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != (len(src),):
            raise ValueError(f"weights must be [N] with N={len(src)}, got {np.shape(weights)}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("weights must be finite and >= 0")
    n_pos = int(np.count_nonzero(w > 0))
    if n_pos < 3:
        raise ValueError(f"Sim(3) estimation needs at least 3 points with positive weight, got {n_pos}")
    return src, dst, w


def _solve(src: np.ndarray, dst: np.ndarray, w: np.ndarray, with_scale: bool, symmetric: bool = False) -> Sim3:
    s, R, t, valid, var_s, D = _umeyama_batch(src[None], dst[None], w[None], with_scale, symmetric)
    if not valid[0]:
        if not var_s[0] > 0:
            raise ValueError("degenerate Sim(3) problem: all (weighted) source points coincide")
        if not D[0, 0] > 0:
            raise ValueError("degenerate Sim(3) problem: all (weighted) target points coincide")
        raise ValueError(
            "degenerate Sim(3) problem: the points are collinear (cross-covariance rank < 2), "
            "the rotation about their line is undetermined; need 3 non-collinear points"
        )
    return Sim3(float(s[0]), R[0], t[0])


def umeyama(
    src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None, with_scale: bool = True,
    symmetric: bool = False,
) -> Sim3:
    """Weighted least-squares Sim(3) with ``dst ≈ s R src + t``.

    Minimises ``sum_i w_i |dst_i - (s R src_i + t)|^2`` in closed form.

    With ``symmetric`` the scale is ``s = sqrt(sum_i w_i |dst_i - mu_dst|^2 / sum_i w_i |src_i - mu_src|^2)``
    (Horn's symmetric scale; rotation and translation as above). Umeyama's scale treats ``src`` as exact: noise
    in ``src`` inflates its spread and biases ``s`` low by ``var_true / (var_true + var_noise)``. When both sides
    are equally noisy in relative terms (two windows of depth with the same relative error, each in its own
    scale) the ratio of spreads is unbiased, and chained alignments do not drift in scale from that bias.

    Args:
        src: ``[N, 3]`` source points.
        dst: ``[N, 3]`` target points.
        weights: optional non-negative ``[N]`` weights.
        with_scale: estimate ``s`` (else ``s = 1``, a rigid transform).
        symmetric: use the symmetric scale.

    Raises:
        ValueError: on bad shapes/values, fewer than 3 positively weighted points, coincident or collinear
            points.
    """
    src, dst, w = _validate_pair(src, dst, weights)
    return _solve(src, dst, w, with_scale, symmetric)


def _residuals(sim: Sim3, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    return np.linalg.norm(sim.apply(src) - dst, axis=1)


def _robust_scale(r: np.ndarray, w: np.ndarray, floor: float) -> float:
    """Per-axis noise scale from the median residual norm of positively weighted points."""
    med = float(np.median(r[w > 0]))
    return max(med / CHI3_MEDIAN, floor)


def _ransac_init(
    src: np.ndarray, dst: np.ndarray, w: np.ndarray, iters: int, threshold: float | None,
    with_scale: bool, rng: np.random.Generator, symmetric: bool = False,
) -> Sim3:
    """Best minimal-sample hypothesis: most inliers under ``threshold``, or least median residual (LMedS)
    when ``threshold`` is None."""
    idx = np.flatnonzero(w > 0)
    samples = idx[rng.integers(0, len(idx), size=(iters, 3))]
    s, R, t, valid, _, _ = _umeyama_batch(src[samples], dst[samples], np.ones((iters, 3)), with_scale, symmetric)
    if not np.any(valid):
        raise ValueError("RANSAC found no non-degenerate minimal sample (points nearly collinear?)")
    s, R, t = s[valid], R[valid], t[valid]
    S, D = src[idx], dst[idx]
    chunk = max(1, int(2_000_000 // max(len(idx), 1)))
    scores = np.empty(len(s))
    for a in range(0, len(s), chunk):
        b = min(a + chunk, len(s))
        pred = s[a:b, None, None] * np.einsum("bij,nj->bni", R[a:b], S) + t[a:b, None, :]
        r = np.linalg.norm(pred - D[None], axis=2)
        if threshold is None:
            scores[a:b] = -np.median(r, axis=1)
        else:
            scores[a:b] = np.count_nonzero(r <= threshold, axis=1)
    best = int(np.argmax(scores))
    return Sim3(float(s[best]), R[best], t[best])


def robust_sim3(
    src: np.ndarray,
    dst: np.ndarray,
    weights: np.ndarray | None = None,
    method: str = "irls",
    iters: int = 30,
    huber_delta: float | str = "auto",
    huber_k: float = 2.0,
    inlier_threshold: float | None = None,
    inlier_k: float = 3.0,
    ransac_iters: int = 256,
    ransac_threshold: float | None = None,
    with_scale: bool = True,
    symmetric: bool = False,
    rng: np.random.Generator | int | None = None,
    tol: float = 1e-10,
) -> tuple[Sim3, dict[str, Any]]:
    """Robust Sim(3) with ``dst ≈ s R src + t``.

    Methods:
        ``'umeyama'``: plain weighted least squares (no outlier handling).
        ``'irls'``: start from weighted Umeyama, then iteratively reweighted least squares with Huber weights
        ``min(1, delta / r_i)`` on the residual norms ``r_i``, multiplied with the given weights. With
        ``huber_delta='auto'`` the threshold is ``huber_k * sigma`` where ``sigma = median(r) / CHI3_MEDIAN``
        (the median-absolute-residual estimate of the per-axis noise; residual norms are non-negative so
        their median absolute deviation from zero is their median), re-estimated every iteration.
        ``'ransac'``: ``ransac_iters`` random 3-point hypotheses scored by inlier count under
        ``ransac_threshold`` or, when that is None, by least median residual (LMedS, no threshold needed);
        the best one initialises the IRLS above.

    After IRLS / RANSAC, points with ``r_i <= inlier_threshold`` (default ``inlier_k * sigma`` from the final
    residuals, floored at ``1e-9`` of the target extent) are inliers, and the transform is refitted on them
    with their given weights.

    Args:
        src, dst: ``[N, 3]`` corresponding points.
        weights: optional non-negative ``[N]`` confidence weights.
        method: one of :data:`SIM3_METHODS`.
        iters: maximum IRLS iterations.
        huber_delta: fixed Huber threshold (``dst`` units) or ``'auto'``.
        huber_k: multiplier of the robust noise scale for the automatic Huber threshold.
        inlier_threshold: fixed inlier threshold (``dst`` units) or None for ``inlier_k * sigma``.
        inlier_k: multiplier of the robust noise scale for the automatic inlier threshold.
        ransac_iters: number of minimal samples for ``'ransac'``.
        ransac_threshold: inlier threshold for scoring RANSAC hypotheses, None for LMedS.
        with_scale: estimate the scale (else rigid).
        symmetric: symmetric scale (see :func:`umeyama`) in every fit.
        rng: generator or seed for RANSAC sampling (None: seed 0, deterministic).
        tol: IRLS stops when the parameter change falls below this.

    Returns:
        ``(sim3, info)`` with ``info`` keys: ``residual_rms`` (weighted RMS residual of the inliers, ``dst``
        units), ``inlier_ratio`` (inliers / positively weighted points), ``num_inliers``, ``num_points``,
        ``scale``, ``sigma`` (robust per-axis noise scale), ``inlier_threshold``, ``huber_delta``,
        ``iterations``, ``method``.

    Raises:
        ValueError: on invalid arguments or degenerate point sets (see :func:`umeyama`).
    """
    if method not in SIM3_METHODS:
        raise ValueError(f"method must be one of {SIM3_METHODS}, got {method!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an integer >= 0, got {iters!r}")
    if isinstance(huber_delta, str):
        if huber_delta != "auto":
            raise ValueError(f"huber_delta must be a positive number or 'auto', got {huber_delta!r}")
        fixed_delta = None
    else:
        fixed_delta = float(huber_delta)
        if not fixed_delta > 0:
            raise ValueError(f"huber_delta must be > 0, got {huber_delta!r}")
    if not huber_k > 0 or not inlier_k > 0:
        raise ValueError(f"huber_k and inlier_k must be > 0, got {huber_k}, {inlier_k}")
    if inlier_threshold is not None and not inlier_threshold > 0:
        raise ValueError(f"inlier_threshold must be > 0 or None, got {inlier_threshold!r}")
    if ransac_threshold is not None and not ransac_threshold > 0:
        raise ValueError(f"ransac_threshold must be > 0 or None, got {ransac_threshold!r}")
    if method == "ransac" and (isinstance(ransac_iters, bool) or not isinstance(ransac_iters, int)
                               or ransac_iters < 1):
        raise ValueError(f"ransac_iters must be an integer >= 1, got {ransac_iters!r}")
    src, dst, w = _validate_pair(src, dst, weights)
    pos = w > 0
    extent = float(np.sqrt(np.mean(np.sum((dst[pos] - dst[pos].mean(axis=0)) ** 2, axis=1))))
    floor = _REL_FLOOR * max(extent, np.finfo(np.float64).tiny)

    if method == "ransac":
        sim = _ransac_init(src, dst, w, ransac_iters, ransac_threshold, with_scale, _as_rng(rng), symmetric)
    else:
        sim = _solve(src, dst, w, with_scale, symmetric)

    delta = float("nan")
    it_done = 0
    if method in ("irls", "ransac"):
        for it in range(iters):
            r = _residuals(sim, src, dst)
            delta = fixed_delta if fixed_delta is not None else huber_k * _robust_scale(r, w, floor)
            hw = np.minimum(1.0, delta / np.maximum(r, floor))
            new = _solve(src, dst, w * hw, with_scale, symmetric)
            change = (abs(new.s - sim.s) / sim.s + float(np.abs(new.R - sim.R).max())
                      + float(np.abs(new.t - sim.t).max()) / max(extent, floor))
            sim = new
            it_done = it + 1
            if change < tol:
                break

    r = _residuals(sim, src, dst)
    sigma = _robust_scale(r, w, floor)
    if method == "umeyama":
        inliers = pos.copy()
        thr = float("inf") if inlier_threshold is None else float(inlier_threshold)
        if inlier_threshold is not None:
            inliers &= r <= thr
    else:
        thr = float(inlier_threshold) if inlier_threshold is not None else max(inlier_k * sigma, floor)
        inliers = pos & (r <= thr)
        if np.count_nonzero(inliers) >= 3:
            try:
                refit = _solve(src[inliers], dst[inliers], w[inliers], with_scale, symmetric)
            except ValueError:
                logger.debug("inlier refit degenerate; keeping the IRLS estimate")
            else:
                sim = refit
                r = _residuals(sim, src, dst)
                inliers = pos & (r <= thr)
    n_in = int(np.count_nonzero(inliers))
    if n_in > 0:
        wi = w[inliers]
        rms = float(np.sqrt(np.sum(wi * r[inliers] ** 2) / np.sum(wi)))
    else:
        rms = float("nan")
    info: dict[str, Any] = {
        "residual_rms": rms,
        "inlier_ratio": n_in / int(np.count_nonzero(pos)),
        "num_inliers": n_in,
        "num_points": int(len(src)),
        "scale": sim.s,
        "sigma": sigma,
        "inlier_threshold": thr,
        "huber_delta": delta,
        "iterations": it_done,
        "method": method,
    }
    return sim, info
