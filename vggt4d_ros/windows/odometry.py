"""Metric scale of a window from the robot's odometry (numpy only).

VGGT4D's cameras of a window are right up to an unknown similarity: their own frame and their own scale. The
robot's odometry gives the same cameras' poses in metres (``odom_T_camera``, through the TF tree), so the
window's metric scale is the similarity's scale between the two sets of camera centres. The odometry is taken
as the exact side and the window's cameras as the noisy one (a regression of the window on the odometry), so
the window's pose noise does not bias the scale; see :func:`fit_metric_scale`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .sim3 import robust_sim3

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
        residual: RMS misfit of the window's cameras (scaled to metres) to the odometry's, over the inliers.
        motion: largest odometry distance between two of the window's cameras, in metres.
        num_pairs: frame pairs used.
        inlier_ratio: fraction of pairs within 3 robust sigmas of the fit.
        std: relative standard error of ``scale``.
        method: ``'centres'`` or ``'distances'`` (see :func:`fit_metric_scale`).
    """

    scale: float
    residual: float
    motion: float
    num_pairs: int
    inlier_ratio: float
    std: float = float("nan")
    method: str = "centres"


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

    Two estimators, both with the odometry as the exact side (the window's cameras carry the noise, so the
    noise does not bias the scale as it would the other way round):

    * ``'centres'``: a robust Sim(3) from the odometry camera centres to the window's
      (:func:`~vggt4d_ros.windows.sim3.robust_sim3`, Huber ``4`` sigma, inliers within ``6`` sigma); the noise
      enters linearly, so the scale is unbiased. Needs non-collinear motion.
    * ``'distances'`` (straight-line motion, where the rotation about the line is undetermined): Huber IRLS
      regression of the window's pairwise camera distances on the odometry's, ``d_window ~ d_odom / s``
      (distances are rotation invariant; noise inflates them slightly, so this is biased low by about
      ``noise^2 / baseline^2``).

    Args:
        window_c2w: ``[S, 4, 4]`` camera-to-world poses in the window's frame and units.
        odom_c2w: ``[S, 4, 4]`` camera-to-odom poses of the same frames, in metres.
        min_motion: metres; when no two odometry camera centres are this far apart the scale is not
            observable and None is returned.
        huber_k: Huber threshold (robust sigmas) of the distance regression.
        iters: IRLS iterations of the distance regression.

    Returns:
        The :class:`ScaleFit`, or None when the motion is below ``min_motion``, the window's own cameras do not
        move, or the two motions disagree (fewer than half the frames or pairs are inliers, or the fit explains
        less than half of the odometry motion's variance; logged).

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
    try:
        k, residual, std, inlier_ratio, explained = _fit_centres(cw, co)
        method = "centres"
    except ValueError:  # collinear or coincident centres: the rotation is undetermined, distances still work
        k, residual, std, inlier_ratio, explained = _fit_distances(a, b, len(cw), huber_k, iters)
        method = "distances"
    if not k > 0:
        return None
    fit = ScaleFit(scale=1.0 / k, residual=residual, motion=motion, num_pairs=int(len(a)),
                   inlier_ratio=inlier_ratio, std=std, method=method)
    if fit.inlier_ratio < 0.5 or not explained > 0.5:
        logger.warning("odometry scale fit rejected: the window's camera motion does not match the odometry "
                       "(%s: inliers %.2f, R^2 %.2f, residual %.3f m for %.3f m of motion)", method,
                       fit.inlier_ratio, explained, residual, motion)
        return None
    return fit


def _fit_centres(cw: np.ndarray, co: np.ndarray) -> tuple[float, float, float, float, float]:
    """``(k, residual m, relative std, inlier ratio, R^2)`` of ``cw ~ k R co + t``."""
    sim, info = robust_sim3(co, cw, huber_k=4.0, inlier_k=6.0)
    k = sim.s
    res = cw - sim.apply(co)  # window units
    inl = np.linalg.norm(res, axis=1) <= info["inlier_threshold"]
    spread = float(np.sum((co[inl] - co[inl].mean(axis=0)) ** 2))  # sum over inlier frames, m^2
    sigma2 = float(np.sum(res[inl] ** 2)) / max(3 * (int(inl.sum()) - 2), 1)  # per-axis noise, window units^2
    std = float(np.sqrt(sigma2 / max(spread, 1e-300))) / k
    residual = float(np.sqrt(np.mean(np.sum(res[inl] ** 2, axis=1)))) / k  # metres
    explained = 1.0 - float(np.sum(res[inl] ** 2)) / max(k * k * spread, 1e-300)
    return k, residual, std, float(np.mean(inl)), explained


def _fit_distances(a: np.ndarray, b: np.ndarray, frames: int, huber_k: float,
                   iters: int) -> tuple[float, float, float, float, float]:
    """``(k, residual m, relative std, inlier ratio, R^2)`` of ``a ~ k b`` (Huber IRLS)."""
    k = float(np.dot(a, b) / np.dot(b, b))
    sigma = 0.0
    floor = 1e-12 * float(a.max())
    for _ in range(iters):
        r = a - k * b
        sigma = max(float(np.median(np.abs(r))) / _CHI1_MAD, floor)
        w = np.minimum(1.0, huber_k * sigma / np.maximum(np.abs(r), 1e-300))
        k_new = float(np.dot(w * a, b) / np.dot(w * b, b))
        done = abs(k_new - k) <= 1e-12 * abs(k)
        k = k_new
        if done:
            break
    if not k > 0:
        return k, float("nan"), float("inf"), 0.0, 0.0
    r = a - k * b
    inliers = np.abs(r) <= 3.0 * max(sigma, floor)
    if not np.any(inliers):
        return k, float("nan"), float("inf"), 0.0, 0.0
    residual = float(np.sqrt(np.mean(r[inliers] ** 2))) / k  # metres
    spread = float(np.sqrt(np.mean(b[inliers] ** 2)))
    # the pairs share frames: count frames - 1 independent pairs, not all of them
    std = float(np.sqrt(np.mean(r[inliers] ** 2))) / (k * spread * np.sqrt(max(frames - 1, 1)))
    explained = 1.0 - float(np.mean((r[inliers] / k) ** 2)) / max(float(np.var(b[inliers])), 1e-300)
    return k, residual, std, float(np.mean(inliers)), explained
