"""Bounded voxel-hash point map with running means, and binary PLY export."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from .sim3 import Sim3

logger = logging.getLogger(__name__)

__all__ = ["VoxelMap", "write_ply", "read_ply"]

_BITS = 21
_OFFSET = 1 << (_BITS - 1)  # voxel indices must lie in [-2^20, 2^20)
_MASK = (1 << _BITS) - 1

_PLY_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                       ("red", "u1"), ("green", "u1"), ("blue", "u1")])


def _pack(ijk: np.ndarray) -> np.ndarray:
    """``[N, 3]`` int64 voxel indices in range -> ``[N]`` int64 keys (21 bits per axis)."""
    o = ijk + _OFFSET
    return (o[:, 0] << (2 * _BITS)) | (o[:, 1] << _BITS) | o[:, 2]


def _current_umask() -> int:
    """The process's umask without changing it (``/proc/self/status``; else the set-and-restore fallback)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write_bytes(path: str | os.PathLike, chunks: list[bytes]) -> None:
    """Write ``chunks`` to a temporary file next to ``path`` and rename it; the file gets the mode a plain
    ``open()`` would give it (``0o666`` less the umask; ``mkstemp`` alone would leave it ``0o600``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_ply(path: str | os.PathLike, points: np.ndarray, colors: np.ndarray) -> None:
    """Write a binary little-endian PLY (``x y z`` float32, ``red green blue`` uchar), atomically.

    Args:
        path: output file.
        points: ``[N, 3]`` positions.
        colors: ``[N, 3]`` uint8 colours.
    """
    points = np.asarray(points)
    colors = np.asarray(colors)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got {points.shape}")
    if colors.shape != points.shape or colors.dtype != np.uint8:
        raise ValueError(f"colors must be uint8 [N, 3] = {points.shape}, got {colors.dtype} {colors.shape}")
    rec = np.empty(len(points), dtype=_PLY_DTYPE)
    for k, name in enumerate(("x", "y", "z")):
        rec[name] = points[:, k]
    for k, name in enumerate(("red", "green", "blue")):
        rec[name] = colors[:, k]
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment vggt4d_ros static map\n"
        f"element vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    ).encode("ascii")
    _atomic_write_bytes(path, [header, rec.tobytes()])


def read_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a PLY written by :func:`write_ply`; returns ``(points [N, 3] float32, colors [N, 3] uint8)``."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path} is not a PLY file")
    header = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in header:
        raise ValueError(f"{path}: only binary_little_endian PLY is supported")
    count = next(int(line.split()[2]) for line in header if line.startswith("element vertex"))
    rec = np.frombuffer(data, dtype=_PLY_DTYPE, count=count, offset=end + len(b"end_header\n"))
    pts = np.stack([rec["x"], rec["y"], rec["z"]], axis=1)
    cols = np.stack([rec["red"], rec["green"], rec["blue"]], axis=1)
    return pts, cols


class VoxelMap:
    """Point map on a voxel hash with a bounded number of voxels.

    Each occupied voxel (key ``floor(p / voxel_size)``) stores the weighted running mean of the positions and
    colours inserted into it, the total weight, and the insert call ("tick") that last updated it. Voxels are
    kept sorted by their packed key, so lookups are ``searchsorted`` and all updates are vectorised.

    Eviction policy: when an insert would leave more than ``max_points`` voxels, the voxels that were updated
    longest ago are removed (ties broken by smaller accumulated weight, then by key order). Voxels touched by
    the current insert have the newest tick, so old parts of the map are forgotten first; if one insert alone
    creates more than ``max_points`` voxels, its heaviest voxels are kept. Storage is allocated with doubling
    up to ``max_points`` entries and never grows past it.

    Voxel indices must lie in ``[-2^20, 2^20)`` per axis (about ±52 km at 5 cm voxels); points outside are
    dropped and counted in ``num_out_of_range``.

    Args:
        voxel_size: voxel edge length in map units, ``> 0``.
        max_points: maximum number of voxels (= output points), ``>= 1``.
    """

    def __init__(self, voxel_size: float = 0.05, max_points: int = 500_000) -> None:
        if not (isinstance(voxel_size, (int, float)) and np.isfinite(voxel_size) and voxel_size > 0):
            raise ValueError(f"voxel_size must be a finite number > 0, got {voxel_size!r}")
        if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
            raise ValueError(f"max_points must be an integer >= 1, got {max_points!r}")
        self.voxel_size = float(voxel_size)
        self.max_points = max_points
        self._n = 0
        self._clock = 0
        self.num_out_of_range = 0
        self._alloc(min(max_points, 4096))

    # ------------------------------------------------------------------ storage
    def _alloc(self, capacity: int) -> None:
        self._keys = np.empty(capacity, dtype=np.int64)
        self._pos = np.empty((capacity, 3), dtype=np.float64)
        self._col = np.empty((capacity, 3), dtype=np.float32)
        self._w = np.empty(capacity, dtype=np.float64)
        self._tick = np.empty(capacity, dtype=np.int64)

    @property
    def capacity(self) -> int:
        """Allocated voxel slots (``<= max_points``)."""
        return int(len(self._keys))

    @property
    def nbytes(self) -> int:
        """Bytes held by the storage arrays."""
        return int(sum(a.nbytes for a in (self._keys, self._pos, self._col, self._w, self._tick)))

    def _store(self, keys: np.ndarray, pos: np.ndarray, col: np.ndarray, w: np.ndarray, tick: np.ndarray) -> None:
        n = len(keys)
        if n > self.max_points:
            raise RuntimeError("internal error: storing more voxels than max_points")
        if n > self.capacity:
            self._alloc(min(self.max_points, max(2 * self.capacity, n)))
        self._keys[:n] = keys
        self._pos[:n] = pos
        self._col[:n] = col
        self._w[:n] = w
        self._tick[:n] = tick
        self._n = n

    def _keys_of(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Packed keys and an in-range mask for ``[N, 3]`` points."""
        ijk = np.floor(points / self.voxel_size)
        ok = np.all((ijk >= -_OFFSET) & (ijk < _OFFSET), axis=1)
        keys = np.zeros(len(points), dtype=np.int64)
        keys[ok] = _pack(ijk[ok].astype(np.int64))
        return keys, ok

    @staticmethod
    def _aggregate(keys: np.ndarray, pos: np.ndarray, col: np.ndarray, w: np.ndarray, tick: np.ndarray):
        """Merge entries with equal keys: weighted means, summed weights, newest tick; sorted by key."""
        uniq, inv = np.unique(keys, return_inverse=True)
        m = len(uniq)
        W = np.bincount(inv, weights=w, minlength=m)
        P = np.stack([np.bincount(inv, weights=w * pos[:, k], minlength=m) for k in range(3)], axis=1)
        C = np.stack([np.bincount(inv, weights=w * col[:, k], minlength=m) for k in range(3)], axis=1)
        T = np.full(m, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(T, inv, tick)
        return uniq, P / W[:, None], C / W[:, None], W, T

    def _bounded_store(self, keys, pos, col, w, tick) -> None:
        """Apply the eviction policy to key-sorted voxels and store them."""
        excess = len(keys) - self.max_points
        if excess > 0:
            order = np.lexsort((w, tick))  # ascending: oldest tick first, then lightest; stable
            keep = np.ones(len(keys), dtype=bool)
            keep[order[:excess]] = False
            keys, pos, col, w, tick = keys[keep], pos[keep], col[keep], w[keep], tick[keep]
            logger.debug("voxel map full: evicted %d voxels", excess)
        self._store(keys, pos, col.astype(np.float32), w, tick)

    # ------------------------------------------------------------------ API
    def insert(self, points: np.ndarray, colors: np.ndarray | None = None, weights: np.ndarray | None = None) -> int:
        """Add points.

        Args:
            points: ``[N, 3]`` positions in map units.
            colors: ``[N, 3]`` uint8 colours (None: mid grey).
            weights: ``[N]`` non-negative weights of the running means (None: 1). Zero-weight and non-finite
                points are ignored.

        Returns:
            Number of points used.
        """
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"points must be [N, 3], got {points.shape}")
        N = len(points)
        if colors is None:
            cols = np.full((N, 3), 128.0)
        else:
            colors = np.asarray(colors)
            if colors.shape != (N, 3) or colors.dtype != np.uint8:
                raise ValueError(f"colors must be uint8 [N, 3] = {(N, 3)}, got {colors.dtype} {colors.shape}")
            cols = colors.astype(np.float64)
        if weights is None:
            w = np.ones(N)
        else:
            w = np.asarray(weights, dtype=np.float64).reshape(-1)
            if w.shape != (N,):
                raise ValueError(f"weights must be [N] with N={N}, got {np.shape(weights)}")
            if np.any(w < 0):
                raise ValueError("weights must be >= 0")
        self._clock += 1
        ok = np.all(np.isfinite(points), axis=1) & np.isfinite(w) & (w > 0)
        keys, in_range = self._keys_of(np.where(ok[:, None], points, 0.0))
        self.num_out_of_range += int(np.count_nonzero(ok & ~in_range))
        ok &= in_range
        if not np.any(ok):
            return 0
        bk, bp, bc, bw, _ = self._aggregate(keys[ok], points[ok], cols[ok], w[ok],
                                             np.full(int(ok.sum()), self._clock, dtype=np.int64))
        n = self._n
        ek = self._keys[:n]
        idx = np.searchsorted(ek, bk)
        found = idx < n
        found[found] = ek[idx[found]] == bk[found]
        # update voxels that already exist
        fi = idx[found]
        w_old = self._w[fi]
        w_new = w_old + bw[found]
        a = (w_old / w_new)[:, None]
        self._pos[fi] = a * self._pos[fi] + (1.0 - a) * bp[found]
        self._col[fi] = (a * self._col[fi] + (1.0 - a) * bc[found]).astype(np.float32)
        self._w[fi] = w_new
        self._tick[fi] = self._clock
        new = ~found
        m = int(np.count_nonzero(new))
        if m:
            nk = bk[new]
            # merge two sorted key lists: final slot of each existing / new voxel
            slot_old = np.arange(n) + np.searchsorted(nk, ek)
            slot_new = np.arange(m) + idx[new]
            total = n + m
            keys_all = np.empty(total, dtype=np.int64)
            pos_all = np.empty((total, 3))
            col_all = np.empty((total, 3))
            w_all = np.empty(total)
            tick_all = np.empty(total, dtype=np.int64)
            keys_all[slot_old], keys_all[slot_new] = ek, nk
            pos_all[slot_old], pos_all[slot_new] = self._pos[:n], bp[new]
            col_all[slot_old], col_all[slot_new] = self._col[:n], bc[new]
            w_all[slot_old], w_all[slot_new] = self._w[:n], bw[new]
            tick_all[slot_old], tick_all[slot_new] = self._tick[:n], self._clock
            self._bounded_store(keys_all, pos_all, col_all, w_all, tick_all)
        return int(np.count_nonzero(ok))

    def transform(self, sim3: Sim3) -> None:
        """Re-anchor the map: move every voxel mean by ``sim3`` and re-voxelise (voxels that now share a key
        merge with weighted means; ``voxel_size`` is unchanged and stays in the new map's units)."""
        if not isinstance(sim3, Sim3):
            raise ValueError(f"transform expects a Sim3, got {type(sim3).__name__}")
        n = self._n
        if n == 0:
            return
        pos = sim3.apply(self._pos[:n])
        keys, ok = self._keys_of(pos)
        self.num_out_of_range += int(np.count_nonzero(~ok))
        agg = self._aggregate(keys[ok], pos[ok], self._col[:n][ok].astype(np.float64), self._w[:n][ok],
                              self._tick[:n][ok])
        self._bounded_store(*agg)

    def points(self) -> np.ndarray:
        """``[N, 3]`` float64 voxel mean positions (a copy)."""
        return self._pos[: self._n].copy()

    def colors(self) -> np.ndarray:
        """``[N, 3]`` uint8 voxel mean colours (rounded)."""
        return np.clip(np.round(self._col[: self._n]), 0, 255).astype(np.uint8)

    def weights(self) -> np.ndarray:
        """``[N]`` accumulated weight per voxel (a copy)."""
        return self._w[: self._n].copy()

    def voxel_keys(self) -> np.ndarray:
        """``[N, 3]`` int64 voxel indices."""
        k = self._keys[: self._n]
        return np.stack([(k >> (2 * _BITS)) & _MASK, (k >> _BITS) & _MASK, k & _MASK], axis=1) - _OFFSET

    def __len__(self) -> int:
        return self._n

    def clear(self) -> None:
        """Remove all voxels and release storage beyond the initial allocation."""
        self._n = 0
        self._clock = 0
        self.num_out_of_range = 0
        self._alloc(min(self.max_points, 4096))

    def save_ply(self, path: str | os.PathLike) -> None:
        """Write the map as a binary little-endian PLY (temp file + atomic rename)."""
        write_ply(path, self.points().astype(np.float32), self.colors())
