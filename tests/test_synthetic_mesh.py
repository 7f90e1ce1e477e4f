"""Synthetic multi-view datasets rendered from a mesh (recon.datasets.synthetic_mesh)."""

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh

from recon.datasets.cameras import Camera, look_at_c2w
from recon.datasets.loader import load_scene
from recon.datasets.synthetic_mesh import (
    SyntheticMeshConfig,
    ground_truth_mesh_path,
    normalize_vertices,
    rasterize,
    render_mesh_dataset,
    sphere_cameras,
)
from recon.errors import InputError
from recon.eval.geometry import evaluate_mesh, load_mesh


def _camera(eye, w=48, h=40, f=50.0):
    return Camera(name="v", width=w, height=h, fx=f, fy=f * 1.1, cx=w / 2 + 0.3, cy=h / 2 - 0.2,
                  c2w=look_at_c2w(eye, (0.0, 0.0, 0.0), (0.0, 0.0, 1.0)))  # fmt: skip


def _pixel_rays(cam: Camera):
    """World origin and direction (camera z component 1) of every pixel-centre ray, row-major."""
    jj, ii = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5, indexing="xy")
    d_cam = np.stack([(jj - cam.cx) / cam.fx, (ii - cam.cy) / cam.fy, np.ones_like(jj)], -1).reshape(-1, 3)
    return cam.center, d_cam @ cam.c2w[:3, :3].T


def test_sphere_depth_matches_the_analytic_ray_sphere_intersection():
    ico = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    v, f = np.asarray(ico.vertices), np.asarray(ico.faces)
    cam = _camera((0.5, -2.6, 1.2))
    hits = rasterize(v, f, cam, supersample=1)
    o, d = _pixel_rays(cam)
    # |o + t d| = 1: the camera-z of the crossing is t (d has camera z = 1)
    a, b, c = (d * d).sum(1), 2 * (d @ o), o @ o - 1.0
    disc = b * b - 4 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    closest = np.linalg.norm(np.cross(d, -o), axis=1) / np.linalg.norm(d, axis=1)  # ray-centre distance
    hit = hits.face >= 0
    assert not hit[disc < 0].any()  # the inscribed polyhedron never sticks out of the sphere
    assert hit[closest < 0.97].all()
    # inside the sphere, the facets lie at most the sagitta (~1e-3 for this subdivision) behind it
    dz = hits.depth[hit] - t[hit]
    assert dz.min() > -1e-9
    assert np.percentile(dz[closest[hit] < 0.9], 100) < 5e-3
    assert hits.depth[~hit].max() == 0.0


def _ray_triangle_bruteforce(o, d, tri):
    """Nearest t of each ray against all triangles (Moller-Trumbore), inf when missed."""
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    best = np.full(len(d), np.inf)
    face = np.full(len(d), -1)
    for k in range(len(tri)):
        p = np.cross(d, e2[k])
        det = p @ e1[k]
        s = o - tri[k, 0]
        uu = (p @ s) / det
        q = np.cross(s, e1[k])  # one origin for all rays: q is a single vector
        vv = (d @ q) / det
        t = (q @ e2[k]) / det
        ok = (uu >= 0) & (vv >= 0) & (uu + vv <= 1) & (t > 0) & (t < best)
        best[ok] = t[ok]
        face[ok] = k
    return best, face


def test_rasterizer_equals_brute_force_ray_casting():
    rng = np.random.default_rng(0)
    centers = rng.uniform(-0.6, 0.6, (25, 3))
    tri = centers[:, None, :] + rng.normal(0, 0.3, (25, 3, 3))
    v, f = tri.reshape(-1, 3), np.arange(75).reshape(25, 3)
    cam = _camera((2.2, 1.5, 1.1), w=40, h=32, f=40.0)
    hits = rasterize(v, f, cam, supersample=1)
    o, d = _pixel_rays(cam)
    t, face = _ray_triangle_bruteforce(o, d, tri)
    assert (hits.face >= 0).sum() > 100
    assert np.array_equal(hits.face, face)
    hit = face >= 0
    assert np.allclose(hits.depth[hit], t[hit], rtol=1e-9)  # d has camera z 1: t is the z-depth
    # barycentrics reproduce the hit point
    p = (v[f[hits.face[hit]]] * hits.bary[hit][..., None]).sum(1)
    assert np.allclose(p, o + t[hit, None] * d[hit], atol=1e-9)


def test_supersampled_alpha_is_fractional_only_at_the_silhouette(tmp_path):
    ico = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    path = tmp_path / "sphere.obj"
    ico.export(path)
    cfg = SyntheticMeshConfig(width=32, height=32, n_views=8, supersample=3, up=(0.0, 0.0, 1.0))
    out = render_mesh_dataset(path, tmp_path / "ds", cfg)
    from PIL import Image

    rgba = np.asarray(Image.open(out / "images" / "r_000.png")).astype(np.float64) / 255
    alpha = rgba[..., 3]
    depth = np.load(out / "depth" / "r_000.npy")
    mask = np.asarray(Image.open(out / "masks" / "r_000.png"))
    assert set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask == 255, alpha >= 0.5 - 1e-6)
    assert ((alpha > 0) & (alpha < 1)).sum() > 0
    assert (depth[alpha == 1] > 0).all() and (depth[alpha == 0] == 0).all()
    # camera at distance 3.2 from a unit sphere: nearest depth just above 2.2
    assert 2.2 <= depth[depth > 0].min() < 2.25


def test_dataset_round_trip_through_the_nerf_loader(tmp_path):
    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    box.apply_translation((5.0, -1.0, 2.0))
    path = tmp_path / "box.obj"
    box.export(path)
    cfg = SyntheticMeshConfig(width=24, height=20, n_views=10, supersample=1, fov_deg=50.0)
    out = render_mesh_dataset(path, tmp_path / "ds", cfg)
    scene = load_scene(out)
    assert scene.source == "nerf" and len(scene.cameras) == 10
    expected = sphere_cameras(cfg)
    for cam, exp in zip(scene.cameras, expected):
        assert cam.name == f"images/{exp.name}.png"
        assert np.allclose(cam.c2w, exp.c2w, atol=1e-9)
        assert (cam.width, cam.height, cam.fx, cam.cx) == (24, 20, exp.fx, 12.0)
        assert cam.mask_path is not None and Path(cam.mask_path).is_file()
    train, test = scene.split()
    assert test == [0, 8] and len(train) == 8
    gt = ground_truth_mesh_path(scene)
    assert gt == out / "gt_mesh.ply" and ground_truth_mesh_path(out) == gt
    gv, gf = load_mesh(gt)
    src_v, src_f = load_mesh(path)
    nv, center, scale = normalize_vertices(src_v)
    assert np.allclose(gv, nv, atol=1e-6) and np.abs(gv).max() <= 1 + 1e-6
    block = json.loads((out / "transforms.json").read_text())["recon_ground_truth"]
    back = gv / block["source_from_world"]["scale"] + np.asarray(block["source_from_world"]["center"])
    assert np.allclose(back, src_v, atol=1e-5)
    assert evaluate_mesh((gv, gf), (nv, src_f), n_samples=5000).chamfer < 0.02
    # images decode with their alpha through the training image path
    from recon.datasets.images import load_view

    view = load_view(scene.cameras[1])
    assert view.image.shape == (20, 24, 3) and view.alpha is not None and float(view.alpha.max()) == 1.0
    # re-rendering replaces the folder atomically, leaving no temporary folders behind
    render_mesh_dataset(path, out, cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box.obj", "ds"]


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="not found"):
        render_mesh_dataset(tmp_path / "nope.obj", tmp_path / "ds")
    ico = trimesh.creation.icosphere(subdivisions=1)
    ico.export(tmp_path / "s.obj")
    with pytest.raises(ValueError, match="odd"):
        render_mesh_dataset(tmp_path / "s.obj", tmp_path / "ds", SyntheticMeshConfig(supersample=2))
    assert not (tmp_path / "ds").exists()
    assert ground_truth_mesh_path(tmp_path) is None


@pytest.mark.realdata
def test_bunny_dataset(recon_data, tmp_path):
    bunny = Path(recon_data) / "meshes" / "bunny.obj"
    if not bunny.is_file():
        pytest.skip("meshes/bunny.obj not in $RECON_DATA")
    cfg = SyntheticMeshConfig(width=48, height=48, n_views=6, supersample=1)
    out = render_mesh_dataset(bunny, tmp_path / "bunny", cfg)
    scene = load_scene(out)
    assert len(scene.cameras) == 6
    for cam in scene.cameras:
        depth = np.load(out / "depth" / (Path(cam.name).stem + ".npy"))
        cover = (depth > 0).mean()
        assert 0.05 < cover < 0.6  # the bunny fills part of every view
        assert depth[depth > 0].min() > cfg.distance - 1.0 - 1e-6 and depth.max() < cfg.distance + 1.0
    gv, _ = load_mesh(ground_truth_mesh_path(scene))
    assert len(gv) == 2503 and abs(np.linalg.norm(gv, axis=1).max() - 1.0) < 1e-6
