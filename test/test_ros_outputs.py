"""Message builders of the node's consumer outputs: 32FC1 depth, camera_info twins, odometry covariances, and the
test-only synthetic scene parameter."""

from __future__ import annotations

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header

from vggt4d_ros.ros.conversions import (
    ImageConversionError,
    depth_to_image,
    image_to_depth,
    pose_to_matrix,
)
from vggt4d_ros.ros.publishers import make_camera_info, make_odometry
from vggt4d_ros.ros.synthetic_source import parse_scene
from vggt4d_ros.windows.stitcher import UNKNOWN_VARIANCE


def _header(frame_id: str = "cam") -> Header:
    return Header(stamp=Time(sec=12, nanosec=345), frame_id=frame_id)


def test_depth_image_is_32fc1_with_nan_for_missing_depth():
    depth = np.array([[1.5, 0.0, -2.0], [np.inf, np.nan, 3.25]], dtype=np.float64)
    msg = depth_to_image(depth, _header())
    assert (msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian) == ("32FC1", 2, 3, 12, 0)
    assert msg.header.frame_id == "cam" and msg.header.stamp.nanosec == 345
    raw = np.frombuffer(bytes(msg.data), dtype="<f4").reshape(2, 3)
    np.testing.assert_array_equal(raw[[0, 1], [0, 2]], [1.5, 3.25])
    assert np.isnan(raw[[0, 0, 1, 1], [1, 2, 0, 1]]).all()
    back = image_to_depth(msg)
    np.testing.assert_array_equal(np.isnan(back), np.isnan(raw))
    np.testing.assert_array_equal(back[~np.isnan(back)], raw[~np.isnan(raw)])


def test_depth_image_reads_padded_rows_and_big_endian():
    d = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    msg = depth_to_image(d)
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(2, 12)
    msg.data = np.concatenate([rows, np.zeros((2, 4), np.uint8)], axis=1).tobytes()
    msg.step = 16
    np.testing.assert_array_equal(image_to_depth(msg), d)
    msg = depth_to_image(d)
    msg.data = d.astype(">f4").tobytes()
    msg.is_bigendian = 1
    np.testing.assert_array_equal(image_to_depth(msg), d)


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 1)), np.zeros((0, 3)), np.zeros((2, 2), dtype=np.uint8)])
def test_depth_image_rejects_bad_arrays(bad):
    with pytest.raises(ImageConversionError):
        depth_to_image(bad)


def test_camera_info_twin_from_intrinsics_and_from_the_input():
    K = np.array([[100.0, 0.0, 47.5], [0.0, 101.0, 35.5], [0.0, 0.0, 1.0]])
    info = make_camera_info(K, 96, 72, _header("cam_opt"))
    assert (info.width, info.height, info.header.frame_id, info.header.stamp.sec) == (96, 72, "cam_opt", 12)
    np.testing.assert_array_equal(np.reshape(info.k, (3, 3)), K)
    np.testing.assert_array_equal(np.reshape(info.p, (3, 4)), np.c_[K, np.zeros(3)])
    assert info.distortion_model == "plumb_bob" and list(info.d) == [0.0] * 5
    np.testing.assert_array_equal(np.reshape(info.r, (3, 3)), np.eye(3))

    given = CameraInfo(width=96, height=72, distortion_model="rational_polynomial")
    given.header = _header("other")
    given.k = [float(x) for x in (K * 1.1).reshape(-1)]
    given.d = [0.1, -0.2, 0.0, 0.0, 0.01, 0.0, 0.0, 0.0]
    twin = make_camera_info(K, 96, 72, _header("cam_opt"), template=given)
    assert twin.header.frame_id == "cam_opt" and twin.distortion_model == "rational_polynomial"
    np.testing.assert_array_equal(twin.k, given.k)
    np.testing.assert_array_equal(twin.d, given.d)


def test_odometry_covariances():
    pose = np.eye(4)
    pose[:3, 3] = [1.0, 2.0, 3.0]
    cov = np.diag([0.01, 0.01, 0.01, 0.001, 0.001, 0.001])
    odom = make_odometry(pose, Time(sec=1), "map", "base_link", cov)
    assert (odom.header.frame_id, odom.child_frame_id) == ("map", "base_link")
    np.testing.assert_allclose(pose_to_matrix(odom.pose.pose), pose)
    np.testing.assert_array_equal(np.reshape(odom.pose.covariance, (6, 6)), cov)
    # the twist is not estimated: zero with an "unknown" (huge) variance, never an all-zero covariance
    twist_cov = np.reshape(odom.twist.covariance, (6, 6))
    np.testing.assert_array_equal(twist_cov, np.eye(6) * UNKNOWN_VARIANCE)
    assert odom.twist.twist.linear.x == 0.0
    unknown = make_odometry(pose, Time(sec=1), "map", "cam")
    np.testing.assert_array_equal(np.reshape(unknown.pose.covariance, (6, 6)), np.eye(6) * UNKNOWN_VARIANCE)


def test_synthetic_scene_parameter():
    assert parse_scene("seed=3 frames=24 depth_noise=0.01") == {"seed": 3, "frames": 24, "depth_noise": 0.01}
    for bad, fragment in (("seed=3", "frames=N"), ("frames", "key=value"), ("frames=2.5", "of type int"),
                          ("frames=3 size=9", "unknown key")):
        with pytest.raises(ValueError, match=fragment):
            parse_scene(bad)
