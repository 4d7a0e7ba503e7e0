"""Deterministic k-means (Lloyd's algorithm with k-means++ seeding) in torch, on the device of the data.

Used to cluster patch features (hundreds of thousands of tokens) and 3-D points.  Distances are computed
in row chunks so that ``N x k`` work never materialises more than ``chunk_size x k`` numbers at once, and
cluster sums use a one-hot matrix product (deterministic on GPUs, unlike scatter-add atomics).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

_DEFAULT_CHUNK = 65536


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _nearest(x: Tensor, centers: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Nearest center of every row of ``x [N, D]``: ``(labels [N] long, squared distance [N])``."""
    c_sq = (centers * centers).sum(dim=1)
    labels = []
    dists = []
    for start in range(0, x.shape[0], chunk_size):
        xc = x[start : start + chunk_size]
        d = (xc * xc).sum(dim=1, keepdim=True) - 2.0 * (xc @ centers.T) + c_sq[None, :]
        dist, lab = d.min(dim=1)
        labels.append(lab)
        dists.append(dist.clamp(min=0.0))
    return torch.cat(labels), torch.cat(dists)


def _sq_dist_to(x: Tensor, center: Tensor, chunk_size: int) -> Tensor:
    """Squared distance of every row of ``x [N, D]`` to one ``center [D]``: ``[N]``."""
    out = []
    for start in range(0, x.shape[0], chunk_size):
        diff = x[start : start + chunk_size] - center[None, :]
        out.append((diff * diff).sum(dim=1))
    return torch.cat(out)


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


def _kmeanspp_init(x: Tensor, k: int, generator: torch.Generator, chunk_size: int) -> Tensor:
    """k-means++ seeding: first center uniform, then each next center with probability ~ D^2."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator).item())
    chosen = [first]
    min_d = _sq_dist_to(x, x[first], chunk_size)
    for _ in range(1, k):
        weights = min_d.to(device="cpu", dtype=torch.float64)
        if not bool((weights > 0).any()):
            # Every point coincides with a chosen center: fall back to uniform among the unchosen points.
            weights = torch.ones(n, dtype=torch.float64)
            weights[chosen] = 0.0
        nxt = int(torch.multinomial(weights, 1, generator=generator).item())
        chosen.append(nxt)
        min_d = torch.minimum(min_d, _sq_dist_to(x, x[nxt], chunk_size))
    return x[torch.tensor(chosen, device=x.device)].clone()


def _random_init(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    perm = torch.randperm(x.shape[0], generator=generator)[:k]
    return x[perm.to(x.device)].clone()


def kmeans(
    x: Tensor,
    k: int,
    iters: int = 20,
    seed: int = 0,
    init: Literal["k-means++", "random"] = "k-means++",
    tol: float = 0.0,
    chunk_size: int = _DEFAULT_CHUNK,
) -> tuple[Tensor, Tensor]:
    """Cluster the rows of ``x`` with Lloyd's k-means.

    Args:
        x: data ``[N, D]`` (any real dtype; arithmetic in float32, or float64 for float64 input), on any device.
        k: number of clusters.  If ``N < k``, ``k`` is clamped to ``N`` (every point becomes its own
            cluster) and the returned centers have ``N`` rows.
        iters: maximum number of Lloyd iterations; stops earlier when the assignment no longer changes
            or the largest center shift is ``<= tol``.
        seed: seed of the CPU ``torch.Generator`` used for the initial sampling; results are
            deterministic given the seed, the data and the device.
        init: ``'k-means++'`` (D^2 sampling) or ``'random'`` (k distinct points).
        tol: center-shift tolerance (Euclidean, per center) for early stopping.
        chunk_size: rows per distance block.

    Returns:
        ``labels [N]`` long in ``[0, k')`` (the nearest returned center of every point) and
        ``centers [k', D]`` in the compute dtype on ``x``'s device, ``k' = min(k, N)``.  A cluster that
        becomes empty during the iterations is re-seeded with the point farthest from its center.
        Runs without autograd and with autocast disabled.
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans expects x of shape [N, D], got {tuple(x.shape)}")
    n = x.shape[0]
    if n == 0:
        raise ValueError("kmeans needs at least one point, got N=0")
    if k < 1:
        raise ValueError(f"kmeans needs k >= 1, got {k}")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if init not in ("k-means++", "random"):
        raise ValueError(f"init must be 'k-means++' or 'random', got {init!r}")
    if k > n:
        logger.debug("kmeans: k=%d > N=%d points, clamping k to %d", k, n, n)
        k = n
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        return _lloyd(x, k, iters, seed, init, tol, chunk_size)


def _lloyd(x: Tensor, k: int, iters: int, seed: int, init: str, tol: float, chunk_size: int) -> tuple[Tensor, Tensor]:
    x = x.to(_compute_dtype(x.dtype) if x.is_floating_point() else torch.float32)

    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    if init == "k-means++":
        centers = _kmeanspp_init(x, k, generator, chunk_size)
    else:
        centers = _random_init(x, k, generator)

    labels, dists = _nearest(x, centers, chunk_size)
    for it in range(iters):
        sums, counts = cluster_sums(x, labels, k, chunk_size)
        new_centers = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1.0)[:, None], centers)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel() > 0:
            # Re-seed empty clusters with the points farthest from their current centers.
            far = torch.topk(dists, int(empty.numel())).indices
            new_centers[empty] = x[far]
            logger.debug("kmeans: iteration %d re-seeded %d empty clusters", it, int(empty.numel()))
        shift = (new_centers - centers).norm(dim=1).max()
        centers = new_centers
        new_labels, dists = _nearest(x, centers, chunk_size)
        changed = bool((new_labels != labels).any())
        labels = new_labels
        if (not changed and empty.numel() == 0) or float(shift) <= tol:
            break
    return labels, centers
