"""Token masks and the coarse VGGT4D dynamic mask (feature clustering + adaptive multi-Otsu).

* :func:`token_mask_from_pixels` (re-exported from :mod:`vggt4d_ros.model.masking`) turns a pixel mask into the
  per-token mask of the masked second pass.
* :func:`multiotsu` is an exact multi-level Otsu threshold search on a histogram (dynamic programming
  over class boundaries, equivalent to the exhaustive search).
* :func:`adaptive_multiotsu` is VGGT4D's class-count choice: scikit-image-style thresholds on a histogram over
  the values' range, scored by the unweighted variance of the region means / sqrt(class count).
* :func:`overlay_mask` tints the dynamic pixels of an image (for viewing: node overlay, ``vggt4d run``, demo).
* :func:`coarse_dynamic_mask` is the official coarse-mask stage: k-means on the raw patch features of all
  frames jointly, each cluster scored by its mean ``dyn``, per-frame min-max, upsampling, ``> threshold``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vggt4d_ros.dynamic.kmeans import cluster_sums, kmeans
from vggt4d_ros.model.masking import pixel_mask_to_token_mask as token_mask_from_pixels  # noqa: F401 (re-export)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# Multi-Otsu
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OtsuResult:
    """Result of a multi-Otsu search.

    Attributes:
        classes: number of classes.
        indices: ``classes - 1`` threshold bin indices, strictly increasing; class ``m`` holds bins
            ``(indices[m-1], indices[m]]``.
        thresholds: the bin centers of ``indices`` (the values ``skimage.filters.threshold_multiotsu``
            reports).
        splits: the values separating bin ``indices[m]`` from bin ``indices[m] + 1`` (midpoint of their
            centers, i.e. the bin edge for uniform bins).  ``value >= splits[m]`` puts a value above class
            ``m`` exactly as the histogram binning does; comparing against the bin *center* would move the
            values of the threshold bin that lie above its center into the upper class.
        between_variance: between-class variance of the bin-center values under this split.
    """

    classes: int
    indices: tuple[int, ...]
    thresholds: tuple[float, ...]
    splits: tuple[float, ...]
    between_variance: float


def _histogram_arrays(hist: Any, bin_centers: Any | None) -> tuple[np.ndarray, np.ndarray]:
    counts = np.asarray(hist.detach().cpu() if isinstance(hist, Tensor) else hist, dtype=np.float64).ravel()
    if counts.size == 0:
        raise ValueError("histogram must have at least one bin")
    if np.any(counts < 0) or not np.all(np.isfinite(counts)):
        raise ValueError("histogram counts must be finite and non-negative")
    if bin_centers is None:
        centers = (np.arange(counts.size, dtype=np.float64) + 0.5) / counts.size
    else:
        src = bin_centers.detach().cpu() if isinstance(bin_centers, Tensor) else bin_centers
        centers = np.asarray(src, dtype=np.float64).ravel()
        if centers.shape != counts.shape:
            raise ValueError(f"bin_centers has {centers.size} entries, histogram has {counts.size} bins")
    return counts, centers


def between_class_variance(hist: Any, indices: tuple[int, ...] | list[int], bin_centers: Any | None = None) -> float:
    """Between-class variance ``sum_m w_m (mu_m - mu)^2`` of a histogram split at bin ``indices``.

    Args:
        hist: ``[n]`` counts.
        indices: strictly increasing threshold bin indices (class ``m`` holds ``(indices[m-1], indices[m]]``).
        bin_centers: ``[n]`` values of the bins; defaults to ``(i + 0.5) / n`` (bins over [0, 1]).
    """
    counts, centers = _histogram_arrays(hist, bin_centers)
    total = counts.sum()
    if total <= 0:
        raise ValueError("histogram is empty (all counts zero)")
    prob = counts / total
    bounds = [0, *[int(i) + 1 for i in indices], counts.size]
    if any(b1 >= b2 for b1, b2 in zip(bounds[:-1], bounds[1:])):
        raise ValueError(f"threshold indices {tuple(indices)} must be strictly increasing in [0, {counts.size - 1})")
    cum_p = np.concatenate([[0.0], np.cumsum(prob)])
    cum_m = np.concatenate([[0.0], np.cumsum(prob * centers)])
    lo, hi = np.asarray(bounds[:-1]), np.asarray(bounds[1:])
    w = cum_p[hi] - cum_p[lo]
    m = cum_m[hi] - cum_m[lo]
    mu = cum_m[-1]
    safe = w > 0
    return float(np.sum(m[safe] ** 2 / w[safe]) - mu * mu)


def multiotsu(hist: Any, classes: int, bin_centers: Any | None = None) -> OtsuResult:
    """Exact multi-level Otsu thresholds of a histogram.

    Maximises the between-class variance over all splits of the ``n`` bins into ``classes`` contiguous,
    non-empty runs of bins, by dynamic programming on ``sum_m S_m^2 / W_m`` (``W_m`` the probability and
    ``S_m`` the first moment of class ``m``); ``O(classes * n^2)``.  Ties go to the smallest threshold
    indices found by the backtracking.

    Args:
        hist: ``[n]`` counts (numpy or torch).
        classes: number of classes (>= 2).
        bin_centers: ``[n]`` bin values; defaults to ``(i + 0.5) / n`` (bins over [0, 1]).

    Raises:
        ValueError: if ``classes < 2``, or the histogram has fewer non-empty bins than ``classes``.
    """
    counts, centers = _histogram_arrays(hist, bin_centers)
    n = counts.size
    if classes < 2:
        raise ValueError(f"multiotsu needs classes >= 2, got {classes}")
    nonzero = int(np.count_nonzero(counts))
    if nonzero < classes:
        raise ValueError(
            f"histogram has {nonzero} non-empty bins; cannot split it into {classes} classes"
        )
    prob = counts / counts.sum()
    cum_p = np.concatenate([[0.0], np.cumsum(prob)])
    cum_m = np.concatenate([[0.0], np.cumsum(prob * centers)])
    # gain[a, b]: S^2 / W of the class made of bins a..b (a <= b), -inf elsewhere.
    a_idx = np.arange(n)[:, None]
    b_idx = np.arange(n)[None, :]
    w = cum_p[b_idx + 1] - cum_p[a_idx]
    m = cum_m[b_idx + 1] - cum_m[a_idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(w > 0, m * m / np.where(w > 0, w, 1.0), 0.0)
    gain = np.where(b_idx >= a_idx, gain, -np.inf)

    # best[j]: best total gain of the first `stage` classes covering bins 0..j.
    best = gain[0].copy()
    choices = []
    for _ in range(1, classes):
        # candidate[i, j] = best[i] + gain[i + 1, j]: previous classes end at bin i, next class is i+1..j.
        candidate = np.full((n, n), -np.inf)
        candidate[:-1, :] = best[:-1, None] + gain[1:, :]
        arg = np.argmax(candidate, axis=0)
        best = candidate[arg, np.arange(n)]
        choices.append(arg)
    indices = []
    end = n - 1
    for arg in reversed(choices):
        end = int(arg[end])
        indices.append(end)
    indices.reverse()
    idx = tuple(indices)
    return OtsuResult(
        classes=classes,
        indices=idx,
        thresholds=tuple(float(centers[i]) for i in idx),
        splits=tuple(float(0.5 * (centers[i] + centers[i + 1])) for i in idx),
        between_variance=between_class_variance(counts, idx, centers),
    )


def adaptive_multiotsu(
    values: Tensor,
    classes: tuple[int, ...] = (2, 3, 4),
    bins: int = 256,
) -> tuple[OtsuResult | None, dict[int, float]]:
    """Multi-Otsu with the class count chosen as VGGT4D does (``skimage.filters.threshold_multiotsu`` semantics).

    The values are histogrammed into ``bins`` equal bins over their own range ``[min, max]`` (``np.histogram``;
    thresholds are bin centres, as scikit-image reports them). For every candidate class count ``K`` the
    values are split into regions by ``np.digitize`` on the ``K - 1`` thresholds (``value >= threshold`` goes
    up) and scored by the **unweighted** variance of the ``K`` region means divided by ``sqrt(K)``; the best
    score wins (the first on ties).

    Args:
        values: any shape, finite floats (flattened; copied to the CPU).
        classes: candidate class counts (each >= 2).
        bins: number of histogram bins.

    Returns:
        The best :class:`OtsuResult` (``None`` when no candidate is feasible, e.g. a constant map) and the
        score of every feasible class count.
    """
    if not classes or any(int(c) < 2 for c in classes):
        raise ValueError(f"classes must be a non-empty sequence of ints >= 2, got {classes!r}")
    x = values.detach().to("cpu", torch.float32).flatten().numpy()
    if x.size == 0:
        return None, {}
    lo, hi = x.min(), x.max()
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return None, {}
    counts, edges = np.histogram(x, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    nonzero = int(np.count_nonzero(counts))
    best: OtsuResult | None = None
    best_score = -math.inf
    scores: dict[int, float] = {}
    for c in classes:
        c = int(c)
        if nonzero < c:
            logger.debug("adaptive_multiotsu: only %d non-empty bins, skipping %d classes", nonzero, c)
            continue
        result = multiotsu(counts.astype(np.float64), c, bin_centers=centers.astype(np.float64))
        region = np.digitize(x, np.asarray(result.thresholds, dtype=x.dtype))
        sizes = np.bincount(region, minlength=c)
        if np.any(sizes == 0):
            logger.debug("adaptive_multiotsu: %d classes leave an empty region, skipping", c)
            continue
        means = np.bincount(region, weights=x.astype(np.float64), minlength=c) / sizes
        score = float(np.var(means) / math.sqrt(c))
        scores[c] = score
        if score > best_score:
            best, best_score = result, score
    return best, scores


# ----------------------------------------------------------------------------------------------------
# Coarse dynamic mask
# ----------------------------------------------------------------------------------------------------


def feature_clusters(features: Tensor, num_clusters: int = 64, seed: int = 42, kmeans_iters: int = 300) -> Tensor:
    """The coarse mask's k-means: labels ``[S, h*w]`` long of the **raw** token features ``[S, h*w, C]`` of all
    frames clustered jointly (what :func:`coarse_dynamic_mask` computes when it is not given ``cluster_labels``).
    It needs no cue, so VGGT4D can run it while pass 1 computes the cue layers."""
    if features.ndim != 3:
        raise ValueError(f"features must have shape [S, h*w, C], got {tuple(features.shape)}")
    s, n, c = features.shape
    with torch.no_grad(), torch.autocast(device_type=features.device.type, enabled=False):
        labels, _ = kmeans(features.reshape(s * n, c).float(), num_clusters, seed=seed, max_iter=kmeans_iters)
    return labels.reshape(s, n)


def coarse_dynamic_mask(
    dyn: Tensor,
    features: Tensor,
    image_size: tuple[int, int],
    num_clusters: int = 64,
    seed: int = 42,
    classes: tuple[int, ...] = (2, 3, 4),
    kmeans_iters: int = 300,
    cluster_labels: Tensor | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Coarse VGGT4D dynamic mask from the ``dyn`` cue and the patch features (the official stage).

    Steps: k-means (``num_clusters``) on the **raw** token features of all frames jointly; the mean ``dyn``
    of each cluster is put back on its tokens; this token map is min-max normalised **per frame**,
    ``(x - min) / (max - min + 1e-6)``; bilinear upsampling (``align_corners=False``) to the image size;
    adaptive multi-Otsu (:func:`adaptive_multiotsu`) on all frames' upsampled values jointly; the mask is
    ``upsampled > threshold`` (the chosen split's last threshold). A constant map has no split: the mask
    is empty (``info['n_classes'] == 1``, threshold ``inf``).

    Args:
        dyn: ``[S, h, w]`` dynamic cue (e.g. ``CueAccumulator.finalize()['dyn']``).
        features: ``[S, h*w, C]`` or ``[S, h, w, C]`` token features of the same frames.
        image_size: ``(H, W)`` of the output mask.
        num_clusters: k-means clusters (clamped to the token count).
        seed: k-means seed (``RandomState`` seed, as ``KMeans(random_state=seed)``; the reference uses 42).
        classes: candidate multi-Otsu class counts.
        kmeans_iters: maximum Lloyd iterations (stops earlier once the assignment is stable).
        cluster_labels: optional ``[S, h, w]`` (or ``[S, h*w]``) integer cluster label of every token; when
            given, k-means is skipped and these labels are used (stage parity with stored labels).

    Returns:
        ``mask [S, H, W]`` bool and ``info`` with ``n_classes`` (int; alias ``classes``), ``thresholds``
        (tuple of floats), ``threshold`` (float), ``otsu_scores`` (dict class count -> score),
        ``cluster_labels [S, h, w]`` long (alias ``cluster_map``), ``cluster_mean [k]`` (mean ``dyn`` per
        label, 0 for unused labels), ``normalized_map [S, h, w]`` (alias ``token_score``) and
        ``upsampled_map [S, H, W]`` float32 (alias ``score_map``), all on the input's device.
    """
    dyn = torch.as_tensor(dyn)
    features = torch.as_tensor(features)
    if dyn.ndim != 3:
        raise ValueError(f"dyn must have shape [S, h, w], got {tuple(dyn.shape)}")
    s, h, w = dyn.shape
    if features.ndim == 4 and tuple(features.shape[:3]) == (s, h, w):
        features = features.reshape(s, h * w, features.shape[-1])
    if features.ndim != 3 or features.shape[0] != s or features.shape[1] != h * w:
        raise ValueError(f"features must have shape [S={s}, h*w={h * w}, C] or [S, h, w, C], "
                         f"got {tuple(features.shape)}")
    if len(image_size) != 2 or int(image_size[0]) < 1 or int(image_size[1]) < 1:
        raise ValueError(f"image_size must be a pair (H, W) of positive ints, got {image_size!r}")
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
    if cluster_labels is not None:
        cluster_labels = torch.as_tensor(cluster_labels)
        if cluster_labels.numel() != s * h * w or cluster_labels.is_floating_point():
            raise ValueError(f"cluster_labels must be integer [S, h, w] = {(s, h, w)}, "
                             f"got {cluster_labels.dtype} {tuple(cluster_labels.shape)}")
        if bool((cluster_labels < 0).any()):
            raise ValueError("cluster_labels must be >= 0")
    with torch.no_grad(), torch.autocast(device_type=features.device.type, enabled=False):
        return _coarse_dynamic_mask(dyn, features, (int(image_size[0]), int(image_size[1])), num_clusters, seed,
                                    classes, kmeans_iters, cluster_labels)


def _coarse_dynamic_mask(
    dyn: Tensor,
    features: Tensor,
    image_size: tuple[int, int],
    num_clusters: int,
    seed: int,
    classes: tuple[int, ...],
    kmeans_iters: int,
    cluster_labels: Tensor | None,
) -> tuple[Tensor, dict[str, Any]]:
    s, h, w = dyn.shape
    height, width = image_size
    device = features.device
    if cluster_labels is None:
        labels = feature_clusters(features, num_clusters, seed, kmeans_iters).reshape(-1)
    else:
        labels = cluster_labels.reshape(-1).to(device=device, dtype=torch.long)
    k = int(labels.max()) + 1
    dyn_flat = dyn.reshape(-1, 1).to(device=device, dtype=torch.float32)
    sums, counts = cluster_sums(dyn_flat, labels, k)
    cluster_mean = torch.where(counts > 0, sums[:, 0] / counts.clamp(min=1.0), torch.zeros_like(counts))
    token_map = cluster_mean[labels].reshape(s, h, w)
    lo = token_map.amin(dim=(1, 2), keepdim=True)
    hi = token_map.amax(dim=(1, 2), keepdim=True)
    normalized = (token_map - lo) / (hi - lo + 1e-6)
    upsampled = F.interpolate(normalized[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]

    best, scores = adaptive_multiotsu(upsampled, classes=classes)
    if best is None:
        logger.debug("coarse_dynamic_mask: score map is constant, returning an empty mask")
        mask = torch.zeros(s, height, width, dtype=torch.bool, device=device)
        chosen, thresholds, threshold = 1, (), math.inf
    else:
        chosen, thresholds, threshold = best.classes, best.thresholds, best.thresholds[-1]
        mask = upsampled > threshold
    label_map = labels.reshape(s, h, w)
    info: dict[str, Any] = {
        "n_classes": chosen,
        "classes": chosen,
        "thresholds": thresholds,
        "threshold": threshold,
        "otsu_scores": scores,
        "cluster_labels": label_map,
        "cluster_map": label_map,
        "cluster_mean": cluster_mean,
        "normalized_map": normalized,
        "token_score": normalized,
        "upsampled_map": upsampled,
        "score_map": upsampled,
    }
    return mask, info


def overlay_mask(rgb: np.ndarray, mask: np.ndarray, color: Sequence[int] = (255, 0, 0),
                 alpha: float = 0.5) -> np.ndarray:
    """Blend ``color`` into ``rgb`` ``[H, W, 3]`` uint8 where ``mask`` ``[H, W]`` is true (a copy)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask must be [H, W] = {rgb.shape[:2]}, got {mask.shape}")
    out = rgb.copy()
    sel = mask.astype(bool)
    tint = np.asarray(color, dtype=np.float32)
    out[sel] = np.clip(rgb[sel].astype(np.float32) * (1.0 - alpha) + tint * alpha + 0.5, 0, 255).astype(np.uint8)
    return out
