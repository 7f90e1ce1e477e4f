"""Bad input through the real command line: one clear line naming the file, exit 2, no traceback,
no run folder left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from builders import write_colmap_text, write_noise_images, write_transforms


def run_train(data: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recon.cli.train", "--data", str(data), "--output", str(out), "--steps", "2",
         "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, out: Path, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists(), "a failed run must not leave a run folder"


def test_missing_image(tmp_path):
    root = write_colmap_text(tmp_path / "proj", n_images=3)
    (root / "images" / "img_001.png").unlink()
    out = tmp_path / "run"
    assert_one_line_error(run_train(root, out), out, "img_001.png")


def test_corrupt_image(tmp_path):
    tj = write_transforms(tmp_path / "scene", n=3)
    (tj.parent / "images" / "img_002.png").write_bytes(b"this is not a png at all")
    out = tmp_path / "run"
    assert_one_line_error(run_train(tj, out), out, "img_002.png")


def test_transforms_without_frames(tmp_path):
    tj = write_transforms(tmp_path / "scene", n=2, frames_override=[])
    out = tmp_path / "run"
    assert_one_line_error(run_train(tj, out), out, "transforms.json", "frames")


def test_transforms_non_finite_pose(tmp_path):
    tj = write_transforms(tmp_path / "scene", n=3)
    meta = json.loads(tj.read_text())
    meta["frames"][1]["transform_matrix"][0][3] = float("nan")
    tj.write_text(json.dumps(meta))
    out = tmp_path / "run"
    assert_one_line_error(run_train(tj, out), out, "transforms.json", "finite")


def test_colmap_without_registered_images(tmp_path):
    root = write_colmap_text(tmp_path / "proj", n_images=3, registered=False)
    out = tmp_path / "run"
    assert_one_line_error(run_train(root, out), out, "images")


def test_folder_without_images(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("no photos here")
    out = tmp_path / "run"
    assert_one_line_error(run_train(folder, out), out, "empty", "no images")


def test_unsupported_camera_model(tmp_path):
    root = write_colmap_text(tmp_path / "proj", camera_line="1 FOV 64 48 50 50 32 24 0.1")
    out = tmp_path / "run"
    assert_one_line_error(run_train(root, out), out, "cameras.txt", "FOV")


def test_image_size_disagrees_with_intrinsics(tmp_path):
    tj = write_transforms(tmp_path / "scene", n=3, size=(64, 48), image_size=(50, 50))
    out = tmp_path / "run"
    assert_one_line_error(run_train(tj, out), out, "img_000.png", "50")


def test_nonexistent_path(tmp_path):
    out = tmp_path / "run"
    assert_one_line_error(run_train(tmp_path / "nope", out), out, "nope")
