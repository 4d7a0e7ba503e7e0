"""Loading VGGT checkpoints: local ``.safetensors`` / ``.pt`` files, directories, or Hugging Face hub ids.

Checkpoint keys must equal the model's ``state_dict`` keys (no mapping). ``track_head.*`` tensors are skipped (the
track head is not built) with an INFO log; any other missing or unexpected key, or a shape mismatch, raises
:class:`CheckpointMismatchError`. The model is built on the meta device and the loaded tensors are assigned to it,
so a checkpoint needs memory for one copy of the weights only.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Iterable, Mapping
from itertools import chain
from pathlib import Path
from typing import Any, Optional, Union

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import Tensor

from .config import VGGTConfig, resolve_config
from .vggt import VGGT

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "facebook/VGGT_tracker_fixed"
"""The checkpoint the official VGGT4D demo loads (``model_tracker_fixed_e20.pt``); VGGT4D's cue layers were chosen
on it. ``facebook/VGGT-1B`` (the original VGGT release) loads the same way."""
HUB_WEIGHT_FILES = ("model.safetensors", "model.pt")
"""File names tried, in order, inside a hub repository or a local directory."""
KNOWN_HUB_FILES = {"facebook/VGGT_tracker_fixed": ("model_tracker_fixed_e20.pt",)}
"""Official repositories whose checkpoint has another name (tried before :data:`HUB_WEIGHT_FILES`)."""
SKIPPED_PREFIX = "track_head."
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_MAX_LISTED = 50
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HUB_FILE = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)/(?P<file>[\w.-]+\.(?:safetensors|pt|pth|bin))")


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read, or does not hold a state dict of tensors."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's keys or shapes do not match the model built from the config."""


class WeightsNotFoundError(FileNotFoundError):
    """The weights could not be found locally or obtained from the hub."""


def _listing(items: Iterable[str]) -> str:
    items = sorted(items)
    text = ", ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        text += f", ... ({len(items) - _MAX_LISTED} more)"
    return text


def _download(repo_id: str, filenames: tuple[str, ...] = ()) -> Path:
    """Fetch (or find in the hub cache) the weights of ``repo_id``: ``filenames`` when given, else the repository's
    known checkpoint name (:data:`KNOWN_HUB_FILES`) and then :data:`HUB_WEIGHT_FILES`, in order."""
    from huggingface_hub import hf_hub_download

    candidates = filenames or (*KNOWN_HUB_FILES.get(repo_id, ()), *HUB_WEIGHT_FILES)
    failures = []
    for name in candidates:
        try:
            return Path(hf_hub_download(repo_id, name))
        except (OSError, ValueError) as exc:  # hub HTTP, offline/not-cached and validation errors
            failures.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    raise WeightsNotFoundError(
        f"could not obtain weights for hub id '{repo_id}' (tried {', '.join(candidates)}): the machine may be "
        f"offline (or HF_HUB_OFFLINE is set) and the files are not in the Hugging Face cache, or the id does not "
        f"exist. Pass a local checkpoint instead, e.g. load_model('/path/to/model.safetensors', config=...). "
        f"Details: {'; '.join(failures)}")


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """``"auto"`` (the first CUDA device when available, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        ValueError: an unknown name, CUDA requested but not available, or an out-of-range CUDA index.
    """
    name = str(device)
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"cuda(:\d+)?", name):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available (torch {torch.__version__}); "
                         f"use device 'cpu' or 'auto'")
    index = int(name.split(":", 1)[1]) if ":" in name else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device {name!r} requested but only {count} CUDA device(s) are visible")
    return torch.device(f"cuda:{index}")


def resolve_weights(weights: Union[str, Path]) -> Path:
    """Local file, directory (holding ``model.safetensors`` or ``model.pt``), hub id ``owner/name`` or hub file
    ``owner/name/file.pt`` -> a local file."""
    path = Path(weights).expanduser()
    if path.is_dir():
        for name in HUB_WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise WeightsNotFoundError(f"weights directory {path} contains none of {', '.join(HUB_WEIGHT_FILES)}")
    if path.is_file():
        return path
    text = str(weights)
    if _HUB_ID.fullmatch(text) and path.suffix.lower() not in (".safetensors", *TORCH_SUFFIXES):
        return _download(text)
    hub_file = _HUB_FILE.fullmatch(text)
    if hub_file and not path.is_absolute() and not text.startswith("."):
        return _download(hub_file["repo"], (hub_file["file"],))
    raise WeightsNotFoundError(f"weights file not found: {path} (expected a .safetensors/.pt file, a directory "
                               f"holding one of {', '.join(HUB_WEIGHT_FILES)}, or a hub id 'owner/name')")


def _tensor_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors (also looked under 'model' and "
                              f"'state_dict')")
    return dict(obj)


def read_state_dict(path: Union[str, Path]) -> dict[str, Tensor]:
    """All tensors of a ``.safetensors`` or ``.pt``/``.pth``/``.bin`` checkpoint, on the CPU.

    Torch files are read with ``weights_only=True``; a plain state dict or one nested under ``'model'`` or
    ``'state_dict'`` is accepted.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read safetensors file {path}: it is truncated or corrupt ({exc})") from exc
    if suffix in TORCH_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            detail = next((line.strip() for line in str(exc).splitlines() if "Unsupported" in line), "")
            raise CheckpointError(
                f"{path} is not a plain tensor checkpoint: it pickles Python objects that torch.load("
                f"weights_only=True) refuses to load ({detail}). Re-save its state dict (tensors only), e.g. as "
                f".safetensors") from exc
        except (RuntimeError, EOFError, OSError) as exc:
            raise CheckpointError(f"cannot read checkpoint {path}: it is truncated or corrupt "
                                  f"({str(exc).splitlines()[0]})") from exc
        return _tensor_dict(obj, path)
    raise CheckpointError(f"unsupported weights file {path}: expected .safetensors, {', '.join(TORCH_SUFFIXES)}")


def check_state_dict(model: torch.nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint"
                     ) -> dict[str, Tensor]:
    """Drop ``track_head.*`` (INFO log), then verify keys and shapes against ``model``; returns the kept tensors.

    Raises :class:`CheckpointMismatchError` listing every missing, unexpected or wrongly shaped key.
    """
    skipped = [k for k in state if k.startswith(SKIPPED_PREFIX)]
    if skipped:
        logger.info("skipped %d %s* tensors of %s (the track head is not built)", len(skipped), SKIPPED_PREFIX,
                    source)
    state = {k: v for k, v in state.items() if not k.startswith(SKIPPED_PREFIX)}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    wrong = {f"{k}: expected {list(expected[k])}, got {list(state[k].shape)}"
             for k in expected.keys() & state.keys() if tuple(state[k].shape) != expected[k]}
    problems = [f"{len(found)} {what}: {_listing(found)}" for what, found in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)) if found]
    if problems:
        raise CheckpointMismatchError(f"{source} does not fit the model: " + "; ".join(problems))
    return state


def load_model(weights: Union[str, Path], config: Union[None, str, Path, VGGTConfig] = None,
               device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None) -> VGGT:
    """Build a VGGT from ``config`` and load ``weights`` into it.

    Args:
        weights: a ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` file, a directory holding ``model.safetensors``
            or ``model.pt``, a hub id ``owner/name`` (e.g. ``facebook/VGGT-1B``, ``facebook/VGGT_tracker_fixed``)
            or one file of a hub repository ``owner/name/file.pt`` (the Hugging Face cache and ``HF_HUB_OFFLINE``
            are honoured).
        config: preset name (default ``"vggt-1b"``), path to a fixture-style JSON file, or a :class:`VGGTConfig`.
        device: where the model goes.
        dtype: floating dtype of the parameters (default ``torch.float32``).

    Returns the model in eval mode. Raises :class:`WeightsNotFoundError`, :class:`CheckpointError` or
    :class:`CheckpointMismatchError` with a message naming the problem.
    """
    cfg = resolve_config(config)
    path = resolve_weights(weights)
    state = read_state_dict(path)
    with torch.device("meta"):
        model = VGGT(cfg)
    state = check_state_dict(model, state, source=f"checkpoint {path} (config '{cfg.name}')")
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device=device, dtype=dtype or torch.float32)
    left_on_meta = [name for name, t in chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left_on_meta:
        raise RuntimeError(f"tensors were not materialised when loading {path}: {_listing(left_on_meta)}")
    logger.info("loaded VGGT '%s' from %s (%d tensors) on %s", cfg.name, path, len(state), device)
    return model.eval()
