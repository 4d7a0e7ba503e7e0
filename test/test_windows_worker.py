"""Background window worker: dropping (reported through ``on_drop``), errors, OOM retry, stale windows, waiting for
room (vggt4d_ros.windows.worker). Which frames a dropped window loses is the node's FrameLedger's job
(test_node_diagnostics.py): the worker keeps no frame ledger of its own."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from vggt4d_ros.windows import Frame, Window, WindowBuilder, WindowWorker, is_out_of_memory, split_window

TIMEOUT = 10.0


def make_windows(n_frames: int = 16, size: int = 4, overlap: int = 1) -> list[Window]:
    b = WindowBuilder(window_size=size, overlap=overlap)
    out = []
    for i in range(n_frames):
        w = b.add(Frame(stamp_ns=i * 1000, image=np.zeros((2, 2, 3), np.uint8), frame_id="cam", seq=i))
        if w is not None:
            out.append(w)
    return out


class Gate:
    """process_fn that blocks on the first window until released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.seen: list[int] = []

    def __call__(self, window: Window):
        self.seen.append(window.index)
        if not self.started.is_set():
            self.started.set()
            assert self.release.wait(TIMEOUT)
        return [f.seq for f in window.frames]


def seqs(w: Window) -> list[int]:
    return [f.seq for f in w.frames]


def test_drop_oldest_reports_each_dropped_window():
    ws = make_windows()  # [0..3] [3..6] [6..9] [9..12] [12..15]
    gate = Gate()
    results, drops = [], []
    worker = WindowWorker(gate, max_queue=1, drop_policy="drop_oldest",
                          on_result=lambda w, r: results.append((w.index, r)),
                          on_drop=lambda w, reason: drops.append((w.index, reason)))
    assert worker.submit(ws[0])
    assert gate.started.wait(TIMEOUT)
    assert worker.submit(ws[1])
    assert worker.stats()["queue_depth"] == 1 and not worker.has_room()
    assert worker.submit(ws[2])  # drops W1
    assert worker.submit(ws[3])  # drops W2
    mid = worker.stats()
    assert mid["dropped_windows"] == 2 and drops == [(1, "queue_full"), (2, "queue_full")]
    assert mid["busy"] and mid["queue_depth"] == 1
    gate.release.set()
    assert worker.wait_idle(TIMEOUT)
    st = worker.stats()
    assert [i for i, _ in results] == [0, 3]
    assert results[1][1] == [9, 10, 11, 12]
    assert st["submitted"] == 4 and st["processed"] == 2 and st["errors"] == 0
    assert st["dropped_windows_by_reason"] == {"queue_full": 2, "stopped": 0}
    assert "dropped_frames_by_reason" not in st  # one frame ledger: the node's
    assert st["last_latency_s"] >= st["last_process_s"] >= 0.0
    assert worker.stop(TIMEOUT)
    assert not worker.running


def test_drop_newest_rejects_the_new_window():
    ws = make_windows()
    gate = Gate()
    drops = []
    worker = WindowWorker(gate, max_queue=1, drop_policy="drop_newest", on_drop=lambda w, r: drops.append(w.index))
    worker.submit(ws[0])
    assert gate.started.wait(TIMEOUT)
    assert worker.submit(ws[1])
    assert not worker.submit(ws[2])
    assert not worker.submit(ws[3])
    gate.release.set()
    assert worker.wait_idle(TIMEOUT)
    st = worker.stats()
    assert gate.seen == [0, 1] and drops == [2, 3]
    assert st["dropped_windows"] == 2
    assert st["submitted"] == st["processed"] + st["dropped_windows"] + st["errors"]
    worker.stop(TIMEOUT)


def test_wait_policy_waits_for_room_instead_of_dropping():
    ws = make_windows()
    gate = Gate()
    worker = WindowWorker(gate, max_queue=1, drop_policy="wait")
    worker.submit(ws[0])
    assert gate.started.wait(TIMEOUT)
    assert worker.wait_for_room(0.0)
    assert worker.submit(ws[1])
    assert not worker.wait_for_room(0.05)  # W1 waits, W0 in flight
    threading.Timer(0.1, gate.release.set).start()
    assert worker.wait_for_room(TIMEOUT)  # the worker took W1
    assert worker.submit(ws[2])
    assert worker.wait_idle(TIMEOUT)
    st = worker.stats()
    assert st["dropped_windows"] == 0 and st["processed"] == 3 and gate.seen == [0, 1, 2]
    worker.stop(TIMEOUT)


def test_discard_makes_the_window_in_flight_stale_without_waiting():
    ws = make_windows()
    gate = Gate()
    results, errors, drops = [], [], []
    worker = WindowWorker(gate, max_queue=2, on_result=lambda w, r: results.append(w.index),
                          on_error=lambda w, e: errors.append(w.index), on_drop=lambda w, r: drops.append((w.index, r)))
    worker.submit(ws[0])
    assert gate.started.wait(TIMEOUT)
    worker.submit(ws[1])
    worker.discard()  # returns at once although W0 is still being processed
    assert worker.stats()["busy"] and drops == [(1, "stopped")]
    worker.submit(ws[2])
    gate.release.set()
    assert worker.wait_idle(TIMEOUT)
    assert results == [2] and errors == []  # W0's result was discarded, W2 (after the discard) delivered
    worker.stop(TIMEOUT)


def test_errors_are_reported_and_do_not_kill_the_thread():
    ws = make_windows()
    errors = []

    def fn(w: Window):
        if w.index == 1:
            raise ValueError("boom")
        return w.index

    results = []
    worker = WindowWorker(fn, on_result=lambda w, r: results.append(r),
                          on_error=lambda w, e: errors.append((w.index, type(e).__name__, str(e))))
    for w in ws[:3]:
        worker.submit(w)
        assert worker.wait_idle(TIMEOUT)
    st = worker.stats()
    assert errors == [(1, "ValueError", "boom")]
    assert results == [0, 2]
    assert st["errors"] == 1 and st["processed"] == 2
    assert st["dropped_windows"] == 0
    assert worker.running
    worker.stop(TIMEOUT)


def test_callback_errors_are_counted():
    ws = make_windows()

    def bad_callback(w, r):
        raise RuntimeError("callback")

    def bad_error_callback(w, e):
        raise RuntimeError("error callback")

    worker = WindowWorker(lambda w: 1 / 0 if w.index == 1 else w.index, on_result=bad_callback,
                          on_error=bad_error_callback)
    for w in ws[:3]:
        worker.submit(w)
        assert worker.wait_idle(TIMEOUT)
    st = worker.stats()
    assert st["callback_errors"] == 3 and st["errors"] == 1 and st["processed"] == 2
    assert worker.running
    worker.stop(TIMEOUT)


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError (matched by class name)."""


def test_oom_retry_with_overlapping_halves():
    w = make_windows(n_frames=8, size=8)[0]
    calls, results = [], []

    def fn(win: Window):
        calls.append(seqs(win))
        if len(win) > 5:
            raise OutOfMemoryError("CUDA out of memory")
        return len(win)

    worker = WindowWorker(fn, on_result=lambda win, r: results.append((seqs(win), win.overlap_with_previous, r)))
    worker.submit(w)
    assert worker.wait_idle(TIMEOUT)
    st = worker.stats()
    assert calls == [list(range(8)), [0, 1, 2, 3, 4], [3, 4, 5, 6, 7]]
    assert results == [([0, 1, 2, 3, 4], 0, 5), ([3, 4, 5, 6, 7], 2, 5)]
    assert st["oom_retries"] == 1 and st["processed"] == 1 and st["errors"] == 0
    worker.stop(TIMEOUT)


def test_oom_retry_failing_half_is_an_error():
    w = make_windows(n_frames=8, size=8)[0]
    errors, results = [], []

    def fn(win: Window):
        if len(win) > 4 and win.frames[0].seq > 0 or len(win) == 8:
            raise MemoryError("host OOM")
        return len(win)

    worker = WindowWorker(fn, on_result=lambda win, r: results.append(seqs(win)),
                          on_error=lambda win, e: errors.append((seqs(win), type(e).__name__)))
    worker.submit(w)
    assert worker.wait_idle(TIMEOUT)
    st = worker.stats()
    assert results == [[0, 1, 2, 3, 4]]
    assert errors == [([3, 4, 5, 6, 7], "MemoryError")]
    assert st["oom_retries"] == 1 and st["errors"] == 1 and st["processed"] == 0
    worker.stop(TIMEOUT)


def test_oom_without_retry_is_a_plain_error():
    w = make_windows(n_frames=8, size=8)[0]
    calls = []

    def fn(win):
        calls.append(len(win))
        raise MemoryError()

    worker = WindowWorker(fn, retry_smaller=False)
    worker.submit(w)
    assert worker.wait_idle(TIMEOUT)
    st = worker.stats()
    assert calls == [8] and st["oom_retries"] == 0 and st["errors"] == 1
    worker.stop(TIMEOUT)


def test_stop_discards_or_drains_queue():
    ws = make_windows()
    gate = Gate()
    drops = []
    worker = WindowWorker(gate, max_queue=3, on_drop=lambda w, r: drops.append((w.index, r)))
    worker.submit(ws[0])
    assert gate.started.wait(TIMEOUT)
    worker.submit(ws[1])
    worker.submit(ws[2])
    threading.Timer(0.05, gate.release.set).start()
    assert worker.stop(TIMEOUT)
    st = worker.stats()
    assert gate.seen == [0]
    assert st["processed"] == 1 and st["dropped_windows_by_reason"]["stopped"] == 2
    assert drops == [(1, "stopped"), (2, "stopped")]
    assert not worker.submit(ws[3])
    assert drops[-1] == (3, "stopped") and worker.stats()["dropped_windows_by_reason"]["stopped"] == 3

    gate2 = Gate()
    worker2 = WindowWorker(gate2, max_queue=3)
    worker2.submit(ws[0])
    assert gate2.started.wait(TIMEOUT)
    worker2.submit(ws[1])
    worker2.submit(ws[2])
    gate2.release.set()
    assert worker2.stop(TIMEOUT, drain=True)
    assert gate2.seen == [0, 1, 2] and worker2.stats()["processed"] == 3


def test_concurrent_submits_are_accounted():
    ws = make_windows(n_frames=40)

    def fn(w):
        return w.index

    worker = WindowWorker(fn, max_queue=2)
    threads = [threading.Thread(target=lambda part=ws[k::3]: [worker.submit(w) for w in part]) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert worker.wait_idle(TIMEOUT)
    st = worker.stats()
    assert st["submitted"] == len(ws)
    assert st["submitted"] == st["processed"] + st["dropped_windows"] + st["errors"]
    worker.stop(TIMEOUT)


def test_split_window_and_oom_detection():
    w = make_windows(n_frames=5, size=5)[0]
    a, b = split_window(w)
    assert seqs(a) == [0, 1, 2, 3] and seqs(b) == [2, 3, 4]
    small = make_windows(n_frames=3, size=3)[0]
    with pytest.raises(ValueError):
        split_window(small)
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(OutOfMemoryError())
    assert not is_out_of_memory(RuntimeError("out of memory"))


@pytest.mark.parametrize("kwargs", [dict(max_queue=0), dict(drop_policy="lifo"), dict(process_fn=None)])
def test_worker_validation(kwargs):
    args = dict(process_fn=lambda w: None, autostart=False)
    args.update(kwargs)
    with pytest.raises(ValueError):
        WindowWorker(**args)
