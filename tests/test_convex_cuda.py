"""3D smooth convexes: the CUDA projection + footprint policy vs the PyTorch reference (outputs and every
gradient). Runs only with a GPU: ``pytest -m cuda``.

Tolerances as in test_cuda_core.py: CUDA works in float32 with fast-math exp/log and its own summation
order, the oracle is the reference in float64; a (pixel, convex) pair within rounding of alpha_min or
t_min may flip, so images bound the fraction of pixels off by > 1e-3 and gradients use the relative L2
error per tensor.
"""

from __future__ import annotations

import functools

import pytest
import torch

import helpers_cuda
from helpers_cuda import DEV, rel, render_both
from recon.rasterizers import RasterSettings
from recon.rasterizers.convexes import project_convexes_cuda, render_convexes
from recon.rasterizers.reference.convex import project_convexes

pytestmark = pytest.mark.cuda

NAMES = ("points", "deltas", "sigmas", "opacities", "colors")
camera = functools.partial(helpers_cuda.camera, rotate=True)
check_images = functools.partial(helpers_cuda.check_images, mean_abs=3e-5)


@pytest.fixture(scope="module")
def cuda_ops():
    from recon.rasterizers import cuda as rc

    assert rc.is_available(), rc.unavailable_reason()
    return rc


def scene(n, width, height, seed, k=6, sh_degree=None, size=0.05, soft=False):
    g = torch.Generator().manual_seed(seed)
    f = 0.9 * max(width, height)
    z = torch.rand(n, generator=g) * 4 + 1.0
    x = (torch.rand(n, generator=g) - 0.5) * 1.3 * width / f * z
    y = (torch.rand(n, generator=g) - 0.5) * 1.3 * height / f * z
    c = torch.stack([x, y, z], -1)
    points = c[:, None] + torch.randn(n, k, 3, generator=g) * size * (0.5 + torch.rand(n, 1, 1, generator=g))
    deltas = (torch.randn(n, generator=g) * 0.5 + (0.0 if soft else 1.0)).exp()
    sigmas = (torch.randn(n, generator=g) * 0.5 + (-3.0 if soft else -1.0)).exp()
    opac = torch.rand(n, generator=g) * 0.9 + 0.05
    colors = torch.rand(n, 3, generator=g) if sh_degree is None else torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.3
    return points, deltas, sigmas, opac, colors


def render_convexes_both(inputs, viewmat, K, width, height, *, sh_degree=None, background=None, settings=RasterSettings(),
                         render_depth=False, depth_law="linear", seed=0):  # fmt: skip
    def render(leaves, dev, dt, backend):
        bg = None if background is None else background.to(dev, dt)
        sig = leaves[2] * 1.0  # a non-leaf, as the scene hands it over: retain_grad gives dL/dsigma
        out = render_convexes(leaves[0], leaves[1], sig, *leaves[3:], viewmat.to(dev, dt), K.to(dev, dt), width, height,
                              sh_degree=sh_degree, background=bg, settings=settings, render_depth=render_depth,
                              depth_law=depth_law, backend=backend)  # fmt: skip
        assert out.meta["backend"] == backend
        out.meta["means2d"].retain_grad()
        out.meta["sigmas"].retain_grad()
        return out

    channels = 3 if sh_degree is not None else inputs[4].shape[-1]
    return render_both(render, inputs, width, height, channels, render_depth=render_depth, seed=seed)


def check_grads(outs, tol=1e-2):
    helpers_cuda.check_grads(outs, NAMES, ("means2d", "sigmas"), tol=tol)


def test_policy_registered(cuda_ops):
    from recon.rasterizers.cuda import _backend

    assert "ConvexFootprint" in _backend.footprints()
    assert hasattr(torch.ops.recon, "project_convexes_fwd")


@pytest.mark.parametrize("width,height", [(64, 48), (131, 77)])
@pytest.mark.parametrize("sh_degree", [0, 3])
@pytest.mark.parametrize("k", [4, 6, 8])
def test_render_matches_reference(cuda_ops, width, height, sh_degree, k):
    inputs = scene(250, width, height, seed=width + k + sh_degree, k=k, sh_degree=sh_degree)
    viewmat, K = camera(width, height, seed=width + k)
    outs = render_convexes_both(inputs, viewmat, K, width, height, sh_degree=sh_degree, seed=width + k)
    oc, orf = outs["cuda"][0], outs["ref"][0]
    check_images(oc.image, orf.image, "image")
    check_images(oc.alpha, orf.alpha, "alpha")
    vis = orf.meta["radii"] > 0
    assert vis.sum() > 50
    assert (oc.meta["radii"].cpu() > 0).eq(vis).float().mean() > 0.99
    both = vis & (oc.meta["radii"].cpu() > 0)
    torch.testing.assert_close(oc.meta["depths"].detach().cpu().double(), orf.meta["depths"].detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(oc.meta["means2d"].detach().cpu()[both].double(), orf.meta["means2d"].detach()[both], rtol=1e-4, atol=1e-3)
    assert (oc.meta["hull_counts"].cpu()[both] == orf.meta["hull_counts"][both]).float().mean() > 0.99
    assert (oc.meta["rects"].cpu()[both] - orf.meta["rects"][both]).abs().max() <= 1
    check_grads(outs)


@pytest.mark.parametrize("depth_law", ["sqrt", "none"])
def test_depth_laws_background_depth(cuda_ops, depth_law):
    width, height = 93, 61
    inputs = scene(300, width, height, seed=11, sh_degree=None)
    viewmat, K = camera(width, height, seed=3)
    bg = torch.tensor([0.2, 0.5, 0.1])
    outs = render_convexes_both(inputs, viewmat, K, width, height, background=bg, render_depth=True, depth_law=depth_law, seed=5)
    check_images(outs["cuda"][0].image, outs["ref"][0].image, "image")
    check_images(outs["cuda"][0].depth, outs["ref"][0].depth, "depth", mean_abs=3e-4, max_abs=0.5)
    check_grads(outs)


def test_soft_edges_and_tile_size_8(cuda_ops):
    """Soft initial-like edges (wide supports, many tiles per convex) with 8 px tiles."""
    width, height = 80, 64
    inputs = scene(150, width, height, seed=21, sh_degree=1, soft=True)
    viewmat, K = camera(width, height, seed=4)
    outs = render_convexes_both(inputs, viewmat, K, width, height, sh_degree=1, settings=RasterSettings(tile_size=8), seed=9)
    check_images(outs["cuda"][0].image, outs["ref"][0].image, "image")
    check_grads(outs, tol=2e-2)


def test_exact_tiles_change_nothing_but_the_count(cuda_ops):
    from recon.rasterizers.convexes import render_convexes_cuda

    width, height = 120, 90
    points, deltas, sigmas, opac, colors = (t.to(DEV) for t in scene(400, width, height, seed=31, sh_degree=None, soft=True))
    viewmat, K = camera(width, height, seed=8)
    args = (points, deltas, sigmas, opac, colors, viewmat.to(DEV), K.to(DEV), width, height)
    exact = render_convexes_cuda(*args, exact_tiles=True)
    rect = render_convexes_cuda(*args, exact_tiles=False)
    assert exact.meta["n_isects"] < rect.meta["n_isects"]
    torch.testing.assert_close(exact.image, rect.image, atol=1e-6, rtol=0)


def test_batched_cameras_sum_gradients(cuda_ops):
    width, height = 72, 56
    inputs = [t.to(DEV) for t in scene(200, width, height, seed=41, sh_degree=2)]
    cams = [camera(width, height, seed=s) for s in (1, 2)]
    viewmats = torch.stack([c[0] for c in cams]).to(DEV)
    Ks = torch.stack([c[1] for c in cams]).to(DEV)
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    out = render_convexes(*leaves, viewmats, Ks, width, height, sh_degree=2, backend="cuda")
    out.image.square().sum().backward()
    total = [t.grad.clone() for t in leaves]
    singles = [torch.zeros_like(t) for t in inputs]
    for i in range(2):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        o = render_convexes(*leaves, viewmats[i], Ks[i], width, height, sh_degree=2, backend="cuda")
        torch.testing.assert_close(o.image, out.image[i], atol=1e-5, rtol=0)
        o.image.square().sum().backward()
        for s, t in zip(singles, leaves):
            s += t.grad
    for n, a, b in zip(NAMES, total, singles):
        assert rel(a, b) < 1e-4, n


def test_projection_matches_reference(cuda_ops):
    width, height = 101, 67
    points, deltas, sigmas, opac, _ = scene(500, width, height, seed=51, k=7)
    viewmat, K = camera(width, height, seed=5)
    pc = project_convexes_cuda(points.to(DEV), deltas.to(DEV), sigmas.to(DEV), opac.to(DEV), viewmat[None].to(DEV),
                               K[None].to(DEV), width, height)  # fmt: skip
    pr = project_convexes(points, deltas, sigmas, opac, viewmat, K, width, height)
    both = (pc.radii[0].cpu() > 0) & (pr.radii > 0)
    assert both.sum() > 300
    rc, rr = pc.records[0].cpu()[both], pr.records.detach()[both]
    torch.testing.assert_close(rc[:, 26], rr[:, 26])  # hull sizes
    # edge coefficients in the record frame: compare the footprint-relevant A_j at the centre offsets
    torch.testing.assert_close(rc, rr, rtol=2e-3, atol=2e-3)
    assert (pc.rects[0].cpu()[both] != pr.rects[both]).any(-1).float().mean() < 0.02


def test_nothing_visible_is_finite(cuda_ops):
    width, height = 40, 30
    points, deltas, sigmas, opac, colors = (t.to(DEV) for t in scene(50, width, height, seed=61, sh_degree=0))
    points = points.clone()
    points[..., 2] = -points[..., 2]  # everything behind the camera
    leaves = [t.clone().requires_grad_(True) for t in (points, deltas, sigmas, opac, colors)]
    viewmat, K = camera(width, height, seed=0, rotate=False)
    out = render_convexes(*leaves, viewmat.to(DEV), K.to(DEV), width, height, sh_degree=0, backend="cuda")
    out.image.sum().backward()
    assert (out.meta["radii"] == 0).all() and out.meta["n_isects"] == 0
    for t in leaves:
        assert torch.isfinite(t.grad).all() and (t.grad == 0).all()
