"""`recon-train --method surface` end to end on the CPU: eval JSON, checkpoint, resume, GLB/PLY export,
and a short run that must move the mesh towards the demo scene's true surfaces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.config import TrainConfig, train_config_from_dict
from recon.export.gltf import read_glb
from recon.surfaces.config import SurfaceConfig
from recon.training.trainer import Trainer

TINY = [
    "--surface.grid-levels", "4", "--surface.grid-log2-table", "10", "--surface.grid-finest-resolution", "32",
    "--surface.rays-per-step", "64", "--surface.samples-per-ray", "32", "--surface.occupancy-resolution", "16",
    "--surface.mesh-resolution", "32", "--surface.occupancy-warmup-steps", "16",
]


def train_cli(out: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from recon.cli.train import entrypoint; entrypoint()", "--data", "demo", "--method",
           "surface", "--steps", str(steps), "--downscale", "8", "--output", str(out), "--no-progress", *TINY, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_cli_demo_train_eval_checkpoint_resume_export(tmp_path):
    run = tmp_path / "run"
    proc = train_cli(run, 30, "--eval-every", "30")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "surface" and summary["steps"] == 30
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["step"] == 30 and results["method"] == "surface" and np.isfinite(results["psnr"])
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["method"] == "surface" and ckpt["step"] == 30
    # config.yml round-trips, including the surface section
    import yaml

    cfg = train_config_from_dict(yaml.safe_load((run / "config.yml").read_text()))
    assert cfg.method == "surface" and cfg.surface.grid_levels == 4 and cfg.surface.rays_per_step == 64
    # exports: a GLB with one triangle mesh, and the PLY in world coordinates
    doc, _ = read_glb((run / "export" / "surface.glb").read_bytes())
    prim = doc["meshes"][0]["primitives"][0]
    assert doc["accessors"][prim["indices"]]["count"] >= 3 and "COLOR_0" in prim["attributes"]
    assert doc["asset"]["extras"]["recon"]["method"] == "surface"
    header = (run / "export" / "surface.ply").read_bytes()[:400].decode("ascii", "replace")
    assert "element face" in header
    # Khronos glTF-Validator when the test clients are installed (CI requires them: the harness
    # fails instead of skipping there)
    from clients import validate_glb

    try:
        report = validate_glb(run / "export" / "surface.glb")[0]
    except pytest.skip.Exception:
        report = None
    if report is not None:
        assert report["numErrors"] == 0, report
    # resume: the same command with more steps continues from step 30
    proc = train_cli(run, 40, "--eval-every", "40")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["step"] == 40


def test_resume_is_bit_exact(tmp_path):
    """20 steps straight == 10 steps, checkpoint, reload, 10 more (parameters equal)."""
    small = SurfaceConfig(grid_levels=4, grid_log2_table=10, grid_finest_resolution=32, rays_per_step=32,
                          samples_per_ray=24, occupancy_resolution=16, mesh_resolution=16, occupancy_every=4)

    def make(out, steps):
        cfg = TrainConfig(data="demo", method="surface", steps=steps, downscale=8, output=out, progress=False,
                          holdout_every=0, checkpoint_every=10, surface=small)
        t = Trainer(cfg)
        t.setup()
        return t

    a = make(tmp_path / "a", 20)
    for _ in range(20):
        a.train_step(a.step)
        a.step += 1
    b = make(tmp_path / "b", 20)
    for _ in range(10):
        b.train_step(b.step)
        b.step += 1
    b.save()
    c = make(tmp_path / "b", 20)  # resumes from b's checkpoint
    assert c.step == 10
    for _ in range(10):
        c.train_step(c.step)
        c.step += 1
    for name, p in a.scene.params.items():
        assert torch.equal(p.detach(), c.scene.params[name].detach()), name
    assert torch.equal(a.scene.occupancy.binary, c.scene.occupancy.binary)


@pytest.mark.slow
def test_short_training_moves_mesh_towards_demo_surfaces(tmp_path):
    """A few hundred CPU steps on the demo: the extracted mesh's Chamfer distance to the true surfaces
    must fall well below that of the initial sphere."""
    from recon.datasets.demo import demo_ground_truth
    from recon.eval.geometry import compare_point_sets, sample_surface

    small = SurfaceConfig(grid_levels=4, grid_log2_table=12, grid_finest_resolution=64, rays_per_step=256,
                          samples_per_ray=40, occupancy_resolution=24)
    cfg = TrainConfig(data="demo", method="surface", steps=300, downscale=4, output=tmp_path / "run", progress=False,
                      holdout_every=0, surface=small)
    trainer = Trainer(cfg)
    trainer.setup()
    gt_pts, gt_n = demo_ground_truth().sample_surface(20_000, seed=0)
    diag = float(np.linalg.norm(gt_pts.max(0) - gt_pts.min(0)))

    def chamfer() -> float:
        mesh = trainer.scene.extract_mesh(48, colors=False)
        pts, nrm = sample_surface(mesh.vertices.astype(np.float64), mesh.faces.astype(np.int64), 20_000)
        return compare_point_sets(pts, gt_pts, nrm, gt_n, gt_diagonal=diag).chamfer_pct_diag

    before = chamfer()
    while trainer.step < trainer.steps:
        trainer.train_step(trainer.step)
        trainer.step += 1
    after = chamfer()
    # seen: 5.97 % -> 3.37 % of the scene diagonal after 300 steps
    assert after < 0.7 * before, (before, after)
