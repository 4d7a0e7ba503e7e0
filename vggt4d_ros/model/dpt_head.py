"""Dense prediction (DPT) head used by VGGT for depth and for world points, plus the output activations
shared by all heads.

Data flow for one chunk of frames (``h, w`` = patch grid, ``H, W`` = image size):

1. For each tapped aggregator layer: patch tokens ``[B*S, h*w, 2C]`` -> shared LayerNorm -> ``[B*S, 2C, h, w]``
   -> 1x1 projection -> + 0.1 * sinusoidal position embedding -> resize (ConvT x4, ConvT x2, identity, conv s2).
2. ``layer{i}_rn`` 3x3 convs to ``features`` channels, then a RefineNet-style fusion from the coarsest level up
   (bilinear ``align_corners=True`` upsampling to the next level's size, the last step x2), ``output_conv1``.
3. Bilinear resize to ``(H, W)``, + 0.1 * position embedding, ``output_conv2``, activations.

Attribute names equal the official checkpoint keys (``norm``, ``projects.N``, ``resize_layers.N``,
``scratch.layerN_rn``, ``scratch.refinenetN.resConfUnitM.convK``, ``scratch.output_conv2.{0,2}`` ...).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DPTHeadConfig

logger = logging.getLogger(__name__)

TokenLayers = Union[Mapping[int, Tensor], Sequence[Tensor]]
"""Aggregator outputs: layer index -> ``[B, S, P, 2C]`` (a sequence is indexed by position)."""

# ----------------------------------------------------------------------------------------------------------------
# Activations (shared with the camera head)
# ----------------------------------------------------------------------------------------------------------------


def inverse_log_transform(y: Tensor) -> Tensor:
    """``sign(y) * (exp(|y|) - 1)``, the inverse of ``sign(x) * log(1 + |x|)``."""
    return torch.sign(y) * torch.expm1(torch.abs(y))


VALUE_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": lambda x: x,
    "relu": F.relu,
    "exp": torch.exp,
    "inv_log": inverse_log_transform,
    "sigmoid": torch.sigmoid,
}
"""Activations for predicted values (depth, points, pose-encoding parts)."""

CONF_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "expp1": lambda c: 1.0 + torch.exp(c),
    "expp0": torch.exp,
    "sigmoid": torch.sigmoid,
}
"""Activations for confidence channels."""


def get_activation(name: str, table: Mapping[str, Callable[[Tensor], Tensor]] = VALUE_ACTIVATIONS,
                   ) -> Callable[[Tensor], Tensor]:
    """Look up an activation by name in ``table``, raising ``ValueError`` for unknown names."""
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(table)}") from None


# ----------------------------------------------------------------------------------------------------------------
# Position embedding and resizing helpers
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _sincos_axis_tables(height: int, width: int, channels: int, aspect_ratio: float,
                        omega_0: float) -> tuple[Tensor, Tensor]:
    """The separable factors of :func:`sincos_grid_embedding`: ``(emb_x [C/2, w], emb_y [C/2, h])``, float64."""
    if channels % 4 != 0:
        raise ValueError(f"the DPT position embedding needs a channel count divisible by 4, got {channels}")
    diag = math.sqrt(aspect_ratio * aspect_ratio + 1.0)
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    x = span_x * (2.0 * torch.arange(width, dtype=torch.float64) + 1.0 - width) / width  # [w]
    y = span_y * (2.0 * torch.arange(height, dtype=torch.float64) + 1.0 - height) / height  # [h]
    quarter = channels // 4
    omega = 1.0 / omega_0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # [C/4]
    ax, ay = x[:, None] * omega, y[:, None] * omega  # [w, C/4], [h, C/4]
    emb_x = torch.cat([ax.sin(), ax.cos()], dim=-1).T.contiguous()
    emb_y = torch.cat([ay.sin(), ay.cos()], dim=-1).T.contiguous()
    return emb_x, emb_y


def sincos_grid_embedding(height: int, width: int, channels: int, aspect_ratio: float,
                          omega_0: float = 100.0) -> Tensor:
    """Sinusoidal 2-D embedding ``[channels, height, width]`` (float64) of a normalised pixel-centre grid.

    Grid: ``x_i = s_x (2i + 1 - width) / width``, ``y_j = s_y (2j + 1 - height) / height`` with
    ``s_x = a / sqrt(a^2 + 1)``, ``s_y = 1 / sqrt(a^2 + 1)`` and ``a = aspect_ratio`` (image W/H). Channels are
    ``[sin(x w), cos(x w), sin(y w), cos(y w)]`` with ``w_k = omega_0^(-k / (channels/4))``, ``k < channels/4``.
    """
    emb_x, emb_y = _sincos_axis_tables(height, width, channels, float(aspect_ratio), float(omega_0))
    return torch.cat([emb_x[:, None, :].expand(-1, height, -1), emb_y[:, :, None].expand(-1, -1, width)], dim=0)


def _add_pos_embed(x: Tensor, aspect_ratio: float, ratio: float = 0.1) -> Tensor:
    """``x [N, C, h, w] + ratio * sincos_grid_embedding(h, w, C)``, without materialising the full table."""
    channels, height, width = x.shape[1:]
    emb_x, emb_y = _sincos_axis_tables(height, width, channels, float(aspect_ratio), 100.0)
    emb_x = (emb_x * ratio).to(dtype=x.dtype).to(device=x.device)
    emb_y = (emb_y * ratio).to(dtype=x.dtype).to(device=x.device)
    half = channels // 2
    return torch.cat([x[:, :half] + emb_x[None, :, None, :], x[:, half:] + emb_y[None, :, :, None]], dim=1)


_MAX_INTERP_ELEMENTS = 1 << 30


def _interpolate(x: Tensor, size: Optional[tuple[int, int]] = None, scale_factor: Optional[float] = None) -> Tensor:
    """Bilinear ``align_corners=True`` resize of ``x [N, C, h, w]``, split along N for very large outputs."""
    if size is None:
        size = (int(x.shape[-2] * scale_factor), int(x.shape[-1] * scale_factor))
    per_item = x.shape[1] * size[0] * size[1]
    step = max(1, _MAX_INTERP_ELEMENTS // max(per_item, 1))
    if x.shape[0] <= step:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    return torch.cat([F.interpolate(part, size=size, mode="bilinear", align_corners=True)
                      for part in x.split(step, dim=0)], dim=0)


# ----------------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------------


class ResidualConvUnit(nn.Module):
    """``relu(x) + conv2(relu(conv1(relu(x))))``.

    The reference applies an in-place ReLU to its input, so the skip connection adds ``relu(x)``, not ``x``.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    """RefineNet fusion: ``out_conv(up(rcu2(x + rcu1(skip))))`` (no ``rcu1``/skip in the coarsest block)."""

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.has_residual = has_residual
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, kernel_size=1, stride=1, padding=0, bias=True)

    def forward(self, x: Tensor, skip: Optional[Tensor] = None, size: Optional[tuple[int, int]] = None) -> Tensor:
        """``x [N, F, h, w]`` (+ ``skip`` of the same shape) -> ``[N, F, *size]`` (``size=None``: x2)."""
        if self.has_residual:
            if skip is None:
                raise ValueError("this fusion block needs a skip input")
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = _interpolate(x, size=size) if size is not None else _interpolate(x, scale_factor=2)
        return self.out_conv(x)


class _Scratch(nn.Module):
    """Container whose attribute names give the ``scratch.*`` checkpoint keys."""

    def __init__(self, in_channels: Sequence[int], features: int, head_features_2: int, output_dim: int) -> None:
        super().__init__()
        for i, ch in enumerate(in_channels, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(ch, features, kernel_size=3, stride=1, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self, f"refinenet{i}", FeatureFusionBlock(features, has_residual=i != 4))
        self.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, stride=1, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, head_features_2, kernel_size=3, stride=1, padding=1),
            nn.ReLU(),
            nn.Conv2d(head_features_2, output_dim, kernel_size=1, stride=1, padding=0),
        )


class DPTHead(nn.Module):
    """DPT head producing a dense prediction and a confidence map per frame.

    ``forward`` returns ``preds [B, S, H, W, output_dim - 1]`` (activated with ``cfg.activation``) and
    ``conf [B, S, H, W]`` (activated with ``cfg.conf_activation``).
    """

    def __init__(self, cfg: DPTHeadConfig) -> None:
        super().__init__()
        if len(cfg.out_channels) != 4 or len(cfg.intermediate_layer_idx) != 4:
            raise ValueError(f"DPTHead needs 4 out_channels and 4 intermediate layers, got {cfg.out_channels} "
                             f"and {cfg.intermediate_layer_idx}")
        if cfg.output_dim < 2:
            raise ValueError(f"DPTHead output_dim must be >= 2 (values + confidence), got {cfg.output_dim}")
        if cfg.features % 2 or (cfg.pos_embed and (cfg.features // 2) % 4):
            raise ValueError(f"DPTHead features must be even (and features/2 divisible by 4 with pos_embed), "
                             f"got {cfg.features}")
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.intermediate_layer_idx = tuple(int(i) for i in cfg.intermediate_layer_idx)
        self.activation = get_activation(cfg.activation, VALUE_ACTIVATIONS)
        self.conf_activation = get_activation(cfg.conf_activation, CONF_ACTIVATIONS)
        oc = tuple(int(c) for c in cfg.out_channels)

        self.norm = nn.LayerNorm(cfg.dim_in)
        self.projects = nn.ModuleList([nn.Conv2d(cfg.dim_in, c, kernel_size=1, stride=1, padding=0) for c in oc])
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4, padding=0),
            nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2, padding=0),
            nn.Identity(),
            nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
        ])
        self.scratch = _Scratch(oc, cfg.features, cfg.head_features_2, cfg.output_dim)

    def forward(self, tokens: TokenLayers, images: Tensor, patch_start_idx: int,
                frames_chunk_size: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """Predict ``(preds [B, S, H, W, output_dim-1], conf [B, S, H, W])``.

        ``tokens[l]`` is the aggregator output ``[B, S, P, 2C]`` for each ``l`` in ``cfg.intermediate_layer_idx``;
        only tokens from ``patch_start_idx`` on (the patch grid, row-major) are used. ``images [B, S, 3, H, W]``
        supply the output size (H and W must be multiples of the patch size). Frames are processed
        ``frames_chunk_size`` at a time (default ``cfg.frames_chunk_size``; ``0`` or ``None`` in the config
        means all at once); chunking does not change the results.
        """
        if images.ndim != 5:
            raise ValueError(f"images must be [B, S, 3, H, W], got shape {tuple(images.shape)}")
        B, S, _, H, W = images.shape
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {self.patch_size}")
        layers = []
        for idx in self.intermediate_layer_idx:
            try:
                x = tokens[idx]
            except (KeyError, IndexError):
                raise ValueError(f"DPTHead needs aggregator layer {idx}, which was not provided") from None
            if x.ndim != 4 or x.shape[0] != B or x.shape[1] != S:
                raise ValueError(f"aggregator layer {idx} must be [B={B}, S={S}, P, C], got {tuple(x.shape)}")
            layers.append(x[:, :, patch_start_idx:])
        chunk = self.cfg.frames_chunk_size if frames_chunk_size is None else frames_chunk_size
        if not chunk or chunk >= S:
            return self._forward_frames(layers, H, W)
        if chunk < 0:
            raise ValueError(f"frames_chunk_size must be positive, got {chunk}")
        results = [self._forward_frames([x[:, s:s + chunk] for x in layers], H, W) for s in range(0, S, chunk)]
        return torch.cat([r[0] for r in results], dim=1), torch.cat([r[1] for r in results], dim=1)

    def _forward_frames(self, layers: Sequence[Tensor], H: int, W: int) -> tuple[Tensor, Tensor]:
        """Run the head on patch tokens ``[B, s, h*w, 2C]`` of each tapped layer."""
        B, S = layers[0].shape[:2]
        h, w = H // self.patch_size, W // self.patch_size
        aspect = W / H
        feats = []
        for x, project, resize in zip(layers, self.projects, self.resize_layers):
            if x.shape[2] != h * w:
                raise ValueError(f"expected {h}x{w}={h * w} patch tokens per frame for a {H}x{W} image, "
                                 f"got {x.shape[2]} (check patch_start_idx)")
            x = self.norm(x.reshape(B * S, h * w, x.shape[-1]))
            x = project(x.transpose(1, 2).reshape(B * S, -1, h, w))
            if self.cfg.pos_embed:
                x = _add_pos_embed(x, aspect)
            feats.append(resize(x))

        sc = self.scratch
        l1, l2, l3, l4 = sc.layer1_rn(feats[0]), sc.layer2_rn(feats[1]), sc.layer3_rn(feats[2]), sc.layer4_rn(feats[3])
        out = sc.refinenet4(l4, size=tuple(l3.shape[-2:]))
        out = sc.refinenet3(out, l3, size=tuple(l2.shape[-2:]))
        out = sc.refinenet2(out, l2, size=tuple(l1.shape[-2:]))
        out = sc.refinenet1(out, l1)
        out = _interpolate(sc.output_conv1(out), size=(H, W))
        if self.cfg.pos_embed:
            out = _add_pos_embed(out, aspect)
        out = sc.output_conv2(out).permute(0, 2, 3, 1)  # [B*S, H, W, output_dim]
        preds = self.activation(out[..., :-1])
        conf = self.conf_activation(out[..., -1])
        return preds.reshape(B, S, H, W, -1), conf.reshape(B, S, H, W)
