"""Dataset layouts (vggt4d_ros.evaluation.datasets) and ``vggt4d eval sequence`` end to end.

Tiny DAVIS / TUM RGB-D / Bonn layouts are built from the synthetic renderer. The plumbing is checked with
known answers through a stand-in for ``vggt4d run`` that writes the ground truth back (J = F = 1, ATE = 0), and
the real path runs the tiny fixture model on 4 frames at 112 pixels wide.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vggt4d_ros.cli import main
from vggt4d_ros.evaluation import EvaluationError
from vggt4d_ros.evaluation.datasets import list_sequences, open_sequence, read_rgb_list, stage_frames
from vggt4d_ros.evaluation.masks import evaluate_mask_folders, read_mask
from vggt4d_ros.evaluation.poses import read_tum
from vggt4d_ros.evaluation.sequence import RunSettings, ScoringSettings, evaluate_sequence
from vggt4d_ros.synthetic import render_scene
from vggt4d_ros.windows.trajectory import save_tum

NUM_FRAMES = 4
WIDTH, HEIGHT = 128, 96
TARGET = 112  # model geometry 84 x 112
GT_CLOCK_OFFSET_NS = 2_000_000  # the ground truth is sampled 2 ms after the frames


@pytest.fixture(scope="module")
def scene():
    return render_scene(num_frames=NUM_FRAMES, width=WIDTH, height=HEIGHT, seed=3, supersample=1)


def c2w(scene) -> np.ndarray:
    w2c = np.tile(np.eye(4), (scene.num_frames, 1, 1))
    w2c[:, :3, :] = scene.extrinsics
    return np.linalg.inv(w2c)


def tum_stamp(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{(ns % 1_000_000_000) // 1000:06d}"


def build_davis(root: Path, scene, name: str = "boxes") -> Path:
    img_dir = root / "JPEGImages" / "480p" / name
    ann_dir = root / "Annotations" / "480p" / name
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    for i in range(scene.num_frames):
        Image.fromarray(scene.images[i]).save(img_dir / f"{i:05d}.jpg", quality=95)
        ann = Image.fromarray(scene.dynamic_mask[i].astype(np.uint8), mode="P")
        ann.putpalette([0, 0, 0, 128, 0, 0] + [0] * 750)
        ann.save(ann_dir / f"{i:05d}.png")
    return root


def build_tum(root: Path, scene, name: str) -> Path:
    seq = root / name
    (seq / "rgb").mkdir(parents=True)
    lines = ["# color images", "# timestamp filename"]
    for i, ns in enumerate(scene.stamps_ns):
        stamp = tum_stamp(int(ns))
        Image.fromarray(scene.images[i]).save(seq / "rgb" / f"{stamp}.png")
        lines.append(f"{stamp} rgb/{stamp}.png")
    (seq / "rgb.txt").write_text("\n".join(lines) + "\n")
    save_tum(seq / "groundtruth.txt", scene.stamps_ns.astype(np.int64) + GT_CLOCK_OFFSET_NS, c2w(scene))
    return root


# ------------------------------------------------------------------ layouts


def test_davis_layout(tmp_path, scene):
    root = build_davis(tmp_path, scene)
    assert list_sequences("davis", root) == ["boxes"]
    seq = open_sequence("davis", root, "boxes")
    assert seq.frame_names == ["00000", "00001", "00002", "00003"] and seq.total_frames == 4
    assert seq.gt_masks == root / "Annotations" / "480p" / "boxes" and seq.gt_trajectory is None
    sel = open_sequence("DAVIS", root, "boxes", start=1, stride=2)
    assert sel.frame_names == ["00001", "00003"] and len(sel) == 2
    assert open_sequence("davis", root, "boxes", max_frames=3).frame_names == ["00000", "00001", "00002"]
    with pytest.raises(EvaluationError, match="leaves no frame"):
        open_sequence("davis", root, "boxes", start=4)
    with pytest.raises(EvaluationError, match="DAVIS frames not found"):
        open_sequence("davis", root, "nope")
    with pytest.raises(EvaluationError, match="unknown dataset 'kitti'"):
        open_sequence("kitti", root, "boxes")
    with pytest.raises(EvaluationError, match="--stride must be >= 1"):
        open_sequence("davis", root, "boxes", stride=0)
    (root / "Annotations" / "480p" / "boxes").rename(tmp_path / "moved")
    with pytest.raises(EvaluationError, match="DAVIS annotations not found"):
        open_sequence("davis", root, "boxes")


def test_tum_layout(tmp_path, scene):
    root = build_tum(tmp_path, scene, "rgbd_dataset_freiburg3_walking_xyz")
    assert list_sequences("tum", root) == ["rgbd_dataset_freiburg3_walking_xyz"]
    seq = open_sequence("tum", root, "rgbd_dataset_freiburg3_walking_xyz", stride=2)
    assert seq.frame_names == [tum_stamp(int(scene.stamps_ns[i])) for i in (0, 2)]
    assert seq.gt_masks is None and seq.gt_trajectory.name == "groundtruth.txt"
    assert [p.name for p in seq.images] == [f"{n}.png" for n in seq.frame_names]

    entries = read_rgb_list(root / "rgbd_dataset_freiburg3_walking_xyz" / "rgb.txt")
    assert len(entries) == NUM_FRAMES and entries[0][1].startswith("rgb/")
    bad = tmp_path / "bad.txt"
    bad.write_text("# x\nabc rgb/1.png\n")
    with pytest.raises(EvaluationError, match=r"bad.txt:2: timestamp 'abc'"):
        read_rgb_list(bad)
    (root / "rgbd_dataset_freiburg3_walking_xyz" / "rgb" / f"{seq.frame_names[1]}.png").unlink()
    with pytest.raises(EvaluationError, match="names images that do not exist"):
        open_sequence("tum", root, "rgbd_dataset_freiburg3_walking_xyz")
    with pytest.raises(EvaluationError, match="rgb.txt not found"):
        open_sequence("bonn", root, "rgbd_bonn_balloon")


def test_stage_frames(tmp_path, scene):
    root = build_tum(tmp_path / "ds", scene, "s")
    seq = open_sequence("tum", root, "s")
    staged = stage_frames(seq, tmp_path / "staged")
    files = sorted(p.name for p in staged.iterdir())
    assert files == [f"{n}.png" for n in seq.frame_names]
    np.testing.assert_array_equal(np.asarray(Image.open(staged / files[1])), scene.images[1])
    seq.frame_names = ["9.5", "10.5", "11.5", "12.5"]  # numeric order, not name order
    with pytest.raises(EvaluationError, match="do not sort in temporal order"):
        stage_frames(seq, tmp_path / "staged2")


# ------------------------------------------------------------------ sequence plumbing with known answers


def perfect_runner(scene, record: list):
    """Stand-in for ``vggt4d run`` that writes the ground truth as its output."""

    def run(ns: argparse.Namespace) -> int:
        record.append(ns)
        frames = sorted(Path(ns.input).iterdir())
        out = Path(ns.output)
        (out / "masks").mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(frames):
            Image.fromarray(scene.dynamic_mask[i].astype(np.uint8) * 255).save(out / "masks" / f"{f.stem}.png")
        save_tum(out / "poses_tum.txt", scene.stamps_ns.astype(np.int64), c2w(scene))
        (out / "summary.json").write_text(json.dumps({"timings_s": {"total": 0.5}}))
        return 0

    return run


def test_sequence_known_answers_davis(tmp_path, scene):
    root = build_davis(tmp_path / "davis", scene)
    record: list = []
    settings = RunSettings(weights="w.safetensors", config="c.json", device="cpu", refine=False, target_size=TARGET)
    report = evaluate_sequence(open_sequence("davis", root, "boxes"), tmp_path / "out", settings,
                               runner=perfect_runner(scene, record), selection={"start": 0})
    ns = record[0]
    assert ns.weights == "w.safetensors" and ns.config == "c.json" and ns.no_refine and ns.target_size == TARGET
    assert ns.output == str(tmp_path / "out" / "run") and ns.overwrite
    assert report["masks"]["overall"]["J"]["mean"] == 1.0 and report["masks"]["overall"]["F"]["mean"] == 1.0
    assert report["frames"]["selected"] == 4 and report["frames"]["start"] == 0
    assert report["run"]["timings_s"] == {"total": 0.5} and report["run"]["settings"]["refine"] is False
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json", "run"]  # staging removed
    with pytest.raises(EvaluationError, match="not empty"):
        evaluate_sequence(open_sequence("davis", root, "boxes"), tmp_path / "out", settings,
                          runner=perfect_runner(scene, record))


def test_sequence_known_answers_tum(tmp_path, scene):
    root = build_tum(tmp_path / "tum", scene, "s")
    settings = RunSettings(weights="w", target_size=TARGET)
    report = evaluate_sequence(open_sequence("tum", root, "s"), tmp_path / "out", settings,
                               runner=perfect_runner(scene, []))
    poses = report["poses"]
    assert poses["num_matched"] == NUM_FRAMES and poses["ate"]["rmse"] < 1e-6
    assert poses["scale"] == pytest.approx(1.0, abs=1e-6)
    strict = ScoringSettings(max_diff=0.001)  # the ground truth clock is 2 ms off
    with pytest.raises(EvaluationError, match="only 0 poses"):
        evaluate_sequence(open_sequence("tum", root, "s"), tmp_path / "out", settings, strict, overwrite=True,
                          runner=perfect_runner(scene, []))
    assert not (tmp_path / "out" / "report.json").exists()  # the old report does not survive a failed rerun


# ------------------------------------------------------------------ the tiny model end to end


def model_settings(fixtures_dir: Path) -> RunSettings:
    return RunSettings(weights=str(fixtures_dir / "tiny_dino_weights.safetensors"),
                       config=str(fixtures_dir / "tiny_dino_config.json"), device="cpu", target_size=TARGET)


def test_tiny_model_davis(tmp_path, scene, fixtures_dir):
    root = build_davis(tmp_path / "davis", scene)
    frames = open_sequence("davis", root, "boxes")
    report = evaluate_sequence(frames, tmp_path / "out", model_settings(fixtures_dir))
    run_dir = tmp_path / "out" / "run"
    assert sorted(p.stem for p in (run_dir / "masks").iterdir()) == frames.frame_names
    assert read_mask(run_dir / "masks" / "00000.png").shape == (HEIGHT, WIDTH)
    seq = report["masks"]["sequences"]["boxes"]
    assert seq["geometry"] == "original" and seq["num_frames"] == NUM_FRAMES
    again = evaluate_mask_folders(run_dir / "masks", frames.gt_masks)
    np.testing.assert_allclose(seq["per_frame"]["J"], again.J)
    np.testing.assert_allclose(seq["per_frame"]["F"], again.F)
    for key in ("J", "F"):
        assert 0.0 <= seq[key]["mean"] <= 1.0 and 0.0 <= seq[key]["recall"] <= 1.0
    assert set(report["run"]["timings_s"]) >= {"pass1", "pass2"}


def test_tiny_model_tum(tmp_path, scene, fixtures_dir):
    root = build_tum(tmp_path / "tum", scene, "rgbd_dataset_freiburg3_walking_static")
    frames = open_sequence("tum", root, "rgbd_dataset_freiburg3_walking_static")
    report = evaluate_sequence(frames, tmp_path / "out", model_settings(fixtures_dir))
    pred = read_tum(tmp_path / "out" / "run" / "poses_tum.txt")
    np.testing.assert_allclose(pred.timestamps, scene.stamps_ns / 1e9)  # frame times come from rgb.txt names
    poses = report["poses"]
    assert poses["num_matched"] == NUM_FRAMES
    assert np.isfinite(poses["ate"]["rmse"]) and poses["ate"]["rmse"] >= 0
    assert np.isfinite(poses["rpe_rot_deg"]["rmse"]) and poses["scale"] > 0


def test_tiny_model_bonn_through_the_cli(tmp_path, scene, fixtures_dir, capsys):
    root = build_tum(tmp_path / "bonn", scene, "rgbd_bonn_balloon")
    out = tmp_path / "out"
    argv = ["eval", "sequence", "--dataset", "bonn", "--root", str(root), "--sequence", "rgbd_bonn_balloon",
            "--output", str(out), "--weights", str(fixtures_dir / "tiny_dino_weights.safetensors"),
            "--config", str(fixtures_dir / "tiny_dino_config.json"), "--device", "cpu",
            "--target-size", str(TARGET), "--stride", "1", "--max-frames", "3", "--no-scale"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "bonn/rgbd_bonn_balloon: 3 frames" in printed and "ATE" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["poses"]["num_matched"] == 3 and report["poses"]["alignment"] == "se3"
    assert report["frames"]["max_frames"] == 3 and report["run"]["settings"]["target_size"] == TARGET
    assert main(argv) == 2  # the output folder is not empty now
    assert "not empty" in capsys.readouterr().err
    assert main([*argv[:5], str(tmp_path / "missing"), *argv[6:]]) == 2
    assert "dataset root" in capsys.readouterr().err
