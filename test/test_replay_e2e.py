"""``vggt4d replay`` end to end through real DDS on localhost, plus its argument handling and helpers.

The end-to-end test renders the synthetic scene (textured room, moving camera, a moving box; 40 frames of
160x120 with camera_info) into a sqlite3 bag, runs ``vggt4d replay`` as its own process (the console script,
which starts the node from the install space as a second process) with the tiny fixture model, and reads the
mcap bag it records with ``rosbags``: one mask per processed keyframe with the image's stamp, frame and size, one
TF per processed frame, non-empty static clouds with x, y, z, rgb, one ``~/window`` per window, diagnostics,
and ``processed + dropped + invalid + skipped == frames offered``. With ``--rate 0`` replay holds frames back
while the node is busy, so nothing is dropped at all.

TF: a bag recorded as on a robot (``/tf`` odom -> base_link per frame, ``/tf_static`` base_link -> camera_optical)
is replayed twice, once as is (the node must end in ``tf_mode: map_to_odom`` and publish only map -> odom) and
once with ``--no-tf`` (``map_to_camera``); the TF topic selection is unit-tested on listed connections and on real
bags (wrong type, empty topic).

Environment: ``ros_env()`` (discovery limited to localhost, a random ROS_DOMAIN_ID, ROS_HOME in a temporary
directory); nothing else is set: replay itself must find the install space.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from ros_helpers import REPO_ROOT, require_install_space, ros_env

from vggt4d_ros.bags import TF_TYPE, typestore, write_camera_bag
from vggt4d_ros.cli import main as cli_main
from vggt4d_ros.ros.replay import (
    FORCED_PARAMETERS,
    ReplayOptions,
    ReplaySummary,
    find_install_prefix,
    frames_in_flight,
    frames_in_flight_limit,
    node_command,
    node_environment,
    node_ros_arguments,
    parse_parameter_override,
    published_counts,
    replay_parameters,
    select_input_topics,
    select_tf_topics,
    window_msg_definition,
    write_parameters_file,
)
from vggt4d_ros.ros.replay_session import ReplaySession, tf_qos
from vggt4d_ros.synthetic import render_scene
from vggt4d_ros.synthetic_geometry import odom_to_base
from vggt4d_ros.windows.geometry import OPTICAL_TO_BODY

FRAMES, W, H = 40, 160, 120
WINDOW, OVERLAP = 8, 3
FRAME_ID = "camera_optical"
WORLD = "map"
STATUS_NAME = "vggt4d: vggt4d pipeline"
PRIVATE = "/vggt4d"


def _replay_command() -> list[str]:
    script = Path(sys.executable).parent / "vggt4d"
    if script.is_file():
        return [str(script), "replay"]
    return [sys.executable, "-m", "vggt4d_ros.cli", "replay"]


def _model_args(fixtures_dir: Path, weights: Path | None = None) -> list[str]:
    return ["--weights", str(weights or fixtures_dir / "tiny_dino_weights.safetensors"),
            "--config", str(fixtures_dir / "tiny_dino_config.json"), "--device", "cpu"]


def _read_bag(path: Path) -> dict[str, list]:
    """Every message of a bag, deserialised, by topic: ``topic -> [(bag time ns, message), ...]``."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import get_types_from_msg

    ts = typestore()
    if "vggt4d_ros/msg/Window" not in ts.types:
        ts.register(get_types_from_msg((REPO_ROOT / "msg" / "Window.msg").read_text(), "vggt4d_ros/msg/Window"))
    out: dict[str, list] = {}
    with Reader(path) as reader:
        for conn in reader.connections:
            out.setdefault(conn.topic, [])
        out["__connections__"] = list(reader.connections)
        for conn, t, raw in reader.messages():
            out[conn.topic].append((t, ts.deserialize_cdr(raw, conn.msgtype)))
    return out


def _ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


# ================================================================================================ end to end
@pytest.fixture(scope="module")
def sequence():
    return render_scene(num_frames=FRAMES, width=W, height=H, seed=0)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory, sequence, fixtures_dir: Path):
    """Run the replay once for the module: (completed process, input stamps, output bag contents)."""
    require_install_space()
    tmp = tmp_path_factory.mktemp("replay")
    in_bag = write_camera_bag(tmp / "in_bag", sequence.images, sequence.stamps_ns, intrinsics=sequence.intrinsics,
                              frame_id=FRAME_ID, storage="sqlite3")
    out_bag = tmp / "out_bag"
    env = ros_env()
    env.setdefault("OMP_NUM_THREADS", "2")
    cmd = _replay_command() + [
        str(in_bag), "--output", str(out_bag), "--rate", "0", "--timeout", "280", "--node-log", str(tmp / "node.log"),
        *_model_args(fixtures_dir),
        "-p", "target_size:=140", "-p", f"window_size:={WINDOW}", "-p", f"window_overlap:={OVERLAP}",
        "-p", "map_publish_period:=0.5",
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=300)
    log = (tmp / "node.log").read_text() if (tmp / "node.log").is_file() else ""
    assert proc.returncode == 0, f"replay failed:\n{proc.stdout}\n{proc.stderr}\nnode log:\n{log[-4000:]}"
    return proc, [int(s) for s in sequence.stamps_ns], _read_bag(out_bag), out_bag


def _final_status(bag: dict[str, list]) -> dict[str, str]:
    statuses = [s for _, arr in bag["/diagnostics"] for s in arr.status if s.name == STATUS_NAME]
    assert statuses, "no diagnostics of the node in the output bag"
    return {kv.key: kv.value for kv in statuses[-1].values}


def test_replay_summary_and_accounting(replayed):
    proc, stamps, bag, out_bag = replayed
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("replay done: 40 frames offered"), summary
    assert str(out_bag) in summary
    diag = _final_status(bag)
    counts = {k: int(diag[k]) for k in ("frames_in", "frames_processed", "frames_dropped", "frames_invalid",
                                        "frames_skipped", "keyframes", "keyframes_pending", "windows_processed")}
    assert counts["frames_in"] == FRAMES
    assert counts["keyframes_pending"] == 0
    assert (counts["frames_processed"] + counts["frames_dropped"] + counts["frames_invalid"]
            + counts["frames_skipped"]) == FRAMES
    # back-pressure (--rate 0): the node never had to drop a frame, and the windows tile the sequence:
    # 7 full windows of 8 (5 new frames each after the first) plus the flushed final window of 5.
    assert counts["frames_processed"] == FRAMES and counts["frames_dropped"] == 0, diag
    assert counts["windows_processed"] == 8
    segments = {m.segment_index for _, m in bag[f"{PRIVATE}/window"]}
    assert segments == {0}, "an idle flush split the stream while replay held frames back"
    assert f"{counts['frames_processed']} processed" in summary
    # the output bag is mcap (the default) and was written by replay's recorder
    assert any(p.suffix == ".mcap" for p in out_bag.iterdir())


def test_node_runs_on_the_bag_clock(replayed):
    """use_sim_time + /clock: the node's clock (diagnostics stamps) follows the bag time, not the wall clock."""
    _, stamps, bag, _ = replayed
    diag_stamps = [_ns(arr.header.stamp) for _, arr in bag["/diagnostics"]
                   if any(s.name == STATUS_NAME for s in arr.status)]
    in_bag_time = [s for s in diag_stamps if stamps[0] <= s <= stamps[-1]]
    assert in_bag_time, f"no diagnostics stamped with bag time: {diag_stamps[:3]} vs {stamps[0]}..{stamps[-1]}"
    assert diag_stamps[-1] == stamps[-1], "after the last frame the node's clock stays at the last bag time"


def test_one_mask_per_processed_keyframe(replayed, sequence):
    _, stamps, bag, _ = replayed
    diag = _final_status(bag)
    masks = [m for _, m in bag[f"{PRIVATE}/dynamic_mask"]]
    assert len(masks) == int(diag["frames_processed"])
    mask_stamps = [_ns(m.header.stamp) for m in masks]
    assert len(set(mask_stamps)) == len(masks), "a frame got two masks"
    assert set(mask_stamps) <= set(stamps)
    for m in masks:
        assert (m.encoding, m.height, m.width, m.step) == ("mono8", H, W, W)
        assert m.header.frame_id == FRAME_ID
        values = np.unique(np.asarray(m.data))
        assert set(values.tolist()) <= {0, 255}


def test_one_transform_per_processed_frame(replayed):
    _, stamps, bag, _ = replayed
    diag = _final_status(bag)
    transforms = [t for _, msg in bag["/tf"] for t in msg.transforms]
    assert len(transforms) == int(diag["frames_processed"])
    mask_stamps = {_ns(m.header.stamp) for _, m in bag[f"{PRIVATE}/dynamic_mask"]}
    assert {_ns(t.header.stamp) for t in transforms} == mask_stamps
    for t in transforms:
        assert t.header.frame_id == WORLD and t.child_frame_id == FRAME_ID
        q = t.transform.rotation
        assert abs(np.linalg.norm([q.x, q.y, q.z, q.w]) - 1.0) < 1e-6
        v = t.transform.translation
        assert np.all(np.isfinite([v.x, v.y, v.z]))
    odometry = bag[f"{PRIVATE}/odometry"]
    assert {_ns(m.header.stamp) for _, m in odometry} == mask_stamps


def test_static_clouds_and_map_have_xyz_rgb(replayed):
    _, _, bag, _ = replayed
    diag = _final_status(bag)
    clouds = [m for _, m in bag[f"{PRIVATE}/static_cloud"]]
    assert len(clouds) == int(diag["windows_processed"])
    for c in clouds:
        assert [(f.name, f.datatype, f.count) for f in c.fields] == [
            ("x", 7, 1), ("y", 7, 1), ("z", 7, 1), ("rgb", 7, 1)]
        assert c.header.frame_id == WORLD
        assert c.width * c.height > 0, "empty static cloud"
        assert len(c.data) == c.row_step * c.height == c.point_step * c.width * c.height
        xyz = np.frombuffer(np.asarray(c.data).tobytes(), dtype=np.float32).reshape(-1, c.point_step // 4)[:, :3]
        assert np.all(np.isfinite(xyz))
    maps = [m for _, m in bag[f"{PRIVATE}/map_cloud"]]
    assert maps and maps[-1].width * maps[-1].height > 0, "the final map was not recorded"
    # ~/map_cloud is recorded with the publisher's transient-local durability, so `ros2 bag play` latches it
    conn = next(c for c in bag["__connections__"] if c.topic == f"{PRIVATE}/map_cloud")
    assert [q.durability.name for q in conn.ext.offered_qos_profiles] == ["TRANSIENT_LOCAL"]


def test_one_window_message_per_window(replayed):
    _, stamps, bag, _ = replayed
    diag = _final_status(bag)
    windows = [m for _, m in bag[f"{PRIVATE}/window"]]
    assert len(windows) == int(diag["windows_processed"])
    assert [w.window_index for w in windows] == sorted({w.window_index for w in windows})
    covered: set[int] = set()
    for w in windows:
        n = len(w.frame_stamps)
        assert 2 <= n <= WINDOW
        assert len(w.dynamic_fraction) == n and len(w.camera_poses) == n and len(w.intrinsics) == 9 * n
        assert (w.image_width, w.image_height) == (W, H)
        assert w.header.frame_id == WORLD
        assert len(w.stage_names) == len(w.stage_times) and "pass1" in list(w.stage_names)
        window_stamps = [_ns(s) for s in w.frame_stamps]
        assert window_stamps == sorted(window_stamps) and set(window_stamps) <= set(stamps)
        covered.update(window_stamps)
    mask_stamps = {_ns(m.header.stamp) for _, m in bag[f"{PRIVATE}/dynamic_mask"]}
    assert covered == mask_stamps


def test_only_node_outputs_are_recorded(replayed):
    _, _, bag, _ = replayed
    topics = {c.topic for c in bag["__connections__"]}
    expected = {f"{PRIVATE}/{name}" for name in ("dynamic_mask", "odometry", "path", "static_cloud", "map_cloud",
                                                   "dynamic_cloud", "window")} | {"/tf", "/diagnostics"}
    assert expected <= topics
    assert not topics & {"/image", "/camera_info", "/clock", "/rosout", "/parameter_events"}


# ------------------------------------------------------------------------------------------------ segments
SEGMENT_WINDOW, SEGMENT_OVERLAP = 12, 1


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, fixtures_dir: Path):
    """A bag whose stream breaks into segments (header stamps jumping back, a gap, a resolution change), replayed
    at ``--rate 0`` into a node with one queue slot and windows of 12 keyframes overlapping by 1: every window
    publishes a burst of 11 masks and 11 odometry messages (more than the old history depth of 10), and every
    segment break flushes a partial window the old back-pressure budget did not count."""
    require_install_space()
    tmp = tmp_path_factory.mktemp("segmented")
    small = render_scene(num_frames=38, width=320, height=240, seed=4).images
    large = render_scene(num_frames=13, width=640, height=480, seed=5).images
    images = list(small) + list(large)
    t0, dt = 1_700_000_000_000_000_000, 100_000_000
    stamps = [t0 + i * dt for i in range(14)]                                  # segment 0
    stamps += [t0 - 5_000_000_000 + i * dt for i in range(12)]                 # header stamps jump back
    stamps += [stamps[-1] + 5_000_000_000 + i * dt for i in range(12)]         # a 5 s gap
    stamps += [stamps[-1] + dt * (i + 1) for i in range(13)]                   # 640x480 from here
    receive = [t0 + i * dt for i in range(len(images))]                        # the bag's own time runs on
    in_bag = write_camera_bag(tmp / "in_bag", images, stamps, frame_id=FRAME_ID, storage="mcap", receive_ns=receive)
    out_bag = tmp / "out_bag"
    env = ros_env()
    env.setdefault("OMP_NUM_THREADS", "2")
    cmd = _replay_command() + [
        str(in_bag), "--output", str(out_bag), "--rate", "0", "--timeout", "280", "--node-log", str(tmp / "node.log"),
        *_model_args(fixtures_dir), "-p", "target_size:=112", "-p", f"window_size:={SEGMENT_WINDOW}",
        "-p", f"window_overlap:={SEGMENT_OVERLAP}", "-p", "queue_size:=1", "-p", "drop_policy:=drop_newest",
        "-p", "map_publish_period:=0.5", "-p", "publish_overlay:=true",
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=300)
    log = (tmp / "node.log").read_text() if (tmp / "node.log").is_file() else ""
    assert proc.returncode == 0, f"replay failed:\n{proc.stdout}\n{proc.stderr}\nnode log:\n{log[-4000:]}"
    return proc, len(images), _read_bag(out_bag)


def test_rate_0_back_pressure_holds_through_segment_breaks(segmented):
    proc, frames, bag = segmented
    diag = _final_status(bag)
    n = {k: int(diag.get(k, 0)) for k in ("frames_in", "frames_processed", "frames_dropped", "frames_invalid",
                                          "frames_skipped", "input_overflow", "segments")}
    assert n["frames_in"] == frames and n["input_overflow"] == 0
    assert n["frames_processed"] + n["frames_invalid"] + n["frames_skipped"] == frames, diag
    assert n["frames_dropped"] == 0 and "dropped.queue_full" not in diag, diag
    for reason in ("stamp_backwards", "gap", "resolution"):
        assert int(diag.get(f"segment.{reason}", 0)) == 1, (reason, diag)
    assert "replay done" in proc.stdout


def test_every_output_is_recorded_as_often_as_the_node_published_it(segmented):
    """Bursts of 11 per-frame messages per window: each output topic of the recording holds exactly what the
    node's own counters say it published, and nothing is missing."""
    _, frames, bag = segmented
    diag = _final_status(bag)
    published = {k[len("published."):]: int(v) for k, v in diag.items() if k.startswith("published.")}
    assert {"dynamic_mask", "dynamic_overlay", "odometry", "tf", "window", "path", "static_cloud",
            "dynamic_cloud", "map_cloud"} <= set(published)
    assert published["dynamic_mask"] == published["odometry"] == frames
    for name, count in published.items():
        topic = "/tf" if name == "tf" else f"{PRIVATE}/{name}"
        recorded = len(bag.get(topic, []))
        if name == "map_cloud":  # transient local: the recorder may also get the latched one it subscribed after
            assert recorded >= count, name
        else:
            assert recorded == count, (name, recorded, count)
    sizes = {(m.width, m.height) for _, m in bag[f"{PRIVATE}/dynamic_mask"]}
    assert sizes == {(320, 240), (640, 480)}


# ------------------------------------------------------------------------------------------------ TF
TF_FRAMES, TF_WINDOW, TF_OVERLAP = 12, 6, 2
#: The camera's mount on the robot: optical axes, 0.1 m forward and 0.8 m up from base_link.
BASE_T_CAMERA = np.eye(4)
BASE_T_CAMERA[:3, :3] = OPTICAL_TO_BODY
BASE_T_CAMERA[:3, 3] = [0.1, 0.0, 0.8]


@pytest.fixture(scope="module")
def robot_bag(tmp_path_factory, sequence) -> Path:
    """The first frames of the scene as a robot records them: images, camera_info, ``/tf`` odom -> base_link
    (the true camera path moved to base_link) per frame and ``/tf_static`` base_link -> camera_optical."""
    n = TF_FRAMES
    odom_T_base = odom_to_base(sequence.extrinsics[:n], BASE_T_CAMERA)
    return write_camera_bag(tmp_path_factory.mktemp("robot") / "in_bag", sequence.images[:n], sequence.stamps_ns[:n],
                            intrinsics=sequence.intrinsics[:n], frame_id=FRAME_ID, storage="mcap",
                            tf=[("odom", "base_link", odom_T_base)], tf_static=[("base_link", FRAME_ID, BASE_T_CAMERA)])


def _replay_robot_bag(tmp: Path, in_bag: Path, fixtures_dir: Path, *extra: str):
    require_install_space()
    out_bag = tmp / "out_bag"
    env = ros_env()
    env.setdefault("OMP_NUM_THREADS", "2")
    rate = [] if "--rate" in extra else ["--rate", "0"]
    cmd = _replay_command() + [
        str(in_bag), "--output", str(out_bag), *rate, "--timeout", "200", "--node-log", str(tmp / "node.log"),
        *_model_args(fixtures_dir), "-p", "target_size:=112", "-p", f"window_size:={TF_WINDOW}",
        "-p", f"window_overlap:={TF_OVERLAP}", "-p", "map_publish_period:=0.5", *extra,
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=220)
    log = (tmp / "node.log").read_text() if (tmp / "node.log").is_file() else ""
    assert proc.returncode == 0, f"replay failed:\n{proc.stdout}\n{proc.stderr}\nnode log:\n{log[-4000:]}"
    return proc, _read_bag(out_bag)


@pytest.fixture(scope="module")
def replayed_with_tf(tmp_path_factory, robot_bag: Path, fixtures_dir: Path):
    return _replay_robot_bag(tmp_path_factory.mktemp("with_tf"), robot_bag, fixtures_dir)


@pytest.fixture(scope="module")
def replayed_without_tf(tmp_path_factory, robot_bag: Path, fixtures_dir: Path):
    return _replay_robot_bag(tmp_path_factory.mktemp("no_tf"), robot_bag, fixtures_dir, "--no-tf")


def _edges(bag: dict[str, list]) -> set[tuple[str, str]]:
    return {(t.header.frame_id, t.child_frame_id) for _, msg in bag.get("/tf", []) for t in msg.transforms}


def test_replay_forwards_the_bags_tf_so_the_node_joins_the_robots_tree(replayed_with_tf):
    """The bag's /tf and /tf_static reach the node: tf_mode auto picks map_to_odom (REP-105), the node publishes
    map -> odom and never names the camera frame as a child, ~/odometry is about base_link; replay's own /tf
    samples (odom -> base_link) are not in the recording."""
    proc, bag = replayed_with_tf
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"replay done: {TF_FRAMES} frames offered"), summary
    assert f"forwarding TF: /tf ({TF_FRAMES} messages) and /tf_static (1 message)" in proc.stderr, proc.stderr
    diag = _final_status(bag)
    assert diag["tf_mode"] == "map_to_odom", diag
    assert diag["tf_child"] == "odom" and int(diag["tf_invalid"]) == 0 and int(diag["tf_lookup_failed"]) == 0, diag
    assert int(diag["frames_in"]) == TF_FRAMES and int(diag["frames_processed"]) == TF_FRAMES, diag
    edges = _edges(bag)
    assert edges == {(WORLD, "odom")}, edges
    assert int(diag["published.tf"]) > 0  # (edges: replay's forwarded odom -> base_link is not in the recording)
    odometry = [m for _, m in bag[f"{PRIVATE}/odometry"]]
    assert len(odometry) == TF_FRAMES
    assert {(m.header.frame_id, m.child_frame_id) for m in odometry} == {(WORLD, "base_link")}


def test_replay_no_tf_leaves_the_node_in_map_to_camera(replayed_without_tf):
    proc, bag = replayed_without_tf
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"replay done: {TF_FRAMES} frames offered"), summary
    assert "TF not forwarded (--no-tf; the bag has /tf, /tf_static)" in proc.stderr, proc.stderr
    diag = _final_status(bag)
    assert diag["tf_mode"] == "map_to_camera" and diag["tf_child"] == FRAME_ID, diag
    assert _edges(bag) == {(WORLD, FRAME_ID)}
    assert {m.child_frame_id for _, m in bag[f"{PRIVATE}/odometry"]} == {FRAME_ID}


def test_replay_forwards_tf_at_a_paced_rate(tmp_path: Path, robot_bag: Path, fixtures_dir: Path):
    """``--rate 2`` (the paced path, no back-pressure): the transforms are forwarded with the images in the same
    paced loop, and the node still joins the robot's tree."""
    proc, bag = _replay_robot_bag(tmp_path, robot_bag, fixtures_dir, "--rate", "2")
    assert "replay done" in proc.stdout.strip().splitlines()[-1]
    assert f"(and TF: {TF_FRAMES} on /tf, 1 on /tf_static) published" in proc.stderr, proc.stderr
    diag = _final_status(bag)
    assert diag["tf_mode"] == "map_to_odom" and int(diag["tf_lookup_failed"]) == 0, diag
    assert _edges(bag) == {(WORLD, "odom")}


def _copy_bag(src: Path, dst: Path, extra: dict[str, tuple[str, list]]) -> Path:
    """``src`` with more messages: ``topic -> (type, [(bag time ns, rosbags message), ...])``, on the bag's own
    connection of that topic when it has one (an empty list makes a connection without messages)."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    ts = typestore()
    with Reader(src) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        items = [(int(t), c.topic, bytes(raw)) for c, t, raw in reader.messages()]
    for topic, (msgtype, messages) in extra.items():
        topics.setdefault(topic, msgtype)
        items += [(int(t), topic, bytes(ts.serialize_cdr(msg, msgtype))) for t, msg in messages]
    with Writer(dst, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {topic: writer.add_connection(topic, msgtype, typestore=ts) for topic, msgtype in topics.items()}
        for t, topic, raw in sorted(items, key=lambda x: x[0]):  # stable: same-time messages keep their order
            writer.write(conns[topic], t, raw)
    return dst


def test_publish_order_statics_first_each_transform_before_its_image_paced(tmp_path: Path, sequence,
                                                                         robot_bag: Path):
    """The session's real publishers (no node; ``--rate 2``, so no back-pressure) against a listener with tf2's
    QoS that notes each sample's source timestamp (its publication time): every ``/tf_static`` message, also one
    recorded late in the bag, goes out before the first image and in bag order; each frame's ``/tf`` goes out before
    its image (bag order); the transforms are paced at the bag's timing; only images count as frames."""
    import threading

    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from tf2_msgs.msg import TFMessage

    from ros_helpers import ros_context, spin_until
    from vggt4d_ros.bags import tf_message
    from vggt4d_ros.ros.qos import map_cloud_qos, reliable_qos

    rate, stamps = 2.0, [int(s) for s in sequence.stamps_ns[:TF_FRAMES]]
    late = tf_message([("base_link", "imu", np.eye(4))], stamps[0])
    bag = _copy_bag(robot_bag, tmp_path / "late_static", {"/tf_static": (TF_TYPE, [(stamps[7] + 1, late)])})
    got: list[tuple[int, str, Any]] = []
    lock = threading.Lock()

    def note(topic: str):
        def callback(msg, info) -> None:
            with lock:
                got.append((int(info["source_timestamp"]), topic, msg))
        return callback

    with ros_context() as ros:
        listener = ros.node("tf_listener")
        listener.create_subscription(TFMessage, "/tf", note("/tf"), reliable_qos(100))
        listener.create_subscription(TFMessage, "/tf_static", note("/tf_static"), map_cloud_qos(100))
        listener.create_subscription(Image, "/image", note("/image"),
                                     QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        executor = ros.executor()
        executor.add_node(listener)
        session = ReplaySession(ReplayOptions(input=bag, output=tmp_path / "unused", rate=rate))
        try:
            session.open_input()
            session.start_ros()
            session.create_publishers()
            assert set(session.tf_pubs) == {"/tf", "/tf_static"}
            matched = [session.image_pub, *session.tf_pubs.values()]
            assert spin_until(executor, lambda: all(pub.get_subscription_count() > 0 for pub in matched), 20.0)
            assert spin_until(executor, lambda: all(sub.get_publisher_count() > 0 for sub in listener.subscriptions),
                              20.0)
            spin_until(executor, lambda: False, 1.0)  # let the reliable readers settle
            thread = threading.Thread(target=spin_until, args=(executor, lambda: len(got) >= 2 * TF_FRAMES + 2, 30.0))
            thread.start()
            session.publish_bag()
            thread.join()
        finally:
            session.close(keep_log=False)
    assert session.offered == TF_FRAMES and session.tf_forwarded == {"/tf": TF_FRAMES, "/tf_static": 2}
    got.sort(key=lambda x: x[0])
    order = [(topic, _ns(m.header.stamp) if topic == "/image" else
              tuple((t.header.frame_id, t.child_frame_id, _ns(t.header.stamp)) for t in m.transforms))
             for _, topic, m in got]
    assert len(order) == 2 * TF_FRAMES + 2, order
    statics = [o for o in order if o[0] == "/tf_static"]
    assert order[:2] == statics, "a static transform went out after an image"
    assert [edges[0][:2] for _, edges in statics] == [("base_link", FRAME_ID), ("base_link", "imu")]
    images = [i for i, o in enumerate(order) if o[0] == "/image"]
    assert [order[i][1] for i in images] == stamps
    for k, i in enumerate(images):
        assert order[i - 1] == ("/tf", (("odom", "base_link", stamps[k]),)), "the frame's /tf did not precede it"
    tf_times = [t for t, topic, _ in got if topic == "/tf"]
    assert tf_times[-1] - tf_times[0] >= 0.9 * (stamps[-1] - stamps[0]) / rate, "/tf was not paced"


def test_select_tf_topics(caplog: pytest.LogCaptureFixture):
    def conns(*items):
        return [SimpleNamespace(topic=t, msgtype=ty, msgcount=n) for t, ty, n in items]

    img, string = ("/image", "sensor_msgs/msg/Image", 5), "std_msgs/msg/String"
    assert select_tf_topics(conns(img)) == ()
    assert select_tf_topics(conns(img, ("/tf", TF_TYPE, 5), ("/tf_static", TF_TYPE, 1))) == (("/tf", 5),
                                                                                               ("/tf_static", 1))
    # namespaced TF topics are not what the node listens to
    assert select_tf_topics(conns(img, ("/robot/tf", TF_TYPE, 5))) == ()
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert select_tf_topics(conns(img, ("/tf", string, 5), ("/tf_static", TF_TYPE, 1))) == (("/tf_static", 1),)
    assert "not forwarding the bag's /tf messages of type std_msgs/msg/String" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert select_tf_topics(conns(("/tf", TF_TYPE, 3), ("/tf", string, 2), ("/tf_static", TF_TYPE, 0))) == (
            ("/tf", 3),)
    assert "its TFMessage messages are forwarded" in caplog.text
    assert "the bag's /tf_static (tf2_msgs/msg/TFMessage) has no messages" in caplog.text


def test_open_input_chooses_the_tf_of_real_bags(tmp_path: Path, sequence, robot_bag: Path,
                                                caplog: pytest.LogCaptureFixture):
    """The TF selection on bags read with rosbags: forwarded with counts, left out with --no-tf, and a TF topic
    of the wrong type or without messages skipped with a warning instead of an error."""
    def open_input(bag: Path, forward: bool = True) -> ReplaySession:
        session = ReplaySession(ReplayOptions(input=bag, output=tmp_path / "unused", forward_tf=forward))
        session.open_input()
        session.reader.close()
        return session

    with caplog.at_level("INFO"):
        assert open_input(robot_bag).selection.tf == (("/tf", TF_FRAMES), ("/tf_static", 1))
    assert f"forwarding TF: /tf ({TF_FRAMES} messages) and /tf_static (1 message)" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        assert open_input(robot_bag, forward=False).selection.tf == ()
    assert "TF not forwarded (--no-tf; the bag has /tf, /tf_static)" in caplog.text

    ts = typestore()
    plain = write_camera_bag(tmp_path / "plain", sequence.images[:2], sequence.stamps_ns[:2])
    odd = _copy_bag(plain, tmp_path / "odd", {
        "/tf": ("std_msgs/msg/String", [(int(sequence.stamps_ns[0]), ts.types["std_msgs/msg/String"](data="x"))]),
        "/tf_static": (TF_TYPE, []),
    })
    caplog.clear()
    with caplog.at_level("INFO"):
        session = open_input(odd)
    assert session.selection.tf == () and session.selection.frames == 2
    assert "not forwarding the bag's /tf messages of type std_msgs/msg/String" in caplog.text
    assert "the bag's /tf_static (tf2_msgs/msg/TFMessage) has no messages" in caplog.text
    assert "no TF forwarded" in caplog.text


def test_tf_qos_and_the_no_tf_switch(capsys):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy

    tf, static = tf_qos("/tf", 500), tf_qos("/tf_static", 3)
    assert (tf.reliability, tf.durability, tf.history) == (ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE,
                                                           HistoryPolicy.KEEP_LAST)
    assert tf.depth >= 100
    assert (static.reliability, static.durability) == (ReliabilityPolicy.RELIABLE, DurabilityPolicy.TRANSIENT_LOCAL)
    assert static.depth == 3 and tf_qos("/tf_static", 0).depth == 1
    with pytest.raises(SystemExit):
        cli_main(["replay", "--help"])
    assert "--no-tf" in capsys.readouterr().out


def test_replay_reports_a_node_that_fails_to_start(tmp_path: Path, sequence, fixtures_dir: Path):
    require_install_space()
    in_bag = write_camera_bag(tmp_path / "in_bag", sequence.images[:3], sequence.stamps_ns[:3])
    cmd = _replay_command() + [str(in_bag), "--output", str(tmp_path / "out"), "--rate", "0",
                               "--node-log", str(tmp_path / "node.log"),
                               *_model_args(fixtures_dir, weights=tmp_path / "missing.safetensors")]
    proc = subprocess.run(cmd, env=ros_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("replay FAILED: 0 frames offered")
    assert "exited with status 1" in line and "missing.safetensors" in line
    assert "cannot load weights" in (tmp_path / "node.log").read_text()
    assert not (tmp_path / "out").exists(), "a failed start must not leave an empty output bag"


# ================================================================================================ arguments
def test_user_errors_are_one_line_before_anything_starts(tmp_path: Path, sequence, capsys):
    in_bag = write_camera_bag(tmp_path / "in_bag", sequence.images[:2], sequence.stamps_ns[:2])
    (tmp_path / "exists").mkdir()
    cases = [
        ([str(in_bag), "--output", str(tmp_path / "exists")], "exists already"),
        ([str(in_bag), "--output", str(tmp_path / "o1"), "-p", "window_size=8"], "name:=value"),
        ([str(in_bag), "--output", str(tmp_path / "o2"), "--rate", "-1"], "--rate must be >= 0"),
        ([str(tmp_path), "--output", str(tmp_path / "o3")], "not a rosbag2 directory"),
        ([str(in_bag), "--output", str(tmp_path / "o4"), "--image-topic", "/nope"], "no topic '/nope'"),
        ([str(in_bag), "--output", str(tmp_path / "o5"), "--params-file", str(tmp_path / "p.yaml")],
         "parameters file not found"),
        ([str(in_bag), "--output", str(tmp_path / "o6"), "--node-namespace", "bad ns"], "namespace"),
    ]
    for argv, fragment in cases:
        assert cli_main(["replay", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("vggt4d replay: error:") and fragment in err, (argv, err)
        assert len(err.splitlines()) == 1
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 7))


def test_select_input_topics():
    def conns(**topics):
        return [SimpleNamespace(topic=t.replace("__", "/"), msgtype=ty) for t, ty in topics.items()]

    img, comp, info = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/CameraInfo"
    assert select_input_topics(conns(__image=img, __camera_info=info)) == ("/image", img, "/camera_info")
    assert select_input_topics(conns(__image=img)) == ("/image", img, None)
    # raw images win over compressed ones; '' disables camera_info
    assert select_input_topics(conns(__a__image=img, __a__image__compressed=comp, __a__camera_info=info),
                               camera_info_topic="") == ("/a/image", img, None)
    assert select_input_topics(conns(__c__image__compressed=comp)) == ("/c/image/compressed", comp, None)
    # several camera_info topics: the one beside the image topic
    two = conns(__l__image=img, __r__image=img, __l__camera_info=info, __r__camera_info=info)
    assert select_input_topics(two, image_topic="/r/image") == ("/r/image", img, "/r/camera_info")
    with pytest.raises(ValueError, match="several sensor_msgs/msg/Image topics"):
        select_input_topics(two)
    with pytest.raises(ValueError, match="expected sensor_msgs/msg/Image"):
        select_input_topics(two, image_topic="/l/camera_info")
    with pytest.raises(ValueError, match="no sensor_msgs/msg/Image or"):
        select_input_topics(conns(__camera_info=info))


def test_node_ros_arguments():
    args = node_ros_arguments(namespace="/robot", params_files=[Path("/p.yaml"), Path("/replay.yaml")],
                              input_transport="compressed", image_topic="/cam/image/compressed",
                              camera_info_topic="/cam/camera_info")
    assert args == ["--ros-args", "--params-file", "/p.yaml", "--params-file", "/replay.yaml", "-r", "__ns:=/robot",
                    "-r", "image/compressed:=/cam/image/compressed", "-r", "camera_info:=/cam/camera_info"]
    root = node_ros_arguments(namespace="/", params_files=[], input_transport="raw", image_topic="/image",
                              camera_info_topic=None)
    assert root == ["--ros-args", "-r", "image:=/image"]


def test_replay_parameters_are_typed_and_forced_last():
    values = replay_parameters(["window_size:=8", "voxel_size:=0.5", "publish_tf:=false", "map_frame:=world",
                                "input_qos:=sensor_data", "weights:=/a:b.pt"],
                               {"weights": "w.safetensors", "model_config": None, "device": "cpu"}, "compressed")
    assert values["window_size"] == 8 and values["voxel_size"] == 0.5 and values["publish_tf"] is False
    assert values["map_frame"] == "world" and values["device"] == "cpu" and "model_config" not in values
    assert values["weights"] == "/a:b.pt"  # -p comes after --weights
    assert {k: values[k] for k in FORCED_PARAMETERS if k in values} == {
        "autostart": True, "input_qos": "reliable", "input_qos_depth": 100, "input_queue_size": 64,
        "use_sim_time": True, "input_transport": "compressed", "diagnostics_period": 0.2}
    # --rate 0: the node's input thread waits for room instead of dropping windows
    assert replay_parameters(["drop_policy:=drop_newest"], {}, "raw", backpressure=True)["drop_policy"] == "wait"
    assert replay_parameters(["drop_policy:=drop_newest"], {}, "raw")["drop_policy"] == "drop_newest"


def test_replay_parameters_file_wins_over_any_user_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """ROS applies parameter entries in the order their node key first appears: a plain `-p` (key `/**`) loses
    against a later, more specific `/vggt4d` entry of the user's file. Replay's file must win in every case."""
    import rclpy
    from rclpy.context import Context

    for var, value in ros_env().items():
        if var.startswith("ROS_") or var == "RMW_IMPLEMENTATION":
            monkeypatch.setenv(var, value)
    user = tmp_path / "user.yaml"
    user.write_text("/**:\n  ros__parameters:\n    autostart: false\n    window_size: 4\n"
                    "/vggt4d:\n  ros__parameters:\n    window_size: 5\n    input_qos: sensor_data\n")
    values = replay_parameters(["window_size:=8"], {"weights": "w.pt"}, "raw")
    cases = {
        "user file with /** and /vggt4d": [user],
        "shipped config": [REPO_ROOT / "config" / "vggt4d.yaml"],
        "no user file": [],
    }
    for label, files in cases.items():
        mine = write_parameters_file(tmp_path / "replay.yaml", values, files[0] if files else None)
        ctx = Context()
        rclpy.init(args=["x", *node_ros_arguments(namespace="/", params_files=[*files, mine], input_transport="raw",
                                                  image_topic="/image", camera_info_topic=None)], context=ctx)
        try:
            node = rclpy.create_node("vggt4d", context=ctx, start_parameter_services=False,
                                     automatically_declare_parameters_from_overrides=True)
            got = {p.name: p.value for p in node.get_parameters(
                ["autostart", "window_size", "input_qos", "weights", "use_sim_time"])}
            node.destroy_node()
        finally:
            rclpy.shutdown(context=ctx)
        assert got["autostart"] is True and got["window_size"] == 8 and got["input_qos"] == "reliable", label
        assert got["weights"] == "w.pt" and got["use_sim_time"] is True, label
    # for comparison: the same settings as -p arguments lose against the user's /vggt4d entry
    ctx = Context()
    rclpy.init(args=["x", "--ros-args", "--params-file", str(user), "-p", "window_size:=8"], context=ctx)
    try:
        node = rclpy.create_node("vggt4d", context=ctx, start_parameter_services=False,
                                 automatically_declare_parameters_from_overrides=True)
        assert node.get_parameter("window_size").value == 5
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_parse_parameter_override():
    assert parse_parameter_override("window_size:=8") == ("window_size", "8")
    assert parse_parameter_override("weights:=/a:=b") == ("weights", "/a:=b")
    for bad in ("window_size=8", ":=3", "1a:=2", "a b:=1"):
        with pytest.raises(ValueError, match="name:=value"):
            parse_parameter_override(bad)


def test_frames_in_flight_uses_the_nodes_own_accounting():
    diag = {"frames_in": "30", "input_overflow": "2"}
    assert frames_in_flight(40, diag) == 8
    assert frames_in_flight(40, {}) == 40
    assert frames_in_flight_limit(64, 100, 100) == 63
    assert frames_in_flight_limit(32, 20, 100) == 19
    assert frames_in_flight_limit(1, 1, 1) == 1


def test_completeness_is_checked_per_topic_against_the_nodes_counters():
    diag = {"published.dynamic_mask": "30", "published.odometry": "30", "published.tf": "4", "frames_in": "30"}
    assert published_counts(diag, "/ns/vggt4d") == {"/ns/vggt4d/dynamic_mask": 30, "/ns/vggt4d/odometry": 30,
                                                     "/tf": 4}
    summary = ReplaySummary(ok=False, reason="outputs missing from the recording (recorded/published): "
                            "/vggt4d/odometry 57/60", frames_offered=60, diagnostics={}, recorded={},
                            output=Path("out"), node_log=None, elapsed_s=1.0)
    assert "replay FAILED" in summary.line() and "/vggt4d/odometry 57/60" in summary.line()


def test_node_environment_and_command(tmp_path: Path):
    prefix = find_install_prefix()
    assert prefix == require_install_space().resolve()
    env = node_environment(prefix, base={"PYTHONPATH": "/x", "LD_LIBRARY_PATH": "/y", "ROS_DOMAIN_ID": "42"})
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST" and env["ROS_DOMAIN_ID"] == "42"
    site = prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(site), "/x"]
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == [str(prefix / "lib"), "/y"]
    assert env["AMENT_PREFIX_PATH"].split(os.pathsep)[0] == str(prefix)
    # a discovery range that is set is never widened (nor narrowed)
    assert node_environment(None, base={"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"})[
        "ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"
    assert node_command(prefix) == [str(prefix / "lib" / "vggt4d_ros" / "vggt4d_node")]
    assert node_command(None) == [sys.executable, "-m", "vggt4d_ros.ros.node_main"]
    assert node_command(tmp_path) == [sys.executable, "-m", "vggt4d_ros.ros.node_main"]
    assert find_install_prefix({"VGGT4D_ROS_INSTALL": str(tmp_path), "AMENT_PREFIX_PATH": str(prefix)}) == prefix
    text = window_msg_definition(prefix)
    assert text is not None and "uint32 window_index" in text
