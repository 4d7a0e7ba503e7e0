"""The VGGT4D node end to end in one process, through real DDS on localhost, with the tiny fixture model.

One node is configured once for the module (window_size 4, overlap 2, 112 px model input, reliable input QoS);
each test starts from ``~/reset`` and checks the outputs of its own frames: stamps, frames, sizes, counts,
and the accounting ``keyframes = processed + dropped + pending``. Fault tests feed broken images, resolution
changes, stamps going back, gaps, NaN network output and a simulated out-of-memory error; the node must keep
running and count each.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ros_helpers import ros_context, use_install_space_in_process, wait_for

use_install_space_in_process()

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from nav_msgs.msg import Odometry, Path as PathMsg  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from vggt4d_ros.msg import Window as WindowMsg  # noqa: E402
from vggt4d_ros.ros.conversions import (  # noqa: E402
    ns_to_stamp,
    pointcloud2_to_array,
    rgb_to_image,
    stamp_to_ns,
    transform_to_matrix,
)
from vggt4d_ros.ros.node import VGGT4DNode  # noqa: E402
from vggt4d_ros.ros.qos import map_cloud_qos, reliable_qos  # noqa: E402
from vggt4d_ros.synthetic import render_scene  # noqa: E402
from vggt4d_ros.windows import read_ply, read_tum  # noqa: E402

NS = "/vggt4d"
FRAME_ID = "cam_optical"
W, H = 160, 120
TIMEOUT = 90.0

OUTPUTS: dict[str, tuple[type, str, Any]] = {
    "mask": (Image, f"{NS}/dynamic_mask", reliable_qos(50)),
    "overlay": (Image, f"{NS}/dynamic_overlay", reliable_qos(50)),
    "tf": (TFMessage, "/tf", reliable_qos(100)),
    "odom": (Odometry, f"{NS}/odometry", reliable_qos(50)),
    "path": (PathMsg, f"{NS}/path", reliable_qos(50)),
    "static": (PointCloud2, f"{NS}/static_cloud", reliable_qos(50)),
    "map": (PointCloud2, f"{NS}/map_cloud", map_cloud_qos(1)),
    "dynamic": (PointCloud2, f"{NS}/dynamic_cloud", reliable_qos(50)),
    "window": (WindowMsg, f"{NS}/window", reliable_qos(50)),
    "diag": (DiagnosticArray, "/diagnostics", reliable_qos(10)),
}


class Rig:
    """The node under test, a client node (publishers, recorders, service clients) and a spinning executor."""

    def __init__(self, node: VGGT4DNode, client: Any, executor: MultiThreadedExecutor) -> None:
        self.node, self.client, self.executor = node, client, executor
        self._lock = threading.Lock()
        self._msgs: dict[str, list] = defaultdict(list)
        for key, (msg_type, topic, qos) in OUTPUTS.items():
            client.create_subscription(msg_type, topic, partial(self._record, key), qos)
        self.image_pub = client.create_publisher(Image, "/image", reliable_qos(100))
        self.compressed_pub = client.create_publisher(CompressedImage, "/image/compressed", reliable_qos(100))
        self.info_pub = client.create_publisher(CameraInfo, "/camera_info", reliable_qos(10))
        self.reset_cli = client.create_client(Trigger, f"{NS}/reset")
        self.save_cli = client.create_client(Trigger, f"{NS}/save_map")
        self.change_cli = client.create_client(ChangeState, f"{NS}/change_state")
        self.state_cli = client.create_client(GetState, f"{NS}/get_state")
        self.seq = render_scene(num_frames=12, width=W, height=H, seed=3)

    def _record(self, key: str, msg: Any) -> None:
        with self._lock:
            self._msgs[key].append(msg)

    def msgs(self, key: str) -> list:
        with self._lock:
            return list(self._msgs[key])

    def clear(self) -> None:
        with self._lock:
            self._msgs.clear()

    def call(self, client: Any, request: Any) -> Any:
        assert client.wait_for_service(timeout_sec=TIMEOUT)
        future = client.call_async(request)
        assert wait_for(future.done), "service call timed out"
        return future.result()

    def reset(self) -> None:
        res = self.call(self.reset_cli, Trigger.Request())
        assert res.success, res.message
        self.clear()

    def values(self) -> dict[str, Any]:
        return self.node.diagnostics_values()

    def reconfigure(self, **params: Any) -> None:
        """deactivate -> cleanup -> set ``params`` -> configure -> activate, each step asserted."""
        node = self.node
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert all(r.successful for r in node.set_parameters([Parameter(k, value=v) for k, v in params.items()]))
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.configure_error
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def wait_connected(self, pub: Any, sub_index: int = 0) -> None:
        """Wait until ``pub`` and the node's subscription number ``sub_index`` (0: images, 1: camera_info)
        have matched on both sides; a fresh match gets a short grace period (ROS_ENV.md: the first
        reliable samples can be lost right after discovery)."""
        def matched() -> bool:
            subs = self.node._input_subscriptions
            return pub.get_subscription_count() > 0 and len(subs) > sub_index and \
                subs[sub_index].get_publisher_count() > 0

        if matched():
            return
        assert wait_for(matched)
        time.sleep(0.5)

    def publish(self, images: np.ndarray, stamps_ns, frame_id: str = FRAME_ID, pause: float = 0.02) -> None:
        self.wait_connected(self.image_pub)
        for img, st in zip(images, stamps_ns):
            self.image_pub.publish(rgb_to_image(np.ascontiguousarray(img), _header(int(st), frame_id)))
            time.sleep(pause)

    def publish_raw(self, msg: Image) -> None:
        self.wait_connected(self.image_pub)
        self.image_pub.publish(msg)

    def wait_done(self, frames_in: int, masks: int) -> dict[str, Any]:
        """Wait until the node has taken ``frames_in`` images in total, nothing is pending, and ``masks``
        masks arrived; return the diagnostics values."""
        ok = wait_for(lambda: self.values()["frames_in"] >= frames_in and self.values()["keyframes_pending"] == 0
                      and not self.values()["worker_busy"] and len(self.msgs("mask")) >= masks)
        values = self.values()
        assert ok, f"timed out: {values}, masks {len(self.msgs('mask'))}"
        time.sleep(0.3)  # let late duplicates (there must be none) arrive
        check_accounting(values)
        return values


def _header(stamp_ns: int, frame_id: str = FRAME_ID) -> Header:
    h = Header()
    h.stamp = ns_to_stamp(stamp_ns)
    h.frame_id = frame_id
    return h


def check_accounting(values: dict[str, Any]) -> None:
    assert values["frames_in"] == values["frames_invalid"] + values["frames_skipped"] + values["keyframes"]
    assert values["keyframes"] == values["frames_processed"] + values["frames_dropped"] + values["keyframes_pending"]


def delta(after: dict, before: dict, key: str) -> int:
    return int(after.get(key, 0) or 0) - int(before.get(key, 0) or 0)


@pytest.fixture(scope="module")
def rig(fixtures_dir: Path):
    with ros_context() as ros:
        node = VGGT4DNode(parameter_overrides=[
            Parameter("weights", value=str(fixtures_dir / "tiny_dino_weights.safetensors")),
            Parameter("model_config", value=str(fixtures_dir / "tiny_dino_config.json")),
            Parameter("device", value="cpu"),
            Parameter("target_size", value=112),
            Parameter("window_size", value=4),
            Parameter("window_overlap", value=2),
            Parameter("input_qos", value="reliable"),
            Parameter("input_qos_depth", value=50),
            Parameter("publish_overlay", value=True),
            Parameter("flush_timeout", value=0.8),
            Parameter("map_publish_period", value=0.2),
            Parameter("max_points_per_frame", value=2000),
            Parameter("queue_size", value=16),  # no drops unless a test shrinks the queue
        ])
        ros.nodes.append(node)
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.configure_error
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        client = ros.node("vggt4d_test_client")
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        executor.add_node(client)
        thread = threading.Thread(target=executor.spin, daemon=True)
        thread.start()
        try:
            yield Rig(node, client, executor)
        finally:
            if node.state_label == "active":
                node.trigger_deactivate()
            executor.shutdown(timeout_sec=5.0)
            thread.join(timeout=10.0)


def _stamps(n: int, start_ns: int = 1_700_000_000_000_000_000, dt_ns: int = 100_000_000) -> list[int]:
    return [start_ns + i * dt_ns for i in range(n)]


def test_outputs_of_a_stream(rig: Rig):
    rig.reset()
    seq = rig.seq
    K = seq.intrinsics[0]
    info = CameraInfo(header=_header(int(seq.stamps_ns[0])), width=W, height=H)
    info.k = [float(x) for x in K.reshape(-1)]
    rig.wait_connected(rig.info_pub, sub_index=1)
    rig.info_pub.publish(info)
    assert wait_for(lambda: rig.values()["camera_info_received"] >= 1)
    before = rig.values()
    stamps = [int(s) for s in seq.stamps_ns[:10]]
    rig.publish(seq.images[:10], stamps)
    after = rig.wait_done(before["frames_in"] + 10, masks=10)
    assert delta(after, before, "frames_processed") == 10 and delta(after, before, "frames_dropped") == 0

    masks = rig.msgs("mask")
    assert sorted(stamp_to_ns(m.header.stamp) for m in masks) == stamps  # one mask per keyframe, no repeats
    for m in masks:
        assert (m.width, m.height, m.encoding, m.step, m.header.frame_id) == (W, H, "mono8", W, FRAME_ID)
        assert set(np.unique(np.frombuffer(m.data, np.uint8))) <= {0, 255}
    overlays = rig.msgs("overlay")
    assert len(overlays) == 10 and all((o.width, o.height, o.encoding) == (W, H, "rgb8") for o in overlays)

    transforms = [t for msg in rig.msgs("tf") for t in msg.transforms]
    assert sorted(stamp_to_ns(t.header.stamp) for t in transforms) == stamps
    assert {(t.header.frame_id, t.child_frame_id) for t in transforms} == {("map", FRAME_ID)}
    odom = rig.msgs("odom")
    assert sorted(stamp_to_ns(o.header.stamp) for o in odom) == stamps
    assert {(o.header.frame_id, o.child_frame_id) for o in odom} == {("map", FRAME_ID)}

    windows = rig.msgs("window")
    assert [w.window_index for w in windows] == [0, 1, 2, 3]
    for w in windows:
        assert len(w.frame_stamps) == len(w.dynamic_fraction) == len(w.camera_poses) == 4
        assert len(w.intrinsics) == 36 and (w.image_width, w.image_height) == (W, H)
        assert all(0.0 <= f <= 1.0 for f in w.dynamic_fraction)
        assert w.header.frame_id == "map" and w.header.stamp == w.frame_stamps[-1]
        assert len(w.stage_names) == len(w.stage_times) and "pass1" in w.stage_names and "stitch" in w.stage_names
        # camera_info intrinsics are used to make the windows consistent
        np.testing.assert_allclose(np.reshape(w.intrinsics[:9], (3, 3)), K, rtol=1e-4, atol=1e-3)
    assert windows[0].alignment_scale == 1.0 and windows[0].alignment_residual == 0.0
    assert all(w.alignment_points > 0 for w in windows[1:])
    # each frame's TF is its pose in the first window that processed it
    tf_by_stamp = {stamp_to_ns(t.header.stamp): transform_to_matrix(t.transform) for t in transforms}
    for st, pose in zip(windows[0].frame_stamps, windows[0].camera_poses):
        P = tf_by_stamp[stamp_to_ns(st)]
        np.testing.assert_allclose(P[:3, 3], [pose.position.x, pose.position.y, pose.position.z], atol=1e-5)

    statics = rig.msgs("static")
    assert len(statics) == 4
    for c in statics:
        assert [f.name for f in c.fields] == ["x", "y", "z", "rgb"] and c.point_step == 16
        assert c.header.frame_id == "map" and c.width > 0
        pts, cols = pointcloud2_to_array(c)
        assert np.isfinite(pts).all() and cols is not None and cols.shape == (c.width, 3)
    dyn = rig.msgs("dynamic")
    assert len(dyn) == 4 and all(c.header.frame_id == "map" for c in dyn)
    assert sorted(stamp_to_ns(c.header.stamp) for c in dyn) == [stamps[3], stamps[5], stamps[7], stamps[9]]
    assert wait_for(lambda: any(c.width > 0 for c in rig.msgs("map")))
    path = rig.msgs("path")[-1]
    assert [stamp_to_ns(p.header.stamp) for p in path.poses] == stamps and path.header.frame_id == "map"

    assert wait_for(lambda: any(s.name == "vggt4d: vggt4d pipeline" for a in rig.msgs("diag") for s in a.status))
    status = [s for a in rig.msgs("diag") for s in a.status if s.name == "vggt4d: vggt4d pipeline"][-1]
    keys = {kv.key for kv in status.values}
    assert {"frames_in", "frames_processed", "frames_dropped", "queue_depth", "latency_p50_s", "latency_p95_s",
            "windows_processed", "memory_bytes", "keyframes_pending"} <= keys
    assert after["latency_p95_s"] >= after["latency_p50_s"] > 0
    # the node counts what each output published; subscribers with a deep enough history got all of it
    for key, name in (("mask", "dynamic_mask"), ("overlay", "dynamic_overlay"), ("odom", "odometry"),
                      ("window", "window"), ("tf", "tf"), ("static", "static_cloud"), ("dynamic", "dynamic_cloud")):
        assert delta(after, before, f"published.{name}") == len(rig.msgs(key)), name
    # per-frame outputs get a history sized to a window's burst (auto: max(10, 2 x window_size))
    pubs = rig.node._pubs
    assert pubs.mask.qos_profile.depth == pubs.odometry.qos_profile.depth == pubs.overlay.qos_profile.depth == 10


def test_partial_window_is_flushed_when_input_stops(rig: Rig):
    rig.reset()
    before = rig.values()
    stamps = _stamps(5)
    rig.publish(rig.seq.images[:5], stamps)
    after = rig.wait_done(before["frames_in"] + 5, masks=5)
    assert sorted(stamp_to_ns(m.header.stamp) for m in rig.msgs("mask")) == stamps
    assert [len(w.frame_stamps) for w in rig.msgs("window")] == [4, 3]  # [0..3] then flushed [2, 3, 4]
    assert delta(after, before, "segment.idle") == 1


def test_invalid_images_are_counted_and_skipped(rig: Rig):
    rig.reset()
    before = rig.values()
    stamps = _stamps(7)
    bad_encoding = rgb_to_image(rig.seq.images[0], _header(stamps[0]))
    bad_encoding.encoding = "yuv422"
    short = rgb_to_image(rig.seq.images[0], _header(stamps[1]))
    short.data = bytes(short.data)[: len(short.data) - W * 3]  # one row missing
    empty = Image(header=_header(stamps[2]), height=0, width=0, encoding="rgb8", step=0)
    for msg in (bad_encoding, short, empty):
        rig.publish_raw(msg)
    rig.publish(rig.seq.images[3:7], stamps[3:])
    rig.publish(rig.seq.images[6:7], stamps[6:])  # the same message again
    after = rig.wait_done(before["frames_in"] + 8, masks=4)
    for reason in ("bad_encoding", "size_mismatch", "empty_image", "duplicate_stamp"):
        assert delta(after, before, f"invalid.{reason}") == 1, reason
    assert delta(after, before, "frames_processed") == 4
    assert sorted(stamp_to_ns(m.header.stamp) for m in rig.msgs("mask")) == stamps[3:]
    assert rig.node.state_label == "active"


def test_resolution_change_stamps_back_and_gap_start_segments(rig: Rig):
    rig.reset()
    before = rig.values()
    small = render_scene(num_frames=4, width=128, height=96, seed=5).images
    t0 = _stamps(8)
    back = _stamps(4, start_ns=t0[0] - 2_000_000_000)
    gap = _stamps(4, start_ns=back[-1] + 10_000_000_000)
    rig.publish(rig.seq.images[:4], t0[:4])
    rig.publish(small, t0[4:])          # resolution
    rig.publish(small, back)            # stamp_backwards
    rig.publish(small, gap)             # gap
    after = rig.wait_done(before["frames_in"] + 16, masks=16)
    for reason in ("resolution", "stamp_backwards", "gap"):
        assert delta(after, before, f"segment.{reason}") == 1, reason
    masks = rig.msgs("mask")
    sizes = sorted(((m.width, m.height), stamp_to_ns(m.header.stamp)) for m in masks)
    assert [s for s, _ in sizes].count((128, 96)) == 12 and [s for s, _ in sizes].count((W, H)) == 4
    windows = rig.msgs("window")
    assert len(windows) == 4 and len({w.segment_index for w in windows}) == 4
    # a new segment continues at the last camera pose with the last scale (no identity re-anchoring)
    assert [w.anchor for w in sorted(windows, key=lambda w: w.window_index)] == ["identity"] + ["continuity"] * 3


def test_nan_network_output_fails_only_that_window(rig: Rig, monkeypatch: pytest.MonkeyPatch):
    rig.reset()
    real_run = rig.node.pipeline.run
    calls = []

    def nan_first(images):
        result = real_run(images)
        calls.append(images.shape[0])
        if len(calls) == 1:
            result.extrinsic = result.extrinsic.clone()  # results are inference-mode tensors
            result.extrinsic[1, 0, 3] = float("nan")
        return result

    monkeypatch.setattr(rig.node.pipeline, "run", nan_first)
    before = rig.values()
    stamps = _stamps(6)
    rig.publish(rig.seq.images[:6], stamps)
    after = rig.wait_done(before["frames_in"] + 6, masks=4)
    assert delta(after, before, "window_failed.nan_output") == 1
    assert delta(after, before, "dropped.nan_output") == 2  # frames 0 and 1; 2 and 3 come again in window 1
    assert delta(after, before, "frames_processed") == 4
    assert sorted(stamp_to_ns(m.header.stamp) for m in rig.msgs("mask")) == stamps[2:]
    assert "non-finite extrinsic" in after["last_error"]


def test_out_of_memory_window_is_retried_in_halves(rig: Rig, monkeypatch: pytest.MonkeyPatch):
    rig.reset()
    real_run = rig.node.pipeline.run
    sizes = []

    def small_device(images):
        sizes.append(int(images.shape[0]))
        if images.shape[0] > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated by the test)")
        return real_run(images)

    monkeypatch.setattr(rig.node.pipeline, "run", small_device)
    before = rig.values()
    stamps = _stamps(4)
    rig.publish(rig.seq.images[:4], stamps)
    after = rig.wait_done(before["frames_in"] + 4, masks=4)
    assert sizes == [4, 3, 3]
    assert delta(after, before, "oom_retries") == 1
    assert delta(after, before, "frames_processed") == 4 and delta(after, before, "frames_dropped") == 0
    assert sorted(stamp_to_ns(m.header.stamp) for m in rig.msgs("mask")) == stamps
    windows = rig.msgs("window")
    assert [(w.window_index, len(w.frame_stamps)) for w in windows] == [(0, 3), (0, 3)]


def test_full_queue_drops_are_counted(rig: Rig, monkeypatch: pytest.MonkeyPatch):
    rig.reset()
    real_run = rig.node.pipeline.run

    def slow(images):
        time.sleep(0.6)
        return real_run(images)

    monkeypatch.setattr(rig.node.pipeline, "run", slow)
    monkeypatch.setattr(rig.node._worker, "max_queue", 1)
    before = rig.values()
    stamps = _stamps(12)
    rig.publish(np.concatenate([rig.seq.images, rig.seq.images])[:12], stamps, pause=0.005)
    assert wait_for(lambda: rig.values()["frames_in"] >= before["frames_in"] + 12)
    assert wait_for(lambda: rig.values()["keyframes_pending"] == 0 and not rig.values()["worker_busy"])
    time.sleep(0.5)
    after = rig.values()
    check_accounting(after)
    processed = delta(after, before, "frames_processed")
    dropped = delta(after, before, "frames_dropped")
    assert processed + dropped == 12
    assert delta(after, before, "dropped.queue_full") == dropped >= 1
    masks = rig.msgs("mask")
    assert len(masks) == processed == len({stamp_to_ns(m.header.stamp) for m in masks})


def test_save_map_and_reset_services(rig: Rig, tmp_path: Path):
    rig.reset()
    before = rig.values()
    rig.publish(rig.seq.images[:6], _stamps(6))
    rig.wait_done(before["frames_in"] + 6, masks=6)
    out = tmp_path / "saved"
    assert rig.node.set_parameters([Parameter("save_directory", value=str(out))])[0].successful
    umask = os.umask(0o027)
    try:
        res = rig.call(rig.save_cli, Trigger.Request())
    finally:
        os.umask(umask)
    assert res.success, res.message
    # the files honour the umask (0o666 & ~0o027), like any file the user's tools write
    assert {stat.S_IMODE((out / f).stat().st_mode) for f in ("map.ply", "trajectory.txt")} == {0o640}
    points, colors = read_ply(out / "map.ply")
    stamps, poses = read_tum(out / "trajectory.txt")
    assert len(points) > 0 and colors.shape == (len(points), 3)
    assert len(stamps) == 6 and np.isfinite(poses).all()
    seen = len(rig.msgs("map"))
    assert rig.call(rig.reset_cli, Trigger.Request()).success
    assert wait_for(lambda: any(m.width == 0 for m in rig.msgs("map")[seen:]))  # the cleared map is published
    res = rig.call(rig.save_cli, Trigger.Request())
    assert res.success and "wrote 0 points" in res.message


def test_reset_answers_at_once_and_discards_the_window_in_flight(rig: Rig, monkeypatch: pytest.MonkeyPatch):
    """~/reset during a window: the answer does not wait for the network, the window's outputs never appear,
    and the next frames are processed into a fresh map."""
    rig.reset()
    real_run = rig.node.pipeline.run
    release = threading.Event()

    def slow_first(images):
        if not release.is_set():
            release.wait(20.0)
        return real_run(images)

    monkeypatch.setattr(rig.node.pipeline, "run", slow_first)
    before = rig.values()
    stale = _stamps(4)
    rig.publish(rig.seq.images[:4], stale)
    assert wait_for(lambda: rig.values()["worker_busy"])
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        res = rig.call(rig.reset_cli, Trigger.Request())
        times.append(time.monotonic() - t0)
        assert res.success, res.message
    # answers without waiting for the held window (which never ends until released; 18 s on CPU in the issue);
    # the bounds leave room for a loaded machine
    assert min(times) < 0.5 and max(times) < 3.0, times
    release.set()
    assert wait_for(lambda: not rig.values()["worker_busy"])
    time.sleep(0.5)
    assert rig.msgs("mask") == [] and rig.msgs("window") == [], "outputs of the discarded window were published"
    after_reset = rig.values()
    assert delta(after_reset, before, "dropped.reset") == 4 and after_reset["map_points"] == 0
    fresh = _stamps(4, start_ns=stale[-1] + 1_000_000_000)
    rig.publish(rig.seq.images[4:8], fresh)
    after = rig.wait_done(before["frames_in"] + 8, masks=4)
    assert sorted(stamp_to_ns(m.header.stamp) for m in rig.msgs("mask")) == fresh
    assert [w.window_index for w in rig.msgs("window")] == [0]
    assert delta(after, before, "frames_processed") == 4


def test_images_arriving_faster_than_decoded_are_not_lost(rig: Rig, monkeypatch: pytest.MonkeyPatch):
    """The image callback only queues the message: with a slow decode and a shallow DDS history (the old
    default depth 5) a reliable burst still reaches the node whole, and the input side is fully accounted."""
    import vggt4d_ros.ros.node as node_module

    node = rig.node
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert node.set_parameters([Parameter("input_qos_depth", value=5), Parameter("warmup", value=False)])[0].successful
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.configure_error
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        real = node_module.image_to_rgb

        def slow_decode(msg):
            time.sleep(0.03)
            return real(msg)

        monkeypatch.setattr(node_module, "image_to_rgb", slow_decode)
        rig.clear()
        before = rig.values()
        stamps = _stamps(30)
        images = np.concatenate([rig.seq.images] * 3)[:30]
        rig.publish(images, stamps, pause=0.001)
        assert wait_for(lambda: delta(rig.values(), before, "frames_received")
                        + delta(rig.values(), before, "input_gaps_sequence") >= 30)
        received = delta(rig.values(), before, "frames_received")
        after = rig.wait_done(before["frames_in"] + received, masks=received)
        # nothing is silent: every image published either reached the node or is counted as missing upstream
        assert received + delta(after, before, "input_gaps_sequence") == 30
        # and the callback keeps up (decoding in the callback, the old node took about 7 of 30)
        assert received >= 20, after
        assert delta(after, before, "input_overflow") == 0
        assert delta(after, before, "frames_processed") == received
    finally:
        monkeypatch.undo()
        rig.reconfigure(input_qos_depth=50)


def test_frames_lost_in_the_dds_reader_are_counted_by_sequence_number(rig: Rig, monkeypatch: pytest.MonkeyPatch):
    """Samples overwritten in the node's KEEP_LAST reader history (depth 1 here, while the input callback group is
    busy) never reach the node: the publication sequence numbers show exactly how many."""
    node = rig.node
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert node.set_parameters([Parameter("input_qos_depth", value=1), Parameter("warmup", value=False)])[0].successful
    busy = threading.Event()
    real_info = node._on_camera_info

    def blocking_info(msg):  # holds the (mutually exclusive) input callback group for a while
        busy.set()
        time.sleep(1.5)
        real_info(msg)

    monkeypatch.setattr(node, "_on_camera_info", blocking_info)  # bound when the subscription is created
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.configure_error
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        rig.clear()
        before = rig.values()
        stamps = _stamps(11)
        rig.publish(rig.seq.images[:1], stamps[:1])
        assert wait_for(lambda: delta(rig.values(), before, "frames_received") == 1)
        rig.wait_connected(rig.info_pub, sub_index=1)
        rig.info_pub.publish(CameraInfo(header=_header(stamps[0]), width=W, height=H))
        assert busy.wait(TIMEOUT)
        for img, st in zip(np.concatenate([rig.seq.images, rig.seq.images])[1:11], stamps[1:]):
            rig.image_pub.publish(rgb_to_image(np.ascontiguousarray(img), _header(st)))
            time.sleep(0.01)
        assert wait_for(lambda: delta(rig.values(), before, "frames_received") >= 2)
        time.sleep(0.5)
        after = rig.values()
        received = delta(after, before, "frames_received")
        assert received < 11  # the reader kept only the newest sample(s)
        assert delta(after, before, "input_gaps_sequence") == 11 - received
        assert delta(after, before, "input_gaps") == 11 - received
    finally:
        monkeypatch.undo()
        rig.reconfigure(input_qos_depth=50)


def test_frames_missing_upstream_are_counted_as_input_gaps(rig: Rig):
    rig.reset()
    before = rig.values()
    stamps = _stamps(14)
    sent = stamps[:6] + stamps[8:]  # frames 6 and 7 never sent (lost by the driver or the network)
    rig.publish(np.concatenate([rig.seq.images, rig.seq.images])[:12], sent)
    after = rig.wait_done(before["frames_in"] + 12, masks=12)
    assert delta(after, before, "input_gaps") == 2 and delta(after, before, "input_gaps_stamps") == 2
    assert delta(after, before, "input_gaps_sequence") == 0  # every sample that was published arrived
    assert delta(after, before, "input_gap_events") == 1
    assert abs(after["input_period_s"] - 0.1) < 1e-6


def test_invalid_camera_info_is_counted_by_reason(rig: Rig):
    rig.reset()
    before = rig.values()
    rig.wait_connected(rig.info_pub, sub_index=1)
    good = [500.0, 0.0, 80.0, 0.0, 500.0, 60.0, 0.0, 0.0, 1.0]
    for k, size in ((good[:2] + [float("nan")] + good[3:], (W, H)), ([0.0] + good[1:], (W, H)), (good, (0, 0))):
        info = CameraInfo(header=_header(_stamps(1)[0]), width=size[0], height=size[1])
        info.k = k
        rig.info_pub.publish(info)
    assert wait_for(lambda: rig.values()["camera_info_invalid"] - before["camera_info_invalid"] >= 3)
    after = rig.values()
    for reason in ("non_finite", "bad_focal", "zero_size"):
        assert delta(after, before, f"camera_info_invalid.{reason}") == 1, reason
    assert delta(after, before, "camera_info_received") == 0


def test_lifecycle_through_the_standard_services(rig: Rig):
    rig.reset()
    req = ChangeState.Request()
    req.transition.id = Transition.TRANSITION_DEACTIVATE
    assert rig.call(rig.change_cli, req).success
    assert rig.call(rig.state_cli, GetState.Request()).current_state.label == "inactive"
    before = rig.values()
    assert rig.node._input_subscriptions == [] and before["state"] == "inactive"
    req.transition.id = Transition.TRANSITION_ACTIVATE
    assert rig.call(rig.change_cli, req).success
    assert rig.call(rig.state_cli, GetState.Request()).current_state.label == "active"
    rig.publish(rig.seq.images[:4], _stamps(4))
    rig.wait_done(before["frames_in"] + 4, masks=4)


def test_reconfigure_for_compressed_input(rig: Rig):
    from PIL import Image as PILImage

    node = rig.node
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert node.model is None and node.pipeline is None
    assert node.set_parameters([Parameter("input_transport", value="compressed"),
                                Parameter("warmup", value=False)])[0].successful
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.configure_error
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    rig.clear()
    before = rig.values()
    rig.wait_connected(rig.compressed_pub)
    stamps = _stamps(4)
    for img, st in zip(rig.seq.images[:4], stamps):
        buf = io.BytesIO()
        PILImage.fromarray(img).save(buf, format="JPEG", quality=90)
        rig.compressed_pub.publish(CompressedImage(header=_header(st), format="jpeg", data=buf.getvalue()))
        time.sleep(0.02)
    rig.compressed_pub.publish(CompressedImage(header=_header(stamps[-1] + 1), format="jpeg", data=b"not a jpeg"))
    after = rig.wait_done(before["frames_in"] + 5, masks=4)
    assert delta(after, before, "invalid.decode_error") == 1
    masks = rig.msgs("mask")
    assert sorted(stamp_to_ns(m.header.stamp) for m in masks) == stamps
    assert all((m.width, m.height) == (W, H) for m in masks)
