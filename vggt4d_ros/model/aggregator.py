"""VGGT aggregator: patch embedding, then alternating frame and global attention with 2-D RoPE.

Token layout per frame: ``[camera, registers..., patches...]`` (``P = 1 + R + h*w``). Frame attention runs over
``[B*S, P, C]`` (one sequence per frame); global attention over ``[B, S*P, C]`` (the frames concatenated in order).
The output of layer ``l`` is ``cat(frame_block_l output, global_block_l output)`` along channels, ``[B, S, P, 2C]``;
only the requested layers are kept, which is what lets long sequences fit in memory.

Attention observer: any callable ``observer(block_type, layer, q, k)``; it is called for ``'frame'`` blocks with
q, k ``[B*S, heads, P, head_dim]`` and for ``'global'`` blocks with ``[B, heads, S*P, head_dim]``, exactly as they
enter attention (after qk-norm and RoPE). If it has ``needed_layers(block_type) -> set[int]``, only those layers are
reported; other blocks run with no hook at all.

Masked pass (VGGT4D): with a token mask ``[B, S, P]`` (``True`` = masked), keys and values of masked tokens are
removed in the frame and global blocks listed in ``mask_layers``; queries are unchanged. Frame blocks use a boolean
attention mask built from their own frame's mask; global blocks gather the kept keys/values exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .config import AggregatorConfig, PatchEmbedConfig
from .layers import Block, QKHook, RotaryPositionEmbedding2D, patch_positions
from .patch_embed import build_patch_embed

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def _first_frame_tokens(tokens: Tensor, batch: int, frames: int) -> Tensor:
    """``[1, 2, n, C]`` learned tokens -> ``[B*S, n, C]``: entry 0 for frame 0, entry 1 for every other frame."""
    first = tokens[:, :1].expand(batch, 1, *tokens.shape[2:])
    rest = tokens[:, 1:].expand(batch, frames - 1, *tokens.shape[2:])
    return torch.cat([first, rest], dim=1).reshape(batch * frames, *tokens.shape[2:])


def _observer_hooks(observer: Any, block_type: str, depth: int) -> dict[int, QKHook]:
    """Per-layer ``hook(q, k)`` closures reporting to ``observer`` (only the layers it needs)."""
    if observer is None:
        return {}
    wanted = observer.needed_layers(block_type) if hasattr(observer, "needed_layers") else range(depth)
    return {layer: functools.partial(observer, block_type, layer) for layer in wanted}


class Aggregator(nn.Module):
    """Alternating-attention trunk; see the module docstring for layouts, the observer and the masked pass."""

    def __init__(self, cfg: AggregatorConfig, patch_embed: PatchEmbedConfig) -> None:
        super().__init__()
        if sorted(cfg.aa_order) != ["frame", "global"]:
            raise ValueError(f"aa_order must contain 'frame' and 'global' once each, got {cfg.aa_order}")
        if cfg.depth % cfg.aa_block_size:
            raise ValueError(f"depth {cfg.depth} is not a multiple of aa_block_size {cfg.aa_block_size}")
        if cfg.qk_norm and cfg.qk_norm_layernorm_eps != cfg.block_layernorm_eps:
            raise ValueError("qk_norm_layernorm_eps must equal block_layernorm_eps (blocks share one eps)")
        self.config = cfg
        self.patch_size = cfg.patch_size
        self.patch_start_idx = cfg.patch_start_idx
        self.patch_embed = build_patch_embed(patch_embed)
        self.rope = RotaryPositionEmbedding2D(cfg.rope_freq) if cfg.rope_freq > 0 else None

        def make_blocks() -> nn.ModuleList:
            return nn.ModuleList(
                Block(cfg.embed_dim, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                      proj_bias=cfg.proj_bias, ffn_bias=cfg.ffn_bias, init_values=cfg.init_values,
                      qk_norm=cfg.qk_norm, norm_eps=cfg.block_layernorm_eps, rope=self.rope)
                for _ in range(cfg.depth))

        self.frame_blocks = make_blocks()
        self.global_blocks = make_blocks()
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, cfg.embed_dim))
        self.register_token = nn.Parameter(torch.zeros(1, 2, cfg.num_register_tokens, cfg.embed_dim))
        # Explicit CPU device: the constants stay real even when the model is built on the meta device.
        self.register_buffer("_resnet_mean", torch.tensor(IMAGE_MEAN, device="cpu").view(1, 1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("_resnet_std", torch.tensor(IMAGE_STD, device="cpu").view(1, 1, 3, 1, 1),
                             persistent=False)

    def _check_layers(self, layers: Collection[int], what: str) -> set[int]:
        layers = {int(layer) for layer in layers}
        bad = sorted(layer for layer in layers if not 0 <= layer < self.config.depth)
        if bad:
            raise ValueError(f"{what} {bad} out of range: the aggregator has layers 0..{self.config.depth - 1}")
        return layers

    def forward(self, images: Tensor, *, keep_layers: Collection[int], token_mask: Optional[Tensor] = None,
                mask_layers: Collection[int] = (), attention_observer: Any = None,
                patch_tokens: Optional[Tensor] = None) -> tuple[dict[int, Tensor], Tensor]:
        """Run the trunk on ``images [B, S, 3, H, W]`` in [0, 1].

        ``keep_layers``: layers whose outputs are returned. ``token_mask [B, S, P]`` bool (``True`` = remove that
        key/value) applies in ``mask_layers``. ``patch_tokens [B*S, h*w, C]`` (from an earlier pass on the same
        images) skips normalisation and the patch embed. Returns ``({layer: [B, S, P, 2C]}, patch_tokens)``.
        """
        run = self.start(images, keep_layers=keep_layers, token_mask=token_mask, mask_layers=mask_layers,
                         attention_observer=attention_observer, patch_tokens=patch_tokens)
        run.advance(self.config.depth)
        return run.outputs, run.patch_tokens

    def start(self, images: Tensor, *, keep_layers: Collection[int], token_mask: Optional[Tensor] = None,
              mask_layers: Collection[int] = (), attention_observer: Any = None,
              patch_tokens: Optional[Tensor] = None, last_layer_tokens: Optional[int] = None) -> "AggregatorRun":
        """Begin a pass (arguments as in :meth:`forward`): normalisation and patch embed run now, the layers when
        the returned :class:`AggregatorRun` is advanced.

        ``last_layer_tokens=n``: only the first ``n`` tokens of each frame are needed from the last layer (the
        camera head reads token 0): its last block computes outputs for those tokens only (keys and values are
        still all tokens) and ``outputs[depth - 1]`` is ``[B, S, n, 2C]``."""
        if last_layer_tokens is not None and not 1 <= int(last_layer_tokens) <= self.patch_start_idx:
            raise ValueError(f"last_layer_tokens must be in [1, {self.patch_start_idx}], got {last_layer_tokens}")
        batch, frames, _, height, width = images.shape
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        keep = self._check_layers(keep_layers, "keep_layers")
        masked = self._check_layers(mask_layers, "mask_layers")
        if token_mask is None:
            masked = set()
        if patch_tokens is None:
            normed = (images - self._resnet_mean) / self._resnet_std
            patch_tokens = self.patch_embed(normed.reshape(batch * frames, 3, height, width))
        elif patch_tokens.shape[:2] != (batch * frames, grid_h * grid_w):
            raise ValueError(f"patch_tokens must have shape [{batch * frames}, {grid_h * grid_w}, C] for these "
                             f"images, got {tuple(patch_tokens.shape)}")
        return AggregatorRun(self, patch_tokens, batch, frames, (grid_h, grid_w), keep, token_mask, masked,
                             attention_observer, last_layer_tokens)


class AggregatorRun:
    """One pass through the aggregator's layers that can be run in steps (:meth:`Aggregator.start`).

    :meth:`advance` runs the layers up to a given one; the steps may run on different threads, one at a time
    (inference mode and autocast are per thread: enter them in each step). The result is the same however the
    pass is split. ``outputs`` holds ``{layer: [B, S, P, 2C]}`` for the kept layers that have run.
    """

    def __init__(self, aggregator: Aggregator, patch_tokens: Tensor, batch: int, frames: int,
                 grid: tuple[int, int], keep: set[int], token_mask: Optional[Tensor], masked: set[int],
                 observer: Any, last_layer_tokens: Optional[int] = None) -> None:
        agg = aggregator
        self._agg = agg
        self.patch_tokens = patch_tokens
        self._shape = (batch, frames)
        self._keep = keep
        self._masked = masked
        self._tokens = torch.cat([_first_frame_tokens(agg.camera_token, batch, frames),
                                  _first_frame_tokens(agg.register_token, batch, frames), patch_tokens], dim=1)
        num_tokens = self._tokens.shape[1]
        self._token_shape = (num_tokens, self._tokens.shape[2])
        self._frame_pos = self._global_pos = None
        if agg.rope is not None:
            self._frame_pos = patch_positions(batch * frames, grid[0], grid[1], agg.patch_start_idx,
                                              patch_tokens.device)
            self._global_pos = self._frame_pos.reshape(batch, frames * num_tokens, 2)
        self._frame_mask = self._global_keep = None
        if masked:
            self._frame_mask = ~token_mask.reshape(batch * frames, 1, 1, num_tokens)
            self._global_keep = [(~m.reshape(-1)).nonzero().squeeze(1) for m in token_mask]
        self._hooks = {kind: _observer_hooks(observer, kind, agg.config.depth) for kind in ("frame", "global")}
        self._last_tokens = None if last_layer_tokens is None else int(last_layer_tokens)
        self.outputs: dict[int, Tensor] = {}
        self.next_layer = 0
        """The first layer that has not run yet (``depth`` when the pass is complete)."""

    def _last_query(self, kind: str, num_tokens: int, device: torch.device) -> Optional[Tensor]:
        """Query tokens of the last block: the first ``last_layer_tokens`` of every frame (``None``: all)."""
        n = self._last_tokens
        if n is None:
            return None
        first = torch.arange(n, device=device)
        if kind == "frame":  # one sequence per frame
            return first
        frames = self._shape[1]
        return (torch.arange(frames, device=device)[:, None] * num_tokens + first).reshape(-1)

    def record_stream(self, stream: Any) -> None:
        """CUDA: mark the pass's tensors as used by ``stream`` (``Tensor.record_stream``), so that the caching
        allocator does not hand their memory to another stream while kernels queued on ``stream`` still read
        them (when the pass continues on a side stream). A no-op for tensors off CUDA."""
        tensors = [self._tokens, self.patch_tokens, self._frame_pos, self._global_pos, self._frame_mask,
                   *(self._global_keep or ()), *self.outputs.values()]
        for tensor in tensors:
            if tensor is not None and tensor.is_cuda:
                tensor.record_stream(stream)

    @property
    def done(self) -> bool:
        return self.next_layer >= self._agg.config.depth

    def advance(self, until: int) -> None:
        """Run the layers ``next_layer .. until - 1`` (rounded up to whole ``aa_block_size`` groups; nothing when
        they have run already)."""
        agg, cfg = self._agg, self._agg.config
        if self.done:
            return
        batch, frames = self._shape
        num_tokens, dim = self._token_shape
        tokens = self._tokens
        step = cfg.aa_block_size
        while self.next_layer < min(int(until), cfg.depth):
            start = self.next_layer
            saved: dict[tuple[str, int], Tensor] = {}
            last = cfg.depth - 1
            for kind in cfg.aa_order:
                for layer in range(start, start + step):
                    is_masked = layer in self._masked
                    # the very last block computes only the tokens wanted from the last layer
                    query = (self._last_query(kind, num_tokens, tokens.device)
                             if layer == last and kind == cfg.aa_order[-1] else None)
                    if kind == "frame":
                        tokens = agg.frame_blocks[layer](
                            tokens.reshape(batch * frames, num_tokens, dim), pos=self._frame_pos,
                            attn_mask=self._frame_mask if is_masked else None,
                            qk_hook=self._hooks[kind].get(layer), query_index=query)
                    else:
                        tokens = agg.global_blocks[layer](
                            tokens.reshape(batch, frames * num_tokens, dim), pos=self._global_pos,
                            kv_index=self._global_keep if is_masked else None,
                            qk_hook=self._hooks[kind].get(layer), query_index=query)
                    if layer in self._keep:
                        saved[kind, layer] = tokens.reshape(batch, frames, -1, dim)
            for layer in range(start, start + step):
                if layer in self._keep:
                    parts = [saved["frame", layer], saved["global", layer]]
                    if layer == last and self._last_tokens is not None:
                        parts = [part[:, :, :self._last_tokens] for part in parts]
                    self.outputs[layer] = torch.cat(parts, dim=-1)
            self._tokens = tokens
            self.next_layer = start + step
        if self.done:
            self._tokens = None  # the last layer's output lives on in ``outputs`` where it is kept
