"""``vggt4d run`` end to end with the tiny fixture model: folder, video and bag inputs; files checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vggt4d_ros.bags import write_camera_bag
from vggt4d_ros.cli import main
from vggt4d_ros.inputs import InputError, read_frames
from vggt4d_ros.synthetic import render_scene, save_sequence
from vggt4d_ros.windows.trajectory import read_tum

N = 6


@pytest.fixture(scope="module")
def scene():
    return render_scene(num_frames=N, width=160, height=120, seed=3)


@pytest.fixture(scope="module")
def model_args(fixtures_dir):
    return ["--weights", str(fixtures_dir / "tiny_dino_weights.safetensors"),
            "--config", str(fixtures_dir / "tiny_dino_config.json"), "--device", "cpu", "--target-size", "140"]


def _check_output(out: Path, names: list[str], size_hw: tuple[int, int]) -> None:
    h, w = size_hw
    for name in names:
        mask = np.asarray(Image.open(out / "masks" / f"{name}.png"))
        assert mask.shape == (h, w) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        ov = np.asarray(Image.open(out / "overlay" / f"{name}.png"))
        assert ov.shape == (h, w, 3)
        depth = np.load(out / "depth" / f"{name}.npy")
        assert depth.dtype == np.float32 and depth.ndim == 2 and np.isfinite(depth).all() and (depth > 0).all()
        model_mask = np.asarray(Image.open(out / "masks_model" / f"{name}.png"))
        assert model_mask.shape == depth.shape
    stamps, poses = read_tum(out / "poses_tum.txt")
    assert len(stamps) == len(names) and poses.shape == (len(names), 4, 4)
    R = poses[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-5)
    intr = json.loads((out / "intrinsics.json").read_text())["frames"]
    assert [f["name"] for f in intr] == names
    K = np.array(intr[0]["K"])
    assert K.shape == (3, 3) and K[0, 0] > 0 and K[2, 2] == 1.0
    # principal point maps back to the centre of the original image
    assert abs(K[0, 2] - w / 2) < 1.0 and abs(K[1, 2] - h / 2) < 1.0
    header = (out / "static_cloud.ply").read_bytes()[:300].decode("ascii", "replace")
    assert header.startswith("ply\nformat binary_little_endian 1.0") and "property uchar red" in header
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_frames"] == len(names) and summary["static_points"] > 0
    assert not list(out.parent.glob(f".{out.name}.partial-*"))


def test_run_on_image_folder(tmp_path, scene, model_args):
    src = save_sequence(scene, tmp_path / "seq")
    frames_dir = src / "images" if (src / "images").is_dir() else src
    out = tmp_path / "out"
    assert main(["run", "--input", str(frames_dir), "--output", str(out), *model_args]) == 0
    names = sorted(p.stem for p in frames_dir.glob("*.png"))
    _check_output(out, names, (120, 160))
    assert json.loads((out / "summary.json").read_text())["pass2_mask"] == "coarse"
    # refusing to overwrite, then --overwrite with --no-refine / --max-frames / --stride
    assert main(["run", "--input", str(frames_dir), "--output", str(out), *model_args]) == 2
    assert main(["run", "--input", str(frames_dir), "--output", str(out), *model_args, "--overwrite",
                 "--no-refine", "--max-frames", "3", "--stride", "2", "--pass2-mask", "refined"]) == 0
    _check_output(out, names[::2][:3], (120, 160))
    assert json.loads((out / "summary.json").read_text())["pass2_mask"] == "refined"


def test_run_on_bag_and_video(tmp_path, scene, model_args):
    bag = write_camera_bag(tmp_path / "bag", scene.images, scene.stamps_ns, intrinsics=scene.intrinsics,
                           storage="sqlite3")
    out = tmp_path / "out_bag"
    assert main(["run", "--input", str(bag), "--output", str(out), *model_args]) == 0
    _check_output(out, [f"{i:06d}" for i in range(N)], (120, 160))
    stamps, _ = read_tum(out / "poses_tum.txt")
    np.testing.assert_array_equal(stamps, scene.stamps_ns)

    import av  # PyAV: a dev/CI requirement (the video input path)
    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for img in scene.images:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "out_video"
    assert main(["run", "--input", str(video), "--output", str(out), *model_args]) == 0
    _check_output(out, [f"{i:06d}" for i in range(N)], (120, 160))


def test_bad_inputs_fail_cleanly(tmp_path, model_args, capsys):
    out = tmp_path / "out"
    assert main(["run", "--input", str(tmp_path / "missing"), "--output", str(out), *model_args]) == 2
    assert "input not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["run", "--input", str(empty), "--output", str(out), *model_args]) == 2
    assert "no images" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="unsupported input"):
        read_frames(tmp_path / "notes.txt")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    assert main(["run", "--input", str(broken), "--output", str(out), *model_args]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert not out.exists()


def test_demo_data_writes_folder_and_bag(tmp_path):
    assert main(["demo-data", str(tmp_path / "seq"), "--frames", "4", "--width", "64", "--height", "48",
                 "--bag", str(tmp_path / "bag")]) == 0
    frames = read_frames(tmp_path / "seq")
    assert len(frames) == 4 and frames[0].image.shape == (48, 64, 3)
    from_bag = read_frames(tmp_path / "bag")
    assert len(from_bag) == 4
    for a, b in zip(frames, from_bag):
        np.testing.assert_array_equal(a.image, b.image)


def test_cli_without_command_prints_help(capsys):
    assert main([]) == 2
    assert "replay" in capsys.readouterr().out
