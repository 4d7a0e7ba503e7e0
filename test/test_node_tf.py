"""The node in the robot's TF tree, through real DDS on localhost: TF modes, frames of the outputs, metric scale
from odometry, the z-up map, and the outputs for consumers (camera_info twins, depth).

The node runs in this process with the TEST-ONLY ``geometry_source: synthetic``: its windows get the synthetic
scene's true depth and cameras in a random scale per window, with noise, in place of the network, so that the
geometry it publishes (map -> odom, path, map cloud, depth) can be checked against the scene's truth. Windows,
stitching, TF and publishing are the real code. A client node plays the robot: it publishes the images, and
(depending on the test) ``/tf`` odom -> base_link and ``/tf_static`` base_link -> camera_optical built from the
scene's true camera path.

Scene conventions (vggt4d_ros.synthetic): world x right, y down, z forward. The robot's odom frame is that world
turned to REP-103 axes (x forward, y left, z up); the camera is mounted on base_link 0.8 m up, looking along x.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ros_helpers import ros_context, use_install_space_in_process, wait_for

use_install_space_in_process()

from geometry_msgs.msg import TransformStamped  # noqa: E402
from nav_msgs.msg import Odometry, Path as PathMsg  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from vggt4d_ros.msg import Window as WindowMsg  # noqa: E402
from vggt4d_ros.ros.conversions import (  # noqa: E402
    image_to_depth,
    matrix_to_transform_stamped,
    ns_to_stamp,
    pointcloud2_to_array,
    pose_to_matrix,
    rgb_to_image,
    stamp_to_ns,
    transform_to_matrix,
)
from vggt4d_ros.ros.node import VGGT4DNode  # noqa: E402
from vggt4d_ros.ros.qos import map_cloud_qos, reliable_qos  # noqa: E402
from vggt4d_ros.synthetic import ROOM_MAX, ROOM_MIN, render_scene  # noqa: E402
from vggt4d_ros.synthetic_geometry import SCENE_TO_ODOM, camera_poses_in_odom, odom_to_base  # noqa: E402
from vggt4d_ros.windows.geometry import OPTICAL_TO_BODY  # noqa: E402

NS = "/vggt4d"
CAMERA = "camera_optical"
W, H = 96, 72
FRAMES = 20
SEED = 4

#: the camera's optical frame on base_link: 0.8 m up, 0.1 m forward, looking along x
BASE_T_CAMERA = np.eye(4)
BASE_T_CAMERA[:3, :3] = OPTICAL_TO_BODY
BASE_T_CAMERA[:3, 3] = [0.1, 0.0, 0.8]

OUTPUTS: dict[str, tuple[type, str, Any]] = {
    "mask": (Image, f"{NS}/dynamic_mask", reliable_qos(100)),
    "mask_info": (CameraInfo, f"{NS}/dynamic_mask/camera_info", reliable_qos(100)),
    "depth": (Image, f"{NS}/depth", reliable_qos(100)),
    "depth_info": (CameraInfo, f"{NS}/depth/camera_info", reliable_qos(100)),
    "tf": (TFMessage, "/tf", reliable_qos(1000)),
    "odom": (Odometry, f"{NS}/odometry", reliable_qos(100)),
    "path": (PathMsg, f"{NS}/path", reliable_qos(50)),
    "static": (PointCloud2, f"{NS}/static_cloud", reliable_qos(50)),
    "map": (PointCloud2, f"{NS}/map_cloud", map_cloud_qos(1)),
    "window": (WindowMsg, f"{NS}/window", reliable_qos(50)),
}


def _inv(T: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = T[:3, :3].T
    out[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return out


def _rot_angle(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))


def _header(stamp_ns: int, frame_id: str) -> Header:
    h = Header()
    h.stamp = ns_to_stamp(stamp_ns)
    h.frame_id = frame_id
    return h


class Robot:
    """The node under test plus a client node that plays the robot and records the node's outputs."""

    def __init__(self, node: VGGT4DNode, client: Any) -> None:
        self.node, self.client = node, client
        self._lock = threading.Lock()
        self._msgs: dict[str, list] = defaultdict(list)
        for key, (msg_type, topic, qos) in OUTPUTS.items():
            client.create_subscription(msg_type, topic, partial(self._record, key), qos)
        self.image_pub = client.create_publisher(Image, "/image", reliable_qos(100))
        self.info_pub = client.create_publisher(CameraInfo, "/camera_info", reliable_qos(10))
        self.tf_pub = client.create_publisher(TFMessage, "/tf", reliable_qos(100))
        self.static_pub = client.create_publisher(TFMessage, "/tf_static", map_cloud_qos(1))
        self.seq = render_scene(num_frames=FRAMES, width=W, height=H, seed=SEED)
        self.odom_T_cam = camera_poses_in_odom(self.seq.extrinsics)  # [N, 4, 4] truth
        self.odom_T_base = odom_to_base(self.seq.extrinsics, BASE_T_CAMERA)

    def _record(self, key: str, msg: Any) -> None:
        with self._lock:
            self._msgs[key].append((time.monotonic(), time.time_ns(), msg))

    def msgs(self, key: str) -> list:
        with self._lock:
            return [m for _, _, m in self._msgs[key]]

    def timed(self, key: str) -> list:
        """``[(monotonic receive time, wall-clock receive time in ns, msg)]`` in arrival order."""
        with self._lock:
            return list(self._msgs[key])

    def clear(self) -> None:
        with self._lock:
            self._msgs.clear()

    def configure(self, **params: Any) -> None:
        node = self.node
        if node.state_label == "active":
            assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        if node.state_label == "inactive":
            assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        values = {"tf_mode": "auto", "tf_timeout": 1.0, "publish_tf": True, "use_camera_info": True, **params}
        results = node.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        assert all(r.successful for r in results), [r.reason for r in results]
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.configure_error
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        self.clear()

    def _connected(self) -> None:
        """Wait until the robot's image, camera_info and /tf writers have matched the node's readers (a sample
        sent before that is lost), then a short grace period (ROS_ENV.md: right after discovery)."""
        node = self.node

        def matched() -> bool:
            subs = node._input_subscriptions
            if len(subs) < 2 or subs[0].get_publisher_count() == 0 or subs[1].get_publisher_count() == 0:
                return False
            tf_subs = node._tf._subs if node._tf is not None else []
            # /tf has two writers: the node's own and the robot's
            return not tf_subs or tf_subs[0].get_publisher_count() >= 2

        assert wait_for(matched)
        time.sleep(0.3)

    def publish_until(self, pub: Any, msg: Any, done: Any, timeout: float = 10.0) -> bool:
        """Publish ``msg`` every 0.1 s until ``done()`` (a volatile sample can be lost right after discovery)."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            pub.publish(msg)
            time.sleep(0.1)
        return True

    def publish_static(self) -> None:
        msg = TFMessage(transforms=[matrix_to_transform_stamped(BASE_T_CAMERA, ns_to_stamp(0), "base_link", CAMERA)])
        self.static_pub.publish(msg)

    def run(self, odometry: bool, with_info: bool = True, break_at: int | None = None) -> None:
        """Publish the sequence (with odom -> base_link on /tf just before each image) and wait until every
        frame is processed. ``break_at``: pause before that frame until the node flushes the partial window
        (idle), so the rest of the sequence is a new segment."""
        self._connected()
        if with_info:
            info = CameraInfo(header=_header(int(self.seq.stamps_ns[0]), CAMERA), width=W, height=H)
            info.k = [float(x) for x in self.seq.intrinsics[0].reshape(-1)]
            info.d = [0.01, 0.0, 0.0, 0.0, 0.0]  # copied into the outputs' twins
            info.distortion_model = "plumb_bob"
            assert self.publish_until(self.info_pub, info,
                                      lambda: self.node.diagnostics_values()["camera_info_received"] >= 1)
        for i, (img, st) in enumerate(zip(self.seq.images, self.seq.stamps_ns)):
            if i == break_at:
                assert wait_for(lambda: self.node.diagnostics_values().get("segment.idle", 0) >= 1)
            if odometry:
                t = matrix_to_transform_stamped(self.odom_T_base[i], ns_to_stamp(int(st)), "odom", "base_link")
                self.tf_pub.publish(TFMessage(transforms=[t]))
            self.image_pub.publish(rgb_to_image(np.ascontiguousarray(img), _header(int(st), CAMERA)))
            time.sleep(0.05)
        ok = wait_for(lambda: len(self.msgs("mask")) >= FRAMES and
                      self.node.diagnostics_values()["keyframes_pending"] == 0 and
                      not self.node.diagnostics_values()["worker_busy"])
        assert ok, (len(self.msgs("mask")), self.node.diagnostics_values())
        time.sleep(0.3)

    def node_transforms(self) -> list[TransformStamped]:
        """Transforms on /tf that the node published (everything whose parent is the map frame)."""
        return [t for m in self.msgs("tf") for t in m.transforms if t.header.frame_id == "map"]


@pytest.fixture(scope="module")
def robot():
    with ros_context() as ros:
        node = VGGT4DNode(parameter_overrides=[
            Parameter("geometry_source", value="synthetic"),
            # small noise: these tests check frames, TF and scale, not the stitching's accuracy (the windows'
            # tests do, on 1000 keyframes); the random scale per window stays
            Parameter("synthetic_scene", value=f"seed={SEED} frames={FRAMES} depth_noise=0.01 pose_noise=0.003"),
            Parameter("device", value="cpu"),
            Parameter("target_size", value=112),
            Parameter("window_size", value=8),
            Parameter("window_overlap", value=3),
            Parameter("input_qos", value="reliable"),
            Parameter("input_qos_depth", value=50),
            Parameter("flush_timeout", value=0.5),
            Parameter("map_publish_period", value=0.2),
            Parameter("queue_size", value=16),
            Parameter("voxel_size", value=0.02),
        ])
        ros.nodes.append(node)
        client = ros.node("vggt4d_tf_test_robot")
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        executor.add_node(client)
        thread = threading.Thread(target=executor.spin, daemon=True)
        thread.start()
        try:
            yield Robot(node, client)
        finally:
            if node.state_label == "active":
                node.trigger_deactivate()
            executor.shutdown(timeout_sec=5.0)
            thread.join(timeout=10.0)


def _check_twins(robot: Robot) -> None:
    """Every mask has a camera_info twin with the same header; every depth too; depth is 32FC1 W x H."""
    stamps = sorted(int(s) for s in robot.seq.stamps_ns)
    for key in ("mask", "mask_info", "depth", "depth_info"):
        assert wait_for(lambda: len(robot.msgs(key)) >= FRAMES, 10.0), key
        msgs = robot.msgs(key)
        assert sorted(stamp_to_ns(m.header.stamp) for m in msgs) == stamps, key
        assert {m.header.frame_id for m in msgs} == {CAMERA}, key
        assert all((m.width, m.height) == (W, H) for m in msgs), key
    for info in robot.msgs("mask_info"):
        np.testing.assert_allclose(np.reshape(info.k, (3, 3)), robot.seq.intrinsics[0], rtol=0.01, atol=0.5)
        assert list(info.d) == [0.01, 0.0, 0.0, 0.0, 0.0]  # the input camera_info's twin
    assert all(m.encoding == "32FC1" for m in robot.msgs("depth"))


def _check_depth(robot: Robot, metric: bool) -> None:
    """~/depth against the true depth: metres when metric (median ratio within 5 %), else consistent up to one
    scale across frames."""
    by_stamp = {int(s): i for i, s in enumerate(robot.seq.stamps_ns)}
    ratios = []
    for m in robot.msgs("depth"):
        d = image_to_depth(m)
        truth = robot.seq.depth[by_stamp[stamp_to_ns(m.header.stamp)]]
        ok = np.isfinite(d) & (d > 0)
        assert ok.mean() > 0.5
        ratios.append(float(np.median(d[ok] / truth[ok])))
    ratios = np.asarray(ratios)
    if metric:
        np.testing.assert_allclose(ratios, 1.0, atol=0.05)
    else:
        assert ratios.std() / ratios.mean() < 0.05


def _path(robot: Robot) -> tuple[np.ndarray, np.ndarray]:
    path = robot.msgs("path")[-1]
    assert path.header.frame_id == "map"
    stamps = np.array([stamp_to_ns(p.header.stamp) for p in path.poses])
    poses = np.stack([pose_to_matrix(p.pose) for p in path.poses])
    return stamps, poses


def _map_points(robot: Robot) -> np.ndarray:
    assert wait_for(lambda: any(m.width > 0 for m in robot.msgs("map")), 10.0)
    cloud = [m for m in robot.msgs("map") if m.width > 0][-1]
    assert cloud.header.frame_id == "map"
    pts, _ = pointcloud2_to_array(cloud)
    return pts


def _room_distance(world_pts: np.ndarray) -> np.ndarray:
    """Distance of world points to the nearest wall of the room (the static surfaces)."""
    return np.minimum(np.abs(world_pts - ROOM_MIN), np.abs(world_pts - ROOM_MAX)).min(axis=1)


def test_map_to_camera_without_tf_gives_a_z_up_map(robot: Robot):
    robot.configure(tf_mode="auto", tf_timeout=0.5)
    robot.run(odometry=False, break_at=12)
    values = robot.node.diagnostics_values()
    assert values["tf_mode"] == "map_to_camera" and values["tf_child"] == CAMERA
    transforms = robot.node_transforms()
    assert {(t.header.frame_id, t.child_frame_id) for t in transforms} == {("map", CAMERA)}
    assert sorted(stamp_to_ns(t.header.stamp) for t in transforms) == sorted(int(s) for s in robot.seq.stamps_ns)
    odom = robot.msgs("odom")
    assert {(o.header.frame_id, o.child_frame_id) for o in odom} == {("map", CAMERA)}

    # z-up: the first camera's pose is the optical -> body rotation at the origin
    stamps, poses = _path(robot)
    first = poses[int(np.argmin(stamps))]
    np.testing.assert_allclose(first[:3, :3], OPTICAL_TO_BODY, atol=1e-6)
    np.testing.assert_allclose(first[:3, 3], 0.0, atol=1e-6)
    # the scene's up (-y of the world) is the map's z up to the first camera's pitch
    world_T_cam0 = _inv(np.vstack([robot.seq.extrinsics[0], [0, 0, 0, 1]]))
    map_R_world = first[:3, :3] @ world_T_cam0[:3, :3].T
    up = map_R_world @ np.array([0.0, -1.0, 0.0])
    assert np.degrees(np.arccos(np.clip(up[2], -1, 1))) < 25.0
    windows = robot.msgs("window")
    assert not any(w.metric for w in windows)
    assert {w.scale_source for w in windows} == {"first_window"}
    # the segment after the idle flush continues at the last camera pose (no identity re-anchoring)
    assert [w.anchor for w in windows if w.anchor] == ["identity", "continuity"]
    second = min((w for w in windows if w.segment_index != windows[0].segment_index), key=lambda w: w.window_index)
    assert np.linalg.norm(pose_to_matrix(second.camera_poses[0])[:3, 3]) > 0.1
    _check_twins(robot)
    _check_depth(robot, metric=False)


def test_map_to_camera_with_only_the_static_mount_uses_a_suffixed_child(robot: Robot):
    robot.configure(tf_mode="auto", tf_timeout=0.5)
    robot.publish_static()
    assert wait_for(lambda: robot.node._tf is not None and robot.node._tf.buffer.parent_of(CAMERA) == "base_link",
                    10.0)
    # a broken transform is counted and ignored, the node keeps running
    bad = matrix_to_transform_stamped(np.eye(4), ns_to_stamp(int(robot.seq.stamps_ns[0])), "odom", "base_link")
    bad.transform.translation.x = float("nan")
    assert robot.publish_until(robot.tf_pub, TFMessage(transforms=[bad]),
                               lambda: robot.node.diagnostics_values().get("tf_invalid", 0) >= 1)
    robot.run(odometry=False)
    values = robot.node.diagnostics_values()
    assert values["tf_mode"] == "map_to_camera" and values["tf_child"] == CAMERA + "_vggt4d"
    assert {(t.header.frame_id, t.child_frame_id) for t in robot.node_transforms()} == {("map", CAMERA + "_vggt4d")}
    assert all(t.child_frame_id != CAMERA for m in robot.msgs("tf") for t in m.transforms)
    # ~/odometry: base_link, since TF has base_link -> camera
    assert {(o.header.frame_id, o.child_frame_id) for o in robot.msgs("odom")} == {("map", "base_link")}


def test_map_to_odom_with_robot_odometry(robot: Robot):
    robot.publish_static()  # before the node subscribes: /tf_static reaches late joiners (transient local)
    robot.configure(tf_mode="auto", scale_source="auto", tf_publish_rate=20.0, transform_tolerance=0.1)
    robot.run(odometry=True, break_at=10)
    values = robot.node.diagnostics_values()
    assert values["tf_mode"] == "map_to_odom" and values["tf_child"] == "odom"
    assert values["tf_lookup_failed"] == 0 and values["windows_without_odometry"] == 0

    # /tf carries map -> odom at the set rate (20 Hz), future-dated by transform_tolerance. The rate is read from
    # the median gap between arrivals, so one scheduling stall of a loaded machine does not decide the test.
    t_start = time.monotonic()
    time.sleep(2.0)
    recent = [(t, wall, tr) for t, wall, m in robot.timed("tf") for tr in m.transforms
              if t >= t_start and tr.header.frame_id == "map"]
    assert 10 <= len(recent) <= 60, len(recent)
    gaps = np.diff([t for t, _, _ in recent])
    assert 0.03 <= float(np.median(gaps)) <= 0.08, gaps
    assert {(tr.header.frame_id, tr.child_frame_id) for _, _, tr in recent} == {("map", "odom")}
    # stamped transform_tolerance (0.1 s) ahead of the publication time (the node's clock is the system clock
    # here). Arrival comes after publication, so each stamp leads its arrival by at most 0.1 s, and the quickest
    # delivery of the 2 s shows a lead close to 0.1 s (a loaded machine delays many deliveries, not all).
    leads = [(stamp_to_ns(tr.header.stamp) - wall) * 1e-9 for _, wall, tr in recent]
    assert 0.05 < max(leads) <= 0.1 + 0.01, leads
    # no transform of the node names the camera frame (or any frame but odom) as child
    assert {t.child_frame_id for t in robot.node_transforms()} == {"odom"}
    assert all(t.child_frame_id != CAMERA for m in robot.msgs("tf") for t in m.transforms)

    # the map is the odom frame at the first frame: map -> odom is the identity up to the stitching error
    map_T_odom = transform_to_matrix(recent[-1][2].transform)
    path_len = float(np.linalg.norm(np.diff(robot.odom_T_cam[:, :3, 3], axis=0), axis=1).sum())
    assert path_len > 0.5
    assert np.linalg.norm(map_T_odom[:3, 3]) < 0.03 * path_len, map_T_odom
    assert _rot_angle(map_T_odom[:3, :3]) < 2.0

    # ~/odometry: map -> base_link (TF has base_link -> camera), metric poses close to the truth
    odom = robot.msgs("odom")
    assert len(odom) == FRAMES
    assert {(o.header.frame_id, o.child_frame_id) for o in odom} == {("map", "base_link")}
    by_stamp = {int(s): i for i, s in enumerate(robot.seq.stamps_ns)}
    for o in odom:
        P = pose_to_matrix(o.pose.pose)
        truth = map_T_odom @ robot.odom_T_base[by_stamp[stamp_to_ns(o.header.stamp)]]
        assert np.linalg.norm(P[:3, 3] - truth[:3, 3]) < 0.03 * path_len
        cov = np.reshape(o.pose.covariance, (6, 6))
        assert np.all(np.diag(cov) > 0) and np.all(np.isfinite(cov))
        assert np.all(np.diag(np.reshape(o.twist.covariance, (6, 6))) >= 1e6)  # twist unknown

    # the path (camera poses in map) against the truth, without any alignment
    stamps, poses = _path(robot)
    assert sorted(stamps.tolist()) == sorted(int(s) for s in robot.seq.stamps_ns)
    truth = np.stack([robot.odom_T_cam[by_stamp[int(s)]] for s in stamps])  # map = odom at the first frame
    err = np.linalg.norm(poses[:, :3, 3] - truth[:, :3, 3], axis=1)
    assert np.sqrt(np.mean(err ** 2)) < 0.02 * path_len and err.max() < 0.04 * path_len, err

    # the map cloud lies on the room's walls (metric, in the odom frame)
    pts = _map_points(robot)
    world = (_inv(SCENE_TO_ODOM) @ _inv(map_T_odom) @ np.c_[pts, np.ones(len(pts))].T).T[:, :3]
    dist = _room_distance(world)
    # (1 % depth noise at 4-8 m: a few cm; a wrong frame or scale: metres)
    assert np.median(dist) < 0.1 and np.percentile(dist, 90) < 0.3, np.percentile(dist, [50, 90])

    windows = robot.msgs("window")
    assert windows and all(w.metric for w in windows[1:]) and windows[0].header.frame_id == "map"
    assert {w.scale_source for w in windows} <= {"odometry", "previous"}
    # the segment after the idle flush is anchored by the odometry: the path above has no jump
    assert [w.anchor for w in windows if w.anchor] == ["identity", "odometry"]
    _check_twins(robot)
    _check_depth(robot, metric=True)


def test_publish_tf_false_listens_but_publishes_nothing(robot: Robot):
    robot.configure(tf_mode="auto", publish_tf=False)
    robot.publish_static()
    robot.run(odometry=True)
    time.sleep(0.5)
    values = robot.node.diagnostics_values()
    assert values["tf_mode"] == "map_to_odom"  # odometry is used for the scale and ~/odometry ...
    assert robot.node_transforms() == []  # ... but nothing is broadcast
    assert {(o.header.frame_id, o.child_frame_id) for o in robot.msgs("odom")} == {("map", "base_link")}
    assert all(w.metric for w in robot.msgs("window")[1:])


def test_tf_mode_none_ignores_the_tree(robot: Robot):
    robot.configure(tf_mode="none", use_camera_info=False)
    robot.publish_static()
    robot.run(odometry=True)
    values = robot.node.diagnostics_values()
    assert values["tf_mode"] == "none" and values["tf_invalid"] == 0
    assert robot.node_transforms() == []
    assert {(o.header.frame_id, o.child_frame_id) for o in robot.msgs("odom")} == {("map", CAMERA)}
    windows = robot.msgs("window")
    assert not any(w.metric for w in windows) and {w.scale_source for w in windows} == {"first_window"}
    # without camera_info, the twins carry the estimated intrinsics at the mask's resolution
    for info in robot.msgs("mask_info"):
        np.testing.assert_allclose(np.reshape(info.k, (3, 3)), robot.seq.intrinsics[0], rtol=0.01, atol=0.5)
        assert info.distortion_model == "plumb_bob" and not any(info.d)


def test_map_to_odom_is_not_published_when_odom_already_has_a_parent(robot: Robot):
    robot.configure(tf_mode="map_to_odom")
    robot.publish_static()
    other = matrix_to_transform_stamped(np.eye(4), ns_to_stamp(int(robot.seq.stamps_ns[0])), "map", "odom")
    # another localization node owns map -> odom
    assert robot.publish_until(robot.tf_pub, TFMessage(transforms=[other]),
                               lambda: robot.node._tf.buffer.parent_of("odom") == "map")
    time.sleep(0.3)
    robot.clear()
    robot.run(odometry=True)
    time.sleep(0.3)
    assert robot.node_transforms() == []  # the node published no map -> odom
    assert all(w.metric for w in robot.msgs("window")[1:])  # odometry still gives the scale
