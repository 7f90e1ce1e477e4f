"""recon-eval and recon-export on a real (tiny) run folder, through the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from recon.export.ply import read_ply
from recon.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "demo"
    subprocess.run(
        [sys.executable, "-m", "recon.cli.train", "--data", "demo", "--output", str(out), "--steps", "8",
         "--random-init-points", "600", "--no-progress", "--no-save-eval-renders"],
        check=True, capture_output=True, text=True, timeout=600,
    )
    return out


def test_eval_reproduces_training_time_numbers(run_dir, tmp_path):
    trained = json.loads((run_dir / "eval" / "results.json").read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "recon.cli.eval", str(run_dir), "--output", str(tmp_path / "ev"), "--no-save-renders"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    again = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert again["step"] == trained["step"] == 8
    assert again["psnr"] == pytest.approx(trained["psnr"], abs=1e-6)
    assert again["ssim"] == pytest.approx(trained["ssim"], abs=1e-6)
    assert again["protocol"]["test_views"] == trained["protocol"]["test_views"]


def test_export_ply_round_trips_the_checkpoint(run_dir, tmp_path):
    out = tmp_path / "scene.ply"
    proc = subprocess.run([sys.executable, "-m", "recon.cli.export", "ply", str(run_dir), "--output", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    params = load_checkpoint(run_dir / "checkpoints" / "latest.pt")["scene"]["params"]
    ply = read_ply(out)
    for name in ("means", "quats", "scales", "opacities", "sh0", "shN"):
        assert torch.equal(ply[name], params[name]), name


def test_eval_rejects_a_folder_that_is_not_a_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "recon.cli.eval", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(tmp_path) in proc.stderr and "checkpoints" in proc.stderr
