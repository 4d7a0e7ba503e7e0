"""rosbag2 files without a ROS installation (``rosbags``): write camera bags, open bags for reading.

Used by the synthetic demo/test data (a bag of ``sensor_msgs/Image`` + ``sensor_msgs/CameraInfo``, optionally with
a robot's ``/tf`` and ``/tf_static``), by the offline
``vggt4d run --input BAG`` and by ``vggt4d replay``. Messages are typed with the ROS 2 Kilted type store, whose
type hashes equal those of the rclpy wheels, so the bags play in ``ros2 bag`` as well.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

STORAGES = ("mcap", "sqlite3")
TF_TYPE = "tf2_msgs/msg/TFMessage"
#: One TF edge for :func:`write_camera_bag`: ``(parent frame, child frame, transform)``, the transform ``[4, 4]``
#: (``/tf_static``) or ``[N, 4, 4]`` (``/tf``, one per frame) being the pose of the child in the parent frame.
TfEdge = Tuple[str, str, np.ndarray]


def _require_rosbags():
    try:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore
    except ImportError as exc:  # pragma: no cover - rosbags is part of every set-up
        raise ImportError("bags need the 'rosbags' package: pip install 'vggt4d_ros[bags]'") from exc
    return Writer, StoragePlugin, get_typestore(Stores.ROS2_KILTED)


def typestore():
    """The ROS 2 Kilted ``rosbags`` type store (message classes and CDR (de)serialisation)."""
    return _require_rosbags()[2]


def _header(ts, stamp_ns: int, frame_id: str):
    Time = ts.types["builtin_interfaces/msg/Time"]
    Header = ts.types["std_msgs/msg/Header"]
    return Header(stamp=Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000)),
                  frame_id=frame_id)


def _image_msg(ts, image: np.ndarray, stamp_ns: int, frame_id: str, compressed: bool):
    header = _header(ts, stamp_ns, frame_id)
    if compressed:
        from PIL import Image as PILImage

        buf = io.BytesIO()
        PILImage.fromarray(image).save(buf, format="PNG")
        cls = ts.types["sensor_msgs/msg/CompressedImage"]
        return cls(header=header, format="png", data=np.frombuffer(buf.getvalue(), dtype=np.uint8))
    cls = ts.types["sensor_msgs/msg/Image"]
    h, w, _ = image.shape
    return cls(header=header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3,
               data=np.ascontiguousarray(image, dtype=np.uint8).reshape(-1))


def _camera_info_msg(ts, K: np.ndarray, size_hw: tuple[int, int], stamp_ns: int, frame_id: str):
    cls = ts.types["sensor_msgs/msg/CameraInfo"]
    roi = ts.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    P = np.zeros((3, 4))
    P[:, :3] = K
    return cls(header=_header(ts, stamp_ns, frame_id), height=int(size_hw[0]), width=int(size_hw[1]),
               distortion_model="plumb_bob", d=np.zeros(5), k=np.asarray(K, dtype=np.float64).reshape(9),
               r=np.eye(3).reshape(9), p=P.reshape(12), binning_x=0, binning_y=0, roi=roi)


def tf_message(edges: Sequence[TfEdge], stamp_ns: int, ts=None):
    """``tf2_msgs/msg/TFMessage`` (a ``rosbags`` message of the Kilted type store ``ts``) of ``(parent, child,
    T [4, 4])`` edges, each stamped ``stamp_ns``."""
    from scipy.spatial.transform import Rotation

    ts = typestore() if ts is None else ts
    types = ts.types
    out = []
    for parent, child, T in edges:
        T = np.asarray(T, dtype=np.float64)
        q = Rotation.from_matrix(T[:3, :3]).as_quat()  # x, y, z, w
        out.append(types["geometry_msgs/msg/TransformStamped"](
            header=_header(ts, stamp_ns, parent), child_frame_id=child,
            transform=types["geometry_msgs/msg/Transform"](
                translation=types["geometry_msgs/msg/Vector3"](x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                rotation=types["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]),
                                                               w=float(q[3])))))
    return types[TF_TYPE](transforms=out)


def _check_tf(tf: Sequence[TfEdge], tf_static: Sequence[TfEdge], frames: int) -> None:
    for parent, child, T in tf:
        if np.asarray(T).shape != (frames, 4, 4):
            raise ValueError(f"/tf {parent} -> {child}: expected [{frames}, 4, 4] transforms (one per frame), got "
                             f"{list(np.asarray(T).shape)}")
    for parent, child, T in tf_static:
        if np.asarray(T).shape != (4, 4):
            raise ValueError(f"/tf_static {parent} -> {child}: expected a [4, 4] transform, got "
                             f"{list(np.asarray(T).shape)}")


def write_camera_bag(path: str | Path, images: Sequence[np.ndarray] | np.ndarray, stamps_ns: Sequence[int],
                     *, intrinsics: Optional[np.ndarray] = None, frame_id: str = "camera_optical",
                     image_topic: str = "/image", info_topic: str = "/camera_info", storage: str = "mcap",
                     compressed: bool = False, receive_ns: Optional[Sequence[int]] = None,
                     tf: Sequence[TfEdge] = (), tf_static: Sequence[TfEdge] = ()) -> Path:
    """Write ``images [N, H, W, 3]`` uint8 (and optionally ``intrinsics [N, 3, 3]`` as CameraInfo) to a bag.

    ``image_topic`` carries ``sensor_msgs/Image`` rgb8 (or ``CompressedImage`` PNG on ``<image_topic>/compressed``
    when ``compressed``). The bag's receive time of each message equals its header stamp, or ``receive_ns[i]``
    when given (e.g. increasing receive times with header stamps that jump back, as a camera whose clock was
    reset records). ``images`` may differ in size. ``path`` must not exist.

    A robot's TF, as it would be recorded with the camera: ``tf_static`` edges ``(parent, child, T [4, 4])`` go into
    one ``/tf_static`` message at the start (stamped with the first frame's stamp); ``tf`` edges
    ``(parent, child, T [N, 4, 4])`` give one ``/tf`` message per frame, stamped with the frame's stamp and written
    just before the frame's camera_info and image (``tf2_msgs/msg/TFMessage``).
    """
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    if len(images) != len(stamps_ns):
        raise ValueError(f"{len(images)} images but {len(stamps_ns)} stamps")
    if receive_ns is not None and len(receive_ns) != len(images):
        raise ValueError(f"{len(images)} images but {len(receive_ns)} receive times")
    if intrinsics is not None and len(intrinsics) != len(images):
        raise ValueError(f"{len(images)} images but {len(intrinsics)} intrinsics")
    _check_tf(tf, tf_static, len(images))
    Writer, StoragePlugin, ts = _require_rosbags()
    path = Path(path)
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    img_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    topic = f"{image_topic.rstrip('/')}/compressed" if compressed else image_topic
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        img_conn = writer.add_connection(topic, img_type, typestore=ts)
        info_conn = (writer.add_connection(info_topic, "sensor_msgs/msg/CameraInfo", typestore=ts)
                     if intrinsics is not None else None)
        tf_conn = writer.add_connection("/tf", TF_TYPE, typestore=ts) if len(tf) else None
        if len(tf_static) and len(images):
            static_conn = writer.add_connection("/tf_static", TF_TYPE, typestore=ts)
            msg = tf_message(tf_static, int(stamps_ns[0]), ts)
            t_bag = int(stamps_ns[0]) if receive_ns is None else int(receive_ns[0])
            writer.write(static_conn, t_bag, bytes(ts.serialize_cdr(msg, msg.__msgtype__)))
        for i, (image, stamp) in enumerate(zip(images, stamps_ns)):
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"image {i} must be [H, W, 3] uint8, got {image.shape} {image.dtype}")
            stamp = int(stamp)
            t_bag = stamp if receive_ns is None else int(receive_ns[i])
            if tf_conn is not None:
                msg = tf_message([(parent, child, T[i]) for parent, child, T in tf], stamp, ts)
                writer.write(tf_conn, t_bag, bytes(ts.serialize_cdr(msg, msg.__msgtype__)))
            if info_conn is not None:
                info = _camera_info_msg(ts, intrinsics[i], image.shape[:2], stamp, frame_id)
                writer.write(info_conn, t_bag, bytes(ts.serialize_cdr(info, info.__msgtype__)))
            msg = _image_msg(ts, image, stamp, frame_id, compressed)
            writer.write(img_conn, t_bag, bytes(ts.serialize_cdr(msg, msg.__msgtype__)))
    logger.info("wrote %d frames to bag %s (%s)", len(images), path, storage)
    return path
