"""Tests of the VGGT4D attention cues (streamed accumulator and stored-q/k reference) against the fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vggt4d_ros.dynamic.cues import (
    CUE_NAMES,
    CueAccumulator,
    CueConfig,
    cues_from_qk,
    source_frames,
)

OUT_NAMES = (*CUE_NAMES, "dyn")
ATOL, RTOL = 2e-5, 1e-4

# (prefix, S, grid) of the two fixture inputs with stored global q/k.
CASES = {"main": ("", 4, (5, 7)), "s16": ("s16.", 16, (3, 4))}


@pytest.fixture(scope="module")
def qk(fixtures_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(fixtures_dir / "tiny_dino_qk.safetensors"))


@pytest.fixture(scope="module")
def golden(fixtures_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(fixtures_dir / "tiny_dino_vggt4d.safetensors"))


def _stored_global(qk: dict[str, torch.Tensor], prefix: str) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    qs, ks = {}, {}
    for key, value in qk.items():
        parts = key.split(".")
        if key.startswith(prefix + "global."):
            layer = int(parts[-2])
            (qs if parts[-1] == "q" else ks)[layer] = value
    return qs, ks


def _run_accumulator(acc: CueAccumulator, qs: dict, ks: dict, frame_qk: dict | None = None) -> dict:
    for layer in range(24):
        if frame_qk is not None:
            acc("frame", layer, frame_qk[f"frame.{layer}.q"], frame_qk[f"frame.{layer}.k"])
        if layer in acc.needed_layers("global"):
            acc("global", layer, qs[layer], ks[layer])
    return acc.finalize()


def _random_global_qk(S: int, grid: tuple[int, int], layers, batch: int = 1, heads: int = 2, dim: int = 8,
                      dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    P = 5 + grid[0] * grid[1]
    qs = {l: torch.randn(batch, heads, S * P, dim, generator=g).to(dtype) for l in layers}
    ks = {l: torch.randn(batch, heads, S * P, dim, generator=g).to(dtype) for l in layers}
    return qs, ks


def test_fixture_keys(golden):
    for prefix, S, (h, w) in CASES.values():
        for name in OUT_NAMES:
            assert golden[f"{prefix}cues.{name}"].shape == (S, h, w)
        assert golden[f"{prefix}cues.num_sources"].shape == (S,)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_accumulator_matches_fixture(qk, golden, case, chunk_size):
    prefix, S, grid = CASES[case]
    qs, ks = _stored_global(qk, prefix)
    acc = CueAccumulator(S, grid, CueConfig(), chunk_size=chunk_size)
    assert acc.needed_layers("global") <= set(qs)
    frame_qk = qk if case == "main" else None  # frame blocks are observed but must be ignored
    out = _run_accumulator(acc, qs, ks, frame_qk)
    for name in OUT_NAMES:
        assert out[name].shape == (S, *grid)
        assert out[name].dtype == torch.float32
        torch.testing.assert_close(out[name], golden[f"{prefix}cues.{name}"], atol=ATOL, rtol=RTOL, msg=name)
    assert torch.equal(out["num_sources"], golden[f"{prefix}cues.num_sources"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_cues_from_qk_matches_fixture(qk, golden, case):
    prefix, S, grid = CASES[case]
    qs, ks = _stored_global(qk, prefix)
    out = cues_from_qk(qs, ks, S, grid)
    for name in OUT_NAMES:
        torch.testing.assert_close(out[name], golden[f"{prefix}cues.{name}"], atol=ATOL, rtol=RTOL, msg=name)
    assert torch.equal(out["num_sources"], golden[f"{prefix}cues.num_sources"])


def test_chunk_size_does_not_change_results(qk):
    prefix, S, grid = CASES["s16"]
    qs, ks = _stored_global(qk, prefix)
    ref = _run_accumulator(CueAccumulator(S, grid, chunk_size=S), qs, ks)
    for chunk in (1, 5, 7):
        out = _run_accumulator(CueAccumulator(S, grid, chunk_size=chunk), qs, ks)
        for name in OUT_NAMES:
            torch.testing.assert_close(out[name], ref[name], atol=1e-6, rtol=1e-6, msg=name)


def test_streamed_equals_reference_in_float64():
    # The streamed (linearity-based) and the literal implementations agree to float64 round-off.
    S, grid = 9, (3, 5)
    config = CueConfig(source_offsets=(-3, -1, 2, 5), m1_layers=(1, 2), v1_layers=(3, 4, 5), m2_layers=(2, 4),
                       m3_layers=(0, 5), v3_layers=(1,))
    qs, ks = _random_global_qk(S, grid, range(6), dtype=torch.float64, seed=3)
    acc = CueAccumulator(S, grid, config, chunk_size=4)
    for layer in range(6):
        acc("global", layer, qs[layer], ks[layer])
    out = acc.finalize()
    ref = cues_from_qk(qs, ks, S, grid, config)
    for name in OUT_NAMES:
        torch.testing.assert_close(out[name], ref[name], atol=1e-6, rtol=1e-6, msg=name)
    # with float64 inputs the arithmetic is float64 before the final float32 cast: differences are round-off only
    assert max(float((out[n] - ref[n]).abs().max()) for n in OUT_NAMES) < 1e-6


def test_source_frames_drop_out_of_range():
    index, weight, num = source_frames(5, (-2, 1, 3))
    assert num.tolist() == [2, 2, 2, 2, 1]
    assert index.shape == (5, 3)
    valid = weight > 0
    assert (index[valid] == (torch.arange(5)[:, None] + torch.tensor([-2, 1, 3]))[valid]).all()
    torch.testing.assert_close(weight.sum(dim=1), torch.ones(5))


@pytest.mark.parametrize("S", [1, 2])
def test_frames_without_sources_are_zero(S):
    grid = (3, 4)
    qs, ks = _random_global_qk(S, grid, range(22), seed=S)
    acc = CueAccumulator(S, grid)
    out = _run_accumulator(acc, qs, ks)
    ref = cues_from_qk(qs, ks, S, grid)
    assert out["num_sources"].tolist() == [0] * S
    for name in OUT_NAMES:
        for result in (out, ref):
            assert result[name].shape == (S, *grid)
            assert torch.isfinite(result[name]).all()
            assert (result[name] == 0).all()


def test_mixed_frames_with_and_without_sources():
    # S=3 with offsets +-2,4,6: frame 1 has no source, frames 0 and 2 have one each.
    S, grid = 3, (3, 4)
    qs, ks = _random_global_qk(S, grid, range(22), seed=7)
    out = _run_accumulator(CueAccumulator(S, grid), qs, ks)
    ref = cues_from_qk(qs, ks, S, grid)
    assert out["num_sources"].tolist() == [1, 0, 1]
    for name in OUT_NAMES:
        assert (out[name][1] == 0).all()
        assert out[name][0].amax() > 0.5 and out[name][2].amax() > 0.5
        torch.testing.assert_close(out[name], ref[name], atol=ATOL, rtol=RTOL, msg=name)


def test_batch_dimension():
    S, grid, layers = 6, (2, 3), range(22)
    qs, ks = _random_global_qk(S, grid, layers, batch=2, seed=11)
    out = _run_accumulator(CueAccumulator(S, grid, batch=2), qs, ks)
    ref = cues_from_qk(qs, ks, S, grid)
    for b in range(2):
        single = _run_accumulator(CueAccumulator(S, grid), {l: v[b : b + 1] for l, v in qs.items()},
                                  {l: v[b : b + 1] for l, v in ks.items()})
        for name in OUT_NAMES:
            assert out[name].shape == (2, S, *grid)
            torch.testing.assert_close(out[name][b], single[name], atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(ref[name][b], single[name], atol=ATOL, rtol=RTOL)
    assert out["num_sources"].shape == (S,)


def test_bfloat16_inputs_use_float32_math():
    S, grid = 8, (3, 4)
    qs, ks = _random_global_qk(S, grid, range(22), seed=5)
    q16 = {l: v.to(torch.bfloat16) for l, v in qs.items()}
    k16 = {l: v.to(torch.bfloat16) for l, v in ks.items()}
    out = _run_accumulator(CueAccumulator(S, grid), q16, k16)
    # the same bf16 values upcast to float32 beforehand must give the same result
    ref = _run_accumulator(CueAccumulator(S, grid), {l: v.float() for l, v in q16.items()},
                           {l: v.float() for l, v in k16.items()})
    for name in OUT_NAMES:
        assert out[name].dtype == torch.float32
        torch.testing.assert_close(out[name], ref[name], atol=1e-6, rtol=1e-6)


def test_retained_memory_is_independent_of_layer_count():
    S, grid = 10, (3, 4)
    p = grid[0] * grid[1]
    heads, dim = 2, 8
    small = CueConfig()
    large = CueConfig(m1_layers=tuple(range(0, 16)), m2_layers=tuple(range(8, 24)), m3_layers=(0, 1, 2, 3))
    qs, ks = _random_global_qk(S, grid, range(24), heads=heads, dim=dim, seed=2)
    offsets = len(small.source_offsets)
    final_numel = {}
    for label, config in (("small", small), ("large", large)):
        acc = CueAccumulator(S, grid, config)
        peak = 0
        for layer in range(24):
            if layer in acc.needed_layers("global"):
                acc("global", layer, qs[layer], ks[layer])
                peak = max(peak, acc.retained_numel())
        assert acc.is_complete()
        final_numel[label] = acc.retained_numel()
        # O(S*P): five [S, p] maps, the [S] source counts and the [S, O] source index/weight tables
        assert final_numel[label] == 5 * S * p + S + 2 * S * offsets
        # transient: at most one held layer of q patch tokens (layer 18 until layer 19 arrives)
        assert peak <= final_numel[label] + heads * S * p * dim
        acc.finalize()
    assert final_numel["small"] == final_numel["large"]


def test_needed_layers_and_errors():
    S, grid = 4, (2, 2)
    acc = CueAccumulator(S, grid)
    assert acc.needed_layers("global") == {0, 3, 4, 5, 6, 7, 17, 18, 19, 20, 21}
    assert acc.needed_layers("frame") == set()
    with pytest.raises(ValueError):
        acc.needed_layers("cross")
    qs, ks = _random_global_qk(S, grid, [0, 3])
    acc("global", 0, qs[0], ks[0])
    acc("global", 1, qs[0], ks[0])  # a layer no cue reads is ignored
    with pytest.raises(RuntimeError, match="observed twice"):
        acc("global", 0, qs[0], ks[0])
    with pytest.raises(RuntimeError, match=r"\[3, 4, 5, 6, 7, 17, 18, 19, 20, 21\]"):
        acc.finalize()
    with pytest.raises(ValueError, match="tokens"):
        acc("global", 3, qs[3][:, :, :-1], ks[3][:, :, :-1])
    with pytest.raises(ValueError):
        CueConfig(m1_layers=())
    with pytest.raises(ValueError):
        CueConfig(v1_layers=(18, 18))
    with pytest.raises(ValueError, match="missing"):
        cues_from_qk({0: qs[0]}, {0: ks[0]}, S, grid)


def test_autocast_region_does_not_lower_precision():
    S, grid = 8, (3, 4)
    qs, ks = _random_global_qk(S, grid, range(22), seed=9)
    ref = _run_accumulator(CueAccumulator(S, grid), qs, ks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _run_accumulator(CueAccumulator(S, grid), qs, ks)
        lit = cues_from_qk(qs, ks, S, grid)
    for name in OUT_NAMES:
        torch.testing.assert_close(out[name], ref[name], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(lit[name], ref[name], atol=ATOL, rtol=RTOL)
