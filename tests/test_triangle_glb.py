"""Triangle scenes -> GLB: loads back (trimesh) with the scene's face count and colours, passes the
Khronos validator and Blender's importer, and the ordinary mesh renderer draws what the splat renderer
draws for an opaque, hard-edged mesh."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clients import blender_import, validate_glb
from recon.eval.mesh_render import load_glb_mesh, render_mesh
from recon.export.gltf import read_glb
from recon.export.mesh import TriangleMesh
from recon.export.triangle_mesh import scene_to_mesh, write_scene_glb
from recon.rasterizers.reference.sh import SH_C0
from recon.rasterizers.types import RasterSettings
from recon.scenes.triangles import OpaqueTriangleScene, TriangleScene


def _opaque_scene(n=150, seed=0):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, 3, generator=g)
    cols = torch.rand(n, 3, generator=g)
    scene = OpaqueTriangleScene.from_points(pts, cols, sh_degree=1, max_edge_factor=4.0)
    scene.up = [0.0, 0.0, 1.0]
    return scene


def test_opaque_scene_glb_round_trip(tmp_path):
    import trimesh

    scene = _opaque_scene()
    path = write_scene_glb(scene, tmp_path / "mesh.glb")
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.faces) == scene.num_primitives
    assert len(loaded.vertices) == scene.num_vertices
    # glTF is Y-up: the recon z axis (our up) became +Y
    np.testing.assert_allclose(loaded.vertices[:, 1], scene.params["vertices"].detach().numpy()[:, 2], atol=1e-6)
    back = load_glb_mesh(path)
    np.testing.assert_allclose(back.vertices, scene.params["vertices"].detach().numpy(), atol=1e-5)
    np.testing.assert_array_equal(back.faces, scene.faces.numpy())
    dc = np.clip(scene.params["sh0"].detach().numpy()[:, 0] * SH_C0 + 0.5, 0, 1)
    np.testing.assert_allclose(back.vertex_colors, dc, atol=1e-6)
    doc, _ = read_glb(path.read_bytes())
    assert doc["asset"]["extras"]["recon"]["faces"] == scene.num_primitives


def test_soup_scene_glb_has_three_vertices_per_triangle(tmp_path):
    import trimesh

    pts = torch.rand(40, 3, generator=torch.Generator().manual_seed(1))
    scene = TriangleScene.from_points(pts, sh_degree=0)
    mesh = scene_to_mesh(scene)
    assert mesh.vertex_colors.shape == (120, 4)
    np.testing.assert_allclose(mesh.vertex_colors[::3, 3], torch.sigmoid(scene.params["opacities"]).detach().numpy(), atol=1e-6)
    path = write_scene_glb(scene, tmp_path / "soup.glb")
    assert len(trimesh.load(path, force="mesh", process=False).faces) == 40


def test_glb_passes_validator_and_blender(tmp_path):
    scene = _opaque_scene(60, seed=2)
    path = write_scene_glb(scene, tmp_path / "mesh.glb")
    report, = validate_glb(path)
    assert report["numErrors"] == 0, report["messages"]
    assert report["info"]["totalTriangleCount"] == scene.num_primitives
    mesh, = blender_import(path)["meshes"]
    assert mesh["faces"] == scene.num_primitives


def _camera(w=48, h=36, f=40.0):
    w2c = np.eye(4)
    w2c[:3, 3] = [-0.5, -0.5, 2.0]
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
    return SimpleNamespace(width=w, height=h, K=K, w2c=w2c, name="test", distortion=None)


def test_mesh_renderer_interpolates_vertex_colours():
    verts = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    mesh = TriangleMesh(vertices=verts, faces=np.array([[0, 1, 2]]), vertex_colors=np.eye(3, dtype=np.float32))
    cam = _camera()
    img = render_mesh(mesh, cam, background=(0.2, 0.2, 0.2))
    # pixel centre -> world point on z = 0 (the plane is fronto-parallel): barycentrics are (1 - x - y, x, y)
    ys, xs = np.meshgrid(np.arange(36) + 0.5, np.arange(48) + 0.5, indexing="ij")
    wx = (xs - 24) / 40.0 * 2.0 + 0.5
    wy = (ys - 18) / 40.0 * 2.0 + 0.5
    inside = (wx > 0.02) & (wy > 0.02) & (wx + wy < 0.98)
    expect = np.stack([1 - wx - wy, wx, wy], -1)
    assert inside.sum() > 50
    np.testing.assert_allclose(img[inside], expect[inside], atol=1e-4)
    outside = (wx < -0.02) | (wy < -0.02) | (wx + wy > 1.02)
    np.testing.assert_allclose(img[outside], 0.2, atol=1e-6)


@pytest.mark.parametrize("supersample", [1, 3])
def test_mesh_renderer_agrees_with_opaque_splat_render(supersample):
    """The end state of opaque-triangle training (sigma -> 0, opacity ~ 1, DC colour only) rendered by the
    splat rasterizer and by the ray caster: the same picture up to edge pixels and alpha_max; also when
    both supersample (their sub-pixel grids coincide, so edge pixels agree too)."""
    from recon.datasets.cameras import Camera
    from recon.methods.base import render_supersampled

    scene = _opaque_scene(120, seed=3)
    scene.sigma = 1e-4
    scene.weight_floor = 0.9999
    c2w = np.eye(4)
    c2w[:3, 3] = [0.5, 0.5, -2.2]
    cam = Camera(name="c", width=64, height=48, fx=50.0, fy=50.0, cx=32.0, cy=24.0, c2w=c2w)
    st = RasterSettings(alpha_max=1.0 - 1e-6, t_min=0.0)

    def render(c):
        return scene.render(c, background=torch.zeros(3), sh_degree=0, settings=st, backend="reference")

    with torch.no_grad():
        splat = render_supersampled(render, cam, supersample).image.numpy()
    ray = render_mesh(scene_to_mesh(scene), cam, supersample=supersample)
    diff = np.abs(splat - ray).max(-1)
    assert (diff < 0.02).mean() > 0.9, float((diff < 0.02).mean())
    assert float(np.median(diff)) < 1e-3
    assert json.dumps(float(diff.mean()))  # finite
