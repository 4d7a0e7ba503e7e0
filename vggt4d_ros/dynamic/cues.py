"""VGGT4D dynamic cues from the global-attention queries and keys of VGGT.

VGGT4D scores every patch token of a reference frame ``r`` by how its global-attention queries/keys
relate to the tokens of a few nearby source frames ``s = r + offset`` (offsets outside ``[0, S)`` are
dropped, not clamped).  For one layer ``l`` and head ``h`` the raw similarity of reference token ``i``
and source token ``j`` is the plain dot product ``sim = A_lh[r]_i . B_lh[s]_j`` (no scale, no softmax),
computed over patch tokens only (the camera and register tokens are excluded).

* ``mean(X, Y, layers)`` averages ``sim`` over layers, heads, source frames and source tokens.
* ``spatial_std(X, Y, layers)`` averages ``sim`` over layers, heads and source frames, then takes the
  unbiased standard deviation over the source tokens ``j``.
* Every map is min-max normalised per reference frame: ``(x - min) / (max - min + eps)``.

The five cues and their combination are::

    m1 = mean(Q, Q, 3..7)        v1 = spatial_std(Q, Q, 18..19)   m2 = mean(Q, Q, 17..21)
    m3 = mean(K, K, 0)           v3 = spatial_std(Q, K, 0)
    dyn = minmax((1 - m1) * (1 - v1) * m2 * (1 - m3) * v3)

Two implementations share the normalisation and combination helpers:

* :class:`CueAccumulator` is an attention observer.  The aggregator calls it once per attention block
  with the q/k that go into scaled-dot-product attention; it reduces each layer on the fly and keeps only
  ``O(S * P)`` numbers between layers (plus, transiently, the patch tokens of the layers of a
  multi-layer ``spatial_std`` cue until its last layer arrives -- layer 18's q until layer 19 for ``v1``).
  It relies on linearity: the mean over source tokens is ``A[r] @ mean_j(B[s]_j)``, and the average over
  source frames can be taken on ``B`` before the product, so per reference frame the averaged similarity
  matrix is ``sum_{l,h} A_lh[r] Bbar_lh[r]^T / (L * H)`` with ``Bbar`` the source-averaged tokens.
* :func:`cues_from_qk` is the reference "store every layer" implementation: it materialises the raw
  similarity matrices for each reference frame and averages them exactly as in the definition.

Frames without any valid source frame (``S == 1``, or all offsets out of range) get all-zero cue maps,
an all-zero ``dyn`` map and ``num_sources == 0``.  All cue arithmetic runs in float32 (float64 when the
inputs are float64), whatever the input dtype, on the device of the inputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Mapping

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

CUE_NAMES: tuple[str, ...] = ("m1", "v1", "m2", "m3", "v3")
"""Names of the five individual cue maps, in the order of the VGGT4D paper."""


@dataclass(frozen=True)
class CueSpec:
    """One cue: ``kind`` of reduction over the similarity of tensors ``x`` (reference) and ``y`` (source)."""

    name: str
    kind: Literal["mean", "std"]
    x: Literal["q", "k"]
    y: Literal["q", "k"]
    layers: tuple[int, ...]


def _layer_tuple(name: str, value: object) -> tuple[int, ...]:
    try:
        layers = tuple(int(v) for v in value)  # type: ignore[union-attr]
    except TypeError as exc:
        raise ValueError(f"CueConfig.{name} must be a sequence of layer indices, got {value!r}") from exc
    if not layers:
        raise ValueError(f"CueConfig.{name} must name at least one layer, got an empty sequence")
    if any(v < 0 for v in layers):
        raise ValueError(f"CueConfig.{name} must contain non-negative layer indices, got {layers}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"CueConfig.{name} must not repeat a layer, got {layers}")
    return layers


@dataclass(frozen=True)
class CueConfig:
    """Which global-attention layers feed which cue, and how source frames are chosen.

    Attributes:
        source_offsets: frame offsets ``s - r`` of the source frames of reference frame ``r``.
        m1_layers: layers of ``m1 = mean(Q, Q)``.
        v1_layers: layers of ``v1 = spatial_std(Q, Q)``.
        m2_layers: layers of ``m2 = mean(Q, Q)``.
        m3_layers: layers of ``m3 = mean(K, K)``.
        v3_layers: layers of ``v3 = spatial_std(Q, K)``.
        patch_start_idx: number of special tokens (camera + registers) before the patch tokens of a frame.
        eps: the ``eps`` of the min-max normalisation.
    """

    source_offsets: tuple[int, ...] = (-6, -4, -2, 2, 4, 6)
    m1_layers: tuple[int, ...] = (3, 4, 5, 6, 7)
    v1_layers: tuple[int, ...] = (18, 19)
    m2_layers: tuple[int, ...] = (17, 18, 19, 20, 21)
    m3_layers: tuple[int, ...] = (0,)
    v3_layers: tuple[int, ...] = (0,)
    patch_start_idx: int = 5
    eps: float = 1e-6

    def __post_init__(self) -> None:
        offsets = tuple(int(o) for o in self.source_offsets)
        if not offsets:
            raise ValueError("CueConfig.source_offsets must contain at least one offset")
        if len(set(offsets)) != len(offsets):
            raise ValueError(f"CueConfig.source_offsets must not repeat an offset, got {offsets}")
        object.__setattr__(self, "source_offsets", offsets)
        for name in ("m1_layers", "v1_layers", "m2_layers", "m3_layers", "v3_layers"):
            object.__setattr__(self, name, _layer_tuple(name, getattr(self, name)))
        if int(self.patch_start_idx) < 0:
            raise ValueError(f"CueConfig.patch_start_idx must be >= 0, got {self.patch_start_idx}")
        if not float(self.eps) > 0.0:
            raise ValueError(f"CueConfig.eps must be > 0, got {self.eps}")

    def specs(self) -> tuple[CueSpec, ...]:
        """The five cue definitions, in the order of :data:`CUE_NAMES`."""
        return (
            CueSpec("m1", "mean", "q", "q", self.m1_layers),
            CueSpec("v1", "std", "q", "q", self.v1_layers),
            CueSpec("m2", "mean", "q", "q", self.m2_layers),
            CueSpec("m3", "mean", "k", "k", self.m3_layers),
            CueSpec("v3", "std", "q", "k", self.v3_layers),
        )

    def global_layers(self) -> set[int]:
        """All global-attention layers that at least one cue reads."""
        return {layer for spec in self.specs() for layer in spec.layers}


# ----------------------------------------------------------------------------------------------------
# Shared helpers (used by both the streamed and the reference implementation)
# ----------------------------------------------------------------------------------------------------


def no_autocast(device: torch.device) -> torch.autocast:
    """Context that disables autocast on ``device``'s type (float32 cue math under a bf16 autocast region)."""
    return torch.autocast(device_type=device.type, enabled=False)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype used for cue arithmetic: float64 for float64 inputs, float32 otherwise (bf16/fp16 included)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def source_frames(
    num_frames: int, offsets: tuple[int, ...], device: torch.device | str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Source frames of every reference frame.

    Args:
        num_frames: number of frames ``S``.
        offsets: ``O`` frame offsets; ``r + offset`` outside ``[0, S)`` is dropped.
        device: device of the returned tensors.

    Returns:
        ``index [S, O]`` long (source frame ``r + offset``, clamped into range where invalid so it can be
        used for gathering), ``weight [S, O]`` float32 (``1 / num_sources[r]`` for valid entries, 0 for
        dropped ones and for frames without any source) and ``num_sources [S]`` long.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    ref = torch.arange(num_frames, device=device)[:, None]
    off = torch.tensor(offsets, dtype=torch.long, device=device)[None, :]
    src = ref + off
    valid = (src >= 0) & (src < num_frames)
    num_sources = valid.sum(dim=1)
    weight = valid.to(torch.float32) / num_sources.clamp(min=1).to(torch.float32)[:, None]
    index = src.clamp(0, num_frames - 1)
    return index, weight, num_sources


def minmax_normalize(x: Tensor, eps: float) -> Tensor:
    """Min-max normalise ``x [..., N]`` over its last dimension: ``(x - min) / (max - min + eps)``."""
    lo = x.amin(dim=-1, keepdim=True)
    hi = x.amax(dim=-1, keepdim=True)
    return (x - lo) / (hi - lo + eps)


def combine_cues(cues: Mapping[str, Tensor], eps: float) -> Tensor:
    """``dyn = minmax((1 - m1)(1 - v1) m2 (1 - m3) v3)`` from normalised cue maps ``[..., N]``."""
    raw = (1.0 - cues["m1"]) * (1.0 - cues["v1"]) * cues["m2"] * (1.0 - cues["m3"]) * cues["v3"]
    return minmax_normalize(raw, eps)


def finalize_cue_maps(
    raw: Mapping[str, Tensor],
    num_sources: Tensor,
    grid: tuple[int, int],
    eps: float,
) -> dict[str, Tensor]:
    """Normalise raw per-token cue values and combine them into the output dictionary.

    Args:
        raw: for each name in :data:`CUE_NAMES`, the un-normalised values ``[B, S, h*w]``.
        num_sources: ``[S]`` long.
        grid: patch grid ``(h, w)``.
        eps: min-max epsilon.

    Returns:
        ``m1, v1, m2, m3, v3, dyn`` as float32 ``[S, h, w]`` when ``B == 1`` and ``[B, S, h, w]``
        otherwise, plus ``num_sources [S]``.  Frames with ``num_sources == 0`` are all zero.
    """
    h, w = grid
    no_source = (num_sources == 0)[None, :, None]
    normed: dict[str, Tensor] = {}
    for name in CUE_NAMES:
        value = raw[name]
        # Frames without sources have raw maps of exact zeros already; the explicit zeroing keeps that
        # guarantee independent of how the raw map was produced.
        normed[name] = minmax_normalize(value, eps).masked_fill(no_source, 0.0)
    normed["dyn"] = combine_cues(normed, eps).masked_fill(no_source, 0.0)
    out: dict[str, Tensor] = {}
    for name, value in normed.items():
        b, s, _ = value.shape
        value = value.to(torch.float32).reshape(b, s, h, w)
        out[name] = value[0] if b == 1 else value
    out["num_sources"] = num_sources.to(torch.long)
    return out


def split_patch_tokens(t: Tensor, num_frames: int, num_tokens: int, patch_start_idx: int) -> Tensor:
    """View the patch tokens of a global-attention q/k ``[B, H, S*P, d]`` as ``[B, H, S, p, d]``."""
    if t.ndim != 4:
        raise ValueError(f"global q/k must have shape [B, heads, S*P, d], got {tuple(t.shape)}")
    b, heads, n, d = t.shape
    if n != num_frames * num_tokens:
        raise ValueError(
            f"global q/k has {n} tokens, expected S*P = {num_frames}*{num_tokens} = {num_frames * num_tokens}"
        )
    return t.reshape(b, heads, num_frames, num_tokens, d)[:, :, :, patch_start_idx:, :]


def _check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    if len(grid) != 2 or int(grid[0]) < 1 or int(grid[1]) < 1:
        raise ValueError(f"grid must be a pair (h, w) of positive ints, got {grid!r}")
    return int(grid[0]), int(grid[1])


def _unbiased_std_last(x: Tensor) -> Tensor:
    """Unbiased std over the last dimension; defined as 0 when it has a single element."""
    if x.shape[-1] < 2:
        return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    return x.std(dim=-1, correction=1)


def _log_sourceless(num_sources: Tensor) -> None:
    missing = torch.nonzero(num_sources == 0).flatten().tolist()
    if missing:
        logger.debug("frames %s have no source frame in range; their cue maps are all zero", missing)


# ----------------------------------------------------------------------------------------------------
# Streamed implementation
# ----------------------------------------------------------------------------------------------------


class GlobalAttentionObserver:
    """Base of the attention observers that watch the global-attention blocks a :class:`CueConfig` needs."""

    def __init__(self, config: CueConfig | None = None) -> None:
        self.config = config if config is not None else CueConfig()
        self._needed = self.config.global_layers()

    def needed_layers(self, block_type: str) -> set[int]:
        """Layers of ``block_type`` ('frame' or 'global') this observer needs to see."""
        if block_type == "global":
            return set(self._needed)
        if block_type == "frame":
            return set()
        raise ValueError(f"block_type must be 'frame' or 'global', got {block_type!r}")


class CueAccumulator(GlobalAttentionObserver):
    """Attention observer that computes the VGGT4D cues while the aggregator runs.

    Call it as ``observer(block_type, layer, q, k)`` for every attention block, with q/k exactly as
    fed to scaled-dot-product attention (after qk-norm and RoPE).  Only ``'global'`` blocks of the
    layers in :meth:`needed_layers` are used; frame blocks and other layers are ignored.

    Shapes: global q/k are ``[B, heads, S*P, d]`` with ``P = patch_start_idx + h*w``.

    Memory: between layers it keeps one ``[B, S, h*w]`` sum per mean cue and one ``[B, S, h*w]`` result per
    finished spatial-std cue.  A spatial-std cue spanning several layers keeps the patch tokens of its
    earlier layers (in the input dtype) until its last layer arrives and then frees them.

    Args:
        num_frames: number of frames ``S``.
        grid: patch grid ``(h, w)``.
        config: the cue configuration (defaults to :class:`CueConfig()`).
        batch: batch size ``B`` of the global q/k.  :meth:`finalize` returns ``[S, h, w]`` maps for
            ``B == 1`` and ``[B, S, h, w]`` maps for ``B > 1``.
        chunk_size: reference frames processed at once; bounds the transient ``[B, chunk, p, p]``
            similarity matrices of the spatial-std cues.  Does not change results.
    """

    def __init__(
        self,
        num_frames: int,
        grid: tuple[int, int],
        config: CueConfig | None = None,
        batch: int = 1,
        chunk_size: int = 8,
    ) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        super().__init__(config)
        self.num_frames = int(num_frames)
        self.grid = _check_grid(grid)
        self.batch = int(batch)
        self.chunk_size = int(chunk_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_tokens = self.config.patch_start_idx + self.num_patches
        self._specs = self.config.specs()
        self._num_heads: int | None = None
        self._device: torch.device | None = None
        self._dtype: torch.dtype | None = None
        self._index: Tensor | None = None
        self._weight: Tensor | None = None
        _, _, num_sources = source_frames(self.num_frames, self.config.source_offsets)
        self._num_sources = num_sources
        _log_sourceless(num_sources)
        self._seen: set[int] = set()
        self._mean_sums: dict[str, Tensor] = {}
        self._std_results: dict[str, Tensor] = {}
        self._pending: dict[str, list[tuple[Tensor, Tensor]]] = {}

    # -- observer protocol ------------------------------------------------------------------------

    def __call__(self, block_type: str, layer: int, q: Tensor, k: Tensor) -> None:
        """Observe the q/k ``[B, heads, S*P, d]`` of one attention block.

        Runs without autograd and with autocast disabled, so the cue arithmetic stays in float32 even when
        the model runs under ``torch.autocast``.
        """
        with torch.no_grad(), no_autocast(q.device):
            self._observe(block_type, layer, q, k)

    def _observe(self, block_type: str, layer: int, q: Tensor, k: Tensor) -> None:
        if block_type == "frame":
            return
        if block_type != "global":
            raise ValueError(f"block_type must be 'frame' or 'global', got {block_type!r}")
        layer = int(layer)
        if layer not in self._needed:
            return
        if layer in self._seen:
            raise RuntimeError(f"global layer {layer} was observed twice; create a new CueAccumulator per forward")
        if q.shape != k.shape:
            raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
        if q.ndim != 4 or q.shape[0] != self.batch:
            raise ValueError(
                f"global q/k must have shape [B={self.batch}, heads, S*P, d], got {tuple(q.shape)}"
            )
        if self._num_heads is None:
            self._num_heads = int(q.shape[1])
            self._device = q.device
            self._dtype = compute_dtype(q.dtype)
            index, weight, _ = source_frames(self.num_frames, self.config.source_offsets, q.device)
            self._index = index
            self._weight = weight.to(self._dtype)
        elif q.shape[1] != self._num_heads or q.device != self._device:
            raise ValueError(
                f"layer {layer}: q/k have {q.shape[1]} heads on {q.device}, earlier layers had "
                f"{self._num_heads} heads on {self._device}"
            )
        qp = split_patch_tokens(q, self.num_frames, self.num_tokens, self.config.patch_start_idx)
        kp = split_patch_tokens(k, self.num_frames, self.num_tokens, self.config.patch_start_idx)
        self._seen.add(layer)
        by_name = {"q": qp, "k": kp}
        for spec in self._specs:
            if layer not in spec.layers:
                continue
            x, y = by_name[spec.x], by_name[spec.y]
            if spec.kind == "mean":
                contribution = self._mean_contribution(x, y)
                if spec.name in self._mean_sums:
                    self._mean_sums[spec.name] += contribution
                else:
                    self._mean_sums[spec.name] = contribution
            else:
                self._observe_std(spec, x, y)

    # -- state ------------------------------------------------------------------------------------

    def missing_layers(self) -> set[int]:
        """Needed global layers not observed yet."""
        return self._needed - self._seen

    def is_complete(self) -> bool:
        """True once every needed layer has been observed."""
        return not self.missing_layers()

    def retained_numel(self) -> int:
        """Number of tensor elements this accumulator currently holds (accumulators, pending layers, tables)."""
        total = sum(t.numel() for t in self._mean_sums.values())
        total += sum(t.numel() for t in self._std_results.values())
        total += sum(x.numel() + (y.numel() if y is not x else 0) for held in self._pending.values() for x, y in held)
        total += self._num_sources.numel()
        for t in (self._index, self._weight):
            if t is not None:
                total += t.numel()
        return total

    def finalize(self) -> dict[str, Tensor]:
        """The cue maps.

        Returns:
            ``m1, v1, m2, m3, v3, dyn`` float32 ``[S, h, w]`` (``[B, S, h, w]`` when ``batch > 1``) on the
            device of the observed q/k, and ``num_sources [S]`` long.

        Raises:
            RuntimeError: if a needed layer has not been observed.
        """
        missing = self.missing_layers()
        if missing:
            raise RuntimeError(
                f"cannot finalize VGGT4D cues: global layers {sorted(missing)} were not observed "
                f"(needed: {sorted(self._needed)})"
            )
        assert self._num_heads is not None and self._device is not None
        raw: dict[str, Tensor] = {}
        for spec in self._specs:
            if spec.kind == "mean":
                raw[spec.name] = self._mean_sums[spec.name] / float(len(spec.layers) * self._num_heads)
            else:
                raw[spec.name] = self._std_results[spec.name]
        with torch.no_grad(), no_autocast(self._device):
            return finalize_cue_maps(raw, self._num_sources.to(self._device), self.grid, self.config.eps)

    # -- per-layer reductions ---------------------------------------------------------------------

    def _chunks(self) -> range:
        return range(0, self.num_frames, self.chunk_size)

    def _source_average(self, y: Tensor, frames: slice) -> Tensor:
        """``sum_o weight[r, o] * y[:, :, index[r, o]]`` for the reference frames ``frames``.

        ``y`` is ``[B, H, S, ...]``; the result is ``[B, H, c, ...]`` in the compute dtype.
        """
        assert self._index is not None and self._weight is not None and self._dtype is not None
        index = self._index[frames]
        weight = self._weight[frames]
        extra = (1,) * (y.ndim - 3)
        out: Tensor | None = None
        for o in range(index.shape[1]):
            term = y[:, :, index[:, o]].to(self._dtype) * weight[:, o].reshape(1, 1, -1, *extra)
            out = term if out is None else out + term
        assert out is not None
        return out

    def _mean_contribution(self, x: Tensor, y: Tensor) -> Tensor:
        """``sum_h A_h[r]_i . Bbar_h[r]`` with ``Bbar`` the source-frame and source-token mean: ``[B, S, p]``."""
        assert self._dtype is not None
        y_mean = y.to(self._dtype).mean(dim=3)  # [B, H, S, d]
        parts = []
        for start in self._chunks():
            frames = slice(start, min(start + self.chunk_size, self.num_frames))
            bbar = self._source_average(y_mean, frames)  # [B, H, c, d]
            parts.append(torch.einsum("bhcpd,bhcd->bcp", x[:, :, frames].to(self._dtype), bbar))
        return torch.cat(parts, dim=1)

    def _observe_std(self, spec: CueSpec, x: Tensor, y: Tensor) -> None:
        held = self._pending.setdefault(spec.name, [])
        observed = {lay for lay in spec.layers if lay in self._seen}
        if len(observed) < len(spec.layers):
            # Keep a compact copy of this layer's patch tokens until the spec's last layer arrives.
            x_copy = x.clone(memory_format=torch.contiguous_format)
            y_copy = x_copy if y is x else y.clone(memory_format=torch.contiguous_format)
            held.append((x_copy, y_copy))
            return
        held.append((x, y))
        self._std_results[spec.name] = self._spatial_std(held)
        del self._pending[spec.name]

    def _spatial_std(self, layers: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Std over source tokens of the layer/head/source-averaged similarity: ``[B, S, p]``."""
        assert self._dtype is not None and self._num_heads is not None
        denom = float(len(layers) * self._num_heads)
        parts = []
        for start in self._chunks():
            frames = slice(start, min(start + self.chunk_size, self.num_frames))
            a = torch.cat([x[:, :, frames] for x, _ in layers], dim=1).to(self._dtype)  # [B, L*H, c, p, d]
            bbar = torch.cat([self._source_average(y, frames) for _, y in layers], dim=1)  # [B, L*H, c, p, d]
            sim = torch.einsum("bncid,bncjd->bcij", a, bbar) / denom  # [B, c, p, p]
            parts.append(_unbiased_std_last(sim))
        return torch.cat(parts, dim=1)


# ----------------------------------------------------------------------------------------------------
# Reference implementation from stored q/k
# ----------------------------------------------------------------------------------------------------


def cues_from_qk(
    q_by_layer: Mapping[int, Tensor],
    k_by_layer: Mapping[int, Tensor],
    num_frames: int,
    grid: tuple[int, int],
    config: CueConfig | None = None,
) -> dict[str, Tensor]:
    """VGGT4D cues from stored global-attention q/k of every needed layer.

    This follows the definition literally: for each reference frame and layer it builds the raw
    similarity matrices against every source frame ``[B, heads, n_src, p, p]`` and averages them.

    Args:
        q_by_layer: global layer index -> q ``[B, heads, S*P, d]`` (after qk-norm and RoPE).
        k_by_layer: global layer index -> k ``[B, heads, S*P, d]``.
        num_frames: number of frames ``S``.
        grid: patch grid ``(h, w)``; ``P = patch_start_idx + h*w``.
        config: the cue configuration (defaults to :class:`CueConfig()`).

    Returns:
        The same dictionary as :meth:`CueAccumulator.finalize` (``[S, h, w]`` maps for ``B == 1``,
        ``[B, S, h, w]`` otherwise, plus ``num_sources [S]``).
    """
    config = config if config is not None else CueConfig()
    grid = _check_grid(grid)
    needed = config.global_layers()
    missing = sorted(layer for layer in needed if layer not in q_by_layer or layer not in k_by_layer)
    if missing:
        raise ValueError(f"q/k for global layers {missing} are missing (needed: {sorted(needed)})")
    device = q_by_layer[min(needed)].device
    with torch.no_grad(), no_autocast(device):
        return _cues_from_qk(q_by_layer, k_by_layer, num_frames, grid, config)


def _cues_from_qk(
    q_by_layer: Mapping[int, Tensor],
    k_by_layer: Mapping[int, Tensor],
    num_frames: int,
    grid: tuple[int, int],
    config: CueConfig,
) -> dict[str, Tensor]:
    num_tokens = config.patch_start_idx + grid[0] * grid[1]
    needed = config.global_layers()
    first = q_by_layer[min(needed)]
    dtype = compute_dtype(first.dtype)
    device = first.device
    index, weight, num_sources = source_frames(num_frames, config.source_offsets, device)
    _log_sourceless(num_sources)
    patches = {
        (name, layer): split_patch_tokens(store[layer], num_frames, num_tokens, config.patch_start_idx).to(dtype)
        for name, store in (("q", q_by_layer), ("k", k_by_layer))
        for layer in needed
    }
    batch = first.shape[0]
    num_patches = grid[0] * grid[1]
    raw: dict[str, Tensor] = {}
    for spec in config.specs():
        maps = torch.zeros(batch, num_frames, num_patches, dtype=dtype, device=device)
        for r in range(num_frames):
            sources = index[r][weight[r] > 0]
            if sources.numel() == 0:
                continue
            total: Tensor | None = None
            for layer in spec.layers:
                a = patches[(spec.x, layer)][:, :, r]  # [B, H, p, d]
                b = patches[(spec.y, layer)][:, :, sources]  # [B, H, n, p, d]
                sim = torch.einsum("bhid,bhnjd->bhnij", a, b)  # [B, H, n, p, p]
                if spec.kind == "mean":
                    reduced = sim.mean(dim=(1, 2, 4))  # [B, p]
                else:
                    reduced = sim.mean(dim=(1, 2))  # [B, p, p]
                total = reduced if total is None else total + reduced
            assert total is not None
            total = total / len(spec.layers)
            maps[:, r] = total if spec.kind == "mean" else _unbiased_std_last(total)
        raw[spec.name] = maps
    return finalize_cue_maps(raw, num_sources, grid, config.eps)
