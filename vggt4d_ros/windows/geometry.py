"""Small numpy camera helpers used by the window stitching code.

Conventions (OpenCV): an extrinsic ``[3, 4]`` is world-to-camera, ``X_cam = R @ X_world + t``; pixel
coordinates are integer column/row indices ``u = 0..W-1``, ``v = 0..H-1`` with the pinhole model
``[u, v, 1]^T ~ K @ X_cam``; depth is the camera-frame ``z`` coordinate.

(:mod:`vggt4d_ros.model.geometry` has a torch ``depth_to_world_points`` for whole batches on the
accelerator; this module is the numpy counterpart used by :mod:`vggt4d_ros.windows`.)
"""

from __future__ import annotations

import numpy as np

__all__ = ["OPTICAL_TO_BODY", "backproject_pixels", "camera_centers", "w2c_to_c2w"]

#: ``[3, 3]`` rotation taking optical-frame coordinates (x right, y down, z forward) to REP-103 body-frame
#: coordinates (x forward, y left, z up): ``X_body = OPTICAL_TO_BODY @ X_optical``. As a pose it is the
#: orientation of a level, forward-looking camera's optical frame in its body frame.
OPTICAL_TO_BODY = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def backproject_pixels(
    u: np.ndarray, v: np.ndarray, depth: np.ndarray, K: np.ndarray, extrinsic: np.ndarray
) -> np.ndarray:
    """Back-project pixels with known depth into world coordinates.

    Args:
        u: pixel column indices ``[N]``.
        v: pixel row indices ``[N]``.
        depth: camera-frame depth (``z``) of each pixel ``[N]``.
        K: intrinsics ``[3, 3]`` (last row ``[0, 0, 1]``).
        extrinsic: world-to-camera ``[3, 4]``.

    Returns:
        World points ``[N, 3]`` (float64): ``X_world = R^T (X_cam - t)`` with
        ``X_cam = depth * K^-1 [u, v, 1]^T``.
    """
    u = np.asarray(u, dtype=np.float64).reshape(-1)
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    depth = np.asarray(depth, dtype=np.float64).reshape(-1)
    K = np.asarray(K, dtype=np.float64)
    extrinsic = np.asarray(extrinsic, dtype=np.float64)
    if not (u.shape == v.shape == depth.shape):
        raise ValueError(f"u, v and depth must have the same length, got {u.shape}, {v.shape}, {depth.shape}")
    if K.shape != (3, 3):
        raise ValueError(f"K must be [3, 3], got {K.shape}")
    if extrinsic.shape != (3, 4):
        raise ValueError(f"extrinsic must be [3, 4] world-to-camera, got {extrinsic.shape}")
    pix = np.stack([u, v, np.ones_like(u)], axis=0)  # [3, N]
    rays = np.linalg.solve(K, pix)  # [3, N], z == 1 for a pinhole K
    cam = rays / rays[2:3] * depth[None, :]
    R = extrinsic[:, :3]
    t = extrinsic[:, 3]
    return ((cam - t[:, None]).T) @ R  # rows: (R^T (cam - t))^T


def camera_centers(extrinsic: np.ndarray) -> np.ndarray:
    """Camera centres in world coordinates, ``c = -R^T t``.

    Args:
        extrinsic: world-to-camera ``[..., 3, 4]``.

    Returns:
        ``[..., 3]`` centres.
    """
    extrinsic = np.asarray(extrinsic, dtype=np.float64)
    if extrinsic.shape[-2:] != (3, 4):
        raise ValueError(f"extrinsic must be [..., 3, 4], got {extrinsic.shape}")
    R = extrinsic[..., :3]
    t = extrinsic[..., 3]
    return -np.einsum("...ji,...j->...i", R, t)


def w2c_to_c2w(extrinsic: np.ndarray) -> np.ndarray:
    """Convert world-to-camera ``[..., 3, 4]`` extrinsics to camera-to-world ``[..., 4, 4]`` matrices."""
    extrinsic = np.asarray(extrinsic, dtype=np.float64)
    if extrinsic.shape[-2:] != (3, 4):
        raise ValueError(f"extrinsic must be [..., 3, 4], got {extrinsic.shape}")
    R = extrinsic[..., :3]
    out = np.zeros(extrinsic.shape[:-2] + (4, 4), dtype=np.float64)
    out[..., :3, :3] = np.swapaxes(R, -1, -2)
    out[..., :3, 3] = camera_centers(extrinsic)
    out[..., 3, 3] = 1.0
    return out
