"""Conversions between ROS 2 messages and numpy arrays: images, point clouds, poses, stamps.

This is the one place where the node turns messages into arrays and back. It replaces cv_bridge,
sensor_msgs_py.point_cloud2 and tf_transformations (none of which installs from PyPI next to the
ROS 2 wheels) and is wire-compatible with them:

* ``sensor_msgs/Image``: encodings ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8``, ``mono8`` as defined in
  ``sensor_msgs/image_encodings.hpp``; ``step`` is the row length in bytes (rows may be padded);
  ``is_bigendian`` is irrelevant for 8-bit channels. Written images have ``step = width *
  channels`` and ``is_bigendian = 0``, as ``cv_bridge.cv2_to_imgmsg`` produces.
* ``sensor_msgs/CompressedImage``: JPEG or PNG payloads (``format`` such as ``"jpeg"`` or
  image_transport's ``"rgb8; jpeg compressed bgr8"``), decoded with Pillow to RGB.
* ``sensor_msgs/PointCloud2``: written as ``create_cloud`` in sensor_msgs_py and PCL's
  ``PointXYZRGB`` do: one row (``height = 1``), little-endian, fields ``x``, ``y``, ``z`` (FLOAT32
  at offsets 0, 4, 8) and ``rgb`` (FLOAT32 at offset 12 whose four bytes are the uint32
  ``0x00RRGGBB``), ``point_step = 16`` (12 without colours). Reading builds a numpy structured
  dtype from ``fields``, ``point_step``, ``row_step`` and ``is_bigendian``, so any field order,
  padding and extra fields work.
* Poses: quaternions are ``(x, y, z, w)`` as in ``geometry_msgs/Quaternion`` (scipy's default
  order; tf_transformations also returns x, y, z, w), canonicalised to ``w >= 0``.

All functions are vectorised; message byte buffers are filled with ``ndarray.tobytes()``, which is
about 40x faster than assigning arrays element by element.
"""

from __future__ import annotations

import io
from typing import Iterable, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion, Transform, TransformStamped, Vector3
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

__all__ = [
    "ConversionError",
    "ImageConversionError",
    "PointCloudConversionError",
    "IMAGE_ENCODINGS",
    "image_to_rgb",
    "rgb_to_image",
    "mask_to_image",
    "compressed_to_rgb",
    "points_to_pointcloud2",
    "pointcloud2_to_array",
    "pack_rgb",
    "unpack_rgb",
    "matrix_to_transform",
    "matrix_to_transform_stamped",
    "matrix_to_pose",
    "matrices_to_poses",
    "pose_to_matrix",
    "transform_to_matrix",
    "matrix_to_quaternion",
    "quaternion_to_matrix",
    "stamp_to_ns",
    "ns_to_stamp",
]

class ConversionError(ValueError):
    """A message cannot be converted: what is wrong with it and what was expected."""


class ImageConversionError(ConversionError):
    """An Image or CompressedImage message has an unsupported encoding or inconsistent sizes."""


class PointCloudConversionError(ConversionError):
    """A PointCloud2 message has inconsistent sizes or lacks the expected fields."""


#: Supported ``sensor_msgs/Image`` encodings and their channel count (8 bits per channel).
IMAGE_ENCODINGS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}

# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------


def _as_uint8_buffer(data: object) -> np.ndarray:
    """``data`` (bytes, array.array, memoryview, ndarray or list) as a flat uint8 array, without a
    copy where the object exposes a contiguous buffer."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)  # type: ignore[arg-type]
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def _copy_header(header: Header | None) -> Header:
    out = Header()
    if header is not None:
        out.stamp = Time(sec=header.stamp.sec, nanosec=header.stamp.nanosec)
        out.frame_id = header.frame_id
    return out


def image_to_rgb(msg: Image) -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` into an RGB array.

    Args:
        msg: image with encoding ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8`` or ``mono8``; rows of
            ``step`` bytes (``step >= width * channels``; padding bytes are skipped).

    Returns:
        ``[H, W, 3]`` uint8, C-contiguous, owning its memory (alpha dropped, mono replicated).

    Raises:
        ImageConversionError: unknown encoding, empty image, ``step`` shorter than a row, or
            ``len(data) != step * height``.
    """
    encoding = msg.encoding
    channels = IMAGE_ENCODINGS.get(encoding)
    if channels is None:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r}; expected one of {sorted(IMAGE_ENCODINGS)}"
        )
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ImageConversionError(f"empty {encoding} image ({width}x{height})")
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageConversionError(
            f"{encoding} image {width}x{height}: step {step} is smaller than width*channels = {row_bytes}"
        )
    buf = _as_uint8_buffer(msg.data)
    if buf.size != step * height:
        raise ImageConversionError(
            f"{encoding} image {width}x{height}: data has {buf.size} bytes, expected step*height = "
            f"{step}*{height} = {step * height}"
        )
    pixels = buf.reshape(height, step)[:, :row_bytes].reshape(height, width, channels)
    if encoding == "rgb8":
        return pixels.copy()
    if encoding == "rgba8":
        return np.ascontiguousarray(pixels[:, :, :3])
    if encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))  # mono8


def _rgb_to_mono(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma with OpenCV's fixed-point rounding (``cv2.COLOR_RGB2GRAY``): ``[H, W]``."""
    r = rgb[..., 0].astype(np.uint32)
    g = rgb[..., 1].astype(np.uint32)
    b = rgb[..., 2].astype(np.uint32)
    return ((r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14).astype(np.uint8)


def rgb_to_image(rgb: np.ndarray, header: Header | None = None, encoding: str = "rgb8") -> Image:
    """Encode an RGB array as a ``sensor_msgs/Image``.

    Args:
        rgb: ``[H, W, 3]`` uint8, RGB channel order.
        header: copied into the message (stamp and frame_id); ``None`` leaves the default header.
        encoding: ``rgb8``, ``bgr8``, ``rgba8`` / ``bgra8`` (alpha 255) or ``mono8`` (BT.601 luma).

    Returns:
        Image with ``step = W * channels``, ``is_bigendian = 0``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageConversionError(f"expected an RGB array uint8 [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageConversionError(f"cannot encode an empty image of shape {list(rgb.shape)}")
    channels = IMAGE_ENCODINGS.get(encoding)
    if channels is None:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r}; expected one of {sorted(IMAGE_ENCODINGS)}"
        )
    height, width = rgb.shape[:2]
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = rgb[:, :, ::-1]
    elif encoding in ("rgba8", "bgra8"):
        pixels = np.empty((height, width, 4), dtype=np.uint8)
        pixels[:, :, :3] = rgb if encoding == "rgba8" else rgb[:, :, ::-1]
        pixels[:, :, 3] = 255
    else:
        pixels = _rgb_to_mono(rgb)
    msg = Image()
    msg.header = _copy_header(header)
    msg.height = height
    msg.width = width
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = width * channels
    msg.data = np.ascontiguousarray(pixels).tobytes()
    return msg


def mask_to_image(mask: np.ndarray, header: Header | None = None) -> Image:
    """Encode a boolean mask ``[H, W]`` as a ``mono8`` image: 255 where true (dynamic), 0 elsewhere.

    Integer masks are accepted (non-zero = true); floating-point masks are rejected, because a
    threshold would have to be chosen.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ImageConversionError(f"expected a mask [H, W], got shape {list(mask.shape)}")
    if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.integer):
        raise ImageConversionError(f"expected a bool or integer mask, got dtype {mask.dtype}")
    if mask.size == 0:
        raise ImageConversionError(f"cannot encode an empty mask of shape {list(mask.shape)}")
    height, width = mask.shape
    msg = Image()
    msg.header = _copy_header(header)
    msg.height = height
    msg.width = width
    msg.encoding = "mono8"
    msg.is_bigendian = 0
    msg.step = width
    msg.data = np.where(mask != 0, np.uint8(255), np.uint8(0)).tobytes()
    return msg


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """Decode a JPEG or PNG ``sensor_msgs/CompressedImage`` into ``[H, W, 3]`` uint8 RGB.

    Grey, palette and alpha images are converted to RGB (alpha dropped). The payload decides the
    codec; ``msg.format`` only appears in error messages.
    """
    from PIL import Image as PILImage  # imported here: only the compressed input path needs it

    buf = _as_uint8_buffer(msg.data)
    if buf.size == 0:
        raise ImageConversionError(f"empty CompressedImage (format {msg.format!r})")
    try:
        with PILImage.open(io.BytesIO(buf.tobytes())) as img:
            if img.format not in ("JPEG", "PNG"):
                raise ImageConversionError(
                    f"CompressedImage (format {msg.format!r}) holds {img.format}, expected JPEG or PNG"
                )
            if img.mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"):
                raise ImageConversionError(
                    f"CompressedImage (format {msg.format!r}) has pixel mode {img.mode!r}; "
                    "expected 8-bit grey, palette, RGB or RGBA"
                )
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except ImageConversionError:
        raise
    except Exception as exc:  # Pillow raises several types for corrupt data
        raise ImageConversionError(
            f"cannot decode CompressedImage (format {msg.format!r}, {buf.size} bytes): {exc}"
        ) from exc
    return np.ascontiguousarray(rgb)


# ----------------------------------------------------------------------------------------------
# Point clouds
# ----------------------------------------------------------------------------------------------

_POINTFIELD_DTYPES: dict[int, str] = {
    PointField.INT8: "i1",
    PointField.UINT8: "u1",
    PointField.INT16: "i2",
    PointField.UINT16: "u2",
    PointField.INT32: "i4",
    PointField.UINT32: "u4",
    PointField.FLOAT32: "f4",
    PointField.FLOAT64: "f8",
}


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """``[N, 3]`` uint8 RGB -> ``[N]`` uint32 ``0x00RRGGBB`` (PCL's packed ``rgb``)."""
    c = np.asarray(colors, dtype=np.uint32)
    return (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """``[N]`` uint32 ``0x00RRGGBB`` (or the float32 holding those bytes) -> ``[N, 3]`` uint8 RGB."""
    p = np.asarray(packed)
    if p.dtype != np.uint32:
        p = np.ascontiguousarray(p).view(np.uint32) if p.dtype.itemsize == 4 else p.astype(np.uint32)
    return np.stack([(p >> 16) & 0xFF, (p >> 8) & 0xFF, p & 0xFF], axis=-1).astype(np.uint8)


def points_to_pointcloud2(
    points: np.ndarray, colors: np.ndarray | None = None, header: Header | None = None
) -> PointCloud2:
    """Build an unorganised ``sensor_msgs/PointCloud2`` (``height = 1``).

    Args:
        points: ``[N, 3]`` positions (cast to float32).
        colors: ``[N, 3]`` uint8 RGB, or ``None`` for an x, y, z-only cloud.
        header: copied into the message.

    Returns:
        Fields x, y, z (FLOAT32 at 0, 4, 8) plus rgb (FLOAT32 at 12 holding ``0x00RRGGBB``) when
        colours are given; ``point_step`` 16 (12 without colours), little-endian, ``is_dense``
        true when every coordinate is finite.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise PointCloudConversionError(f"expected points [N, 3], got shape {list(pts.shape)}")
    n = pts.shape[0]
    with_rgb = colors is not None
    step = 16 if with_rgb else 12
    buf = np.empty((n, step // 4), dtype="<f4")
    buf[:, :3] = pts
    if with_rgb:
        cols = np.asarray(colors)
        if cols.shape != (n, 3):
            raise PointCloudConversionError(f"expected colors [N, 3] = [{n}, 3], got shape {list(cols.shape)}")
        if cols.dtype != np.uint8:
            raise PointCloudConversionError(f"expected uint8 colors, got dtype {cols.dtype}")
        buf.view("<u4")[:, 3] = pack_rgb(cols)
    fields = [
        PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
        PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
        PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
    ]
    if with_rgb:
        fields.append(PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1))
    msg = PointCloud2()
    msg.header = _copy_header(header)
    msg.height = 1
    msg.width = n
    msg.fields = fields
    msg.is_bigendian = False
    msg.point_step = step
    msg.row_step = step * n
    msg.is_dense = bool(np.isfinite(buf[:, :3]).all())
    msg.data = buf.tobytes()
    return msg


def _cloud_dtype(msg: PointCloud2) -> np.dtype:
    order = ">" if msg.is_bigendian else "<"
    names: list[str] = []
    formats: list[object] = []
    offsets: list[int] = []
    for field in msg.fields:
        code = _POINTFIELD_DTYPES.get(field.datatype)
        if code is None:
            raise PointCloudConversionError(f"field {field.name!r} has unknown PointField datatype {field.datatype}")
        if field.name in names:
            raise PointCloudConversionError(f"field {field.name!r} appears twice")
        count = max(int(field.count), 1)
        item = np.dtype(order + code)
        end = field.offset + item.itemsize * count
        if end > msg.point_step:
            raise PointCloudConversionError(
                f"field {field.name!r} (offset {field.offset}, {count} x {item.itemsize} bytes) ends at "
                f"byte {end}, beyond point_step {msg.point_step}"
            )
        names.append(field.name)
        formats.append(item if count == 1 else (item, (count,)))
        offsets.append(int(field.offset))
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(msg.point_step)})


def pointcloud2_to_array(msg: PointCloud2) -> tuple[np.ndarray, np.ndarray | None]:
    """Read positions and colours of a ``sensor_msgs/PointCloud2``.

    Args:
        msg: cloud with FLOAT32/FLOAT64 (or integer) fields ``x``, ``y``, ``z`` and optionally
            ``rgb`` or ``rgba`` (4 bytes ``0x00RRGGBB``, stored as FLOAT32 or UINT32); any field order,
            any ``point_step``, rows padded to ``row_step``; other fields are ignored.

    Returns:
        ``(points [N, 3] float32, colors [N, 3] uint8 or None)`` with ``N = width * height`` in
        row-major order. Invalid (NaN) points are kept.
    """
    names = [f.name for f in msg.fields]
    missing = [axis for axis in ("x", "y", "z") if axis not in names]
    if missing:
        raise PointCloudConversionError(f"PointCloud2 lacks field(s) {missing}; has {names}")
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    dtype = _cloud_dtype(msg)
    if row_step < width * point_step:
        raise PointCloudConversionError(
            f"row_step {row_step} is smaller than width*point_step = {width}*{point_step}"
        )
    buf = _as_uint8_buffer(msg.data)
    if buf.size != row_step * height:
        raise PointCloudConversionError(
            f"PointCloud2 data has {buf.size} bytes, expected row_step*height = {row_step}*{height} = "
            f"{row_step * height}"
        )
    n = width * height
    if n == 0:
        return np.zeros((0, 3), np.float32), (np.zeros((0, 3), np.uint8) if _color_field(names) else None)
    rows = buf.reshape(height, row_step)[:, : width * point_step]
    cloud = np.ascontiguousarray(rows).reshape(-1).view(dtype)
    points = np.empty((n, 3), dtype=np.float32)
    for i, axis in enumerate(("x", "y", "z")):
        col = cloud[axis]
        points[:, i] = col if col.ndim == 1 else col[:, 0]
    color_name = _color_field(names)
    if color_name is None:
        return points, None
    raw = cloud[color_name]
    if raw.ndim != 1 or raw.dtype.itemsize != 4:
        raise PointCloudConversionError(
            f"field {color_name!r} must be one 4-byte value (packed 0x00RRGGBB), got {raw.dtype} x {raw.shape[1:]}"
        )
    # Reinterpret the 4 bytes as an unsigned integer in the cloud's byte order (no float arithmetic:
    # a packed colour is a denormal or NaN when read as float32).
    order = ">" if msg.is_bigendian else "<"
    packed = np.ascontiguousarray(raw).view(order + "u4").astype(np.uint32)
    return points, unpack_rgb(packed)


def _color_field(names: Sequence[str]) -> str | None:
    for name in ("rgb", "rgba"):
        if name in names:
            return name
    return None


# ----------------------------------------------------------------------------------------------
# Poses, transforms and stamps
# ----------------------------------------------------------------------------------------------


def _check_rigid(T: np.ndarray, what: str = "T") -> np.ndarray:
    """``T`` as float64 ``[..., 4, 4]``, checked to be a finite rigid transform."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape[-2:] != (4, 4):
        raise ValueError(f"expected {what} of shape [..., 4, 4], got {list(T.shape)}")
    if not np.isfinite(T).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    if not np.allclose(T[..., 3, :], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise ValueError(f"{what} must have a last row [0, 0, 0, 1], got {T[..., 3, :].tolist()}")
    R = T[..., :3, :3]
    eye = np.broadcast_to(np.eye(3), R.shape)
    if not np.allclose(np.swapaxes(R, -1, -2) @ R, eye, atol=1e-4) or (np.linalg.det(R) <= 0).any():
        raise ValueError(
            f"the rotation block of {what} is not a proper rotation (R^T R != I or det(R) <= 0); "
            "remove any Sim(3) scale before converting"
        )
    return T


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[..., 3, 3]`` -> unit quaternions ``[..., 4]`` as (x, y, z, w), ``w >= 0``."""
    R = np.asarray(R, dtype=np.float64)
    flat = R.reshape(-1, 3, 3)
    q = Rotation.from_matrix(flat).as_quat()
    # Canonical sign as scipy >= 1.12's as_quat(canonical=True): the first non-zero of (w, x, y, z) is positive.
    # Done here so that older scipy (Ubuntu 24.04 ships 1.11) serves as well.
    lead = np.where(q[:, 3] != 0, q[:, 3], np.where(q[:, 0] != 0, q[:, 0], np.where(q[:, 1] != 0, q[:, 1], q[:, 2])))
    q[lead < 0] *= -1.0
    return q.reshape(R.shape[:-2] + (4,))


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Quaternions ``[..., 4]`` (x, y, z, w; normalised here) -> rotation matrices ``[..., 3, 3]``."""
    q = np.asarray(q, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if not np.isfinite(q).all() or (norm < 1e-12).any():
        raise ValueError("quaternion must be finite and non-zero")
    return Rotation.from_quat((q / norm).reshape(-1, 4)).as_matrix().reshape(q.shape[:-1] + (3, 3))


def matrix_to_transform(T: np.ndarray) -> Transform:
    """Rigid transform ``[4, 4]`` -> ``geometry_msgs/Transform`` (translation, rotation x, y, z, w)."""
    T = _check_rigid(T)
    if T.shape != (4, 4):
        raise ValueError(f"expected one transform [4, 4], got {list(T.shape)}")
    q = matrix_to_quaternion(T[:3, :3])
    t = T[:3, 3]
    return Transform(
        translation=Vector3(x=float(t[0]), y=float(t[1]), z=float(t[2])),
        rotation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
    )


def matrix_to_transform_stamped(
    T: np.ndarray, stamp: Time, frame_id: str, child_frame_id: str
) -> TransformStamped:
    """``geometry_msgs/TransformStamped`` ``frame_id -> child_frame_id`` whose transform is ``T`` ``[4, 4]``
    (the pose of the child frame in the parent frame, e.g. camera-to-world for world -> camera)."""
    msg = TransformStamped()
    msg.header.stamp = Time(sec=stamp.sec, nanosec=stamp.nanosec)
    msg.header.frame_id = frame_id
    msg.child_frame_id = child_frame_id
    msg.transform = matrix_to_transform(T)
    return msg


def matrices_to_poses(T: np.ndarray) -> list[Pose]:
    """Rigid transforms ``[N, 4, 4]`` -> ``N`` ``geometry_msgs/Pose`` (quaternions computed in one batch)."""
    T = _check_rigid(T)
    if T.ndim != 3:
        raise ValueError(f"expected transforms [N, 4, 4], got {list(T.shape)}")
    q = matrix_to_quaternion(T[:, :3, :3]).tolist()
    t = T[:, :3, 3].tolist()
    return [
        Pose(
            position=Point(x=ti[0], y=ti[1], z=ti[2]),
            orientation=Quaternion(x=qi[0], y=qi[1], z=qi[2], w=qi[3]),
        )
        for ti, qi in zip(t, q)
    ]


def matrix_to_pose(T: np.ndarray) -> Pose:
    """Rigid transform ``[4, 4]`` -> ``geometry_msgs/Pose`` (position, orientation x, y, z, w)."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"expected one transform [4, 4], got {list(T.shape)}")
    return matrices_to_poses(T[None])[0]


def _to_matrix(t: Iterable[float], q: Sequence[float]) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(np.asarray(q, dtype=np.float64))
    T[:3, 3] = list(t)
    return T


def pose_to_matrix(pose: Pose) -> np.ndarray:
    """``geometry_msgs/Pose`` -> ``[4, 4]`` float64 (the quaternion is normalised)."""
    p, o = pose.position, pose.orientation
    return _to_matrix((p.x, p.y, p.z), (o.x, o.y, o.z, o.w))


def transform_to_matrix(transform: Transform) -> np.ndarray:
    """``geometry_msgs/Transform`` -> ``[4, 4]`` float64 (the quaternion is normalised)."""
    t, r = transform.translation, transform.rotation
    return _to_matrix((t.x, t.y, t.z), (r.x, r.y, r.z, r.w))


_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def stamp_to_ns(stamp: Time) -> int:
    """``builtin_interfaces/Time`` -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """Integer nanoseconds -> ``builtin_interfaces/Time`` (``nanosec`` in [0, 1e9), ``sec`` int32)."""
    ns = int(ns)
    sec, nanosec = divmod(ns, 1_000_000_000)
    if not _INT32_MIN <= sec <= _INT32_MAX:
        raise ValueError(f"{ns} ns is outside the range of builtin_interfaces/Time (int32 seconds)")
    return Time(sec=sec, nanosec=nanosec)
