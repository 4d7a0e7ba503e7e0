"""Background processing of windows on a daemon thread with a bounded, non-blocking queue.

The worker counts *windows* (submitted, processed, dropped by reason, failed); which *frames* a dropped or
failed window loses is decided by the caller's one frame ledger (the node's
:class:`vggt4d_ros.ros.diagnostics.FrameLedger`), to which the worker reports every window it will not deliver
through ``on_drop`` and ``on_error``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Any, Callable

from .window import Window

logger = logging.getLogger(__name__)

__all__ = ["WindowWorker", "current_worker", "split_window", "is_out_of_memory", "DROP_POLICIES", "DROP_REASONS"]

_local = threading.local()


def current_worker() -> "WindowWorker | None":
    """The :class:`WindowWorker` whose thread is running this code (``None`` on any other thread)."""
    return getattr(_local, "worker", None)

#: ``wait``: the submitter waits for room (:meth:`WindowWorker.wait_for_room`) before it forms the next window,
#: so :meth:`WindowWorker.submit` never finds the queue full; ``submit`` itself still never blocks (a full queue
#: under ``wait`` rejects the new window like ``drop_newest``).
DROP_POLICIES = ("drop_oldest", "drop_newest", "wait")
#: Why a window was not delivered: ``queue_full`` (drop policy), ``stopped`` (discarded by :meth:`stop` or
#: :meth:`discard`, or submitted after ``stop``).
DROP_REASONS = ("queue_full", "stopped")


def is_out_of_memory(exc: BaseException) -> bool:
    """``True`` for :class:`MemoryError` and any exception whose class (or a base class) name contains
    ``'OutOfMemory'`` (e.g. ``torch.cuda.OutOfMemoryError``), without importing torch."""
    if isinstance(exc, MemoryError):
        return True
    return any("OutOfMemory" in cls.__name__ for cls in type(exc).__mro__)


def split_window(window: Window, overlap: int = 2) -> tuple[Window, Window]:
    """Split a window into two halves sharing ``overlap`` frames.

    With ``n`` frames the first half holds frames ``[0, m)`` and the second ``[m - overlap, n)`` where
    ``m = ceil((n + overlap) / 2)``. Both halves keep the window's ``index`` and ``segment``; the first keeps
    ``overlap_with_previous``, the second's is ``overlap`` (it overlaps the first half).

    Raises:
        ValueError: when the window has fewer than ``overlap + 2`` frames (a half would not gain a frame).
    """
    n = len(window.frames)
    if overlap < 1:
        raise ValueError(f"overlap must be >= 1 so the halves can be stitched, got {overlap}")
    if n < overlap + 2:
        raise ValueError(f"cannot split a {n}-frame window into halves overlapping by {overlap} frames")
    m = math.ceil((n + overlap) / 2)
    first = Window(index=window.index, frames=list(window.frames[:m]),
                   overlap_with_previous=min(window.overlap_with_previous, m), segment=window.segment)
    second = Window(index=window.index, frames=list(window.frames[m - overlap:]),
                    overlap_with_previous=overlap, segment=window.segment)
    return first, second


class WindowWorker:
    """Run ``process_fn(window)`` for submitted windows on one daemon thread.

    :meth:`submit` never blocks. When ``max_queue`` windows are already waiting, ``drop_policy`` decides:
    ``'drop_oldest'`` discards the oldest waiting window and queues the new one, ``'drop_newest'`` (and
    ``'wait'``, whose submitter calls :meth:`wait_for_room` first) rejects the new one. Every window that will
    not be delivered is counted in ``dropped_windows`` (by reason in ``dropped_windows_by_reason``) and passed
    to ``on_drop(window, reason)``; the caller decides which of its frames are lost.

    Exceptions from ``process_fn`` never end the thread: they are counted in ``errors`` and passed to
    ``on_error(window, exc)``. With ``retry_smaller`` an out-of-memory error (see :func:`is_out_of_memory`)
    is retried once by processing the two halves of :func:`split_window` in order; ``on_result`` is then
    called once per half, and ``oom_retries`` counts these retries. An error in a half is reported with that
    half. Exceptions raised by the callbacks are logged and counted in ``callback_errors``.

    :meth:`discard` makes the window being processed *stale*: its result (or error) is not delivered, and the
    queued windows are dropped; it returns at once (the computation in flight cannot be interrupted).

    Args:
        process_fn: ``process_fn(window) -> result``.
        max_queue: windows allowed to wait, ``>= 1`` (the one being processed is not counted).
        drop_policy: one of :data:`DROP_POLICIES`.
        on_result: ``on_result(window, result)``, called on the worker thread.
        on_error: ``on_error(window, exc)``, called on the worker thread.
        on_drop: ``on_drop(window, reason)``, called on the thread that dropped the window (never with the
            worker's lock held).
        retry_smaller: retry out-of-memory failures once with two half windows.
        name: thread name.
        autostart: start the thread in the constructor (else call :meth:`start`).
    """

    def __init__(
        self,
        process_fn: Callable[[Window], Any],
        max_queue: int = 2,
        drop_policy: str = "drop_oldest",
        on_result: Callable[[Window, Any], None] | None = None,
        on_error: Callable[[Window, BaseException], None] | None = None,
        on_drop: Callable[[Window, str], None] | None = None,
        retry_smaller: bool = True,
        name: str = "vggt4d-window-worker",
        autostart: bool = True,
    ) -> None:
        if not callable(process_fn):
            raise ValueError(f"process_fn must be callable, got {type(process_fn).__name__}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be an integer >= 1, got {max_queue!r}")
        if drop_policy not in DROP_POLICIES:
            raise ValueError(f"drop_policy must be one of {DROP_POLICIES}, got {drop_policy!r}")
        self._process_fn = process_fn
        self.max_queue = max_queue
        self.drop_policy = drop_policy
        self._on_result = on_result
        self._on_error = on_error
        self._on_drop = on_drop
        self.retry_smaller = bool(retry_smaller)
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[tuple[Window, float]] = deque()
        self._in_flight: Window | None = None
        self._stale = False
        self._stopping = False
        self._drain = False
        self._submitted = 0
        self._processed = 0
        self._errors = 0
        self._callback_errors = 0
        self._oom_retries = 0
        self._dropped_windows = {r: 0 for r in DROP_REASONS}
        self._last_latency_s: float | None = None
        self._last_process_s: float | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        if autostart:
            self.start()

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        """Start the worker thread (no-op when already started)."""
        with self._cond:
            if self._stopping:
                raise RuntimeError("WindowWorker was stopped and cannot be restarted")
            if self._thread.is_alive() or self._thread.ident is not None:
                return
            self._thread.start()

    @property
    def running(self) -> bool:
        """The worker thread is alive."""
        return self._thread.is_alive()

    def submit(self, window: Window) -> bool:
        """Queue a window without blocking; return ``True`` when it was queued."""
        if not isinstance(window, Window):
            raise ValueError(f"submit expects a Window, got {type(window).__name__}")
        now = time.monotonic()
        dropped: list[tuple[Window, str]] = []
        with self._cond:
            self._submitted += 1
            if self._stopping:
                dropped.append(self._count_drop(window, "stopped"))
                accepted = False
            elif len(self._queue) >= self.max_queue and self.drop_policy != "drop_oldest":
                dropped.append(self._count_drop(window, "queue_full"))
                logger.debug("queue full: rejected window %d", window.index)
                accepted = False
            else:
                if len(self._queue) >= self.max_queue:
                    old, _ = self._queue.popleft()
                    dropped.append(self._count_drop(old, "queue_full"))
                    logger.debug("queue full: dropped window %d for window %d", old.index, window.index)
                self._queue.append((window, now))
                accepted = True
            self._cond.notify_all()
        self._report_drops(dropped)
        return accepted

    def has_room(self) -> bool:
        """A submitted window would be queued without dropping one."""
        with self._cond:
            return len(self._queue) < self.max_queue

    def wait_for_room(self, timeout: float | None = None) -> bool:
        """Block until the queue has room for one more window (or the worker stops); ``False`` on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._stopping or len(self._queue) < self.max_queue, timeout)

    def discard(self) -> None:
        """Drop the queued windows (reason ``'stopped'``) and make the window in flight stale (its result and
        error are not delivered). Returns at once; the worker takes the next submitted window afterwards."""
        with self._cond:
            dropped = [self._count_drop(w, "stopped") for w, _ in self._queue]
            self._queue.clear()
            if self._in_flight is not None:
                self._stale = True
            self._cond.notify_all()
        self._report_drops(dropped)

    def stop(self, timeout: float | None = None, drain: bool = False, discard: bool = False) -> bool:
        """Stop the worker.

        The window being processed is finished (and delivered unless ``discard``). Queued windows are
        processed first when ``drain`` is true, else dropped (reason ``'stopped'``). Returns ``True`` when the
        thread ended within ``timeout`` seconds (``None``: wait indefinitely; ``0``: do not wait).
        """
        dropped: list[tuple[Window, str]] = []
        with self._cond:
            self._stopping = True
            self._drain = bool(drain)
            if discard and self._in_flight is not None:
                self._stale = True
            if not drain:
                while self._queue:
                    old, _ = self._queue.popleft()
                    dropped.append(self._count_drop(old, "stopped"))
            self._cond.notify_all()
        self._report_drops(dropped)
        if self._thread.ident is None:
            return True
        if timeout is None or timeout > 0:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the queue is empty and nothing is being processed; ``False`` on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and self._in_flight is None, timeout)

    def stats(self) -> dict[str, Any]:
        """Thread-safe snapshot of the counters.

        Keys: ``submitted``, ``processed``, ``dropped_windows``, ``dropped_windows_by_reason``,
        ``queue_depth``, ``busy``, ``last_latency_s`` (submit to result of the last processed window),
        ``last_process_s`` (time inside ``process_fn``), ``errors``, ``callback_errors``, ``oom_retries``.
        """
        with self._cond:
            return {
                "submitted": self._submitted,
                "processed": self._processed,
                "dropped_windows": sum(self._dropped_windows.values()),
                "dropped_windows_by_reason": dict(self._dropped_windows),
                "queue_depth": len(self._queue),
                "busy": self._in_flight is not None,
                "last_latency_s": self._last_latency_s,
                "last_process_s": self._last_process_s,
                "errors": self._errors,
                "callback_errors": self._callback_errors,
                "oom_retries": self._oom_retries,
            }

    def __enter__(self) -> "WindowWorker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals
    def _count_drop(self, window: Window, reason: str) -> tuple[Window, str]:
        """Count a window that will not be delivered (lock held); report it with :meth:`_report_drops`."""
        self._dropped_windows[reason] += 1
        return window, reason

    def _report_drops(self, dropped: list[tuple[Window, str]]) -> None:
        if self._on_drop is None:
            return
        for window, reason in dropped:
            self._call(self._on_drop, window, reason)

    def _call(self, fn: Callable[..., None], window: Window, arg: Any) -> None:
        try:
            fn(window, arg)
        except Exception:  # noqa: BLE001
            with self._cond:
                self._callback_errors += 1
            logger.exception("%s callback failed for window %d", getattr(fn, "__name__", "worker"), window.index)

    def _is_stale(self) -> bool:
        with self._cond:
            return self._stale

    def delivering_stale(self) -> bool:
        """The window in flight was discarded (:meth:`discard`, ``stop(discard=True)``): its callbacks must not
        publish (checked by callbacks on the worker thread)."""
        return self._is_stale()

    def _run(self) -> None:
        _local.worker = self
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping and (not self._drain or not self._queue):
                    break
                window, submitted_at = self._queue.popleft()
                self._in_flight = window
                self._stale = False
                self._cond.notify_all()
            try:
                self._process(window, submitted_at)
            except BaseException:  # noqa: BLE001 - last-resort guard so the thread survives its callbacks
                logger.exception("unexpected failure while handling window %d", window.index)
            finally:
                with self._cond:
                    self._in_flight = None
                    self._stale = False
                    self._cond.notify_all()

    def _process(self, window: Window, submitted_at: float) -> None:
        t0 = time.monotonic()
        try:
            result = self._process_fn(window)
        except Exception as exc:  # noqa: BLE001 - process_fn errors are reported, never fatal
            if not (self.retry_smaller and is_out_of_memory(exc) and len(window.frames) >= 4):
                self._fail(window, exc)
                return
            with self._cond:
                self._oom_retries += 1
            logger.warning("window %d (%d frames) ran out of memory; retrying as two halves",
                           window.index, len(window.frames))
            for half in split_window(window, overlap=2):
                if self._is_stale():
                    return
                try:
                    half_result = self._process_fn(half)
                except Exception as half_exc:  # noqa: BLE001
                    self._fail(half, half_exc)
                    return
                self._deliver(half, half_result)
            self._finish(submitted_at, t0)
            return
        self._finish(submitted_at, t0)
        self._deliver(window, result)

    def _finish(self, submitted_at: float, t0: float) -> None:
        now = time.monotonic()
        with self._cond:
            self._processed += 1
            self._last_latency_s = now - submitted_at
            self._last_process_s = now - t0

    def _deliver(self, window: Window, result: Any) -> None:
        if self._on_result is None or self._is_stale():
            return
        self._call(self._on_result, window, result)

    def _fail(self, window: Window, exc: BaseException) -> None:
        with self._cond:
            self._errors += 1
        if self._is_stale():
            return
        logger.warning("processing window %d failed: %s: %s", window.index, type(exc).__name__, exc)
        if self._on_error is not None:
            self._call(self._on_error, window, exc)
