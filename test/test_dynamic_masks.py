"""Tests of the token mask, k-means, multi-Otsu and the coarse VGGT4D dynamic mask."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from skimage.filters import threshold_multiotsu

from vggt4d_ros.dynamic.kmeans import batched_kmeans, cluster_sums, kmeans
from vggt4d_ros.dynamic.masks import (
    adaptive_multiotsu,
    between_class_variance,
    coarse_dynamic_mask,
    multiotsu,
    token_mask_from_pixels,
)

NBINS = 256
CENTERS = (np.arange(NBINS) + 0.5) / NBINS


# ----------------------------------------------------------------------------------------------------
# token mask
# ----------------------------------------------------------------------------------------------------


def test_token_mask_matches_fixture(fixtures_dir: Path):
    inputs = load_file(str(fixtures_dir / "tiny_dino_inputs.safetensors"))
    golden = load_file(str(fixtures_dir / "tiny_dino_vggt4d.safetensors"))
    pixel = inputs["dyn_mask"]
    for mask in (pixel, pixel > 0.5):
        grid, tokens = token_mask_from_pixels(mask)
        assert grid.dtype == torch.bool and tokens.dtype == torch.bool
        assert torch.equal(grid, golden["token_mask_grid"])
        assert torch.equal(tokens, golden["token_mask"])
    assert tokens.sum(dim=1).tolist() == [9, 9, 12, 9]
    assert not tokens[:, :5].any()


def test_token_mask_any_pixel_and_errors():
    mask = torch.zeros(1, 28, 42)
    mask[0, 15, 30] = 1.0  # one pixel inside patch (1, 2)
    grid, tokens = token_mask_from_pixels(mask, num_special=2)
    assert grid.shape == (1, 2, 3) and tokens.shape == (1, 2 + 6)
    assert grid.nonzero().tolist() == [[0, 1, 2]]
    assert tokens[0].nonzero().flatten().tolist() == [2 + 5]
    with pytest.raises(ValueError, match="multiple of the patch size"):
        token_mask_from_pixels(torch.zeros(1, 30, 42))
    with pytest.raises(ValueError, match=r"\[\.\.\., S, H, W\]"):
        token_mask_from_pixels(torch.zeros(28, 42))


# ----------------------------------------------------------------------------------------------------
# k-means
# ----------------------------------------------------------------------------------------------------


def _blobs(seed: int, k: int = 5, n: int = 600, dim: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, dim, generator=g) * 10.0
    labels = torch.arange(n) % k
    x = centers[labels] + 0.2 * torch.randn(n, dim, generator=g)
    return x, labels


def _is_relabeling(pred: torch.Tensor, truth: torch.Tensor, k: int) -> bool:
    table = torch.zeros(k, k, dtype=torch.long)
    table.index_put_((truth, pred), torch.ones_like(truth), accumulate=True)
    # a permutation: every true cluster maps to exactly one predicted cluster and vice versa
    return bool(((table > 0).sum(dim=1) == 1).all() and ((table > 0).sum(dim=0) == 1).all())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_recovers_blobs(seed):
    x, truth = _blobs(seed)
    labels, centers = kmeans(x, 5, seed=seed)
    assert labels.dtype == torch.long and labels.shape == (600,)
    assert centers.shape == (5, 3)
    assert _is_relabeling(labels, truth, 5)
    # centers are the cluster means
    for c in range(5):
        torch.testing.assert_close(centers[c], x[labels == c].mean(dim=0), atol=1e-4, rtol=1e-4)


def test_kmeans_deterministic_and_chunking_invariant():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 8, generator=g)
    l1, c1 = kmeans(x, 16, seed=4)
    l2, c2 = kmeans(x, 16, seed=4)
    assert torch.equal(l1, l2) and torch.equal(c1, c2)
    l3, c3 = kmeans(x, 16, seed=4, chunk_size=37)
    assert torch.equal(l1, l3)
    torch.testing.assert_close(c1, c3, atol=1e-5, rtol=1e-5)
    l4, _ = kmeans(x, 16, seed=5)
    assert not torch.equal(l1, l4)  # the seed matters on unstructured data


def test_batched_kmeans_equals_one_problem_at_a_time():
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(n, 3, generator=g) * 5 for n in (300, 120, 7, 0)]
    n_max = max(x.shape[0] for x in xs)
    packed = torch.zeros(len(xs), n_max, 3)
    for i, x in enumerate(xs):
        packed[i, : x.shape[0]] = x
    counts = torch.tensor([x.shape[0] for x in xs])
    labels, centers = batched_kmeans(packed, 10, counts=counts, seed=42)
    for i, x in enumerate(xs):
        assert (labels[i, x.shape[0]:] == -1).all()
        if x.shape[0] == 0:
            assert torch.isnan(centers[i]).all()
            continue
        single, c1 = kmeans(x, 10, seed=42)
        assert torch.equal(labels[i, : x.shape[0]], single)
        torch.testing.assert_close(centers[i, : c1.shape[0]], c1, atol=1e-5, rtol=1e-5)
    assert sorted(labels[2, :7].tolist()) == list(range(7))  # n <= k: every point its own cluster


def test_kmeans_fewer_points_than_clusters():
    x = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    labels, centers = kmeans(x, 8)
    assert centers.shape == (3, 2)
    assert sorted(labels.tolist()) == [0, 1, 2]
    torch.testing.assert_close(centers[labels], x)


def test_kmeans_duplicate_points_and_empty_clusters():
    x = torch.tensor([[0.0, 0.0]] * 10 + [[1.0, 1.0]] * 10)
    labels, centers = kmeans(x, 4)
    assert centers.shape == (4, 2)
    assert torch.isfinite(centers).all()
    assert labels.min() >= 0 and labels.max() < 4
    assert labels[:10].unique().numel() == 1 and labels[10:].unique().numel() == 1
    assert labels[0] != labels[10]


def test_cluster_sums():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 3, generator=g)
    labels = torch.randint(0, 6, (1000,), generator=g)
    labels[labels == 4] = 5  # cluster 4 empty
    sums, counts = cluster_sums(x, labels, 7, chunk_size=64)
    for c in range(7):
        torch.testing.assert_close(sums[c], x[labels == c].sum(dim=0), atol=1e-4, rtol=1e-5)
        assert counts[c] == (labels == c).sum()
    assert counts[4] == 0 and counts[6] == 0
    with pytest.raises(ValueError, match="labels"):
        cluster_sums(x, labels[:-1], 7)


def test_kmeans_errors():
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        kmeans(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="N=0"):
        kmeans(torch.zeros(0, 3), 2)
    with pytest.raises(ValueError, match="k >= 1"):
        kmeans(torch.zeros(4, 3), 0)
    with pytest.raises(ValueError, match="counts"):
        batched_kmeans(torch.zeros(2, 4, 3), 2, counts=torch.tensor([5, 1]))


# ----------------------------------------------------------------------------------------------------
# multi-Otsu
# ----------------------------------------------------------------------------------------------------


def _histograms() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = [rng.integers(1, 1000, NBINS).astype(np.float64) for _ in range(3)]
    for i in range(6):
        modes = rng.integers(2, 5)
        samples = np.concatenate([
            rng.normal(mu, sd, n)
            for mu, sd, n in zip(rng.uniform(0.1, 0.9, modes), rng.uniform(0.01, 0.08, modes),
                                 rng.integers(2000, 20000, modes))
        ])
        hist = np.histogram(np.clip(samples, 0.0, 1.0), bins=NBINS, range=(0.0, 1.0))[0].astype(np.float64)
        out.append(hist + (1.0 if i % 2 else 0.0))  # half of them with empty bins
    return out


def _brute_force(hist: np.ndarray, classes: int) -> float:
    """Best between-class variance over all threshold combinations, by direct enumeration."""
    n = hist.size
    prob = hist / hist.sum()
    cp = np.concatenate([[0.0], np.cumsum(prob)])
    cm = np.concatenate([[0.0], np.cumsum(prob * (np.arange(n) + 0.5) / n)])
    combos = np.array(list(itertools.combinations(range(n - 1), classes - 1)))
    bounds = np.concatenate([np.zeros((len(combos), 1), int), combos + 1, np.full((len(combos), 1), n)], axis=1)
    w = cp[bounds[:, 1:]] - cp[bounds[:, :-1]]
    m = cm[bounds[:, 1:]] - cm[bounds[:, :-1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(w > 0, m * m / np.where(w > 0, w, 1.0), 0.0)
    return float((terms.sum(axis=1) - cm[-1] ** 2).max())


@pytest.mark.parametrize("classes", [2, 3, 4])
def test_multiotsu_matches_skimage(classes):
    exact = 0
    hists = _histograms()
    for hist in hists:
        ours = multiotsu(hist, classes)
        assert len(ours.indices) == classes - 1
        assert list(ours.indices) == sorted(set(ours.indices))
        np.testing.assert_allclose(ours.thresholds, CENTERS[list(ours.indices)])
        np.testing.assert_allclose(ours.splits, (np.array(ours.indices) + 1) / NBINS)
        sk = threshold_multiotsu(hist=(hist, CENTERS), classes=classes)
        sk_idx = tuple(int(np.argmin(np.abs(CENTERS - t))) for t in sk)
        sk_var = between_class_variance(hist, sk_idx)
        # skimage works in float32; its optimum may differ only by a near-tie that ours resolves at least as well
        assert ours.between_variance >= sk_var - 1e-9
        np.testing.assert_allclose(ours.between_variance, sk_var, rtol=1e-5)
        exact += ours.indices == sk_idx
    assert exact >= len(hists) - 3


@pytest.mark.parametrize("classes", [2, 3])
def test_multiotsu_is_the_global_optimum(classes):
    for hist in _histograms()[:5]:
        np.testing.assert_allclose(multiotsu(hist, classes).between_variance, _brute_force(hist, classes),
                                   rtol=1e-12, atol=1e-15)


def test_multiotsu_four_classes_global_optimum_small_histogram():
    rng = np.random.default_rng(1)
    hist = rng.integers(0, 50, 40).astype(np.float64)
    hist[[3, 17, 30]] += 400
    np.testing.assert_allclose(multiotsu(hist, 4).between_variance, _brute_force(hist, 4), rtol=1e-12)


def test_between_class_variance_definition():
    rng = np.random.default_rng(2)
    values = rng.integers(0, NBINS, 5000)
    hist = np.bincount(values, minlength=NBINS).astype(np.float64)
    idx = (60, 140)
    cls = np.digitize(values, np.array(idx) + 0.5)  # bin <= 60 -> 0, <= 140 -> 1, else 2
    x = CENTERS[values]
    expected = sum((cls == c).mean() * (x[cls == c].mean() - x.mean()) ** 2 for c in range(3))
    np.testing.assert_allclose(between_class_variance(hist, idx), expected, rtol=1e-10)


def test_multiotsu_errors():
    hist = np.zeros(NBINS)
    hist[[10, 200]] = 5
    with pytest.raises(ValueError, match="2 non-empty bins"):
        multiotsu(hist, 3)
    with pytest.raises(ValueError, match="classes >= 2"):
        multiotsu(hist, 1)
    assert multiotsu(hist, 2).indices[0] in range(10, 200)


def _reference_adaptive(values: np.ndarray) -> tuple[int, float]:
    """The reference rule, written with scikit-image: K in 2..4, regions by np.digitize, unweighted np.var of the
    region means / sqrt(K); the best K's last threshold."""
    best = (-np.inf, 0, 0.0)
    for k in (2, 3, 4):
        thr = threshold_multiotsu(values, classes=k)
        region = np.digitize(values, bins=thr)
        score = np.var([values[region == r].mean() for r in range(k)]) / np.sqrt(k)
        if score > best[0]:
            best = (score, k, float(thr[-1]))
    return best[1], best[2]


def test_adaptive_multiotsu_is_the_reference_rule():
    rng = np.random.default_rng(5)
    for i in range(6):
        modes = 2 + i % 3
        parts = [rng.normal(rng.uniform(0.1, 0.9), rng.uniform(0.02, 0.1), rng.integers(500, 5000)) for _ in range(modes)]
        values = np.concatenate(parts).astype(np.float32)
        best, scores = adaptive_multiotsu(torch.from_numpy(values))
        k, thr = _reference_adaptive(values)
        assert best is not None and best.classes == k and best.thresholds[-1] == thr
        assert set(scores) == {2, 3, 4}
    # equal groups at 0.02 / 0.5 / 0.98: the unweighted score prefers 2 classes (var of means / sqrt(K))
    three = torch.cat([torch.full((300,), 0.02), torch.full((300,), 0.5), torch.full((300,), 0.98)])
    best, scores = adaptive_multiotsu(three)
    assert best is not None and best.classes == 2 and set(scores) == {2, 3}  # 3 non-empty bins: 4 infeasible
    best, scores = adaptive_multiotsu(torch.full((100,), 0.3))
    assert best is None and scores == {}


# ----------------------------------------------------------------------------------------------------
# coarse dynamic mask
# ----------------------------------------------------------------------------------------------------


def _synthetic_scene(seed: int = 0):
    """Frames whose 'moving object' tokens have their own feature direction and high dyn."""
    g = torch.Generator().manual_seed(seed)
    S, h, w, C = 3, 12, 16, 16
    obj = torch.zeros(S, h, w, dtype=torch.bool)
    for s in range(S):
        obj[s, 3:9, 2 + 2 * s : 10 + 2 * s] = True
    directions = torch.randn(5, C, generator=g)
    label = torch.randint(1, 5, (S, h, w), generator=g)
    label[obj] = 0
    feats = directions[label] + 0.05 * torch.randn(S, h, w, C, generator=g)
    dyn = torch.rand(S, h, w, generator=g) * 0.3
    dyn[obj] = 0.7 + 0.3 * torch.rand(int(obj.sum()), generator=g)
    return dyn, feats.reshape(S, h * w, C), obj


def test_coarse_mask_recovers_moving_object():
    dyn, feats, obj = _synthetic_scene()
    S, h, w = dyn.shape
    H, W = h * 14, w * 14
    mask, info = coarse_dynamic_mask(dyn, feats, (H, W), num_clusters=8, seed=0)
    truth = obj.repeat_interleave(14, dim=1).repeat_interleave(14, dim=2)
    assert mask.shape == (S, H, W) and mask.dtype == torch.bool
    iou = float((mask & truth).sum()) / float((mask | truth).sum())
    assert iou >= 0.95
    assert info["classes"] in (2, 3, 4)
    assert info["threshold"] == info["thresholds"][-1]
    assert info["cluster_map"].shape == (S, h, w) and info["cluster_map"].dtype == torch.long
    assert info["score_map"].shape == (S, H, W)
    assert float(info["score_map"].min()) >= 0.0 and float(info["score_map"].max()) <= 1.0
    # all object tokens fall in clusters distinct from every background token's cluster
    object_clusters = set(info["cluster_map"][obj].tolist())
    assert object_clusters.isdisjoint(set(info["cluster_map"][~obj].tolist()))
    torch.testing.assert_close(mask, info["upsampled_map"] > info["threshold"])
    # per-frame min-max of the token map
    torch.testing.assert_close(info["normalized_map"].amin(dim=(1, 2)), torch.zeros(S))
    torch.testing.assert_close(info["normalized_map"].amax(dim=(1, 2)), torch.ones(S), atol=1e-5, rtol=0)
    # the stored labels path gives the same result
    again, info2 = coarse_dynamic_mask(dyn, feats.reshape(S, h, w, -1), (H, W), cluster_labels=info["cluster_labels"])
    assert torch.equal(again, mask) and info2["threshold"] == info["threshold"]


def test_coarse_mask_uses_cluster_means_not_raw_dyn():
    # a background token with a spuriously high dyn value is outvoted by its cluster
    dyn, feats, obj = _synthetic_scene(seed=1)
    spike = (0, 0, 0)
    assert not obj[spike]
    dyn[spike] = 1.0
    mask, info = coarse_dynamic_mask(dyn, feats, (dyn.shape[1] * 14, dyn.shape[2] * 14), num_clusters=8)
    assert not mask[0, :14, :14].any()
    assert float(info["token_score"][spike]) < 0.3


def test_coarse_mask_constant_cue_is_empty():
    dyn, feats, _ = _synthetic_scene()
    mask, info = coarse_dynamic_mask(torch.zeros_like(dyn), feats, (42, 56), num_clusters=4)
    assert mask.shape == (3, 42, 56) and not mask.any()
    assert info["classes"] == 1 and info["n_classes"] == 1


def test_coarse_mask_errors():
    dyn, feats, _ = _synthetic_scene()
    with pytest.raises(ValueError, match="features"):
        coarse_dynamic_mask(dyn, feats[:, :-1], (42, 56))
    with pytest.raises(ValueError, match=r"\[S, h, w\]"):
        coarse_dynamic_mask(dyn[0], feats, (42, 56))
    with pytest.raises(ValueError, match="image_size"):
        coarse_dynamic_mask(dyn, feats, (0, 56))
