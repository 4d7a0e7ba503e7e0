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


def test_overlapped_pass2_gives_the_same_result(tiny):
    """Finishing pass 1 and the pose-free refinement on a worker while pass 2 runs changes nothing, bit for bit."""
    model, inputs, _ = tiny
    images = inputs["images_s16"] if "images_s16" in inputs else inputs["images"]
    a = VGGT4D(model, VGGT4DConfig(overlap_pass2=True)).run(images)
    b = VGGT4D(model, VGGT4DConfig(overlap_pass2=False)).run(images)
    assert "background" in a.info and "background" not in b.info
    assert a.info["background"]["pass1_tail_seconds"] > 0 and a.info["background"]["refine_seconds"] > 0
    assert a.info["coarse"]["kmeans_overlapped"] and not b.info["coarse"]["kmeans_overlapped"]
    assert bool(a.coarse_mask.any())
    for name in ("dynamic_mask", "coarse_mask", "extrinsic", "extrinsic_pass1", "intrinsic", "depth", "depth_conf",
                 "points", "colors"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for name, value in b.cues.items():
        assert torch.equal(a.cues[name], value), name


def test_staged_pass_equals_predict(tiny):
    """``VGGT.start``: advancing in steps (here from two threads) gives exactly what ``predict`` gives."""
    import threading

    model, inputs, _ = tiny
    images = inputs["images"]
    whole = model.predict(images, heads=("camera", "depth"), return_patch_tokens=True, amp_dtype=None)
    staged = model.start(images, heads=("camera", "depth"), return_patch_tokens=True, amp_dtype=None)
    assert torch.equal(staged.patch_tokens, whole["patch_tokens"]) and staged.next_layer == 0
    staged.advance(3)
    assert staged.next_layer == 3
    staged.advance(2)  # nothing left before layer 2
    assert staged.next_layer == 3
    box = {}
    worker = threading.Thread(target=lambda: box.update(out=staged.finish()))
    worker.start()
    worker.join()
    out = box["out"]
    assert out is staged.finish()  # finishing twice returns the same result
    for key in ("pose_enc", "depth", "depth_conf", "patch_tokens"):
        assert torch.equal(out[key], whole[key]), key
    assert not out["depth"].requires_grad and out["depth"].is_inference()


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


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 65537])
def test_select_quantile_equals_torch_quantile(n):
    from vggt4d_ros.dynamic.pipeline import select_quantile

    g = torch.Generator().manual_seed(n)
    for values in (torch.rand(n, generator=g) * 5, torch.randint(0, 9, (n,), generator=g).float()):
        for q in (0.0, 0.1, 0.25, 0.5, 0.6667, 0.99):
            assert torch.equal(select_quantile(values, q), torch.quantile(values, q)), (n, q)
    with pytest.raises(ValueError):
        select_quantile(torch.zeros(0), 0.5)


def test_camera_only_pass_computes_only_the_camera_tokens_of_the_last_layer(tiny):
    """With the camera head alone, the last block computes the camera tokens only; the poses are unchanged."""
    model, inputs, _ = tiny
    images = inputs["images"]
    mask = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool)
    mask[:, : images.shape[-2] // 3, : images.shape[-1] // 2] = True
    last = model.config.aggregator.depth - 1
    seen = []
    handle = model.aggregator.global_blocks[last].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        with torch.inference_mode():
            for dynamic in (None, mask):
                full = model(images, dynamic_mask=dynamic)
                cam = model(images, dynamic_mask=dynamic, heads=("camera",))
                torch.testing.assert_close(cam["pose_enc"], full["pose_enc"], atol=1e-6, rtol=0)
            kept = model(images, heads=("camera",), keep_layers=[last])  # the last layer asked for: all tokens
    finally:
        handle.remove()
    S, (H, W), patch = images.shape[0], images.shape[-2:], model.config.patch_size
    N = S * (model.aggregator.patch_start_idx + (H // patch) * (W // patch))  # every token of the window
    # full, camera only, full masked, camera only masked, camera only with the last layer kept
    assert [shape[1] for shape in seen] == [N, S, N, S, N]
    assert kept["aggregated"][last].shape[2] == N // S


def test_block_query_index_equals_the_full_block_rows():
    from vggt4d_ros.model.layers import Block, RotaryPositionEmbedding2D, patch_positions

    torch.manual_seed(0)
    block = Block(64, 2, qk_norm=True, init_values=0.1, rope=RotaryPositionEmbedding2D(100.0)).eval()
    x = torch.randn(2, 5 + 12, 64)
    pos = patch_positions(2, 3, 4, 5, torch.device("cpu"))
    index = torch.tensor([0, 3, 9])
    with torch.inference_mode():
        full = block(x, pos=pos)
        part = block(x, pos=pos, query_index=index)
    torch.testing.assert_close(part, full[:, index], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="query_index"):
        block.attn(x, pos=pos, attn_mask=torch.ones(1, 1, 17, 17, dtype=torch.bool), query_index=index)
