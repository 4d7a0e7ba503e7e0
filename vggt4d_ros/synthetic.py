"""Deterministic synthetic scene renderer (numpy only) for tests, the demo sample and the end-to-end bag.

The scene is a closed, textured room with one or two textured boxes moving across the floor, seen by a
camera that translates smoothly while panning (yaw) and looking slightly down. Every pixel is produced
by vectorised ray casting: the camera sits inside the room, so every ray leaves the room through exactly
one wall (an axis-aligned "inside" slab test) unless it first hits a box (slab test in the box's local
frame, which handles the box's rotation about the vertical axis). Colours come from trilinear (mip-mapped)
lookups in procedural textures (gradients + checkerboards + multi-scale value noise + thin stripes, all
drawn from the seed) that are attached to the surfaces, so a static world point has the same colour in
every frame up to the filtering of its pixel footprint; the mip-mapping keeps distant and slanted
surfaces from aliasing.

Conventions (OpenCV, identical for the world frame and the camera frame of an identity pose):

* world axes: ``x`` right, ``y`` down (gravity is ``+y``), ``z`` forward. The floor is the plane
  ``y = ROOM_MAX[1]``.
* extrinsics ``[3, 4]`` are world-to-camera, ``X_cam = R @ X_world + t``.
* pixel ``(u, v)`` is the integer column/row index; its centre is the point ``(u, v)`` of the pinhole
  model ``[u, v, 1]^T ~ K @ X_cam``; ``cx = (W - 1) / 2``, ``cy = (H - 1) / 2``.
* depth is the camera-frame ``z`` coordinate of the surface seen at the pixel centre (metres).

Only :mod:`numpy` is needed to render; :func:`save_sequence`/:func:`load_sequence` use Pillow for PNGs.
``python -m vggt4d_ros.synthetic OUT_DIR`` writes a sequence to disk (used by ``make demo``).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "DEFAULT_BASE_STAMP_NS",
    "ROOM_MAX",
    "ROOM_MIN",
    "SyntheticSequence",
    "load_sequence",
    "render_scene",
    "save_sequence",
]

logger = logging.getLogger(__name__)

#: Room corners in world coordinates (metres); the camera always stays strictly inside.
ROOM_MIN = np.array([-4.0, -1.6, -3.0])
ROOM_MAX = np.array([4.0, 1.2, 9.0])

#: Default time stamp of frame 0 (2023-11-14T22:13:20Z) in nanoseconds.
DEFAULT_BASE_STAMP_NS = 1_700_000_000_000_000_000

_ROOM_TEXEL_M = 0.025  # texture resolution on the walls
_BOX_TEXEL_M = 0.02  # texture resolution on the boxes
# Constant per-face brightness (Lambert-like, view independent): index = 2 * axis + (1 if max face).
_ROOM_FACE_SHADE = np.array([0.85, 0.9, 0.7, 1.0, 0.8, 0.95])  # -x, +x, ceiling, floor, back(-z), front(+z)
_BOX_FACE_SHADE = np.array([0.8, 0.85, 1.0, 0.65, 0.9, 0.75])  # -x, +x, top(-y), bottom(+y), -z, +z
_TINY = 1e-12


@dataclass(frozen=True)
class SyntheticSequence:
    """A rendered sequence with exact geometry.

    Attributes:
        images: ``[N, H, W, 3]`` uint8 RGB frames.
        depth: ``[N, H, W]`` float32 z-depth in metres (every pixel hits a surface, so all are > 0).
        dynamic_mask: ``[N, H, W]`` bool, True where a moving box is the nearest surface.
        object_index: ``[N, H, W]`` int8, index of the box seen at the pixel, ``-1`` for the room.
        extrinsics: ``[N, 3, 4]`` float64 world-to-camera.
        intrinsics: ``[N, 3, 3]`` float64 pinhole intrinsics.
        stamps_ns: ``[N]`` int64 time stamps in nanoseconds.
        object_sizes: ``[M, 3]`` float64 full box extents along the box's local x, y, z axes.
        object_centers: ``[N, M, 3]`` float64 box centres in world coordinates.
        object_yaws: ``[N, M]`` float64 box rotation about the world ``y`` axis (radians).
        seed: seed the sequence was rendered with.
    """

    images: np.ndarray
    depth: np.ndarray
    dynamic_mask: np.ndarray
    object_index: np.ndarray
    extrinsics: np.ndarray
    intrinsics: np.ndarray
    stamps_ns: np.ndarray
    object_sizes: np.ndarray
    object_centers: np.ndarray
    object_yaws: np.ndarray
    seed: int

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    @property
    def object_poses(self) -> np.ndarray:
        """Object-to-world transforms ``[N, M, 4, 4]`` (rotation about ``y`` by the yaw, then the centre)."""
        n, m = self.object_yaws.shape
        poses = np.zeros((n, m, 4, 4))
        poses[..., :3, :3] = _yaw_matrices(self.object_yaws)
        poses[..., :3, 3] = self.object_centers
        poses[..., 3, 3] = 1.0
        return poses


# ----------------------------------------------------------------------------------------------------
# textures
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MipTexture:
    """A texture and its box-filtered pyramid, all levels in one flat table (for vectorised lookups).

    Level ``l`` has ``heights[l] x widths[l]`` texels starting at row ``offsets[l]`` of ``atlas``; its
    texel ``i`` covers level-0 texels ``[i 2^l, (i + 1) 2^l)``.
    """

    atlas: np.ndarray  # [T, 3] float32
    offsets: np.ndarray  # [L] int64
    heights: np.ndarray  # [L] int64
    widths: np.ndarray  # [L] int64


def _build_mip(tex: np.ndarray, max_levels: int = 7) -> _MipTexture:
    levels = [tex.astype(np.float32)]
    while len(levels) < max_levels and min(levels[-1].shape[:2]) > 1:
        cur = levels[-1]
        h, w = cur.shape[:2]
        if h % 2:
            cur = np.concatenate([cur, cur[:1]], axis=0)  # wrap, like the lookups
        if w % 2:
            cur = np.concatenate([cur, cur[:, :1]], axis=1)
        levels.append(0.25 * (cur[0::2, 0::2] + cur[1::2, 0::2] + cur[0::2, 1::2] + cur[1::2, 1::2]))
    sizes = np.array([lv.shape[0] * lv.shape[1] for lv in levels], dtype=np.int64)
    return _MipTexture(
        atlas=np.concatenate([lv.reshape(-1, lv.shape[2]) for lv in levels], axis=0),
        offsets=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
        heights=np.array([lv.shape[0] for lv in levels], dtype=np.int64),
        widths=np.array([lv.shape[1] for lv in levels], dtype=np.int64),
    )


def _mip_level_lookup(mip: _MipTexture, row: np.ndarray, col: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Bilinear wrap-around lookup at integer pyramid ``level [P]`` of level-0 texel coordinates ``row, col``."""
    scale = np.ldexp(1.0, level)  # 2^level
    r = (row - 0.5 * (scale - 1.0)) / scale
    c = (col - 0.5 * (scale - 1.0)) / scale
    th = mip.heights[level]
    tw = mip.widths[level]
    base = mip.offsets[level]
    r0 = np.floor(r)
    c0 = np.floor(c)
    fr = (r - r0).astype(np.float32)[:, None]
    fc = (c - c0).astype(np.float32)[:, None]
    r0 = r0.astype(np.int64) % th
    c0 = c0.astype(np.int64) % tw
    r1 = (r0 + 1) % th
    c1 = (c0 + 1) % tw
    r0 = base + r0 * tw
    r1 = base + r1 * tw
    flat = mip.atlas
    top = np.take(flat, r0 + c0, axis=0) * (1.0 - fc) + np.take(flat, r0 + c1, axis=0) * fc
    bottom = np.take(flat, r1 + c0, axis=0) * (1.0 - fc) + np.take(flat, r1 + c1, axis=0) * fc
    return top * (1.0 - fr) + bottom * fr


def _mip_lookup(mip: _MipTexture, row: np.ndarray, col: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Trilinear (mip-mapped) lookup: ``footprint [P]`` is the pixel footprint in level-0 texels."""
    max_level = mip.heights.size - 1
    lod = np.clip(np.log2(np.maximum(footprint, 1.0)), 0.0, float(max_level))
    l0 = np.floor(lod).astype(np.int64)
    l1 = np.minimum(l0 + 1, max_level)
    f = (lod - l0).astype(np.float32)[:, None]
    return _mip_level_lookup(mip, row, col, l0) * (1.0 - f) + _mip_level_lookup(mip, row, col, l1) * f


def _interp_weights(n_out: int, cell: float, n_grid: int) -> np.ndarray:
    """Linear-interpolation weights ``[n_out, n_grid]`` placing output sample ``i`` at lattice position ``i / cell``."""
    pos = np.arange(n_out, dtype=np.float64) / cell
    i0 = np.minimum(np.floor(pos).astype(np.int64), n_grid - 2)
    frac = pos - i0
    w = np.zeros((n_out, n_grid))
    rows = np.arange(n_out)
    w[rows, i0] = 1.0 - frac
    w[rows, i0 + 1] = frac
    return w


def _value_noise(rng: np.random.Generator, th: int, tw: int, cell: float, channels: int) -> np.ndarray:
    """Smooth value noise in ``[-1, 1]``: a random lattice every ``cell`` texels, bilinearly upsampled.

    Bilinear upsampling is separable, so it is two small matrix products.
    """
    gh = max(2, int(np.ceil((th - 1) / cell)) + 1)
    gw = max(2, int(np.ceil((tw - 1) / cell)) + 1)
    lattice = rng.uniform(-1.0, 1.0, size=(gh, gw, channels))
    wr = _interp_weights(th, cell, gh)
    wc = _interp_weights(tw, cell, gw)
    rows_up = np.tensordot(wr, lattice, axes=(1, 0))  # [th, gw, C]
    return np.matmul(wc, rows_up)  # [th, tw, C]


def _make_texture(rng: np.random.Generator, th: int, tw: int, texel_m: float) -> np.ndarray:
    """Procedural RGB texture ``[th, tw, 3]`` float32 in ``[0, 1]`` with detail at several scales.

    Layers: a two-colour gradient, a checkerboard (cells of 0.2-0.45 m), coloured value noise with
    lattice spacings of about 0.6 m, 0.15 m and 0.05 m, and a few thin dark stripes (line features). The
    finest layer gives high-frequency detail for feature matching while staying smooth at the texel scale;
    the mip pyramid built from it filters that detail away where a pixel covers many texels.
    """
    ys = (np.arange(th, dtype=np.float64) * texel_m)[:, None]
    xs = (np.arange(tw, dtype=np.float64) * texel_m)[None, :]
    c0 = rng.uniform(0.1, 0.9, size=3)
    c1 = rng.uniform(0.1, 0.9, size=3)
    gx = xs / max(xs.max(), texel_m)
    gy = ys / max(ys.max(), texel_m)
    blend = (0.6 * gx + 0.4 * gy)[..., None]
    tex = c0 * (1.0 - blend) + c1 * blend  # [th, tw, 3]

    cell = rng.uniform(0.2, 0.45)
    checker = (np.floor(xs / cell) + np.floor(ys / cell)) % 2.0
    tex = tex * (0.78 + 0.32 * checker[..., None])

    tex = tex + 0.12 * _value_noise(rng, th, tw, 0.6 / texel_m, 3)
    tex = tex + 0.10 * _value_noise(rng, th, tw, 0.15 / texel_m, 1)
    tex = tex + 0.07 * _value_noise(rng, th, tw, max(2.0, 0.05 / texel_m), 3)

    # thin dark stripes at random angles (line features)
    for _ in range(3):
        ang = rng.uniform(0.0, np.pi)
        period = rng.uniform(0.5, 1.2)
        phase = rng.uniform(0.0, period)
        dist = (np.cos(ang) * xs + np.sin(ang) * ys + phase) % period
        stripe = np.clip(1.0 - np.abs(dist - 0.5 * period) / 0.02, 0.0, 1.0)
        tex = tex * (1.0 - 0.35 * stripe[..., None])
    return np.clip(tex, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# geometry helpers
# ----------------------------------------------------------------------------------------------------


def _yaw_matrices(yaw: np.ndarray) -> np.ndarray:
    """Rotations about the world ``y`` axis, ``[..., 3, 3]``."""
    yaw = np.asarray(yaw, dtype=np.float64)
    c, s = np.cos(yaw), np.sin(yaw)
    R = np.zeros(yaw.shape + (3, 3))
    R[..., 0, 0] = c
    R[..., 0, 2] = s
    R[..., 1, 1] = 1.0
    R[..., 2, 0] = -s
    R[..., 2, 2] = c
    return R


def _look_at(center: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World-to-camera ``[3, 4]`` for a camera at ``center`` looking at ``target`` (world up is ``-y``)."""
    forward = target - center
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, np.array([0.0, -1.0, 0.0]))
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    R_c2w = np.stack([right, down, forward], axis=1)
    R = R_c2w.T
    return np.concatenate([R, (-R @ center)[:, None]], axis=1)


def _safe_reciprocal(d: np.ndarray) -> np.ndarray:
    """``1 / d`` with components of magnitude below ``_TINY`` replaced by ``+-1 / _TINY`` (no inf/nan)."""
    sign = np.where(d < 0.0, -1.0, 1.0)
    return 1.0 / np.where(np.abs(d) < _TINY, sign * _TINY, d)


# ----------------------------------------------------------------------------------------------------
# scene description
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scene:
    room_textures: tuple[_MipTexture, ...]  # 6 faces
    box_textures: tuple[tuple[_MipTexture, ...], ...]  # M boxes x 6 faces
    box_sizes: np.ndarray  # [M, 3]
    box_centers: np.ndarray  # [N, M, 3]
    box_yaws: np.ndarray  # [N, M]
    extrinsics: np.ndarray  # [N, 3, 4]


def _room_face_dims(axis: int) -> tuple[int, int]:
    """Texture-coordinate axes (row axis, column axis) on a room/box face perpendicular to ``axis``."""
    others = [a for a in range(3) if a != axis]
    return others[1], others[0]


def _build_scene(num_frames: int, seed: int, num_boxes: int, camera_motion: bool, rotate_boxes: bool) -> _Scene:
    rng = np.random.default_rng(seed)
    extent = ROOM_MAX - ROOM_MIN
    room_textures = []
    for axis in range(3):
        row_axis, col_axis = _room_face_dims(axis)
        th = int(np.ceil(extent[row_axis] / _ROOM_TEXEL_M))
        tw = int(np.ceil(extent[col_axis] / _ROOM_TEXEL_M))
        for _side in range(2):
            room_textures.append(_build_mip(_make_texture(rng, th, tw, _ROOM_TEXEL_M)))

    tau = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)

    sizes = []
    centers = np.zeros((num_frames, num_boxes, 3))
    yaws = np.zeros((num_frames, num_boxes))
    box_textures = []
    for m in range(num_boxes):
        if m == 0:
            size = np.array([rng.uniform(0.9, 1.1), rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0)])
            direction = 1.0 if rng.uniform() < 0.5 else -1.0
            x = direction * (-1.5 + 3.0 * tau)
            z = np.full_like(tau, rng.uniform(3.8, 4.4))
        else:
            size = np.array([rng.uniform(0.55, 0.7), rng.uniform(0.5, 0.7), rng.uniform(0.55, 0.7)])
            side = 1.0 if m % 2 == 1 else -1.0
            x = np.full_like(tau, side * (2.1 + 0.2 * (m // 2)))
            z = 7.0 - 1.5 * tau
        y = np.full_like(tau, ROOM_MAX[1] - 0.5 * size[1])
        centers[:, m] = np.stack([x, y, z], axis=1)
        if rotate_boxes:
            yaws[:, m] = rng.uniform(-0.3, 0.3) + rng.uniform(0.5, 1.0) * tau * (1.0 if m % 2 == 0 else -1.0)
        sizes.append(size)
        faces = []
        for axis in range(3):
            row_axis, col_axis = _room_face_dims(axis)
            th = int(np.ceil(size[row_axis] / _BOX_TEXEL_M)) + 1
            tw = int(np.ceil(size[col_axis] / _BOX_TEXEL_M)) + 1
            for _side in range(2):
                faces.append(_build_mip(_make_texture(rng, th, tw, _BOX_TEXEL_M)))
        box_textures.append(tuple(faces))

    phase = rng.uniform(0.0, 2.0 * np.pi)
    x_dir = 1.0 if rng.uniform() < 0.5 else -1.0
    extrinsics = np.zeros((num_frames, 3, 4))
    for i, s in enumerate(tau):
        if camera_motion:
            cam = np.array([x_dir * (-0.8 + 1.6 * s), -0.1 + 0.05 * np.sin(2.0 * np.pi * s), 0.4 * np.sin(np.pi * s)])
            target = np.array([0.7 * np.sin(np.pi * s + phase), 0.45, 4.8])
        else:
            cam = np.array([0.0, -0.1, 0.0])
            target = np.array([0.0, 0.45, 4.8])
        extrinsics[i] = _look_at(cam, target)

    return _Scene(
        room_textures=tuple(room_textures),
        box_textures=tuple(box_textures),
        box_sizes=np.array(sizes).reshape(num_boxes, 3),
        box_centers=centers,
        box_yaws=yaws,
        extrinsics=extrinsics,
    )


# ----------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------


def _cast(scene: _Scene, frame: int, origin: np.ndarray, d_world: np.ndarray) -> tuple[np.ndarray, ...]:
    """Nearest hit of rays ``origin + t * d_world`` (``d_world [P, 3]``).

    Returns ``(t [P], surface id [P], object index [P] int8, hit point in world [P, 3], hit point in the hit
    box's local frame [P, 3], |cos| of the angle between ray and surface normal [P])``. Surface ids ``0..5``
    are the room faces ``2 * axis + (max face)``, ``6 + 6 * m + 2 * axis + (max face)`` the faces of box ``m``.
    """
    n = d_world.shape[0]
    # room: leave the box [ROOM_MIN, ROOM_MAX] from the inside
    inv = _safe_reciprocal(d_world)
    t_exit_axis = np.maximum((ROOM_MIN - origin) * inv, (ROOM_MAX - origin) * inv)  # [P, 3]
    hit_axis = np.argmin(t_exit_axis, axis=1)
    t_hit = np.take_along_axis(t_exit_axis, hit_axis[:, None], axis=1)[:, 0]
    hit_dir = np.take_along_axis(d_world, hit_axis[:, None], axis=1)[:, 0]
    surface = 2 * hit_axis + (hit_dir > 0.0)
    normal_dir = np.abs(hit_dir)  # |d . n| for the hit face (|d| divides below)
    obj = np.full(n, -1, dtype=np.int8)
    local_hits = np.zeros((n, 3))
    for m in range(scene.box_sizes.shape[0]):
        Rb = _yaw_matrices(scene.box_yaws[frame, m])
        half = 0.5 * scene.box_sizes[m]
        o_l = Rb.T @ (origin - scene.box_centers[frame, m])  # [3]
        d_l = d_world @ Rb  # rows: Rb^T d
        inv_l = _safe_reciprocal(d_l)
        t1 = (-half - o_l) * inv_l
        t2 = (half - o_l) * inv_l
        t_near_axis = np.minimum(t1, t2)
        axis = np.argmax(t_near_axis, axis=1)
        t_near = np.take_along_axis(t_near_axis, axis[:, None], axis=1)[:, 0]
        t_far = np.min(np.maximum(t1, t2), axis=1)
        hit = (t_near <= t_far) & (t_near > 1e-6) & (t_near < t_hit)
        if not hit.any():
            continue
        d_axis = np.take_along_axis(d_l, axis[:, None], axis=1)[:, 0]
        t_hit = np.where(hit, t_near, t_hit)
        surface = np.where(hit, 6 + 6 * m + 2 * axis + (d_axis < 0.0), surface)  # entering the max face if d < 0
        normal_dir = np.where(hit, np.abs(d_axis), normal_dir)
        obj[hit] = m
        local_hits[hit] = o_l + t_near[hit, None] * d_l[hit]
    points = origin + t_hit[:, None] * d_world
    cos_incidence = normal_dir / np.linalg.norm(d_world, axis=1)
    return t_hit, surface, obj, points, local_hits, cos_incidence


def _shade(
    scene: _Scene, surface: np.ndarray, points: np.ndarray, local_hits: np.ndarray, footprint_m: np.ndarray
) -> np.ndarray:
    """Colour ``[P, 3]`` of hit points from their surfaces' mip-mapped textures.

    ``footprint_m [P]`` is the size of the pixel's footprint on the surface in metres; it selects the
    pyramid level (trilinear filtering), so distant or slanted surfaces are box-filtered instead of aliased.
    """
    rgb = np.zeros((surface.shape[0], 3), dtype=np.float32)
    for sid in np.unique(surface):
        sel = surface == sid
        if sid < 6:
            axis = int(sid) // 2
            row_axis, col_axis = _room_face_dims(axis)
            p = points[sel]
            tex = scene.room_textures[sid]
            row = (p[:, row_axis] - ROOM_MIN[row_axis]) / _ROOM_TEXEL_M
            col = (p[:, col_axis] - ROOM_MIN[col_axis]) / _ROOM_TEXEL_M
            shade = _ROOM_FACE_SHADE[sid]
            texel = _ROOM_TEXEL_M
        else:
            m, face = divmod(int(sid) - 6, 6)
            row_axis, col_axis = _room_face_dims(face // 2)
            p = local_hits[sel]
            half = 0.5 * scene.box_sizes[m]
            tex = scene.box_textures[m][face]
            row = (p[:, row_axis] + half[row_axis]) / _BOX_TEXEL_M
            col = (p[:, col_axis] + half[col_axis]) / _BOX_TEXEL_M
            shade = _BOX_FACE_SHADE[face]
            texel = _BOX_TEXEL_M
        rgb[sel] = _mip_lookup(tex, row, col, footprint_m[sel] / texel) * np.float32(shade)
    return rgb


def _render_frame(
    scene: _Scene, frame: int, K: np.ndarray, height: int, width: int, supersample: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-cast one frame; returns ``(rgb [H, W, 3] float32, depth [H, W] float32, object [H, W] int8)``.

    Depth and object index come from the ray through the pixel centre; the colour is the mip-mapped
    texture colour of that ray, or with ``supersample > 1`` the mean over a ``supersample x supersample``
    grid of rays inside the pixel (anti-aliased object edges).
    """
    extrinsic = scene.extrinsics[frame]
    R, t = extrinsic[:, :3], extrinsic[:, 3]
    origin = -R.T @ t  # [3]
    v, u = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    u = u.ravel()
    v = v.ravel()

    offsets = [(0.0, 0.0)]  # the pixel-centre ray first
    if supersample > 1:
        sub = (np.arange(supersample) + 0.5) / supersample - 0.5
        offsets += [(float(du), float(dv)) for dv in sub for du in sub]
    du = np.repeat(np.array([o[0] for o in offsets]), u.size)
    dv = np.repeat(np.array([o[1] for o in offsets]), u.size)
    uu = np.tile(u, len(offsets)) + du
    vv = np.tile(v, len(offsets)) + dv
    # ray directions with unit camera z, so the ray parameter of a hit equals its z-depth
    d_cam = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones(uu.size)], axis=1)
    t_all, surface, obj_all, points, local_hits, cos_inc = _cast(scene, frame, origin, d_cam @ R)  # rows: R^T d
    # footprint of a (sub-)pixel on the surface: z / f across the ray, stretched by the slant (geometric mean
    # of the two axes of the footprint ellipse, 1 / sqrt(cos))
    footprint = t_all / (K[0, 0] * supersample) / np.sqrt(np.maximum(cos_inc, 0.05))
    n = u.size
    t_hit = t_all[:n]
    obj = obj_all[:n]
    if supersample <= 1:
        rgb = _shade(scene, surface, points, local_hits, footprint)
    else:
        rgb = _shade(scene, surface[n:], points[n:], local_hits[n:], footprint[n:])
        rgb = rgb.reshape(supersample * supersample, n, 3).mean(axis=0)
    return (
        rgb.reshape(height, width, 3),
        t_hit.reshape(height, width).astype(np.float32),
        obj.reshape(height, width),
    )


def render_scene(
    num_frames: int = 40,
    width: int = 160,
    height: int = 120,
    seed: int = 0,
    *,
    num_boxes: int = 1,
    fps: float = 10.0,
    base_stamp_ns: int = DEFAULT_BASE_STAMP_NS,
    focal_scale: float = 0.9,
    camera_motion: bool = True,
    rotate_boxes: bool = True,
    supersample: int = 1,
) -> SyntheticSequence:
    """Render a deterministic synthetic sequence of a textured room with moving boxes.

    The first box (about 1 m) slides across the room in front of the camera (``x`` from -1.5 m to 1.5 m at
    ``z`` about 4 m); further boxes (about 0.6 m) slide towards the camera near the side walls. Boxes rest on
    the floor and, with ``rotate_boxes``, turn about the vertical axis. The camera translates about 1.6 m
    sideways and pans (yaw) while looking slightly down at the boxes. The same seed gives identical output.

    Args:
        num_frames: number of frames ``N`` (>= 1).
        width, height: image size in pixels (>= 8 each).
        seed: seed for textures, box sizes/paths and camera path.
        num_boxes: number of moving boxes ``M`` (1 to 4).
        fps: frame rate used for the time stamps.
        base_stamp_ns: time stamp of frame 0 in nanoseconds.
        focal_scale: ``fx = fy = focal_scale * width``.
        camera_motion: if False the camera is fixed.
        rotate_boxes: if False the boxes only translate.
        supersample: colour anti-aliasing, ``supersample^2`` rays per pixel (1 = the pixel-centre ray only);
            depth and masks always use the pixel-centre ray.

    Returns:
        The :class:`SyntheticSequence`.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if width < 8 or height < 8:
        raise ValueError(f"image size must be at least 8x8, got {width}x{height}")
    if not 1 <= num_boxes <= 4:
        raise ValueError(f"num_boxes must be between 1 and 4, got {num_boxes}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    if focal_scale <= 0:
        raise ValueError(f"focal_scale must be positive, got {focal_scale}")

    scene = _build_scene(num_frames, seed, num_boxes, camera_motion, rotate_boxes)
    f = focal_scale * width
    K = np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])

    images = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    depth = np.zeros((num_frames, height, width), dtype=np.float32)
    objects = np.zeros((num_frames, height, width), dtype=np.int8)
    for i in range(num_frames):
        rgb, d, o = _render_frame(scene, i, K, height, width, supersample)
        images[i] = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
        depth[i] = d
        objects[i] = o

    period_ns = 1e9 / fps
    stamps = base_stamp_ns + np.round(np.arange(num_frames) * period_ns).astype(np.int64)
    logger.debug("rendered %d synthetic frames of %dx%d (seed %d)", num_frames, width, height, seed)
    return SyntheticSequence(
        images=images,
        depth=depth,
        dynamic_mask=objects >= 0,
        object_index=objects,
        extrinsics=scene.extrinsics,
        intrinsics=np.repeat(K[None], num_frames, axis=0),
        stamps_ns=stamps.astype(np.int64),
        object_sizes=scene.box_sizes,
        object_centers=scene.box_centers,
        object_yaws=scene.box_yaws,
        seed=int(seed),
    )


# ----------------------------------------------------------------------------------------------------
# disk format
# ----------------------------------------------------------------------------------------------------

_FORMAT = "vggt4d_ros.synthetic/1"


def save_sequence(seq: SyntheticSequence, directory: str | Path) -> Path:
    """Write a sequence to ``directory`` (created if needed).

    Layout: ``frame_%04d.png`` (RGB), ``masks/frame_%04d.png`` (dynamic mask, 0/255 grayscale),
    ``depth.npy`` (``[N, H, W]`` float32), ``object_index.npy`` (``[N, H, W]`` int8) and ``cameras.json``
    (per-frame file name, stamp, world-to-camera extrinsic and intrinsics, plus the box trajectories).

    Returns:
        The directory path.
    """
    from PIL import Image

    out = Path(directory)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(seq.num_frames):
        name = f"frame_{i:04d}.png"
        Image.fromarray(seq.images[i], mode="RGB").save(out / name)
        Image.fromarray(seq.dynamic_mask[i].astype(np.uint8) * 255, mode="L").save(out / "masks" / name)
        frames.append(
            {
                "file": name,
                "mask": f"masks/{name}",
                "stamp_ns": int(seq.stamps_ns[i]),
                "extrinsic": seq.extrinsics[i].tolist(),
                "intrinsic": seq.intrinsics[i].tolist(),
            }
        )
    np.save(out / "depth.npy", seq.depth.astype(np.float32))
    np.save(out / "object_index.npy", seq.object_index.astype(np.int8))
    meta = {
        "format": _FORMAT,
        "seed": seq.seed,
        "width": seq.width,
        "height": seq.height,
        "num_frames": seq.num_frames,
        "frames": frames,
        "objects": {
            "sizes": seq.object_sizes.tolist(),
            "centers": seq.object_centers.tolist(),
            "yaws": seq.object_yaws.tolist(),
        },
    }
    (out / "cameras.json").write_text(json.dumps(meta, indent=1))
    return out


def load_sequence(directory: str | Path) -> SyntheticSequence:
    """Read a sequence written by :func:`save_sequence` (bit-exact round trip)."""
    from PIL import Image

    src = Path(directory)
    meta_path = src / "cameras.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found; expected a directory written by save_sequence")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{meta_path} has format {meta.get('format')!r}, expected {_FORMAT!r}")
    frames = meta["frames"]
    images = np.stack([np.asarray(Image.open(src / f["file"]).convert("RGB")) for f in frames])
    masks = np.stack([np.asarray(Image.open(src / f["mask"]).convert("L")) > 127 for f in frames])
    depth = np.load(src / "depth.npy").astype(np.float32)
    object_index = np.load(src / "object_index.npy").astype(np.int8)
    expected = (meta["num_frames"], meta["height"], meta["width"])
    for name, arr in (("images", images[..., 0]), ("masks", masks), ("depth", depth), ("object_index", object_index)):
        if arr.shape != expected:
            raise ValueError(f"{name} in {src} has shape {arr.shape}, expected {expected}")
    objects = meta["objects"]
    num_objects = len(objects["sizes"])
    return SyntheticSequence(
        images=images.astype(np.uint8),
        depth=depth,
        dynamic_mask=masks,
        object_index=object_index,
        extrinsics=np.array([f["extrinsic"] for f in frames], dtype=np.float64).reshape(-1, 3, 4),
        intrinsics=np.array([f["intrinsic"] for f in frames], dtype=np.float64).reshape(-1, 3, 3),
        stamps_ns=np.array([f["stamp_ns"] for f in frames], dtype=np.int64),
        object_sizes=np.array(objects["sizes"], dtype=np.float64).reshape(num_objects, 3),
        object_centers=np.array(objects["centers"], dtype=np.float64).reshape(len(frames), num_objects, 3),
        object_yaws=np.array(objects["yaws"], dtype=np.float64).reshape(len(frames), num_objects),
        seed=int(meta["seed"]),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vggt4d demo-data`` (render a sequence to a folder, optionally also as a bag)."""
    parser.add_argument("output", type=Path, help="output directory (PNG frames, masks, depth, cameras.json)")
    parser.add_argument("--frames", type=int, default=40, help="number of frames (default: %(default)s)")
    parser.add_argument("--width", type=int, default=160, help="image width in pixels (default: %(default)s)")
    parser.add_argument("--height", type=int, default=120, help="image height in pixels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed (default: %(default)s)")
    parser.add_argument("--boxes", type=int, default=1, help="moving boxes (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate of the stamps (default: %(default)s)")
    parser.add_argument("--bag", type=Path, default=None,
                        help="also write a rosbag2 (mcap) with /image and /camera_info to this path")


def run(args: argparse.Namespace) -> int:
    """Render and write the sequence described by :func:`add_arguments`'s options."""
    seq = render_scene(args.frames, args.width, args.height, args.seed, num_boxes=args.boxes, fps=args.fps)
    save_sequence(seq, args.output)
    logger.info("wrote %d frames to %s", seq.num_frames, args.output)
    if args.bag is not None:
        from vggt4d_ros.bags import write_camera_bag

        write_camera_bag(args.bag, seq.images, seq.stamps_ns, intrinsics=seq.intrinsics)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (``python -m vggt4d_ros.synthetic``), the same as ``vggt4d demo-data``."""
    parser = argparse.ArgumentParser(description="Render the synthetic VGGT4D demo sequence to a directory.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
