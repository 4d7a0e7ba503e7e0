"""Readers for the benchmark dataset layouts used by ``vggt4d eval sequence``.

Layouts (``ROOT`` is what ``--root`` names):

* **DAVIS** (2016 / 2017): ``ROOT/JPEGImages/<resolution>/<sequence>/*.jpg`` frames and
  ``ROOT/Annotations/<resolution>/<sequence>/*.png`` masks with the same stems; ``resolution`` is ``480p`` by
  default. Frames are ordered by file name.
* **TUM RGB-D**: ``ROOT/<sequence>/rgb.txt`` (lines ``timestamp filename``, ``#`` comments), the images it
  names (usually ``rgb/<timestamp>.png``) and ``ROOT/<sequence>/groundtruth.txt`` (TUM trajectory,
  ``timestamp tx ty tz qx qy qz qw``). Frames are ordered as ``rgb.txt`` lists them.
* **Bonn RGB-D Dynamic**: the same layout as TUM RGB-D (``rgbd_bonn_<name>/rgb.txt``, ``rgb/``,
  ``groundtruth.txt``). The ground truth is used as provided, with no marker-to-camera correction.

A frame selection ``start`` / ``stride`` / ``max_frames`` is applied to the ordered frames (first
``start``, then every ``stride``-th, then at most ``max_frames``), so a long sequence can be cut to what one
forward pass holds.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vggt4d_ros.evaluation.errors import EvaluationError

logger = logging.getLogger(__name__)

DATASETS = ("davis", "tum", "bonn")
DEFAULT_DAVIS_RESOLUTION = "480p"
_DAVIS_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_TIMESTAMP = re.compile(r"^\d+(\.\d+)?$")


@dataclass
class SequenceFrames:
    """The selected frames of one dataset sequence and where its ground truth is.

    Attributes:
        dataset: ``"davis"``, ``"tum"`` or ``"bonn"``.
        name: sequence name.
        images: image files in temporal order ``[N]``.
        frame_names: one name per image ``[N]``: the file stem for DAVIS (matches the annotation stems), the
            timestamp string of ``rgb.txt`` for TUM / Bonn (``vggt4d run`` reads it back as the frame time).
        gt_masks: DAVIS annotation folder of the sequence, else None.
        gt_trajectory: TUM / Bonn ``groundtruth.txt``, else None.
        total_frames: frames in the sequence before the selection.
    """

    dataset: str
    name: str
    images: list[Path]
    frame_names: list[str]
    gt_masks: Optional[Path]
    gt_trajectory: Optional[Path]
    total_frames: int

    def __len__(self) -> int:
        return len(self.images)


def _check_dataset(dataset: str) -> str:
    key = dataset.lower()
    if key not in DATASETS:
        raise EvaluationError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    return key


def _select(n: int, start: int, stride: int, max_frames: Optional[int]) -> list[int]:
    if start < 0:
        raise EvaluationError(f"--start must be >= 0, got {start}")
    if stride < 1:
        raise EvaluationError(f"--stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise EvaluationError(f"--max-frames must be >= 1, got {max_frames}")
    idx = list(range(start, n, stride))
    return idx if max_frames is None else idx[:max_frames]


def list_sequences(dataset: str, root: str | Path, resolution: str = DEFAULT_DAVIS_RESOLUTION) -> list[str]:
    """Sequence names available under ``root`` for ``dataset`` (sorted)."""
    dataset = _check_dataset(dataset)
    root = Path(root)
    if dataset == "davis":
        base = root / "JPEGImages" / resolution
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "rgb.txt").is_file())


def read_rgb_list(path: str | Path) -> list[tuple[str, str]]:
    """Parse a TUM ``rgb.txt``: ``[(timestamp string, relative file name), ...]`` in file order.

    Raises:
        EvaluationError: unreadable file, a line without ``timestamp filename``, or a non-numeric timestamp.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EvaluationError(f"cannot read {path}: {exc.strerror or exc}") from exc
    entries = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        parts = body.split()
        if len(parts) < 2:
            raise EvaluationError(f"{path}:{lineno}: expected 'timestamp filename', got {body!r}")
        if not _TIMESTAMP.match(parts[0]):
            raise EvaluationError(f"{path}:{lineno}: timestamp {parts[0]!r} is not a number of seconds")
        entries.append((parts[0], parts[1]))
    if not entries:
        raise EvaluationError(f"{path} lists no images")
    return entries


def _open_davis(root: Path, sequence: str, resolution: str) -> tuple[list[Path], list[str], Path]:
    image_dir = root / "JPEGImages" / resolution / sequence
    gt_dir = root / "Annotations" / resolution / sequence
    if not image_dir.is_dir():
        raise EvaluationError(f"DAVIS frames not found: {image_dir} (expected ROOT/JPEGImages/{resolution}/<seq>)")
    if not gt_dir.is_dir():
        raise EvaluationError(f"DAVIS annotations not found: {gt_dir} (expected ROOT/Annotations/{resolution}/<seq>)")
    images = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in _DAVIS_IMAGE_SUFFIXES)
    if not images:
        raise EvaluationError(f"no images ({', '.join(_DAVIS_IMAGE_SUFFIXES)}) in {image_dir}")
    return images, [p.stem for p in images], gt_dir


def _open_tum(root: Path, sequence: str) -> tuple[list[Path], list[str], Path]:
    seq_dir = root / sequence
    rgb_list = seq_dir / "rgb.txt"
    gt = seq_dir / "groundtruth.txt"
    if not rgb_list.is_file():
        raise EvaluationError(f"{rgb_list} not found (expected ROOT/<seq>/rgb.txt, rgb/, groundtruth.txt)")
    if not gt.is_file():
        raise EvaluationError(f"{gt} not found (expected ROOT/<seq>/groundtruth.txt)")
    entries = read_rgb_list(rgb_list)
    images = [seq_dir / rel for _, rel in entries]
    absent = [str(p.relative_to(seq_dir)) for p in images if not p.is_file()]
    if absent:
        more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
        raise EvaluationError(f"{rgb_list} names images that do not exist: {', '.join(absent[:5])}{more}")
    return images, [stamp for stamp, _ in entries], gt


def open_sequence(
    dataset: str,
    root: str | Path,
    sequence: str,
    start: int = 0,
    stride: int = 1,
    max_frames: Optional[int] = None,
    resolution: str = DEFAULT_DAVIS_RESOLUTION,
) -> SequenceFrames:
    """Find a sequence's frames and ground truth, and apply the frame selection.

    Raises:
        EvaluationError: unknown dataset, missing folders/files, or a selection that leaves no frame.
    """
    dataset = _check_dataset(dataset)
    root = Path(root)
    if not root.is_dir():
        raise EvaluationError(f"dataset root {root} does not exist or is not a folder")
    if dataset == "davis":
        images, names, gt_masks = _open_davis(root, sequence, resolution)
        gt_traj = None
    else:
        images, names, gt_traj = _open_tum(root, sequence)
        gt_masks = None
    idx = _select(len(images), start, stride, max_frames)
    if not idx:
        raise EvaluationError(f"selection start={start} stride={stride} leaves no frame of the {len(images)} "
                              f"frames of {sequence}")
    logger.info("%s/%s: %d of %d frames selected", dataset, sequence, len(idx), len(images))
    return SequenceFrames(dataset=dataset, name=sequence, images=[images[i] for i in idx],
                          frame_names=[names[i] for i in idx], gt_masks=gt_masks, gt_trajectory=gt_traj,
                          total_frames=len(images))


def stage_frames(frames: SequenceFrames, directory: str | Path) -> Path:
    """Lay the selected frames out as one folder ``vggt4d run`` reads in order: ``<frame name><suffix>``.

    Files are symbolic links to the dataset images (copies where links are not possible). TUM / Bonn names
    are the ``rgb.txt`` timestamps, which ``vggt4d run`` takes as the frame times, so its ``poses_tum.txt``
    shares the ground truth's clock.

    Raises:
        EvaluationError: the names would not sort in temporal order (``vggt4d run`` sorts a folder by name),
            or two frames share a name.
    """
    directory = Path(directory)
    names = frames.frame_names
    if len(set(names)) != len(names):
        raise EvaluationError(f"sequence {frames.name} has repeated frame names; cannot stage it")
    files = [f"{n}{p.suffix.lower()}" for n, p in zip(names, frames.images)]
    if sorted(files) != files:
        raise EvaluationError(
            f"frame names of {frames.name} do not sort in temporal order (e.g. timestamps with different digit "
            f"counts); cannot stage them as one folder"
        )
    directory.mkdir(parents=True, exist_ok=True)
    for fname, src in zip(files, frames.images):
        dst = directory / fname
        try:
            os.symlink(src.resolve(), dst)
        except OSError:
            shutil.copyfile(src, dst)
    return directory
