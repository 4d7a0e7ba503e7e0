"""Golden parity of the whole VGGT model (tiny fixture models) with the reference implementation.

Covers the forward outputs, decoded cameras, intermediates (patch tokens, every aggregator layer, the DINO
positional embedding), attention q/k seen by an observer, and the VGGT4D masked pass.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from vggt4d_ros.model import (DEFAULT_MASK_LAYERS, decode_pose_encoding, depth_to_world_points, load_model,
                              pixel_mask_to_token_mask, resolve_config)
from vggt4d_ros.model.aggregator import Aggregator
from vggt4d_ros.model.layers import patch_positions

DENSE = dict(atol=1e-4, rtol=1e-4)
TIGHT = dict(atol=2e-5, rtol=1e-4)  # q/k and pose encodings
HEAD_KEYS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")
CASES = [("tiny_dino", ""), ("tiny_dino", "s1."), ("tiny_dino", "s16."), ("tiny_conv", ""), ("tiny_conv", "s1.")]


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    """Per model name: the loaded model and its input/output/q-k fixture tensors."""
    data = {}
    for name in ("tiny_dino", "tiny_conv"):
        model = load_model(fixtures_dir / f"{name}_weights.safetensors", config=fixtures_dir / f"{name}_config.json")
        data[name] = dict(model=model, inputs=load_file(fixtures_dir / f"{name}_inputs.safetensors"),
                          outputs=load_file(fixtures_dir / f"{name}_outputs.safetensors"),
                          qk=load_file(fixtures_dir / f"{name}_qk.safetensors"))
    data["tiny_dino"]["vggt4d"] = load_file(fixtures_dir / "tiny_dino_vggt4d.safetensors")
    return data


def _images(case: dict, prefix: str) -> torch.Tensor:
    return case["inputs"]["images" + ("_" + prefix[:-1] if prefix else "")]


def _stored_layers(outputs: dict, prefix: str) -> list[int]:
    head = f"{prefix}intermediate.aggregated."
    return sorted(int(k[len(head):]) for k in outputs if k.startswith(head))


class QKRecorder:
    """Attention observer keeping copies of every q/k it is shown."""

    def __init__(self) -> None:
        self.seen: dict[str, torch.Tensor] = {}

    def __call__(self, block_type: str, layer: int, q: torch.Tensor, k: torch.Tensor) -> None:
        self.seen[f"{block_type}.{layer}.q"] = q.clone()
        self.seen[f"{block_type}.{layer}.k"] = k.clone()


class SelectiveQKRecorder(QKRecorder):
    """Observer that asks only for some layers through ``needed_layers``."""

    def __init__(self, layers: dict[str, set[int]]) -> None:
        super().__init__()
        self.layers = layers

    def needed_layers(self, block_type: str) -> set[int]:
        return self.layers[block_type]


@pytest.fixture(scope="module")
def forwards(golden):
    """Cached ``(name, prefix) -> output dict`` of the plain forward (with every stored layer kept)."""
    cache = {}
    for name, prefix in CASES:
        case = golden[name]
        with torch.no_grad():
            cache[name, prefix] = case["model"](_images(case, prefix), return_patch_tokens=True,
                                                keep_layers=_stored_layers(case["outputs"], prefix))
    return cache


@pytest.mark.parametrize("name,prefix", CASES)
def test_head_outputs_match_reference(golden, forwards, name, prefix):
    ref, out = golden[name]["outputs"], forwards[name, prefix]
    for key in HEAD_KEYS:
        tol = TIGHT if key == "pose_enc" else DENSE
        torch.testing.assert_close(out[key], ref[prefix + key], **tol, msg=lambda m: f"{key}: {m}")
    torch.testing.assert_close(torch.stack(out["pose_enc_list"]), ref[prefix + "pose_enc_list"], **TIGHT)


@pytest.mark.parametrize("name,prefix", CASES)
def test_decoded_cameras_and_unprojection_match_reference(golden, forwards, name, prefix):
    ref, out = golden[name]["outputs"], forwards[name, prefix]
    height, width = out["depth"].shape[2:4]
    extrinsic, intrinsic = decode_pose_encoding(out["pose_enc"], (height, width))
    torch.testing.assert_close(extrinsic, ref[prefix + "extrinsic"], **TIGHT)
    torch.testing.assert_close(intrinsic, ref[prefix + "intrinsic"], **DENSE)
    points = depth_to_world_points(out["depth"][0], extrinsic[0], intrinsic[0])
    torch.testing.assert_close(points, ref[prefix + "world_points_from_depth"], **DENSE)


@pytest.mark.parametrize("name,prefix", CASES)
def test_intermediates_match_reference(golden, forwards, name, prefix):
    case, out = golden[name], forwards[name, prefix]
    ref = case["outputs"]
    layers = _stored_layers(ref, prefix)
    assert sorted(out["aggregated"]) == layers
    for layer in layers:
        torch.testing.assert_close(out["aggregated"][layer], ref[f"{prefix}intermediate.aggregated.{layer}"],
                                   **DENSE, msg=lambda m: f"layer {layer}: {m}")
    if prefix + "intermediate.patch_tokens" in ref:
        torch.testing.assert_close(out["patch_tokens"], ref[prefix + "intermediate.patch_tokens"], **DENSE)
    if prefix + "intermediate.dino_pos_embed" in ref:
        height, width = _images(case, prefix).shape[-2:]
        pos = case["model"].aggregator.patch_embed.interpolate_pos_encoding(height, width)
        torch.testing.assert_close(pos, ref[prefix + "intermediate.dino_pos_embed"], **DENSE)


def test_expected_parity_coverage(golden, forwards):
    """Guard against silently comparing nothing: the main input stores all 24 (dino) / 4 (conv) layers."""
    assert _stored_layers(golden["tiny_dino"]["outputs"], "") == list(range(24))
    assert _stored_layers(golden["tiny_conv"]["outputs"], "") == [4, 11, 17, 23]
    assert "s1.intermediate.dino_pos_embed" in golden["tiny_dino"]["outputs"]


@pytest.mark.parametrize("name,prefix", [("tiny_dino", ""), ("tiny_conv", ""), ("tiny_dino", "s16.")])
def test_observer_sees_reference_qk(golden, name, prefix):
    case = golden[name]
    stored = {k[len(prefix):]: v for k, v in case["qk"].items()
              if k.startswith(prefix) and (prefix or not k.startswith("s16."))}
    wanted: dict[str, set[int]] = {"frame": set(), "global": set()}
    for key in stored:
        block_type, layer, _ = key.split(".")
        wanted[block_type].add(int(layer))
    recorder = SelectiveQKRecorder(wanted)
    with torch.no_grad():
        case["model"](_images(case, prefix), attention_observer=recorder, heads=())
    assert sorted(recorder.seen) == sorted(stored)
    for key, value in stored.items():
        torch.testing.assert_close(recorder.seen[key], value, **TIGHT, msg=lambda m: f"{key}: {m}")


def test_observer_without_needed_layers_sees_every_block(golden):
    case = golden["tiny_dino"]
    recorder = QKRecorder()
    with torch.no_grad():
        case["model"](case["inputs"]["images"], attention_observer=recorder, heads=())
    assert len(recorder.seen) == 2 * 2 * 24
    assert recorder.seen["frame.0.q"].shape == (4, 2, 40, 16)
    assert recorder.seen["global.23.k"].shape == (1, 2, 160, 16)


def test_token_mask_matches_reference(golden):
    case = golden["tiny_dino"]
    grid, token_mask = pixel_mask_to_token_mask(case["inputs"]["dyn_mask"])
    assert torch.equal(grid, case["vggt4d"]["token_mask_grid"])
    assert torch.equal(token_mask, case["vggt4d"]["token_mask"])
    batched_grid, batched = pixel_mask_to_token_mask(case["inputs"]["dyn_mask"][None].bool())
    assert torch.equal(batched_grid[0], grid) and torch.equal(batched[0], token_mask)


def test_token_mask_threshold_and_validation():
    mask = torch.zeros(1, 28, 14)
    mask[0, :14] = 0.4
    mask[0, 14:, 0] = 0.9
    grid, token_mask = pixel_mask_to_token_mask(mask, num_special=2)
    assert grid.tolist() == [[[False], [True]]]
    assert token_mask.tolist() == [[False, False, False, True]]
    with pytest.raises(ValueError, match="multiple of the patch size"):
        pixel_mask_to_token_mask(torch.zeros(1, 20, 14))


@pytest.fixture(scope="module")
def masked_pass(golden):
    case = golden["tiny_dino"]
    with torch.no_grad():
        return case["model"](case["inputs"]["images"], case["inputs"]["dyn_mask"] > 0.5,
                             keep_layers=[0, 1, 2, 3, 4, 5, 23])


def test_masked_pass_matches_reference(golden, masked_pass):
    ref = golden["tiny_dino"]["vggt4d"]
    for key in HEAD_KEYS:
        tol = TIGHT if key == "pose_enc" else DENSE
        torch.testing.assert_close(masked_pass[key], ref["masked." + key], **tol, msg=lambda m: f"{key}: {m}")
    torch.testing.assert_close(torch.stack(masked_pass["pose_enc_list"]), ref["masked.pose_enc_list"], **TIGHT)
    for layer in (0, 1, 2, 3, 4, 5, 23):
        torch.testing.assert_close(masked_pass["aggregated"][layer], ref[f"masked.intermediate.aggregated.{layer}"],
                                   **DENSE, msg=lambda m: f"layer {layer}: {m}")
    height, width = masked_pass["depth"].shape[2:4]
    extrinsic, intrinsic = decode_pose_encoding(masked_pass["pose_enc"], (height, width))
    torch.testing.assert_close(extrinsic, ref["masked.extrinsic"], **TIGHT)
    torch.testing.assert_close(intrinsic, ref["masked.intrinsic"], **DENSE)
    points = depth_to_world_points(masked_pass["depth"][0], extrinsic[0], intrinsic[0])
    torch.testing.assert_close(points, ref["masked.world_points_from_depth"], **DENSE)


def test_masked_pass_differs_from_plain_pass(golden, forwards, masked_pass):
    assert not torch.allclose(masked_pass["aggregated"][0], forwards["tiny_dino", ""]["aggregated"][0], atol=1e-3)


def test_token_mask_and_patch_token_reuse_give_the_same_masked_pass(golden, forwards, masked_pass):
    case = golden["tiny_dino"]
    token_mask = case["vggt4d"]["token_mask"]
    with torch.no_grad():
        out = case["model"](case["inputs"]["images"], token_mask=token_mask, heads=("depth",),
                            patch_tokens=forwards["tiny_dino", ""]["patch_tokens"], mask_layers=DEFAULT_MASK_LAYERS)
    assert set(out) == {"depth", "depth_conf"}
    assert torch.equal(out["depth"], masked_pass["depth"])
    assert torch.equal(out["depth_conf"], masked_pass["depth_conf"])


def test_empty_mask_is_bitwise_the_plain_pass(golden):
    case = golden["tiny_dino"]
    images = case["inputs"]["images"]
    with torch.no_grad():
        plain = case["model"](images)
        empty = case["model"](images, torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.bool))
    assert set(plain) == set(empty)
    for key in HEAD_KEYS:
        assert torch.equal(plain[key], empty[key]), key


def test_batched_masked_pass_equals_per_element_passes(golden):
    """B=2 with different masks per element: frame masks batch over B*S, global key removal loops over B."""
    case = golden["tiny_dino"]
    model, images, dyn = case["model"], case["inputs"]["images"], case["inputs"]["dyn_mask"] > 0.5
    second = images.flip(0)
    masks = torch.stack([dyn, dyn.flip(0) & (torch.arange(dyn.shape[-1]) < 40)])
    with torch.no_grad():
        batched = model(torch.stack([images, second]), masks, heads=("camera", "depth"))
        singles = [model(images, masks[0], heads=("camera", "depth")),
                   model(second, masks[1], heads=("camera", "depth"))]
    for key in ("pose_enc", "depth", "depth_conf"):
        torch.testing.assert_close(batched[key], torch.cat([s[key] for s in singles]), atol=1e-5, rtol=1e-5)


def test_mask_layers_argument_is_honoured(golden, forwards):
    case = golden["tiny_dino"]
    with torch.no_grad():
        out = case["model"](case["inputs"]["images"], case["inputs"]["dyn_mask"] > 0.5, mask_layers=(2,),
                            heads=(), keep_layers=[0, 1, 2])
    plain = forwards["tiny_dino", ""]["aggregated"]
    assert torch.equal(out["aggregated"][0], plain[0])
    assert torch.equal(out["aggregated"][1], plain[1])
    assert not torch.allclose(out["aggregated"][2], plain[2], atol=1e-3)


def test_aggregator_keeps_only_tapped_layers_by_default(golden):
    model = golden["tiny_dino"]["model"]
    images = golden["tiny_dino"]["inputs"]["images"]
    assert model.config.tapped_layers == (4, 11, 17, 23)
    with torch.no_grad():
        layers, _ = model.aggregator(images[None], keep_layers=model.config.tapped_layers)
        out = model(images)
    assert sorted(layers) == [4, 11, 17, 23]
    assert set(out) == {"pose_enc", "pose_enc_list", "depth", "depth_conf", "world_points", "world_points_conf"}


def test_predict_matches_forward_under_inference_mode(golden, forwards):
    case = golden["tiny_conv"]
    out = case["model"].predict(case["inputs"]["images"])
    assert out["depth"].is_inference()
    assert torch.equal(out["depth"], forwards["tiny_conv", ""]["depth"])


def test_forward_supports_autograd(golden):
    case = golden["tiny_conv"]
    images = case["inputs"]["images_s1"].clone().requires_grad_(True)
    out = case["model"](images, heads=("depth",))
    out["depth"].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


@pytest.mark.parametrize("bad,kwargs,match", [
    (lambda im: im.to(torch.uint8), {}, "float tensor"),
    (lambda im: im[0], {}, r"\[S, 3, H, W\]"),
    (lambda im: im[:, :, :69], {}, "multiple of the patch size"),
    (lambda im: im, {"dynamic_mask": torch.zeros(4, 70, 97, dtype=torch.bool)}, "dynamic_mask must have shape"),
    (lambda im: im, {"dynamic_mask": torch.zeros(3, 4, 70, 98, dtype=torch.bool)}, "dynamic_mask must have shape"),
    (lambda im: im, {"token_mask": torch.zeros(4, 41, dtype=torch.bool)}, "token_mask must have shape"),
    (lambda im: im, {"token_mask": torch.zeros(4, 40, dtype=torch.bool),
                     "dynamic_mask": torch.zeros(4, 70, 98, dtype=torch.bool)}, "either dynamic_mask or"),
    (lambda im: im, {"heads": ("track",)}, "unknown heads"),
    (lambda im: im, {"keep_layers": [24]}, "out of range"),
    (lambda im: im, {"patch_tokens": torch.zeros(4, 30, 32)}, "patch_tokens must have shape"),
])
def test_invalid_inputs_raise_clear_errors(golden, bad, kwargs, match):
    case = golden["tiny_dino"]
    with pytest.raises(ValueError, match=match), torch.no_grad():
        case["model"](bad(case["inputs"]["images"]), **kwargs)


@pytest.mark.parametrize("aa_order", [("frame", "global"), ("global", "frame")])
def test_aa_order_and_block_size_are_honoured(fixtures_dir, aa_order):
    """depth 4, aa_block_size 2: blocks run as [order[0] x2, order[1] x2] twice; layer l = cat(frame_l, global_l)."""
    cfg = resolve_config(fixtures_dir / "tiny_conv_config.json")
    agg_cfg = dataclasses.replace(cfg.aggregator, depth=4, aa_block_size=2, aa_order=aa_order)
    torch.manual_seed(0)
    agg = Aggregator(agg_cfg, cfg.patch_embed)
    images = torch.rand(1, 3, 3, 28, 42)
    with torch.no_grad():
        out, patch_tokens = agg(images, keep_layers=range(4))
        tokens = torch.cat([agg.camera_token[:, [0, 1, 1]].reshape(3, 1, -1),
                            agg.register_token[:, [0, 1, 1]].reshape(3, 4, -1), patch_tokens], dim=1)
        pos = patch_positions(3, 2, 3, 5, torch.device("cpu"))
        expected, saved = {}, {}
        for start in (0, 2):
            for kind in aa_order:
                for layer in (start, start + 1):
                    if kind == "frame":
                        tokens = agg.frame_blocks[layer](tokens.reshape(3, 11, 32), pos=pos)
                    else:
                        tokens = agg.global_blocks[layer](tokens.reshape(1, 33, 32), pos=pos.reshape(1, 33, 2))
                    saved[kind, layer] = tokens.reshape(1, 3, 11, 32)
            for layer in (start, start + 1):
                expected[layer] = torch.cat([saved["frame", layer], saved["global", layer]], dim=-1)
    assert sorted(out) == [0, 1, 2, 3]
    for layer in range(4):
        assert torch.equal(out[layer], expected[layer]), layer
