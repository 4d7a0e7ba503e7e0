"""The VGGT network: aggregator + camera, depth and point heads (the track head is not built).

``VGGT.forward`` works under autograd and under any outer context; :meth:`VGGT.predict` is the inference entry
point (``torch.inference_mode`` and, on CUDA only, bf16 autocast). The heads always run with autocast disabled, in
the parameter dtype, as in the reference.

Two-pass use (VGGT4D): run pass 1 with ``attention_observer=...`` and ``return_patch_tokens=True``, then pass 2
with ``dynamic_mask=`` (or ``token_mask=``) and ``patch_tokens=out1["patch_tokens"]``, which skips the patch
embed (identical for both passes). ``heads=`` picks which heads run in each pass. :meth:`VGGT.start` runs an
inference pass in steps (:class:`StagedPass`), which VGGT4D uses to finish pass 1 while pass 2 runs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from .aggregator import Aggregator, AggregatorRun
from .camera_head import CameraHead
from .config import VGGTConfig, resolve_config
from .dpt_head import DPTHead
from .masking import pixel_mask_to_token_mask

HEAD_NAMES = ("camera", "depth", "point")
DEFAULT_MASK_LAYERS = (0, 1, 2, 3, 4)
"""Aggregator layers whose frame and global blocks drop masked keys/values in the VGGT4D masked pass."""


class VGGT(nn.Module):
    """VGGT with attribute names equal to the official checkpoint keys (``aggregator.*``, ``camera_head.*``,
    ``depth_head.*``, ``point_head.*``)."""

    def __init__(self, config: Union[None, str, Path, VGGTConfig] = None) -> None:
        """``config``: anything :func:`resolve_config` accepts (default: the ``vggt-1b`` preset)."""
        super().__init__()
        self.config = resolve_config(config)
        cfg = self.config
        self.patch_size = cfg.patch_size
        self.aggregator = Aggregator(cfg.aggregator, cfg.patch_embed)
        self.camera_head = CameraHead(cfg.camera_head) if cfg.camera_head is not None else None
        self.depth_head = DPTHead(cfg.depth_head) if cfg.depth_head is not None else None
        self.point_head = DPTHead(cfg.point_head) if cfg.point_head is not None else None

    def _built_heads(self) -> dict[str, nn.Module]:
        heads = {"camera": self.camera_head, "depth": self.depth_head, "point": self.point_head}
        return {name: head for name, head in heads.items() if head is not None}

    def _select_heads(self, heads: Optional[Iterable[str]]) -> tuple[str, ...]:
        built = self._built_heads()
        if heads is None:
            return tuple(built)
        heads = tuple(heads)
        unknown = [h for h in heads if h not in HEAD_NAMES]
        if unknown:
            raise ValueError(f"unknown heads {unknown}; choose from {HEAD_NAMES}")
        missing = [h for h in heads if h not in built]
        if missing:
            raise ValueError(f"heads {missing} are not part of this model (built: {tuple(built)})")
        return heads

    def _head_layers(self, heads: Iterable[str]) -> set[int]:
        layers: set[int] = set()
        for name in heads:
            if name == "camera":
                layers.add(self.config.aggregator.depth - 1)
            else:
                layers.update(getattr(self.config, f"{name}_head").intermediate_layer_idx)
        return layers

    def _check_images(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor):
            raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if not images.is_floating_point():
            raise ValueError(f"images must be a float tensor with values in [0, 1], got dtype {images.dtype}")
        if images.dim() == 4:
            images = images[None]
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images must have shape [S, 3, H, W] or [B, S, 3, H, W], got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        if height == 0 or width == 0 or height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} must be a non-zero multiple of the patch size "
                             f"{self.patch_size} (preprocess the images first)")
        return images

    def _token_mask(self, images: Tensor, dynamic_mask: Optional[Tensor],
                    token_mask: Optional[Tensor]) -> Optional[Tensor]:
        """``[B, S, P]`` bool token mask on the images' device, or ``None`` when nothing is masked."""
        batch, frames, _, height, width = images.shape
        num_special = self.aggregator.patch_start_idx
        if dynamic_mask is not None:
            if token_mask is not None:
                raise ValueError("pass either dynamic_mask or token_mask, not both")
            if dynamic_mask.dim() not in (3, 4) or tuple(dynamic_mask.shape[-3:]) != (frames, height, width) or (
                    dynamic_mask.dim() == 4 and dynamic_mask.shape[0] not in (1, batch)):
                raise ValueError(f"dynamic_mask must have shape [S, H, W] or [B, S, H, W] = [{batch}, {frames}, "
                                 f"{height}, {width}], got {tuple(dynamic_mask.shape)}")
            _, token_mask = pixel_mask_to_token_mask(dynamic_mask.to(images.device), self.patch_size,
                                                     num_special=num_special)
        if token_mask is None:
            return None
        num_tokens = num_special + (height // self.patch_size) * (width // self.patch_size)
        if token_mask.dim() not in (2, 3) or tuple(token_mask.shape[-2:]) != (frames, num_tokens) or (
                token_mask.dim() == 3 and token_mask.shape[0] not in (1, batch)):
            raise ValueError(f"token_mask must have shape [S, P] or [B, S, P] = [{batch}, {frames}, {num_tokens}], "
                             f"got {tuple(token_mask.shape)}")
        token_mask = token_mask.to(device=images.device, dtype=torch.bool).expand(batch, frames, num_tokens)
        return token_mask if bool(token_mask.any()) else None

    def forward(self, images: Tensor, dynamic_mask: Optional[Tensor] = None, *,
                token_mask: Optional[Tensor] = None, mask_layers: Optional[Collection[int]] = None,
                attention_observer: Any = None, heads: Optional[Iterable[str]] = None,
                patch_tokens: Optional[Tensor] = None, return_patch_tokens: bool = False,
                keep_layers: Optional[Collection[int]] = None,
                frames_chunk_size: Optional[int] = None) -> dict[str, Any]:
        """Run VGGT on ``images [S, 3, H, W]`` or ``[B, S, 3, H, W]`` (float, values in [0, 1], H and W multiples
        of the patch size).

        Args:
            dynamic_mask: pixel mask ``[S, H, W]`` or ``[B, S, H, W]`` (``True`` = dynamic); see ``token_mask``.
            token_mask: precomputed token mask ``[S, P]`` or ``[B, S, P]`` (special tokens must be ``False``). The
                keys/values of masked tokens are removed in the frame and global blocks of ``mask_layers``
                (default ``DEFAULT_MASK_LAYERS``). A mask with no ``True`` entry gives exactly the unmasked pass.
            attention_observer: ``observer(block_type, layer, q, k)``; see :mod:`vggt4d_ros.model.aggregator`.
            heads: subset of ``("camera", "depth", "point")`` to run (default: every built head; ``()``: none).
            patch_tokens: patch-embed output ``[B*S, h*w, C]`` of an earlier pass on the same images.
            return_patch_tokens: put the patch-embed output in the result as ``patch_tokens``.
            keep_layers: extra aggregator layers to return under ``aggregated`` (``{layer: [B, S, P, 2C]}``).
            frames_chunk_size: frames per chunk of the DPT heads (default: their config's ``frames_chunk_size``).

        Returns a dict with, per head run: ``pose_enc [B, S, 9]`` and ``pose_enc_list`` (one ``[B, S, 9]`` per
        iteration); ``depth [B, S, H, W, 1]``, ``depth_conf [B, S, H, W]``; ``world_points [B, S, H, W, 3]``,
        ``world_points_conf [B, S, H, W]``.
        """
        return self._complete(self._begin(images, dynamic_mask, token_mask=token_mask, mask_layers=mask_layers,
                                          attention_observer=attention_observer, heads=heads,
                                          patch_tokens=patch_tokens, return_patch_tokens=return_patch_tokens,
                                          keep_layers=keep_layers, frames_chunk_size=frames_chunk_size))

    def _begin(self, images: Tensor, dynamic_mask: Optional[Tensor], *, token_mask: Optional[Tensor],
               mask_layers: Optional[Collection[int]], attention_observer: Any, heads: Optional[Iterable[str]],
               patch_tokens: Optional[Tensor], return_patch_tokens: bool,
               keep_layers: Optional[Collection[int]], frames_chunk_size: Optional[int] = None) -> "_PassState":
        """Check the arguments and start the aggregator (patch embed); see :meth:`forward`."""
        images = self._check_images(images)
        active = self._select_heads(heads)
        token_mask = self._token_mask(images, dynamic_mask, token_mask)
        keep = set(keep_layers or ()) | self._head_layers(active)
        # The camera head reads only the camera token of the last layer: when nothing else needs that layer, its
        # last block computes the camera tokens only.
        last = self.config.aggregator.depth - 1
        camera_only = "camera" in active and not (set(keep_layers or ()) | self._head_layers(
            h for h in active if h != "camera")) & {last}
        run = self.aggregator.start(
            images, keep_layers=keep, token_mask=token_mask,
            mask_layers=DEFAULT_MASK_LAYERS if mask_layers is None else mask_layers,
            attention_observer=attention_observer, patch_tokens=patch_tokens,
            last_layer_tokens=1 if camera_only else None)
        return _PassState(images, active, run, keep_layers, return_patch_tokens, frames_chunk_size)

    def _complete(self, state: "_PassState") -> dict[str, Any]:
        """Run the remaining aggregator layers and the heads of a pass begun by :meth:`_begin`."""
        state.run.advance(self.config.aggregator.depth)
        out: dict[str, Any] = self._run_heads(state.heads, state.run.outputs, state.images, state.frames_chunk_size)
        if state.keep_layers is not None:
            out["aggregated"] = {layer: state.run.outputs[layer] for layer in sorted(set(state.keep_layers))}
        if state.return_patch_tokens:
            out["patch_tokens"] = state.run.patch_tokens
        return out

    def _run_heads(self, active: tuple[str, ...], aggregated: dict[int, Tensor], images: Tensor,
                   frames_chunk_size: Optional[int] = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not active:
            return out
        dtype = self.aggregator.camera_token.dtype
        start = self.aggregator.patch_start_idx
        with torch.autocast(device_type=images.device.type, enabled=False):
            tokens = {layer: t.to(dtype) for layer, t in aggregated.items()}
            if "camera" in active:
                pose_enc_list = self.camera_head(tokens)
                out["pose_enc"] = pose_enc_list[-1]
                out["pose_enc_list"] = pose_enc_list
            if "depth" in active:
                out["depth"], out["depth_conf"] = self.depth_head(tokens, images, start, frames_chunk_size)
            if "point" in active:
                out["world_points"], out["world_points_conf"] = self.point_head(tokens, images, start,
                                                                                frames_chunk_size)
        return out

    def _inference(self, amp_dtype: Optional[torch.dtype]) -> contextlib.ExitStack:
        """``torch.inference_mode`` plus, on CUDA with ``amp_dtype``, autocast (both are per thread)."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if amp_dtype is not None and self.aggregator.camera_token.device.type == "cuda":
            stack.enter_context(torch.autocast("cuda", dtype=amp_dtype))
        return stack

    def predict(self, images: Tensor, dynamic_mask: Optional[Tensor] = None, *,
                amp_dtype: Optional[torch.dtype] = torch.bfloat16, **kwargs: Any) -> dict[str, Any]:
        """Inference: :meth:`forward` under ``torch.inference_mode`` with ``images`` moved to the model's device.

        On CUDA the aggregator runs under autocast with ``amp_dtype`` (``None``: full precision); elsewhere
        ``amp_dtype`` is ignored. Other keyword arguments go to :meth:`forward`.
        """
        device = self.aggregator.camera_token.device
        with self._inference(amp_dtype):
            return self(images.to(device), dynamic_mask, **kwargs)

    def start(self, images: Tensor, dynamic_mask: Optional[Tensor] = None, *,
              amp_dtype: Optional[torch.dtype] = torch.bfloat16, token_mask: Optional[Tensor] = None,
              mask_layers: Optional[Collection[int]] = None, attention_observer: Any = None,
              heads: Optional[Iterable[str]] = None, patch_tokens: Optional[Tensor] = None,
              return_patch_tokens: bool = False, keep_layers: Optional[Collection[int]] = None,
              frames_chunk_size: Optional[int] = None) -> "StagedPass":
        """:meth:`predict` in steps: returns a :class:`StagedPass` whose ``advance(layer)`` runs the aggregator up
        to ``layer`` and whose ``finish()`` returns what :meth:`predict` would (identical values). VGGT4D uses it
        to finish pass 1 (the layers after the cue layers, and the heads) while pass 2 runs. The arguments are
        those of :meth:`predict`; the patch embed runs now."""
        device = self.aggregator.camera_token.device
        with self._inference(amp_dtype):
            state = self._begin(images.to(device), dynamic_mask, token_mask=token_mask, mask_layers=mask_layers,
                                attention_observer=attention_observer, heads=heads, patch_tokens=patch_tokens,
                                return_patch_tokens=return_patch_tokens, keep_layers=keep_layers,
                                frames_chunk_size=frames_chunk_size)
        return StagedPass(self, state, amp_dtype)


@dataclass
class _PassState:
    """A pass between :meth:`VGGT._begin` and :meth:`VGGT._complete`."""

    images: Tensor
    heads: tuple[str, ...]
    run: AggregatorRun
    keep_layers: Optional[Collection[int]]
    return_patch_tokens: bool
    frames_chunk_size: Optional[int]


class StagedPass:
    """An inference pass run in steps (:meth:`VGGT.start`). Each step enters inference mode and the pass's
    autocast itself, so the steps may run on different threads, one at a time; on CUDA the caller keeps the
    pass alive until its kernels are done on every stream it used."""

    def __init__(self, model: VGGT, state: _PassState, amp_dtype: Optional[torch.dtype]) -> None:
        self._model = model
        self._state = state
        self._amp_dtype = amp_dtype
        self._result: Optional[dict[str, Any]] = None

    @property
    def patch_tokens(self) -> Tensor:
        """The patch-embed output ``[B*S, h*w, C]`` (available from the start)."""
        return self._state.run.patch_tokens

    @property
    def next_layer(self) -> int:
        """The first aggregator layer that has not run yet."""
        return self._state.run.next_layer

    def record_stream(self, stream: Any) -> None:
        """CUDA: before continuing the pass on another ``stream``, mark its live tensors as used there (see
        :meth:`~vggt4d_ros.model.aggregator.AggregatorRun.record_stream`)."""
        self._state.run.record_stream(stream)
        if self._state.images.is_cuda:
            self._state.images.record_stream(stream)

    def advance(self, until: int) -> None:
        """Run the aggregator layers before ``until`` that have not run yet."""
        with self._model._inference(self._amp_dtype):
            self._state.run.advance(until)

    def finish(self) -> dict[str, Any]:
        """Run what is left (layers and heads) once; returns the dict of :meth:`VGGT.predict`."""
        if self._result is None:
            with self._model._inference(self._amp_dtype):
                self._result = self._model._complete(self._state)
        return self._result
