"""DAVIS-protocol evaluation of binary (dynamic-object) masks: region similarity J and boundary measure F.

Everything here is implemented from the benchmark's definitions (Perazzi et al., "A Benchmark Dataset and
Evaluation Methodology for Video Object Segmentation", CVPR 2016):

* **Region similarity J** is the intersection over union of the predicted and the ground-truth foreground.
  A frame whose ground truth *and* prediction are both empty scores ``J = 1`` (nothing to find, nothing found);
  an empty ground truth with a non-empty prediction scores 0.
* **Boundary measure F**: the boundary of a mask is the set of pixels that differ from at least one of their
  right, bottom and bottom-right neighbours (neighbours outside the image are not compared), the ``seg2bmap``
  definition of the DAVIS toolkit. A predicted boundary pixel is correct when a ground-truth boundary pixel
  lies within ``bound_pix = ceil(bound_th * diagonal)`` pixels (Euclidean; ``bound_th = 0.008`` of the image
  diagonal), tested by binary dilation with a disk of that radius; recall is the same with the roles swapped,
  and ``F = 2 P R / (P + R)`` (0 when ``P + R = 0``). Empty boundaries: both empty gives ``P = R = 1``; only the
  prediction empty gives ``P = 1, R = 0``; only the ground truth empty gives ``P = 0, R = 1``.
* **Per-sequence statistics** of the per-frame scores: *mean*; *recall*, the fraction of frames scoring
  strictly more than 0.5; *decay*, the mean of the first temporal quarter minus the mean of the last, with the
  frames split into 4 bins by ``np.array_split`` (the first bins take the extra frames). The DAVIS toolkit
  builds its bins from rounded ``linspace`` edges that both neighbouring bins include, so its decay can differ
  from this one by a little. A sequence with fewer than 4 frames uses as many bins as frames (one frame:
  decay 0).
* **Several sequences**: each statistic is averaged over the sequences, and ``J&F`` is the mean of J mean and
  F mean.

Masks on disk
    Any image Pillow reads; a pixel is foreground when its value is non-zero (palette PNGs: the palette index;
    RGB: any channel). DAVIS multi-object annotations therefore become the union of all objects, which is the
    task of a class-agnostic dynamic-object mask. Predictions should be lossless (PNG): JPEG noise would count
    as foreground. Frames are matched by file stem (``00012.png`` with ``00012.png``); ground-truth frames
    drive the evaluation and predictions without a ground truth are ignored.

Geometry (documented choice)
    VGGT works on images resized to ``target_size`` (518) pixels wide, the height rounded to a multiple of 14
    and centre-cropped to ``target_size`` when taller (the ``"crop"`` preprocessing,
    :func:`vggt4d_ros.model.preprocess.plan_geometry`). A prediction may come at that model geometry or at the
    ground truth's own resolution; which one is detected from its shape, per frame:

    * same shape as the ground truth: compared at the original resolution as is;
    * the model geometry of the ground truth's size: the ground truth is resized to ``target_size`` wide with
      nearest-neighbour sampling (Pillow ``NEAREST``), its height to the rounded multiple of 14, then rows are
      centre-cropped exactly like the images, and both are compared at the model geometry (the VGGT4D
      evaluation's choice: the ground truth follows the network input);
    * anything else is an error that names both accepted shapes.

    ``vggt4d run`` writes its masks at the input resolution, so its output is evaluated at the original
    resolution.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image
from scipy import ndimage

from vggt4d_ros.evaluation.errors import EvaluationError
from vggt4d_ros.model.preprocess import DEFAULT_TARGET_SIZE, plan_geometry

logger = logging.getLogger(__name__)

BOUND_TH = 0.008
"""Boundary tolerance as a fraction of the image diagonal (DAVIS default)."""

RECALL_THRESHOLD = 0.5
"""A frame counts towards the recall statistic when its score is strictly above this."""

DECAY_BINS = 4
"""Number of temporal bins for the decay statistic."""

MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".webp", ".jpg", ".jpeg")

GEOMETRY_ORIGINAL = "original"
GEOMETRY_MODEL = "model"

_MAX_LISTED = 10


# --------------------------------------------------------------------------------------------------------------
# Per-frame measures
# --------------------------------------------------------------------------------------------------------------


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.ndim != 2 or gt.ndim != 2:
        raise ValueError(f"masks must be 2-D [H, W], got pred {pred.shape} and gt {gt.shape}")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape [H, W], got {pred.shape} and {gt.shape}")
    return pred.astype(bool), gt.astype(bool)


def region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
    """Region similarity J (intersection over union) of two masks ``[H, W]``.

    Both empty scores 1.0 (see the module docstring).
    """
    pred, gt = _check_pair(pred, gt)
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(pred & gt) / union)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels ``[H, W]`` bool of a mask ``[H, W]``.

    A pixel is a boundary pixel when it differs from its right, bottom or bottom-right neighbour; neighbours
    outside the image are not compared (so the last row only looks right, the last column only down, and the
    bottom-right pixel is never a boundary).
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {m.shape}")
    m = m.astype(bool)
    out = np.zeros_like(m)
    out[:, :-1] |= m[:, :-1] != m[:, 1:]
    out[:-1, :] |= m[:-1, :] != m[1:, :]
    out[:-1, :-1] |= m[:-1, :-1] != m[1:, 1:]
    return out


def disk(radius: int) -> np.ndarray:
    """Disk structuring element ``[2r+1, 2r+1]`` bool: offsets ``(dy, dx)`` with ``dy^2 + dx^2 <= r^2``."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    r = int(radius)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    return dy * dy + dx * dx <= r * r


def boundary_tolerance(shape: tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """Tolerance in pixels: ``bound_th`` itself when ``>= 1`` (pixels), else ``ceil(bound_th * diagonal)``."""
    if bound_th <= 0:
        raise ValueError(f"bound_th must be > 0, got {bound_th}")
    if bound_th >= 1:
        return int(math.ceil(bound_th))
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def boundary_scores(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> tuple[float, float, float]:
    """Boundary ``(F, precision, recall)`` of two masks ``[H, W]`` (definitions in the module docstring)."""
    pred, gt = _check_pair(pred, gt)
    pred_b = boundary_map(pred)
    gt_b = boundary_map(gt)
    n_pred = int(np.count_nonzero(pred_b))
    n_gt = int(np.count_nonzero(gt_b))
    if n_pred == 0 and n_gt == 0:
        return 1.0, 1.0, 1.0
    if n_pred == 0:
        return 0.0, 1.0, 0.0
    if n_gt == 0:
        return 0.0, 0.0, 1.0
    selem = disk(boundary_tolerance(pred.shape, bound_th))
    gt_near = ndimage.binary_dilation(gt_b, structure=selem)
    pred_near = ndimage.binary_dilation(pred_b, structure=selem)
    precision = np.count_nonzero(pred_b & gt_near) / n_pred
    recall = np.count_nonzero(gt_b & pred_near) / n_gt
    if precision + recall == 0:
        return 0.0, float(precision), float(recall)
    return float(2 * precision * recall / (precision + recall)), float(precision), float(recall)


def boundary_f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Boundary measure F of two masks ``[H, W]``."""
    return boundary_scores(pred, gt, bound_th)[0]


# --------------------------------------------------------------------------------------------------------------
# Sequence statistics
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceStatistics:
    """DAVIS statistics of one sequence's per-frame scores: mean, recall (share > 0.5) and decay."""

    mean: float
    recall: float
    decay: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "recall": self.recall, "decay": self.decay}


def sequence_statistics(values: Sequence[float] | np.ndarray) -> SequenceStatistics:
    """Mean, recall and decay of per-frame scores ``[N]`` in temporal order (``N >= 1``)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("need at least one per-frame score, got none")
    if not np.all(np.isfinite(x)):
        raise ValueError("per-frame scores must be finite")
    bins = np.array_split(x, min(DECAY_BINS, x.size))
    return SequenceStatistics(
        mean=float(x.mean()),
        recall=float(np.mean(x > RECALL_THRESHOLD)),
        decay=float(bins[0].mean() - bins[-1].mean()),
    )


# --------------------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------------------


def model_geometry(shape: tuple[int, int], target_size: int = DEFAULT_TARGET_SIZE) -> tuple[int, int]:
    """``(H, W)`` the model preprocessing (``"crop"`` mode) gives an image of ``shape`` ``(h, w)``."""
    return plan_geometry(int(shape[0]), int(shape[1]), mode="crop", target_size=target_size).model_size


def gt_to_model_geometry(gt: np.ndarray, target_size: int = DEFAULT_TARGET_SIZE) -> np.ndarray:
    """Ground truth ``[h, w]`` resized to the model geometry ``[H, W]`` bool (nearest, then centre crop).

    The width becomes ``target_size``, the height ``round(h * target_size / w / 14) * 14``; a height above
    ``target_size`` is centre-cropped to ``target_size`` starting at row ``(new_h - target_size) // 2``.
    """
    g = np.asarray(gt)
    if g.ndim != 2:
        raise ValueError(f"gt must be 2-D [H, W], got shape {g.shape}")
    info = plan_geometry(g.shape[0], g.shape[1], mode="crop", target_size=target_size)
    new_h, new_w = info.resized_size
    resized = Image.fromarray(g.astype(bool).astype(np.uint8) * 255).resize((new_w, new_h), Image.NEAREST)
    rows = info.model_size[0]
    return np.asarray(resized)[info.crop_top : info.crop_top + rows] > 0


def align_geometry(
    pred: np.ndarray, gt: np.ndarray, target_size: int = DEFAULT_TARGET_SIZE, name: str = "frame"
) -> tuple[np.ndarray, np.ndarray, str]:
    """Bring a prediction and its ground truth to one geometry; returns ``(pred, gt, geometry)``.

    ``geometry`` is ``"original"`` (prediction at the ground truth's shape) or ``"model"`` (prediction at the
    model geometry; the ground truth is resized by :func:`gt_to_model_geometry`).

    Raises:
        EvaluationError: the prediction has neither shape.
    """
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    if pred.shape == gt.shape:
        return pred, gt, GEOMETRY_ORIGINAL
    model_shape = model_geometry(gt.shape, target_size)
    if pred.shape == tuple(model_shape):
        return pred, gt_to_model_geometry(gt, target_size), GEOMETRY_MODEL
    raise EvaluationError(
        f"prediction for {name} has shape {pred.shape[0]}x{pred.shape[1]} (HxW); expected the ground truth's "
        f"{gt.shape[0]}x{gt.shape[1]} or the model geometry {model_shape[0]}x{model_shape[1]} "
        f"(target size {target_size})"
    )


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask image as ``[H, W]`` bool: non-zero pixels (palette index, grey value, any RGB channel)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
                arr = np.asarray(img.convert("RGB")).any(axis=2)
            elif img.mode == "LA":
                arr = np.asarray(img)[..., 0] != 0
            else:
                arr = np.asarray(img) != 0
    except OSError as exc:
        raise EvaluationError(f"cannot read mask {path}: {exc}") from exc
    if arr.ndim != 2:
        raise EvaluationError(f"mask {path} decodes to shape {arr.shape}, expected a single-channel image")
    return arr


def mask_files(directory: str | Path) -> dict[str, Path]:
    """Mask images in ``directory`` keyed by file stem (sorted).

    Raises:
        EvaluationError: not a folder, or two files share a stem.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise EvaluationError(f"mask folder {directory} does not exist or is not a folder")
    found: dict[str, Path] = {}
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.suffix.lower() in MASK_SUFFIXES:
            if p.stem in found:
                raise EvaluationError(f"two masks with stem {p.stem!r} in {directory}: {found[p.stem].name}, {p.name}")
            found[p.stem] = p
    return found


def _short_list(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


# --------------------------------------------------------------------------------------------------------------
# Sequences
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SequenceResult:
    """Per-frame and per-sequence scores of one sequence.

    Attributes:
        name: sequence name.
        frames: frame names (stems) in temporal order ``[N]``.
        J: per-frame region similarity ``[N]``.
        F: per-frame boundary measure ``[N]``.
        geometry: per-frame ``"original"`` or ``"model"`` ``[N]``.
        missing: frames without a prediction that were scored as empty predictions.
    """

    name: str
    frames: list[str]
    J: np.ndarray
    F: np.ndarray
    geometry: list[str]
    missing: list[str] = field(default_factory=list)

    @property
    def j_stats(self) -> SequenceStatistics:
        return sequence_statistics(self.J)

    @property
    def f_stats(self) -> SequenceStatistics:
        return sequence_statistics(self.F)

    @property
    def jf_mean(self) -> float:
        return 0.5 * (self.j_stats.mean + self.f_stats.mean)

    def to_dict(self, per_frame: bool = True) -> dict:
        kinds = sorted(set(self.geometry))
        out = {
            "num_frames": len(self.frames),
            "geometry": kinds[0] if len(kinds) == 1 else "mixed",
            "J": self.j_stats.to_dict(),
            "F": self.f_stats.to_dict(),
            "J&F": self.jf_mean,
            "missing": list(self.missing),
        }
        if per_frame:
            out["per_frame"] = {"frames": list(self.frames), "J": self.J.tolist(), "F": self.F.tolist()}
        return out


def evaluate_frames(
    preds: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    frames: Optional[Sequence[str]] = None,
    name: str = "sequence",
    target_size: int = DEFAULT_TARGET_SIZE,
    bound_th: float = BOUND_TH,
) -> SequenceResult:
    """Score a sequence given as arrays: ``preds[i]`` and ``gts[i]`` are ``[H, W]`` masks of frame ``i``.

    Each prediction is matched to its ground truth's geometry by :func:`align_geometry`.
    """
    if len(preds) != len(gts):
        raise ValueError(f"need one prediction per ground-truth frame, got {len(preds)} and {len(gts)}")
    if len(gts) == 0:
        raise EvaluationError(f"sequence {name} has no frames to evaluate")
    names = list(frames) if frames is not None else [f"{i:05d}" for i in range(len(gts))]
    if len(names) != len(gts):
        raise ValueError(f"need one frame name per frame, got {len(names)} names for {len(gts)} frames")
    j = np.empty(len(gts), dtype=np.float64)
    f = np.empty(len(gts), dtype=np.float64)
    geometry = []
    for i, (pred, gt, frame) in enumerate(zip(preds, gts, names)):
        p, g, geo = align_geometry(pred, gt, target_size, name=f"{name}/{frame}")
        j[i] = region_similarity(p, g)
        f[i] = boundary_f_measure(p, g, bound_th)
        geometry.append(geo)
    return SequenceResult(name=name, frames=names, J=j, F=f, geometry=geometry)


def evaluate_mask_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    frames: Optional[Sequence[str]] = None,
    allow_missing: bool = False,
    name: Optional[str] = None,
    target_size: int = DEFAULT_TARGET_SIZE,
    bound_th: float = BOUND_TH,
) -> SequenceResult:
    """Score one sequence stored as two folders of mask images matched by file stem.

    Args:
        pred_dir: predicted masks (e.g. the ``masks/`` folder of ``vggt4d run``).
        gt_dir: ground-truth masks (e.g. ``Annotations/480p/<sequence>``).
        frames: evaluate only these ground-truth stems (in this order); default all, sorted by name.
        allow_missing: score ground-truth frames without a prediction as empty predictions instead of failing.
        name: sequence name for the report (default: the ground-truth folder's name).

    Raises:
        EvaluationError: missing folders or frames, unreadable masks, mismatched shapes.
    """
    gt_files = mask_files(gt_dir)
    pred_files = mask_files(pred_dir)
    name = name or Path(gt_dir).name
    if frames is None:
        stems = sorted(gt_files)
    else:
        stems = list(frames)
        absent = [s for s in stems if s not in gt_files]
        if absent:
            raise EvaluationError(f"no ground-truth mask in {gt_dir} for frames {_short_list(absent)}")
    if not stems:
        raise EvaluationError(f"no ground-truth masks ({', '.join(MASK_SUFFIXES)}) in {gt_dir}")
    missing = [s for s in stems if s not in pred_files]
    if missing and not allow_missing:
        raise EvaluationError(
            f"{len(missing)} of {len(stems)} frames of {name} have no prediction in {pred_dir}: "
            f"{_short_list(missing)} (use --allow-missing to score them as empty)"
        )
    extra = len(set(pred_files) - set(stems))
    if extra:
        logger.info("%s: ignoring %d predictions without a ground-truth frame", name, extra)
    preds, gts = [], []
    for s in stems:
        gt = read_mask(gt_files[s])
        gts.append(gt)
        preds.append(read_mask(pred_files[s]) if s in pred_files else np.zeros_like(gt))
    result = evaluate_frames(preds, gts, frames=stems, name=name, target_size=target_size, bound_th=bound_th)
    result.missing = missing
    if missing:
        logger.warning("%s: %d frames had no prediction and were scored as empty", name, len(missing))
    return result


@dataclass
class MaskReport:
    """Scores of one or several sequences plus their average (``overall``)."""

    sequences: list[SequenceResult]
    target_size: int = DEFAULT_TARGET_SIZE
    bound_th: float = BOUND_TH

    def overall(self) -> dict:
        """Each statistic averaged over the sequences, and ``J&F`` = mean of J mean and F mean."""
        if not self.sequences:
            raise ValueError("report has no sequences")
        out: dict = {}
        for key, attr in (("J", "j_stats"), ("F", "f_stats")):
            stats = [getattr(s, attr) for s in self.sequences]
            out[key] = {k: float(np.mean([getattr(st, k) for st in stats])) for k in ("mean", "recall", "decay")}
        out["J&F"] = 0.5 * (out["J"]["mean"] + out["F"]["mean"])
        out["num_sequences"] = len(self.sequences)
        out["num_frames"] = int(sum(len(s.frames) for s in self.sequences))
        return out

    def to_dict(self, per_frame: bool = True) -> dict:
        return {
            "protocol": "DAVIS J (IoU) and F (boundary), statistics mean / recall (>0.5) / decay (4 bins)",
            "bound_th": self.bound_th,
            "target_size": self.target_size,
            "overall": self.overall(),
            "sequences": {s.name: s.to_dict(per_frame) for s in self.sequences},
        }


def evaluate_masks(
    pred_dir: str | Path,
    gt_dir: str | Path,
    allow_missing: bool = False,
    target_size: int = DEFAULT_TARGET_SIZE,
    bound_th: float = BOUND_TH,
) -> MaskReport:
    """Score a folder of predicted masks against a folder of ground-truth masks.

    Two layouts are accepted: ``gt_dir`` holds mask images directly (one sequence), or it holds one sub-folder
    per sequence (``Annotations/480p`` of DAVIS), in which case ``pred_dir/<sequence>/`` holds the predictions.

    Raises:
        EvaluationError: folders missing or empty, frames missing, unreadable masks, mismatched shapes.
    """
    gt_dir = Path(gt_dir)
    pred_dir = Path(pred_dir)
    if not gt_dir.is_dir():
        raise EvaluationError(f"ground-truth folder {gt_dir} does not exist or is not a folder")
    if not pred_dir.is_dir():
        raise EvaluationError(f"prediction folder {pred_dir} does not exist or is not a folder")
    kw = dict(allow_missing=allow_missing, target_size=target_size, bound_th=bound_th)
    if mask_files(gt_dir):
        return MaskReport([evaluate_mask_folders(pred_dir, gt_dir, **kw)], target_size, bound_th)
    seqs = sorted(p.name for p in gt_dir.iterdir() if p.is_dir() and mask_files(p))
    if not seqs:
        raise EvaluationError(f"no mask images and no sequence folders with mask images in {gt_dir}")
    absent = [s for s in seqs if not (pred_dir / s).is_dir()]
    if absent and not allow_missing:
        raise EvaluationError(
            f"{len(absent)} of {len(seqs)} sequences have no prediction folder in {pred_dir}: {_short_list(absent)}"
        )
    results = []
    for s in seqs:
        if (pred_dir / s).is_dir():
            results.append(evaluate_mask_folders(pred_dir / s, gt_dir / s, name=s, **kw))
        else:
            files = mask_files(gt_dir / s)
            stems = sorted(files)
            gts = [read_mask(files[stem]) for stem in stems]
            res = evaluate_frames([np.zeros_like(g) for g in gts], gts, frames=stems, name=s,
                                  target_size=target_size, bound_th=bound_th)
            res.missing = stems
            logger.warning("%s: no prediction folder; every frame scored as empty", s)
            results.append(res)
    return MaskReport(results, target_size, bound_th)
