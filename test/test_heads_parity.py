"""Parity of the camera head and the DPT depth/point heads with the reference, fed the stored aggregator outputs.

No aggregator is involved: the heads read ``intermediate.aggregated.{l}`` from the golden fixtures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vggt4d_ros.model.camera_head import CameraHead
from vggt4d_ros.model.config import CameraHeadConfig, DPTHeadConfig, resolve_config
from vggt4d_ros.model.dpt_head import DPTHead, inverse_log_transform, sincos_grid_embedding

PATCH_START_IDX = 5
HEAD_PREFIXES = ("camera_head", "depth_head", "point_head")


def _strip(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + ".")}


@pytest.fixture(scope="module", params=["tiny_dino", "tiny_conv"])
def setup(request, fixtures_dir: Path):
    name = request.param
    cfg = resolve_config(fixtures_dir / "tiny_dino_config.json")
    weights = load_file(str(fixtures_dir / f"{name}_weights.safetensors"))
    outputs = load_file(str(fixtures_dir / f"{name}_outputs.safetensors"))
    inputs = load_file(str(fixtures_dir / f"{name}_inputs.safetensors"))
    heads = {
        "camera_head": CameraHead(cfg.camera_head),
        "depth_head": DPTHead(cfg.depth_head),
        "point_head": DPTHead(cfg.point_head),
    }
    for prefix, head in heads.items():
        head.load_state_dict(_strip(weights, prefix), strict=True)
        head.eval()
    prefix = "intermediate.aggregated."
    tokens = {int(k[len(prefix):]): v for k, v in outputs.items() if k.startswith(prefix)}
    assert {4, 11, 17, 23} <= set(tokens)
    return heads, tokens, inputs["images"][None], outputs


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def test_camera_head_matches_reference(setup):
    heads, tokens, _, ref = setup
    with torch.no_grad():
        poses = heads["camera_head"](tokens)
    assert len(poses) == 4
    _close(poses[-1], ref["pose_enc"], atol=2e-5)
    _close(torch.stack(poses), ref["pose_enc_list"], atol=2e-5)
    # Only the last layer and token 0 are read: the other layers and tokens are irrelevant.
    last = tokens[23].clone()
    last[:, :, 1:] = 1e3
    with torch.no_grad():
        again = heads["camera_head"]({0: torch.zeros_like(last), 23: last})
    _close(again[-1], ref["pose_enc"], atol=2e-5)


def test_camera_head_iteration_override(setup):
    heads, tokens, _, ref = setup
    with torch.no_grad():
        poses = heads["camera_head"](tokens, num_iterations=2)
    assert len(poses) == 2
    _close(torch.stack(poses), ref["pose_enc_list"][:2], atol=2e-5)
    with pytest.raises(ValueError):
        heads["camera_head"](tokens, num_iterations=0)


@pytest.mark.parametrize("head_name,pred_key,conf_key", [("depth_head", "depth", "depth_conf"),
                                                         ("point_head", "world_points", "world_points_conf")])
def test_dpt_head_matches_reference(setup, head_name, pred_key, conf_key):
    heads, tokens, images, ref = setup
    with torch.no_grad():
        preds, conf = heads[head_name](tokens, images, PATCH_START_IDX)
    _close(preds, ref[pred_key])
    _close(conf, ref[conf_key])


def test_dpt_chunking_does_not_change_results(setup):
    heads, tokens, images, _ = setup
    head = heads["point_head"]
    with torch.no_grad():
        full = head(tokens, images, PATCH_START_IDX, frames_chunk_size=8)
        for chunk in (1, 3):  # a smaller conv batch changes only float rounding (a few ulp)
            preds, conf = head(tokens, images, PATCH_START_IDX, frames_chunk_size=chunk)
            _close(preds, full[0], atol=2e-5, rtol=1e-5)
            _close(conf, full[1], atol=2e-5, rtol=1e-5)


def test_dpt_rejects_bad_inputs(setup):
    heads, tokens, images, _ = setup
    head = heads["depth_head"]
    with pytest.raises(ValueError, match="patch tokens"):
        head(tokens, images, PATCH_START_IDX - 1)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        head(tokens, images[..., :69, :], PATCH_START_IDX)
    with pytest.raises(ValueError, match="layer 4"):
        head({k: v for k, v in tokens.items() if k != 4}, images, PATCH_START_IDX)


def test_head_keys_match_1b_manifest(fixtures_dir: Path):
    """The default (1B) heads have exactly the checkpoint's keys and shapes (built on the meta device)."""
    manifest = json.loads((fixtures_dir / "vggt1b_manifest.json").read_text())["keys"]
    with torch.device("meta"):
        heads = {"camera_head": CameraHead(CameraHeadConfig()), "depth_head": DPTHead(DPTHeadConfig()),
                 "point_head": DPTHead(DPTHeadConfig(output_dim=4, activation="inv_log"))}
    for prefix, head in heads.items():
        ours = {f"{prefix}.{k}": list(v.shape) for k, v in head.state_dict().items()}
        theirs = {k: v["shape"] for k, v in manifest.items() if k.startswith(prefix + ".")}
        assert ours == theirs


def test_activation_and_embedding_helpers():
    y = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], dtype=torch.float64)
    x = torch.sign(y) * torch.log1p(y.abs())
    torch.testing.assert_close(inverse_log_transform(x), y)
    # Grid at pixel centres scaled onto the unit-diagonal rectangle of the image aspect ratio.
    emb = sincos_grid_embedding(2, 4, 8, aspect_ratio=2.0)
    assert emb.shape == (8, 2, 4)
    sx, sy = 2.0 / 5 ** 0.5, 1.0 / 5 ** 0.5
    xs = sx * torch.tensor([-0.75, -0.25, 0.25, 0.75], dtype=torch.float64)
    ys = sy * torch.tensor([-0.5, 0.5], dtype=torch.float64)
    torch.testing.assert_close(emb[0, 0], xs.sin())  # omega_0 = 1
    torch.testing.assert_close(emb[3, 1], (xs * 0.1).cos())  # omega_1 = 100^(-1/2)
    torch.testing.assert_close(emb[4, :, 0], ys.sin())
    torch.testing.assert_close(emb[7, :, 2], (ys * 0.1).cos())
    with pytest.raises(ValueError):
        sincos_grid_embedding(2, 2, 6, aspect_ratio=1.0)
