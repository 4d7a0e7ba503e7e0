"""Counters, per-keyframe accounting and the ``/diagnostics`` status of the VGGT4D node.

Accounting invariants (all counters are cumulative since configure or the last ``~/reset``)::

    frames_in  = frames_invalid + frames_skipped + keyframes
    keyframes  = frames_processed + frames_dropped + keyframes_pending

* ``frames_invalid``: images rejected before they reached the windows, by reason in ``invalid.<reason>``:
  ``bad_encoding``, ``size_mismatch`` (step/data length), ``empty_image``, ``decode_error`` (compressed),
  ``unsupported_size`` (cannot be brought to the model size), ``duplicate_stamp`` (the same stamp as the
  previous image), ``inactive`` (arrived during a deactivation), ``internal_error``.
* ``frames_skipped``: valid images that the keyframe selector did not take (``keyframe_stride`` /
  ``keyframe_min_period``); skipping them is the configured behaviour, not a loss.
* ``frames_processed``: keyframes whose outputs (mask, pose, TF, ...) were published.
* ``frames_dropped``: keyframes that will never be processed, by reason in ``dropped.<reason>``:
  ``queue_full`` (drop policy), ``nan_output`` / ``out_of_memory`` / ``error`` / ``publish_error`` (the window
  failed), ``segment_end`` (a segment ended with a single keyframe), ``reset``, ``deactivated``, ``shutdown``.
* ``keyframes_pending``: keyframes still waiting in the window builder, the queue or the worker.

Input side (before ``frames_in``; see :mod:`vggt4d_ros.ros.intake` and :mod:`vggt4d_ros.ros.input_gaps`)::

    frames_received = frames_in + input_overflow + input_queue_depth   (while active)

* ``input_overflow``: images dropped because the input queue (``input_queue_size``) was full.
* ``input_gaps``: images estimated lost *before* the node got them (DDS sequence numbers where the middleware
  sets them, else stamp gaps against the observed period; ``input_gaps_sequence`` / ``input_gaps_stamps``).
* ``camera_info_invalid`` (``camera_info_invalid.<reason>``: ``zero_size``, ``non_finite``, ``bad_focal``,
  ``malformed``): camera_info messages ignored.
* ``published.<output>``: messages each output publisher sent (``dynamic_mask``, ``odometry``, ``tf``,
  ``window``, ...): a recorder that has fewer lost some.

A tool that feeds N images and waits for ``frames_in == N`` and ``keyframes_pending == 0`` knows that every
image has been handled; with the idle flush (``flush_timeout``) the last partial window is processed once
the input stops.
"""

from __future__ import annotations

import os
import threading
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

__all__ = [
    "LatencyTracker",
    "FrameLedger",
    "NodeStats",
    "device_memory_bytes",
    "build_status",
]


class LatencyTracker:
    """Keep the most recent latency samples (seconds) and report last / median / 95th percentile."""

    def __init__(self, maxlen: int = 500) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen}")
        self._samples: deque[float] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(float(seconds))

    def add_many(self, seconds: Iterable[float]) -> None:
        with self._lock:
            self._samples.extend(float(s) for s in seconds)

    def clear(self) -> None:
        with self._lock:
            self._samples.clear()

    def summary(self) -> dict[str, float | None]:
        """``{'last', 'p50', 'p95', 'count'}``; the statistics are ``None`` before the first sample."""
        with self._lock:
            if not self._samples:
                return {"last": None, "p50": None, "p95": None, "count": 0}
            arr = np.fromiter(self._samples, dtype=np.float64, count=len(self._samples))
            last = self._samples[-1]
        p50, p95 = np.percentile(arr, [50.0, 95.0])
        return {"last": float(last), "p50": float(p50), "p95": float(p95), "count": int(arr.size)}


@dataclass
class _LiveWindow:
    seqs: tuple[int, ...]
    started: bool = False


class FrameLedger:
    """Thread-safe bookkeeping of every keyframe from selection to publication or loss.

    Keyframes are identified by the node's running sequence number (unique even when a bag loops and stamps
    repeat). A keyframe is *referenced* while it sits in the window builder or in a submitted window that has
    not finished; when the last reference goes without the frame having been processed it is counted as
    dropped, with the reason of the failure that lost it.

    The caller reports:

    * :meth:`add_keyframe` for each selected keyframe, :meth:`set_builder` with the keys the builder now holds;
    * :meth:`window_submitted` for each window handed to the worker (``accepted=False`` when rejected);
    * :meth:`window_started` when the worker begins a window (earlier unstarted windows were dropped from the
      queue);
    * :meth:`frames_processed` when outputs of some frames were published (returns the ones that are new);
    * :meth:`window_finished` when a window is done (``reason=None`` for success);
    * :meth:`abandon_all` at stop/reset for everything still pending.
    """

    def __init__(self, history: int = 4096) -> None:
        self._lock = threading.Lock()
        self._pending: set[int] = set()
        self._builder: set[int] = set()
        self._live: OrderedDict[int, _LiveWindow] = OrderedDict()
        self._last_reason: dict[int, str] = {}
        self._done: OrderedDict[int, None] = OrderedDict()
        self._history = history
        self.keyframes = 0
        self.processed = 0
        self.dropped: Counter[str] = Counter()

    # ---------------------------------------------------------------- reporting
    def add_keyframe(self, seq: int) -> None:
        with self._lock:
            self.keyframes += 1
            self._pending.add(seq)
            self._builder.add(seq)

    def set_builder(self, seqs: Iterable[int], reason: str = "segment_end") -> None:
        """The window builder now holds exactly ``seqs``; frames that left it unprocessed and unreferenced
        are dropped with ``reason`` (or the reason of an earlier failure of a window holding them)."""
        with self._lock:
            new = set(seqs)
            left = self._builder - new
            self._builder = new
            self._settle(left, reason)

    def window_submitted(self, index: int, seqs: Iterable[int], accepted: bool = True,
                         reason: str = "queue_full") -> None:
        with self._lock:
            seqs = tuple(seqs)
            if accepted:
                self._live[index] = _LiveWindow(seqs)
            else:
                self._remember(seqs, reason)
                self._settle(seqs, reason)

    def window_started(self, index: int, reason: str = "queue_full") -> None:
        """The worker started window ``index``; unstarted windows with a lower index were dropped."""
        with self._lock:
            skipped = [i for i, w in self._live.items() if i < index and not w.started]
            for i in skipped:
                w = self._live.pop(i)
                self._remember(w.seqs, reason)
                self._settle(w.seqs, reason)
            if index in self._live:
                self._live[index].started = True

    def frames_processed(self, seqs: Iterable[int]) -> list[int]:
        """Mark frames as processed; return those not processed before (the ones to publish)."""
        with self._lock:
            new = []
            for s in seqs:
                if s in self._pending:
                    self._pending.discard(s)
                    self._last_reason.pop(s, None)
                    self._mark_done(s)
                    self.processed += 1
                    new.append(s)
            return new

    def is_done(self, seq: int) -> bool:
        with self._lock:
            return seq in self._done

    def window_finished(self, index: int, reason: str | None = None, last_seq: int | None = None) -> bool:
        """Window ``index`` is done; ``reason`` is ``None`` on success, else why its frames were lost.

        With ``last_seq`` (success of one part of a window split after running out of memory) the window only
        finishes when ``last_seq`` is its last frame. Returns whether the window finished now.
        """
        with self._lock:
            w = self._live.get(index)
            if w is None:
                return False
            if last_seq is not None and w.seqs and w.seqs[-1] != last_seq:
                return False
            del self._live[index]
            if reason is not None:
                self._remember(w.seqs, reason)
            self._settle(w.seqs, reason or "error")
            return True

    def abandon_all(self, reason: str) -> int:
        """Drop every pending keyframe (stop, reset); return how many were dropped now."""
        with self._lock:
            self._live.clear()
            self._builder.clear()
            lost = len(self._pending)
            for s in self._pending:
                self.dropped[self._last_reason.pop(s, reason)] += 1
                self._mark_done(s)
            self._pending.clear()
            self._last_reason.clear()
            return lost

    # ---------------------------------------------------------------- queries
    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "keyframes": self.keyframes,
                "processed": self.processed,
                "dropped": sum(self.dropped.values()),
                "dropped_by_reason": dict(self.dropped),
                "pending": len(self._pending),
                "live_windows": len(self._live),
            }

    # ---------------------------------------------------------------- internals (lock held)
    def _remember(self, seqs: Iterable[int], reason: str) -> None:
        for s in seqs:
            if s in self._pending:
                self._last_reason[s] = reason

    def _mark_done(self, seq: int) -> None:
        self._done[seq] = None
        while len(self._done) > self._history:
            self._done.popitem(last=False)

    def _settle(self, seqs: Iterable[int], reason: str) -> None:
        referenced: set[int] | None = None
        for s in seqs:
            if s not in self._pending or s in self._builder:
                continue
            if referenced is None:
                referenced = set()
                for w in self._live.values():
                    referenced.update(w.seqs)
            if s in referenced:
                continue
            self._pending.discard(s)
            self.dropped[self._last_reason.pop(s, reason)] += 1
            self._mark_done(s)


class NodeStats:
    """All counters shown on ``/diagnostics`` (thread-safe)."""

    def __init__(self, latency_samples: int = 500) -> None:
        self._lock = threading.Lock()
        self.ledger = FrameLedger()
        self.latency = LatencyTracker(latency_samples)
        self._counters: Counter[str] = Counter()
        self._invalid: Counter[str] = Counter()
        self._segments: Counter[str] = Counter()
        self._window_failures: Counter[str] = Counter()
        self._camera_info_invalid: Counter[str] = Counter()
        self._values: dict[str, Any] = {}
        self._last_error: str = ""

    def reset(self) -> None:
        """Start counting from zero (configure, ``~/reset``)."""
        with self._lock:
            self.ledger = FrameLedger()
            self.latency.clear()
            self._counters.clear()
            self._invalid.clear()
            self._segments.clear()
            self._window_failures.clear()
            self._camera_info_invalid.clear()
            self._values.clear()
            self._last_error = ""

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def count_invalid(self, reason: str) -> int:
        """Count an invalid input; return how many of this reason so far."""
        with self._lock:
            self._counters["frames_in"] += 1
            self._invalid[reason] += 1
            return self._invalid[reason]

    def count_camera_info_invalid(self, reason: str) -> int:
        """Count an ignored camera_info; return how many of this reason so far."""
        with self._lock:
            self._camera_info_invalid[reason] += 1
            return self._camera_info_invalid[reason]

    def count_segment(self, reason: str) -> None:
        with self._lock:
            self._segments[reason] += 1

    def count_window_failure(self, reason: str, message: str) -> None:
        with self._lock:
            self._window_failures[reason] += 1
            self._last_error = message

    def set_value(self, name: str, value: Any) -> None:
        with self._lock:
            self._values[name] = value

    def get(self, name: str) -> int:
        with self._lock:
            return self._counters[name]

    def invalid_count(self, reason: str | None = None) -> int:
        with self._lock:
            return sum(self._invalid.values()) if reason is None else self._invalid[reason]

    def segment_count(self, reason: str | None = None) -> int:
        with self._lock:
            return sum(self._segments.values()) if reason is None else self._segments[reason]

    def window_failure_count(self, reason: str | None = None) -> int:
        with self._lock:
            return sum(self._window_failures.values()) if reason is None else self._window_failures[reason]

    def snapshot(self) -> dict[str, Any]:
        """Flat ``name -> value`` view (the keys of the diagnostic status)."""
        ledger = self.ledger.snapshot()
        lat = self.latency.summary()
        with self._lock:
            out: dict[str, Any] = {
                "frames_in": self._counters["frames_in"],
                "frames_invalid": sum(self._invalid.values()),
                "frames_skipped": self._counters["frames_skipped"],
                "keyframes": ledger["keyframes"],
                "frames_processed": ledger["processed"],
                "frames_dropped": ledger["dropped"],
                "keyframes_pending": ledger["pending"],
                "windows_submitted": self._counters["windows_submitted"],
                "windows_processed": self._counters["windows_processed"],
                "windows_failed": sum(self._window_failures.values()),
                "oom_retries": self._counters["oom_retries"],
                "segments": sum(self._segments.values()),
                "camera_info_received": self._counters["camera_info_received"],
                "camera_info_invalid": sum(self._camera_info_invalid.values()),
                "latency_last_s": lat["last"],
                "latency_p50_s": lat["p50"],
                "latency_p95_s": lat["p95"],
                "last_error": self._last_error,
            }
            out.update({f"invalid.{k}": v for k, v in sorted(self._invalid.items())})
            out.update({f"dropped.{k}": v for k, v in sorted(ledger["dropped_by_reason"].items())})
            out.update({f"segment.{k}": v for k, v in sorted(self._segments.items())})
            out.update({f"window_failed.{k}": v for k, v in sorted(self._window_failures.items())})
            out.update({f"camera_info_invalid.{k}": v for k, v in sorted(self._camera_info_invalid.items())})
            out.update(self._values)
            return out


def device_memory_bytes(device: str | None) -> tuple[str, int]:
    """Memory in use: ``('cuda_allocated', torch.cuda.memory_allocated)`` on a CUDA device, else
    ``('rss', resident set size of this process)``."""
    if device is not None and device.startswith("cuda"):
        try:
            import torch

            return "cuda_allocated", int(torch.cuda.memory_allocated(device))
        except Exception:  # noqa: BLE001 - diagnostics must never fail the node
            pass
    try:
        with open("/proc/self/statm", "rb") as fh:
            resident_pages = int(fh.read().split()[1])
        return "rss", resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return "rss", int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def build_status(name: str, hardware_id: str, values: dict[str, Any], level: int, message: str) -> DiagnosticStatus:
    """A :class:`DiagnosticStatus` with one ``KeyValue`` per entry of ``values`` (sorted keys, '' for None)."""
    status = DiagnosticStatus()
    status.level = bytes([int(level)])
    status.name = name
    status.hardware_id = hardware_id
    status.message = message
    status.values = [KeyValue(key=str(k), value=_fmt(v)) for k, v in sorted(values.items())]
    return status

