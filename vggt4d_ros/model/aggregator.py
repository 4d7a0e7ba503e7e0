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

        tokens = torch.cat([_first_frame_tokens(self.camera_token, batch, frames),
                            _first_frame_tokens(self.register_token, batch, frames), patch_tokens], dim=1)
        num_tokens, dim = tokens.shape[1:]
        frame_pos = global_pos = None
        if self.rope is not None:
            frame_pos = patch_positions(batch * frames, grid_h, grid_w, self.patch_start_idx, images.device)
            global_pos = frame_pos.reshape(batch, frames * num_tokens, 2)
        frame_mask = global_keep = None
        if masked:
            frame_mask = ~token_mask.reshape(batch * frames, 1, 1, num_tokens)
            global_keep = [(~m.reshape(-1)).nonzero().squeeze(1) for m in token_mask]
        hooks = {kind: _observer_hooks(attention_observer, kind, self.config.depth) for kind in ("frame", "global")}

        outputs: dict[int, Tensor] = {}
        step = self.config.aa_block_size
        for start in range(0, self.config.depth, step):
            saved: dict[tuple[str, int], Tensor] = {}
            for kind in self.config.aa_order:
                for layer in range(start, start + step):
                    is_masked = layer in masked
                    if kind == "frame":
                        tokens = self.frame_blocks[layer](
                            tokens.reshape(batch * frames, num_tokens, dim), pos=frame_pos,
                            attn_mask=frame_mask if is_masked else None, qk_hook=hooks[kind].get(layer))
                    else:
                        tokens = self.global_blocks[layer](
                            tokens.reshape(batch, frames * num_tokens, dim), pos=global_pos,
                            kv_index=global_keep if is_masked else None, qk_hook=hooks[kind].get(layer))
                    if layer in keep:
                        saved[kind, layer] = tokens.reshape(batch, frames, num_tokens, dim)
            for layer in range(start, start + step):
                if layer in keep:
                    outputs[layer] = torch.cat([saved["frame", layer], saved["global", layer]], dim=-1)
        return outputs, patch_tokens
