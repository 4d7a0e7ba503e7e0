"""Tests for the synthetic scene renderer: geometry consistency, exact masks, determinism, disk round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vggt4d_ros.synthetic import (
    ROOM_MAX,
    ROOM_MIN,
    SyntheticSequence,
    load_sequence,
    main,
    render_scene,
    save_sequence,
)


@pytest.fixture(scope="module")
def seq() -> SyntheticSequence:
    return render_scene(12, 160, 120, seed=3, num_boxes=2)


def _backproject(seq: SyntheticSequence, i: int) -> np.ndarray:
    """World points ``[H, W, 3]`` of frame ``i`` (independent of the renderer's code)."""
    K = seq.intrinsics[i]
    E = seq.extrinsics[i]
    v, u = np.mgrid[: seq.height, : seq.width].astype(np.float64)
    d = seq.depth[i].astype(np.float64)
    cam = np.stack([(u - K[0, 2]) * d / K[0, 0], (v - K[1, 2]) * d / K[1, 1], d], axis=-1)
    return (cam - E[:, 3]) @ E[:, :3]


def _bilinear(img: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    u0 = np.floor(u).astype(int)
    v0 = np.floor(v).astype(int)
    u1 = np.minimum(u0 + 1, w - 1)
    v1 = np.minimum(v0 + 1, h - 1)
    fu = u - u0
    fv = v - v0
    if img.ndim == 3:
        fu = fu[:, None]
        fv = fv[:, None]
    top = img[v0, u0] * (1 - fu) + img[v0, u1] * fu
    bottom = img[v1, u0] * (1 - fu) + img[v1, u1] * fu
    return top * (1 - fv) + bottom * fv


def _reprojection_errors(seq: SyntheticSequence, i: int, j: int, extrinsic_j: np.ndarray) -> tuple[np.ndarray, ...]:
    """Static pixels of frame ``i`` projected into ``j``: relative depth error and colour error (0..255)."""
    H, W = seq.height, seq.width
    static_i = ~seq.dynamic_mask[i]
    pts = _backproject(seq, i)[static_i]
    col = seq.images[i][static_i].astype(np.float64)
    K = seq.intrinsics[j]
    cam = pts @ extrinsic_j[:, :3].T + extrinsic_j[:, 3]
    z = cam[:, 2]
    u = K[0, 0] * cam[:, 0] / z + K[0, 2]
    v = K[1, 1] * cam[:, 1] / z + K[1, 2]
    inside = (z > 0) & (u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1)
    u, v, z, col = u[inside], v[inside], z[inside], col[inside]
    u0 = np.floor(u).astype(int)
    v0 = np.floor(v).astype(int)
    u1 = np.minimum(u0 + 1, W - 1)
    v1 = np.minimum(v0 + 1, H - 1)
    st = ~seq.dynamic_mask[j]
    keep = st[v0, u0] & st[v0, u1] & st[v1, u0] & st[v1, u1]  # not next to (or behind) a moving box
    u, v, z, col = u[keep], v[keep], z[keep], col[keep]
    # inverse depth is affine in (u, v) on a plane, so its bilinear interpolation is exact inside a face
    inv_depth = _bilinear(1.0 / seq.depth[j].astype(np.float64), u, v)
    depth_err = np.abs(inv_depth * z - 1.0)
    colour_err = np.abs(_bilinear(seq.images[j].astype(np.float64), u, v) - col).mean(axis=1)
    return depth_err, colour_err


def test_shapes_dtypes_and_cameras():
    s = render_scene(5, 64, 48, seed=1, fps=20.0, base_stamp_ns=1000)
    assert s.images.shape == (5, 48, 64, 3) and s.images.dtype == np.uint8
    assert s.depth.shape == (5, 48, 64) and s.depth.dtype == np.float32
    assert s.dynamic_mask.shape == (5, 48, 64) and s.dynamic_mask.dtype == np.bool_
    assert s.object_index.shape == (5, 48, 64) and s.object_index.dtype == np.int8
    assert s.extrinsics.shape == (5, 3, 4) and s.extrinsics.dtype == np.float64
    assert s.intrinsics.shape == (5, 3, 3) and s.intrinsics.dtype == np.float64
    assert s.stamps_ns.dtype == np.int64
    np.testing.assert_array_equal(s.stamps_ns, 1000 + np.arange(5) * 50_000_000)
    assert (s.num_frames, s.height, s.width) == (5, 48, 64)
    assert s.object_sizes.shape == (1, 3) and s.object_centers.shape == (5, 1, 3) and s.object_yaws.shape == (5, 1)
    assert s.object_poses.shape == (5, 1, 4, 4)
    K = s.intrinsics[0]
    np.testing.assert_allclose(K, [[0.9 * 64, 0, 31.5], [0, 0.9 * 64, 23.5], [0, 0, 1]])
    R = s.extrinsics[:, :, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    assert np.isfinite(s.depth).all() and (s.depth > 0).all()
    np.testing.assert_array_equal(s.dynamic_mask, s.object_index >= 0)
    # the camera moves (translation and yaw) and the box is visible and moves
    centres = -np.einsum("nji,nj->ni", R, s.extrinsics[:, :, 3])
    assert np.linalg.norm(centres[-1] - centres[0]) > 1.0
    assert not np.allclose(R[0], R[-1], atol=1e-2)
    assert s.dynamic_mask.any(axis=(1, 2)).all()
    assert np.linalg.norm(s.object_centers[-1, 0] - s.object_centers[0, 0]) > 2.0


def test_invalid_arguments():
    with pytest.raises(ValueError, match="num_frames"):
        render_scene(0)
    with pytest.raises(ValueError, match="image size"):
        render_scene(2, 4, 4)
    with pytest.raises(ValueError, match="num_boxes"):
        render_scene(2, 32, 24, num_boxes=0)
    with pytest.raises(ValueError, match="supersample"):
        render_scene(2, 32, 24, supersample=0)


def test_determinism_by_seed():
    a = render_scene(4, 48, 36, seed=7, num_boxes=2)
    b = render_scene(4, 48, 36, seed=7, num_boxes=2)
    c = render_scene(4, 48, 36, seed=8, num_boxes=2)
    for name in ("images", "depth", "dynamic_mask", "object_index", "extrinsics", "intrinsics", "stamps_ns",
                 "object_sizes", "object_centers", "object_yaws"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert not np.array_equal(a.images, c.images)
    assert not np.allclose(a.extrinsics, c.extrinsics)


@pytest.mark.parametrize("i, j", [(0, 4), (5, 11), (3, 2), (11, 0)])
def test_static_reprojection_consistency(seq: SyntheticSequence, i: int, j: int):
    depth_err, colour_err = _reprojection_errors(seq, i, j, seq.extrinsics[j])
    assert depth_err.size > 5000
    # exact geometry: all but pixels straddling a wall corner agree to 1e-4 relative depth
    assert np.median(depth_err) < 1e-6
    assert np.mean(depth_err < 1e-4) > 0.95
    # colour of a static surface point agrees up to texture filtering (values in 0..255)
    assert np.median(colour_err) < 4.0
    assert np.mean(colour_err) < 6.0
    # negative control: the same test with a 5 cm / 1 degree pose error in frame j fails clearly
    wrong = seq.extrinsics[j].copy()
    c, s = np.cos(np.radians(1.0)), np.sin(np.radians(1.0))
    wrong[:, :3] = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ wrong[:, :3]
    wrong[2, 3] += 0.05
    bad_depth, bad_colour = _reprojection_errors(seq, i, j, wrong)
    assert np.mean(bad_depth < 1e-4) < 0.5
    assert np.mean(bad_colour) > 2.0 * np.mean(colour_err)


def _box_local(seq: SyntheticSequence, frame: int, m: int, pts: np.ndarray) -> np.ndarray:
    pose = seq.object_poses[frame, m]
    return (pts - pose[:3, 3]) @ pose[:3, :3]


def _ray_enters_box(seq: SyntheticSequence, frame: int, pts: np.ndarray, samples: int = 200) -> np.ndarray:
    """True where the segment from the camera to ``pts`` (excluding its last 0.5 %) passes inside a box."""
    E = seq.extrinsics[frame]
    centre = -E[:, :3].T @ E[:, 3]
    fractions = np.linspace(0.0, 0.995, samples)
    inside = np.zeros(pts.shape[0], dtype=bool)
    for m in range(seq.object_sizes.shape[0]):
        half = 0.5 * seq.object_sizes[m] - 1e-3
        for f in np.array_split(fractions, 8):
            p = centre + f[:, None, None] * (pts - centre)[None]  # [F, P, 3]
            loc = _box_local(seq, frame, m, p.reshape(-1, 3)).reshape(p.shape)
            inside |= (np.abs(loc) < half).all(axis=-1).any(axis=0)
    return inside


def test_mask_is_exactly_where_a_box_is_hit():
    s = render_scene(6, 96, 72, seed=5, num_boxes=2)
    assert s.dynamic_mask.mean() > 0.03
    for i in range(s.num_frames):
        pts = _backproject(s, i).reshape(-1, 3)
        obj = s.object_index[i].reshape(-1)
        # every masked pixel sees the surface of its box ...
        for m in range(s.object_sizes.shape[0]):
            sel = obj == m
            if not sel.any():
                continue
            loc = _box_local(s, i, m, pts[sel])
            rel = np.abs(loc) / (0.5 * s.object_sizes[m])
            np.testing.assert_allclose(rel.max(axis=1), 1.0, atol=1e-4)
        # ... every other pixel sees a wall of the room ...
        static = obj < 0
        to_wall = np.minimum(np.abs(pts[static] - ROOM_MIN), np.abs(pts[static] - ROOM_MAX)).min(axis=1)
        assert to_wall.max() < 1e-4
        # ... and in both cases nothing of a box lies in front of the visible surface
        assert not _ray_enters_box(s, i, pts).any()


def test_save_load_round_trip(tmp_path):
    s = render_scene(3, 40, 30, seed=2, num_boxes=2)
    out = save_sequence(s, tmp_path / "seq")
    for name in ("frame_0000.png", "frame_0002.png", "masks/frame_0001.png", "depth.npy", "object_index.npy",
                 "cameras.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "cameras.json").read_text())
    assert meta["num_frames"] == 3 and len(meta["frames"]) == 3
    np.testing.assert_array_equal(np.asarray(Image.open(out / "frame_0001.png")), s.images[1])
    mask_png = np.asarray(Image.open(out / "masks" / "frame_0002.png"))
    np.testing.assert_array_equal(mask_png > 0, s.dynamic_mask[2])
    back = load_sequence(out)
    for name in ("images", "depth", "dynamic_mask", "object_index", "extrinsics", "intrinsics", "stamps_ns",
                 "object_sizes", "object_centers", "object_yaws"):
        a, b = getattr(s, name), getattr(back, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert back.seed == 2


def test_load_rejects_missing_or_foreign_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_sequence(tmp_path)
    (tmp_path / "cameras.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="format"):
        load_sequence(tmp_path)


def test_command_line_writes_a_loadable_sequence(tmp_path):
    assert main([str(tmp_path / "demo"), "--frames", "2", "--width", "32", "--height", "24", "--seed", "4"]) == 0
    back = load_sequence(tmp_path / "demo")
    ref = render_scene(2, 32, 24, seed=4)
    np.testing.assert_array_equal(back.images, ref.images)
    np.testing.assert_array_equal(back.depth, ref.depth)
