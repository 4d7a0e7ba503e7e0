"""Estimate images lost *before* they reached the node (driver, network, DDS reader history).

Two sources, whichever shows more loss between two consecutive images:

* **sequence numbers**: the DDS publication sequence number of each sample (``MessageInfo`` of rclpy, set by
  Fast DDS and Cyclone DDS; per publisher, identified by its GID). A jump of ``k`` means ``k - 1`` samples of that
  publisher never reached the node's callback (lost in transit with best effort, or overwritten in the reader's
  KEEP_LAST history). Exact, but blind to frames the driver never published.
* **stamps**: the header stamp gap against the observed frame period (median of the last ``window`` gaps):
  a gap of ``g`` with period ``p`` counts ``round(g / p) - 1`` missing frames when ``g > 1.5 p``. An estimate
  (needs a steady rate, ``min_samples`` gaps first); gaps longer than ``max_gap`` seconds are a pause of the stream
  (a new segment), not loss, and stamps going backwards are not counted.

Not countable: images dropped while the stream is paused longer than ``max_gap``, loss before the first images
(no period known yet) and, without sequence numbers, loss in a stream with an irregular rate.
"""

from __future__ import annotations

from collections import deque
from statistics import median
from typing import Hashable

__all__ = ["InputGapEstimator"]


class InputGapEstimator:
    """Counts frames missing between consecutive images (see the module docstring).

    Attributes:
        total: frames estimated missing (max of both sources per gap, summed).
        by_sequence: frames missing by publication sequence number.
        by_stamps: frames missing by stamp gaps.
        events: gaps in which at least one frame was missing.
    """

    def __init__(self, max_gap_s: float = 1.0, window: int = 30, min_samples: int = 5) -> None:
        if max_gap_s <= 0 or window < 1 or min_samples < 1:
            raise ValueError("max_gap_s must be > 0, window and min_samples >= 1")
        self.max_gap_ns = int(max_gap_s * 1e9)
        self.min_samples = min_samples
        self._deltas: deque[int] = deque(maxlen=window)
        self._last_stamp: int | None = None
        self._last_seq: dict[Hashable, int] = {}
        self.total = 0
        self.by_sequence = 0
        self.by_stamps = 0
        self.events = 0

    def period_ns(self) -> int | None:
        """Observed frame period (median gap), ``None`` before ``min_samples`` gaps."""
        if len(self._deltas) < self.min_samples:
            return None
        return int(median(self._deltas))

    def update(self, stamp_ns: int, seq: int | None = None, publisher: Hashable = None) -> int:
        """Record one received image; returns the frames estimated missing just before it."""
        from_seq = 0
        if seq is not None and seq > 0:
            last = self._last_seq.get(publisher)
            if last is not None and seq > last + 1:
                from_seq = seq - last - 1
            self._last_seq[publisher] = seq
            if len(self._last_seq) > 64:
                self._last_seq.pop(next(iter(self._last_seq)))
        from_stamps = 0
        if self._last_stamp is not None:
            delta = stamp_ns - self._last_stamp
            if 0 < delta <= self.max_gap_ns:
                period = self.period_ns()
                if period and delta > 1.5 * period:
                    from_stamps = max(0, round(delta / period) - 1)
                self._deltas.append(delta)
        self._last_stamp = stamp_ns
        missing = max(from_seq, from_stamps)
        self.by_sequence += from_seq
        self.by_stamps += from_stamps
        self.total += missing
        if missing:
            self.events += 1
        return missing

    def restart(self) -> None:
        """Forget the stamp history (a new stream: reset, re-activation); sequence numbers are kept."""
        self._deltas.clear()
        self._last_stamp = None
