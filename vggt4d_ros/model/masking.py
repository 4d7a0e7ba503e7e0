"""Pixel masks to token masks for the VGGT4D masked pass.

A token is masked when the patch it covers is (mostly) dynamic: ``max_pool2d(mask, patch, stride=patch) > threshold``.
For a binary mask this marks every patch that contains at least one masked pixel. The camera and register tokens
(the first ``num_special`` tokens of each frame) are never masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pixel_mask_to_token_mask(mask: Tensor, patch_size: int = 14, threshold: float = 0.5,
                             num_special: int = 5) -> tuple[Tensor, Tensor]:
    """Turn a pixel mask ``[..., S, H, W]`` (bool or values in [0, 1]) into token masks.

    Returns ``(grid [..., S, H/p, W/p] bool, token_mask [..., S, num_special + (H/p)*(W/p)] bool)``; ``True`` means
    "masked". Patches are flattened row-major, after the ``num_special`` never-masked special tokens.
    """
    if mask.dim() < 3:
        raise ValueError(f"pixel mask must have shape [..., S, H, W], got {tuple(mask.shape)}")
    height, width = mask.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(f"pixel mask size {height}x{width} is not a multiple of the patch size {patch_size}")
    lead = mask.shape[:-2]
    pooled = F.max_pool2d(mask.reshape(-1, 1, height, width).float(), patch_size, stride=patch_size)
    grid = (pooled > threshold).reshape(*lead, height // patch_size, width // patch_size)
    special = torch.zeros(*lead, num_special, dtype=torch.bool, device=mask.device)
    return grid, torch.cat([special, grid.flatten(-2)], dim=-1)
