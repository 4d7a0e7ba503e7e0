"""Camera trajectory store (map frame) and TUM export."""

from __future__ import annotations

import logging
import os

import numpy as np
from scipy.spatial.transform import Rotation

from .map import _atomic_write_bytes
from .sim3 import Sim3

logger = logging.getLogger(__name__)

__all__ = ["Trajectory", "save_tum", "format_tum", "read_tum"]


def _stamp_text(stamps_ns: np.ndarray) -> list[str]:
    """Exact ``seconds.nanoseconds`` strings (9 decimals) for non-negative integer stamps."""
    sec, nsec = np.divmod(stamps_ns, 1_000_000_000)
    return [f"{int(s)}.{int(n):09d}" for s, n in zip(sec, nsec)]


def format_tum(stamps_ns: np.ndarray, c2w_poses: np.ndarray) -> str:
    """TUM trajectory text: one ``timestamp tx ty tz qx qy qz qw`` line per pose.

    The timestamp is in seconds with 9 decimals (exact from the integer nanoseconds), the pose is
    camera-to-world, the quaternion is scalar-last with ``qw >= 0``. The text starts with a ``#`` comment.

    Args:
        stamps_ns: ``[N]`` non-negative integer stamps in nanoseconds.
        c2w_poses: ``[N, 4, 4]`` camera-to-world poses (rotation block must be a rotation).
    """
    stamps = np.asarray(stamps_ns)
    if stamps.ndim != 1 or not np.issubdtype(stamps.dtype, np.integer):
        raise ValueError(f"stamps_ns must be a 1-D integer array of nanoseconds, got {stamps.dtype} {stamps.shape}")
    stamps = stamps.astype(np.int64)
    poses = np.asarray(c2w_poses, dtype=np.float64)
    if poses.shape != (len(stamps), 4, 4):
        raise ValueError(f"c2w_poses must be [N={len(stamps)}, 4, 4], got {poses.shape}")
    if np.any(stamps < 0):
        raise ValueError("stamps_ns must be >= 0")
    if not np.all(np.isfinite(poses)):
        raise ValueError("c2w_poses must be finite")
    lines = ["# timestamp tx ty tz qx qy qz qw"]
    if len(stamps):
        Rm = poses[:, :3, :3]
        err = np.abs(np.einsum("nji,njk->nik", Rm, Rm) - np.eye(3)).max()
        if err > 1e-4 or np.any(np.linalg.det(Rm) <= 0):
            raise ValueError(f"c2w rotation blocks must be rotations (orthonormality error {err:.2e})")
        q = Rotation.from_matrix(Rm).as_quat()  # scalar last
        q = np.where(q[:, 3:4] < 0, -q, q)
        t = poses[:, :3, 3]
        vals = np.concatenate([t, q], axis=1)
        for st, row in zip(_stamp_text(stamps), vals):
            lines.append(st + " " + " ".join(f"{x:.9f}" for x in row))
    return "\n".join(lines) + "\n"


def save_tum(path: str | os.PathLike, stamps_ns: np.ndarray, c2w_poses: np.ndarray) -> None:
    """Write :func:`format_tum` text to ``path`` (temp file + atomic rename)."""
    _atomic_write_bytes(path, [format_tum(stamps_ns, c2w_poses).encode("ascii")])


def read_tum(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM file: ``(stamps_ns [N] int64, c2w [N, 4, 4])``; ``#`` lines are skipped."""
    stamps, rows = [], []
    with open(path, "r", encoding="ascii") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 8:
                raise ValueError(f"{path}: expected 8 fields per line, got {len(parts)}: {line!r}")
            sec, _, frac = parts[0].partition(".")
            stamps.append(int(sec) * 1_000_000_000 + int((frac + "000000000")[:9]))
            rows.append([float(x) for x in parts[1:]])
    vals = np.array(rows, dtype=np.float64).reshape(-1, 7)
    poses = np.tile(np.eye(4), (len(vals), 1, 1))
    if len(vals):
        poses[:, :3, :3] = Rotation.from_quat(vals[:, 3:]).as_matrix()
        poses[:, :3, 3] = vals[:, :3]
    return np.array(stamps, dtype=np.int64), poses


class Trajectory:
    """Camera-to-world poses in the map frame, keyed by frame stamp.

    Frames in the overlap of two windows are estimated by both; :meth:`update` keeps the **latest** estimate
    (the newer window's), since the newer window has seen more of the recent scene and its pose is the one
    the rest of the live pipeline (map insertion, TF) continues from. The window index of the estimate is
    stored alongside.

    Args:
        max_poses: keep at most this many poses (oldest stamps dropped first); None for no limit.
    """

    def __init__(self, max_poses: int | None = None) -> None:
        if max_poses is not None and (isinstance(max_poses, bool) or not isinstance(max_poses, int) or max_poses < 1):
            raise ValueError(f"max_poses must be None or an integer >= 1, got {max_poses!r}")
        self.max_poses = max_poses
        self._poses: dict[int, np.ndarray] = {}
        self._windows: dict[int, int] = {}

    def update(self, stamps_ns: np.ndarray, c2w_poses: np.ndarray, window_index: int = -1) -> None:
        """Insert or overwrite poses.

        Args:
            stamps_ns: ``[N]`` int stamps.
            c2w_poses: ``[N, 4, 4]`` camera-to-world poses in the map frame.
            window_index: window that produced the estimates.
        """
        stamps = np.asarray(stamps_ns).astype(np.int64).reshape(-1)
        poses = np.asarray(c2w_poses, dtype=np.float64)
        if poses.shape != (len(stamps), 4, 4):
            raise ValueError(f"c2w_poses must be [N={len(stamps)}, 4, 4], got {poses.shape}")
        for st, P in zip(stamps.tolist(), poses):
            self._poses[st] = P.copy()
            self._windows[st] = int(window_index)
        if self.max_poses is not None and len(self._poses) > self.max_poses:
            for st in sorted(self._poses)[: len(self._poses) - self.max_poses]:
                del self._poses[st]
                del self._windows[st]

    def transform(self, sim3: Sim3) -> None:
        """Re-anchor every pose with ``sim3`` (rotation ``R Rc``, centre ``s R c + t``)."""
        if not self._poses:
            return
        stamps = list(self._poses)
        mapped = sim3.transform_pose_c2w(np.stack([self._poses[s] for s in stamps]))
        for st, P in zip(stamps, mapped):
            self._poses[st] = P

    def get(self, stamp_ns: int) -> np.ndarray | None:
        """Pose ``[4, 4]`` of a stamp (a copy) or None."""
        P = self._poses.get(int(stamp_ns))
        return None if P is None else P.copy()

    def window_of(self, stamp_ns: int) -> int | None:
        """Index of the window whose estimate is stored for a stamp."""
        return self._windows.get(int(stamp_ns))

    def stamps(self) -> np.ndarray:
        """``[N]`` int64 stamps, ascending."""
        return np.array(sorted(self._poses), dtype=np.int64)

    def poses(self) -> np.ndarray:
        """``[N, 4, 4]`` camera-to-world poses in stamp order."""
        st = sorted(self._poses)
        if not st:
            return np.zeros((0, 4, 4))
        return np.stack([self._poses[s] for s in st])

    def __len__(self) -> int:
        return len(self._poses)

    def clear(self) -> None:
        self._poses.clear()
        self._windows.clear()

    def save_tum(self, path: str | os.PathLike) -> None:
        """Write the trajectory with :func:`save_tum`."""
        save_tum(path, self.stamps(), self.poses())
