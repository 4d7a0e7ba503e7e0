"""Iterative camera head of VGGT (AdaLN-modulated transformer trunk), pose encoding ``absT_quaR_FoV``.

The camera token (token 0 of every frame) of the last aggregator layer is layer-normed once. Each iteration
embeds the current raw (un-activated) pose encoding -- the learned ``empty_pose_tokens`` in the first one --,
turns it into ``shift, scale, gate`` and modulates the normed tokens:
``x = gate * (adaln_norm(x0) * (1 + scale) + shift) + x0``. The trunk (plain blocks attending across frames), the
trunk norm and ``pose_branch`` give a delta that is added to the raw encoding. Only the returned encodings are
activated: translation and quaternion with ``trans_act`` / ``quat_act`` (the quaternion is not normalised),
the two fields of view with ``fl_act``.

Attribute names equal the official checkpoint keys.
"""

from __future__ import annotations

import logging
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .config import CameraHeadConfig
from .dpt_head import VALUE_ACTIVATIONS, get_activation
from .layers import Block, Mlp

logger = logging.getLogger(__name__)

POSE_ENCODING_DIM = 9
"""``[t (3), quaternion xyzw (4), fov_h, fov_w]``."""


class CameraHead(nn.Module):
    """Predicts ``pose_enc [B, S, 9]`` from the camera tokens, refined over several iterations."""

    def __init__(self, cfg: CameraHeadConfig) -> None:
        super().__init__()
        if cfg.pose_encoding_type != "absT_quaR_FoV":
            raise ValueError(f"unsupported pose_encoding_type {cfg.pose_encoding_type!r}; expected 'absT_quaR_FoV'")
        if cfg.num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {cfg.num_iterations}")
        self.cfg = cfg
        dim = cfg.dim_in
        self.trans_act = get_activation(cfg.trans_act, VALUE_ACTIVATIONS)
        self.quat_act = get_activation(cfg.quat_act, VALUE_ACTIVATIONS)
        self.fl_act = get_activation(cfg.fl_act, VALUE_ACTIVATIONS)

        self.trunk = nn.Sequential(*[
            Block(dim, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, init_values=cfg.init_values,
                  norm_eps=cfg.layernorm_eps)
            for _ in range(cfg.trunk_depth)
        ])
        self.token_norm = nn.LayerNorm(dim, eps=cfg.layernorm_eps)
        self.trunk_norm = nn.LayerNorm(dim, eps=cfg.layernorm_eps)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_ENCODING_DIM))
        self.embed_pose = nn.Linear(POSE_ENCODING_DIM, dim)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim, bias=True))
        self.adaln_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=cfg.adaln_norm_eps)
        hidden = cfg.pose_branch_hidden or dim // 2
        self.pose_branch = Mlp(dim, hidden, POSE_ENCODING_DIM)

    def activate(self, pose_enc: Tensor) -> Tensor:
        """Apply the output activations to a raw encoding ``[..., 9]``."""
        return torch.cat([self.trans_act(pose_enc[..., :3]), self.quat_act(pose_enc[..., 3:7]),
                          self.fl_act(pose_enc[..., 7:])], dim=-1)

    def forward(self, tokens: Union[Mapping[int, Tensor], Sequence[Tensor]],
                num_iterations: Optional[int] = None) -> list[Tensor]:
        """Return the activated pose encodings ``[B, S, 9]`` of every iteration (the last is ``pose_enc``).

        ``tokens`` maps aggregator layer index -> ``[B, S, P, 2C]``; the highest index (the last layer) is used
        (a sequence uses its last entry). ``num_iterations`` defaults to ``cfg.num_iterations``.
        """
        if isinstance(tokens, Mapping):
            if not tokens:
                raise ValueError("CameraHead needs at least one aggregator layer")
            last = tokens[max(tokens)]
        else:
            if len(tokens) == 0:
                raise ValueError("CameraHead needs at least one aggregator layer")
            last = tokens[-1]
        if last.ndim != 4 or last.shape[-1] != self.cfg.dim_in:
            raise ValueError(f"aggregator tokens must be [B, S, P, {self.cfg.dim_in}], got {tuple(last.shape)}")
        iterations = self.cfg.num_iterations if num_iterations is None else int(num_iterations)
        if iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {iterations}")

        x0 = self.token_norm(last[:, :, 0])  # [B, S, C]
        x0_adaln = self.adaln_norm(x0)
        B, S, _ = x0.shape
        raw: Optional[Tensor] = None
        outputs: list[Tensor] = []
        for _ in range(iterations):
            source = self.empty_pose_tokens.expand(B, S, -1) if raw is None else raw.detach()
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(source)).chunk(3, dim=-1)
            x = gate * (x0_adaln * (1 + scale) + shift) + x0
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            raw = delta if raw is None else raw + delta
            outputs.append(self.activate(raw))
        return outputs
