"""Keyframe selection by frame stride and minimum time period."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

__all__ = ["KeyframeSelector"]


class KeyframeSelector:
    """Select keyframes from a stream of frame stamps.

    Rule: the first offered frame (and the first after :meth:`reset`) is always a keyframe. After that a
    frame is a keyframe when at least ``stride`` frames have been offered since the last keyframe (counting
    this one, so ``stride=1`` accepts every frame and ``stride=3`` accepts frames 0, 3, 6, ...) **and** at least
    ``min_period_s`` seconds have passed since the last keyframe's stamp. A frame rejected only because of the
    period keeps the stride condition satisfied, so the next frame that meets the period is taken.

    A stamp earlier than the last keyframe's stamp (clock jump, bag loop) restarts the selector: the frame is
    taken as the first keyframe of a new run.

    Args:
        stride: take at most every ``stride``-th frame, ``>= 1``.
        min_period_s: minimum time between keyframes in seconds, ``>= 0``.
    """

    def __init__(self, stride: int = 1, min_period_s: float = 0.0) -> None:
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be an integer >= 1, got {stride!r}")
        try:
            period = float(min_period_s)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"min_period_s must be a number >= 0, got {min_period_s!r}") from exc
        if not period >= 0.0 or period == float("inf"):
            raise ValueError(f"min_period_s must be a finite number >= 0, got {min_period_s!r}")
        self.stride = stride
        self.min_period_s = period
        self._min_period_ns = int(round(period * 1e9))
        self._last_key_ns: int | None = None
        self._since_last = 0
        self.num_offered = 0
        self.num_selected = 0

    def reset(self) -> None:
        """Forget the last keyframe: the next offered frame is a keyframe."""
        self._last_key_ns = None
        self._since_last = 0

    @property
    def last_keyframe_ns(self) -> int | None:
        """Stamp of the last selected keyframe in nanoseconds, or ``None``."""
        return self._last_key_ns

    def offer(self, stamp_ns: int) -> bool:
        """Offer a frame; return ``True`` when it is selected as a keyframe.

        Args:
            stamp_ns: frame stamp in nanoseconds (integer).
        """
        if isinstance(stamp_ns, bool):
            raise ValueError(f"stamp_ns must be an integer number of nanoseconds, got {stamp_ns!r}")
        try:
            stamp = int(stamp_ns)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"stamp_ns must be an integer number of nanoseconds, got {stamp_ns!r}") from exc
        self.num_offered += 1
        if self._last_key_ns is not None and stamp < self._last_key_ns:
            logger.debug("stamp %d earlier than last keyframe %d: restarting keyframe selection",
                         stamp, self._last_key_ns)
            self.reset()
        if self._last_key_ns is None:
            return self._select(stamp)
        self._since_last += 1
        if self._since_last < self.stride:
            return False
        if stamp - self._last_key_ns < self._min_period_ns:
            return False
        return self._select(stamp)

    def _select(self, stamp: int) -> bool:
        self._last_key_ns = stamp
        self._since_last = 0
        self.num_selected += 1
        return True
