"""Transformer building blocks shared by the patch embed, the aggregator and the camera head.

Attribute names follow the official VGGT checkpoint keys (``norm1``, ``attn.qkv``, ``attn.q_norm``,
``ls1.gamma``, ``mlp.fc1`` ...), so a state dict loads with no key mapping.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

QKHook = Callable[[Tensor, Tensor], None]
"""Called as ``hook(q, k)`` with q, k ``[B, heads, N, head_dim]`` exactly as they enter attention."""


class Mlp(nn.Module):
    """Two-layer perceptron ``fc1 -> GELU (exact erf) -> fc2``."""

    def __init__(self, in_features: int, hidden_features: int, out_features: Optional[int] = None,
                 bias: bool = True) -> None:
        super().__init__()
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel residual scaling ``x * gamma`` (checkpoint key ``gamma``)."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class RotaryPositionEmbedding2D(nn.Module):
    """2-D rotary position embedding (rotate-half style, not interleaved).

    The first half of ``head_dim`` is rotated by the token's row, the second half by its column. Within a half of
    size ``D/2`` the angle table is ``cat(p*f, p*f)`` with ``f_k = base^(-2k/(D/2))``, ``k < D/4``.
    """

    def __init__(self, frequency: float = 100.0) -> None:
        super().__init__()
        self.base_frequency = float(frequency)

    def _cos_sin(self, half_dim: int, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        exponent = torch.arange(0, half_dim, 2, device=positions.device).float() / half_dim
        inv_freq = 1.0 / (self.base_frequency ** exponent)
        angles = positions.float()[..., None] * inv_freq  # [..., half_dim/2]
        angles = torch.cat((angles, angles), dim=-1)  # [..., half_dim]
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def _rotate_half(x: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Rotate ``tokens [B, heads, N, D]`` by ``positions [B, N, 2]`` (row, col) integer coordinates."""
        if tokens.shape[-1] % 4 != 0:
            raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {tokens.shape[-1]}")
        half = tokens.shape[-1] // 2
        rows, cols = tokens[..., :half], tokens[..., half:]
        out = []
        for part, coord in ((rows, positions[..., 0]), (cols, positions[..., 1])):
            cos, sin = self._cos_sin(half, coord, tokens.dtype)  # [B, N, half]
            cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
            out.append(part * cos + self._rotate_half(part) * sin)
        return torch.cat(out, dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention with optional qk LayerNorm and 2-D RoPE.

    Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention` with the default
    ``1/sqrt(head_dim)`` scale.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True,
                 qk_norm: bool = False, norm_eps: float = 1e-5,
                 rope: Optional[RotaryPositionEmbedding2D] = None) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.rope = rope

    def forward(self, x: Tensor, pos: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None,
                qk_hook: Optional[QKHook] = None, kv_index: Optional[Sequence[Tensor]] = None,
                query_index: Optional[Tensor] = None) -> Tensor:
        """Attend over ``x [B, N, C]``.

        ``pos [B, N, 2]`` are RoPE coordinates (ignored without RoPE). ``attn_mask`` is a boolean mask broadcastable
        to ``[B, heads, N, N]`` where ``True`` means "may attend" (used to remove keys/values). ``kv_index`` removes
        keys/values exactly instead: one index tensor ``[N_b]`` per batch element listing the keys/values that
        element keeps (queries are unchanged; each element runs its own attention call, so keep B small).
        ``qk_hook`` sees q, k ``[B, heads, N, head_dim]`` after qk-norm and RoPE (all keys).
        ``query_index [M]``: compute the output only for these tokens (``[B, M, C]``; keys/values are all tokens;
        not with ``attn_mask``).
        """
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and pos is not None:
            q = self.rope(q, pos)
            k = self.rope(k, pos)
        if qk_hook is not None:
            qk_hook(q, k)
        if query_index is not None:
            if attn_mask is not None:
                raise ValueError("query_index cannot be combined with attn_mask")
            q = q[:, :, query_index]
        if kv_index is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            if attn_mask is not None or len(kv_index) != B:
                raise ValueError(f"kv_index needs one index tensor per batch element ({B}) and no attn_mask")
            out = torch.cat([F.scaled_dot_product_attention(q[b:b + 1], k[b:b + 1, :, idx], v[b:b + 1, :, idx])
                             for b, idx in enumerate(kv_index)])
        return self.proj(out.transpose(1, 2).reshape(B, q.shape[2], C))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x))) ; x + ls2(mlp(norm2(x)))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, ffn_bias: bool = True, init_values: Optional[float] = None,
                 qk_norm: bool = False, norm_eps: float = 1e-5,
                 rope: Optional[RotaryPositionEmbedding2D] = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, qk_norm=qk_norm,
                              norm_eps=norm_eps, rope=rope)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: Tensor, pos: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None,
                qk_hook: Optional[QKHook] = None, kv_index: Optional[Sequence[Tensor]] = None,
                query_index: Optional[Tensor] = None) -> Tensor:
        """``x [B, N, C] -> [B, N, C]`` (``[B, M, C]`` for the ``M`` tokens of ``query_index``); see
        :meth:`Attention.forward` for the optional arguments."""
        attended = self.attn(self.norm1(x), pos=pos, attn_mask=attn_mask, qk_hook=qk_hook, kv_index=kv_index,
                             query_index=query_index)
        x = (x if query_index is None else x[:, query_index]) + self.ls1(attended)
        return x + self.ls2(self.mlp(self.norm2(x)))


def patch_positions(batch: int, grid_h: int, grid_w: int, num_special: int, device: torch.device) -> Tensor:
    """RoPE coordinates ``[batch, num_special + grid_h*grid_w, 2]`` (row, col).

    Special tokens sit at (0, 0) (no rotation); the patch at (row i, col j) is at (i + 1, j + 1), row-major.
    """
    rows = torch.arange(grid_h, device=device) + 1
    cols = torch.arange(grid_w, device=device) + 1
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
    special = torch.zeros(num_special, 2, dtype=grid.dtype, device=device)
    return torch.cat([special, grid], dim=0)[None].expand(batch, -1, -1)
