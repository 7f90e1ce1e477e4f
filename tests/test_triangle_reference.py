"""Triangle splats, PyTorch reference: footprint, projection, bound and compositing (float64 gradchecks)."""

from __future__ import annotations

import math

import pytest
import torch

from recon.rasterizers.reference.composite import composite
from recon.rasterizers.reference.triangle import (
    TriangleSettings,
    project_triangles,
    triangle_bary_footprint,
    triangle_footprint,
)
from recon.rasterizers.triangles import render_triangles, render_triangles_reference
from recon.rasterizers.types import RasterSettings

F64 = torch.float64


def _camera(width=24, height=18, f=20.0, dtype=F64):
    viewmat = torch.eye(4, dtype=dtype)
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=dtype)
    return viewmat, K


def _look_from(eye, target=(0.0, 0.0, 3.0), dtype=F64):
    """A world-to-camera matrix looking from ``eye`` at ``target`` (OpenCV axes, y down)."""
    eye = torch.tensor(eye, dtype=dtype)
    fwd = torch.tensor(target, dtype=dtype) - eye
    fwd = fwd / fwd.norm()
    up = torch.tensor([0.0, -1.0, 0.0], dtype=dtype)
    right = torch.linalg.cross(fwd, up)
    right = right / right.norm()
    down = torch.linalg.cross(fwd, right)
    R = torch.stack([right, down, fwd])
    vm = torch.eye(4, dtype=dtype)
    vm[:3, :3] = R
    vm[:3, 3] = -R @ eye
    return vm


def _random_triangles(n, seed=0, dtype=F64, spread=0.6, size=0.35, depth=3.0):
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * 2 * spread
    centres[:, 2] = centres[:, 2] * 0.5 + depth
    offs = (torch.rand(n, 3, 3, generator=g, dtype=dtype) - 0.5) * 2 * size
    verts = centres[:, None, :] + offs
    opac = 0.3 + 0.65 * torch.rand(n, generator=g, dtype=dtype)
    sig = 0.3 + 2.0 * torch.rand(n, generator=g, dtype=dtype)
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    vcolors = torch.rand(n, 3, 3, generator=g, dtype=dtype)
    return verts, opac, sig, colors, vcolors


LOOSE = TriangleSettings(min_inradius=0.0, min_extent=0.0)


def _records(bary=True, seed=0):
    verts, opac, sig, *_ = _random_triangles(6, seed)
    vm, K = _camera()
    proj = project_triangles(verts, opac, sig, vm, K, 24, 18, RasterSettings(), LOOSE, barycentric=bary)
    assert bool(proj.valid.all())
    return proj


# ---------------------------------------------------------------------------------------------------
# footprint
# ---------------------------------------------------------------------------------------------------
def test_footprint_values_incentre_edges_outside():
    a = torch.tensor([[[2.0, 2.0], [12.0, 3.0], [5.0, 11.0]]], dtype=F64)
    verts = torch.cat([a * 0.1, torch.ones(1, 3, 1, dtype=F64)], dim=-1)  # z = 1, f = 10 -> pixels = a
    vm = torch.eye(4, dtype=F64)
    K = torch.tensor([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 1]], dtype=F64)
    proj = project_triangles(verts, torch.ones(1, dtype=F64), torch.tensor([0.7], dtype=F64), vm, K, 16, 16,
                             RasterSettings(), LOOSE, barycentric=True)  # fmt: skip
    assert torch.allclose(proj.verts2d, a)
    rec = proj.records
    lens = (a.roll(-1, 1) - a).norm(dim=-1)[0]
    inc = (lens[1] * a[0, 0] + lens[2] * a[0, 1] + lens[0] * a[0, 2]) / lens.sum()
    w_inc = triangle_footprint(rec, inc[None])
    assert torch.allclose(w_inc, torch.ones(1, dtype=F64))
    mid = 0.5 * (a[0, 0] + a[0, 1])  # on an edge
    assert float(triangle_footprint(rec, mid[None])) == pytest.approx(0.0, abs=1e-9)
    assert float(triangle_footprint(rec, torch.tensor([[14.0, 14.0]], dtype=F64))) == 0.0
    # halfway between incentre and an edge midpoint: u = 1/2 -> w = 0.5^sigma
    half = 0.5 * (inc + mid)
    assert float(triangle_footprint(rec, half[None])) == pytest.approx(0.5**0.7, rel=1e-9)
    # barycentric weights reproduce the vertices and a known interior point
    for j in range(3):
        b = triangle_bary_footprint.color_weights(rec, a[0, j][None])
        assert torch.allclose(b, torch.eye(3, dtype=F64)[j][None], atol=1e-12)
    p = 0.2 * a[0, 0] + 0.3 * a[0, 1] + 0.5 * a[0, 2]
    assert torch.allclose(triangle_bary_footprint.color_weights(rec, p[None]), torch.tensor([[0.2, 0.3, 0.5]], dtype=F64))


def test_footprint_grid_matches_pointwise():
    rec = _records(bary=False).records
    xs = torch.arange(24, dtype=F64) + 0.5
    ys = torch.arange(18, dtype=F64) + 0.5
    grid = triangle_footprint.grid(rec, xs.expand(6, -1), ys.expand(6, -1))
    pix = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]), dim=-1)
    point = triangle_footprint(rec[:, None, None, :], pix[None])
    assert grid.shape == (6, 18, 24)
    assert torch.allclose(grid, point)
    assert float(grid.sum()) > 1.0


def _interior_pixels(rec, k=5, seed=1):
    """``k`` random points strictly inside each record's triangle (away from the max ties)."""
    g = torch.Generator().manual_seed(seed)
    n = rec.shape[0]
    pts = []
    while len(pts) < k:
        p = torch.rand(n, 2, generator=g, dtype=F64) * torch.tensor([24.0, 18.0], dtype=F64)
        w = triangle_footprint(rec, p)
        ok = bool((w > 0.05).all())
        if ok:
            pts.append(p)
        else:  # pull the failing ones towards the incentre proxy: retry with a fresh draw
            continue
    return torch.stack(pts, 1)  # [N, k, 2]


def _inside_points(proj, k=4, seed=3):
    g = torch.Generator().manual_seed(seed)
    a = proj.verts2d
    bc = torch.rand(a.shape[0], k, 3, generator=g, dtype=F64) + 0.15
    bc = bc / bc.sum(-1, keepdim=True)
    return torch.einsum("nkv,nvd->nkd", bc, a)


@pytest.mark.parametrize("bary", [False, True])
def test_footprint_gradcheck_float64(bary):
    proj = _records(bary=bary)
    pix = _inside_points(proj)
    rec = proj.records.detach()[:, None, :].expand(-1, pix.shape[1], -1).clone().requires_grad_(True)
    fp = triangle_bary_footprint if bary else triangle_footprint
    assert torch.autograd.gradcheck(lambda r: fp(r, pix), (rec,), eps=1e-7, atol=1e-6)
    if bary:
        assert torch.autograd.gradcheck(lambda r: fp.color_weights(r, pix), (rec,), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("stopgrad", [True, False])
@pytest.mark.parametrize("bary", [False, True])
def test_projection_gradcheck_float64(stopgrad, bary):
    verts, opac, sig, *_ = _random_triangles(4, seed=2)
    vm = _look_from([0.6, -0.4, -0.3])  # an oblique camera (rotation + translation)
    _, K = _camera()
    tri = TriangleSettings(min_inradius=0.0, min_extent=0.0, stopgrad_inradius=stopgrad)
    proj0 = project_triangles(verts, opac, sig, vm, K, 24, 18, RasterSettings(), tri, barycentric=bary)
    assert int(proj0.valid.sum()) >= 3

    def f(v, s):
        p = project_triangles(v, opac, s, vm, K, 24, 18, RasterSettings(), tri, barycentric=bary)
        if stopgrad:  # the normaliser is a constant by construction: check everything else
            assert not p.records[:, 9].requires_grad or p.records.grad_fn is not None
            return torch.cat([p.records[:, :9], p.records[:, 10:]], dim=1), p.depths, p.verts2d
        return p.records, p.depths, p.verts2d

    v = verts.clone().requires_grad_(True)
    s = sig.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (v, s), eps=1e-7, atol=1e-6)
    if stopgrad:  # and the normaliser really receives no gradient
        p = project_triangles(v, opac, s, vm, K, 24, 18, RasterSettings(), tri, barycentric=bary)
        (g,) = torch.autograd.grad(p.records[:, 9].sum() + 0.0 * p.depths.sum(), v)
        assert float(g.abs().sum()) == 0.0


def test_stopgrad_inradius_switch_changes_vertex_gradient():
    verts, opac, sig, colors, _ = _random_triangles(5, seed=4)
    vm, K = _camera()
    target = torch.rand(18, 24, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    grads = []
    for stop in (True, False):
        v = verts.clone().requires_grad_(True)
        tri = TriangleSettings(min_inradius=0.0, min_extent=0.0, stopgrad_inradius=stop)
        out = render_triangles_reference(v, opac, sig, colors, vm, K, 24, 18, triangle_settings=tri)
        ((out.image - target) ** 2).sum().backward()
        grads.append(v.grad)
    assert torch.isfinite(grads[0]).all() and torch.isfinite(grads[1]).all()
    assert not torch.allclose(grads[0], grads[1])


# ---------------------------------------------------------------------------------------------------
# bound and culling
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.05, 1.0, 3.0])
def test_bound_rect_contains_every_reachable_pixel(sigma):
    verts, opac, _, *_ = _random_triangles(40, seed=5, spread=1.0)
    sig = torch.full((40,), sigma, dtype=F64)
    vm, K = _camera(48, 36, 40.0)
    st = RasterSettings()
    proj = project_triangles(verts, opac, sig, vm, K, 48, 36, st, LOOSE)
    ys, xs = torch.meshgrid(torch.arange(36), torch.arange(48), indexing="ij")
    pix = torch.stack([xs, ys], -1).to(F64) + st.pixel_offset
    w = triangle_footprint(proj.records[:, None, None, :], pix[None])  # [N, H, W]
    reach = opac[:, None, None] * w >= st.alpha_min
    r = proj.rects.long()
    inside = (xs[None] >= r[:, 0, None, None]) & (xs[None] < r[:, 2, None, None])
    inside &= (ys[None] >= r[:, 1, None, None]) & (ys[None] < r[:, 3, None, None])
    assert bool(reach.any())
    assert not bool((reach & ~inside).any())
    # and the rect is tight: the shrunk support touches (nearly) every border row/column of a visible rect
    if sigma >= 1.0:
        area_rect = ((r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])).clamp_min(1).to(F64)
        assert bool((reach.sum((1, 2)).to(F64) <= area_rect).all())


def test_culling_thresholds():
    vm, K = _camera()
    base = torch.tensor([[[-0.1, -0.1, 2.0], [0.1, -0.1, 2.0], [0.0, 0.1, 2.0]]], dtype=F64)
    one = torch.ones(1, dtype=F64)
    proj = lambda v, tri=LOOSE, o=one: project_triangles(v, o, one, vm, K, 24, 18, RasterSettings(), tri)  # noqa: E731
    assert bool(proj(base).valid[0])
    behind = base.clone()
    behind[0, 1, 2] = -0.5
    assert not bool(proj(behind).valid[0])
    r_px = float(proj(base).inradii[0])
    assert not bool(proj(base, TriangleSettings(min_inradius=r_px + 0.1, min_extent=0.0)).valid[0])
    assert bool(proj(base, TriangleSettings(min_inradius=r_px - 0.1, min_extent=0.0)).valid[0])
    assert not bool(proj(base, TriangleSettings(min_inradius=0.0, min_extent=0.0, max_extent=0.5)).valid[0])
    edge_on = torch.tensor([[[-0.1, 0.0, 1.9], [0.1, 0.0, 2.1], [0.0, 0.0, 2.0]]], dtype=F64)
    assert not bool(proj(edge_on).valid[0])
    assert not bool(proj(base, o=torch.full((1,), 1e-3, dtype=F64)).valid[0])
    culled = proj(behind)
    assert float(culled.records.abs().sum()) == 0.0 and int(culled.rects.abs().sum()) == 0


# ---------------------------------------------------------------------------------------------------
# compositing: tiled (training path) vs dense (brute force), values and gradients
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bary", [False, True])
def test_tiled_matches_dense_values_and_gradients(bary):
    verts, opac, sig, colors, vcolors = _random_triangles(12, seed=6, spread=0.8, size=0.9)
    vm, K = _camera(32, 24, 28.0)
    cols = vcolors if bary else colors
    bg = torch.tensor([0.2, 0.3, 0.1], dtype=F64)
    outs = []
    for mode in ("dense", "tiled"):
        v = verts.clone().requires_grad_(True)
        o = opac.clone().requires_grad_(True)
        s = sig.clone().requires_grad_(True)
        c = cols.clone().requires_grad_(True)
        out = render_triangles_reference(v, o, s, c, vm, K, 32, 24, background=bg, triangle_settings=LOOSE, mode=mode,
                                         render_depth=True)  # fmt: skip
        g = torch.Generator().manual_seed(1)
        loss = (out.image * torch.rand(out.image.shape, generator=g, dtype=F64)).sum() + out.alpha.sum() * 0.3
        loss = loss + out.depth.sum() * 0.01
        loss.backward()
        outs.append((out.image.detach(), out.alpha.detach(), out.meta["max_weight"], v.grad, o.grad, s.grad, c.grad))
    for a, b in zip(outs[0], outs[1]):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-7)
    assert int((outs[0][1] > 0.05).sum()) > 30  # something was drawn
    assert float(outs[0][3].abs().sum()) > 0


def test_opaque_triangle_renders_its_barycentric_colours():
    """sigma -> 0 and opacity 1: one hard-edged triangle whose pixels are the barycentric interpolation."""
    a = torch.tensor([[[2.0, 2.0], [20.0, 4.0], [6.0, 16.0]]], dtype=F64)
    verts = torch.cat([a * 0.1, torch.ones(1, 3, 1, dtype=F64)], dim=-1)
    vm = torch.eye(4, dtype=F64)
    K = torch.tensor([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 1]], dtype=F64)
    vcol = torch.eye(3, dtype=F64)[None]  # vertex j has colour e_j
    st = RasterSettings(alpha_max=1.0 - 1e-9, t_min=0.0)
    out = render_triangles_reference(verts, torch.ones(1, dtype=F64), torch.full((1,), 1e-4, dtype=F64), vcol, vm, K, 24, 18,
                                     settings=st, triangle_settings=LOOSE, background=torch.zeros(3, dtype=F64))  # fmt: skip
    ys, xs = torch.meshgrid(torch.arange(18), torch.arange(24), indexing="ij")
    pix = torch.stack([xs, ys], -1).to(F64).reshape(-1, 2) + 0.5
    bw = triangle_bary_footprint.color_weights(out.meta["records"].expand(pix.shape[0], -1), pix)
    inside = (bw > 1e-3).all(-1)
    img = out.image.reshape(-1, 3)
    assert int(inside.sum()) > 40
    assert torch.allclose(img[inside], bw[inside], atol=2e-3)
    assert float(img[(bw < -1e-3).any(-1)].abs().max()) == 0.0


def test_public_entry_point_reference_backend_float32():
    verts, opac, sig, _, _ = _random_triangles(8, seed=7, dtype=torch.float32)
    sh = torch.randn(8, 4, 3, generator=torch.Generator().manual_seed(0)) * 0.2
    vm, K = _camera(dtype=torch.float32)
    out = render_triangles(verts, opac, sig, sh, vm, K, 24, 18, sh_degree=1, backend="auto", triangle_settings=LOOSE)
    assert out.meta["backend"] == "reference"
    assert out.image.shape == (18, 24, 3) and torch.isfinite(out.image).all()
    assert out.meta["max_weight"].shape == (8,)
    with pytest.raises(ValueError):
        render_triangles(verts, opac, sig, sh, vm, K, 24, 18, backend="bogus")
    assert math.isfinite(float(out.alpha.sum()))
