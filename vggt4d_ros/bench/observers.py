"""Attention observers used by the benchmark: the "store every needed layer's q/k" baseline (the reference
VGGT4D approach) and exact accounting of the bytes an observer holds."""

from __future__ import annotations

import time
from typing import Any, Iterable, Optional

import torch
from torch import Tensor

from vggt4d_ros.dynamic.cues import CueAccumulator, CueConfig, GlobalAttentionObserver, cues_from_qk


def tensor_bytes(obj: Any) -> int:
    """Bytes of the distinct tensor storages reachable from ``obj`` through attributes, dicts, lists and tuples.

    Views sharing one storage are counted once (by storage), so this is the memory the object keeps alive.
    """
    seen_storages: set[int] = set()
    seen_objects: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, Tensor):
            storage = item.untyped_storage()
            key = storage.data_ptr() if storage.data_ptr() else id(storage)
            if key not in seen_storages:
                seen_storages.add(key)
                total += storage.nbytes()
            continue
        if id(item) in seen_objects:
            continue
        seen_objects.add(id(item))
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)
        elif hasattr(item, "__dict__") and not isinstance(item, type):
            stack.extend(vars(item).values())
    return total


class StoredQKObserver(GlobalAttentionObserver):
    """Baseline observer: keeps the global-attention q and k ``[B, heads, S*P, d]`` of every layer a cue needs
    (as the reference implementation does), to compute the cues after the forward with
    :func:`~vggt4d_ros.dynamic.cues.cues_from_qk`."""

    def __init__(self, config: Optional[CueConfig] = None) -> None:
        super().__init__(config)
        self.q: dict[int, Tensor] = {}
        self.k: dict[int, Tensor] = {}

    def __call__(self, block_type: str, layer: int, q: Tensor, k: Tensor) -> None:
        if block_type == "global" and int(layer) in self._needed:
            self.q[int(layer)] = q.detach()
            self.k[int(layer)] = k.detach()

    def held_bytes(self) -> int:
        return tensor_bytes((self.q, self.k))

    def cues(self, num_frames: int, grid: tuple[int, int]) -> dict[str, Tensor]:
        """The cue maps from the stored q/k (see :func:`cues_from_qk`)."""
        return cues_from_qk(self.q, self.k, num_frames, grid, self.config)


class _Stopwatch:
    """Wall time of a region on CPU, or GPU time between two CUDA events (no host sync inside the region)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._events: list[tuple[Any, Any]] = []
        self._cpu = 0.0

    def __enter__(self) -> "_Stopwatch":
        if self.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self._events.append((start, None))
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events[-1] = (self._events[-1][0], end)
        else:
            self._cpu += time.perf_counter() - self._t0

    def seconds(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return sum(start.elapsed_time(end) for start, end in self._events) / 1000.0
        return self._cpu


def replay_streamed(stored: StoredQKObserver, num_frames: int, grid: tuple[int, int],
                    track_bytes: bool = False) -> dict[str, Any]:
    """Feed stored q/k through a fresh :class:`CueAccumulator` in layer order, as the aggregator would.

    Returns ``observe_seconds`` (time inside the observer calls), ``finalize_seconds``, ``cues`` and, with
    ``track_bytes``, ``peak_held_bytes``: the largest number of bytes the accumulator held between calls.
    """
    device = next(iter(stored.q.values())).device
    acc = CueAccumulator(num_frames, grid, stored.config)
    observe = _Stopwatch(device)
    peak_held = tensor_bytes(acc) if track_bytes else 0
    for layer in sorted(stored.q):
        with observe:
            acc("global", layer, stored.q[layer], stored.k[layer])
        if track_bytes:
            peak_held = max(peak_held, tensor_bytes(acc))
    observe_seconds = observe.seconds()
    finalize = _Stopwatch(device)
    with finalize:
        cues = acc.finalize()
    out: dict[str, Any] = {"observe_seconds": observe_seconds, "finalize_seconds": finalize.seconds(),
                           "cues": cues}
    if track_bytes:
        out["peak_held_bytes"] = peak_held
    return out


def time_stored(stored: StoredQKObserver, num_frames: int, grid: tuple[int, int]) -> dict[str, Any]:
    """Time :func:`cues_from_qk` on the stored q/k: ``{"seconds", "cues"}``."""
    device = next(iter(stored.q.values())).device
    watch = _Stopwatch(device)
    with watch:
        cues = stored.cues(num_frames, grid)
    return {"seconds": watch.seconds(), "cues": cues}


def max_cue_difference(a: dict[str, Tensor], b: dict[str, Tensor], names: Iterable[str]) -> float:
    """Largest absolute difference between two cue dictionaries over ``names``."""
    return max(float((a[n].float() - b[n].float()).abs().max()) for n in names)
