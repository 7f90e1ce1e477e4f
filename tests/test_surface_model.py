"""NeuS math, the occupancy grid and its marcher, mesh extraction, and the surface scene (CPU, seconds)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from recon.datasets.cameras import Camera, look_at_c2w
from recon.rasterizers.hashgrid import HashGridConfig
from recon.scenes.surface import SurfaceScene
from recon.surfaces.marching_cubes import extract_mesh, marching_tetrahedra, mesh_area
from recon.surfaces.neus import (
    accumulate,
    annealed_cos,
    endpoint_alpha,
    neus_alpha,
    transmittance_from_alpha,
    weights_from_alpha_torch,
)
from recon.surfaces.occupancy import OccupancyGrid
from recon.surfaces.rays import image_rays, ray_box

CENTER = torch.tensor([0.52, 0.47, 0.5], dtype=torch.float64)
RADIUS = 0.27
INV_S = 800.0
STEP = math.sqrt(3.0) / 256


def sphere_sdf(x):
    return (x - CENTER.to(x.dtype)).norm(dim=-1) - RADIUS


def sphere_hit(o, d):
    """Analytic first hit t of rays with the sphere (nan where they miss)."""
    oc = o - CENTER.to(o.dtype)
    b = (oc * d).sum(-1)
    c = (oc * oc).sum(-1) - RADIUS**2
    disc = b * b - c
    t = -b - torch.sqrt(disc.clamp_min(0))
    return torch.where(disc > 0, t, torch.full_like(t, float("nan")))


def render_sdf(grid, o, d, *, early_stop=False):
    """Opacity and expected depth of the analytic sphere through ``grid``'s marcher and NeuS."""
    inv_s = torch.tensor(INV_S, dtype=o.dtype)

    def alpha_fn(s):
        oo, dd = o[s.ray_indices], d[s.ray_indices]
        return endpoint_alpha(sphere_sdf(oo + s.t_starts[:, None] * dd), sphere_sdf(oo + s.t_ends[:, None] * dd), inv_s)

    s = grid.march(o, d, step_size=STEP, alpha_fn=alpha_fn if early_stop else None)
    t = 0.5 * (s.t_starts + s.t_ends)
    x = o[s.ray_indices] + t[:, None] * d[s.ray_indices]
    n = x - CENTER.to(x.dtype)
    n = n / n.norm(dim=-1, keepdim=True)
    alpha = neus_alpha(sphere_sdf(x), annealed_cos(d[s.ray_indices], n, 1.0), s.t_ends - s.t_starts, inv_s)
    w, _ = weights_from_alpha_torch(alpha, s.ray_indices, s.n_rays)
    return accumulate(w, None, s.ray_indices, s.n_rays)[:, 0], accumulate(w, t[:, None], s.ray_indices, s.n_rays)[:, 0], len(s)


def camera_rays(width=48, height=40):
    cam = Camera(name="c", width=width, height=height, fx=90.0, fy=90.0, cx=width / 2, cy=height / 2,
                 c2w=look_at_c2w([0.5, -1.4, 0.9], [0.5, 0.5, 0.5]))
    o, d = image_rays(cam)
    return o.double(), d.double()


def full_grid(resolution=48):
    grid = OccupancyGrid(resolution)
    grid.values = grid.values.double()
    return grid


# --- NeuS alpha ------------------------------------------------------------------------------------
def test_neus_alpha_properties():
    inv_s = torch.tensor(50.0)
    dt = torch.tensor(0.02)
    sdf = torch.linspace(-0.3, 0.3, 601)
    into = neus_alpha(sdf, torch.full_like(sdf, -1.0), dt, inv_s)
    assert bool(((into >= 0) & (into <= 1)).all())
    outside = sdf > 0
    # heading into the surface from outside: the closer the section, the more opaque (monotone)
    assert bool((into[outside][1:] <= into[outside][:-1] + 1e-6).all())
    assert float(into[sdf.abs().argmin()]) > 0.3
    assert float(into[-1]) < 1e-3  # far outside: transparent
    # grazing sections (cos = 0) and sections leaving the surface (cos > 0 is clamped away) add nothing
    assert float(neus_alpha(torch.tensor([0.0]), torch.tensor([0.0]), dt, inv_s)) < 1e-4
    # a sharper density (larger s) makes the crossing more opaque
    sharp = neus_alpha(torch.tensor([0.0]), torch.tensor([-1.0]), dt, torch.tensor(500.0))
    assert float(sharp) > float(into[sdf.abs().argmin()])
    # annealed cosine: soft at ratio 0 (never zero), true (clamped) at ratio 1
    d = torch.tensor([[0.0, 0.0, 1.0]])
    n = torch.tensor([[0.0, 0.0, 1.0]])  # leaving the surface
    assert float(annealed_cos(d, n, 0.0)) == 0.0 and float(annealed_cos(d, -n, 0.0)) == -1.0
    assert float(annealed_cos(d, -n, 1.0)) == -1.0


def test_packed_transmittance_matches_dense_cumprod():
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([5, 0, 3, 7, 1])
    ri = torch.repeat_interleave(torch.arange(5), counts)
    alphas = (torch.rand(int(counts.sum()), generator=g, dtype=torch.float64) * 0.9).requires_grad_()
    trans = transmittance_from_alpha(alphas, ri, 5)
    start = 0
    for c in counts.tolist():
        a = alphas[start : start + c]
        dense = torch.cumprod(torch.cat([a.new_ones(1), 1 - a[:-1]]), 0) if c else a
        assert torch.allclose(trans[start : start + c], dense, atol=1e-10)
        start += c
    # gradients of the packed weights equal those of a per-ray dense computation
    w, _ = weights_from_alpha_torch(alphas, ri, 5)
    gw = torch.autograd.grad(w.sum(), alphas)[0]
    a2 = alphas.detach().clone().requires_grad_()
    total, start = 0.0, 0
    for c in counts.tolist():
        a = a2[start : start + c]
        t = torch.cumprod(torch.cat([a.new_ones(1), 1 - a[:-1]]), 0) if c else a
        total = total + (t * a).sum()
        start += c
    assert torch.allclose(gw, torch.autograd.grad(total, a2)[0], atol=1e-9)


# --- rendering an analytic sphere --------------------------------------------------------------------
def test_sphere_sdf_renders_disc_with_right_silhouette_and_depth():
    o, d = camera_rays()
    opacity, depth, _ = render_sdf(full_grid(), o, d)
    t_hit = sphere_hit(o, d)
    hit = ~torch.isnan(t_hit)
    # margin: rays whose closest approach is within 0.01 of the rim are ambiguous at this resolution
    oc = o - CENTER
    miss_dist = (oc - (oc * d).sum(-1, keepdim=True) * d).norm(dim=-1)
    clear_in = miss_dist < RADIUS - 0.01
    clear_out = miss_dist > RADIUS + 0.01
    assert clear_in.sum() > 200 and clear_out.sum() > 200
    assert float(opacity[clear_in].min()) > 0.98
    assert float(opacity[clear_out].max()) < 0.02
    expected = depth[clear_in] / opacity[clear_in]
    assert float((expected - t_hit[clear_in]).abs().max()) < STEP
    assert bool(hit[clear_in].all())


def test_grid_marcher_matches_dense_sampling_and_culls_empty_space():
    o, d = camera_rays()
    dense_op, dense_depth, n_dense = render_sdf(full_grid(48), o, d)
    grid = full_grid(48)
    grid.update(sphere_sdf, INV_S, warmup=True)
    grid_op, grid_depth, n_grid = render_sdf(grid, o, d)
    assert n_grid < 0.5 * n_dense  # empty space was skipped ...
    # ... without changing the image beyond NeuS' +1e-5 floor per section (about 1e-5 of opacity per
    # skipped empty section, ~400 per ray here)
    assert float((grid_op - dense_op).abs().max()) < 3e-3
    hit = dense_op > 0.98
    assert float((grid_depth[hit] / grid_op[hit] - dense_depth[hit] / dense_op[hit]).abs().max()) < 2e-3
    stop_op, stop_depth, n_stop = render_sdf(grid, o, d, early_stop=True)
    assert n_stop < n_grid  # samples behind the surface are dropped too
    assert float((stop_op - grid_op).abs().max()) < 1e-3


@pytest.mark.parametrize("inv_s", [20.0, 2000.0])
def test_occupancy_never_culls_the_surface(inv_s):
    grid = OccupancyGrid(32)
    grid.update(sphere_sdf, inv_s, warmup=True)
    for _ in range(3):  # later partial updates keep it
        grid.update(sphere_sdf, inv_s, warmup=False, generator=torch.Generator().manual_seed(1))
    r = grid.resolution
    idx = torch.arange(r**3)
    centers = grid.cell_centers(idx).double()
    # cells the sphere passes through: centre within half a cell diagonal of the surface
    touching = sphere_sdf(centers).abs() <= 0.5 * math.sqrt(3) / r
    assert touching.sum() > 100
    assert bool(grid.binary.reshape(-1)[touching].all())
    if inv_s > 100:
        assert grid.occupied_fraction() < 0.2  # a sharp surface leaves most of the cube empty


def test_ray_box():
    o = torch.tensor([[-1.0, 0.5, 0.5], [0.5, 0.5, 0.5], [-1.0, 2.0, 0.5]])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    t0, t1, hit = ray_box(o, d, (0, 0, 0), (1, 1, 1))
    assert hit.tolist() == [True, True, False]
    assert torch.allclose(t0[:2], torch.tensor([1.0, 0.0])) and torch.allclose(t1[:2], torch.tensor([2.0, 0.5]))


# --- meshes ----------------------------------------------------------------------------------------
def test_marching_tetrahedra_sphere_radius_area_and_topology():
    verts, faces = extract_mesh(lambda x: sphere_sdf(x.double()), 48)
    r = np.linalg.norm(verts - CENTER.numpy(), axis=1)
    assert abs(r.mean() - RADIUS) < 1e-3 and r.max() - r.min() < 0.01
    assert abs(mesh_area(verts, faces) / (4 * math.pi * RADIUS**2) - 1) < 0.01
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    directed = {tuple(e) for e in edges.tolist()}
    assert len(directed) == len(edges)  # no edge used twice in the same direction: consistent winding
    assert all((b, a) in directed for a, b in directed)  # every edge has its twin: watertight
    v = verts.astype(np.float64)
    volume = np.einsum("ij,ij->i", v[faces[:, 0]], np.cross(v[faces[:, 1]], v[faces[:, 2]])).sum() / 6
    assert abs(volume / (4 / 3 * math.pi * RADIUS**3) - 1) < 0.02  # positive: normals point outward


def test_marching_tetrahedra_empty_and_box_bounds():
    v, f = marching_tetrahedra(torch.ones(5, 5, 5))
    assert v.shape == (0, 3) and f.shape == (0, 3)
    lo, hi = (-2.0, 0.0, 1.0), (2.0, 4.0, 5.0)
    verts, _ = extract_mesh(lambda x: (x - torch.tensor([0.0, 2.0, 3.0])).norm(dim=-1) - 1.0, 32, lo, hi)
    assert abs(np.linalg.norm(verts - [0.0, 2.0, 3.0], axis=1).mean() - 1.0) < 0.01


# --- the scene -------------------------------------------------------------------------------------
def tiny_scene(**kw) -> SurfaceScene:
    grid = HashGridConfig(n_levels=4, n_features=2, log2_table_size=10, base_resolution=4, finest_resolution=32)
    kw.setdefault("occupancy_resolution", 16)
    return SurfaceScene(center=(0.0, 0.0, 0.0), half_size=1.0, grid=grid, background="color",
                        background_color=(1.0, 1.0, 1.0), **kw)


def test_scene_starts_as_a_sphere_with_outward_normals():
    scene = tiny_scene(init_radius=0.25)
    x = torch.rand(2000, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sdf, _, grad = scene.sdf_with_gradient(x)
    r = (x - 0.5).norm(dim=-1)
    near = (r > 0.1) & (r < 0.45)
    # geometric init: zero crossing near r = 0.25, gradient pointing away from the centre
    assert float((sdf[near] - (r[near] - 0.25)).abs().mean()) < 0.05
    cos = ((x - 0.5) / r[:, None] * grad / grad.norm(dim=-1, keepdim=True)).sum(-1)
    assert float(cos[near].mean()) > 0.9


def test_scene_render_state_dict_roundtrip():
    scene = tiny_scene()
    scene.render_step = math.sqrt(3) / 48
    scene.update_occupancy(warmup=True)
    cam = Camera(name="c", width=16, height=12, fx=14.0, fy=14.0, cx=8, cy=6, c2w=look_at_c2w([0, -3, 0.5], [0, 0, 0]))
    out = scene.render(cam, render_depth=True)
    assert out.image.shape == (12, 16, 3) and out.alpha.shape == (12, 16, 1)
    # the initial sphere (world radius 0.5) covers the centre, not the corners
    assert float(out.alpha[6, 8]) > 0.9 and float(out.alpha[0, 0]) < 0.1
    z = float(out.depth[6, 8] / out.alpha[6, 8])
    assert abs(z - (math.hypot(3.0, 0.5) - 0.5)) < 0.15
    buf = io.BytesIO()
    torch.save(scene.state_dict(), buf)
    buf.seek(0)
    loaded = SurfaceScene.from_state_dict(torch.load(buf, weights_only=True))
    again = loaded.render(cam)
    assert torch.allclose(again.image, out.image, atol=1e-6)
    assert loaded.num_primitives == scene.num_primitives > 0


def test_visual_hull_box_tightens_to_the_masked_object():
    from types import SimpleNamespace

    from recon.methods.surface import visual_hull_box

    center, radius = np.array([0.3, -0.2, 0.1]), 0.4
    views = []
    for k in range(12):
        az, el = 2 * math.pi * k / 12, 0.3 * (-1) ** k
        eye = center + 3.0 * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        cam = Camera(name=f"v{k}", width=64, height=64, fx=60.0, fy=60.0, cx=32, cy=32, c2w=look_at_c2w(eye, center))
        o, d = image_rays(cam)
        oc = o.double() - torch.tensor(center)
        b = (oc * d.double()).sum(-1)
        hit = (b * b - ((oc * oc).sum(-1) - radius**2)) > 0
        views.append(SimpleNamespace(camera=cam, mask=hit.float().reshape(64, 64, 1)))
    c, half = visual_hull_box(views, np.array([0.0, 0.0, 0.0]), 2.0)
    assert np.abs(c - center).max() < 0.1
    assert radius < half < 1.5 * radius  # encloses the sphere, far tighter than the 2.0 start
