"""Patch embeddings: a strided convolution, and the DINOv2-with-registers ViT that VGGT-1B uses.

Both take normalised images ``[N, 3, H, W]`` (H, W multiples of the patch size) and return patch tokens
``[N, (H/p)*(W/p), C]`` in row-major patch order. Attribute names follow the checkpoint keys
(``aggregator.patch_embed.{cls_token, pos_embed, register_tokens, mask_token, patch_embed.proj, blocks.N, norm}``
for DINO, ``aggregator.patch_embed.proj`` for the conv variant).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PatchEmbedConfig
from .layers import Block


class ConvPatchEmbed(nn.Module):
    """One ``patch x patch`` convolution with stride ``patch``, flattened to tokens (no norm, no position)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        """``[N, 3, H, W] -> [N, (H/p)*(W/p), C]``."""
        return self.proj(images).flatten(2).transpose(1, 2)


class DinoPatchEmbed(nn.Module):
    """DINOv2 ViT with register tokens; only its final-normed patch tokens are used.

    Token layout inside the ViT: ``[cls, registers..., patches...]``. The positional embedding (cls position + a
    square grid for ``img_size``) is added before the registers are inserted, so registers get none.
    ``mask_token`` exists only so that the checkpoint loads; VGGT never masks DINO inputs.
    """

    def __init__(self, cfg: PatchEmbedConfig) -> None:
        super().__init__()
        if cfg.interpolate_offset != 0.0:
            raise ValueError(f"only interpolate_offset=0.0 is supported (size-based resize), "
                             f"got {cfg.interpolate_offset}")
        self.patch_size = cfg.patch_size
        self.antialias = cfg.interpolate_antialias
        self.grid = cfg.img_size // cfg.patch_size
        dim = cfg.embed_dim
        self.patch_embed = ConvPatchEmbed(cfg.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(dim, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, proj_bias=cfg.proj_bias,
                  ffn_bias=cfg.ffn_bias, init_values=cfg.init_values, norm_eps=cfg.layernorm_eps)
            for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=cfg.layernorm_eps)

    def interpolate_pos_encoding(self, height: int, width: int) -> Tensor:
        """Positional embedding ``[1, 1 + (H/p)*(W/p), C]`` for an ``H x W`` image (cls position first).

        The square grid is resized to ``(H/p, W/p)`` with antialiased bicubic interpolation (``size=``,
        ``align_corners=False``) in float32; it is used as is only when it already fits and ``H == W``.
        """
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        if grid_h * grid_w == self.grid * self.grid and height == width:
            return self.pos_embed
        pos = self.pos_embed.float()
        dim = pos.shape[-1]
        grid = pos[:, 1:].reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False,
                             antialias=self.antialias)
        grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat([pos[:, :1], grid], dim=1).to(self.pos_embed.dtype)

    def forward(self, images: Tensor) -> Tensor:
        """``[N, 3, H, W] -> [N, (H/p)*(W/p), C]`` final-normed patch tokens."""
        height, width = images.shape[-2:]
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.interpolate_pos_encoding(height, width).to(x.dtype)
        registers = self.register_tokens.expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :1], registers, x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1 + registers.shape[1]:]


def build_patch_embed(cfg: PatchEmbedConfig) -> nn.Module:
    """The patch embed named by ``cfg.type`` (``dinov2_reg`` or ``conv``)."""
    if cfg.type == "conv":
        return ConvPatchEmbed(cfg.patch_size, cfg.embed_dim)
    return DinoPatchEmbed(cfg)
