"""One-call VGGT4D in the official stage order: pass 1 with streamed cues, coarse mask, masked pass 2,
projection refinement.

::

    pipe = VGGT4D(model, VGGT4DConfig())
    res = pipe.run(images)          # images [S, 3, H, W] in [0, 1] at model resolution
    res.dynamic_mask                # [S, H, W] bool

Order (``pass2_mask="coarse"``, the default and the reference's): pass 1 -> coarse mask -> pass 2 with the
**coarse** mask's tokens hidden -> refinement with pass-1 depth and intrinsics and the **pass-2** cameras -> the
refined mask is ``dynamic_mask``. With ``pass2_mask="refined"`` the refinement runs first (with the pass-1 cameras)
and pass 2 hides the refined mask's tokens. Pass 2 reuses the pass-1 patch-embed tokens and runs only the camera
head; as in the reference, the result combines depth, confidence and intrinsics from pass 1 with the extrinsics
of pass 2. In the reference order, what does not need the pass-2 cameras (pass 1 after its last cue layer, the
refinement's outliers and k-means) can run on a worker during pass 2 (``VGGT4DConfig.overlap_pass2``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from vggt4d_ros.model.geometry import decode_pose_encoding, depth_to_world_points
from vggt4d_ros.model.vggt import DEFAULT_MASK_LAYERS, StagedPass

from .cues import CueAccumulator, CueConfig
from .masks import coarse_dynamic_mask, feature_clusters
from .refine import RefineConfig, cluster_dynamic_points, refine_dynamic_mask

logger = logging.getLogger(__name__)

#: Values of :attr:`VGGT4DConfig.pass2_mask`.
PASS2_MASKS = ("coarse", "refined")


@dataclass(frozen=True)
class VGGT4DConfig:
    """Settings of the whole pipeline (defaults follow the VGGT4D paper).

    * ``num_clusters`` / ``cluster_seed`` / ``otsu_classes``: coarse-mask clustering and adaptive multi-Otsu.
    * ``refine``: the projection refinement stage (``refine_config`` holds its parameters).
    * ``masked_pass``: run pass 2 with the dynamic tokens' keys/values removed in ``mask_layers``.
    * ``pass2_mask``: ``"coarse"`` (reference order: pass 2 hides the coarse mask, refinement uses the pass-2
      cameras) or ``"refined"`` (refinement with the pass-1 cameras first, pass 2 hides the refined mask).
    * ``overlap_pass2``: in the reference order, run what does not need the pass-2 cameras in a worker thread (on
      CUDA on its own stream) while pass 2 runs: pass 1 stops after the last cue layer (the coarse mask, and so
      pass 2, need nothing later), and the worker runs pass 1's remaining layers and its camera and depth heads,
      then the pose-independent part of the refinement (outliers and per-frame k-means,
      :func:`~vggt4d_ros.dynamic.refine.cluster_dynamic_points`); only the projection test and the morphology
      wait for the pass-2 cameras. The result is identical either way. ``None`` (default) = automatic: on
      CUDA, and on the CPU only when torch's intra-op threads leave a core free
      (``torch.get_num_threads() < os.cpu_count()``); otherwise the worker would only compete with pass 2 for
      the cores and add its working set to pass 2's peak memory.
    * ``depth_chunk_frames``: frames per chunk of pass 1's depth head (a plain forward uses the head's
      ``frames_chunk_size``, 8 in the reference). When the head runs during pass 2 (``overlap_pass2``), small
      chunks keep the peak memory at a plain forward's; the same chunks are used without the overlap, so the
      result does not depend on it.
    * ``static_conf_percentile``: static points whose depth confidence is below this percentile of the window
      are left out of ``points``; ``max_points_per_frame`` caps them per frame (deterministic stride).
    * ``dtype``: ``"auto"`` or ``"bfloat16"`` (bf16 autocast of the aggregator on CUDA, float32 elsewhere) or
      ``"float32"`` (no autocast anywhere).
    """

    cue_config: CueConfig = field(default_factory=CueConfig)
    num_clusters: int = 64
    cluster_seed: int = 42
    otsu_classes: tuple = (2, 3, 4)
    refine: bool = True
    refine_config: RefineConfig = field(default_factory=RefineConfig)
    masked_pass: bool = True
    pass2_mask: str = "coarse"
    overlap_pass2: Optional[bool] = None
    depth_chunk_frames: int = 2
    mask_layers: tuple = DEFAULT_MASK_LAYERS
    static_conf_percentile: float = 50.0
    max_points_per_frame: int = 20000
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.pass2_mask not in PASS2_MASKS:
            raise ValueError(f"pass2_mask must be one of {PASS2_MASKS}, got {self.pass2_mask!r}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {self.dtype!r}")
        if not 0.0 <= self.static_conf_percentile < 100.0:
            raise ValueError(f"static_conf_percentile must be in [0, 100), got {self.static_conf_percentile}")
        if self.num_clusters < 1 or self.max_points_per_frame < 1 or self.depth_chunk_frames < 1:
            raise ValueError("num_clusters, max_points_per_frame and depth_chunk_frames must be >= 1")


@dataclass
class VGGT4DResult:
    """Outputs for one sequence of ``S`` frames at model resolution ``H x W`` (CPU tensors).

    ``extrinsic`` is world-to-camera (OpenCV: x right, y down, z forward) in the sequence's own frame and scale: the
    pass-2 cameras (``extrinsic_pass1`` when pass 2 did not run: disabled or an empty mask). ``dynamic_mask`` is
    the refined mask (the coarse one without refinement), ``coarse_mask`` the coarse one.
    ``points``/``colors`` are confident static world points ``[N, 3]`` float32 and ``[N, 3]`` uint8, with
    ``point_frames [N]`` naming the frame each point came from.
    """

    dynamic_mask: Tensor
    coarse_mask: Tensor
    cues: dict
    extrinsic: Tensor
    intrinsic: Tensor
    extrinsic_pass1: Tensor
    depth: Tensor
    depth_conf: Tensor
    points: Tensor
    colors: Tensor
    point_frames: Tensor
    timings: dict
    info: dict


@dataclass
class _Pass1Geometry:
    """What the refinement and the static points take from pass 1, for ``S`` frames of ``H x W``: depth
    ``[S, H, W]``, confidence ``[S, H, W]``, world-to-camera ``extrinsic [S, 3, 4]``, ``intrinsic [S, 3, 3]``."""

    depth: Tensor
    conf: Tensor
    extrinsic: Tensor
    intrinsic: Tensor

    @classmethod
    def of(cls, out: dict, image_size: tuple[int, int]) -> "_Pass1Geometry":
        ext, intr = decode_pose_encoding(out["pose_enc"][0].float(), image_size)
        return cls(depth=out["depth"][0, ..., 0].float(), conf=out["depth_conf"][0].float(), extrinsic=ext,
                   intrinsic=intr)


class VGGT4D:
    """Training-free dynamic-object segmentation and dynamic-robust poses on top of a VGGT model."""

    def __init__(self, model: torch.nn.Module, config: Optional[VGGT4DConfig] = None) -> None:
        self.model = model
        self.config = config or VGGT4DConfig()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def _amp_dtype(self) -> Optional[torch.dtype]:
        """bf16 autocast for the aggregator, which :meth:`VGGT.predict` applies on CUDA only."""
        return None if self.config.dtype == "float32" else torch.bfloat16

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def run(self, images: Tensor) -> VGGT4DResult:
        """Run the full pipeline on ``images [S, 3, H, W]`` (float, [0, 1], H and W multiples of the patch size)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [S, 3, H, W], got {tuple(images.shape)}")
        cfg = self.config
        S, _, H, W = images.shape
        patch = self.model.config.patch_size
        grid = (H // patch, W // patch)
        images = images.to(self.device, torch.float32)
        timings: dict[str, float] = {}
        info: dict = {"num_frames": S, "image_size": (H, W)}

        t0 = time.perf_counter()
        acc = CueAccumulator(S, grid, cfg.cue_config)
        # The point head is not needed: static points come from depth and the (pass-2) cameras.
        pass1 = self.model.start(images, attention_observer=acc, return_patch_tokens=True,
                                 heads=("camera", "depth"), amp_dtype=self._amp_dtype,
                                 frames_chunk_size=cfg.depth_chunk_frames)
        overlap = (cfg.pass2_mask == "coarse" and cfg.masked_pass and self._overlap())
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vggt4d-worker") if overlap else None
        try:
            return self._run(images, pass1, acc, pool, timings, info, t0)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

    def _run(self, images: Tensor, pass1: StagedPass, acc: CueAccumulator, pool: Optional[ThreadPoolExecutor],
             timings: dict, info: dict, t0: float) -> VGGT4DResult:
        """The stages after the patch embed; with a ``pool`` (overlap), the coarse k-means runs during pass 1
        and the rest of pass 1 and the pose-free refinement during pass 2."""
        cfg = self.config
        S, _, H, W = images.shape
        overlap = pool is not None
        clusters = None
        if overlap:  # the k-means needs only the patch features: it runs while pass 1 computes the cue layers
            clusters = pool.submit(self._feature_clusters, pass1.patch_tokens, self._side_stream())
            pass1.advance(max(acc.needed_layers("global"), default=-1) + 1)  # the rest of pass 1 runs in pass 2
        else:
            pass1.finish()
        self._sync()
        t1 = time.perf_counter()
        cues = acc.finalize()
        self._sync()
        t2 = time.perf_counter()
        timings["pass1"] = t1 - t0
        timings["cues"] = t2 - t1

        labels = clusters.result() if clusters is not None else None
        coarse, mask_info = coarse_dynamic_mask(cues["dyn"], pass1.patch_tokens.float(), (H, W),
                                                num_clusters=cfg.num_clusters, seed=cfg.cluster_seed,
                                                classes=cfg.otsu_classes, cluster_labels=labels)
        self._sync()
        t3 = time.perf_counter()
        timings["clustering"] = t3 - t2
        info["coarse"] = {k: v for k, v in mask_info.items() if not isinstance(v, Tensor)}
        info["coarse"]["kmeans_overlapped"] = labels is not None

        def masked_pass(pass_mask: Tensor) -> Optional[Tensor]:
            """Pass-2 extrinsics, or ``None`` when pass 2 does not run (disabled, or nothing to hide): the pass-2
            cameras are then the pass-1 ones."""
            if not (cfg.masked_pass and bool(pass_mask.any())):
                return None
            out2 = self.model.predict(images, dynamic_mask=pass_mask, mask_layers=cfg.mask_layers,
                                      patch_tokens=pass1.patch_tokens, heads=("camera",),
                                      amp_dtype=self._amp_dtype)
            return decode_pose_encoding(out2["pose_enc"][0].float(), (H, W))[0]

        def refinement(geo: _Pass1Geometry, cameras: Tensor, labels: Optional[Tensor] = None) -> Tensor:
            if not cfg.refine:
                return coarse
            refined, refine_info = refine_dynamic_mask(coarse, geo.depth, cameras, geo.intrinsic, images, geo.conf,
                                                       cfg.refine_config, labels=labels)
            info["refine"] = {k: v for k, v in refine_info.items() if not isinstance(v, Tensor)}
            return refined

        if overlap:
            job = pool.submit(self._background, pass1, coarse, H, W, self._side_stream())
            ext = masked_pass(coarse)
            geo, labels, background = job.result()
            ext = geo.extrinsic if ext is None else ext
            self._sync()
            t4 = time.perf_counter()
            info["background"] = background
            mask = refinement(geo, ext, labels)
            if labels is not None and "refine" in info:  # sub-stages that ran during pass 2
                info["refine"]["timings"].update(background["refine_timings"])
                info["refine"]["overlapped"] = ("outliers", "clustering")
            self._sync()
            t5 = time.perf_counter()
            timings["pass2"], timings["refinement"] = t4 - t3, t5 - t4
        else:
            geo = _Pass1Geometry.of(pass1.finish(), (H, W))
            if cfg.pass2_mask == "coarse":
                ext = masked_pass(coarse)
                ext = geo.extrinsic if ext is None else ext
                self._sync()
                t4 = time.perf_counter()
                mask = refinement(geo, ext)
                self._sync()
                t5 = time.perf_counter()
                timings["pass2"], timings["refinement"] = t4 - t3, t5 - t4
            else:
                mask = refinement(geo, geo.extrinsic)
                self._sync()
                t4 = time.perf_counter()
                ext = masked_pass(mask)
                ext = geo.extrinsic if ext is None else ext
                self._sync()
                t5 = time.perf_counter()
                timings["refinement"], timings["pass2"] = t4 - t3, t5 - t4
        info["pass2_mask"] = cfg.pass2_mask
        depth, conf, intr, ext1 = geo.depth, geo.conf, geo.intrinsic, geo.extrinsic

        points, colors, frames = self._static_points(images, depth, conf, ext, intr, mask)
        timings["points"] = time.perf_counter() - t5
        timings["total"] = time.perf_counter() - t0

        cpu = lambda t: t.detach().to("cpu")  # noqa: E731 - tiny local helper
        return VGGT4DResult(
            dynamic_mask=cpu(mask), coarse_mask=cpu(coarse), cues={k: cpu(v) for k, v in cues.items()},
            extrinsic=cpu(ext), intrinsic=cpu(intr), extrinsic_pass1=cpu(ext1), depth=cpu(depth),
            depth_conf=cpu(conf), points=cpu(points), colors=cpu(colors), point_frames=cpu(frames),
            timings=timings, info=info)

    def _overlap(self) -> bool:
        """Whether the work that does not need the pass-2 cameras runs during pass 2 (see ``overlap_pass2``)."""
        if self.config.overlap_pass2 is not None:
            return bool(self.config.overlap_pass2)
        if self.device.type == "cuda":
            return True
        return self.device.type == "cpu" and torch.get_num_threads() < (os.cpu_count() or 1)

    def _feature_clusters(self, patch_tokens: Tensor, side: Optional["torch.cuda.Stream"]) -> Tensor:
        """Worker-thread k-means of the coarse mask (on CUDA on a side stream)."""
        cfg = self.config
        if side is not None:
            patch_tokens.record_stream(side)
        with torch.inference_mode(), (torch.cuda.stream(side) if side is not None else contextlib.nullcontext()):
            labels = feature_clusters(patch_tokens.float(), cfg.num_clusters, cfg.cluster_seed)
        if side is not None:
            side.synchronize()
        return labels

    def _side_stream(self) -> Optional["torch.cuda.Stream"]:
        """On CUDA, a stream for the worker that starts after the work queued so far on the current stream."""
        if self.device.type != "cuda":
            return None
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        return side

    def _background(self, pass1: StagedPass, coarse: Tensor, H: int, W: int, side: Optional["torch.cuda.Stream"]
                    ) -> tuple["_Pass1Geometry", Optional[Tensor], dict]:
        """Worker-thread part of the reference order, run while pass 2 runs (on CUDA on a side stream): the rest
        of pass 1 (the layers after the cue layers and the camera and depth heads), then the pose-independent
        refinement (outliers and k-means). Returns ``(pass-1 geometry, refinement labels or None, info)``."""
        cfg = self.config
        t0 = time.perf_counter()
        if side is not None:
            pass1.record_stream(side)  # its tensors from the main stream are now read (and freed) on this one
        with torch.inference_mode(), (torch.cuda.stream(side) if side is not None else contextlib.nullcontext()):
            geo = _Pass1Geometry.of(pass1.finish(), (H, W))
            t1 = time.perf_counter()
            labels, refine_timings = None, {}
            if cfg.refine and cfg.refine_config.enabled:
                refine_config = cfg.refine_config
                if self.device.type == "cpu" and refine_config.search_workers == -1:
                    # the neighbour search gets the cores pass 2 leaves free, not pass 2's own
                    spare = max(1, (os.cpu_count() or 1) - torch.get_num_threads())
                    refine_config = dataclasses.replace(refine_config, search_workers=spare)
                labels, cluster_info = cluster_dynamic_points(coarse, geo.depth, geo.intrinsic, geo.conf,
                                                              refine_config)
                refine_timings = dict(cluster_info.get("timings") or {})
        if side is not None:
            side.synchronize()
        t2 = time.perf_counter()
        return geo, labels, {"pass1_tail_seconds": t1 - t0, "refine_seconds": t2 - t1, "seconds": t2 - t0,
                             "refine_timings": refine_timings}

    def _static_points(self, images: Tensor, depth: Tensor, conf: Tensor, ext: Tensor, intr: Tensor,
                       mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Confident static points ``[N, 3]`` with colours ``[N, 3]`` uint8 and their frame index ``[N]``."""
        cfg = self.config
        S = depth.shape[0]
        world = depth_to_world_points(depth[..., None], ext, intr)  # [S, H, W, 3]
        finite = torch.isfinite(world).all(-1) & torch.isfinite(conf) & (depth > 0)
        keep = finite & ~mask
        if cfg.static_conf_percentile > 0 and bool(keep.any()):
            thr = select_quantile(conf[keep].float().flatten()[:1_000_000], cfg.static_conf_percentile / 100.0)
            keep &= conf >= thr
        flat_keep = keep.reshape(S, -1)
        counts = flat_keep.sum(1)
        # Deterministic per-frame thinning: keep every k-th candidate where a frame has too many.
        step = torch.clamp(torch.ceil(counts.float() / cfg.max_points_per_frame), min=1).long()
        rank = torch.cumsum(flat_keep.long(), dim=1) - 1
        flat_keep &= (rank % step[:, None]) == 0
        idx = flat_keep.nonzero(as_tuple=False)  # [N, 2] (frame, pixel)
        pts = world.reshape(S, -1, 3)[idx[:, 0], idx[:, 1]].float()
        rgb = images.permute(0, 2, 3, 1).reshape(S, -1, 3)[idx[:, 0], idx[:, 1]]
        colors = (rgb.clamp(0, 1) * 255.0).round().to(torch.uint8)
        return pts, colors, idx[:, 0]


def select_quantile(values: Tensor, q: float) -> Tensor:
    """``torch.quantile(values, q)`` (linear interpolation) of a 1-D tensor by two k-th value selections instead
    of a full sort, with the same arithmetic (rank ``q * (n - 1)`` in the values' dtype, ``torch.lerp`` of the
    neighbouring order statistics), so the same value."""
    if values.ndim != 1 or values.numel() == 0:
        raise ValueError(f"values must be a non-empty 1-D tensor, got shape {tuple(values.shape)}")
    rank = torch.tensor(q, dtype=values.dtype) * (values.numel() - 1)
    lo, hi = int(rank), int(torch.ceil(rank))
    below = torch.kthvalue(values, lo + 1).values
    above = below if hi == lo else torch.kthvalue(values, hi + 1).values
    return torch.lerp(below, above, (rank - lo).to(values.device))


@torch.inference_mode()
def attention_cues(model: torch.nn.Module, images: Tensor, config: Optional[CueConfig] = None) -> dict:
    """Dynamic cues of one plain forward pass: ``{m1, v1, m2, m3, v3, dyn}``, each ``[S, h, w]``.

    ``images`` is ``[S, 3, H, W]`` in [0, 1]. The cues are accumulated while the aggregator runs in float32; no
    head runs.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [S, 3, H, W], got {tuple(images.shape)}")
    S, _, H, W = images.shape
    patch = model.config.patch_size
    acc = CueAccumulator(S, (H // patch, W // patch), config or CueConfig())
    model.predict(images.float(), attention_observer=acc, heads=(), amp_dtype=None)
    return acc.finalize()
