"""Camera geometry: pose decoding and depth unprojection against the reference fixtures, plus self-consistency."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vggt4d_ros.model.geometry import (
    camera_to_world_points,
    closed_form_inverse_se3,
    decode_pose_encoding,
    depth_to_camera_points,
    depth_to_world_points,
    encode_pose_encoding,
    extrinsic_to_c2w_matrix,
    invert_extrinsic,
    project_points,
    quaternion_to_rotation,
    rotation_to_quaternion,
    world_to_camera_points,
)

# (fixture file, key prefix): every stored input whose cameras and unprojected depth are in the fixtures.
CASES = [("tiny_dino", ""), ("tiny_dino", "s1."), ("tiny_dino", "s16."), ("tiny_conv", ""), ("tiny_conv", "s1.")]


@pytest.fixture(scope="module")
def outputs(fixtures_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(str(fixtures_dir / f"{name}_outputs.safetensors")) for name in ("tiny_dino", "tiny_conv")}


def _random_pose_enc(gen: torch.Generator, shape: tuple[int, ...], min_w: float = 0.05) -> torch.Tensor:
    """Valid float64 encodings: unit quaternions with real part >= min_w, FoV in (0.2, 2.8) rad."""
    quat = torch.randn(*shape, 4, generator=gen, dtype=torch.float64)
    quat = quat / quat.norm(dim=-1, keepdim=True)
    quat = torch.where(quat[..., 3:] < 0, -quat, quat)
    quat[..., 3] = quat[..., 3].clamp(min=min_w)
    quat = quat / quat.norm(dim=-1, keepdim=True)
    trans = torch.randn(*shape, 3, generator=gen, dtype=torch.float64)
    fov = 0.2 + 2.6 * torch.rand(*shape, 2, generator=gen, dtype=torch.float64)
    return torch.cat([trans, quat, fov], dim=-1)


@pytest.mark.parametrize("name,prefix", CASES)
def test_decode_matches_reference(outputs, name, prefix):
    out = outputs[name]
    H, W = out[prefix + "depth"].shape[2:4]
    extrinsic, intrinsic = decode_pose_encoding(out[prefix + "pose_enc"], (H, W))
    torch.testing.assert_close(extrinsic, out[prefix + "extrinsic"], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(intrinsic, out[prefix + "intrinsic"], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name,prefix", CASES)
def test_depth_unprojection_matches_reference(outputs, name, prefix):
    out = outputs[name]
    depth = out[prefix + "depth"][0]  # [S, H, W, 1]
    ref = out[prefix + "world_points_from_depth"]
    # With the reference cameras, and with ours decoded from pose_enc.
    world = depth_to_world_points(depth, out[prefix + "extrinsic"][0], out[prefix + "intrinsic"][0])
    assert world.dtype == torch.float32
    torch.testing.assert_close(world, ref, atol=1e-4, rtol=1e-4)
    extrinsic, intrinsic = decode_pose_encoding(out[prefix + "pose_enc"][0], depth.shape[1:3])
    torch.testing.assert_close(depth_to_world_points(depth, extrinsic, intrinsic), ref, atol=1e-4, rtol=1e-4)


def test_encode_inverts_decode_on_fixture_cameras(outputs):
    """Fixture quaternions are not unit, so compare cameras, not encodings: decode(encode(cam)) == cam."""
    out = outputs["tiny_dino"]
    H, W = out["depth"].shape[2:4]
    extrinsic, intrinsic = decode_pose_encoding(out["pose_enc"].double(), (H, W))
    enc = encode_pose_encoding(extrinsic, intrinsic, (H, W))
    torch.testing.assert_close(enc[..., 3:7].norm(dim=-1), torch.ones(enc.shape[:-1], dtype=torch.float64))
    ext2, int2 = decode_pose_encoding(enc, (H, W))
    torch.testing.assert_close(ext2, extrinsic, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(int2, intrinsic, atol=1e-9, rtol=1e-12)


def test_encode_decode_round_trip_random():
    gen = torch.Generator().manual_seed(0)
    enc = _random_pose_enc(gen, (3, 5))
    extrinsic, intrinsic = decode_pose_encoding(enc, (70, 98))
    assert extrinsic.shape == (3, 5, 3, 4) and intrinsic.shape == (3, 5, 3, 3)
    rot = extrinsic[..., :3]
    eye = torch.eye(3, dtype=torch.float64).expand_as(rot)
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), eye)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(3, 5, dtype=torch.float64))
    torch.testing.assert_close(intrinsic[..., 0, 2], torch.full((3, 5), 49.0, dtype=torch.float64))
    torch.testing.assert_close(intrinsic[..., 1, 2], torch.full((3, 5), 35.0, dtype=torch.float64))
    torch.testing.assert_close(encode_pose_encoding(extrinsic, intrinsic, (70, 98)), enc, atol=1e-10, rtol=1e-10)
    # A 4x4 extrinsic encodes the same way.
    ext44 = closed_form_inverse_se3(closed_form_inverse_se3(extrinsic))
    torch.testing.assert_close(encode_pose_encoding(ext44, intrinsic, (70, 98)), enc, atol=1e-10, rtol=1e-10)


def test_rotation_quaternion_round_trip_all_branches():
    """Rotations by ~180 degrees (real part ~0) exercise the x, y and z recovery branches."""
    gen = torch.Generator().manual_seed(1)
    quat = torch.randn(200, 4, generator=gen, dtype=torch.float64)
    quat[:50, 3] = 0.0  # exactly 180 degrees
    quat[50:60, :3] = 0.0  # identity-like / pure real
    quat = quat / quat.norm(dim=-1, keepdim=True)
    rot = quaternion_to_rotation(quat)
    back = rotation_to_quaternion(rot)
    assert (back[..., 3] >= 0).all()
    torch.testing.assert_close(back.norm(dim=-1), torch.ones(200, dtype=torch.float64))
    torch.testing.assert_close(quaternion_to_rotation(back), rot, atol=1e-12, rtol=0)
    # Non-unit quaternions give the same rotation as their normalised version.
    torch.testing.assert_close(quaternion_to_rotation(3.0 * quat), rot)
    # Known case: 90 degrees about z maps x to y.
    q = torch.tensor([0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)], dtype=torch.float64)
    torch.testing.assert_close(quaternion_to_rotation(q) @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                               torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))


def test_depth_world_project_round_trip_batched():
    gen = torch.Generator().manual_seed(2)
    H, W = 6, 9
    enc = _random_pose_enc(gen, (2, 3))
    extrinsic, intrinsic = decode_pose_encoding(enc, (H, W))
    depth = 0.5 + 3.0 * torch.rand(2, 3, H, W, generator=gen, dtype=torch.float64)
    world = depth_to_world_points(depth, extrinsic, intrinsic)
    assert world.shape == (2, 3, H, W, 3)
    uv, z = project_points(world.reshape(2, 3, H * W, 3), extrinsic, intrinsic)
    vv, uu = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    grid = torch.stack([uu, vv], dim=-1).reshape(H * W, 2).expand(2, 3, -1, -1)
    torch.testing.assert_close(uv, grid, atol=1e-9, rtol=0)
    torch.testing.assert_close(z, depth.reshape(2, 3, H * W), atol=1e-12, rtol=0)
    # project_points keeps extra point dimensions.
    uv_map, z_map = project_points(world, extrinsic, intrinsic)
    assert uv_map.shape == (2, 3, H, W, 2) and z_map.shape == (2, 3, H, W)
    torch.testing.assert_close(z_map, depth, atol=1e-12, rtol=0)
    # Camera-frame points and the world <-> camera maps agree with the composed function.
    cam = depth_to_camera_points(depth[..., None], intrinsic)
    torch.testing.assert_close(cam[..., 2], depth)
    torch.testing.assert_close(camera_to_world_points(cam, extrinsic), world)
    torch.testing.assert_close(world_to_camera_points(world, extrinsic), cam)
    # Batched leading dims give the same result as one camera set at a time.
    for b in range(2):
        torch.testing.assert_close(depth_to_world_points(depth[b], extrinsic[b], intrinsic[b]), world[b])


def test_unprojection_pixel_convention():
    """Integer pixel coordinates, no +0.5: pixel (cx, cy) lies on the optical axis."""
    intrinsic = torch.tensor([[[2.0, 0.0, 2.0], [0.0, 4.0, 1.0], [0.0, 0.0, 1.0]]])
    depth = torch.full((1, 3, 5), 2.0)
    cam = depth_to_camera_points(depth, intrinsic)
    assert cam.dtype == torch.float32 and cam.shape == (1, 3, 5, 3)
    torch.testing.assert_close(cam[0, 1, 2], torch.tensor([0.0, 0.0, 2.0]))
    torch.testing.assert_close(cam[0, 0, 0], torch.tensor([-2.0, -0.5, 2.0]))
    torch.testing.assert_close(cam[0, 2, 4], torch.tensor([2.0, 0.5, 2.0]))


def test_invert_extrinsic_round_trip():
    gen = torch.Generator().manual_seed(3)
    extrinsic, _ = decode_pose_encoding(_random_pose_enc(gen, (4, 2)), (10, 10))
    inv = invert_extrinsic(extrinsic)
    assert inv.shape == (4, 2, 3, 4)
    torch.testing.assert_close(invert_extrinsic(inv), extrinsic)
    c2w = extrinsic_to_c2w_matrix(extrinsic)
    assert c2w.shape == (4, 2, 4, 4)
    torch.testing.assert_close(c2w[..., :3, :], inv)
    torch.testing.assert_close(c2w[..., 3, :], torch.tensor([0.0, 0, 0, 1], dtype=torch.float64).expand(4, 2, 4))
    w2c = closed_form_inverse_se3(c2w)
    eye = torch.eye(4, dtype=torch.float64).expand(4, 2, 4, 4)
    torch.testing.assert_close(w2c @ c2w, eye)
    torch.testing.assert_close(invert_extrinsic(w2c), c2w)
    # The camera centre (c2w translation) maps to the camera-frame origin.
    centre = c2w[..., None, :3, 3]
    torch.testing.assert_close(world_to_camera_points(centre, extrinsic), torch.zeros(4, 2, 1, 3, dtype=torch.float64))


def test_shape_errors():
    with pytest.raises(ValueError, match="pose_enc"):
        decode_pose_encoding(torch.zeros(2, 8), (10, 10))
    with pytest.raises(ValueError, match="image_hw"):
        decode_pose_encoding(torch.zeros(2, 9), (10,))
    with pytest.raises(ValueError, match="extrinsic"):
        invert_extrinsic(torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="depth"):
        depth_to_camera_points(torch.ones(2, 4, 5, 2), torch.eye(3).expand(2, 3, 3))
    with pytest.raises(ValueError, match="leading"):
        depth_to_world_points(torch.ones(2, 4, 5), torch.zeros(3, 3, 4), torch.eye(3).expand(2, 3, 3))
