"""A time-indexed transform tree (the parts of tf2's buffer the node needs), numpy only.

Frames form a tree: every child frame has one parent. Each ``(parent, child)`` edge keeps a bounded history
of time-stamped rigid transforms (``parent_T_child``: maps points in ``child`` to ``parent``, i.e. the pose of
``child`` in ``parent``), or one transform kept forever when it is static. A lookup between any two frames
walks both frames up to their common ancestor and composes the edges, each one interpolated at the requested
time (linear in translation, spherical-linear in rotation, between the two samples that bracket the time).

Conventions follow tf2's ``lookupTransform(target, source, time)``: the result maps points from ``source`` to
``target``; time ``None`` or ``0`` means the latest time at which every dynamic edge of the chain has data.
No extrapolation: a time before an edge's oldest sample or after its newest raises
:class:`TransformLookupError` (with the reason), as tf2 does.
"""

from __future__ import annotations

import bisect
import logging
import threading
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

logger = logging.getLogger(__name__)

__all__ = ["TransformBuffer", "TransformLookupError"]

_ORTHO_TOL = 1e-3  # largest |R^T R - I| entry accepted for a rotation block


class TransformLookupError(LookupError):
    """A transform cannot be looked up: unknown frame, frames not connected, or extrapolation into the past or
    future (the message says which)."""


@dataclass
class _Edge:
    """History of one ``parent_T_child`` edge: sorted stamps with translations ``[3]`` and quaternions
    ``[4]`` (scalar last)."""

    parent: str
    static: bool = False
    stamps: list[int] = field(default_factory=list)
    trans: list[np.ndarray] = field(default_factory=list)
    quats: list[np.ndarray] = field(default_factory=list)

    def insert(self, stamp: int, t: np.ndarray, q: np.ndarray, cache_ns: int) -> None:
        if self.static:
            self.stamps, self.trans, self.quats = [stamp], [t], [q]
            return
        k = bisect.bisect_left(self.stamps, stamp)
        if k < len(self.stamps) and self.stamps[k] == stamp:
            self.trans[k], self.quats[k] = t, q
        else:
            self.stamps.insert(k, stamp)
            self.trans.insert(k, t)
            self.quats.insert(k, q)
        cut = bisect.bisect_left(self.stamps, self.stamps[-1] - cache_ns)
        if cut > 0:
            del self.stamps[:cut], self.trans[:cut], self.quats[:cut]

    def sample(self, stamp: int, child: str) -> np.ndarray:
        """``[4, 4]`` ``parent_T_child`` at ``stamp`` (any stamp for static edges)."""
        if self.static:
            return _matrix(self.trans[0], self.quats[0])
        st = self.stamps
        if stamp < st[0]:
            raise TransformLookupError(
                f"extrapolation into the past: {self.parent} -> {child} requested at {stamp} ns, oldest data at "
                f"{st[0]} ns ({(st[0] - stamp) * 1e-9:.3f} s later)")
        if stamp > st[-1]:
            raise TransformLookupError(
                f"extrapolation into the future: {self.parent} -> {child} requested at {stamp} ns, newest data at "
                f"{st[-1]} ns ({(stamp - st[-1]) * 1e-9:.3f} s earlier)")
        k = bisect.bisect_left(st, stamp)
        if st[k] == stamp:
            return _matrix(self.trans[k], self.quats[k])
        a, b = k - 1, k
        alpha = (stamp - st[a]) / (st[b] - st[a])
        t = (1.0 - alpha) * self.trans[a] + alpha * self.trans[b]
        return _matrix(t, _slerp(self.quats[a], self.quats[b], alpha))


def _matrix(t: np.ndarray, q: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(q).as_matrix()
    T[:3, 3] = t
    return T


def _slerp(q0: np.ndarray, q1: np.ndarray, alpha: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (shortest arc)."""
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly identical: normalised lerp is exact enough and avoids dividing by sin(~0)
        q = (1.0 - alpha) * q0 + alpha * q1
        return q / np.linalg.norm(q)
    theta = np.arccos(dot)
    s = np.sin(theta)
    return (np.sin((1.0 - alpha) * theta) * q0 + np.sin(alpha * theta) * q1) / s


def _clean_name(name: str) -> str:
    if not isinstance(name, str):
        raise ValueError(f"frame names must be strings, got {type(name).__name__}")
    name = name.strip().lstrip("/")
    if not name:
        raise ValueError("frame names must not be empty")
    return name


class TransformBuffer:
    """Thread-safe transform tree with per-edge time histories (see the module docstring).

    A child frame has one parent; a transform naming a new parent for an existing child replaces the edge
    (logged as a warning, as tf2 does when the tree is re-parented). A transform that would close a cycle is
    rejected.

    Args:
        cache_time_s: history kept per dynamic edge, in seconds before the edge's newest sample (``> 0``).
            Static transforms are kept forever.
    """

    def __init__(self, cache_time_s: float = 10.0) -> None:
        try:
            cache = float(cache_time_s)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cache_time_s must be a positive number, got {cache_time_s!r}") from exc
        if not (np.isfinite(cache) and cache > 0):
            raise ValueError(f"cache_time_s must be a finite number > 0, got {cache_time_s!r}")
        self.cache_time_s = cache
        self._cache_ns = int(round(cache * 1e9))
        self._edges: dict[str, _Edge] = {}  # keyed by child frame
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ filling
    def set_transform(self, parent: str, child: str, stamp_ns: int, T: np.ndarray, static: bool = False) -> None:
        """Add ``parent_T_child`` (``[4, 4]`` rigid, maps ``child`` points to ``parent``) at ``stamp_ns``.

        Raises:
            ValueError: empty or equal frame names, a non-rigid or non-finite matrix, a negative stamp, or a
                transform that would make ``child`` its own ancestor.
        """
        parent, child = _clean_name(parent), _clean_name(child)
        if parent == child:
            raise ValueError(f"a transform needs two different frames, got {parent!r} twice")
        if isinstance(stamp_ns, bool) or int(stamp_ns) < 0:
            raise ValueError(f"stamp_ns must be an integer >= 0, got {stamp_ns!r}")
        stamp = int(stamp_ns)
        M = np.asarray(T, dtype=np.float64)
        if M.shape != (4, 4) or not np.all(np.isfinite(M)):
            raise ValueError(f"T must be a finite [4, 4] matrix, got shape {M.shape}")
        R = M[:3, :3]
        if np.abs(R.T @ R - np.eye(3)).max() > _ORTHO_TOL or np.linalg.det(R) <= 0:
            raise ValueError(f"T's rotation block is not a rotation ({parent} -> {child})")
        q = Rotation.from_matrix(R).as_quat()
        t = M[:3, 3].copy()
        with self._lock:
            if self._is_ancestor(child, parent):
                raise ValueError(f"{parent} -> {child} would close a cycle: {child} is an ancestor of {parent}")
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent or edge.static != bool(static):
                if edge is not None:
                    logger.warning("frame %s: parent %s%s replaced by %s%s", child, edge.parent,
                                   " (static)" if edge.static else "", parent, " (static)" if static else "")
                edge = _Edge(parent=parent, static=bool(static))
                self._edges[child] = edge
            edge.insert(stamp, t, q, self._cache_ns)

    def clear(self) -> None:
        """Forget every transform, static ones included."""
        with self._lock:
            self._edges.clear()

    # ------------------------------------------------------------------ queries
    def parent_of(self, frame: str) -> str | None:
        """Parent of ``frame``, or None when it has none (a root or an unknown frame)."""
        frame = _clean_name(frame)
        with self._lock:
            edge = self._edges.get(frame)
            return None if edge is None else edge.parent

    def frames(self) -> list[str]:
        """All known frame names, sorted."""
        with self._lock:
            names = set(self._edges) | {e.parent for e in self._edges.values()}
        return sorted(names)

    def latest_common_time(self, target_frame: str, source_frame: str) -> int:
        """Newest stamp at which every dynamic edge between the two frames has data (0 when all are static).

        Raises:
            TransformLookupError: unknown frame or frames not connected.
        """
        with self._lock:
            chain = self._chain(_clean_name(target_frame), _clean_name(source_frame))
            return self._common_time(chain)

    def lookup(self, target_frame: str, source_frame: str, stamp_ns: int | None = None) -> np.ndarray:
        """``[4, 4]`` ``target_T_source``: maps points in ``source_frame`` to ``target_frame`` (the pose of the
        source frame in the target frame) at ``stamp_ns`` (None or 0: the latest common time).

        Raises:
            TransformLookupError: unknown frame, frames not connected, or extrapolation into the past/future.
        """
        target, source = _clean_name(target_frame), _clean_name(source_frame)
        with self._lock:
            up_target, up_source = self._chain(target, source)
            stamp = self._common_time((up_target, up_source)) if not stamp_ns else int(stamp_ns)
            anc_T_target = self._compose(up_target, stamp)
            anc_T_source = self._compose(up_source, stamp)
        return np.linalg.inv(anc_T_target) @ anc_T_source

    def can_transform(self, target_frame: str, source_frame: str, stamp_ns: int | None = None) -> bool:
        """Whether :meth:`lookup` would succeed."""
        try:
            self.lookup(target_frame, source_frame, stamp_ns)
        except (TransformLookupError, ValueError):
            return False
        return True

    # ------------------------------------------------------------------ internals (lock held)
    def _known(self, frame: str) -> bool:
        return frame in self._edges or any(e.parent == frame for e in self._edges.values())

    def _is_ancestor(self, ancestor: str, frame: str) -> bool:
        seen = 0
        while frame in self._edges and seen <= len(self._edges):
            frame = self._edges[frame].parent
            if frame == ancestor:
                return True
            seen += 1
        return frame == ancestor

    def _path_up(self, frame: str) -> list[str]:
        """``[frame, parent, grandparent, ..., root]``."""
        path = [frame]
        while path[-1] in self._edges:
            path.append(self._edges[path[-1]].parent)
        return path

    def _chain(self, target: str, source: str) -> tuple[list[str], list[str]]:
        """Frames from ``target`` and from ``source`` up to (excluding) their common ancestor."""
        for name in (target, source):
            if not self._known(name):
                raise TransformLookupError(f"unknown frame {name!r} (known: {', '.join(self.frames()) or 'none'})")
        if target == source:
            return [], []
        pt, ps = self._path_up(target), self._path_up(source)
        in_t = set(pt)
        common = next((f for f in ps if f in in_t), None)
        if common is None:
            raise TransformLookupError(
                f"{target!r} and {source!r} are not connected (their roots are {pt[-1]!r} and {ps[-1]!r})")
        return pt[: pt.index(common)], ps[: ps.index(common)]

    def _common_time(self, chain: tuple[list[str], list[str]]) -> int:
        newest = [self._edges[f].stamps[-1] for part in chain for f in part if not self._edges[f].static]
        return min(newest) if newest else 0

    def _compose(self, frames: list[str], stamp: int) -> np.ndarray:
        """``ancestor_T_frames[0]`` for a chain of child frames going up."""
        T = np.eye(4)
        for f in reversed(frames):
            T = T @ self._edges[f].sample(stamp, f)
        return T
