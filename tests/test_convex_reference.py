"""3D smooth convexes, PyTorch reference: hull, footprint and projection gradients (float64 gradcheck),
the conservative screen-space bound, the translation gradient handed out as means2d, and the
compositors agreeing on convexes. CPU only, tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch

from recon.rasterizers import RasterSettings
from recon.rasterizers.convexes import render_convexes, render_convexes_reference
from recon.rasterizers.reference.composite import composite, pixel_centers
from recon.rasterizers.reference.convex import (
    CONVEX_RECORD_SIZE,
    convex_footprint,
    convex_hull_2d,
    project_convexes,
)

F64 = torch.float64


def convex_scene(n, width, height, seed, k=6, size=0.12, dtype=F64, sh_degree=None):
    """Random convexes in view of a camera at the origin looking down +z (focal = width)."""
    g = torch.Generator().manual_seed(seed)
    f = float(width)
    z = torch.rand(n, generator=g, dtype=dtype) * 2 + 2
    x = (torch.rand(n, generator=g, dtype=dtype) - 0.5) * width / f * z
    y = (torch.rand(n, generator=g, dtype=dtype) - 0.5) * height / f * z
    centres = torch.stack([x, y, z], -1)
    points = centres[:, None] + torch.randn(n, k, 3, generator=g, dtype=dtype) * size
    deltas = torch.rand(n, generator=g, dtype=dtype) * 2 + 0.5
    sigmas = torch.rand(n, generator=g, dtype=dtype) * 0.3 + 0.05
    opac = torch.rand(n, generator=g, dtype=dtype) * 0.8 + 0.15
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g, dtype=dtype)
    else:
        colors = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=dtype) * 0.3
    K = torch.tensor([[f, 0.0, width / 2 + 0.3], [0.0, f * 1.05, height / 2 - 0.2], [0.0, 0.0, 1.0]], dtype=dtype)
    return points, deltas, sigmas, opac, colors, torch.eye(4, dtype=dtype), K


# ------------------------------------------------------------------------------------------------
# hull
# ------------------------------------------------------------------------------------------------
def test_hull_square_drops_interior_collinear_and_duplicates():
    p = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.0], [1.0, 1.0]]])
    order, count = convex_hull_2d(p)
    assert count.tolist() == [4]
    assert order[0, :4].tolist() == [0, 1, 2, 3]  # from the lowest-x/lowest-y point, cross > 0 turns


def test_hull_degenerate_counts():
    line = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [0.5, 0.5]]])
    same = torch.zeros(1, 4, 2)
    assert convex_hull_2d(line)[1].item() == 2
    assert convex_hull_2d(same)[1].item() == 1


def test_hull_random_is_convex_and_contains_all_points():
    g = torch.Generator().manual_seed(3)
    p = torch.randn(500, 8, 2, generator=g, dtype=F64)
    order, count = convex_hull_2d(p)
    assert (count >= 3).all()
    for b in range(0, 500, 7):
        m = int(count[b])
        h = p[b, order[b, :m]]
        nxt = torch.roll(h, -1, 0)
        d = nxt - h
        rel = p[b][None] - h[:, None]  # [M, K, 2]
        cross = d[:, None, 0] * rel[..., 1] - d[:, None, 1] * rel[..., 0]
        assert (cross >= -1e-12).all(), "a point lies right of a hull edge"
        # every hull vertex is extreme: strictly convex turns
        turn = d[:, 0] * torch.roll(d, -1, 0)[:, 1] - d[:, 1] * torch.roll(d, -1, 0)[:, 0]
        assert (turn > 0).all()


# ------------------------------------------------------------------------------------------------
# footprint
# ------------------------------------------------------------------------------------------------
def random_records(n, seed):
    """Valid records from random convex polygons (so that w covers its whole range)."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(n, 6, 2, generator=g, dtype=F64) * 3 + 10
    order, count = convex_hull_2d(pts)
    from recon.rasterizers.reference.convex import hull_edges

    hull = torch.gather(torch.cat([pts, pts[:, :2]], 1), 1, torch.cat([order, order[:, :2]], 1)[..., None].expand(-1, -1, 2))
    nrm, e = hull_edges(hull, count)
    c = pts.mean(1)
    gs = torch.rand(n, generator=g, dtype=F64) * 0.5 + 0.1
    a = nrm * gs[:, None, None]
    b = ((nrm * c[:, None]).sum(-1) + e) * gs[:, None] * (torch.arange(8)[None] < count[:, None])
    beta = torch.rand(n, generator=g, dtype=F64) * 0.5 + 0.05
    rec = torch.cat([c, torch.cat([a, b[..., None]], -1).reshape(n, 24), count.to(F64)[:, None], beta[:, None]], -1)
    return rec


def test_footprint_gradcheck_float64():
    rec = random_records(6, 0)
    g = torch.Generator().manual_seed(1)
    pix = rec[:, None, 0:2] + torch.randn(6, 5, 2, generator=g, dtype=F64) * 4  # inside, on and beyond the edges
    count = rec[:, 26:27]

    def f(floats, pixels):
        r = torch.cat([floats[:, :26], count, floats[:, 26:]], -1)
        return convex_footprint(r[:, None, :], pixels)

    floats = torch.cat([rec[:, :26], rec[:, 27:]], -1).requires_grad_(True)
    pixels = pix.requires_grad_(True)
    w = f(floats, pixels).detach()
    assert 0.02 < float(w.mean()) < 0.98 and float(w.max()) > 0.5 and float(w.min()) < 0.05
    assert torch.autograd.gradcheck(f, (floats, pixels), eps=1e-6, atol=1e-7)


def test_footprint_formula_and_grid():
    rec = random_records(4, 2)
    xs = torch.linspace(0, 20, 9, dtype=F64)
    ys = torch.linspace(2, 18, 7, dtype=F64)
    grid = convex_footprint.grid(rec, xs.expand(4, -1), ys.expand(4, -1))  # [4, Y, X]
    px = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]), -1)  # [Y, X, 2]
    point = convex_footprint(rec[:, None, None, :], px[None])
    torch.testing.assert_close(grid, point)
    # the formula written out: w = sigmoid(-beta * logsumexp_j A_j)
    r = rec[0]
    m = int(r[26])
    p = torch.tensor([7.0, 11.0], dtype=F64)
    A = torch.stack([r[2 + 3 * j] * (p[0] - r[0]) + r[3 + 3 * j] * (p[1] - r[1]) + r[4 + 3 * j] for j in range(m)])
    expected = 1.0 / (1.0 + torch.exp(r[27] * torch.logsumexp(A, 0)))
    torch.testing.assert_close(convex_footprint(r, p), expected)


# ------------------------------------------------------------------------------------------------
# projection
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("law", ["linear", "sqrt", "none"])
def test_projection_gradcheck_float64(law):
    points, deltas, sigmas, opac, _, vm, K = convex_scene(5, 40, 30, seed=4)
    vm = vm.clone()
    vm[:3, 3] = torch.tensor([0.05, -0.02, 0.1], dtype=F64)
    settings = RasterSettings()

    # The records' centre slot is handed out as a separate leaf (means2d) and b_j treats the centre as a
    # constant; what is invariant, and what the compositor sees, is the footprint at fixed pixels.
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 60, 2, generator=g, dtype=F64) * torch.tensor([40.0, 30.0], dtype=F64)

    def f(p, d, s):
        proj = project_convexes(p, d, s, opac, vm, K, 40, 30, settings, depth_law=law)
        w = convex_footprint(proj.records[:, None, :], pixels)
        return w, proj.records[:, 27], proj.depths

    inputs = (points.clone().requires_grad_(True), deltas.clone().requires_grad_(True), sigmas.clone().requires_grad_(True))
    proj = project_convexes(*inputs, opac, vm, K, 40, 30, settings, depth_law=law)
    assert (proj.radii > 0).all()
    # fast mode (a random projection of the Jacobian): the hull walk makes each evaluation slow on a CPU
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


def test_culling_behind_near_plane_and_low_opacity():
    points, deltas, sigmas, opac, _, vm, K = convex_scene(4, 40, 30, seed=5)
    points = points.clone()
    points[0, 2, 2] = -0.5  # one point behind the camera
    opac = opac.clone()
    opac[1] = 1.0 / 255.0  # o <= alpha_min never reaches alpha_min
    points[2, :, 2] = points[2, :, 2] * 0 + 3.0  # all on one depth: still a fine convex
    proj = project_convexes(points, deltas, sigmas, opac, vm, K, 40, 30)
    assert proj.radii[0] == 0 and proj.radii[1] == 0 and proj.radii[2] > 0
    assert (proj.records[0] == 0).all() and (proj.rects[1] == 0).all() and proj.depths[0] == 0


def test_bound_is_conservative():
    """alpha = o w stays below alpha_min at every pixel outside a convex's rect (dense check)."""
    width, height = 48, 36
    points, deltas, sigmas, opac, _, vm, K = convex_scene(40, width, height, seed=6, size=0.06)
    sigmas = sigmas * 0.2  # soft edges: wide support
    settings = RasterSettings()
    proj = project_convexes(points, deltas, sigmas, opac, vm, K, width, height, settings)
    vis = proj.radii > 0
    assert vis.sum() > 30
    pix = pixel_centers(torch.arange(width * height), width, settings.pixel_offset, F64)
    w = convex_footprint(proj.records[vis][:, None, :].detach(), pix[None])  # [V, P]
    alpha = opac[vis][:, None] * w
    r = proj.rects[vis].long()
    px, py = torch.arange(width * height) % width, torch.arange(width * height) // width
    inside = (px[None] >= r[:, 0:1]) & (px[None] < r[:, 2:3]) & (py[None] >= r[:, 1:2]) & (py[None] < r[:, 3:4])
    assert float(alpha[~inside].max()) < settings.alpha_min
    # and the bound is not vacuous: some convex reaches alpha_min near its rect border
    assert float(alpha[inside].max()) > settings.alpha_min


def test_means2d_gradient_is_the_hull_translation_gradient():
    width, height = 40, 30
    points, deltas, sigmas, opac, colors, vm, K = convex_scene(12, width, height, seed=7)
    proj = project_convexes(points.requires_grad_(True), deltas, sigmas, opac, vm, K, width, height)
    res = composite(convex_footprint, proj.records, opac, colors, proj.depths, proj.rects, width, height, mode="dense")
    cot = torch.randn_like(res.image)
    g_m2d, g_pix = torch.autograd.grad((res.image * cot).sum(), [proj.means2d, proj.points2d])
    vis = proj.radii > 0
    torch.testing.assert_close(g_m2d[vis], g_pix[vis].sum(1))
    assert g_m2d[vis].abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# whole renders
# ------------------------------------------------------------------------------------------------
def test_tiled_matches_dense_image_and_gradients():
    width, height = 37, 29
    points, deltas, sigmas, opac, colors, vm, K = convex_scene(30, width, height, seed=8, sh_degree=3)
    leaves = [t.clone().requires_grad_(True) for t in (points, deltas, sigmas, opac, colors)]
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=F64)
    outs = [render_convexes_reference(*leaves, vm, K, width, height, sh_degree=3, background=bg, render_depth=True, mode=m)
            for m in ("dense", "tiled")]  # fmt: skip
    torch.testing.assert_close(outs[0].image, outs[1].image)
    torch.testing.assert_close(outs[0].depth, outs[1].depth)
    cot = torch.randn_like(outs[0].image)
    grads = [torch.autograd.grad((o.image * cot).sum() + o.alpha.sum(), leaves) for o in outs]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_whole_render_gradcheck_float64():
    width, height = 12, 10
    points, deltas, sigmas, opac, colors, vm, K = convex_scene(4, width, height, seed=9, size=0.3, sh_degree=1)
    # no thresholds inside the finite differences: every sample counts, nothing stops early
    settings = RasterSettings(alpha_min=1e-9, t_min=1e-12)

    def f(p, d, s, o, c):
        out = render_convexes(p, d, s, o, c, vm, K, width, height, sh_degree=1, settings=settings, backend="reference")
        return out.image, out.alpha

    inputs = tuple(t.clone().requires_grad_(True) for t in (points, deltas, sigmas, opac, colors))
    # fast mode (a random projection of the Jacobian): the hull walk makes each evaluation slow on a CPU
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


def test_render_meta_and_sigma_gradient():
    width, height = 32, 24
    points, deltas, sigmas, opac, colors, vm, K = convex_scene(10, width, height, seed=10, dtype=torch.float32)
    sig = sigmas.clone().requires_grad_(True)
    s_used = sig * 1.0
    out = render_convexes(points.requires_grad_(True), deltas, s_used, opac, colors, vm, K, width, height)
    assert out.meta["backend"] == "reference" and out.meta["records"].shape == (10, CONVEX_RECORD_SIZE)
    out.meta["sigmas"].retain_grad()
    out.meta["means2d"].retain_grad()
    out.image.sum().backward()
    assert out.meta["sigmas"].grad is not None and out.meta["sigmas"].grad.abs().sum() > 0
    assert out.meta["means2d"].grad.shape == (10, 2)
    culled = out.meta["radii"] == 0
    assert (points.grad[culled] == 0).all()
    assert math.isfinite(float(points.grad.abs().sum()))
