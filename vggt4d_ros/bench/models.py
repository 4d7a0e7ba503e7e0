"""Benchmark models and inputs: the quick reduced-width copy of the 1B graph, the 1B itself, random weights,
deterministic images, and device / memory helpers shared by the runner and the subprocess probes."""

from __future__ import annotations

import logging
import os
import platform
import resource
from dataclasses import asdict
from typing import Any, Optional

import numpy as np
import torch

from vggt4d_ros.model.config import (AggregatorConfig, CameraHeadConfig, DPTHeadConfig, PatchEmbedConfig,
                                     VGGTConfig, resolve_config)
from vggt4d_ros.model.vggt import VGGT

from .stats import proc_kib

logger = logging.getLogger(__name__)

QUICK_EMBED_DIM = 64
QUICK_HEAD_DIM = 64
BASE_SEQUENCE_FRAMES = 24
"""Frames rendered once per input size; longer inputs repeat them cyclically (cost does not depend on content)."""


def quick_config(embed_dim: int = QUICK_EMBED_DIM, head_dim: int = QUICK_HEAD_DIM) -> VGGTConfig:
    """The 1B's graph with reduced widths.

    Kept from ``vggt-1b``: 24-block DINOv2 patch embed with 4 registers, 24 frame + 24 global blocks with qk-norm
    and 2-D RoPE, the camera head (4 trunk blocks, 4 iterations) and the DPT depth head tapping layers
    4/11/17/23, patch size 14, per-head width 64. Reduced: ``embed_dim`` (1024 -> 64, so 1 head instead of 16)
    and the DPT widths (features 256 -> 32, ``out_channels`` /8, final 32 -> 8 channels). The point head is
    not built.
    """
    if embed_dim < head_dim or embed_dim % head_dim or head_dim % 4:
        raise ValueError(f"embed_dim ({embed_dim}) must be a positive multiple of head_dim ({head_dim}), "
                         f"and head_dim a multiple of 4 (2-D RoPE)")
    heads = embed_dim // head_dim
    cam_heads = max(1, (2 * embed_dim) // head_dim)
    return VGGTConfig(
        name=f"quick-{embed_dim}",
        embed_dim=embed_dim,
        patch_embed=PatchEmbedConfig(embed_dim=embed_dim, num_heads=heads),
        aggregator=AggregatorConfig(embed_dim=embed_dim, num_heads=heads),
        camera_head=CameraHeadConfig(dim_in=2 * embed_dim, num_heads=cam_heads),
        depth_head=DPTHeadConfig(dim_in=2 * embed_dim, features=32, out_channels=(32, 64, 128, 128),
                                 head_features_2=8),
        point_head=None,
    )


def bench_config(quick: bool, embed_dim: int = QUICK_EMBED_DIM) -> VGGTConfig:
    """``quick_config(embed_dim)`` in quick mode, else the full ``vggt-1b`` preset (all three heads)."""
    return quick_config(embed_dim) if quick else resolve_config("vggt-1b")


def config_summary(cfg: VGGTConfig) -> dict[str, Any]:
    """A JSON-friendly description of the benchmarked architecture."""
    return {
        "name": cfg.name,
        "embed_dim": cfg.embed_dim,
        "patch_embed": {"type": cfg.patch_embed.type, "depth": cfg.patch_embed.depth,
                        "num_heads": cfg.patch_embed.num_heads},
        "aggregator": {"depth": cfg.aggregator.depth, "num_heads": cfg.aggregator.num_heads,
                       "frame_blocks": cfg.aggregator.depth, "global_blocks": cfg.aggregator.depth},
        "heads": [name for name, head in (("camera", cfg.camera_head), ("depth", cfg.depth_head),
                                           ("point", cfg.point_head)) if head is not None],
        "depth_head": asdict(cfg.depth_head) if cfg.depth_head is not None else None,
    }


FOV_RAW_PER_ITERATION = 0.25
"""Raw field-of-view delta per camera-head iteration of the benchmark model (4 iterations: about 1 rad)."""


def build_model(cfg: VGGTConfig, device: torch.device, seed: int) -> VGGT:
    """A randomly initialised (seeded) VGGT in eval mode, created directly on ``device``.

    Weights stay float32 (bf16 is applied by autocast on CUDA, as for the real checkpoint); constructing on the
    target device avoids a multi-GB CPU copy of the 1B. One deviation from plain random weights: the camera
    head's two field-of-view outputs get zero weights and a fixed bias (see :func:`_plausible_fov`), because
    random weights often give ``relu(fov) = 0``, i.e. an infinite focal length that no checkpoint produces and
    that would make the refinement stage meaningless. The amount of computation is unchanged.
    """
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    with torch.device(device):
        model = VGGT(cfg)
    model.to(device)  # buffers created with an explicit CPU device (image normalisation constants) follow
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    _plausible_fov(model)
    return model


def _plausible_fov(model: VGGT) -> None:
    """Make the camera head predict a field of view of about 1 rad for every frame (last two encoding entries)."""
    head = model.camera_head
    if head is None:
        return
    fc2 = head.pose_branch.fc2
    with torch.no_grad():
        fc2.weight[7:].zero_()
        if fc2.bias is not None:
            fc2.bias[7:].fill_(FOV_RAW_PER_ITERATION)


def count_parameters_of(cfg: VGGTConfig) -> int:
    """Parameter count of the model ``cfg`` describes (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        model = VGGT(cfg)
    return int(sum(p.numel() for p in model.parameters()))


def bench_images(num_frames: int, height: int, width: int, seed: int, device: torch.device) -> torch.Tensor:
    """``[S, 3, H, W]`` float32 in [0, 1]: the synthetic moving-box scene (first 24 frames, repeated cyclically
    for longer inputs), so the masks and refinement see a plausible dynamic region."""
    from vggt4d_ros.synthetic import render_scene

    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    base = min(num_frames, BASE_SEQUENCE_FRAMES)
    seq = render_scene(num_frames=base, width=width, height=height, seed=seed)
    frames = np.asarray(seq.images)[np.arange(num_frames) % base]  # [S, H, W, 3] uint8
    images = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    return images.to(device)


def check_image_size(height: int, width: int, patch: int = 14) -> None:
    if height < patch or width < patch or height % patch or width % patch:
        raise ValueError(f"image size {height}x{width} must be positive multiples of the patch size {patch}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm", "r", encoding="ascii") as fh:
        resident_pages = int(fh.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
    """Peak resident set size of this process's address space so far.

    Read from ``VmHWM`` in ``/proc/self/status``. Not ``ru_maxrss``: Linux carries ``ru_maxrss`` over
    ``fork`` + ``exec``, so a probe started by a large parent would report the parent's peak. ``ru_maxrss`` is
    the fallback where ``/proc`` is missing.
    """
    peak = proc_kib("/proc/self/status", "VmHWM")
    return peak if peak is not None else int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (``5`` into ``/proc/self/clear_refs``); False when the
    kernel does not allow it (then the peak may include earlier transients, e.g. of the imports)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def cpu_model_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", "r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_info(device: torch.device, threads: int) -> dict[str, Any]:
    """Device name and software versions for the results file."""
    info: dict[str, Any] = {
        "type": device.type,
        "cpu": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({"name": props.name, "cuda": torch.version.cuda,
                     "gpu_memory_bytes": int(props.total_memory)})
    else:
        info["name"] = info["cpu"]
    return info


def default_threads(device: torch.device, quick: bool, requested: Optional[int]) -> int:
    """Torch intra-op threads for the run: the request, else 1 for quick CPU runs (stable ratios on shared or
    small machines), else torch's default."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        return requested
    if device.type == "cpu" and quick:
        return 1
    return torch.get_num_threads()
