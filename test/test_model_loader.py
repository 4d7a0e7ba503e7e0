"""Checkpoint loading: the 1B key manifest, file formats, clear errors, and hub resolution (offline only)."""

from __future__ import annotations

import json
import logging

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file

from vggt4d_ros.model import (VGGT, CheckpointError, CheckpointMismatchError, WeightsNotFoundError, load_model,
                              resolve_config)
from vggt4d_ros.model.aggregator import IMAGE_STD
from vggt4d_ros.model.checkpoint import check_state_dict

DTYPES = {"float32": torch.float32}


@pytest.fixture(scope="module")
def manifest(fixtures_dir):
    with open(fixtures_dir / "vggt1b_manifest.json", encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def meta_1b():
    with torch.device("meta"):
        return VGGT("vggt-1b")


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    """Paths and full state dict (track head included) of the tiny DINO fixture model."""
    weights = fixtures_dir / "tiny_dino_weights.safetensors"
    return dict(weights=weights, config=fixtures_dir / "tiny_dino_config.json", state=load_file(weights))


def _load(path, tiny, **kwargs):
    return load_model(path, config=tiny["config"], **kwargs)


def _assert_same_params(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_1b_model_matches_manifest_keys_and_shapes(manifest, meta_1b):
    expected = {k: (tuple(v["shape"]), DTYPES[v["dtype"]]) for k, v in manifest["keys"].items()
                if not k.startswith("track_head.")}
    got = {k: (tuple(v.shape), v.dtype) for k, v in meta_1b.state_dict().items()}
    assert sorted(got.keys() - expected.keys()) == []
    assert sorted(expected.keys() - got.keys()) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}
    counts = manifest["parameters_per_prefix"]
    assert sum(v.numel() for v in meta_1b.parameters()) == manifest["total_parameters"] - counts["track_head"]
    assert sum(p.numel() for p in meta_1b.aggregator.patch_embed.parameters()) == counts["aggregator.patch_embed"]


def test_1b_buffers_are_real_even_on_meta(manifest, meta_1b):
    ref = manifest["non_persistent_buffers_not_in_state_dict"]
    agg = meta_1b.aggregator
    for name in ("_resnet_mean", "_resnet_std"):
        buf = getattr(agg, name)
        assert not buf.is_meta and list(buf.shape) == ref["shape"]
        assert buf.flatten().tolist() == pytest.approx(ref[f"aggregator.{name}"])


def test_1b_key_check_accepts_manifest_with_track_head(manifest, meta_1b, caplog):
    fake = {k: torch.empty(v["shape"], device="meta") for k, v in manifest["keys"].items()}
    num_track = sum(k.startswith("track_head.") for k in fake)
    with caplog.at_level(logging.INFO, logger="vggt4d_ros.model.checkpoint"):
        kept = check_state_dict(meta_1b, fake)
    assert len(kept) == len(fake) - num_track > 0
    assert f"skipped {num_track} track_head.* tensors" in caplog.text


def test_tiny_checkpoint_with_track_head_loads_and_logs(tiny, caplog):
    num_track = sum(k.startswith("track_head.") for k in tiny["state"])
    assert num_track > 0
    with caplog.at_level(logging.INFO, logger="vggt4d_ros.model.checkpoint"):
        model = _load(tiny["weights"], tiny)
    assert f"skipped {num_track} track_head.* tensors" in caplog.text
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, tiny["state"][key]), key
    tensors = list(model.parameters()) + list(model.buffers())
    assert all(t.device.type == "cpu" and not t.is_meta and t.dtype == torch.float32 for t in tensors)


def test_dtype_argument_casts_parameters_and_buffers(tiny):
    model = _load(tiny["weights"], tiny, dtype=torch.float64)
    assert {t.dtype for t in list(model.parameters()) + list(model.buffers())} == {torch.float64}
    assert model.aggregator._resnet_std.flatten().tolist() == pytest.approx(IMAGE_STD)


def test_pt_nested_pt_safetensors_and_directory_give_identical_params(tiny, tmp_path):
    reference = _load(tiny["weights"], tiny)
    plain, nested, directory = tmp_path / "plain.pt", tmp_path / "nested.pth", tmp_path / "dir"
    torch.save(tiny["state"], plain)
    torch.save({"model": tiny["state"], "epoch": 3}, nested)
    directory.mkdir()
    save_file(tiny["state"], directory / "model.safetensors")
    for source in (plain, nested, directory, str(directory)):
        _assert_same_params(_load(source, tiny), reference)


def _write(state, path):
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    return path


def test_missing_key_is_named(tiny, tmp_path):
    state = dict(tiny["state"])
    del state["aggregator.frame_blocks.3.attn.q_norm.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"1 missing keys: aggregator\.frame_blocks\.3\.attn\.q_norm"):
        _load(_write(state, tmp_path / "m.safetensors"), tiny)


def test_extra_key_is_named(tiny, tmp_path):
    state = dict(tiny["state"], **{"aggregator.bogus_token": torch.zeros(3)})
    with pytest.raises(CheckpointMismatchError, match=r"1 unexpected keys: aggregator\.bogus_token"):
        _load(_write(state, tmp_path / "m.pt"), tiny)


def test_wrong_shape_is_named_with_both_shapes(tiny, tmp_path):
    state = dict(tiny["state"], **{"camera_head.empty_pose_tokens": torch.zeros(1, 1, 7)})
    with pytest.raises(CheckpointMismatchError,
                       match=r"camera_head\.empty_pose_tokens: expected \[1, 1, 9\], got \[1, 1, 7\]"):
        _load(_write(state, tmp_path / "m.safetensors"), tiny)


def test_long_key_lists_are_sorted_and_truncated(tiny, tmp_path):
    state = {k: v for k, v in tiny["state"].items() if not k.startswith("depth_head.")}
    missing = sorted(k for k in tiny["state"] if k.startswith("depth_head."))
    assert len(missing) > 50
    with pytest.raises(CheckpointMismatchError) as info:
        _load(_write(state, tmp_path / "m.safetensors"), tiny)
    message = str(info.value)
    assert f"{len(missing)} missing keys: {missing[0]}, {missing[1]}," in message
    assert f"({len(missing) - 50} more)" in message and missing[50] not in message


def test_wrong_config_for_checkpoint_is_a_mismatch(tiny, fixtures_dir):
    with pytest.raises(CheckpointMismatchError, match="missing keys.*unexpected keys"):
        load_model(tiny["weights"], config=fixtures_dir / "tiny_conv_config.json")
    with pytest.raises(CheckpointMismatchError, match="config 'vggt-1b'.*missing keys.*shape mismatches"):
        load_model(tiny["weights"])  # default config: the 1B model


class NotATensor:
    """A custom class: pickling it makes a checkpoint that weights_only loading must refuse."""


def test_pickle_payload_is_refused_clearly(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"aggregator.camera_token": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="not a plain tensor checkpoint.*NotATensor"):
        load_model(path)


def test_non_tensor_content_is_refused(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"weights": [1, 2, 3]}, path)
    with pytest.raises(CheckpointError, match="does not hold a state dict of tensors"):
        load_model(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_file_is_named(tiny, tmp_path, suffix):
    full = _write(tiny["state"], tmp_path / f"full{suffix}")
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{cut.name}.*truncated or corrupt"):
        _load(cut, tiny)


def test_missing_local_path_and_unknown_suffix(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="weights file not found"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(WeightsNotFoundError, match="contains none of model.safetensors, model.pt"):
        load_model(tmp_path)
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"0")
    with pytest.raises(CheckpointError, match="unsupported weights file"):
        load_model(odd)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache with offline mode on (set in the environment and in the already-imported
    huggingface_hub constants, which are read at import time). Nothing can reach the network."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def _cache_file(cache, repo_id, filename, data: bytes) -> None:
    """Lay out ``filename`` the way huggingface_hub caches a download of ``repo_id`` at revision main."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "snapshots" / revision / filename).write_bytes(data)


def test_offline_hub_id_gives_one_clear_error(offline_hub):
    with pytest.raises(WeightsNotFoundError) as info:
        load_model("facebook/VGGT-1B")
    message = str(info.value)
    assert "'facebook/VGGT-1B'" in message and "offline" in message and "local checkpoint" in message


@pytest.mark.parametrize("filename", ["model.safetensors", "model.pt"])
def test_hub_id_resolves_from_local_cache(offline_hub, tiny, filename, tmp_path):
    source = _write(tiny["state"], tmp_path / filename)
    _cache_file(offline_hub, "someone/tiny-vggt", filename, source.read_bytes())
    model = load_model("someone/tiny-vggt", config=resolve_config(tiny["config"]))
    _assert_same_params(model, _load(tiny["weights"], tiny))


def test_tracker_fixed_hub_id_and_hub_file_form(offline_hub, tiny, tmp_path):
    """facebook/VGGT_tracker_fixed stores model_tracker_fixed_e20.pt; 'owner/name/file' names any one file."""
    source = _write(tiny["state"], tmp_path / "model.pt")
    _cache_file(offline_hub, "facebook/VGGT_tracker_fixed", "model_tracker_fixed_e20.pt", source.read_bytes())
    expected = _load(tiny["weights"], tiny)
    model = load_model("facebook/VGGT_tracker_fixed", config=resolve_config(tiny["config"]))
    _assert_same_params(model, expected)
    model = load_model("facebook/VGGT_tracker_fixed/model_tracker_fixed_e20.pt", config=resolve_config(tiny["config"]))
    _assert_same_params(model, expected)
    with pytest.raises(WeightsNotFoundError, match="other.pt"):
        load_model("facebook/VGGT_tracker_fixed/other.pt", config=resolve_config(tiny["config"]))


def test_resolve_device_names():
    from vggt4d_ros.model import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:1")
