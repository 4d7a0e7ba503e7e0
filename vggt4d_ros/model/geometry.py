"""Camera geometry for VGGT outputs (torch, device-agnostic, batched over any leading dimensions).

Conventions (those of the reference VGGT):

* ``extrinsic [..., 3, 4]`` is camera-from-world ``[R | t]`` in the OpenCV frame (x right, y down, z forward):
  ``p_cam = R p_world + t``. The inverse is ``p_world = R^T (p_cam - t)``.
* ``intrinsic [..., 3, 3]`` is ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.
* Pose encoding ``absT_quaR_FoV`` ``[..., 9]``: ``[t (3), quaternion xyzw (4), fov_h, fov_w]``, with
  ``fy = (H/2) / tan(fov_h/2)``, ``fx = (W/2) / tan(fov_w/2)`` and principal point ``(W/2, H/2)``.
  The quaternion need not be unit: the rotation formula divides by ``|q|^2``.
* Pixels: pixel ``(u, v)`` (column, row) sits at the integer coordinate ``u = 0..W-1``, ``v = 0..H-1`` (no +0.5);
  ``x_cam = (u - cx) d / fx``, ``y_cam = (v - cy) d / fy``, ``z_cam = d``. :func:`project_points` is the exact
  inverse.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

_UNPROJECT_DTYPE = torch.float64


def _check_last(t: Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(t.shape[-len(shape):]) != shape:
        raise ValueError(f"{name} must have shape [..., {', '.join(map(str, shape))}], got {tuple(t.shape)}")


def _check_extrinsic(extrinsic: Tensor) -> None:
    if extrinsic.ndim < 2 or extrinsic.shape[-1] != 4 or extrinsic.shape[-2] not in (3, 4):
        raise ValueError(f"extrinsic must be [..., 3, 4] or [..., 4, 4], got {tuple(extrinsic.shape)}")


def _image_hw(image_hw: Sequence[int]) -> tuple[float, float]:
    if len(image_hw) != 2:
        raise ValueError(f"image_hw must be (H, W), got {image_hw!r}")
    return float(image_hw[0]), float(image_hw[1])


# ----------------------------------------------------------------------------------------------------------------
# Rotations
# ----------------------------------------------------------------------------------------------------------------


def quaternion_to_rotation(quat: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` from quaternions ``[..., 4]`` in XYZW order (need not be unit)."""
    _check_last(quat, (4,), "quat")
    x, y, z, w = quat.unbind(-1)
    s = 2.0 / (quat * quat).sum(-1)
    rows = (
        1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
        s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
        s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(*quat.shape[:-1], 3, 3)


def rotation_to_quaternion(rot: Tensor) -> Tensor:
    """Unit quaternions ``[..., 4]`` (XYZW, real part >= 0) from rotation matrices ``[..., 3, 3]``.

    Each of the four components is recovered from the diagonal; the other three are computed from the row of
    off-diagonal sums/differences belonging to the largest one, which keeps the result well conditioned.
    """
    _check_last(rot, (3, 3), "rot")
    m = rot.reshape(*rot.shape[:-2], 9)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.unbind(-1)
    # 4 * [w^2, x^2, y^2, z^2]
    sq = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1)
    mag = torch.sqrt(sq.clamp(min=0))  # 2 * |w, x, y, z|
    # Row k = 4 * q_k * [w, x, y, z]; dividing by 2 * mag_k = 4 |q_k| gives sign(q_k) * q.
    cand = torch.stack([
        torch.stack([sq[..., 0], m21 - m12, m02 - m20, m10 - m01], dim=-1),
        torch.stack([m21 - m12, sq[..., 1], m10 + m01, m02 + m20], dim=-1),
        torch.stack([m02 - m20, m10 + m01, sq[..., 2], m12 + m21], dim=-1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, sq[..., 3]], dim=-1),
    ], dim=-2) / (2.0 * mag.clamp(min=0.1))[..., None]
    best = mag.argmax(dim=-1)[..., None, None].expand(*mag.shape[:-1], 1, 4)
    wxyz = cand.gather(-2, best).squeeze(-2)
    wxyz = torch.where(wxyz[..., :1] < 0, -wxyz, wxyz)
    return torch.cat([wxyz[..., 1:], wxyz[..., :1]], dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# Pose encoding
# ----------------------------------------------------------------------------------------------------------------


def decode_pose_encoding(pose_enc: Tensor, image_hw: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Turn ``pose_enc [..., 9]`` into ``(extrinsic [..., 3, 4], intrinsic [..., 3, 3])`` for an image ``(H, W)``."""
    _check_last(pose_enc, (9,), "pose_enc")
    H, W = _image_hw(image_hw)
    rot = quaternion_to_rotation(pose_enc[..., 3:7])
    extrinsic = torch.cat([rot, pose_enc[..., :3, None]], dim=-1)
    fy = (H / 2.0) / torch.tan(pose_enc[..., 7] / 2.0)
    fx = (W / 2.0) / torch.tan(pose_enc[..., 8] / 2.0)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    intrinsic = torch.stack([fx, zero, zero + W / 2.0,
                             zero, fy, zero + H / 2.0,
                             zero, zero, one], dim=-1).reshape(*fx.shape, 3, 3)
    return extrinsic, intrinsic


def encode_pose_encoding(extrinsic: Tensor, intrinsic: Tensor, image_hw: Sequence[int]) -> Tensor:
    """Inverse of :func:`decode_pose_encoding`: ``[..., 9]`` from ``extrinsic [..., 3|4, 4]``, ``intrinsic``.

    The quaternion is unit with a non-negative real part; the fields of view come from ``fx``, ``fy`` only.
    """
    _check_extrinsic(extrinsic)
    _check_last(intrinsic, (3, 3), "intrinsic")
    H, W = _image_hw(image_hw)
    quat = rotation_to_quaternion(extrinsic[..., :3, :3])
    fov_h = 2.0 * torch.atan((H / 2.0) / intrinsic[..., 1, 1])
    fov_w = 2.0 * torch.atan((W / 2.0) / intrinsic[..., 0, 0])
    return torch.cat([extrinsic[..., :3, 3], quat, fov_h[..., None], fov_w[..., None]], dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# Rigid transforms
# ----------------------------------------------------------------------------------------------------------------


def closed_form_inverse_se3(se3: Tensor) -> Tensor:
    """Inverse ``[..., 4, 4]`` of rigid transforms ``[..., 3, 4]`` or ``[..., 4, 4]``: ``[R^T | -R^T t]``."""
    _check_extrinsic(se3)
    rot_t = se3[..., :3, :3].transpose(-1, -2)
    trans = -(rot_t @ se3[..., :3, 3:4])
    top = torch.cat([rot_t, trans], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def invert_extrinsic(extrinsic: Tensor) -> Tensor:
    """Inverse rigid transform with the same shape as the input (``[..., 3, 4]`` or ``[..., 4, 4]``)."""
    inv = closed_form_inverse_se3(extrinsic)
    return inv if extrinsic.shape[-2] == 4 else inv[..., :3, :]


def extrinsic_to_c2w_matrix(extrinsic: Tensor) -> Tensor:
    """World-from-camera (camera pose) matrices ``[..., 4, 4]`` from camera-from-world extrinsics."""
    return closed_form_inverse_se3(extrinsic)


def _split_points(points: Tensor, lead: torch.Size, name: str) -> Tensor:
    """View ``points [*lead, *M, 3]`` as ``[*lead, prod(M), 3]``."""
    n = len(lead)
    if points.ndim < n + 1 or points.shape[-1] != 3:
        raise ValueError(f"{name} must be [{', '.join(map(str, lead)) + ', ' if n else ''}..., 3], "
                         f"got {tuple(points.shape)}")
    return points.reshape(*points.shape[:n], -1, 3)


def world_to_camera_points(points_world: Tensor, extrinsic: Tensor) -> Tensor:
    """``R p + t`` for ``points_world [*L, *M, 3]`` and ``extrinsic [*L, 3|4, 4]`` (L broadcastable)."""
    _check_extrinsic(extrinsic)
    flat = _split_points(points_world, extrinsic.shape[:-2], "points_world")
    rot, trans = extrinsic[..., :3, :3], extrinsic[..., None, :3, 3]
    out = flat @ rot.transpose(-1, -2) + trans
    return out.reshape(*out.shape[:-2], *points_world.shape[extrinsic.ndim - 2:])


def camera_to_world_points(points_cam: Tensor, extrinsic: Tensor) -> Tensor:
    """``R^T (p - t)`` for ``points_cam [*L, *M, 3]`` and ``extrinsic [*L, 3|4, 4]`` (L broadcastable)."""
    _check_extrinsic(extrinsic)
    flat = _split_points(points_cam, extrinsic.shape[:-2], "points_cam")
    rot, trans = extrinsic[..., :3, :3], extrinsic[..., None, :3, 3]
    out = (flat - trans) @ rot
    return out.reshape(*out.shape[:-2], *points_cam.shape[extrinsic.ndim - 2:])


# ----------------------------------------------------------------------------------------------------------------
# Depth unprojection and projection
# ----------------------------------------------------------------------------------------------------------------


def _depth_maps(depth: Tensor, intrinsic: Tensor) -> Tensor:
    """Accept ``depth [*L, H, W]`` or ``[*L, H, W, 1]`` for ``intrinsic [*L, 3, 3]``; return ``[*L, H, W]``."""
    _check_last(intrinsic, (3, 3), "intrinsic")
    n = intrinsic.ndim - 2
    if depth.ndim == n + 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != n + 2:
        raise ValueError(f"depth must be [*L, H, W] or [*L, H, W, 1] with L = {tuple(intrinsic.shape[:-2])} "
                         f"(from intrinsic), got {tuple(depth.shape)}")
    return depth


def _camera_points(depth: Tensor, intrinsic: Tensor) -> Tensor:
    """Unprojection of ``depth [*L, H, W]`` in the dtype of its inputs -> ``[*L, H, W, 3]``."""
    H, W = depth.shape[-2:]
    u = torch.arange(W, dtype=depth.dtype, device=depth.device)
    v = torch.arange(H, dtype=depth.dtype, device=depth.device)
    k = intrinsic[..., None, None, :, :]  # [*L, 1, 1, 3, 3]
    x = (u - k[..., 0, 2]) * depth / k[..., 0, 0]
    y = (v[:, None] - k[..., 1, 2]) * depth / k[..., 1, 1]
    return torch.stack([x, y, depth], dim=-1)


def depth_to_camera_points(depth: Tensor, intrinsic: Tensor) -> Tensor:
    """Camera-frame points ``[*L, H, W, 3]`` from ``depth [*L, H, W(, 1)]`` and ``intrinsic [*L, 3, 3]``.

    Computed in float64, returned in the dtype of ``depth``.
    """
    depth = _depth_maps(depth, intrinsic)
    out = _camera_points(depth.to(_UNPROJECT_DTYPE), intrinsic.to(_UNPROJECT_DTYPE))
    return out.to(depth.dtype)


def depth_to_world_points(depth: Tensor, extrinsic: Tensor, intrinsic: Tensor) -> Tensor:
    """World points ``[*L, H, W, 3]`` from ``depth [*L, H, W(, 1)]``, ``extrinsic [*L, 3, 4]``, ``intrinsic``.

    Matches the reference ``unproject_depth_map_to_point_map``; computed in float64, returned in the dtype of
    ``depth``.
    """
    depth = _depth_maps(depth, intrinsic)
    _check_extrinsic(extrinsic)
    if extrinsic.shape[:-2] != intrinsic.shape[:-2]:
        raise ValueError(f"extrinsic {tuple(extrinsic.shape)} and intrinsic {tuple(intrinsic.shape)} "
                         f"must share their leading dimensions")
    cam = _camera_points(depth.to(_UNPROJECT_DTYPE), intrinsic.to(_UNPROJECT_DTYPE))
    return camera_to_world_points(cam, extrinsic.to(_UNPROJECT_DTYPE)).to(depth.dtype)


def project_points(points_world: Tensor, extrinsic: Tensor, intrinsic: Tensor) -> tuple[Tensor, Tensor]:
    """Project ``points_world [*L, *M, 3]`` (typically ``M = (N,)``) with ``extrinsic [*L, 3, 4]`` and
    ``intrinsic [*L, 3, 3]``.

    Returns ``(uv [*L, *M, 2], z [*L, *M])``: pixel coordinates in the convention of
    :func:`depth_to_camera_points` and camera-frame depth. ``uv`` is meaningless where ``z <= 0``; mask those
    points with ``z > 0``.
    """
    _check_last(intrinsic, (3, 3), "intrinsic")
    cam = world_to_camera_points(points_world, extrinsic)
    lead = intrinsic.shape[:-2]
    pix = _split_points(cam, lead, "points_world") @ intrinsic.transpose(-1, -2)
    pix = pix.reshape(*pix.shape[:-2], *cam.shape[len(lead):])
    return pix[..., :2] / pix[..., 2:3], cam[..., 2]
