"""The node's input stage: a bounded queue of received messages and the thread that handles them.

The subscription callback only appends the message (:meth:`InputQueue.put`) and returns, so the executor thread
never decodes, preprocesses or waits: a long window, a waiting input stage (``drop_policy: wait``) or the GIL
held by decoding cannot starve the DDS reader. When ``max_size`` messages already wait, the oldest is discarded
(the newest images are the useful ones for a live camera) and counted in ``overflow``.

Invariant: ``received = handled + overflow + discarded + depth (+1 while one is being handled)``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Callable

logger = logging.getLogger(__name__)

__all__ = ["InputQueue"]


class InputQueue:
    """Bounded FIFO of items handled by one daemon thread (``handler(item)``; exceptions are logged).

    Args:
        handler: called on the queue's thread for each item, in order.
        max_size: items allowed to wait (``>= 1``).
        on_discard: ``on_discard(item)`` for each item dropped by :meth:`stop` (not for overflow).
        name: thread name.
    """

    def __init__(self, handler: Callable[[Any], None], max_size: int, on_discard: Callable[[Any], None] | None = None,
                 name: str = "vggt4d-intake") -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be an integer >= 1, got {max_size!r}")
        self._handler = handler
        self._on_discard = on_discard
        self.max_size = max_size
        self._cond = threading.Condition(threading.Lock())
        self._items: deque = deque()
        self._busy = False
        self._stopping = False
        self.received = 0
        self.handled = 0
        self.overflow = 0
        self.discarded = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: Any) -> bool:
        """Queue ``item`` without blocking; ``False`` when the queue was full (the oldest item was dropped)
        or the queue is stopped (the item is dropped)."""
        with self._cond:
            self.received += 1
            if self._stopping:
                self.discarded += 1
                return False
            full = len(self._items) >= self.max_size
            if full:
                self._items.popleft()
                self.overflow += 1
            self._items.append(item)
            self._cond.notify_all()
            return not full

    def idle(self) -> bool:
        """Nothing waits and nothing is being handled."""
        with self._cond:
            return not self._items and not self._busy

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._items and not self._busy, timeout)

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"received": self.received, "handled": self.handled, "overflow": self.overflow,
                    "discarded": self.discarded, "depth": len(self._items) + (1 if self._busy else 0)}

    def stop(self, timeout: float | None = None) -> bool:
        """Stop taking items; the item being handled is finished, waiting ones are discarded (``on_discard``).
        Returns whether the thread ended within ``timeout``."""
        with self._cond:
            self._stopping = True
            left = list(self._items)
            self._items.clear()
            self.discarded += len(left)
            self._cond.notify_all()
        if self._on_discard is not None:
            for item in left:
                try:
                    self._on_discard(item)
                except Exception:  # noqa: BLE001
                    logger.exception("discarding an input failed")
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                item = self._items.popleft()
                self._busy = True
            try:
                self._handler(item)
            except BaseException:  # noqa: BLE001 - the input thread must survive its handler
                logger.exception("input handler failed")
            finally:
                with self._cond:
                    self._busy = False
                    self.handled += 1
                    self._cond.notify_all()
