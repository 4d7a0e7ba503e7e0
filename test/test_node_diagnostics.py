"""Accounting and diagnostics of the node (no DDS): FrameLedger, LatencyTracker, NodeStats, build_status."""

from __future__ import annotations

import numpy as np
import pytest

from diagnostic_msgs.msg import DiagnosticStatus
from vggt4d_ros.ros.diagnostics import (
    FrameLedger,
    LatencyTracker,
    NodeStats,
    build_status,
    device_memory_bytes,
)


def _check(ledger: FrameLedger) -> dict:
    snap = ledger.snapshot()
    assert snap["keyframes"] == snap["processed"] + snap["dropped"] + snap["pending"]
    return snap


def _add(ledger: FrameLedger, seqs, builder, window=None, accepted=True) -> None:
    """What the node does per image: keyframes in, the completed window submitted, then the builder's
    new contents reported."""
    for s in seqs:
        ledger.add_keyframe(s)
    if window is not None:
        index, frames = window
        ledger.window_submitted(index, frames, accepted=accepted, reason="queue_full")
    ledger.set_builder(builder)


def test_processed_windows_publish_each_frame_once():
    led = FrameLedger()
    _add(led, [1, 2, 3, 4], builder=[3, 4], window=(0, [1, 2, 3, 4]))
    led.window_started(0)
    assert led.frames_processed([1, 2, 3, 4]) == [1, 2, 3, 4]
    assert led.window_finished(0, None, last_seq=4)
    _add(led, [5, 6], builder=[5, 6], window=(1, [3, 4, 5, 6]))
    led.window_started(1)
    # overlap frames 3 and 4 were published with window 0: only 5 and 6 are new
    assert led.frames_processed([3, 4, 5, 6]) == [5, 6]
    led.window_finished(1, None, last_seq=6)
    snap = _check(led)
    assert snap == {"keyframes": 6, "processed": 6, "dropped": 0, "dropped_by_reason": {}, "pending": 0,
                    "live_windows": 0}
    assert led.is_done(3) and not led.is_done(7)


def test_dropped_window_loses_only_frames_no_later_window_holds():
    led = FrameLedger()
    _add(led, [1, 2, 3, 4], builder=[3, 4], window=(0, [1, 2, 3, 4]))
    _add(led, [5, 6], builder=[5, 6], window=(1, [3, 4, 5, 6]))
    # the worker skipped window 0 (drop_oldest) and starts window 1
    led.window_started(1)
    snap = _check(led)
    assert snap["dropped_by_reason"] == {"queue_full": 2}  # frames 1, 2; 3 and 4 live on in window 1
    assert led.frames_processed([3, 4, 5, 6]) == [3, 4, 5, 6]
    led.window_finished(1, None, last_seq=6)
    snap = _check(led)
    assert (snap["processed"], snap["dropped"], snap["pending"]) == (4, 2, 0)


def test_failed_window_reason_follows_frames_carried_in_the_builder():
    led = FrameLedger()
    _add(led, [1, 2, 3, 4], builder=[3, 4], window=(0, [1, 2, 3, 4]))
    led.window_started(0)
    led.window_finished(0, "nan_output")
    snap = _check(led)
    assert snap["dropped_by_reason"] == {"nan_output": 2}
    assert snap["pending"] == 2  # 3 and 4 wait in the builder for the next window
    # the segment ends before another window: the carried frames are lost, with the original reason
    led.set_builder([], "segment_end")
    snap = _check(led)
    assert snap["dropped_by_reason"] == {"nan_output": 4}
    assert snap["pending"] == 0


def test_split_window_finishes_with_its_last_part_and_rejected_windows_count():
    led = FrameLedger()
    _add(led, [1, 2, 3, 4], builder=[3, 4], window=(0, [1, 2, 3, 4]))
    led.window_started(0)
    assert led.frames_processed([1, 2, 3]) == [1, 2, 3]
    assert not led.window_finished(0, None, last_seq=3)  # first half
    assert led.frames_processed([2, 3, 4]) == [4]
    assert led.window_finished(0, None, last_seq=4)  # second half ends the window
    # drop_newest rejects window 1: frames 5 and 6 still sit in the builder for the next window
    _add(led, [5, 6], builder=[5, 6], window=(1, [3, 4, 5, 6]), accepted=False)
    snap = _check(led)
    assert (snap["processed"], snap["dropped"], snap["pending"]) == (4, 0, 2)
    led.set_builder([], "segment_end")  # ... which never comes: lost because of the full queue
    snap = _check(led)
    assert snap["dropped_by_reason"] == {"queue_full": 2}
    assert snap["pending"] == 0


def test_abandon_all_drops_everything_pending():
    led = FrameLedger()
    _add(led, [1, 2, 3], builder=[2, 3], window=(0, [1, 2, 3]))
    assert led.abandon_all("deactivated") == 3
    snap = _check(led)
    assert snap["dropped_by_reason"] == {"deactivated": 3}
    assert snap["live_windows"] == 0
    assert led.abandon_all("deactivated") == 0


def test_latency_tracker_percentiles():
    lat = LatencyTracker(maxlen=100)
    assert lat.summary() == {"last": None, "p50": None, "p95": None, "count": 0}
    lat.add_many(np.arange(1, 101) / 100.0)
    s = lat.summary()
    assert s["count"] == 100 and s["last"] == pytest.approx(1.0)
    assert s["p50"] == pytest.approx(np.percentile(np.arange(1, 101) / 100.0, 50))
    assert s["p95"] == pytest.approx(np.percentile(np.arange(1, 101) / 100.0, 95))
    lat.add(5.0)  # bounded: the oldest sample falls out
    assert lat.summary()["count"] == 100
    with pytest.raises(ValueError):
        LatencyTracker(0)


def test_node_stats_snapshot_and_status():
    stats = NodeStats()
    stats.incr("frames_in", 3)
    stats.count_invalid("bad_encoding")
    stats.count_invalid("bad_encoding")
    stats.count_segment("resolution")
    stats.count_window_failure("nan_output", "window 2: NaN")
    stats.ledger.add_keyframe(1)
    values = stats.snapshot()
    assert values["frames_in"] == 5
    assert values["frames_invalid"] == 2 and values["invalid.bad_encoding"] == 2
    assert values["segment.resolution"] == 1 and values["segments"] == 1
    assert values["window_failed.nan_output"] == 1 and values["last_error"] == "window 2: NaN"
    assert values["keyframes"] == 1 and values["keyframes_pending"] == 1
    status = build_status("vggt4d: pipeline", "cpu", values, 1, "warn")
    assert status.level == DiagnosticStatus.WARN
    kv = {v.key: v.value for v in status.values}
    assert kv["invalid.bad_encoding"] == "2" and kv["latency_p50_s"] == ""
    assert [v.key for v in status.values] == sorted(kv)
    stats.reset()
    assert stats.snapshot()["frames_in"] == 0 and stats.ledger.pending == 0


def test_device_memory_reports_rss_on_cpu():
    kind, used = device_memory_bytes("cpu")
    assert kind == "rss"
    assert used > 10 * 2**20  # this Python process with numpy/rclpy loaded


def test_output_depths_cover_a_windows_burst():
    from vggt4d_ros.ros.publishers import output_depths

    auto = output_depths(0, 16)  # the default window: up to 16 new frames per burst, two bursts
    assert auto["~/dynamic_mask"] == auto["~/dynamic_overlay"] == auto["~/odometry"] == 32
    assert auto["~/window"] == 10 and auto["/tf"] == 100 and auto["~/map_cloud"] == 1
    assert output_depths(0, 4)["~/odometry"] == 10
    explicit = output_depths(50, 16)
    assert explicit["~/odometry"] == 50 and explicit["~/window"] == 50 and explicit["/tf"] == 100
    assert explicit["~/map_cloud"] == 1


def test_input_gap_estimator_by_sequence_and_stamps():
    from vggt4d_ros.ros.input_gaps import InputGapEstimator

    est = InputGapEstimator(max_gap_s=1.0)
    t = 1_000_000_000
    for i in range(6):
        assert est.update(t + i * 100_000_000, seq=i + 1, publisher=b"a") == 0
    assert est.period_ns() == 100_000_000
    assert est.update(t + 9 * 100_000_000, seq=10, publisher=b"a") == 3  # 3 frames missing, both sources agree
    assert (est.by_sequence, est.by_stamps, est.total, est.events) == (3, 3, 3, 1)
    # a sample lost in DDS with regular stamps (e.g. overwritten in the reader history): only sequence numbers see it
    assert est.update(t + 10 * 100_000_000, seq=12, publisher=b"a") == 1
    # another publisher, a restarted one (sequence going back), a pause longer than max_gap: no loss counted
    assert est.update(t + 11 * 100_000_000, seq=1, publisher=b"b") == 0
    assert est.update(t + 12 * 100_000_000, seq=1, publisher=b"a") == 0
    assert est.update(t + 50 * 100_000_000) == 0
    assert est.total == 4
