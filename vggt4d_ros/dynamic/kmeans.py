"""k-means as VGGT4D's reference runs it (scikit-learn's ``KMeans(k, random_state=seed)``), batched, in torch.

VGGT4D clusters patch features (one k-means over all frames) and, in the refinement, the dynamic 3-D points of
each frame (one k-means per frame). :func:`batched_kmeans` runs ``B`` independent problems at once on the
device of the data; :func:`kmeans` is the single-problem form.

The algorithm follows scikit-learn's defaults, so that the same seed gives the same clustering as the
reference (up to floating-point near-ties):

* the data of each problem is centred on its mean first (numerics only);
* **greedy k-means++** seeding: the first centre is drawn uniformly (``RandomState.choice`` with uniform
  weights), every next one is the best, by the resulting potential ``sum_i min_c |x_i - c|^2``, of
  ``2 + floor(ln k)`` candidates drawn with probability proportional to the current squared distance
  (inverse-CDF sampling on the cumulative distances, summed sequentially in float32 as scikit-learn's
  ``numpy.cumsum`` does: draws can land within a float32 rounding of a boundary). The uniform draws come from
  ``numpy.random.RandomState(seed)`` in scikit-learn's order; since every problem of a batch gets a fresh
  ``RandomState(seed)``, all problems share the same draws and the seeding is batched;
* **Lloyd** iterations (assignment by ``|c|^2 - 2 x.c``, first minimum on ties; centre = mean of its points)
  until the assignment no longer changes or the summed squared centre shift is ``<= tol`` times the mean
  per-dimension variance of the data, at most ``max_iter`` times; then a final assignment to the final
  centres. A centre that loses all its points keeps its position (scikit-learn relocates it; with k-means++
  seeding this is rare).

Distances during seeding use float64 (scikit-learn up-casts float32 data there) and are stored as float32;
their running sum runs on the host (numpy, one ``[B, N]`` copy per seeding step); Lloyd runs in the data's
float precision. Problems with ``n <= k`` points put every point in its own cluster.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["batched_kmeans", "cluster_sums", "kmeans"]

logger = logging.getLogger(__name__)

_DEFAULT_CHUNK = 65536


def cluster_sums(x: Tensor, labels: Tensor, k: int, chunk_size: int = _DEFAULT_CHUNK) -> tuple[Tensor, Tensor]:
    """Per-cluster sums and counts of the rows of ``x [N, D]`` with ``labels [N]`` in ``[0, k)``.

    Uses chunked one-hot matrix products, which are deterministic on GPUs (scatter-add is not).

    Returns:
        ``sums [k, D]`` and ``counts [k]``, both in ``x``'s dtype.
    """
    if x.ndim != 2 or labels.shape != (x.shape[0],):
        raise ValueError(f"cluster_sums expects x [N, D] and labels [N], got {tuple(x.shape)} and {tuple(labels.shape)}")
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
    counts = torch.zeros(k, dtype=x.dtype, device=x.device)
    ids = torch.arange(k, device=x.device)
    for start in range(0, x.shape[0], chunk_size):
        onehot = (labels[start : start + chunk_size][None, :] == ids[:, None]).to(x.dtype)  # [k, n]
        sums += onehot @ x[start : start + chunk_size]
        counts += onehot.sum(dim=1)
    return sums, counts


def _seed_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _first_index(n: int, u: float) -> int:
    """``RandomState.choice(n, p=uniform float32 weights)`` given its uniform draw ``u``."""
    p = np.full(n, np.float32(1.0) / np.float32(n), dtype=np.float32).astype(np.float64)
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return min(int(np.searchsorted(cdf, u, side="right")), n - 1)


def _float32_running_sum(d: Tensor) -> Tensor:
    """Cumulative sums ``[B, N]`` of ``d [B, N]`` (float32) along each row, accumulated **sequentially in
    float32**, as ``numpy.cumsum`` of a float32 array does (scikit-learn's sampling CDF).

    The inverse-CDF sampling of the seeding compares the draws with these sums; a draw can land within a float32
    rounding of a boundary (``1e-8`` relative), so a float64 (or tree-ordered) scan can pick the neighbouring
    point. A sequential float32 scan has no parallel form that rounds the same way: it runs on the host with
    numpy (``[B, N]`` floats moved per seeding step), returned on the CPU.
    """
    return torch.from_numpy(np.cumsum(d.detach().float().cpu().numpy(), axis=1, dtype=np.float32))


def _greedy_kmeanspp(x: Tensor, counts: Tensor, n_list: list[int], k: int, seed: int) -> Tensor:
    """Seed indices ``[B, k]`` (greedy k-means++) for ``x [B, N, D]`` whose first ``counts[b]`` rows are data."""
    B, N, _ = x.shape
    device = x.device
    dt = _seed_dtype(device)
    rs = np.random.RandomState(int(seed))
    u0 = float(rs.random_sample())
    trials = 2 + int(math.log(k))
    draws = torch.from_numpy(rs.random_sample((max(k - 1, 0), trials))).to(device=device, dtype=dt)
    valid = torch.arange(N, device=device)[None, :] < counts[:, None]  # [B, N]
    xd = x.to(dt)
    x_sq = (xd * xd).sum(-1)  # [B, N]
    batch = torch.arange(B, device=device)
    first = torch.tensor([_first_index(max(n, 1), u0) for n in n_list], device=device, dtype=torch.long)
    idx = torch.zeros(B, k, dtype=torch.long, device=device)
    idx[:, 0] = first

    def sq_dist(c: Tensor) -> Tensor:  # c [B, T] -> [B, T, N]
        y = xd[batch[:, None], c]  # [B, T, D]
        d = x_sq[:, None, :] + (y * y).sum(-1)[..., None] - 2.0 * torch.bmm(y, xd.transpose(1, 2))
        return torch.where(valid[:, None, :], d.clamp(min=0.0), torch.zeros_like(d))

    closest = sq_dist(first[:, None])[:, 0].float()  # [B, N] (float32, like scikit-learn)
    pot = closest.to(dt).sum(1)
    last = (counts - 1).clamp(min=0)[:, None]
    for c in range(1, k):
        cum = _float32_running_sum(closest).to(device=device, dtype=dt)  # exact in float64
        cand = torch.searchsorted(cum, (draws[c - 1][None, :] * pot[:, None]).contiguous())
        cand = torch.minimum(cand, last)  # [B, T]
        dist = torch.minimum(sq_dist(cand).float(), closest[:, None, :])  # [B, T, N]
        best_d = closest
        best_pot = torch.full_like(pot, float("inf"))
        best_idx = cand[:, 0]
        for j in range(trials):  # first minimum wins ties
            d = dist[:, j]
            p = d.to(dt).sum(1)
            better = p < best_pot
            best_pot = torch.where(better, p, best_pot)
            best_idx = torch.where(better, cand[:, j], best_idx)
            best_d = torch.where(better[:, None], d, best_d)
        idx[:, c] = best_idx
        closest = best_d
        pot = best_pot
    return idx


def _assign(x: Tensor, centers: Tensor, chunk_size: int) -> Tensor:
    """Nearest centre ``[B, N]`` of every row of ``x [B, N, D]`` among ``centers [B, k, D]``, in row blocks of at
    most ``chunk_size`` rows and ``2**22`` distances."""
    B, N, _ = x.shape
    k = centers.shape[1]
    c_sq = (centers * centers).sum(-1)[:, None, :]  # [B, 1, k]
    rows = max(1, min(chunk_size, (1 << 22) // max(B * k, 1)))
    out = []
    for start in range(0, N, rows):
        xc = x[:, start : start + rows]
        out.append(torch.argmin(c_sq - 2.0 * torch.bmm(xc, centers.transpose(1, 2)), dim=2))
    return torch.cat(out, dim=1)


def _means(x: Tensor, labels: Tensor, valid: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-cluster sums ``[B, k, D]`` and counts ``[B, k]`` of the valid rows (one ``index_add_`` each)."""
    B, N, D = x.shape
    ids = (torch.arange(B, device=x.device)[:, None] * k + labels.clamp(min=0)).reshape(-1)
    w = valid.reshape(-1).to(x.dtype)
    sums = torch.zeros(B * k, D, dtype=x.dtype, device=x.device).index_add_(0, ids, x.reshape(-1, D) * w[:, None])
    cnt = torch.zeros(B * k, dtype=x.dtype, device=x.device).index_add_(0, ids, w)
    return sums.reshape(B, k, D), cnt.reshape(B, k)


@torch.no_grad()
def batched_kmeans(
    x: Tensor,
    k: int,
    counts: Tensor | None = None,
    seed: int = 0,
    max_iter: int = 300,
    tol: float = 1e-4,
    chunk_size: int = _DEFAULT_CHUNK,
) -> tuple[Tensor, Tensor]:
    """``B`` independent k-means problems at once (see the module docstring for the algorithm).

    Args:
        x: ``[B, N, D]`` data; problem ``b`` uses its first ``counts[b]`` rows, the rest is padding.
        k: clusters per problem (>= 1).
        counts: ``[B]`` number of data rows per problem (default: all ``N``).
        seed: ``RandomState`` seed of the seeding draws (the same for every problem).
        max_iter: maximum Lloyd iterations (>= 0).
        tol: relative tolerance on the summed squared centre shift (scaled by the mean per-dimension variance).
        chunk_size: rows per distance block of the assignment step.

    Returns:
        ``labels [B, N]`` long (``-1`` on padding rows) and ``centers [B, k, D]`` in the compute dtype (float32,
        or float64 for float64 data). A problem with ``n <= k`` points has labels ``0..n-1`` and centres equal
        to its points (the remaining centres repeat its first point; a problem without points has NaN centres).
        Runs without autograd and with autocast disabled.
    """
    if x.ndim != 3:
        raise ValueError(f"batched_kmeans expects x of shape [B, N, D], got {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"kmeans needs k >= 1, got {k}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    B, N, D = x.shape
    device = x.device
    if counts is None:
        counts = torch.full((B,), N, dtype=torch.long, device=device)
    counts = torch.as_tensor(counts, device=device).long()
    if counts.shape != (B,) or bool((counts < 0).any()) or bool((counts > N).any()):
        raise ValueError(f"counts must be [B={B}] in [0, {N}], got {counts.tolist()}")
    with torch.autocast(device_type=device.type, enabled=False):
        return _batched_kmeans(x, k, counts, seed, max_iter, tol, chunk_size)


def _batched_kmeans(x: Tensor, k: int, counts: Tensor, seed: int, max_iter: int, tol: float,
                    chunk_size: int) -> tuple[Tensor, Tensor]:
    B, N, D = x.shape
    device = x.device
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    n_list = [int(n) for n in counts.tolist()]
    valid = torch.arange(N, device=device)[None, :] < counts[:, None]
    x = torch.where(valid[..., None], x.to(dtype), torch.zeros((), dtype=dtype, device=device))
    n_f = counts.clamp(min=1).to(dtype)
    mean = x.sum(1) / n_f[:, None]  # [B, D]
    x = torch.where(valid[..., None], x - mean[:, None, :], torch.zeros((), dtype=dtype, device=device))
    var = ((x * x).sum(1) / n_f[:, None]).mean(1)  # mean per-dimension variance [B]
    tol_abs = var * tol

    kk = min(k, N) if N > 0 else 1
    batch = torch.arange(B, device=device)
    if N > 0:
        idx = _greedy_kmeanspp(x, counts, n_list, kk, seed)
        centers = x[batch[:, None], idx]  # [B, k, D]
    else:
        centers = torch.zeros(B, kk, D, dtype=dtype, device=device)
    labels = _assign(x, centers, chunk_size) if N > 0 else torch.zeros(B, 0, dtype=torch.long, device=device)
    act = torch.nonzero(counts > kk).flatten()  # problems still iterating (only these are computed)
    for it in range(max_iter):
        if act.numel() == 0:
            break
        xa, va, la, ca = x[act], valid[act], labels[act], centers[act]
        sums, cnt = _means(xa, la, va, kk)
        new_centers = torch.where(cnt[..., None] > 0, sums / cnt.clamp(min=1.0)[..., None], ca)
        shift = ((new_centers - ca) ** 2).sum((1, 2))
        new_labels = _assign(xa, new_centers, chunk_size)
        strict = ((new_labels == la) | ~va).all(1)
        centers[act] = new_centers
        labels[act] = new_labels
        act = act[~(strict | (shift <= tol_abs[act]))]
        logger.debug("kmeans: iteration %d, %d of %d problems still moving", it, int(act.numel()), B)

    # problems with at most k points: every point its own cluster
    small = (counts <= kk) & (counts > 0)
    if bool(small.any()):
        ar = torch.arange(N, device=device)[None, :].expand(B, N)
        labels = torch.where(small[:, None], ar.clamp(max=kk - 1), labels)
        pts = x[:, :kk] if N >= kk else torch.cat([x, x[:, :1].expand(B, kk - N, D)], 1)
        first = x[:, :1].expand(B, kk, D)
        own = torch.where((torch.arange(kk, device=device)[None, :] < counts[:, None])[..., None], pts, first)
        centers = torch.where(small[:, None, None], own, centers)
    centers = centers + mean[:, None, :]
    centers = torch.where((counts > 0)[:, None, None], centers, torch.full_like(centers, float("nan")))
    labels = torch.where(valid, labels, torch.full_like(labels, -1))
    return labels, centers


def kmeans(
    x: Tensor,
    k: int,
    seed: int = 0,
    max_iter: int = 300,
    tol: float = 1e-4,
    chunk_size: int = _DEFAULT_CHUNK,
) -> tuple[Tensor, Tensor]:
    """Cluster the rows of ``x [N, D]`` (one problem of :func:`batched_kmeans`).

    Returns:
        ``labels [N]`` long in ``[0, k')`` and ``centers [k', D]`` with ``k' = min(k, N)``, on ``x``'s device.
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans expects x of shape [N, D], got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("kmeans needs at least one point, got N=0")
    labels, centers = batched_kmeans(x[None], k, seed=seed, max_iter=max_iter, tol=tol, chunk_size=chunk_size)
    return labels[0], centers[0, : min(k, x.shape[0])]
