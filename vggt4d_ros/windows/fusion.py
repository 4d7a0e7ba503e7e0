"""Variance-weighted fusion of the window chain with the robot's odometry (numpy only).

The :class:`~vggt4d_ros.windows.stitcher.Stitcher` places each window by aligning it to the previous one. That
chain drifts; the odometry drifts differently. :class:`MapOdomFilter` keeps a filtered map->odom transform
(rotation and, once the map is metric, translation) from the placed windows, predicts from it where the
odometry puts the next window, and blends each placement towards that prediction with the weight the two
variances give (a scalar-variance Kalman step per quantity):

* the chain's variance comes from the data: how much the shared frames disagree after the alignment
  (:func:`rotation_misfit`, :func:`position_misfit`);
* the odometry's from the spread of its per-frame predictions plus a drift per metre travelled
  (``rotation_drift`` radians, ``translation_drift`` as a fraction of the distance);
* :func:`fuse_log_scale` does the same for the metric scale (in log space).

A drift of ``inf`` turns that part of the fusion off.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from .odometry import ScaleFit
from .sim3 import Sim3

__all__ = ["MapOdomFilter", "fuse_log_scale", "mean_rotation", "position_misfit", "rotation_misfit"]

_TINY_VARIANCE = 1e-12


def mean_rotation(R: np.ndarray) -> np.ndarray:
    """Chordal L2 mean of rotations ``[N, 3, 3]``: the rotation nearest to their sum."""
    U, _, Vt = np.linalg.svd(np.asarray(R, dtype=np.float64).sum(axis=0))
    return U @ np.diag([1.0, 1.0, float(np.sign(np.linalg.det(U @ Vt)))]) @ Vt


def rotation_misfit(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Variance (rad^2) of a rotation placed from ``n`` frame pairs: mean squared angle between the orientations
    ``R_a [n, 3, 3]`` and ``R_b [n, 3, 3]``, over ``n``."""
    angles = Rotation.from_matrix(R_a @ np.swapaxes(R_b, 1, 2)).magnitude()
    return float(np.mean(angles ** 2)) / len(angles) + _TINY_VARIANCE


def position_misfit(c_a: np.ndarray, c_b: np.ndarray) -> float:
    """Variance (summed over the axes) of a position placed from ``n`` frame pairs: mean squared distance between
    ``c_a [n, 3]`` and ``c_b [n, 3]``, over ``n``."""
    return float(np.mean(np.sum((c_a - c_b) ** 2, axis=1))) / len(c_a) + _TINY_VARIANCE


def fuse_log_scale(predicted: float, var_predicted: float, fit: ScaleFit | None) -> tuple[float, float]:
    """Scale and variance of its log from a prediction (variance ``var_predicted`` of its log) and an odometry
    ``fit`` (relative standard error ``fit.std``), combined in log space; the prediction alone without a fit."""
    if fit is None:
        return predicted, var_predicted
    var_fit = fit.std ** 2 if np.isfinite(fit.std) else np.inf
    if var_fit == 0.0:
        return fit.scale, 0.0
    gain = var_predicted / (var_predicted + var_fit) if np.isfinite(var_predicted) else 1.0
    log_s = np.log(predicted) + gain * (np.log(fit.scale) - np.log(predicted))
    return float(np.exp(log_s)), (1.0 - gain) * var_predicted if np.isfinite(var_predicted) else var_fit


def _kalman(var_pred: float, var_meas: float) -> float:
    """Gain of a scalar Kalman step."""
    if not np.isfinite(var_pred):
        return 1.0
    if not np.isfinite(var_meas):
        return 0.0
    total = var_pred + var_meas
    return var_pred / total if total > 0 else 1.0


class MapOdomFilter:
    """Filtered map->odom rotation and translation, and the odometry's predictions of window placements.

    Args:
        rotation_drift: odometry heading error per metre travelled (rad, standard deviation); ``inf`` ignores
            odometry rotations.
        translation_drift: odometry position error as a fraction of the distance travelled; ``inf`` ignores
            odometry translations.
    """

    def __init__(self, rotation_drift: float = 0.01, translation_drift: float = 0.02) -> None:
        for name, value in (("rotation_drift", rotation_drift), ("translation_drift", translation_drift)):
            try:
                v = float(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name} must be a number >= 0 (inf turns it off), got {value!r}") from exc
            if not v >= 0:
                raise ValueError(f"{name} must be a number >= 0 (inf turns it off), got {value!r}")
        self.rotation_drift = float(rotation_drift)
        self.translation_drift = float(translation_drift)
        self.clear()

    def clear(self) -> None:
        """Forget the state."""
        self.R: np.ndarray | None = None  # [3, 3] map->odom rotation
        self.var_R = 0.0  # rad^2
        self.t: np.ndarray | None = None  # [3] map->odom translation, metres (metric maps only)
        self.var_t = 0.0  # m^2, summed over the axes

    def reset_translation(self) -> None:
        """Forget the translation (the map's units changed)."""
        self.t = None
        self.var_t = 0.0

    def fuse_rotation(self, sim: Sim3, R_window: np.ndarray, odom: np.ndarray, travelled: float, var_chain: float,
                      pivot: np.ndarray) -> tuple[Sim3, float]:
        """Turn ``sim`` (window -> map) about ``pivot`` towards the rotation the odometry predicts.

        Args:
            sim: the chain's placement.
            R_window: ``[S, 3, 3]`` camera-to-window rotations of the window's frames.
            odom: ``[S, 4, 4]`` their camera-to-odom poses.
            travelled: metres since the last window with odometry.
            var_chain: variance of ``sim``'s rotation (:func:`rotation_misfit`).
            pivot: ``[3]`` map point kept in place (the shared cameras).

        Returns:
            The blended placement and the variance of its rotation.
        """
        if self.R is None or not np.isfinite(self.rotation_drift):
            return sim, var_chain
        per_frame = R_window @ np.swapaxes(odom[:, :3, :3], 1, 2)  # R_win_j odom_j^T
        inv_implied = mean_rotation(per_frame)
        spread = Rotation.from_matrix(per_frame @ inv_implied.T).magnitude()
        R_odo = self.R @ inv_implied.T
        var_odo = self.var_R + (self.rotation_drift * travelled) ** 2 + float(np.mean(spread ** 2)) / len(spread)
        weight = _kalman(var_chain, var_odo)
        turn = Rotation.from_rotvec(weight * Rotation.from_matrix(R_odo @ sim.R.T).as_rotvec()).as_matrix()
        return Sim3(1.0, turn, pivot - turn @ pivot).compose(sim), (1.0 - weight) * var_chain

    def fuse_translation(self, sim: Sim3, centres: np.ndarray, odom: np.ndarray, travelled: float,
                         var_chain: float) -> tuple[Sim3, float]:
        """Shift ``sim`` towards the positions the odometry predicts for the window's camera centres
        ``centres [S, 3]`` (window frame); needs a metric map and a known translation (else unchanged)."""
        if self.R is None or self.t is None or not np.isfinite(self.translation_drift):
            return sim, var_chain
        delta = (odom[:, :3, 3] @ self.R.T + self.t) - sim.apply(centres)
        shift = delta.mean(axis=0)
        var_frames = float(np.mean(np.sum((delta - shift) ** 2, axis=1))) / len(delta)
        var_odo = self.var_t + (self.translation_drift * travelled) ** 2 + var_frames
        weight = _kalman(var_chain, var_odo)
        return Sim3(1.0, np.eye(3), weight * shift).compose(sim), (1.0 - weight) * var_chain

    def update(self, c2w: np.ndarray, odom: np.ndarray, travelled: float | None, var_rotation: float,
               var_position: float, metric: bool) -> None:
        """Filter the state with the map->odom transform a placed window implies.

        Args:
            c2w: ``[S, 4, 4]`` the window's frames in the map.
            odom: ``[S, 4, 4]`` their odometry poses.
            travelled: metres since the last update (None: the first window, which initialises the state).
            var_rotation, var_position: variances of the window's placement (``inf`` when it was not aligned:
                anchors and fallbacks then do not move the state).
            metric: the map is in metres (the translation is filtered only then).
        """
        per_frame = c2w[:, :3, :3] @ np.swapaxes(odom[:, :3, :3], 1, 2)
        R_meas = mean_rotation(per_frame)
        spread = Rotation.from_matrix(per_frame @ R_meas.T).magnitude()
        var_frames = float(np.mean(spread ** 2)) / len(spread)
        if self.R is None or travelled is None:
            self.R, self.var_R = R_meas, var_frames
        else:
            var_pred = self.var_R + (self.rotation_drift * travelled) ** 2
            gain = _kalman(var_pred, var_frames + var_rotation)
            step = Rotation.from_rotvec(gain * Rotation.from_matrix(R_meas @ self.R.T).as_rotvec()).as_matrix()
            self.R = step @ self.R
            self.var_R = (1.0 - gain) * var_pred if np.isfinite(var_pred) else var_frames + var_rotation
        if not metric:
            return
        implied = c2w[:, :3, 3] - odom[:, :3, 3] @ self.R.T
        t_meas = implied.mean(axis=0)
        var_frames = float(np.mean(np.sum((implied - t_meas) ** 2, axis=1))) / len(implied)
        if self.t is None or travelled is None:
            self.t, self.var_t = t_meas, var_frames
            return
        var_pred = self.var_t + (self.translation_drift * travelled) ** 2
        gain = _kalman(var_pred, var_frames + var_position)
        self.t = self.t + gain * (t_meas - self.t)
        self.var_t = (1.0 - gain) * var_pred if np.isfinite(var_pred) else var_frames + var_position
