"""Surface method on a GPU: nerfacc marcher and compositing against the PyTorch twins; a short run."""

from __future__ import annotations

import math

import pytest
import torch

from recon.surfaces.neus import accumulate, neus_alpha, weights_from_alpha
from recon.surfaces.occupancy import OccupancyGrid, nerfacc_available

pytestmark = pytest.mark.cuda

CENTER = torch.tensor([0.5, 0.48, 0.52])
RADIUS = 0.27


def sphere_sdf(x):
    return (x - CENTER.to(x.device)).norm(dim=-1) - RADIUS


def render_sphere(grid, o, d, use_nerfacc, inv_s=400.0, step=math.sqrt(3) / 256):
    s = grid.march(o, d, step_size=step, use_nerfacc=use_nerfacc)
    t = 0.5 * (s.t_starts + s.t_ends)
    x = o[s.ray_indices] + t[:, None] * d[s.ray_indices]
    n = x - CENTER.to(x.device)
    n = n / n.norm(dim=-1, keepdim=True)
    cos = (d[s.ray_indices] * n).sum(-1).clamp(max=0)
    a = neus_alpha(sphere_sdf(x), cos, s.t_ends - s.t_starts, torch.tensor(inv_s, device=x.device))
    w, _ = weights_from_alpha(a, s.ray_indices, s.n_rays, use_nerfacc=use_nerfacc)
    return accumulate(w, None, s.ray_indices, s.n_rays)[:, 0], accumulate(w, t[:, None], s.ray_indices, s.n_rays)[:, 0]


def rays(n, device):
    g = torch.Generator().manual_seed(0)
    o = torch.tensor([0.5, 0.5, -1.0]) + 0.0 * torch.rand(n, 3, generator=g)
    target = torch.rand(n, 3, generator=g) * 0.8 + 0.1
    target[:, 2] = 0.5
    d = target - o
    return o.to(device), (d / d.norm(dim=-1, keepdim=True)).to(device)


@pytest.mark.skipif(not nerfacc_available(), reason="nerfacc is not installed")
def test_nerfacc_marcher_matches_torch_marcher():
    grid = OccupancyGrid(64, "cuda")
    grid.update(sphere_sdf, 400.0, warmup=True)
    o, d = rays(4096, "cuda")
    op_t, depth_t = render_sphere(grid, o, d, use_nerfacc=False)
    op_n, depth_n = render_sphere(grid, o, d, use_nerfacc=True)
    assert (op_t - op_n).abs().max() < 0.05
    hit = (op_t > 0.99) & (op_n > 0.99)
    assert hit.sum() > 500
    assert (depth_t[hit] - depth_n[hit]).abs().max() < 2 * math.sqrt(3) / 256


@pytest.mark.skipif(not nerfacc_available(), reason="nerfacc is not installed")
def test_nerfacc_weights_match_torch():
    g = torch.Generator(device="cuda").manual_seed(1)
    counts = torch.randint(0, 40, (300,), device="cuda", generator=g)
    ri = torch.repeat_interleave(torch.arange(300, device="cuda"), counts)
    alphas = torch.rand(ri.numel(), device="cuda", generator=g) * 0.3
    w_t, tr_t = weights_from_alpha(alphas, ri, 300, use_nerfacc=False)
    w_n, tr_n = weights_from_alpha(alphas, ri, 300, use_nerfacc=True)
    assert torch.allclose(w_t, w_n, atol=1e-5)
    assert torch.allclose(tr_t, tr_n, atol=1e-5)


def test_surface_training_on_gpu(tmp_path):
    from recon.config import TrainConfig
    from recon.surfaces.config import SurfaceConfig
    from recon.training.trainer import Trainer

    cfg = TrainConfig(data="demo", method="surface", steps=300, output=tmp_path / "run", progress=False, device="cuda",
                      surface=SurfaceConfig(mesh_resolution=128, rays_per_step=2048))
    trainer = Trainer(cfg)
    trainer.setup()
    first = trainer.train_step(0)
    trainer.step = 1
    summary = trainer.train()
    assert summary["eval"]["psnr"] > first["psnr"] + 3.0
    assert (tmp_path / "run" / "export" / "surface.glb").stat().st_size > 1000
