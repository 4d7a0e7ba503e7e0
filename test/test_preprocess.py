"""Tests for vggt4d_ros.model.preprocess: bit-exact parity with the reference loader and the inverse mappings."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vggt4d_ros.model.preprocess import (
    PreprocessInfo,
    intrinsics_to_model,
    intrinsics_to_original,
    load_and_preprocess_images,
    mask_to_original,
    pixels_to_model,
    pixels_to_original,
    plan_geometry,
    preprocess_frame,
    preprocess_images,
)

NAMES = {
    "a": "a_rgb_300x200.png",
    "b": "b_rgb_257x411.png",
    "c": "c_rgb_640x480.png",
    "d": "d_rgba_333x222.png",
}


@pytest.fixture(scope="module")
def golden(fixtures_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(fixtures_dir / "preprocess_golden.safetensors"))


@pytest.fixture(scope="module")
def image_paths(fixtures_dir: Path) -> dict[str, Path]:
    return {k: fixtures_dir / "preprocess" / v for k, v in NAMES.items()}


def _codes(t: torch.Tensor) -> torch.Tensor:
    return (t * 255).round().to(torch.uint8)


def _from_codes(codes: torch.Tensor) -> torch.Tensor:
    """Exact float32 code/255, computed by numpy so the check does not depend on torch's own division."""
    return torch.from_numpy(codes.numpy().astype(np.float32) / np.float32(255))


def _assert_bit_exact(out: torch.Tensor, codes: torch.Tensor) -> None:
    assert out.dtype == torch.float32
    assert out.shape == codes.shape
    assert torch.equal(_codes(out), codes)
    assert torch.equal(out, _from_codes(codes))


# ------------------------------------------------------------------------------------------------------------
# Bit-exact parity with the golden reference
# ------------------------------------------------------------------------------------------------------------


def test_golden_keys(golden):
    assert set(golden) == {"crop.single.a", "crop.single.b", "crop.single.c", "crop.single.d", "pad.batch"}
    assert all(v.dtype == torch.uint8 for v in golden.values())


@pytest.mark.parametrize("key", ["a", "b", "c", "d"])
def test_crop_single_bit_exact(golden, image_paths, key):
    out, infos = preprocess_images([image_paths[key]], mode="crop")
    _assert_bit_exact(out, golden[f"crop.single.{key}"])
    assert len(infos) == 1 and infos[0].model_size == tuple(out.shape[-2:])
    # the reference-named entry point gives the same tensor (str path this time)
    assert torch.equal(load_and_preprocess_images([str(image_paths[key])]), out)


def test_crop_single_b_geometry(image_paths):
    _, (info,) = preprocess_images([image_paths["b"]])
    assert info == PreprocessInfo(
        original_size=(411, 257),
        resized_size=(826, 518),
        crop_top=154,
        pad_top=0,
        pad_left=0,
        model_size=(518, 518),
        mode="crop",
    )


def test_pad_batch_bit_exact(golden, image_paths):
    paths = [image_paths[k] for k in "abcd"]
    out, infos = preprocess_images(paths, mode="pad")
    _assert_bit_exact(out, golden["pad.batch"])
    assert [i.mode for i in infos] == ["pad"] * 4
    assert infos[1].resized_size == (518, 322) and (infos[1].pad_top, infos[1].pad_left) == (0, 98)
    assert infos[0].resized_size == (350, 518) and (infos[0].pad_top, infos[0].pad_left) == (84, 0)
    # each slice equals the single-image call
    single, _ = preprocess_images([paths[2]], mode="pad")
    assert torch.equal(single[0], out[2])


def test_suggested_tensor_conversion_is_exact():
    rng = np.random.default_rng(0)
    pil = Image.fromarray(rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8), mode="RGB")
    arr = np.array(pil)
    converted = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255)
    assert torch.equal(converted, _from_codes(torch.from_numpy(arr).permute(2, 0, 1)))
    out, _ = preprocess_frame(arr, mode="crop", target_size=14)
    assert torch.equal(out, _from_codes(_codes(out)))


# ------------------------------------------------------------------------------------------------------------
# Input types
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["a", "c"])
def test_numpy_and_pil_inputs_equal_file(golden, image_paths, key):
    with Image.open(image_paths[key]) as img:
        img.load()
        arr = np.array(img)
        out_pil, _ = preprocess_images([img])
    assert arr.dtype == np.uint8 and arr.shape[2] == 3
    out_np, _ = preprocess_images([arr])
    _assert_bit_exact(out_np, golden[f"crop.single.{key}"])
    assert torch.equal(out_pil, out_np)


def test_rgba_numpy_equals_rgba_file(golden, image_paths):
    with Image.open(image_paths["d"]) as img:
        arr = np.array(img)
    assert arr.shape == (222, 333, 4)
    alpha = arr[..., 3]
    assert (alpha == 0).any() and ((alpha > 0) & (alpha < 255)).any()
    out_np, _ = preprocess_images([arr])
    out_file, _ = preprocess_images([image_paths["d"]])
    assert torch.equal(out_np, out_file)
    _assert_bit_exact(out_np, golden["crop.single.d"])
    padded, _ = preprocess_images([arr], mode="pad")
    assert torch.equal(_codes(padded)[0], golden["pad.batch"][3])


def test_rgba_composite_rule_over_white():
    c = np.arange(256, dtype=np.int64)
    a = np.arange(256, dtype=np.int64)
    cc, aa = np.meshgrid(c, a, indexing="ij")
    rgba = np.zeros((256, 256, 4), dtype=np.uint8)
    rgba[..., 0] = cc
    rgba[..., 1] = cc
    rgba[..., 2] = 255 - cc
    rgba[..., 3] = aa
    # check the composite itself (before the resize) against round_half_up((c*a + 255*(255-a)) / 255)
    from vggt4d_ros.model.preprocess import _to_rgb

    rgb = np.asarray(_to_rgb(rgba)).astype(np.int64)
    num = cc * aa + 255 * (255 - aa)
    expected = (2 * num + 255) // 510  # round half up of num / 255
    assert np.array_equal(rgb[..., 0], expected)
    num_b = (255 - cc) * aa + 255 * (255 - aa)
    assert np.array_equal(rgb[..., 2], (2 * num_b + 255) // 510)


def test_mono_replicates_channels():
    rng = np.random.default_rng(1)
    mono = rng.integers(0, 256, size=(20, 30), dtype=np.uint8)
    out_mono, info = preprocess_images([mono], target_size=28)
    out_rgb, _ = preprocess_images([np.repeat(mono[..., None], 3, axis=2)], target_size=28)
    out_1ch, _ = preprocess_images([mono[..., None]], target_size=28)
    assert out_mono.shape == (1, 3, 14, 28) and info[0].resized_size == (14, 28)
    assert torch.equal(out_mono, out_rgb) and torch.equal(out_mono, out_1ch)
    assert torch.equal(out_mono[0, 0], out_mono[0, 1]) and torch.equal(out_mono[0, 0], out_mono[0, 2])


def test_la_and_palette_transparency_composited_over_white():
    la = Image.new("LA", (28, 14), (0, 0))  # black, fully transparent
    out, _ = preprocess_images([la], target_size=28)
    assert torch.all(out == 1.0)
    pal = Image.new("P", (28, 14), 3)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 3
    out, _ = preprocess_images([pal], target_size=28)
    assert torch.all(out == 1.0)
    pal_opaque = Image.new("P", (28, 14), 3)
    pal_opaque.putpalette([0, 0, 0] * 256)
    out, _ = preprocess_images([pal_opaque], target_size=28)
    assert torch.all(out == 0.0)


def test_stacked_array_and_single_inputs():
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, size=(3, 16, 20, 3), dtype=np.uint8)
    stacked, _ = preprocess_images(frames, target_size=28)
    listed, _ = preprocess_images(list(frames), target_size=28)
    single, _ = preprocess_images(frames[1], target_size=28)
    assert stacked.shape == (3, 3, 28, 28)
    assert torch.equal(stacked, listed) and torch.equal(single[0], stacked[1])


# ------------------------------------------------------------------------------------------------------------
# Geometry rules
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "expected_h"), [(21, 28), (35, 28), (49, 56), (63, 56)])
def test_target_height_rounds_ties_to_even(height, expected_h):
    # width 518 gives h * 1.0 / 14 = 1.5, 2.5, 3.5, 4.5 exactly: ties go to the even neighbour
    info = plan_geometry(height, 518, "crop")
    assert info.resized_size == (expected_h, 518)
    out, (info2,) = preprocess_images([np.zeros((height, 518, 3), dtype=np.uint8)])
    assert out.shape == (1, 3, expected_h, 518) and info2 == info


def test_pad_mode_portrait_and_landscape_geometry():
    portrait = plan_geometry(411, 257, "pad")
    assert portrait.resized_size == (518, 322) and portrait.pad_left == (518 - 322) // 2
    landscape = plan_geometry(200, 300, "pad", target_size=28)
    assert landscape.resized_size == (round(200 * (28 / 300) / 14) * 14, 28)
    assert landscape.model_size == (28, 28)


def test_crop_batch_pads_to_max_with_white(golden, image_paths, caplog):
    paths = [image_paths[k] for k in "abcd"]
    with caplog.at_level(logging.WARNING, logger="vggt4d_ros.model.preprocess"):
        out, infos = preprocess_images(paths, mode="crop")
    assert any("different preprocessed sizes" in r.getMessage() for r in caplog.records)
    assert out.shape == (4, 3, 518, 518)
    for s, key in enumerate("abcd"):
        single = golden[f"crop.single.{key}"][0]
        h = single.shape[1]
        top = (518 - h) // 2
        expected = torch.full((3, 518, 518), 255, dtype=torch.uint8)
        expected[:, top : top + h] = single
        _assert_bit_exact(out[s], expected)
        assert infos[s].pad_top == top and infos[s].model_size == (518, 518)
        assert infos[s].content_box == (top, 0, top + h, 518)


def test_uniform_batch_does_not_warn(caplog):
    frames = [np.zeros((10, 20, 3), dtype=np.uint8), np.full((10, 20, 3), 7, dtype=np.uint8)]
    with caplog.at_level(logging.WARNING, logger="vggt4d_ros.model.preprocess"):
        out, infos = preprocess_images(frames, target_size=28)
    assert not caplog.records
    assert out.shape == (2, 3, 14, 28) and all(i.pad_top == 0 for i in infos)


def test_batch_rule_also_pads_width():
    # crop mode always yields the target width, so a synthetic 29-px-wide block exercises the horizontal branch
    from vggt4d_ros.model.preprocess import _assemble

    narrow = np.zeros((14, 14, 3), dtype=np.uint8)
    wide = np.zeros((14, 29, 3), dtype=np.uint8)
    infos = [plan_geometry(14, 14, "crop", 14), PreprocessInfo((14, 29), (14, 29), 0, 0, 0, (14, 29), "crop")]
    out, new_infos = _assemble([narrow, wide], infos)
    assert out.shape == (2, 3, 14, 29)
    assert new_infos[0].pad_left == 7
    assert torch.all(out[0, :, :, :7] == 1.0) and torch.all(out[0, :, :, 21:] == 1.0)
    assert torch.all(out[0, :, :, 7:21] == 0.0)


# ------------------------------------------------------------------------------------------------------------
# preprocess_frame
# ------------------------------------------------------------------------------------------------------------


def test_preprocess_frame_matches_batch_path(golden, image_paths):
    with Image.open(image_paths["b"]) as img:
        arr = np.array(img)
    out, info = preprocess_frame(arr)
    assert out.shape == (3, 518, 518) and out.is_contiguous()
    _assert_bit_exact(out, golden["crop.single.b"][0])
    out2, info2 = preprocess_frame(arr, info)
    assert torch.equal(out, out2) and info2 == info
    padded, pinfo = preprocess_frame(arr, mode="pad")
    assert torch.equal(_codes(padded), golden["pad.batch"][1]) and pinfo.mode == "pad"


def test_preprocess_frame_rejects_mismatched_info():
    info = plan_geometry(20, 30, "crop", 28)
    with pytest.raises(ValueError, match=r"\(20, 30\)"):
        preprocess_frame(np.zeros((21, 30, 3), dtype=np.uint8), info)
    with pytest.raises(ValueError, match="conflicts"):
        preprocess_frame(np.zeros((20, 30, 3), dtype=np.uint8), info, mode="pad")


# ------------------------------------------------------------------------------------------------------------
# Inverse mappings
# ------------------------------------------------------------------------------------------------------------


def test_mask_rectangle_maps_to_original_region():
    info = plan_geometry(200, 300, "pad")  # resized 350x518, pad_top 84, scale 518/300 and 1.75
    mask = torch.zeros(518, 518, dtype=torch.bool)
    # rectangle in model space that is exactly original rows [40, 80) and cols [60, 150)
    top, bottom = 84 + round(40 * 1.75), 84 + round(80 * 1.75)
    mask[top:bottom, 259 - 104 : 259 + 51] = True  # cols ~ [89.8, 119.3) in the original
    mask[:84] = True  # padding must be ignored
    back = mask_to_original(mask, info)
    assert back.shape == (200, 300) and back.dtype == np.bool_
    rows = np.flatnonzero(back.any(axis=1))
    assert rows.min() == 40 and rows.max() == 79
    cols = np.flatnonzero(back.any(axis=0))
    assert abs(cols.min() - (259 - 104) * 300 / 518) <= 1 and abs(cols.max() + 1 - (259 + 51) * 300 / 518) <= 1
    assert back[40:80, cols.min() : cols.max() + 1].all()
    assert back.sum() == 40 * (cols.max() - cols.min() + 1)


def test_mask_crop_rows_become_false():
    info = plan_geometry(411, 257, "crop")  # crop_top 154 of 826 rows, sy = 826/411
    full = np.ones((2, 518, 518), dtype=np.float32)
    back_bool = mask_to_original(full.astype(bool), info)
    assert back_bool.shape == (2, 411, 257)
    sy = 826 / 411
    rows = np.flatnonzero(back_bool[0].all(axis=1))
    assert abs(rows.min() - 154 / sy) <= 1 and abs(rows.max() + 1 - (154 + 518) / sy) <= 1
    assert not back_bool[0, : int(154 / sy) - 1].any() and not back_bool[0, int((154 + 518) / sy) + 2 :].any()
    back_float = mask_to_original(torch.from_numpy(full), [info, info])
    assert back_float.dtype == np.float32 and back_float.shape == (2, 411, 257)
    assert np.allclose(back_float[:, rows.min() + 2 : rows.max() - 1], 1.0)
    assert np.all(back_float[:, :70] == 0.0) and np.all(back_float[:, 340:] == 0.0)


@pytest.mark.parametrize(
    ("shape", "target", "border", "tol"),
    [
        ((60, 90), 140, 2, 2e-3),  # model -> original is a downscale (antialiased, ~0.2 px of the gradient)
        ((120, 180), 56, 4, 1e-5),  # model -> original is an upscale: plain bilinear is exact for a linear map
    ],
)
def test_mask_bilinear_smooth_map_round_trip(shape, target, border, tol):
    info = plan_geometry(*shape, "pad", target_size=target)
    h, w = info.original_size
    vv, uu = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    original_map = (uu / w + vv / h).astype(np.float32)
    # the same linear function sampled at model pixel centres (through the forward pixel mapping)
    big_h, big_w = info.model_size
    mv, mu = np.meshgrid(np.arange(big_h) + 0.5, np.arange(big_w) + 0.5, indexing="ij")
    orig_uv = pixels_to_original(np.stack([mu, mv], axis=-1), info)
    model_map = (orig_uv[..., 0] / w + orig_uv[..., 1] / h).astype(np.float32)
    back = mask_to_original(model_map, info)
    assert back.shape == (h, w)
    inner = (slice(border, -border), slice(border, -border))
    assert np.abs(back[inner] - original_map[inner]).max() < tol
    with pytest.raises(ValueError, match="interpolation"):
        mask_to_original(model_map, info, interpolation="cubic")
    nearest = mask_to_original(model_map, info, interpolation="nearest")
    # nearest picks the model pixel whose centre is within half a model pixel (0.5 / scale original pixels)
    err_nearest = np.abs(nearest - original_map).max()
    assert nearest.dtype == np.float32
    assert err_nearest <= 0.5 * (1 / (w * info.scale_x) + 1 / (h * info.scale_y)) + 1e-6


def test_mask_wrong_shape_raises():
    info = plan_geometry(200, 300, "crop")
    with pytest.raises(ValueError, match=r"\(350, 518\)"):
        mask_to_original(np.zeros((518, 518), dtype=bool), info)
    with pytest.raises(ValueError, match=r"\[H, W\] or \[S, H, W\]"):
        mask_to_original(np.zeros((1, 1, 350, 518), dtype=bool), info)
    with pytest.raises(ValueError, match="3 frames"):
        mask_to_original(np.zeros((3, 350, 518), dtype=bool), [info, info])


@pytest.mark.parametrize(("shape", "mode"), [((200, 300), "crop"), ((411, 257), "crop"), ((411, 257), "pad")])
def test_intrinsics_round_trip(shape, mode):
    info = plan_geometry(*shape, mode)
    rng = np.random.default_rng(3)
    fx, fy, cx, cy = rng.uniform(300, 600), rng.uniform(300, 600), rng.uniform(100, 200), rng.uniform(80, 220)
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    Km = intrinsics_to_model(K, info)
    assert np.allclose(intrinsics_to_original(Km, info), K, atol=1e-9)
    assert np.isclose(Km[0, 0], K[0, 0] * info.scale_x) and np.isclose(Km[1, 1], K[1, 1] * info.scale_y)
    assert np.isclose(Km[0, 2], K[0, 2] * info.scale_x + info.pad_left)
    assert np.isclose(Km[1, 2], K[1, 2] * info.scale_y + info.pad_top - info.crop_top)
    Kt = torch.from_numpy(np.stack([K, 2 * K - np.diag([0, 0, 1.0])])).float()
    back = intrinsics_to_original(intrinsics_to_model(Kt, [info, info]), [info, info])
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float32 and back.shape == (2, 3, 3)
    assert torch.allclose(back, Kt, atol=1e-4)


def test_intrinsics_known_values_for_cropped_image():
    info = plan_geometry(411, 257, "crop")
    Km = torch.tensor([[500.0, 0.0, 259.0], [0.0, 500.0, 259.0], [0.0, 0.0, 1.0]])
    Ko = intrinsics_to_original(Km, info)
    sx, sy = 518 / 257, 826 / 411
    expected = torch.tensor([[500 / sx, 0, 259 / sx], [0, 500 / sy, (259 + 154) / sy], [0, 0, 1]])
    assert torch.allclose(Ko, expected, atol=1e-4)


def test_pixels_round_trip_known_scale():
    info = plan_geometry(200, 300, "pad")
    uv = np.array([[150.0, 100.0], [0.0, 0.0], [300.0, 200.0]])
    model = pixels_to_model(uv, info)
    assert np.allclose(model, [[259.0, 259.0], [0.0, 84.0], [518.0, 434.0]])
    assert np.allclose(pixels_to_original(model, info), uv)
    crop = plan_geometry(411, 257, "crop")
    m = pixels_to_model(torch.tensor([[257.0 / 2, 411.0 / 2]]), crop)
    assert torch.allclose(m, torch.tensor([[259.0, 826 / 2 - 154]]))
    assert torch.allclose(pixels_to_original(m, crop), torch.tensor([[128.5, 205.5]]))


def test_pixel_and_intrinsics_mappings_agree():
    info = plan_geometry(480, 640, "pad")
    K = np.array([[520.0, 0.0, 320.0], [0.0, 515.0, 240.0], [0.0, 0.0, 1.0]])
    pts = np.array([[0.3, -0.2, 2.0], [-1.0, 0.5, 4.0], [0.0, 0.0, 1.0]])
    proj_orig = (K @ pts.T).T
    uv_orig = proj_orig[:, :2] / proj_orig[:, 2:]
    proj_model = (intrinsics_to_model(K, info) @ pts.T).T
    uv_model = proj_model[:, :2] / proj_model[:, 2:]
    assert np.allclose(pixels_to_model(uv_orig, info), uv_model)


# ------------------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------------------


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "no_such_image.png"
    with pytest.raises(FileNotFoundError, match="no_such_image.png"):
        preprocess_images([missing])
    with pytest.raises(FileNotFoundError, match="no_such_image.png"):
        load_and_preprocess_images([str(missing)])


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10, 3), dtype=np.float32),
        np.zeros((10, 10, 5), dtype=np.uint8),
        np.zeros((10,), dtype=np.uint8),
        np.zeros((0, 10, 3), dtype=np.uint8),
    ],
)
def test_bad_arrays_raise_with_expected_shape(bad):
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        preprocess_images([bad])


def test_invalid_mode_lists_modes():
    img = np.zeros((10, 10, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="crop") as err:
        preprocess_images([img], mode="stretch")
    assert "pad" in str(err.value) and "stretch" in str(err.value)
    with pytest.raises(ValueError, match="pad"):
        load_and_preprocess_images([img], mode="resize")


def test_empty_and_bad_target_raise():
    with pytest.raises(ValueError, match="empty"):
        preprocess_images([])
    with pytest.raises(ValueError, match="empty"):
        load_and_preprocess_images([])
    with pytest.raises(ValueError, match="multiple of 14"):
        preprocess_images([np.zeros((10, 10, 3), dtype=np.uint8)], target_size=500)
    with pytest.raises(ValueError, match="too extreme"):
        plan_geometry(1, 2000, "crop")
    with pytest.raises(TypeError, match="numpy"):
        preprocess_images([12345])
