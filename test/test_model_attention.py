"""Attention building blocks: SDPA against explicit softmax attention (with key removal), and 2-D RoPE properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vggt4d_ros.model.layers import Attention, RotaryPositionEmbedding2D, patch_positions


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       keep: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` in float64; ``keep [B, N]`` bool removes the keys/values it marks False."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if keep is not None:
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ v).float()


@pytest.fixture
def qkv():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(2, 3, 11, 8, generator=gen) for _ in range(3)]


@pytest.fixture
def keep():
    keep = torch.ones(2, 11, dtype=torch.bool)
    keep[0, [2, 5, 6]] = False
    keep[1, [0, 10]] = False
    return keep


def test_sdpa_equals_explicit_softmax_attention(qkv):
    q, k, v = qkv
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), explicit_attention(q, k, v),
                               atol=1e-6, rtol=1e-5)


def test_sdpa_boolean_key_mask_equals_removing_keys(qkv, keep):
    q, k, v = qkv
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
    torch.testing.assert_close(out, explicit_attention(q, k, v, keep), atol=1e-6, rtol=1e-5)
    removed = F.scaled_dot_product_attention(q[:1], k[:1, :, keep[0]], v[:1, :, keep[0]])
    torch.testing.assert_close(out[:1], removed, atol=1e-6, rtol=1e-5)


@pytest.fixture
def attention_module():
    torch.manual_seed(1)
    attn = Attention(24, 3, qk_norm=True, rope=RotaryPositionEmbedding2D(100.0))
    x = torch.randn(2, 11, 24)
    pos = patch_positions(2, 2, 3, 5, torch.device("cpu"))
    return attn, x, pos


def _reference_module_output(attn: Attention, x: torch.Tensor, pos: torch.Tensor,
                             keep: torch.Tensor | None) -> torch.Tensor:
    seen = {}
    attn(x, pos=pos, qk_hook=lambda q, k: seen.update(q=q, k=k))
    B, N, C = x.shape
    v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim)[:, :, 2].transpose(1, 2)
    out = explicit_attention(seen["q"], seen["k"], v, keep)
    return attn.proj(out.transpose(1, 2).reshape(B, N, C))


def test_attention_module_equals_explicit_attention(attention_module):
    attn, x, pos = attention_module
    with torch.no_grad():
        torch.testing.assert_close(attn(x, pos=pos), _reference_module_output(attn, x, pos, None),
                                   atol=1e-5, rtol=1e-5)


def test_attention_key_removal_paths_equal_explicit_attention(attention_module, keep):
    attn, x, pos = attention_module
    with torch.no_grad():
        expected = _reference_module_output(attn, x, pos, keep)
        by_mask = attn(x, pos=pos, attn_mask=keep[:, None, None, :])
        by_index = attn(x, pos=pos, kv_index=[row.nonzero().squeeze(1) for row in keep])
    torch.testing.assert_close(by_mask, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_index, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one index tensor per batch element"):
        attn(x, pos=pos, kv_index=[keep[0].nonzero().squeeze(1)])


def test_patch_positions_layout():
    pos = patch_positions(3, 2, 3, 5, torch.device("cpu"))
    assert pos.shape == (3, 11, 2)
    assert pos[:, :5].eq(0).all()
    expected = [[i + 1, j + 1] for i in range(2) for j in range(3)]
    assert pos[1, 5:].tolist() == expected


def test_rope_leaves_special_tokens_unrotated():
    rope = RotaryPositionEmbedding2D(100.0)
    x = torch.randn(2, 4, 7, 16)
    out = rope(x, torch.zeros(2, 7, 2, dtype=torch.long))
    assert torch.equal(out, x)


def test_rope_rows_rotate_first_half_and_columns_second_half():
    rope = RotaryPositionEmbedding2D(100.0)
    x = torch.randn(1, 2, 1, 16)
    row_only = rope(x, torch.tensor([[[3, 0]]]))
    col_only = rope(x, torch.tensor([[[0, 3]]]))
    assert torch.equal(row_only[..., 8:], x[..., 8:]) and not torch.allclose(row_only[..., :8], x[..., :8])
    assert torch.equal(col_only[..., :8], x[..., :8]) and not torch.allclose(col_only[..., 8:], x[..., 8:])
    torch.testing.assert_close(row_only.norm(dim=-1), x.norm(dim=-1))


def test_rope_rotate_half_formula():
    """Within a half: x*cos + cat(-x2, x1)*sin with angles cat(p*f, p*f), f_k = 100^(-2k/(D/2))."""
    rope = RotaryPositionEmbedding2D(100.0)
    x = torch.randn(1, 1, 1, 16)
    out = rope(x, torch.tensor([[[5, 0]]]))
    half = x[..., :8]
    freqs = 100.0 ** (-torch.arange(0, 8, 2).float() / 8)
    angles = torch.cat([5 * freqs, 5 * freqs])
    rotated = torch.cat([-half[..., 4:], half[..., :4]], dim=-1)
    torch.testing.assert_close(out[..., :8], half * angles.cos() + rotated * angles.sin())


def test_rope_dot_products_depend_only_on_relative_position():
    rope = RotaryPositionEmbedding2D(100.0)
    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(1, 1, 1, 32, generator=gen), torch.randn(1, 1, 1, 32, generator=gen)

    def score(pq, pk):
        rq = rope(q, torch.tensor([[pq]]))
        rk = rope(k, torch.tensor([[pk]]))
        return (rq * rk).sum()

    base = score([2, 3], [4, 1])
    torch.testing.assert_close(score([7, 5], [9, 3]), base, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(score([12, 13], [14, 11]), base, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score([2, 3], [5, 1]), base, atol=1e-3)
