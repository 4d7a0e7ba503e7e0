"""Frames, overlapping sliding windows and stream segments.

Data flow: every incoming frame goes through :class:`SegmentTracker` (which detects resolution changes,
stamps going backwards and gaps), then :class:`~vggt4d_ros.windows.keyframes.KeyframeSelector`, and
keyframes are grouped by :class:`WindowBuilder` into overlapping windows. :class:`WindowAssembler` wires the
three together.

Segments: a new segment starts the sliding windows from scratch (the builder is flushed and reset, the
keyframe selector restarts). The accumulated map is kept, but the first window of a new segment cannot be
aligned to the previous segment (there are no shared frames), so the stitcher places it from odometry or at the
last known camera pose (see :class:`vggt4d_ros.windows.stitcher.Stitcher`). Windows carry their ``segment``
number so the stitcher knows when that happens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .keyframes import KeyframeSelector

logger = logging.getLogger(__name__)

__all__ = [
    "Frame",
    "Window",
    "WindowBuilder",
    "SegmentTracker",
    "AssemblerStep",
    "WindowAssembler",
    "SEGMENT_REASONS",
]

SEGMENT_REASONS = ("resolution", "stamp_backwards", "gap")


@dataclass
class Frame:
    """One camera frame.

    Attributes:
        stamp_ns: acquisition stamp in nanoseconds.
        image: ``[H, W, 3]`` uint8 image (``[H, W]`` grayscale is accepted too).
        frame_id: optical frame name of the camera (ROS ``header.frame_id``).
        K: optional ``[3, 3]`` intrinsics from ``camera_info`` (for this image's resolution).
        seq: caller's running frame counter.
    """

    stamp_ns: int
    image: np.ndarray
    frame_id: str = ""
    K: np.ndarray | None = None
    seq: int = 0

    def __post_init__(self) -> None:
        self.stamp_ns = int(self.stamp_ns)
        if not isinstance(self.image, np.ndarray) or self.image.ndim not in (2, 3):
            raise ValueError(
                f"Frame.image must be an [H, W, 3] (or [H, W]) ndarray, got "
                f"{type(self.image).__name__} with shape {getattr(self.image, 'shape', None)}"
            )
        if self.K is not None:
            K = np.asarray(self.K, dtype=np.float64)
            if K.shape != (3, 3) or not np.all(np.isfinite(K)):
                raise ValueError(f"Frame.K must be a finite [3, 3] matrix or None, got shape {K.shape}")
            self.K = K

    @property
    def resolution(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def key(self) -> tuple[str, int]:
        """Identity of the frame across windows: ``(frame_id, stamp_ns)``."""
        return self.frame_id, self.stamp_ns


@dataclass
class Window:
    """A group of consecutive keyframes processed together.

    Attributes:
        index: running window number (unique over the builder's lifetime, also across segments).
        frames: the keyframes, oldest first.
        overlap_with_previous: how many leading frames are shared with the previous window of the same
            segment (0 for the first window of a segment).
        segment: segment number the window belongs to.
    """

    index: int
    frames: list[Frame]
    overlap_with_previous: int = 0
    segment: int = 0

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def stamps_ns(self) -> np.ndarray:
        """``[S]`` int64 stamps."""
        return np.array([f.stamp_ns for f in self.frames], dtype=np.int64)

    @property
    def keys(self) -> list[tuple[str, int]]:
        """``(frame_id, stamp_ns)`` of every frame."""
        return [f.key for f in self.frames]

    def images(self) -> np.ndarray:
        """Stack the images into ``[S, H, W, 3]`` (all frames must share a resolution)."""
        return np.stack([f.image for f in self.frames], axis=0)


class WindowBuilder:
    """Group keyframes into overlapping windows.

    The first window is emitted when ``window_size`` keyframes have been added; after that one window is
    emitted every ``window_size - overlap`` new keyframes, starting with the last ``overlap`` frames of the
    previous window. So with ``window_size=4, overlap=1`` keyframes ``0..9`` give windows
    ``[0,1,2,3]``, ``[3,4,5,6]``, ``[6,7,8,9]``.

    Args:
        window_size: frames per window, ``>= 2``.
        overlap: frames shared by consecutive windows, ``0 <= overlap < window_size``.
    """

    def __init__(self, window_size: int = 16, overlap: int = 6) -> None:
        for name, value in (("window_size", window_size), ("overlap", overlap)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if window_size < 2:
            raise ValueError(f"window_size must be >= 2, got {window_size}")
        if not 0 <= overlap < window_size:
            raise ValueError(f"overlap must satisfy 0 <= overlap < window_size ({window_size}), got {overlap}")
        self.window_size = window_size
        self.overlap = overlap
        self._buffer: list[Frame] = []
        self._carried = 0  # leading frames of the buffer that were in the previous window
        self._next_index = 0
        self.segment = 0

    @property
    def step(self) -> int:
        """New keyframes between two emitted windows."""
        return self.window_size - self.overlap

    @property
    def pending(self) -> int:
        """Keyframes added since the last emitted window."""
        return len(self._buffer) - self._carried

    def add(self, frame: Frame) -> Window | None:
        """Add a keyframe; return a window when one is complete, else ``None``."""
        if not isinstance(frame, Frame):
            raise ValueError(f"WindowBuilder.add expects a Frame, got {type(frame).__name__}")
        self._buffer.append(frame)
        if len(self._buffer) < self.window_size:
            return None
        return self._emit()

    def flush(self) -> Window | None:
        """Emit the partial window at the end of a stream or segment.

        Returns a window holding the carried overlap frames plus the keyframes added since the last window
        when at least one keyframe is new and the window has ``>= 2`` frames; otherwise ``None``. The
        builder is left empty afterwards (as after :meth:`reset`, keeping the window counter).
        """
        window = None
        if self.pending > 0 and len(self._buffer) >= 2:
            window = self._emit()
        elif self.pending > 0:
            logger.debug("flush: dropping a single-frame partial window")
        self._buffer = []
        self._carried = 0
        return window

    def reset(self) -> None:
        """Drop buffered frames; the next window starts from scratch (window numbering continues)."""
        self._buffer = []
        self._carried = 0

    def _emit(self) -> Window:
        frames = list(self._buffer)
        window = Window(index=self._next_index, frames=frames, overlap_with_previous=self._carried,
                        segment=self.segment)
        self._next_index += 1
        self._buffer = frames[len(frames) - self.overlap:] if self.overlap > 0 else []
        self._carried = len(self._buffer)
        return window


class SegmentTracker:
    """Detect where a frame stream must be cut into independent segments.

    A frame starts a new segment when its resolution differs from the current segment's (``'resolution'``),
    when its stamp is not after the previous frame's (``'stamp_backwards'``), or when it arrives more than
    ``max_gap_s`` after the previous frame (``'gap'``). Reasons are checked in that order and the first that
    applies is returned.

    Args:
        max_gap_s: largest allowed stamp gap between consecutive frames in seconds (``> 0``; ``inf``
            disables the gap check).
    """

    def __init__(self, max_gap_s: float = 1.0) -> None:
        try:
            gap = float(max_gap_s)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"max_gap_s must be a positive number, got {max_gap_s!r}") from exc
        if not gap > 0.0:
            raise ValueError(f"max_gap_s must be > 0 (inf disables the check), got {max_gap_s!r}")
        self.max_gap_s = gap
        self._last_stamp: int | None = None
        self._resolution: tuple[int, int] | None = None
        self.segment = 0

    def reset(self) -> None:
        """Forget the stream; the next frame opens a segment without a reason (counter kept)."""
        self._last_stamp = None
        self._resolution = None

    def update(self, stamp_ns: int, resolution: tuple[int, int]) -> str | None:
        """Register a frame; return the reason when it starts a new segment, else ``None``.

        The very first frame opens segment 0 and returns ``None``.

        Args:
            stamp_ns: frame stamp in nanoseconds.
            resolution: ``(H, W)`` of the frame.
        """
        stamp = int(stamp_ns)
        res = (int(resolution[0]), int(resolution[1]))
        reason: str | None = None
        if self._last_stamp is not None:
            if res != self._resolution:
                reason = "resolution"
            elif stamp <= self._last_stamp:
                reason = "stamp_backwards"
            elif (stamp - self._last_stamp) * 1e-9 > self.max_gap_s:
                reason = "gap"
        if reason is not None:
            self.segment += 1
        self._last_stamp = stamp
        self._resolution = res
        return reason

    def update_frame(self, frame: Frame) -> str | None:
        """:meth:`update` with a :class:`Frame`."""
        return self.update(frame.stamp_ns, frame.resolution)


@dataclass
class AssemblerStep:
    """What happened to one pushed frame.

    Attributes:
        is_keyframe: the frame was selected as a keyframe.
        segment_reason: reason string when this frame opened a new segment, else ``None``.
        segment: segment number of the frame.
        windows: windows completed by this frame (a flushed partial window of the old segment first, when
            a segment ended, then possibly a window of the current segment).
    """

    is_keyframe: bool
    segment_reason: str | None
    segment: int
    windows: list[Window] = field(default_factory=list)


class WindowAssembler:
    """Segment tracking + keyframe selection + window building for one camera stream.

    On a new segment the builder is flushed (the old segment's trailing partial window is emitted when it
    has ``>= 2`` frames) and reset, and keyframe selection restarts, so the first frame of a segment is a
    keyframe.
    """

    def __init__(
        self,
        builder: WindowBuilder | None = None,
        selector: KeyframeSelector | None = None,
        tracker: SegmentTracker | None = None,
    ) -> None:
        self.builder = builder if builder is not None else WindowBuilder()
        self.selector = selector if selector is not None else KeyframeSelector()
        self.tracker = tracker if tracker is not None else SegmentTracker(max_gap_s=float("inf"))
        self.builder.segment = self.tracker.segment

    def push(self, frame: Frame) -> AssemblerStep:
        """Process one incoming frame."""
        windows: list[Window] = []
        reason = self.tracker.update_frame(frame)
        if reason is not None:
            logger.info("new segment %d (%s) at stamp %d", self.tracker.segment, reason, frame.stamp_ns)
            tail = self.builder.flush()
            if tail is not None:
                windows.append(tail)
            self.builder.reset()
            self.builder.segment = self.tracker.segment
            self.selector.reset()
        is_key = self.selector.offer(frame.stamp_ns)
        if is_key:
            window = self.builder.add(frame)
            if window is not None:
                windows.append(window)
        return AssemblerStep(is_keyframe=is_key, segment_reason=reason, segment=self.tracker.segment,
                             windows=windows)

    def finish(self) -> Window | None:
        """End of stream: flush the trailing partial window."""
        return self.builder.flush()
