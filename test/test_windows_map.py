"""Voxel map, PLY export, trajectory store and TUM export (vggt4d_ros.windows.map / trajectory)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vggt4d_ros.windows import Sim3, Trajectory, VoxelMap, format_tum, read_ply, read_tum, save_tum


def test_merging_running_means_within_and_across_inserts():
    m = VoxelMap(voxel_size=1.0, max_points=100)
    pts = np.array([[0.1, 0.1, 0.1], [0.3, 0.5, 0.9], [1.5, 0.2, 0.2], [-0.5, 0.0, 0.0]])
    cols = np.array([[0, 0, 0], [100, 200, 50], [10, 10, 10], [255, 255, 255]], dtype=np.uint8)
    assert m.insert(pts, cols) == 4
    assert len(m) == 3
    keys = m.voxel_keys()
    order = np.lexsort(keys.T[::-1])
    np.testing.assert_array_equal(keys[order], [[-1, 0, 0], [0, 0, 0], [1, 0, 0]])
    P, C = m.points()[order], m.colors()[order]
    np.testing.assert_allclose(P[1], [0.2, 0.3, 0.5])
    np.testing.assert_array_equal(C[1], [50, 100, 25])
    # weighted update of an existing voxel: weight 2 at 0.8 with weight-2 history at 0.2 -> 0.5
    m.insert(np.array([[0.8, 0.3, 0.5]]), np.array([[150, 100, 25]], np.uint8), weights=np.array([2.0]))
    i0 = np.flatnonzero(np.all(m.voxel_keys() == 0, axis=1))[0]
    np.testing.assert_allclose(m.points()[i0], [0.5, 0.3, 0.5])
    np.testing.assert_array_equal(m.colors()[i0], [100, 100, 25])
    assert m.weights()[i0] == 4.0
    # non-finite and zero-weight points are ignored
    assert m.insert(np.array([[np.nan, 0, 0], [5.0, 5.0, 5.0]]), None, weights=np.array([1.0, 0.0])) == 0
    assert len(m) == 3


def test_voxel_keys_are_sorted_and_lookup_matches_bruteforce():
    rng = np.random.default_rng(0)
    m = VoxelMap(voxel_size=0.5, max_points=10_000)
    all_pts = []
    for _ in range(5):
        p = rng.normal(scale=3.0, size=(500, 3))
        all_pts.append(p)
        m.insert(p, np.zeros((500, 3), np.uint8))
    allp = np.concatenate(all_pts)
    keys = np.floor(allp / 0.5).astype(np.int64)
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    assert len(m) == len(uniq)
    means = np.zeros((len(uniq), 3))
    np.add.at(means, inv.ravel(), allp)
    means /= np.bincount(inv.ravel())[:, None]
    got = {tuple(k): p for k, p in zip(m.voxel_keys(), m.points())}
    for k, p in zip(uniq, means):
        np.testing.assert_allclose(got[tuple(k)], p, atol=1e-9)


def test_memory_stays_flat_and_oldest_voxels_are_evicted():
    rng = np.random.default_rng(1)
    m = VoxelMap(voxel_size=0.1, max_points=3000)
    sizes = []
    for i in range(30):
        p = rng.uniform(-20, 20, size=(700, 3))
        m.insert(p, rng.integers(0, 255, size=(700, 3), dtype=np.uint8))
        assert len(m) <= 3000
        sizes.append(m.nbytes)
    assert len(m) == 3000 and m.capacity == 3000
    assert len(set(sizes[5:])) == 1  # storage stopped growing once full
    # the latest batch is fully present (newest tick), so eviction removed older voxels
    last = rng.uniform(-20, 20, size=(700, 3)) + 100.0
    m.insert(last, np.zeros((700, 3), np.uint8))
    keys = {tuple(k) for k in m.voxel_keys()}
    assert all(tuple(k) in keys for k in np.floor(last / 0.1).astype(np.int64))
    assert len(m) == 3000


def test_single_oversized_insert_keeps_heaviest():
    m = VoxelMap(voxel_size=1.0, max_points=2)
    pts = np.array([[0.5, 0, 0], [1.5, 0, 0], [2.5, 0, 0]])
    m.insert(pts, None, weights=np.array([1.0, 5.0, 3.0]))
    np.testing.assert_allclose(np.sort(m.points()[:, 0]), [1.5, 2.5])


def test_transform_reanchors_and_merges():
    m = VoxelMap(voxel_size=1.0, max_points=100)
    m.insert(np.array([[0.5, 0.5, 0.5], [1.5, 0.5, 0.5]]), None)
    m.transform(Sim3(0.5, np.eye(3), np.array([10.0, 0.0, 0.0])))
    # both means land in voxel (10, 0, 0) and merge
    assert len(m) == 1
    np.testing.assert_allclose(m.points()[0], [10.5, 0.25, 0.25])
    assert m.weights()[0] == 2.0
    R = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    m.transform(Sim3(1.0, R, np.zeros(3)))
    np.testing.assert_allclose(m.points()[0], R @ [10.5, 0.25, 0.25])
    m.clear()
    assert len(m) == 0 and m.points().shape == (0, 3)


def test_save_ply_binary_roundtrip(tmp_path):
    rng = np.random.default_rng(2)
    m = VoxelMap(voxel_size=0.01, max_points=1000)
    m.insert(rng.normal(size=(50, 3)), rng.integers(0, 255, size=(50, 3), dtype=np.uint8))
    path = tmp_path / "sub" / "map.ply"
    m.save_ply(path)
    data = path.read_bytes()
    head, body = data.split(b"end_header\n", 1)
    lines = head.decode("ascii").splitlines()
    assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
    assert f"element vertex {len(m)}" in lines
    props = [ln for ln in lines if ln.startswith("property")]
    assert props == ["property float x", "property float y", "property float z",
                     "property uchar red", "property uchar green", "property uchar blue"]
    assert len(body) == len(m) * 15
    rows = [struct.unpack("<fffBBB", body[i * 15:(i + 1) * 15]) for i in range(len(m))]
    P = np.array([r[:3] for r in rows])
    C = np.array([r[3:] for r in rows], dtype=np.uint8)
    np.testing.assert_allclose(P, m.points(), atol=1e-6)
    np.testing.assert_array_equal(C, m.colors())
    P2, C2 = read_ply(path)
    np.testing.assert_array_equal(P2, P.astype(np.float32))
    np.testing.assert_array_equal(C2, C)
    assert [p.name for p in path.parent.iterdir()] == ["map.ply"]  # no temp file left behind


def test_voxel_map_validation():
    with pytest.raises(ValueError):
        VoxelMap(voxel_size=0)
    with pytest.raises(ValueError):
        VoxelMap(max_points=0)
    m = VoxelMap()
    with pytest.raises(ValueError, match="points"):
        m.insert(np.zeros((3, 2)), None)
    with pytest.raises(ValueError, match="colors"):
        m.insert(np.zeros((3, 3)), np.zeros((3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="weights"):
        m.insert(np.zeros((3, 3)), None, weights=-np.ones(3))
    far = VoxelMap(voxel_size=1e-3)
    far.insert(np.array([[1e4, 0, 0], [0, 0, 0]]), None)
    assert len(far) == 1 and far.num_out_of_range == 1


def random_poses(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    P = np.tile(np.eye(4), (n, 1, 1))
    P[:, :3, :3] = Rotation.random(n, random_state=seed).as_matrix()
    P[:, :3, 3] = rng.normal(size=(n, 3))
    return P


def test_tum_format_and_parse_back(tmp_path):
    stamps = np.array([1_700_000_000_123_456_789, 5, 2_000_000_000], dtype=np.int64)
    P = random_poses(3, 0)
    P[1, :3, :3] = np.eye(3)
    P[1, :3, 3] = [1.0, 2.0, 3.0]
    path = tmp_path / "traj.txt"
    save_tum(path, stamps, P)
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    assert lines[0].split()[0] == "1700000000.123456789"
    assert lines[1] == "0.000000005 1.000000000 2.000000000 3.000000000 0.000000000 0.000000000 0.000000000 1.000000000"
    assert lines[2].split()[0] == "2.000000000"
    for line, pose in zip(lines, P):
        vals = np.array([float(x) for x in line.split()[1:]])
        assert vals.shape == (7,)
        np.testing.assert_allclose(vals[:3], pose[:3, 3], atol=1e-8)
        assert vals[6] >= 0
        q = vals[3:]  # x y z w
        np.testing.assert_allclose(Rotation.from_quat(q).as_matrix(), pose[:3, :3], atol=1e-7)
    st2, P2 = read_tum(path)
    np.testing.assert_array_equal(st2, stamps)
    np.testing.assert_allclose(P2, P, atol=1e-7)
    with pytest.raises(ValueError, match="rotation"):
        format_tum(np.array([0]), np.eye(4)[None] * 2)
    with pytest.raises(ValueError, match="integer"):
        format_tum(np.array([0.5]), np.eye(4)[None])


def test_trajectory_keeps_latest_estimate_and_transforms(tmp_path):
    traj = Trajectory()
    P = random_poses(4, 1)
    traj.update(np.array([30, 10, 20]), P[:3], window_index=0)
    traj.update(np.array([30, 40]), P[[3, 0]], window_index=1)
    np.testing.assert_array_equal(traj.stamps(), [10, 20, 30, 40])
    np.testing.assert_allclose(traj.get(30), P[3])  # the newer window's estimate replaced P[0]
    np.testing.assert_allclose(traj.get(20), P[2])
    assert traj.window_of(30) == 1 and traj.window_of(10) == 0
    g = Sim3(2.0, Rotation.from_euler("x", 30, degrees=True).as_matrix(), np.array([1.0, 0, 0]))
    before = traj.poses()
    traj.transform(g)
    after = traj.poses()
    np.testing.assert_allclose(after[:, :3, 3], g.apply(before[:, :3, 3]))
    np.testing.assert_allclose(after[:, :3, :3], g.R @ before[:, :3, :3])
    traj.save_tum(tmp_path / "t.txt")
    st, poses = read_tum(tmp_path / "t.txt")
    np.testing.assert_array_equal(st, [10, 20, 30, 40])
    np.testing.assert_allclose(poses, after, atol=1e-7)
    bounded = Trajectory(max_poses=2)
    bounded.update(np.array([1, 2, 3]), P[:3])
    np.testing.assert_array_equal(bounded.stamps(), [2, 3])
