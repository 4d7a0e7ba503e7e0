"""``vggt4d run``: VGGT4D on a folder of images, a video or a bag, written to an output folder.

Output layout (``OUT``)::

    masks/<name>.png        dynamic mask at the input resolution (255 = dynamic)
    masks_model/<name>.png  dynamic mask at model resolution (the geometry VGGT4D's evaluation uses)
    overlay/<name>.png      input with dynamic pixels tinted red
    depth/<name>.npy        float32 depth at model resolution (VGGT's own scale)
    poses_tum.txt           camera-to-world poses, TUM format: t tx ty tz qx qy qz qw
    intrinsics.json         per-frame intrinsics at the input and the model resolution
    static_cloud.ply        confident static points with colours (binary PLY)
    summary.json            frame count, timings per stage, settings

Everything is written to a temporary folder next to ``OUT`` that is renamed at the end, so a failed run leaves
nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tqdm import tqdm

from vggt4d_ros.cli import CLIError
from vggt4d_ros.dynamic import VGGT4D, VGGT4DConfig, VGGT4DResult
from vggt4d_ros.dynamic.pipeline import PASS2_MASKS
from vggt4d_ros.dynamic.masks import overlay_mask
from vggt4d_ros.inputs import InputError, read_frames
from vggt4d_ros.model import load_model
from vggt4d_ros.model.checkpoint import resolve_device as _resolve_device
from vggt4d_ros.model.checkpoint import DEFAULT_WEIGHTS
from vggt4d_ros.model.geometry import invert_extrinsic
from vggt4d_ros.model.preprocess import intrinsics_to_original, mask_to_original, preprocess_images
from vggt4d_ros.windows.map import write_ply
from vggt4d_ros.windows.trajectory import save_tum

logger = logging.getLogger(__name__)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by every subcommand that loads a model."""
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS,
                        help="hub id or local .safetensors/.pt file or folder (default: %(default)s)")
    parser.add_argument("--config", default=None,
                        help="model config: preset name (vggt-1b) or a JSON file (default: vggt-1b)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="auto = bf16 autocast on CUDA, float32 on CPU")


def resolve_device(name: str) -> torch.device:
    """The ``--device`` option as a torch device; an unknown or unavailable device is a one-line CLI error."""
    try:
        return _resolve_device(name)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="folder of images, video file, or rosbag2 bag")
    parser.add_argument("--output", required=True, help="output folder (must not exist unless --overwrite)")
    add_model_arguments(parser)
    parser.add_argument("--topic", default=None, help="image topic when the bag has several")
    parser.add_argument("--no-refine", action="store_true", help="skip the projection refinement")
    parser.add_argument("--pass2-mask", default="coarse", choices=PASS2_MASKS,
                        help="mask hidden in the camera pass 2: coarse (official order) or refined "
                             "(default: %(default)s)")
    parser.add_argument("--max-frames", type=int, default=None, help="use at most this many frames")
    parser.add_argument("--stride", type=int, default=1, help="use every N-th frame (default: 1)")
    parser.add_argument("--mode", default="crop", choices=("crop", "pad"), help="preprocessing mode")
    parser.add_argument("--target-size", type=int, default=518, help="model input width in pixels")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    out_dir = Path(args.output)
    if out_dir.exists() and any(out_dir.iterdir()) and not args.overwrite:
        raise CLIError(f"output folder {out_dir} exists and is not empty (use --overwrite)")
    device = resolve_device(args.device)
    try:
        frames = read_frames(args.input, topic=args.topic, stride=args.stride, max_frames=args.max_frames)
    except InputError as exc:
        raise CLIError(str(exc)) from exc
    logger.info("read %d frames from %s", len(frames), args.input)

    model = load_model(args.weights, config=args.config, device=device)
    images, infos = preprocess_images([f.image for f in frames], mode=args.mode, target_size=args.target_size)
    pipe = VGGT4D(model, VGGT4DConfig(refine=not args.no_refine, pass2_mask=args.pass2_mask, dtype=args.dtype))
    t0 = time.perf_counter()
    res = pipe.run(images)
    logger.info("VGGT4D on %d frames took %.2f s (%s)", len(frames), time.perf_counter() - t0,
                ", ".join(f"{k} {v:.2f}s" for k, v in res.timings.items()))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        _write_outputs(tmp, frames, infos, res, args)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %s", out_dir)
    return 0


def _write_outputs(tmp: Path, frames: list, infos: list, res: VGGT4DResult, args: argparse.Namespace) -> None:
    for sub in ("masks", "masks_model", "overlay", "depth"):
        (tmp / sub).mkdir()
    masks = res.dynamic_mask.numpy()
    intr_records = []
    for i, (frame, info) in enumerate(tqdm(list(zip(frames, infos)), desc="writing", unit="frame",
                                           disable=None)):
        full = np.asarray(mask_to_original(masks[i], info), dtype=bool)
        Image.fromarray(full.astype(np.uint8) * 255).save(tmp / "masks" / f"{frame.name}.png")
        Image.fromarray(masks[i].astype(np.uint8) * 255).save(tmp / "masks_model" / f"{frame.name}.png")
        Image.fromarray(overlay_mask(frame.image, full)).save(tmp / "overlay" / f"{frame.name}.png")
        np.save(tmp / "depth" / f"{frame.name}.npy", res.depth[i].numpy().astype(np.float32))
        K = res.intrinsic[i].double().numpy()
        intr_records.append({
            "name": frame.name, "stamp_ns": frame.stamp_ns,
            "image_size": [int(frame.image.shape[1]), int(frame.image.shape[0])],
            "K": np.asarray(intrinsics_to_original(K, info)).tolist(),
            "model_size": [int(masks.shape[2]), int(masks.shape[1])], "K_model": K.tolist(),
        })
    c2w = invert_extrinsic(res.extrinsic.double()).numpy()
    c2w4 = np.tile(np.eye(4), (c2w.shape[0], 1, 1))
    c2w4[:, :3, :] = c2w[:, :3, :]
    save_tum(tmp / "poses_tum.txt", np.array([f.stamp_ns for f in frames], dtype=np.int64), c2w4)
    (tmp / "intrinsics.json").write_text(json.dumps({"frames": intr_records}, indent=1))
    write_ply(tmp / "static_cloud.ply", res.points.numpy(), res.colors.numpy())
    summary = {
        "input": str(args.input), "num_frames": len(frames), "weights": str(args.weights),
        "config": args.config or "vggt-1b", "refine": not args.no_refine, "pass2_mask": args.pass2_mask, "timings_s": res.timings,
        "dynamic_fraction": [float(m.mean()) for m in masks], "static_points": int(res.points.shape[0]),
    }
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
