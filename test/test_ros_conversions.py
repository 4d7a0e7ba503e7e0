"""vggt4d_ros.ros.conversions and vggt4d_ros.ros.qos: byte layouts, round trips, errors, and real
DDS transport (in one process and between two processes)."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, Quaternion
from PIL import Image as PILImage
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from ros_helpers import REPO_ROOT, ros_context, spin_until
from vggt4d_ros.ros import conversions as conv
from vggt4d_ros.ros.conversions import ImageConversionError, PointCloudConversionError
from vggt4d_ros.ros.qos import map_cloud_qos, qos_from_name, reliable_qos


def _header(sec: int = 12, nanosec: int = 345, frame: str = "cam_optical") -> Header:
    h = Header()
    h.stamp = Time(sec=sec, nanosec=nanosec)
    h.frame_id = frame
    return h


def _image(data: bytes, width: int, height: int, encoding: str, step: int) -> Image:
    msg = Image()
    msg.width, msg.height, msg.encoding, msg.step = width, height, encoding, step
    msg.data = data
    return msg


RGB_1x2 = np.array([[[1, 2, 3], [4, 5, 6]]], dtype=np.uint8)


# ------------------------------------------------------------------------------------------------
# Image byte layout
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoding, expected, step",
    [
        ("rgb8", b"\x01\x02\x03\x04\x05\x06", 6),
        ("bgr8", b"\x03\x02\x01\x06\x05\x04", 6),
        ("rgba8", b"\x01\x02\x03\xff\x04\x05\x06\xff", 8),
        ("bgra8", b"\x03\x02\x01\xff\x06\x05\x04\xff", 8),
    ],
)
def test_rgb_to_image_exact_bytes(encoding, expected, step):
    msg = conv.rgb_to_image(RGB_1x2, _header(), encoding)
    assert bytes(msg.data) == expected
    assert (msg.width, msg.height, msg.step, msg.encoding, msg.is_bigendian) == (2, 1, step, encoding, 0)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (12, 345, "cam_optical")


def test_rgb_to_image_mono8_uses_bt601_luma_like_opencv():
    # cv2.cvtColor(..., COLOR_RGB2GRAY) gives 76, 150, 29, 255, 0 for these pixels.
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], dtype=np.uint8)
    msg = conv.rgb_to_image(rgb, None, "mono8")
    assert bytes(msg.data) == bytes([76, 150, 29, 255, 0])
    assert (msg.step, msg.encoding) == (5, "mono8")


def test_rgb_to_image_header_is_a_copy():
    header = _header()
    msg = conv.rgb_to_image(RGB_1x2, header)
    header.frame_id = "changed"
    header.stamp.sec = 99
    assert (msg.header.frame_id, msg.header.stamp.sec) == ("cam_optical", 12)


def test_rgb_to_image_rejects_bad_input():
    with pytest.raises(ImageConversionError, match="uint8"):
        conv.rgb_to_image(RGB_1x2.astype(np.float32))
    with pytest.raises(ImageConversionError, match=r"\[H, W, 3\]"):
        conv.rgb_to_image(np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageConversionError, match="empty"):
        conv.rgb_to_image(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ImageConversionError, match="16UC1"):
        conv.rgb_to_image(RGB_1x2, None, "16UC1")


def test_mask_to_image_exact_bytes():
    mask = np.array([[True, False, True], [False, False, True]])
    msg = conv.mask_to_image(mask, _header())
    assert bytes(msg.data) == b"\xff\x00\xff\x00\x00\xff"
    assert (msg.width, msg.height, msg.step, msg.encoding) == (3, 2, 3, "mono8")
    assert msg.header.frame_id == "cam_optical"
    assert bytes(conv.mask_to_image(np.array([[0, 7]], np.uint8)).data) == b"\x00\xff"


def test_mask_to_image_rejects_bad_masks():
    with pytest.raises(ImageConversionError, match="dtype float"):
        conv.mask_to_image(np.zeros((2, 2), np.float32))
    with pytest.raises(ImageConversionError, match=r"\[H, W\]"):
        conv.mask_to_image(np.zeros((2, 2, 1), bool))
    with pytest.raises(ImageConversionError, match="empty"):
        conv.mask_to_image(np.zeros((0, 3), bool))


# ------------------------------------------------------------------------------------------------
# Image decoding
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoding, data",
    [
        ("rgb8", b"\x01\x02\x03\x04\x05\x06"),
        ("bgr8", b"\x03\x02\x01\x06\x05\x04"),
        ("rgba8", b"\x01\x02\x03\x80\x04\x05\x06\x00"),
        ("bgra8", b"\x03\x02\x01\x80\x06\x05\x04\x00"),
    ],
)
def test_image_to_rgb_known_bytes(encoding, data):
    out = conv.image_to_rgb(_image(data, 2, 1, encoding, len(data)))
    np.testing.assert_array_equal(out, RGB_1x2)
    assert out.dtype == np.uint8 and out.flags.c_contiguous and out.flags.owndata


def test_image_to_rgb_mono8_replicates_channels():
    out = conv.image_to_rgb(_image(b"\x00\x7f\xff", 3, 1, "mono8", 3))
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [127, 127, 127], [255, 255, 255]])


@pytest.mark.parametrize("encoding", sorted(conv.IMAGE_ENCODINGS))
def test_image_round_trip_each_encoding(encoding):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = conv.image_to_rgb(conv.rgb_to_image(rgb, _header(), encoding))
    if encoding == "mono8":
        luma = conv.image_to_rgb(conv.rgb_to_image(rgb, None, "mono8"))[..., 0]
        np.testing.assert_array_equal(out, np.repeat(luma[..., None], 3, axis=2))
        ref = np.round(rgb.astype(np.float64) @ [0.299, 0.587, 0.114])
        assert np.abs(luma.astype(np.float64) - ref).max() <= 1.0
    else:
        np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("encoding", ["rgb8", "bgra8", "mono8"])
def test_image_to_rgb_skips_row_padding(encoding):
    """Rows of ``step`` bytes with garbage after width*channels (as some drivers send)."""
    rng = np.random.default_rng(1)
    h, w, c = 3, 4, conv.IMAGE_ENCODINGS[encoding]
    pixels = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    step = w * c + 5
    padded = np.full((h, step), 0xAB, dtype=np.uint8)
    padded[:, : w * c] = pixels.reshape(h, w * c)
    out = conv.image_to_rgb(_image(padded.tobytes(), w, h, encoding, step))
    if encoding == "rgb8":
        expected = pixels
    elif encoding == "bgra8":
        expected = pixels[:, :, 2::-1]
    else:
        expected = np.repeat(pixels, 3, axis=2)
    np.testing.assert_array_equal(out, expected)


def test_image_to_rgb_accepts_bytes_list_and_ndarray_data():
    data = b"\x01\x02\x03\x04\x05\x06"
    for payload in (data, list(data), np.frombuffer(data, np.uint8).copy()):
        msg = Image(width=2, height=1, encoding="rgb8", step=6)
        msg.data = payload
        np.testing.assert_array_equal(conv.image_to_rgb(msg), RGB_1x2)
    # A rosbags-style dataclass (data is an ndarray) goes through the same path.
    fake = type("RosbagsImage", (), {})()
    fake.width, fake.height, fake.encoding, fake.step = 2, 1, "bgr8", 6
    fake.data = np.frombuffer(b"\x03\x02\x01\x06\x05\x04", np.uint8)
    np.testing.assert_array_equal(conv.image_to_rgb(fake), RGB_1x2)


def test_image_to_rgb_result_does_not_alias_message():
    msg = conv.rgb_to_image(RGB_1x2)
    out = conv.image_to_rgb(msg)
    out[:] = 0
    assert bytes(msg.data) == RGB_1x2.tobytes()


@pytest.mark.parametrize(
    "msg, pattern",
    [
        (_image(b"\x00" * 4, 2, 2, "16UC1", 4), r"unsupported image encoding '16UC1'"),
        (_image(b"\x00" * 6, 2, 1, "RGB8", 6), r"unsupported image encoding 'RGB8'"),
        (_image(b"", 0, 0, "rgb8", 0), r"empty rgb8 image \(0x0\)"),
        (_image(b"\x00" * 8, 4, 2, "rgb8", 4), r"step 4 is smaller than width\*channels = 12"),
        (_image(b"\x00" * 11, 2, 2, "rgb8", 6), r"data has 11 bytes, expected step\*height = 6\*2 = 12"),
        (_image(b"\x00" * 13, 2, 2, "mono8", 6), r"data has 13 bytes, expected step\*height = 6\*2 = 12"),
    ],
)
def test_image_to_rgb_errors(msg, pattern):
    with pytest.raises(ImageConversionError, match=pattern):
        conv.image_to_rgb(msg)


def test_conversion_errors_are_value_errors():
    assert issubclass(ImageConversionError, ValueError)
    assert issubclass(PointCloudConversionError, ValueError)


# ------------------------------------------------------------------------------------------------
# CompressedImage
# ------------------------------------------------------------------------------------------------


def _encode(array: np.ndarray, fmt: str, **kwargs) -> CompressedImage:
    buf = io.BytesIO()
    PILImage.fromarray(array).save(buf, format=fmt, **kwargs)
    msg = CompressedImage()
    msg.header = _header()
    msg.format = {"PNG": "png", "JPEG": "rgb8; jpeg compressed bgr8"}.get(fmt, fmt.lower())
    msg.data = buf.getvalue()
    return msg


def test_compressed_png_is_lossless():
    rgb = np.random.default_rng(2).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(conv.compressed_to_rgb(_encode(rgb, "PNG")), rgb)


def test_compressed_jpeg_decodes_close_to_original():
    yy, xx = np.mgrid[0:32, 0:48]
    rgb = np.stack([xx * 5, yy * 7, (xx + yy) * 3], axis=-1).astype(np.uint8)
    out = conv.compressed_to_rgb(_encode(rgb, "JPEG", quality=95))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 3.0


def test_compressed_grey_and_rgba_png():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    np.testing.assert_array_equal(conv.compressed_to_rgb(_encode(grey, "PNG")), np.repeat(grey[..., None], 3, 2))
    rgba = np.random.default_rng(3).integers(0, 256, (3, 4, 4), dtype=np.uint8)
    np.testing.assert_array_equal(conv.compressed_to_rgb(_encode(rgba, "PNG")), rgba[..., :3])


def test_compressed_errors():
    empty = CompressedImage(format="jpeg")
    with pytest.raises(ImageConversionError, match="empty CompressedImage"):
        conv.compressed_to_rgb(empty)
    garbage = CompressedImage(format="jpeg")
    garbage.data = b"not an image at all"
    with pytest.raises(ImageConversionError, match=r"cannot decode CompressedImage \(format 'jpeg', 19 bytes\)"):
        conv.compressed_to_rgb(garbage)
    gif = _encode(np.zeros((2, 2, 3), np.uint8), "GIF")
    with pytest.raises(ImageConversionError, match="holds GIF, expected JPEG or PNG"):
        conv.compressed_to_rgb(gif)
    deep = _encode(np.full((2, 2), 4000, np.uint16), "PNG")
    with pytest.raises(ImageConversionError, match="pixel mode 'I;16'|pixel mode 'I'"):
        conv.compressed_to_rgb(deep)


# ------------------------------------------------------------------------------------------------
# PointCloud2
# ------------------------------------------------------------------------------------------------

POINTS = np.array([[1.0, 2.0, 3.0], [-0.5, 0.0, 4.0]], dtype=np.float32)
COLORS = np.array([[255, 0, 0], [1, 2, 3]], dtype=np.uint8)


def test_pointcloud2_exact_layout_with_rgb():
    msg = conv.points_to_pointcloud2(POINTS, COLORS, _header())
    expected = struct.pack("<fffI", 1.0, 2.0, 3.0, 0x00FF0000) + struct.pack("<fffI", -0.5, 0.0, 4.0, 0x00010203)
    assert bytes(msg.data) == expected
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32, 1),
        ("y", 4, PointField.FLOAT32, 1),
        ("z", 8, PointField.FLOAT32, 1),
        ("rgb", 12, PointField.FLOAT32, 1),
    ]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 2, 16, 32)
    assert msg.is_bigendian is False and msg.is_dense is True
    assert msg.header.frame_id == "cam_optical"
    # The rgb float32 holds the packed integer's bits (sensor_msgs_py / PCL convention).
    rgb_as_float = np.frombuffer(bytes(msg.data), "<f4").reshape(2, 4)[:, 3]
    assert rgb_as_float.view("<u4").tolist() == [0x00FF0000, 0x00010203]


def test_pointcloud2_exact_layout_xyz_only():
    msg = conv.points_to_pointcloud2(POINTS, None, _header())
    assert bytes(msg.data) == struct.pack("<ffffff", 1.0, 2.0, 3.0, -0.5, 0.0, 4.0)
    assert [f.name for f in msg.fields] == ["x", "y", "z"]
    assert (msg.point_step, msg.row_step) == (12, 24)


def test_pointcloud2_is_dense_false_with_nan():
    pts = POINTS.copy()
    pts[1, 2] = np.nan
    assert conv.points_to_pointcloud2(pts, COLORS).is_dense is False


def test_pointcloud2_round_trip_and_empty():
    rng = np.random.default_rng(4)
    pts = rng.normal(size=(1000, 3)).astype(np.float32)
    cols = rng.integers(0, 256, (1000, 3), dtype=np.uint8)
    out_pts, out_cols = conv.pointcloud2_to_array(conv.points_to_pointcloud2(pts, cols))
    np.testing.assert_array_equal(out_pts, pts)
    np.testing.assert_array_equal(out_cols, cols)
    out_pts, out_cols = conv.pointcloud2_to_array(conv.points_to_pointcloud2(pts.astype(np.float64)))
    np.testing.assert_array_equal(out_pts, pts)
    assert out_cols is None
    empty = conv.points_to_pointcloud2(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))
    assert (empty.width, len(empty.data), empty.is_dense) == (0, 0, True)
    e_pts, e_cols = conv.pointcloud2_to_array(empty)
    assert e_pts.shape == (0, 3) and e_cols.shape == (0, 3)


def _field(name: str, offset: int, datatype: int, count: int = 1) -> PointField:
    return PointField(name=name, offset=offset, datatype=datatype, count=count)


def test_pointcloud2_reads_any_field_order_padding_and_extra_fields():
    """rgb first, x/y/z shuffled, an extra intensity field, 4 padding bytes per point, 2 rows with
    8 padding bytes each, FLOAT64 y."""
    fields = [
        _field("rgb", 0, PointField.UINT32),
        _field("z", 4, PointField.FLOAT32),
        _field("intensity", 8, PointField.FLOAT32),
        _field("x", 12, PointField.FLOAT32),
        _field("y", 16, PointField.FLOAT64),
    ]
    point_step, width, height = 28, 2, 2
    rows = []
    values = [((1, 2, 3), 0x00102030), ((4, 5, 6), 0x00405060), ((7, 8, 9), 0x00708090), ((10, 11, 12), 0x00A0B0C0)]
    for r in range(height):
        row = b""
        for (x, y, z), rgb in values[r * width:(r + 1) * width]:
            row += struct.pack("<I", rgb) + struct.pack("<f", z) + struct.pack("<f", 0.5) + struct.pack("<f", x)
            row += struct.pack("<d", y) + b"\xee" * 4
        rows.append(row + b"\xdd" * 8)
    msg = PointCloud2(height=height, width=width, fields=fields, is_bigendian=False, point_step=point_step,
                      row_step=width * point_step + 8, is_dense=True)
    msg.data = b"".join(rows)
    pts, cols = conv.pointcloud2_to_array(msg)
    np.testing.assert_array_equal(pts, [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]])
    np.testing.assert_array_equal(cols, [[0x10, 0x20, 0x30], [0x40, 0x50, 0x60], [0x70, 0x80, 0x90],
                                         [0xA0, 0xB0, 0xC0]])


def test_pointcloud2_reads_big_endian():
    fields = [_field(n, 4 * i, PointField.FLOAT32) for i, n in enumerate(("x", "y", "z", "rgb"))]
    data = struct.pack(">fffI", 1.5, -2.0, 3.25, 0x00123456)
    msg = PointCloud2(height=1, width=1, fields=fields, is_bigendian=True, point_step=16, row_step=16)
    msg.data = data
    pts, cols = conv.pointcloud2_to_array(msg)
    np.testing.assert_array_equal(pts, [[1.5, -2.0, 3.25]])
    np.testing.assert_array_equal(cols, [[0x12, 0x34, 0x56]])


def _xyz_cloud(**overrides) -> PointCloud2:
    msg = conv.points_to_pointcloud2(POINTS)
    for key, value in overrides.items():
        setattr(msg, key, value)
    return msg


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"fields": [_field("x", 0, PointField.FLOAT32), _field("y", 4, PointField.FLOAT32)]},
         r"lacks field\(s\) \['z'\]"),
        ({"row_step": 20}, r"row_step 20 is smaller than width\*point_step = 2\*12"),
        ({"data": b"\x00" * 23}, r"data has 23 bytes, expected row_step\*height = 24\*1 = 24"),
        ({"fields": [_field("x", 0, PointField.FLOAT32), _field("y", 4, PointField.FLOAT32),
                     _field("z", 8, PointField.FLOAT64)]}, r"field 'z' .* ends at byte 16, beyond point_step 12"),
        ({"fields": [_field("x", 0, PointField.FLOAT32), _field("y", 4, PointField.FLOAT32),
                     _field("z", 8, 42)]}, r"unknown PointField datatype 42"),
        ({"fields": [_field("x", 0, PointField.FLOAT32), _field("x", 4, PointField.FLOAT32),
                     _field("z", 8, PointField.FLOAT32)]}, r"lacks field\(s\) \['y'\]"),
        ({"fields": [_field("x", 0, PointField.FLOAT32), _field("y", 4, PointField.FLOAT32),
                     _field("z", 8, PointField.FLOAT32), _field("z", 8, PointField.FLOAT32)]},
         r"field 'z' appears twice"),
    ],
)
def test_pointcloud2_errors(overrides, pattern):
    with pytest.raises(PointCloudConversionError, match=pattern):
        conv.pointcloud2_to_array(_xyz_cloud(**overrides))


def test_points_to_pointcloud2_errors():
    with pytest.raises(PointCloudConversionError, match=r"points \[N, 3\]"):
        conv.points_to_pointcloud2(np.zeros((4, 2), np.float32))
    with pytest.raises(PointCloudConversionError, match=r"colors \[N, 3\] = \[2, 3\]"):
        conv.points_to_pointcloud2(POINTS, COLORS[:1])
    with pytest.raises(PointCloudConversionError, match="uint8 colors"):
        conv.points_to_pointcloud2(POINTS, COLORS.astype(np.int32))


def test_pointcloud2_survives_cdr_and_matches_rosbags_reading():
    """rclpy's CDR bytes of our cloud, read back by rclpy and by an independent implementation
    (rosbags), give the same fields and data."""
    from rosbags.typesys import Stores, get_typestore

    msg = conv.points_to_pointcloud2(POINTS, COLORS, _header())
    raw = serialize_message(msg)
    back = deserialize_message(raw, PointCloud2)
    assert bytes(back.data) == bytes(msg.data)
    typestore = get_typestore(Stores.ROS2_KILTED)
    other = typestore.deserialize_cdr(raw, "sensor_msgs/msg/PointCloud2")
    assert [(f.name, f.offset, f.datatype, f.count) for f in other.fields] == [
        (f.name, f.offset, f.datatype, f.count) for f in msg.fields
    ]
    assert (other.point_step, other.row_step, other.width, other.height) == (16, 32, 2, 1)
    pts, cols = conv.pointcloud2_to_array(other)  # rosbags dataclass with an ndarray payload
    np.testing.assert_array_equal(pts, POINTS)
    np.testing.assert_array_equal(cols, COLORS)


def test_pack_unpack_rgb():
    packed = conv.pack_rgb(COLORS)
    assert packed.dtype == np.uint32 and packed.tolist() == [0xFF0000, 0x010203]
    np.testing.assert_array_equal(conv.unpack_rgb(packed), COLORS)
    np.testing.assert_array_equal(conv.unpack_rgb(packed.view(np.float32)), COLORS)


# ------------------------------------------------------------------------------------------------
# Poses, transforms, stamps
# ------------------------------------------------------------------------------------------------


def _rigid(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    T = np.eye(4)
    T[:3, :3] = Rotation.random(random_state=seed).as_matrix()
    T[:3, 3] = rng.normal(size=3)
    return T


def test_yaw_90_quaternion_is_xyzw():
    T = np.eye(4)
    T[:3, :3] = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    T[:3, 3] = [1.0, 2.0, 3.0]
    tf = conv.matrix_to_transform(T)
    s = np.sqrt(0.5)
    assert (tf.translation.x, tf.translation.y, tf.translation.z) == (1.0, 2.0, 3.0)
    np.testing.assert_allclose([tf.rotation.x, tf.rotation.y, tf.rotation.z, tf.rotation.w], [0, 0, s, s], atol=1e-12)
    pose = conv.matrix_to_pose(T)
    np.testing.assert_allclose([pose.orientation.z, pose.orientation.w], [s, s], atol=1e-12)
    assert (pose.position.x, pose.position.y, pose.position.z) == (1.0, 2.0, 3.0)


@pytest.mark.parametrize("seed", range(5))
def test_pose_and_transform_round_trip(seed):
    T = _rigid(seed)
    np.testing.assert_allclose(conv.pose_to_matrix(conv.matrix_to_pose(T)), T, atol=1e-12)
    np.testing.assert_allclose(conv.transform_to_matrix(conv.matrix_to_transform(T)), T, atol=1e-12)
    q = conv.matrix_to_quaternion(T[:3, :3])
    assert q[3] >= 0.0
    np.testing.assert_allclose(conv.quaternion_to_matrix(-q), T[:3, :3], atol=1e-12)


def test_matrices_to_poses_matches_single_conversions_and_canonical_w():
    T = np.stack([_rigid(s) for s in range(6)])
    T[5, :3, :3] = Rotation.from_euler("z", 350, degrees=True).as_matrix()
    poses = conv.matrices_to_poses(T)
    assert len(poses) == 6
    for Ti, pose in zip(T, poses):
        assert pose == conv.matrix_to_pose(Ti)
        assert pose.orientation.w >= 0.0


def test_pose_to_matrix_normalises_quaternion():
    pose = Pose()
    pose.orientation = Quaternion(x=0.0, y=0.0, z=2.0, w=2.0)
    np.testing.assert_allclose(conv.pose_to_matrix(pose)[:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    pose.orientation = Quaternion(x=0.0, y=0.0, z=0.0, w=0.0)
    with pytest.raises(ValueError, match="non-zero"):
        conv.pose_to_matrix(pose)


def test_transform_stamped():
    msg = conv.matrix_to_transform_stamped(_rigid(1), Time(sec=5, nanosec=6), "vggt4d_map", "cam_optical")
    assert (msg.header.frame_id, msg.child_frame_id) == ("vggt4d_map", "cam_optical")
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (5, 6)
    np.testing.assert_allclose(conv.transform_to_matrix(msg.transform), _rigid(1), atol=1e-12)


def test_matrix_conversion_errors():
    T = _rigid(2)
    scaled = T.copy()
    scaled[:3, :3] *= 2.0
    with pytest.raises(ValueError, match="not a proper rotation"):
        conv.matrix_to_pose(scaled)
    mirrored = T.copy()
    mirrored[:3, 0] *= -1.0
    with pytest.raises(ValueError, match="not a proper rotation"):
        conv.matrix_to_transform(mirrored)
    nan = T.copy()
    nan[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        conv.matrix_to_transform(nan)
    bottom = T.copy()
    bottom[3, 0] = 1.0
    with pytest.raises(ValueError, match=r"last row \[0, 0, 0, 1\]"):
        conv.matrix_to_pose(bottom)
    with pytest.raises(ValueError, match=r"one transform \[4, 4\], got \[3, 3\]"):
        conv.matrix_to_pose(np.eye(3))
    with pytest.raises(ValueError, match=r"\[\.\.\., 4, 4\], got \[3, 3\]"):
        conv.matrix_to_transform(np.eye(3))
    with pytest.raises(ValueError, match=r"one transform \[4, 4\]"):
        conv.matrix_to_transform(np.stack([T, T]))
    with pytest.raises(ValueError, match=r"transforms \[N, 4, 4\]"):
        conv.matrices_to_poses(T)


def test_stamps():
    assert conv.stamp_to_ns(Time(sec=3, nanosec=7)) == 3_000_000_007
    t = conv.ns_to_stamp(1_500_000_000)
    assert (t.sec, t.nanosec) == (1, 500_000_000)
    t = conv.ns_to_stamp(-1)
    assert (t.sec, t.nanosec) == (-1, 999_999_999)
    for ns in (0, 1, 999_999_999, 1_700_000_000_123_456_789, -5_000_000_001):
        assert conv.stamp_to_ns(conv.ns_to_stamp(ns)) == ns
    with pytest.raises(ValueError, match="int32 seconds"):
        conv.ns_to_stamp(2**31 * 1_000_000_000)


# ------------------------------------------------------------------------------------------------
# QoS profiles
# ------------------------------------------------------------------------------------------------


def test_qos_from_name():
    q = qos_from_name("sensor_data")
    assert (q.reliability, q.durability, q.depth) == (ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE, 5)
    q = qos_from_name("reliable", 20)
    assert (q.reliability, q.durability, q.depth) == (ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE, 20)
    q = qos_from_name("best_effort", 3)
    assert (q.reliability, q.depth) == (ReliabilityPolicy.BEST_EFFORT, 3)
    q = map_cloud_qos()
    assert (q.reliability, q.durability, q.depth) == (ReliabilityPolicy.RELIABLE, DurabilityPolicy.TRANSIENT_LOCAL, 1)
    with pytest.raises(ValueError, match=r"unknown QoS profile name 'fast'; expected one of \['sensor_data'"):
        qos_from_name("fast")
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        qos_from_name("reliable", 0)
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        reliable_qos(True)


# ------------------------------------------------------------------------------------------------
# Through DDS
# ------------------------------------------------------------------------------------------------


def _test_payload() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic image, points and colours shared by the publisher process and the test."""
    rng = np.random.default_rng(1234)
    return (rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
            rng.normal(size=(2000, 3)).astype(np.float32),
            rng.integers(0, 256, (2000, 3), dtype=np.uint8))


def test_publish_subscribe_in_one_process():
    rgb, pts, cols = _test_payload()
    topic = f"/conv_test_{uuid.uuid4().hex[:8]}"
    with ros_context() as ros:
        pub_node, sub_node = ros.node("conv_pub"), ros.node("conv_sub")
        got: dict[str, object] = {}
        sub_node.create_subscription(Image, topic + "/image", lambda m: got.setdefault("image", m), reliable_qos(10))
        sub_node.create_subscription(PointCloud2, topic + "/cloud", lambda m: got.setdefault("cloud", m),
                                     reliable_qos(10))
        pub_img = pub_node.create_publisher(Image, topic + "/image", reliable_qos(10))
        pub_cloud = pub_node.create_publisher(PointCloud2, topic + "/cloud", reliable_qos(10))
        executor = ros.executor()
        executor.add_node(pub_node)
        executor.add_node(sub_node)
        header = _header(sec=77)
        deadline = time.monotonic() + 20.0
        while len(got) < 2 and time.monotonic() < deadline:
            pub_img.publish(conv.rgb_to_image(rgb, header, "bgr8"))
            pub_cloud.publish(conv.points_to_pointcloud2(pts, cols, header))
            spin_until(executor, lambda: len(got) == 2, timeout_s=0.2)
        executor.shutdown()
        assert set(got) == {"image", "cloud"}, f"received only {sorted(got)} within 20 s"
    image, cloud = got["image"], got["cloud"]
    assert (image.encoding, image.header.stamp.sec, image.header.frame_id) == ("bgr8", 77, "cam_optical")
    np.testing.assert_array_equal(conv.image_to_rgb(image), rgb)
    out_pts, out_cols = conv.pointcloud2_to_array(cloud)
    np.testing.assert_array_equal(out_pts, pts)
    np.testing.assert_array_equal(out_cols, cols)


_PUBLISHER_PROCESS = textwrap.dedent(
    """
    import sys, threading, time
    import rclpy
    from sensor_msgs.msg import Image, PointCloud2
    from std_msgs.msg import Header
    sys.path.insert(0, sys.argv[2])
    from test_ros_conversions import _test_payload
    from vggt4d_ros.ros.conversions import points_to_pointcloud2, rgb_to_image
    from vggt4d_ros.ros.qos import reliable_qos

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    rgb, pts, cols = _test_payload()
    rclpy.init()
    node = rclpy.create_node("conv_publisher_process")
    pub_img = node.create_publisher(Image, sys.argv[1] + "/image", reliable_qos(10))
    pub_cloud = node.create_publisher(PointCloud2, sys.argv[1] + "/cloud", reliable_qos(10))
    header = Header(frame_id="cam_optical")
    deadline = time.monotonic() + 60.0
    count = 0
    while not stop.is_set() and time.monotonic() < deadline:
        header.stamp.sec = count
        pub_img.publish(rgb_to_image(rgb, header, "rgba8"))
        pub_cloud.publish(points_to_pointcloud2(pts, cols, header))
        count += 1
        stop.wait(0.1)
    node.destroy_node()
    rclpy.shutdown()
    print("published", count)
    """
)


def test_publish_subscribe_across_processes():
    rgb, pts, cols = _test_payload()
    topic = f"/conv_test_{uuid.uuid4().hex[:8]}"
    with ros_context() as ros:
        sub_node = ros.node("conv_sub_main")
        got: dict[str, object] = {}
        sub_node.create_subscription(Image, topic + "/image", lambda m: got.setdefault("image", m), reliable_qos(10))
        sub_node.create_subscription(PointCloud2, topic + "/cloud", lambda m: got.setdefault("cloud", m),
                                     reliable_qos(10))
        env = dict(ros.env)
        env["PYTHONPATH"] = str(REPO_ROOT)
        proc = subprocess.Popen(
            [sys.executable, "-c", _PUBLISHER_PROCESS, topic, str(REPO_ROOT / "test")],
            env=env, cwd=str(REPO_ROOT), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        try:
            executor = ros.executor()
            executor.add_node(sub_node)
            received = spin_until(executor, lambda: len(got) == 2 or proc.poll() is not None, timeout_s=30.0)
            executor.shutdown()
        finally:
            try:
                out, err = proc.communicate(input="", timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
        assert received and set(got) == {"image", "cloud"}, f"received {sorted(got)}; publisher stderr:\n{err}"
        assert proc.returncode == 0, f"publisher exited with {proc.returncode}:\n{err}"
        assert out.startswith("published ")
    image, cloud = got["image"], got["cloud"]
    assert (image.encoding, image.step, image.header.frame_id) == ("rgba8", 64 * 4, "cam_optical")
    np.testing.assert_array_equal(conv.image_to_rgb(image), rgb)
    out_pts, out_cols = conv.pointcloud2_to_array(cloud)
    np.testing.assert_array_equal(out_pts, pts)
    np.testing.assert_array_equal(out_cols, cols)
