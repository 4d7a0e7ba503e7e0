"""Model configuration: frozen dataclasses, the ``vggt-1b`` preset and a reader for fixture-style JSON files.

The JSON reader accepts the format of ``tiny_*_config.json`` (top-level keys ``aggregator``, ``patch_embed``,
``camera_head``, ``depth_head``, ``point_head``, optional ``track_head``); unknown keys are ignored, and a missing
section disables that head (a missing ``aggregator`` or ``patch_embed`` is an error).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Union


def _pick(cls, data: Mapping[str, Any], **overrides):
    names = {f.name for f in fields(cls)}
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
    kwargs.update(overrides)
    return cls(**kwargs)


@dataclass(frozen=True)
class _TransformerConfig:
    """Fields shared by the patch-embed ViT and the aggregator."""

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True


@dataclass(frozen=True)
class PatchEmbedConfig(_TransformerConfig):
    """Patch embedding: ``dinov2_reg`` (DINOv2 ViT with registers) or ``conv`` (one strided conv)."""

    type: str = "dinov2_reg"
    init_values: float = 1.0
    interpolate_antialias: bool = True
    interpolate_offset: float = 0.0
    layernorm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.type not in ("dinov2_reg", "conv"):
            raise ValueError(f"patch_embed.type must be 'dinov2_reg' or 'conv', got {self.type!r}")


@dataclass(frozen=True)
class AggregatorConfig(_TransformerConfig):
    """Alternating frame/global attention trunk."""

    aa_order: tuple = ("frame", "global")
    aa_block_size: int = 1
    qk_norm: bool = True
    rope_freq: float = 100.0
    init_values: float = 0.01
    block_layernorm_eps: float = 1e-5
    qk_norm_layernorm_eps: float = 1e-5

    @property
    def patch_start_idx(self) -> int:
        """Index of the first patch token in a frame (camera token + registers come first)."""
        return 1 + self.num_register_tokens


@dataclass(frozen=True)
class CameraHeadConfig:
    """Iterative camera head (AdaLN-modulated trunk), pose encoding ``absT_quaR_FoV``."""

    dim_in: int = 2048
    trunk_depth: int = 4
    pose_encoding_type: str = "absT_quaR_FoV"
    num_heads: int = 16
    mlp_ratio: float = 4.0
    init_values: float = 0.01
    trans_act: str = "linear"
    quat_act: str = "linear"
    fl_act: str = "relu"
    num_iterations: int = 4
    pose_branch_hidden: Optional[int] = None  # default dim_in // 2
    layernorm_eps: float = 1e-5
    adaln_norm_eps: float = 1e-6


@dataclass(frozen=True)
class DPTHeadConfig:
    """Dense prediction (DPT) head used for depth and world points."""

    dim_in: int = 2048
    patch_size: int = 14
    output_dim: int = 2
    activation: str = "exp"
    conf_activation: str = "expp1"
    features: int = 256
    out_channels: tuple = (256, 512, 1024, 1024)
    intermediate_layer_idx: tuple = (4, 11, 17, 23)
    pos_embed: bool = True
    head_features_2: int = 32
    frames_chunk_size: int = 8


@dataclass(frozen=True)
class VGGTConfig:
    """Whole-model configuration. ``None`` heads are not built (their checkpoint keys are then unexpected)."""

    name: str = "vggt-1b"
    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    patch_embed: PatchEmbedConfig = field(default_factory=PatchEmbedConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    camera_head: Optional[CameraHeadConfig] = field(default_factory=CameraHeadConfig)
    depth_head: Optional[DPTHeadConfig] = field(default_factory=DPTHeadConfig)
    point_head: Optional[DPTHeadConfig] = field(
        default_factory=lambda: DPTHeadConfig(output_dim=4, activation="inv_log"))

    def __post_init__(self) -> None:
        if self.patch_embed.embed_dim != self.aggregator.embed_dim:
            raise ValueError("patch_embed.embed_dim must equal aggregator.embed_dim")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def tapped_layers(self) -> tuple[int, ...]:
        """Aggregator layers whose outputs some head reads (the aggregator keeps only these)."""
        layers: set[int] = set()
        for head in (self.depth_head, self.point_head):
            if head is not None:
                layers.update(head.intermediate_layer_idx)
        if self.camera_head is not None:
            layers.add(self.aggregator.depth - 1)
        return tuple(sorted(layers))

    def with_heads(self, **heads: Optional[object]) -> "VGGTConfig":
        """A copy with some heads replaced or disabled, e.g. ``cfg.with_heads(point_head=None)``."""
        return replace(self, **heads)


PRESETS: dict[str, VGGTConfig] = {"vggt-1b": VGGTConfig()}


def config_from_dict(data: Mapping[str, Any], name: Optional[str] = None) -> VGGTConfig:
    """Build a :class:`VGGTConfig` from a fixture-style mapping (see module docstring)."""
    for required in ("aggregator", "patch_embed"):
        if required not in data:
            raise ValueError(f"model config is missing the '{required}' section")
    agg = dict(data["aggregator"])
    embed_dim = int(data.get("embed_dim", agg.get("embed_dim", 1024)))
    img_size = int(data.get("img_size", 518))
    patch_size = int(data.get("patch_size", 14))
    pe = _pick(PatchEmbedConfig, data["patch_embed"], embed_dim=embed_dim, img_size=img_size, patch_size=patch_size)
    ag = _pick(AggregatorConfig, agg, embed_dim=embed_dim, img_size=img_size, patch_size=patch_size)
    if "patch_start_idx" in agg and int(agg["patch_start_idx"]) != ag.patch_start_idx:
        raise ValueError(f"patch_start_idx {agg['patch_start_idx']} does not match "
                         f"1 + num_register_tokens = {ag.patch_start_idx}")
    cam = _pick(CameraHeadConfig, data["camera_head"]) if data.get("camera_head") else None
    depth = _pick(DPTHeadConfig, data["depth_head"]) if data.get("depth_head") else None
    point = _pick(DPTHeadConfig, data["point_head"]) if data.get("point_head") else None
    return VGGTConfig(name=name or str(data.get("name", "custom")), img_size=img_size, patch_size=patch_size,
                      embed_dim=embed_dim, patch_embed=pe, aggregator=ag, camera_head=cam, depth_head=depth,
                      point_head=point)


def resolve_config(config: Union[None, str, Path, VGGTConfig, Mapping[str, Any]]) -> VGGTConfig:
    """Turn a preset name, a JSON path, a mapping or a config object into a :class:`VGGTConfig`.

    ``None`` means the ``vggt-1b`` preset.
    """
    if config is None:
        return PRESETS["vggt-1b"]
    if isinstance(config, VGGTConfig):
        return config
    if isinstance(config, Mapping):
        return config_from_dict(config)
    text = str(config)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if path.suffix.lower() == ".json" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"model config file not found: {path}")
        with open(path, "r", encoding="utf-8") as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ValueError(f"model config {path} is not valid JSON: {exc}") from exc
        return config_from_dict(data, name=str(data.get("name") or path.stem))
    raise ValueError(f"unknown model config {text!r}: expected a preset ({', '.join(sorted(PRESETS))}) "
                     f"or a path to a JSON config file")
