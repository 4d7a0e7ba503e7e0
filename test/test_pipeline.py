"""VGGT4D through its public names: attention_cues, the masked forward, and the one-call pipeline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from vggt4d_ros.dynamic import VGGT4D, VGGT4DConfig, attention_cues
from vggt4d_ros.model import load_model

from conftest import REPO_ROOT

CUES = ("m1", "v1", "m2", "m3", "v3", "dyn")


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    model = load_model(fixtures_dir / "tiny_dino_weights.safetensors", config=fixtures_dir / "tiny_dino_config.json")
    return model, load_file(fixtures_dir / "tiny_dino_inputs.safetensors"), \
        load_file(fixtures_dir / "tiny_dino_vggt4d.safetensors")


@pytest.mark.parametrize("prefix,key", [("", "images"), ("s16.", "images_s16")])
def test_attention_cues_match_reference(tiny, prefix, key):
    model, inputs, ref = tiny
    cues = attention_cues(model, inputs[key])
    for name in CUES:
        expected = ref[f"{prefix}cues.{name}"]
        assert cues[name].shape == expected.shape
        torch.testing.assert_close(cues[name], expected, atol=2e-5, rtol=1e-4, msg=f"cue {name}")


def test_masked_forward_public_call_matches_reference(tiny):
    model, inputs, ref = tiny
    with torch.inference_mode():
        out = model(inputs["images"], dynamic_mask=inputs["dyn_mask"] > 0.5)
    torch.testing.assert_close(out["pose_enc"], ref["masked.pose_enc"], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out["depth"], ref["masked.depth"], atol=1e-4, rtol=1e-4)


def test_pipeline_result_contract(tiny):
    model, inputs, _ = tiny
    images = inputs["images"]
    S, _, H, W = images.shape
    res = VGGT4D(model, VGGT4DConfig()).run(images)
    assert res.dynamic_mask.shape == (S, H, W) and res.dynamic_mask.dtype == torch.bool
    assert res.coarse_mask.shape == (S, H, W) and res.coarse_mask.dtype == torch.bool
    assert res.extrinsic.shape == (S, 3, 4) and res.intrinsic.shape == (S, 3, 3)
    assert res.depth.shape == (S, H, W) and res.depth_conf.shape == (S, H, W)
    assert set(CUES) <= set(res.cues)
    assert res.points.ndim == 2 and res.points.shape[1] == 3 and res.points.shape[0] > 0
    assert res.colors.shape == res.points.shape and res.colors.dtype == torch.uint8
    assert torch.isfinite(res.points).all()
    # static points never come from dynamic pixels
    assert res.point_frames.shape[0] == res.points.shape[0]
    for stage in ("pass1", "cues", "clustering", "refinement", "pass2"):
        assert res.timings[stage] >= 0.0
    # rotations are proper (det +1) up to the reference's unnormalised quaternion scale
    det = torch.linalg.det(res.extrinsic[:, :, :3].double())
    assert torch.all(det > 0)


def test_pipeline_pass2_uses_masked_pass(tiny):
    """With a non-empty mask, the extrinsics come from the masked camera pass, not from pass 1."""
    model, inputs, _ = tiny
    images = inputs["images"]
    res = VGGT4D(model, VGGT4DConfig(refine=False)).run(images)
    assert bool(res.dynamic_mask.any())
    assert not torch.equal(res.extrinsic, res.extrinsic_pass1)
    plain = VGGT4D(model, VGGT4DConfig(refine=False, masked_pass=False)).run(images)
    torch.testing.assert_close(plain.extrinsic, plain.extrinsic_pass1)


@pytest.mark.parametrize("pass2_mask", ["coarse", "refined"])
def test_pipeline_pass2_is_masked_with_the_configured_mask(tiny, pass2_mask):
    """Contract: by default the pass-2 extrinsics are those of the model run with the COARSE mask hidden."""
    from vggt4d_ros.model.geometry import decode_pose_encoding

    model, inputs, _ = tiny
    images = inputs["images"]
    H, W = images.shape[-2:]
    res = VGGT4D(model, VGGT4DConfig(pass2_mask=pass2_mask)).run(images)
    assert res.info["pass2_mask"] == pass2_mask
    hidden = res.coarse_mask if pass2_mask == "coarse" else res.dynamic_mask
    assert bool(hidden.any())
    with torch.inference_mode():
        out = model(images, dynamic_mask=hidden)
    ext, _ = decode_pose_encoding(out["pose_enc"][0].float(), (H, W))
    torch.testing.assert_close(res.extrinsic, ext, atol=1e-5, rtol=0)
    assert not torch.equal(res.extrinsic, res.extrinsic_pass1)


def test_overlapped_refinement_gives_the_same_result(tiny):
    model, inputs, _ = tiny
    images = inputs["images_s16"] if "images_s16" in inputs else inputs["images"]
    a = VGGT4D(model, VGGT4DConfig(overlap_refinement=True)).run(images)
    b = VGGT4D(model, VGGT4DConfig(overlap_refinement=False)).run(images)
    assert "refine_background" in a.info and "refine_background" not in b.info
    assert a.info["refine_background"]["seconds"] >= 0
    assert torch.equal(a.dynamic_mask, b.dynamic_mask) and torch.equal(a.coarse_mask, b.coarse_mask)
    assert torch.equal(a.extrinsic, b.extrinsic)


def test_pipeline_default_is_the_reference_order(tiny):
    assert VGGT4DConfig().pass2_mask == "coarse"
    with pytest.raises(ValueError, match="pass2_mask"):
        VGGT4DConfig(pass2_mask="fine")


def test_pipeline_single_frame_and_two_frames(tiny):
    model, inputs, _ = tiny
    for S in (1, 2):
        res = VGGT4D(model).run(inputs["images"][:S])
        assert res.dynamic_mask.shape[0] == S
        assert torch.isfinite(res.cues["dyn"]).all()
        assert not res.dynamic_mask.any()  # no source frames: no evidence of motion


def test_pipeline_rejects_bad_shapes(tiny):
    model, inputs, _ = tiny
    with pytest.raises(ValueError, match=r"\[S, 3, H, W\]"):
        VGGT4D(model).run(inputs["images"][0])
    with pytest.raises(ValueError):
        VGGT4DConfig(dtype="float16")


_PROBE = r"""
import json, resource, sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(2)
from vggt4d_ros.model import load_model
from vggt4d_ros.dynamic import VGGT4D, VGGT4DConfig
S = int(sys.argv[1])
model = load_model({weights!r}, config={config!r})
g = torch.Generator().manual_seed(0)
images = torch.rand(S, 3, 42, 56, generator=g)
res = VGGT4D(model, VGGT4DConfig()).run(images)
assert res.dynamic_mask.shape == (S, 42, 56)
print(json.dumps({{"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def _peak_rss_mb(fixtures_dir, S: int) -> float:
    code = _PROBE.format(root=str(REPO_ROOT), weights=str(fixtures_dir / "tiny_dino_weights.safetensors"),
                         config=str(fixtures_dir / "tiny_dino_config.json"))
    out = subprocess.run([sys.executable, "-c", code, str(S)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["maxrss_kb"] / 1024.0


def test_long_sequence_memory_is_linear_with_small_slope(fixtures_dir):
    """S=200 frames in one call (tiny model, 42x56 images).

    Budget: peak RSS of the whole process at S=200 below 1 GB, and growth from S=50 to S=200 below 1 MB per frame
    (measured here: about 380 MB -> 470 MB, 0.6 MB/frame; a 42x56 frame's own images, depth and outputs are
    about 0.1 MB).
    """
    small = _peak_rss_mb(fixtures_dir, 50)
    large = _peak_rss_mb(fixtures_dir, 200)
    slope = (large - small) / 150.0
    assert large < 1024, f"peak RSS {large:.0f} MB at S=200 exceeds the 1 GB budget"
    assert slope < 1.0, f"peak RSS {small:.0f} MB at S=50 -> {large:.0f} MB at S=200 ({slope:.2f} MB/frame)"
