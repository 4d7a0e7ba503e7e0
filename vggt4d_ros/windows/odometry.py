"""Metric scale of a window from the robot's odometry (numpy only).

VGGT4D's cameras of a window are right up to an unknown similarity: their own frame and their own scale. The
robot's odometry gives the same cameras' poses in metres (``odom_T_camera``, through the TF tree). Distances
between camera centres are invariant to rotation and translation, so the window's metric scale is the factor
that maps its pairwise camera distances onto the odometry's: a robust (Huber IRLS) least-squares fit of
``d_window_ij ~ d_odom_ij / s`` over all frame pairs ``i < j``. It needs no rotation between the two frames,
so it also works for straight-line motion, where a full Sim(3) fit of the centres is degenerate. The window's
distances are regressed on the odometry's (the accurate side), so noise on the window's cameras does not pull
the scale down as it would the other way round.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["ScaleFit", "fit_metric_scale", "SCALE_SOURCES"]

#: Stitcher ``scale_source`` values: ``'auto'`` uses odometry when a window has it, ``'odometry'`` expects it
#: (a window without is logged), ``'none'`` ignores odometry.
SCALE_SOURCES = ("auto", "odometry", "none")

_CHI1_MAD = 0.6744897501960817  # median of |N(0, 1)|


@dataclass(frozen=True)
class ScaleFit:
    """Metric scale of one window.

    Attributes:
        scale: metres per window unit.
        residual: RMS of ``scale * d_window - d_odom`` over the inlier pairs, in metres.
        motion: largest odometry distance between two of the window's cameras, in metres.
        num_pairs: frame pairs used.
        inlier_ratio: fraction of pairs within 3 robust sigmas of the fit.
    """

    scale: float
    residual: float
    motion: float
    num_pairs: int
    inlier_ratio: float


def _centres(poses: np.ndarray, name: str) -> np.ndarray:
    P = np.asarray(poses, dtype=np.float64)
    if P.ndim != 3 or P.shape[1:] != (4, 4):
        raise ValueError(f"{name} must be [S, 4, 4] camera-to-world poses, got {P.shape}")
    if not np.all(np.isfinite(P)):
        raise ValueError(f"{name} must be finite")
    return P[:, :3, 3]


def fit_metric_scale(
    window_c2w: np.ndarray,
    odom_c2w: np.ndarray,
    min_motion: float = 0.1,
    huber_k: float = 2.0,
    iters: int = 20,
) -> ScaleFit | None:
    """Fit the metres-per-window-unit scale of a window from its cameras' odometry poses.

    Args:
        window_c2w: ``[S, 4, 4]`` camera-to-world poses in the window's frame and units.
        odom_c2w: ``[S, 4, 4]`` camera-to-odom poses of the same frames, in metres.
        min_motion: metres; when no two odometry camera centres are this far apart the scale is not
            observable and None is returned.
        huber_k: Huber threshold in robust sigmas of the pair residuals.
        iters: IRLS iterations.

    Returns:
        The :class:`ScaleFit`, or None when the motion is below ``min_motion``, the window's own cameras do not
        move, or the two motions disagree (fewer than half the pairs within 3 robust sigmas, or the fit explains
        less than half the variance of the odometry distances; logged).

    Raises:
        ValueError: on mismatched or non-finite inputs, ``S < 2`` or a negative ``min_motion``.
    """
    cw = _centres(window_c2w, "window_c2w")
    co = _centres(odom_c2w, "odom_c2w")
    if cw.shape != co.shape:
        raise ValueError(f"window_c2w and odom_c2w must have the same number of frames, got {len(cw)} and {len(co)}")
    if len(cw) < 2:
        raise ValueError("a scale fit needs at least 2 frames")
    if not min_motion >= 0:
        raise ValueError(f"min_motion must be >= 0, got {min_motion!r}")
    i, j = np.triu_indices(len(cw), k=1)
    a = np.linalg.norm(cw[i] - cw[j], axis=1)  # window units
    b = np.linalg.norm(co[i] - co[j], axis=1)  # metres
    motion = float(b.max())
    if motion < min_motion or not np.any(a > 0):
        logger.debug("scale fit skipped: odometry motion %.3f m (min %.3f m)", motion, min_motion)
        return None
    # regress the window's distances on the odometry's (a ~ k b, s = 1 / k): odometry is the accurate side,
    # so the long, well-measured baselines dominate and noise on the window's cameras does not bias k
    k = float(np.dot(a, b) / np.dot(b, b))
    sigma = 0.0
    for _ in range(iters):
        r = a - k * b
        sigma = max(float(np.median(np.abs(r))) / _CHI1_MAD, 1e-12 * float(a.max()))
        w = np.minimum(1.0, huber_k * sigma / np.maximum(np.abs(r), 1e-300))
        k_new = float(np.dot(w * a, b) / np.dot(w * b, b))
        done = abs(k_new - k) <= 1e-12 * abs(k)
        k = k_new
        if done:
            break
    if not k > 0:
        return None
    s = 1.0 / k
    r = s * (a - k * b)  # metres
    inliers = np.abs(a - k * b) <= 3.0 * max(sigma, 1e-12 * float(a.max()))
    residual = float(np.sqrt(np.mean(r[inliers] ** 2))) if np.any(inliers) else float("nan")
    fit = ScaleFit(scale=s, residual=residual, motion=motion, num_pairs=int(len(a)),
                   inlier_ratio=float(np.mean(inliers)))
    explained = 0.0  # share of the variance of the odometry distances the fit explains (R^2)
    if np.any(inliers):
        explained = 1.0 - float(np.mean(r[inliers] ** 2)) / max(float(np.var(b[inliers])), 1e-300)
    if fit.inlier_ratio < 0.5 or not explained > 0.5:
        logger.warning("odometry scale fit rejected: the window's camera motion does not match the odometry "
                       "(inliers %.2f, R^2 %.2f, residual %.3f m for %.3f m of motion)", fit.inlier_ratio, explained,
                       residual, motion)
        return None
    return fit
