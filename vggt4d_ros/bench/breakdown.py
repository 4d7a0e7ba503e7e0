"""Where the time of a forward pass goes: forward hooks that time the patch embed, the frame and global blocks
and each head, separately for every pass through the aggregator (pass 1 and pass 2 of VGGT4D)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import torch
from torch import nn

GROUPS = ("patch_embed", "frame_blocks", "global_blocks", "camera_head", "depth_head", "point_head")


class ModuleTimer:
    """Context manager timing module groups of a :class:`~vggt4d_ros.model.vggt.VGGT` (a no-op when not
    ``enabled``).

    Every pass runs each block and head at most once, so the n-th call of a module belongs to pass n (this holds
    when VGGT4D finishes pass 1 on a worker thread while pass 2 runs; the patch embed runs in pass 1 only). On
    CPU the wall time of each call is summed (overlapping calls on two threads both count in full); on CUDA each
    call is bracketed by CUDA events on the current stream (no host synchronisation inside the forward),
    resolved in :meth:`result`.
    """

    def __init__(self, model: nn.Module, enabled: bool = True) -> None:
        self.model = model
        self.enabled = enabled
        self.device = next(model.parameters()).device
        self._handles: list[Any] = []
        self._lock = threading.Lock()
        self._calls: dict[int, int] = {}
        self._open: dict[tuple[int, int], tuple[int, Any]] = {}
        self._records: list[tuple[int, str, Any, Any]] = []

    def _modules(self) -> list[tuple[str, nn.Module]]:
        agg = self.model.aggregator
        mods: list[tuple[str, nn.Module]] = [("patch_embed", agg.patch_embed)]
        mods += [("frame_blocks", block) for block in agg.frame_blocks]
        mods += [("global_blocks", block) for block in agg.global_blocks]
        for name in ("camera_head", "depth_head", "point_head"):
            head = getattr(self.model, name, None)
            if head is not None:
                mods.append((name, head))
        return mods

    def _stamp(self) -> Any:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _pre(self, group: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any) -> None:
            with self._lock:
                index = self._calls.get(id(module), 0)
                self._calls[id(module)] = index + 1
            self._open[threading.get_ident(), id(module)] = (index, self._stamp())
        return hook

    def _post(self, group: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            index, start = self._open.pop((threading.get_ident(), id(module)))
            end = self._stamp()
            with self._lock:
                self._records.append((index, group, start, end))
        return hook

    def __enter__(self) -> "ModuleTimer":
        if not self.enabled:
            return self
        for group, module in self._modules():
            self._handles.append(module.register_forward_pre_hook(self._pre(group)))
            self._handles.append(module.register_forward_hook(self._post(group)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def result(self) -> list[dict[str, float]]:
        """Seconds per group for each pass, in order: ``[{group: seconds}, ...]``."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        passes: list[dict[str, float]] = []
        for index, group, start, end in self._records:
            while len(passes) <= index:
                passes.append({})
            seconds = start.elapsed_time(end) / 1000.0 if self.device.type == "cuda" else end - start
            passes[index][group] = passes[index].get(group, 0.0) + seconds
        return passes


class PeakTimeline:
    """Context manager recording the running peak memory at pass boundaries of a VGGT4D run.

    ``read_peak()`` returns the process's peak so far (peak RSS on CPU, ``max_memory_allocated`` on CUDA). Marks:
    ``pass{n}_start`` when the first frame block of pass ``n`` starts, ``pass{n}_{head}`` after each head.
    Consecutive differences tell which phase raised the peak; the phase between the end of pass 1 and the start
    of pass 2 covers the cue finalisation, the clustering and the refinement.
    """

    def __init__(self, model: nn.Module, read_peak: Callable[[], int]) -> None:
        self.model = model
        self.read_peak = read_peak
        self.marks: list[tuple[str, int]] = []
        self._handles: list[Any] = []
        self._pass = 0

    def __enter__(self) -> "PeakTimeline":
        def start_hook(module: nn.Module, inputs: Any) -> None:
            self._pass += 1
            self.marks.append((f"pass{self._pass}_start", self.read_peak()))

        self._handles.append(self.model.aggregator.frame_blocks[0].register_forward_pre_hook(start_hook))
        calls: dict[str, int] = {}
        for name in ("camera_head", "depth_head", "point_head"):
            head = getattr(self.model, name, None)
            if head is not None:
                # the n-th call of a head belongs to pass n (pass 1's heads may run while pass 2 runs)
                def end_hook(module: nn.Module, inputs: Any, output: Any, name: str = name) -> None:
                    calls[name] = calls.get(name, 0) + 1
                    self.marks.append((f"pass{calls[name]}_{name}", self.read_peak()))

                self._handles.append(head.register_forward_hook(end_hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
