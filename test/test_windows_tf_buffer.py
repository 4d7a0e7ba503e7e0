"""TransformBuffer against known chains: composition, interpolation, latest common time, errors, history."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from vggt4d_ros.windows import TransformBuffer, TransformLookupError

S = 1_000_000_000  # one second in ns


def pose(rotvec, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    T[:3, 3] = t
    return T


def robot_tree() -> tuple[TransformBuffer, dict]:
    """map -> odom (static), odom -> base_link (moving, 3 samples), base_link -> camera (static),
    base_link -> lidar (static)."""
    buf = TransformBuffer(cache_time_s=10.0)
    T = {
        "map_odom": pose([0, 0, 0.3], [1.0, -2.0, 0.0]),
        "base_cam": pose([-np.pi / 2, 0, -np.pi / 2], [0.2, 0.0, 0.5]),
        "base_lidar": pose([0, 0, np.pi], [-0.1, 0.0, 0.8]),
        "odom_base": [(10 * S, pose([0, 0, 0.0], [0, 0, 0])), (11 * S, pose([0, 0, 0.4], [1.0, 0.5, 0])),
                      (12 * S, pose([0.1, 0, 0.9], [2.0, 1.5, 0.1]))],
    }
    buf.set_transform("map", "odom", 0, T["map_odom"], static=True)
    buf.set_transform("base_link", "camera", 0, T["base_cam"], static=True)
    buf.set_transform("/base_link", "lidar", 0, T["base_lidar"], static=True)  # leading slash is ignored
    for stamp, M in T["odom_base"]:
        buf.set_transform("odom", "base_link", stamp, M)
    return buf, T


def interp(samples, stamp) -> np.ndarray:
    """Independent reference: scipy Slerp + linear translation."""
    st = np.array([s for s, _ in samples], dtype=float)
    rots = Rotation.from_matrix(np.stack([M[:3, :3] for _, M in samples]))
    out = np.eye(4)
    out[:3, :3] = Slerp(st, rots)([float(stamp)]).as_matrix()[0]
    out[:3, 3] = [np.interp(stamp, st, [M[k, 3] for _, M in samples]) for k in range(3)]
    return out


def test_chain_lookups_compose_and_interpolate():
    buf, T = robot_tree()
    t = int(10.25 * S)
    odom_base = interp(T["odom_base"], t)
    # exact sample, interpolated sample, full chain, inverse direction, sibling frames
    np.testing.assert_allclose(buf.lookup("odom", "base_link", 11 * S), T["odom_base"][1][1], atol=1e-12)
    np.testing.assert_allclose(buf.lookup("odom", "base_link", t), odom_base, atol=1e-9)
    np.testing.assert_allclose(buf.lookup("map", "camera", t), T["map_odom"] @ odom_base @ T["base_cam"], atol=1e-9)
    np.testing.assert_allclose(buf.lookup("camera", "map", t),
                               np.linalg.inv(T["map_odom"] @ odom_base @ T["base_cam"]), atol=1e-9)
    np.testing.assert_allclose(buf.lookup("camera", "lidar", t), np.linalg.inv(T["base_cam"]) @ T["base_lidar"],
                               atol=1e-12)
    np.testing.assert_allclose(buf.lookup("lidar", "lidar"), np.eye(4))
    # maps points: a point at the camera origin lands at the camera's position in the map
    p = buf.lookup("map", "camera", t) @ np.array([0, 0, 0, 1.0])
    np.testing.assert_allclose(p[:3], (T["map_odom"] @ odom_base @ T["base_cam"])[:3, 3], atol=1e-9)


def test_latest_common_time_and_static_only_chains():
    buf, T = robot_tree()
    assert buf.latest_common_time("map", "camera") == 12 * S
    np.testing.assert_allclose(buf.lookup("map", "camera"), T["map_odom"] @ T["odom_base"][2][1] @ T["base_cam"],
                               atol=1e-12)
    np.testing.assert_allclose(buf.lookup("map", "camera", 0), buf.lookup("map", "camera", 12 * S), atol=1e-12)
    assert buf.latest_common_time("camera", "lidar") == 0  # static only: any time
    np.testing.assert_allclose(buf.lookup("camera", "lidar", 123 * S), buf.lookup("camera", "lidar"), atol=1e-12)
    assert buf.parent_of("camera") == "base_link" and buf.parent_of("map") is None and buf.parent_of("nope") is None
    assert buf.frames() == ["base_link", "camera", "lidar", "map", "odom"]


def test_errors_say_why():
    buf, _ = robot_tree()
    with pytest.raises(TransformLookupError, match="past"):
        buf.lookup("map", "camera", 9 * S)
    with pytest.raises(TransformLookupError, match="future"):
        buf.lookup("map", "camera", 13 * S)
    with pytest.raises(TransformLookupError, match="unknown frame 'nope'"):
        buf.lookup("map", "nope")
    buf.set_transform("world", "other", 0, np.eye(4), static=True)
    with pytest.raises(TransformLookupError, match="not connected"):
        buf.lookup("map", "other")
    assert isinstance(TransformLookupError("x"), LookupError)
    assert buf.can_transform("map", "camera", 11 * S)
    assert not buf.can_transform("map", "camera", 13 * S)
    assert not buf.can_transform("map", "other")
    with pytest.raises(ValueError, match="cycle"):
        buf.set_transform("camera", "odom", 0, np.eye(4))
    with pytest.raises(ValueError, match="rotation"):
        buf.set_transform("a", "b", 0, np.diag([2.0, 1, 1, 1]))
    with pytest.raises(ValueError, match="finite"):
        buf.set_transform("a", "b", 0, np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="different"):
        buf.set_transform("a", "a", 0, np.eye(4))
    with pytest.raises(ValueError, match="empty"):
        buf.set_transform("", "b", 0, np.eye(4))
    with pytest.raises(ValueError):
        TransformBuffer(cache_time_s=0)
    # a single dynamic sample answers only its own time
    buf.set_transform("odom", "tag", 5 * S, np.eye(4))
    assert buf.can_transform("odom", "tag", 5 * S) and not buf.can_transform("odom", "tag", 5 * S + 1)


def test_bounded_history_static_forever_and_reparenting():
    buf = TransformBuffer(cache_time_s=2.0)
    buf.set_transform("base_link", "camera", 0, pose([0.1, 0, 0], [0, 0, 1]), static=True)
    for k in range(100):
        buf.set_transform("odom", "base_link", k * S // 2, pose([0, 0, 0.01 * k], [0.1 * k, 0, 0]))
    # samples older than 2 s before the newest (49.5 s) are gone; the static transform is still there
    assert buf.can_transform("odom", "camera", int(47.5 * S))
    assert not buf.can_transform("odom", "camera", int(47.0 * S))
    assert buf.can_transform("base_link", "camera", 1)
    # samples may arrive out of order; a repeated stamp replaces the sample
    buf.set_transform("odom", "base_link", int(48.25 * S), pose([0, 0, 0], [7.0, 0, 0]))
    assert buf.lookup("odom", "base_link", int(48.25 * S))[0, 3] == pytest.approx(7.0)
    buf.set_transform("odom", "base_link", int(48.25 * S), pose([0, 0, 0], [8.0, 0, 0]))
    assert buf.lookup("odom", "base_link", int(48.25 * S))[0, 3] == pytest.approx(8.0)
    # re-parenting replaces the edge
    buf.set_transform("map", "base_link", 0, np.eye(4), static=True)
    assert buf.parent_of("base_link") == "map"
    buf.clear()
    assert buf.frames() == []


def test_concurrent_writers_and_readers():
    buf = TransformBuffer(cache_time_s=1.0)
    buf.set_transform("base_link", "camera", 0, np.eye(4), static=True)
    buf.set_transform("odom", "base_link", 0, np.eye(4))
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer():
        try:
            for k in range(1, 3000):
                buf.set_transform("odom", "base_link", k * 1_000_000, pose([0, 0, 1e-4 * k], [1e-3 * k, 0, 0]))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            stop.set()

    def reader():
        try:
            while not stop.is_set():
                T = buf.lookup("odom", "camera")
                assert np.isfinite(T).all()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert not errors
    assert buf.lookup("odom", "camera")[0, 3] == pytest.approx(2.999)
