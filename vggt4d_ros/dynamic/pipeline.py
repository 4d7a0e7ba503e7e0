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
of pass 2.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from vggt4d_ros.model.geometry import decode_pose_encoding, depth_to_world_points
from vggt4d_ros.model.vggt import DEFAULT_MASK_LAYERS

from .cues import CueAccumulator, CueConfig
from .masks import coarse_dynamic_mask
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
    * ``overlap_refinement``: in the reference order, run the pose-independent part of the refinement (outliers
      and per-frame k-means, :func:`~vggt4d_ros.dynamic.refine.cluster_dynamic_points`) in a worker thread (on
      CUDA on its own stream) while pass 2 runs; only the projection test and the morphology wait for the
      pass-2 cameras. The result is identical either way. ``None`` (default) = automatic: on CUDA, and on the
      CPU only when torch's intra-op threads leave a core free (``torch.get_num_threads() < os.cpu_count()``);
      otherwise the worker would only compete with pass 2 for the cores and add its working set to pass 2's
      peak memory.
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
    overlap_refinement: Optional[bool] = None
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
        if self.num_clusters < 1 or self.max_points_per_frame < 1:
            raise ValueError("num_clusters and max_points_per_frame must be >= 1")


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
        out1 = self.model.predict(images, attention_observer=acc, return_patch_tokens=True, heads=("camera", "depth"),
                                  amp_dtype=self._amp_dtype)
        self._sync()
        t1 = time.perf_counter()
        cues = acc.finalize()
        self._sync()
        t2 = time.perf_counter()
        timings["pass1"] = t1 - t0
        timings["cues"] = t2 - t1

        depth = out1["depth"][0, ..., 0].float()
        conf = out1["depth_conf"][0].float()
        ext1, intr = decode_pose_encoding(out1["pose_enc"][0].float(), (H, W))

        coarse, mask_info = coarse_dynamic_mask(cues["dyn"], out1["patch_tokens"].float(), (H, W),
                                                num_clusters=cfg.num_clusters, seed=cfg.cluster_seed,
                                                classes=cfg.otsu_classes)
        self._sync()
        t3 = time.perf_counter()
        timings["clustering"] = t3 - t2
        info["coarse"] = {k: v for k, v in mask_info.items() if not isinstance(v, Tensor)}

        def masked_pass(pass_mask: Tensor) -> Tensor:
            if not (cfg.masked_pass and bool(pass_mask.any())):
                return ext1
            out2 = self.model.predict(images, dynamic_mask=pass_mask, mask_layers=cfg.mask_layers,
                                      patch_tokens=out1["patch_tokens"], heads=("camera",),
                                      amp_dtype=self._amp_dtype)
            return decode_pose_encoding(out2["pose_enc"][0].float(), (H, W))[0]

        def refinement(cameras: Tensor, labels: Optional[Tensor] = None) -> Tensor:
            if not cfg.refine:
                return coarse
            refined, refine_info = refine_dynamic_mask(coarse, depth, cameras, intr, images, conf, cfg.refine_config,
                                                       labels=labels)
            info["refine"] = {k: v for k, v in refine_info.items() if not isinstance(v, Tensor)}
            return refined

        if cfg.pass2_mask == "coarse":
            labels = None
            if cfg.refine and self._overlap() and cfg.refine_config.enabled:
                with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vggt4d-refine") as pool:
                    job = pool.submit(self._cluster_in_background, coarse, depth, intr, conf)
                    ext = masked_pass(coarse)
                    self._sync()
                    t4 = time.perf_counter()
                    labels, cluster_info = job.result()
                info["refine_background"] = cluster_info
            else:
                ext = masked_pass(coarse)
                self._sync()
                t4 = time.perf_counter()
            mask = refinement(ext, labels)
            if labels is not None and "refine" in info:  # sub-stages that ran during pass 2
                info["refine"]["timings"].update(info["refine_background"]["timings"])
                info["refine"]["overlapped"] = ("outliers", "clustering")
            self._sync()
            t5 = time.perf_counter()
            timings["pass2"], timings["refinement"] = t4 - t3, t5 - t4
        else:
            mask = refinement(ext1)
            self._sync()
            t4 = time.perf_counter()
            ext = masked_pass(mask)
            self._sync()
            t5 = time.perf_counter()
            timings["refinement"], timings["pass2"] = t4 - t3, t5 - t4
        info["pass2_mask"] = cfg.pass2_mask

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
        """Whether the pose-independent refinement runs during pass 2 (see ``overlap_refinement``)."""
        if self.config.overlap_refinement is not None:
            return bool(self.config.overlap_refinement)
        if self.device.type == "cuda":
            return True
        return self.device.type == "cpu" and torch.get_num_threads() < (os.cpu_count() or 1)

    def _cluster_in_background(self, coarse: Tensor, depth: Tensor, intr: Tensor,
                               conf: Tensor) -> tuple[Tensor, dict]:
        """Worker-thread part of the refinement (outliers + k-means); on CUDA on a side stream."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            if self.device.type == "cuda":
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    labels, info = cluster_dynamic_points(coarse, depth, intr, conf, self.config.refine_config)
                side.synchronize()
            else:
                labels, info = cluster_dynamic_points(coarse, depth, intr, conf, self.config.refine_config)
        info = dict(info, seconds=time.perf_counter() - t0)
        return labels, info

    def _static_points(self, images: Tensor, depth: Tensor, conf: Tensor, ext: Tensor, intr: Tensor,
                       mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Confident static points ``[N, 3]`` with colours ``[N, 3]`` uint8 and their frame index ``[N]``."""
        cfg = self.config
        S = depth.shape[0]
        world = depth_to_world_points(depth[..., None], ext, intr)  # [S, H, W, 3]
        finite = torch.isfinite(world).all(-1) & torch.isfinite(conf) & (depth > 0)
        keep = finite & ~mask
        if cfg.static_conf_percentile > 0 and bool(keep.any()):
            thr = torch.quantile(conf[keep].float().flatten()[:1_000_000], cfg.static_conf_percentile / 100.0)
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
