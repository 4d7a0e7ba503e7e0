"""DAVIS mask evaluation (vggt4d_ros.evaluation.masks) and ``vggt4d eval masks``: known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from vggt4d_ros.cli import main
from vggt4d_ros.evaluation import EvaluationError
from vggt4d_ros.evaluation.masks import (
    align_geometry,
    boundary_f_measure,
    boundary_map,
    boundary_scores,
    boundary_tolerance,
    disk,
    evaluate_frames,
    evaluate_mask_folders,
    evaluate_masks,
    gt_to_model_geometry,
    model_geometry,
    read_mask,
    region_similarity,
    sequence_statistics,
)


def square(shape=(100, 100), top=20, left=20, size=40) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[top : top + size, left : left + size] = True
    return m


def blob(shape=(60, 80), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cy, cx = rng.uniform(15, 45), rng.uniform(20, 60)
    return (yy - cy) ** 2 / 150 + (xx - cx) ** 2 / 300 + 0.3 * np.sin(xx / 3.0) < 1.0


# ------------------------------------------------------------------ J


def test_identical_masks_score_one():
    m = blob()
    assert region_similarity(m, m) == 1.0
    assert boundary_f_measure(m, m) == 1.0
    assert boundary_scores(m, m) == (1.0, 1.0, 1.0)


def test_half_overlapping_squares_iou_is_one_third():
    a = square(left=20)
    b = square(left=40)  # 40x40 squares overlapping on 40x20 = 800 px; union 1600 + 1600 - 800 = 2400
    assert region_similarity(a, b) == pytest.approx(800 / 2400, abs=1e-15)
    assert region_similarity(b, a) == pytest.approx(1 / 3, abs=1e-15)


def test_empty_frames():
    empty = np.zeros((30, 40), dtype=bool)
    full = square((30, 40), 5, 5, 10)
    assert region_similarity(empty, empty) == 1.0
    assert boundary_scores(empty, empty) == (1.0, 1.0, 1.0)
    assert region_similarity(full, empty) == 0.0
    assert boundary_scores(full, empty) == (0.0, 0.0, 1.0)  # prediction on an empty ground truth
    assert boundary_scores(empty, full) == (0.0, 1.0, 0.0)  # nothing predicted


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        region_similarity(np.zeros((4, 5)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="2-D"):
        boundary_f_measure(np.zeros((2, 4, 5)), np.zeros((2, 4, 5)))


# ------------------------------------------------------------------ boundaries


def test_boundary_map_of_a_square():
    # rows/cols 20..59: inner right column and bottom row, outer left column and top row (2h + 2w pixels)
    b = boundary_map(square())
    expected = np.zeros((100, 100), dtype=bool)
    expected[19:60, 19] = True  # outer left column, rows 19..59
    expected[19, 19:60] = True  # outer top row, cols 19..59
    expected[20:60, 59] = True  # inner right column
    expected[59, 20:60] = True  # inner bottom row
    np.testing.assert_array_equal(b, expected)
    assert b.sum() == 2 * 40 + 2 * 40


def test_boundary_map_ignores_neighbours_outside_the_image():
    assert not boundary_map(np.ones((5, 7), dtype=bool)).any()
    corner = np.zeros((4, 4), dtype=bool)
    corner[3, 3] = True  # bottom-right pixel: compared with nothing itself, seen by its 3 upper-left neighbours
    expected = np.zeros((4, 4), dtype=bool)
    expected[2, 2] = expected[2, 3] = expected[3, 2] = True
    np.testing.assert_array_equal(boundary_map(corner), expected)


def test_disk_and_tolerance():
    d = disk(2)
    assert d.shape == (5, 5)
    assert d.sum() == 13  # offsets with dy^2 + dx^2 <= 4
    assert d[2, 0] and d[0, 2] and not d[0, 0] and not d[1, 0]
    assert disk(0).tolist() == [[True]]
    assert boundary_tolerance((100, 100)) == 2  # ceil(0.008 * 141.4)
    assert boundary_tolerance((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert boundary_tolerance((480, 854), bound_th=3) == 3  # >= 1 means pixels


@pytest.mark.parametrize("shift", [1, 2])
def test_boundary_shift_within_tolerance_is_perfect(shift):
    a = square(left=20)
    b = square(left=20 + shift)
    assert boundary_scores(b, a) == (1.0, 1.0, 1.0)
    assert region_similarity(b, a) < 1.0


@pytest.mark.parametrize("shift", [3, 5, 8])
def test_boundary_shift_beyond_tolerance(shift):
    # Hand count (square side w = 40, tolerance r = 2, shift d > r): of the 2h + 2w = 160 boundary pixels of
    # each mask, 2w - 2d + 4r + 2 lie within r of the other mask's boundary (the shared top/bottom rows and the
    # parts of the columns within r of them), the same for precision and recall.
    w, r, d = 40, 2, shift
    expected = (2 * w - 2 * d + 4 * r + 2) / (4 * w)
    f, p, rec = boundary_scores(square(left=20 + d), square(left=20))
    assert p == pytest.approx(expected, abs=1e-15)
    assert rec == pytest.approx(expected, abs=1e-15)
    assert f == pytest.approx(expected, abs=1e-15)
    assert boundary_scores(square(left=20 + d), square(left=20), bound_th=d)[0] == 1.0


# ------------------------------------------------------------------ statistics


def test_statistics_recall_and_decay():
    s = sequence_statistics([1, 1, 1, 1, 0.5, 0.5, 0, 0])
    assert s.mean == pytest.approx(0.625)
    assert s.recall == 0.5  # 0.5 is not > 0.5
    assert s.decay == pytest.approx(1.0)  # bins of 2: mean(1, 1) - mean(0, 0)


def test_statistics_uneven_bins_follow_array_split():
    # array_split of 10 frames -> 3, 3, 2, 2: first bin 0.0..0.2 (mean 0.1), last 0.8..0.9 (mean 0.85)
    s = sequence_statistics(np.arange(10) / 10)
    assert s.mean == pytest.approx(0.45)
    assert s.recall == pytest.approx(0.4)
    assert s.decay == pytest.approx(0.1 - 0.85)
    assert sequence_statistics([0.7]).decay == 0.0
    assert sequence_statistics([0.9, 0.1]).decay == pytest.approx(0.8)
    with pytest.raises(ValueError, match="at least one"):
        sequence_statistics([])


def test_evaluate_frames_designed_sequence():
    gt = square()
    preds = [square(left=20 + k * 20) for k in (0, 0, 1, 3)]  # J = 1, 1, 1/3, 0
    res = evaluate_frames(preds, [gt] * 4, name="designed")
    np.testing.assert_allclose(res.J, [1, 1, 1 / 3, 0])
    assert res.j_stats.decay == pytest.approx(1.0)
    assert res.j_stats.recall == 0.5
    assert res.geometry == ["original"] * 4
    assert res.frames == ["00000", "00001", "00002", "00003"]
    assert res.to_dict()["J&F"] == pytest.approx(0.5 * (res.J.mean() + res.F.mean()))


# ------------------------------------------------------------------ geometry


def test_model_geometry_of_davis_480p():
    # width 518, height round(480 * 518 / 854 / 14) * 14 = round(20.80) * 14 = 294
    assert model_geometry((480, 854)) == (294, 518)
    gt = np.zeros((480, 854), dtype=bool)
    gt[:, :427] = True  # left half
    out = gt_to_model_geometry(gt)
    assert out.shape == (294, 518) and out.dtype == bool
    assert out[:, :259].all() and not out[:, 259:].any()


def test_tall_ground_truth_is_centre_cropped():
    # 100x50 at target 140: resized to 280x140, rows 70..209 kept; the top half (rows < 50) becomes rows < 140
    # of the resized mask, i.e. model rows 0..69
    gt = np.zeros((100, 50), dtype=bool)
    gt[:50] = True
    out = gt_to_model_geometry(gt, target_size=140)
    assert out.shape == (140, 140)
    assert out[:70].all() and not out[70:].any()


def test_align_geometry_detects_the_prediction_shape():
    gt = np.zeros((60, 120), dtype=bool)
    gt[20:40, 30:60] = True  # at target 140: 70x140, scale 7/6
    p, g, geo = align_geometry(gt, gt, target_size=140)
    assert geo == "original" and p.shape == (60, 120)
    pred = np.zeros((70, 140), dtype=bool)
    pred[:, :70] = True
    p, g, geo = align_geometry(pred, gt, target_size=140)
    assert geo == "model" and g.shape == (70, 140)
    np.testing.assert_array_equal(g, gt_to_model_geometry(gt, 140))
    assert g.sum() == pytest.approx(gt.sum() * (7 / 6) ** 2, rel=0.1)
    with pytest.raises(EvaluationError, match=r"shape 50x50 .* 60x120 .* 70x140"):
        align_geometry(np.zeros((50, 50)), gt, target_size=140, name="seq/f")


# ------------------------------------------------------------------ files


def save_palette(path, labels: np.ndarray) -> None:
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0] + [0] * (256 * 3 - 9))
    img.save(path)


def save_binary(path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def test_read_mask_modes(tmp_path):
    labels = np.zeros((20, 30), dtype=np.uint8)
    labels[2:6, 3:9] = 1
    labels[10:15, 20:25] = 2
    save_palette(tmp_path / "p.png", labels)
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), labels > 0)  # union of objects
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[5, 7, 2] = 9
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert read_mask(tmp_path / "c.png").sum() == 1 and read_mask(tmp_path / "c.png")[5, 7]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(EvaluationError, match="cannot read mask"):
        read_mask(tmp_path / "bad.png")


def make_sequence(root, n=8, shape=(60, 80), shifts=None):
    """gt/ (palette, two objects) and pred/ (binary L) folders; pred frame k is gt shifted by shifts[k]."""
    gt_dir, pred_dir = root / "gt", root / "pred"
    gt_dir.mkdir(parents=True)
    pred_dir.mkdir(parents=True)
    shifts = shifts or [0] * n
    gts, preds = [], []
    for k in range(n):
        labels = np.zeros(shape, dtype=np.uint8)
        labels[10:30, 10 + k : 30 + k] = 1
        labels[35:50, 50:70] = 2
        pred = np.roll(labels > 0, shifts[k], axis=1)
        save_palette(gt_dir / f"{k:05d}.png", labels)
        save_binary(pred_dir / f"{k:05d}.png", pred)
        gts.append(labels > 0)
        preds.append(pred)
    return gt_dir, pred_dir, gts, preds


def test_folder_evaluation_matches_arrays(tmp_path):
    gt_dir, pred_dir, gts, preds = make_sequence(tmp_path, shifts=[0, 0, 1, 1, 2, 4, 6, 8])
    (pred_dir / "99999.png").write_bytes((pred_dir / "00000.png").read_bytes())  # extra prediction: ignored
    res = evaluate_mask_folders(pred_dir, gt_dir)
    assert res.name == "gt" and res.frames == [f"{k:05d}" for k in range(8)]
    np.testing.assert_allclose(res.J, [region_similarity(p, g) for p, g in zip(preds, gts)])
    np.testing.assert_allclose(res.F, [boundary_f_measure(p, g) for p, g in zip(preds, gts)])
    assert res.J[0] == 1.0 and res.J[-1] < 0.7
    assert res.j_stats.decay > 0
    sub = evaluate_mask_folders(pred_dir, gt_dir, frames=["00002", "00005"])
    np.testing.assert_allclose(sub.J, res.J[[2, 5]])


def test_missing_predictions(tmp_path):
    gt_dir, pred_dir, gts, _ = make_sequence(tmp_path, n=5)
    (pred_dir / "00001.png").unlink()
    (pred_dir / "00003.png").unlink()
    with pytest.raises(EvaluationError, match="2 of 5 frames .* 00001, 00003 .*--allow-missing"):
        evaluate_mask_folders(pred_dir, gt_dir)
    res = evaluate_mask_folders(pred_dir, gt_dir, allow_missing=True)
    assert res.missing == ["00001", "00003"]
    np.testing.assert_allclose(res.J, [1, 0, 1, 0, 1])  # empty prediction on a non-empty ground truth
    with pytest.raises(EvaluationError, match="no ground-truth mask .* 00042"):
        evaluate_mask_folders(pred_dir, gt_dir, frames=["00042"])


def test_predictions_at_model_geometry(tmp_path):
    gt_dir, pred_dir, gts, _ = make_sequence(tmp_path, n=3)  # 60x80 -> target 140: 112x140 (round(7.5)=8 -> 112)
    for k, g in enumerate(gts):
        save_binary(pred_dir / f"{k:05d}.png", gt_to_model_geometry(g, 140))
    res = evaluate_mask_folders(pred_dir, gt_dir, target_size=140)
    assert res.geometry == ["model"] * 3
    np.testing.assert_allclose(res.J, 1.0)
    np.testing.assert_allclose(res.F, 1.0)
    with pytest.raises(EvaluationError, match="expected the ground truth's 60x80 or the model geometry 392x518"):
        evaluate_mask_folders(pred_dir, gt_dir)  # at target 518 that prediction size fits neither


def test_multi_sequence_layout(tmp_path):
    gt_a, pred_a, _, _ = make_sequence(tmp_path / "a", n=4)
    gt_b, pred_b, _, _ = make_sequence(tmp_path / "b", n=4, shifts=[3, 3, 3, 3])
    gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
    gt_root.mkdir()
    pred_root.mkdir()
    for name, g, p in (("seqa", gt_a, pred_a), ("seqb", gt_b, pred_b)):
        g.rename(gt_root / name)
        p.rename(pred_root / name)
    report = evaluate_masks(pred_root, gt_root)
    d = report.to_dict()
    assert list(d["sequences"]) == ["seqa", "seqb"]
    assert d["sequences"]["seqa"]["J"]["mean"] == 1.0
    jb = d["sequences"]["seqb"]["J"]["mean"]
    assert 0 < jb < 1
    assert d["overall"]["J"]["mean"] == pytest.approx(0.5 * (1 + jb))
    assert d["overall"]["num_sequences"] == 2 and d["overall"]["num_frames"] == 8
    (pred_root / "seqb").rename(tmp_path / "gone")
    with pytest.raises(EvaluationError, match="1 of 2 sequences .* seqb"):
        evaluate_masks(pred_root, gt_root)
    missing = evaluate_masks(pred_root, gt_root, allow_missing=True).to_dict()
    assert missing["sequences"]["seqb"]["J"]["mean"] == 0.0
    assert missing["sequences"]["seqb"]["missing"] == ["00000", "00001", "00002", "00003"]


def test_cli_masks(tmp_path, capsys):
    gt_dir, pred_dir, gts, preds = make_sequence(tmp_path, n=4, shifts=[0, 0, 5, 5])
    out = tmp_path / "r" / "masks.json"
    assert main(["eval", "masks", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "J-mean" in table and "gt" in table
    report = json.loads(out.read_text())
    expected_j = np.mean([region_similarity(p, g) for p, g in zip(preds, gts)])
    assert report["overall"]["J"]["mean"] == pytest.approx(expected_j)
    assert report["sequences"]["gt"]["per_frame"]["J"][0] == 1.0
    assert report["bound_th"] == 0.008 and report["target_size"] == 518
    (pred_dir / "00002.png").unlink()
    assert main(["eval", "masks", "--pred", str(pred_dir), "--gt", str(gt_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vggt4d eval: error:") and "00002" in err and "\n" not in err
    assert main(["eval", "masks", "--pred", str(tmp_path / "nope"), "--gt", str(gt_dir)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert math.isfinite(report["overall"]["F"]["decay"])
