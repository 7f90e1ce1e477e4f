"""GLB writer and mesh helpers: container and accessor units, the up-axis transform, and the two
real clients (Khronos glTF-Validator, Blender's importer through bpy) on every file written here."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from clients import blender_import, validate_glb
from recon.export.gltf import (
    ARRAY_BUFFER, TARGETS, GltfBuilder, read_glb, rotation_to_y_up, scene_up_vector, write_mesh_glb,
)
from recon.export.mesh import TriangleMesh, clean_mesh, decimate, unwrap_uvs


def _quad(**kw) -> TriangleMesh:
    # A 2 x 1 rectangle in the z = 0.5 plane of a z-up world, facing +z.
    v = np.array([[0, 0, 0.5], [2, 0, 0.5], [2, 1, 0.5], [0, 1, 0.5]], np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    return TriangleMesh(v, f, **kw)


def _texture() -> np.ndarray:
    tex = np.zeros((8, 16, 3), np.uint8)
    tex[:4] = (255, 0, 0)  # top half red
    tex[4:] = (0, 0, 255)  # bottom half blue
    return tex


QUAD_UVS = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], np.float32)  # glTF: v = 0 is the image's top row


def _accessor(doc, binary, index):
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype = {5126: np.float32, 5125: np.uint32, 5121: np.uint8}[acc["componentType"]]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
    data = np.frombuffer(binary, dtype, acc["count"] * width, view["byteOffset"])
    return acc, data.reshape(acc["count"], width)


def test_textured_quad_container_validator_and_blender(tmp_path):
    path = write_mesh_glb(_quad(uvs=QUAD_UVS, texture=_texture()), tmp_path / "quad.glb", target="blender")
    doc, binary = read_glb(path.read_bytes())
    assert doc["asset"]["version"] == "2.0" and doc["asset"]["extras"]["recon"]["target"] == "blender"
    prim = doc["meshes"][0]["primitives"][0]
    assert set(prim["attributes"]) == {"POSITION", "NORMAL", "TEXCOORD_0"}
    acc, pos = _accessor(doc, binary, prim["attributes"]["POSITION"])
    # z-up world -> glTF (x, z, -y); min/max present and exact
    np.testing.assert_allclose(pos[2], [2, 0.5, -1])
    assert acc["min"] == [0.0, 0.5, -1.0] and acc["max"] == [2.0, 0.5, 0.0]
    _, nrm = _accessor(doc, binary, prim["attributes"]["NORMAL"])
    np.testing.assert_allclose(nrm, np.tile([0, 1, 0], (4, 1)), atol=1e-6)  # world +z faces glTF +Y
    mat = doc["materials"][prim["material"]]
    tex_index = mat["pbrMetallicRoughness"]["baseColorTexture"]["index"]
    image = doc["images"][doc["textures"][tex_index]["source"]]
    view = doc["bufferViews"][image["bufferView"]]
    png = binary[view["byteOffset"]: view["byteOffset"] + view["byteLength"]]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), _texture())

    report, = validate_glb(path)
    assert report["numErrors"] == 0, report["messages"]
    assert report["numWarnings"] == 0, report["messages"]
    assert report["info"]["totalTriangleCount"] == 2 and report["info"]["hasTextures"]

    blender = blender_import(path)
    mesh, = blender["meshes"]
    assert (mesh["vertices"], mesh["faces"]) == (4, 2)
    mat, = mesh["materials"]
    assert mat["name"] == "recon_mesh_material"
    assert mat["images"] == [{"name": "recon_mesh_basecolor", "size": [16, 8]}]
    # Blender is Z-up: the z-up world comes back unchanged (size 2 x 1 x 0, at height 0.5).
    np.testing.assert_allclose(mesh["bounds_min"], [0, 0, 0.5], atol=1e-6)
    np.testing.assert_allclose(mesh["bounds_max"], [2, 1, 0.5], atol=1e-6)
    # Blender flips v (its origin is the bottom-left): glTF v in [0, 1] stays [0, 1].
    assert mesh["uv"]["min"] == pytest.approx([0, 0]) and mesh["uv"]["max"] == pytest.approx([1, 1])


def test_vertex_coloured_mesh_validator_and_blender(tmp_path):
    colors = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], np.float32)
    path = write_mesh_glb(_quad(vertex_colors=colors), tmp_path / "vc.glb", unlit=True, scale=2.0)
    doc, binary = read_glb(path.read_bytes())
    prim = doc["meshes"][0]["primitives"][0]
    _, col = _accessor(doc, binary, prim["attributes"]["COLOR_0"])
    np.testing.assert_array_equal(col, colors)
    assert "baseColorTexture" not in doc["materials"][0]["pbrMetallicRoughness"]
    assert doc["extensionsUsed"] == ["KHR_materials_unlit"]

    report, = validate_glb(path)
    assert report["numErrors"] == 0 and report["numWarnings"] == 0, report["messages"]

    mesh, = blender_import(path)["meshes"]
    assert (mesh["vertices"], mesh["faces"]) == (4, 2)
    assert mesh["color_attributes"], "COLOR_0 did not arrive as a colour attribute"
    # scale 2 (metres per world unit) shows up as Blender dimensions
    np.testing.assert_allclose(mesh["dimensions"], [4, 2, 0], atol=1e-6)
    np.testing.assert_allclose(mesh["bounds_min"], [0, 0, 1.0], atol=1e-6)


@pytest.mark.parametrize("up", [(0, 0, 1), (0, -1, 0), (1, 2, 3), (0, 1, 0), (0.3, -0.9, 0.1)])
def test_up_vector_ends_at_plus_y(up):
    R = rotation_to_y_up(up)
    u = np.asarray(up, float) / np.linalg.norm(up)
    np.testing.assert_allclose(R @ u, [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)


def test_tilted_up_vector_in_the_file_and_in_blender(tmp_path):
    up = np.array([1.0, 2.0, 3.0]) / np.sqrt(14)
    # a thin triangle standing along `up`: its tip must end at +Y (glTF) and at +Z (Blender)
    v = np.array([[0, 0, 0], [0.1, -0.05, 0], np.array([0, 0, 0]) + 2 * up], np.float32)
    path = write_mesh_glb(TriangleMesh(v, [[0, 1, 2]]), tmp_path / "up.glb", up=up)
    doc, binary = read_glb(path.read_bytes())
    _, pos = _accessor(doc, binary, doc["meshes"][0]["primitives"][0]["attributes"]["POSITION"])
    np.testing.assert_allclose(pos[2], [0, 2, 0], atol=1e-6)
    np.testing.assert_allclose(doc["asset"]["extras"]["recon"]["world_up"], up)
    report, = validate_glb(path)
    assert report["numErrors"] == 0, report["messages"]
    mesh, = blender_import(path)["meshes"]
    assert mesh["bounds_max"][2] == pytest.approx(2.0, abs=1e-5)


def test_targets_change_only_the_recorded_target(tmp_path):
    mesh = _quad(vertex_colors=np.full((4, 3), 0.5, np.float32))
    docs = []
    for target in TARGETS:
        doc, binary = read_glb(write_mesh_glb(mesh, tmp_path / f"{target}.glb", target=target).read_bytes())
        assert doc["asset"]["extras"]["recon"]["target"] == target
        doc["asset"].pop("extras")
        docs.append((json.dumps(doc, sort_keys=True), binary))
    assert all(d == docs[0] for d in docs[1:])
    with pytest.raises(ValueError, match="target"):
        write_mesh_glb(mesh, tmp_path / "x.glb", target="maya")


def test_scene_up_vector_of_the_demo_cameras():
    from recon.datasets.demo import demo_cameras

    up = scene_up_vector(demo_cameras(n_views=16))
    assert up @ np.array([0.0, 0.0, 1.0]) > 0.99


def test_builder_refuses_what_gltf_forbids(tmp_path):
    b = GltfBuilder()
    with pytest.raises(ValueError, match="multiple of 4"):
        b.add_accessor(np.zeros((3, 3), np.uint8), target=ARRAY_BUFFER)
    with pytest.raises(ValueError, match="component type"):
        b.add_accessor(np.zeros((3, 3), np.float64))
    with pytest.raises(ValueError, match="NaN"):
        b.add_accessor(np.array([[np.nan, 0, 0]], np.float32))
    with pytest.raises(ValueError, match="no faces"):
        write_mesh_glb(TriangleMesh(np.zeros((3, 3)), np.zeros((0, 3), int)), tmp_path / "e.glb")
    assert not (tmp_path / "e.glb").exists()
    with pytest.raises(ValueError, match="indices"):
        TriangleMesh(np.zeros((3, 3)), [[0, 1, 3]])
    with pytest.raises(ValueError, match="texture needs uvs"):
        TriangleMesh(np.zeros((3, 3)), [[0, 1, 2]], texture=np.zeros((2, 2, 3), np.uint8))


def _cube() -> TriangleMesh:
    v = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.float32)
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return TriangleMesh(v, f)


def _boundary_edges(faces):
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    return int((counts == 1).sum())


def test_clean_mesh_drops_floaters_and_bad_faces_and_fills_holes():
    cube = _cube()
    assert _boundary_edges(cube.faces) == 0
    holed = cube.replace(faces=cube.faces[1:])  # one triangle missing: a 3-edge hole
    floater = holed.vertices[:3] + 5.0
    v = np.concatenate([holed.vertices, floater])
    f = np.concatenate([holed.faces, [[8, 9, 10]], [[0, 0, 1]], holed.faces[:1], holed.faces[:1, ::-1]])
    dirty = TriangleMesh(v, f)
    out = clean_mesh(dirty, fill_holes_max_edges=3)
    assert out.num_vertices == 9  # the 8 cube corners + the hole's centre vertex
    assert _boundary_edges(out.faces) == 0 and out.num_faces == 11 + 3  # 11 cube faces + a 3-face fan
    assert out.vertices.max() <= 1.0
    # winding stays consistent: every edge is used once in each direction
    he = np.concatenate([out.faces[:, [0, 1]], out.faces[:, [1, 2]], out.faces[:, [2, 0]]])
    assert len({tuple(e) for e in he.tolist()}) == len(he)
    # without hole filling the hole stays open; keep_largest=None with a zero fraction keeps the floater
    assert _boundary_edges(clean_mesh(dirty, fill_holes_max_edges=0).faces) == 3
    assert clean_mesh(dirty, keep_largest=None, min_component_fraction=0.0, fill_holes_max_edges=0).num_faces == 12


def test_decimate_and_unwrap():
    import open3d as o3d

    sphere = o3d.geometry.TriangleMesh.create_sphere(radius=1.0, resolution=30)
    v = np.asarray(sphere.vertices, np.float32)
    mesh = TriangleMesh(v, np.asarray(sphere.triangles), vertex_colors=np.clip(v * 0.5 + 0.5, 0, 1))
    small = decimate(mesh, 300)
    assert 200 <= small.num_faces <= 300 and small.vertex_colors.shape == (small.num_vertices, 3)
    np.testing.assert_allclose(np.linalg.norm(small.vertices, axis=1), 1.0, atol=0.08)
    # colours followed their positions (they encode the position)
    np.testing.assert_allclose(small.vertex_colors, np.clip(small.vertices * 0.5 + 0.5, 0, 1), atol=0.08)
    with pytest.raises(ValueError, match="target_faces"):
        decimate(mesh, 0)
    un = unwrap_uvs(small, resolution=256)
    assert un.num_faces == small.num_faces and un.num_vertices >= small.num_vertices
    assert un.uvs.min() >= 0.0 and un.uvs.max() <= 1.0
    # seam copies keep their position: every unwrapped face is a face of the input
    assert np.allclose(np.sort(un.vertices[un.faces].reshape(-1, 9), 0).sum(),
                       np.sort(small.vertices[small.faces].reshape(-1, 9), 0).sum(), rtol=1e-5)
    with pytest.raises(ValueError, match="before unwrapping"):
        decimate(un, 10)
