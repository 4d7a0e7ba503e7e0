"""Keyframe selection, window building and segments (vggt4d_ros.windows.keyframes / window)."""

from __future__ import annotations

import numpy as np
import pytest

from vggt4d_ros.windows import (
    Frame,
    KeyframeSelector,
    SegmentTracker,
    WindowAssembler,
    WindowBuilder,
)

MS = 1_000_000


def frame(i: int, stamp_ns: int | None = None, hw: tuple[int, int] = (4, 6)) -> Frame:
    return Frame(stamp_ns=i * 100 * MS if stamp_ns is None else stamp_ns,
                 image=np.zeros(hw + (3,), dtype=np.uint8), frame_id="cam", seq=i)


def test_keyframe_stride():
    sel = KeyframeSelector(stride=3)
    picked = [i for i in range(10) if sel.offer(i * 10 * MS)]
    assert picked == [0, 3, 6, 9]
    assert sel.num_offered == 10 and sel.num_selected == 4


def test_keyframe_min_period():
    sel = KeyframeSelector(stride=1, min_period_s=0.25)
    stamps = [0, 100, 200, 250, 300, 400, 520, 600, 760, 770]
    picked = [s for s in stamps if sel.offer(s * MS)]
    assert picked == [0, 250, 520, 770]


def test_keyframe_stride_and_period_combined():
    # stride 2 proposes frames 0, 2, 4, ...; the period (0.3 s) rejects 2 (0.2 s), so frame 3 (0.3 s) is
    # taken as soon as it meets the period, then stride restarts from it
    sel = KeyframeSelector(stride=2, min_period_s=0.3)
    picked = [i for i in range(10) if sel.offer(i * 100 * MS)]
    assert picked == [0, 3, 6, 9]


def test_keyframe_backwards_stamp_restarts():
    sel = KeyframeSelector(stride=5)
    assert sel.offer(1000 * MS)
    assert not sel.offer(1100 * MS)
    assert sel.offer(10 * MS)  # clock jumped back: new run
    assert sel.last_keyframe_ns == 10 * MS


@pytest.mark.parametrize("kwargs", [dict(stride=0), dict(stride=1.5), dict(stride=True), dict(min_period_s=-1.0),
                                    dict(min_period_s=float("nan")), dict(min_period_s="x")])
def test_keyframe_validation(kwargs):
    with pytest.raises(ValueError):
        KeyframeSelector(**kwargs)


def test_window_emission_with_overlap():
    b = WindowBuilder(window_size=4, overlap=1)
    out = []
    for i in range(10):
        w = b.add(frame(i))
        if w is not None:
            out.append((w.index, [f.seq for f in w.frames], w.overlap_with_previous))
    assert out == [(0, [0, 1, 2, 3], 0), (1, [3, 4, 5, 6], 1), (2, [6, 7, 8, 9], 1)]
    assert b.flush() is None  # nothing new since the last window


def test_window_emission_default_sizes_and_flush():
    b = WindowBuilder(window_size=16, overlap=6)
    emitted = [(i, w) for i in range(40) if (w := b.add(frame(i))) is not None]
    assert [i for i, _ in emitted] == [15, 25, 35]  # every 10 new keyframes once full
    assert [w.frames[0].seq for _, w in emitted] == [0, 10, 20]
    assert all(len(w) == 16 for _, w in emitted)
    assert [w.overlap_with_previous for _, w in emitted] == [0, 6, 6]
    tail = b.flush()  # frames 30..39: 6 carried + 4 new
    assert [f.seq for f in tail.frames] == list(range(30, 40))
    assert tail.index == 3 and tail.overlap_with_previous == 6
    np.testing.assert_array_equal(tail.stamps_ns, np.arange(30, 40) * 100 * MS)
    assert tail.images().shape == (10, 4, 6, 3)


def test_window_zero_overlap_and_partial_flush_rules():
    b = WindowBuilder(window_size=3, overlap=0)
    res = [b.add(frame(i)) for i in range(7)]
    assert [[f.seq for f in w.frames] for w in res if w is not None] == [[0, 1, 2], [3, 4, 5]]
    assert b.flush() is None  # a single new frame is not a window
    b.add(frame(7))
    b.add(frame(8))
    w = b.flush()
    assert [f.seq for f in w.frames] == [7, 8] and w.overlap_with_previous == 0
    b.add(frame(9))
    b.reset()
    assert b.pending == 0 and b.flush() is None


@pytest.mark.parametrize("size,overlap", [(1, 0), (4, 4), (4, -1), (4, 5), (2.0, 0)])
def test_window_builder_validation(size, overlap):
    with pytest.raises(ValueError):
        WindowBuilder(window_size=size, overlap=overlap)


def test_segment_reasons():
    t = SegmentTracker(max_gap_s=0.5)
    assert t.update(0, (4, 6)) is None
    assert t.update(100 * MS, (4, 6)) is None
    assert t.update(200 * MS, (8, 6)) == "resolution"
    assert t.update(200 * MS, (8, 6)) == "stamp_backwards"  # equal stamp counts as backwards
    assert t.update(150 * MS, (8, 6)) == "stamp_backwards"
    assert t.update(700 * MS, (8, 6)) == "gap"  # 0.55 s after the last frame
    assert t.update(1100 * MS, (8, 6)) is None  # 0.4 s
    assert t.segment == 4
    with pytest.raises(ValueError):
        SegmentTracker(max_gap_s=0)


def test_assembler_flushes_and_restarts_on_new_segment():
    asm = WindowAssembler(WindowBuilder(window_size=3, overlap=1), KeyframeSelector(stride=1),
                          SegmentTracker(max_gap_s=1.0))
    windows, reasons = [], []
    for i in range(6):
        step = asm.push(frame(i))
        windows += step.windows
        reasons.append(step.segment_reason)
    # windows [0,1,2], [2,3,4]; frame 5 pending
    assert [[f.seq for f in w.frames] for w in windows] == [[0, 1, 2], [2, 3, 4]]
    step = asm.push(frame(6, stamp_ns=5 * 100 * MS + 2_000 * MS))  # 2 s gap
    assert step.segment_reason == "gap" and step.segment == 1 and step.is_keyframe
    # the old segment's tail [4, 5] is flushed first
    assert [[f.seq for f in w.frames] for w in step.windows] == [[4, 5]]
    assert step.windows[0].segment == 0
    for i in range(7, 9):
        step = asm.push(frame(i, stamp_ns=5 * 100 * MS + 2_000 * MS + (i - 6) * 100 * MS))
    assert [[f.seq for f in w.frames] for w in step.windows] == [[6, 7, 8]]
    assert step.windows[0].segment == 1 and step.windows[0].overlap_with_previous == 0
    assert step.windows[0].index == 3
    assert asm.finish() is None
    assert reasons == [None] * 6


def test_frame_validation():
    with pytest.raises(ValueError, match="image"):
        Frame(stamp_ns=0, image=np.zeros(5))
    with pytest.raises(ValueError, match="K"):
        Frame(stamp_ns=0, image=np.zeros((2, 2, 3), np.uint8), K=np.eye(2))
    f = Frame(stamp_ns=5, image=np.zeros((2, 3, 3), np.uint8), frame_id="c", K=np.eye(3))
    assert f.resolution == (2, 3) and f.key == ("c", 5)
