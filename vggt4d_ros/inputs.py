"""Offline frame sources: a folder of images, a video file, or a rosbag2 bag (sqlite3 or mcap).

Folders need only Pillow; videos need PyAV; bags are read with ``rosbags`` and decoded with the node's own image
conversions (so they need the ROS 2 Python message packages). Every reader yields RGB ``uint8`` arrays
``[H, W, 3]`` with a timestamp in nanoseconds.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
DEFAULT_PERIOD_NS = 100_000_000  # 10 Hz when the source carries no timestamps
_STAMP_RE = re.compile(r"^\d+(\.\d+)?$")


class InputError(ValueError):
    """The input cannot be read (missing, empty, unsupported or corrupt)."""


@dataclass
class FrameRecord:
    """One input frame: ``image [H, W, 3]`` uint8 RGB, ``stamp_ns``, and a name used for output files."""

    image: np.ndarray
    stamp_ns: int
    name: str


def _stamp_from_name(stem: str, index: int) -> int:
    """TUM-style names (``1305031102.175304``) are seconds; anything else gets ``index * 100 ms``."""
    if _STAMP_RE.match(stem):
        whole, _, frac = stem.partition(".")
        return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])
    return index * DEFAULT_PERIOD_NS


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]``; transparent pixels are composited over white (as the model preprocessing does)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("RGB"))


def _read_folder(path: Path) -> Iterator[FrameRecord]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
    for i, f in enumerate(files):
        try:
            with Image.open(f) as img:
                arr = pil_to_rgb(img)
        except OSError as exc:
            raise InputError(f"cannot read image {f}: {exc}") from exc
        yield FrameRecord(arr, _stamp_from_name(f.stem, i), f.stem)


def _read_video(path: Path) -> Iterator[FrameRecord]:
    try:
        import av
    except ImportError as exc:
        raise InputError("reading videos needs PyAV: pip install 'vggt4d_ros[video]'") from exc
    try:
        container = av.open(str(path))
    except Exception as exc:  # PyAV raises its own error hierarchy
        raise InputError(f"cannot open video {path}: {exc}") from exc
    with container:
        stream = container.streams.video[0]
        for i, frame in enumerate(container.decode(stream)):
            if frame.pts is not None and frame.time_base is not None:
                stamp = int(round(float(frame.pts * frame.time_base) * 1e9))
            else:
                stamp = i * DEFAULT_PERIOD_NS
            yield FrameRecord(frame.to_ndarray(format="rgb24"), stamp, f"{i:06d}")


IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def _read_bag(path: Path, topic: Optional[str]) -> Iterator[FrameRecord]:
    try:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore
    except ImportError as exc:
        raise InputError("reading bags needs rosbags: pip install 'vggt4d_ros[bags]'") from exc
    # The node's decoders only read message fields, so they accept rosbags' message objects as well; importing
    # them needs the ROS 2 Python messages (a sourced ROS 2, or the PyPI wheels of requirements/dev.txt).
    try:
        from vggt4d_ros.ros.conversions import ImageConversionError, compressed_to_rgb, image_to_rgb
    except ImportError as exc:
        raise InputError(f"reading bags needs the ROS 2 Python message packages ({exc}); source a ROS 2 "
                         "installation or use the project's set-up (README)") from exc

    try:
        reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_KILTED))
        reader.open()
    except Exception as exc:
        raise InputError(f"cannot open bag {path}: {exc}") from exc
    try:
        conns = [c for c in reader.connections if c.msgtype in IMAGE_TYPES]
        if topic is not None:
            conns = [c for c in conns if c.topic == topic]
        if not conns:
            available = sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections})
            raise InputError(f"bag {path} has no image topic{'' if topic is None else ' ' + topic}; "
                             f"topics: {', '.join(available) or 'none'}")
        topics = sorted({c.topic for c in conns})
        if len(topics) > 1:
            raise InputError(f"bag {path} has several image topics ({', '.join(topics)}); choose one with --topic")
        for i, (conn, _t, raw) in enumerate(reader.messages(connections=conns)):
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
            decode = compressed_to_rgb if conn.msgtype.endswith("CompressedImage") else image_to_rgb
            try:
                image = decode(msg)
            except ImageConversionError as exc:
                raise InputError(f"bag {path}, {conn.topic} message {i}: {exc}") from exc
            yield FrameRecord(image, stamp, f"{i:06d}")
    finally:
        reader.close()


def read_frames(path: str | Path, *, topic: Optional[str] = None, stride: int = 1,
                max_frames: Optional[int] = None) -> list[FrameRecord]:
    """Read every ``stride``-th frame (at most ``max_frames``) from a folder, video or bag.

    A bag is a rosbag2 directory (``metadata.yaml`` inside) or a single ``.mcap`` / ``.db3`` file.
    Raises :class:`InputError` with the reason when the input cannot be used.
    """
    if stride < 1:
        raise InputError(f"stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise InputError(f"max_frames must be >= 1, got {max_frames}")
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir() and (path / "metadata.yaml").exists() or path.suffix.lower() in (".mcap", ".db3"):
        source = _read_bag(path, topic)
    elif path.is_dir():
        source = _read_folder(path)
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        source = _read_video(path)
    else:
        raise InputError(f"unsupported input {path}: expected a folder of images, a video "
                         f"({', '.join(VIDEO_SUFFIXES)}) or a rosbag2 bag")
    frames: list[FrameRecord] = []
    for i, rec in enumerate(source):
        if i % stride:
            continue
        frames.append(rec)
        if max_frames is not None and len(frames) >= max_frames:
            break
    if not frames:
        raise InputError(f"no frames could be read from {path}")
    shapes = {f.image.shape for f in frames}
    if len(shapes) > 1:
        logger.warning("input frames have %d different sizes %s; each is preprocessed to the model size",
                       len(shapes), sorted(shapes))
    return frames
