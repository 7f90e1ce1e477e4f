"""`recon-export mesh` end to end, through the command line, on a real (tiny) trained run.

A demo run is trained for a few steps by `recon-train`; its checkpoint's Gaussians are then replaced
by flat discs on the demo's exact surfaces, coloured by the demo's own shading, so the exported mesh
and its colours have a known answer. The GLB goes through the Khronos glTF-Validator and Blender's
importer (bpy); geometry is compared with the demo's ground truth (Chamfer), colours with its shading.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clients import blender_import, validate_glb
from recon.datasets.cameras import look_at_c2w
from recon.datasets.demo import demo_ground_truth, make_demo_scene
from recon.export.gltf import read_glb
from recon.export.tsdf import srgb_to_linear
from recon.scenes.gaussians import GaussianScene, rgb_to_sh0
from recon.training.checkpoint import load_checkpoint, save_checkpoint

# Mean two-sided Chamfer distance bound, world units (the demo spans 3 x 3 x 0.85). The TSDF voxel
# here is 2 x rig radius / 192 ~ 0.047; measured 0.023 (accuracy 0.021, completeness 0.025).
CHAMFER_BOUND = 0.035
# Median absolute colour error (0..1) between the exported colours and the demo's shading at the
# same surface points; edges of the checker and stripes (blurred by 96-pixel-high images) are in the
# tail. Measured: texture 0.018, vertex colours (linear) 0.027; a texture read with v flipped: 0.23.
COLOR_BOUND = 0.06

EXPORT_ARGS = ("--mesh-resolution", "192", "--faces", "6000")
STAGES_TEXTURED = ("render + TSDF fusion", "marching cubes", "clean", "decimate to 6,000 faces", "UV unwrap",
                   "texture bake", "write GLB")
STAGE_TIMES = ("render + TSDF fusion", "marching cubes", "clean", "decimate", "unwrap", "bake", "write")


def _surface_gaussians(n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """Flat, nearly opaque discs on the demo's true surfaces (oriented by the true normals), each
    with the colour the demo renders at its centre."""
    gt = demo_ground_truth()
    pts, nrm = gt.sample_surface(n, seed=seed)
    rgb, _ = gt.shade_rays(pts + 1e-3 * nrm, -nrm)  # a ray from just outside hits the point itself
    axis = np.cross([0.0, 0.0, 1.0], nrm)
    s = np.linalg.norm(axis, axis=1)
    angle = np.arctan2(s, nrm[:, 2])
    axis = np.where(s[:, None] > 1e-9, axis / np.maximum(s[:, None], 1e-12), [1.0, 0.0, 0.0])
    quats = np.concatenate([np.cos(angle / 2)[:, None], axis * np.sin(angle / 2)[:, None]], 1)
    r = 0.8 * math.sqrt(sum(gt.surface_areas().values()) / n)
    scales = np.log(np.stack([np.full(n, r), np.full(n, r), np.full(n, 0.1 * r)], 1))
    f32 = torch.float32
    return {
        "means": torch.tensor(pts, dtype=f32), "quats": torch.tensor(quats, dtype=f32),
        "scales": torch.tensor(scales, dtype=f32), "opacities": torch.full((n,), 4.0),
        "sh0": rgb_to_sh0(torch.tensor(rgb, dtype=f32)).reshape(n, 1, 3), "shN": torch.zeros(n, 0, 3),
    }


def _replace_scene(checkpoint: Path, params: dict[str, torch.Tensor]) -> None:
    payload = load_checkpoint(checkpoint)
    payload.pop("format_version")
    payload["scene"] = GaussianScene(params, sh_degree=0).state_dict()
    save_checkpoint(checkpoint, payload)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A `recon-train` run on a small demo scene (16 views of 128 x 96: 14 train, 2 held out)
    whose latest checkpoint holds the ground-truth Gaussians."""
    root = tmp_path_factory.mktemp("mesh-cli")
    data = make_demo_scene(root / "demo16", width=128, height=96, n_views=16)
    run = root / "run"
    env = dict(os.environ, RECON_CACHE=str(root / "cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "recon.cli.train", "--data", str(data), "--output", str(run), "--steps", "8",
         "--random-init-points", "600", "--no-progress", "--no-save-eval-renders"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    _replace_scene(run / "checkpoints" / "latest.pt", _surface_gaussians(16000))
    return run


def _export(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="160")  # wide enough that rich does not wrap a stage name
    return subprocess.run([sys.executable, "-m", "recon.cli.export", "mesh", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


# --- reading the GLB back -----------------------------------------------------------------------------
def _accessor(doc: dict, binary: bytes, index: int) -> np.ndarray:
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype = {5126: np.float32, 5125: np.uint32}[acc["componentType"]]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
    data = np.frombuffer(binary, dtype, acc["count"] * width, view["byteOffset"] + acc.get("byteOffset", 0))
    return data.reshape(acc["count"], width)


def _read_mesh(path: Path) -> dict:
    """World-space vertices (undoing the file's stated world_to_gltf), faces, attributes, texture."""
    from io import BytesIO

    from PIL import Image

    doc, binary = read_glb(path.read_bytes())
    prim, = doc["meshes"][0]["primitives"]
    attrs = prim["attributes"]
    recon = doc["asset"]["extras"]["recon"]
    to_world = np.linalg.inv(np.asarray(recon["world_to_gltf"]))
    pos = _accessor(doc, binary, attrs["POSITION"]).astype(np.float64)
    out = {
        "doc": doc, "recon": recon, "attributes": set(attrs),
        "vertices": pos @ to_world[:3, :3].T + to_world[:3, 3],
        "faces": _accessor(doc, binary, prim["indices"]).reshape(-1, 3).astype(np.int64),
        "material": doc["materials"][prim["material"]],
    }
    if "TEXCOORD_0" in attrs:
        out["uvs"] = _accessor(doc, binary, attrs["TEXCOORD_0"]).astype(np.float64)
    if "COLOR_0" in attrs:
        out["colors"] = _accessor(doc, binary, attrs["COLOR_0"]).astype(np.float64)
    tex = out["material"]["pbrMetallicRoughness"].get("baseColorTexture")
    if tex is not None:
        image = doc["images"][doc["textures"][tex["index"]]["source"]]
        view = doc["bufferViews"][image["bufferView"]]
        png = binary[view["byteOffset"]: view["byteOffset"] + view["byteLength"]]
        out["texture"] = np.asarray(Image.open(BytesIO(png)).convert("RGB"), dtype=np.float64) / 255.0
    return out


def _sample_faces(vertices: np.ndarray, faces: np.ndarray, k: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k points uniformly by area: (face index, barycentric weights [k, 3], points [k, 3])."""
    tri = vertices[faces]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    f = rng.choice(len(faces), k, p=area / area.sum())
    u, v = rng.random(k), rng.random(k)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    bary = np.stack([1 - u - v, u, v], 1)
    return f, bary, np.einsum("kj,kjc->kc", bary, tri[f])


def _chamfer(points: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    from scipy.spatial import cKDTree

    return float(cKDTree(truth).query(points)[0].mean()), float(cKDTree(points).query(truth)[0].mean())


def _true_colors(points: np.ndarray) -> np.ndarray:
    """The demo's shading (display values) at the true surface point nearest each point."""
    from scipy.spatial import cKDTree

    gt = demo_ground_truth()
    truth, normals = gt.sample_surface(120000, seed=5)
    _, nearest = cKDTree(truth).query(points)
    rgb, _ = gt.shade_rays(truth[nearest] + 1e-3 * normals[nearest], -normals[nearest])
    return rgb


def _check_geometry(mesh: dict, blender_mesh: dict, scale: float) -> None:
    gt = demo_ground_truth()
    rng = np.random.default_rng(0)
    _, _, points = _sample_faces(mesh["vertices"], mesh["faces"], 30000, rng)
    truth, _ = gt.sample_surface(30000, seed=3)
    accuracy, completeness = _chamfer(points, truth)
    print(f"chamfer: accuracy {accuracy:.4f} completeness {completeness:.4f} (bound {CHAMFER_BOUND})")
    assert (accuracy + completeness) / 2 < CHAMFER_BOUND
    # Blender is Z-up like the demo world: it must see the demo upright, in metres x --scale.
    assert blender_mesh["triangles"] == len(mesh["faces"])
    np.testing.assert_allclose(blender_mesh["bounds_min"], scale * gt.bounds[0], atol=0.06 * scale)
    np.testing.assert_allclose(blender_mesh["bounds_max"], scale * gt.bounds[1], atol=0.06 * scale)


def _check_stages(stdout: str, stages: tuple[str, ...], absent: tuple[str, ...] = ()) -> None:
    for name in stages:
        assert name in stdout, f"progress output does not name the stage {name!r}:\n{stdout}"
    for name in absent:
        assert name not in stdout, f"stage {name!r} should not run:\n{stdout}"


def _check_stage_times(stdout: str, names: tuple[str, ...], absent: tuple[str, ...] = ()) -> None:
    """The closing line lists each stage's seconds (and only the stages that ran)."""
    line, = [line for line in stdout.splitlines() if line.startswith("stage times:")]
    for name in names:
        assert re.search(rf"(: |, ){re.escape(name)} \d+\.\d s", line), (name, line)
    for name in absent:
        assert f" {name} " not in line, (name, line)
    assert re.search(r"\(total \d+\.\d s\)$", line), line


def _no_leftovers(folder: Path, keep: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == keep  # no temp files from the atomic writes


# --- end to end -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_textured_mesh_from_a_trained_run(trained_run, tmp_path):
    out = tmp_path / "out" / "scene.glb"  # the folder does not exist yet: the exporter makes it
    proc = _export(trained_run, "-o", out, "--target", "blender", "--texture-size", "256", *EXPORT_ARGS)
    assert proc.returncode == 0, proc.stderr
    _no_leftovers(out.parent, {"scene.glb"})
    _check_stages(proc.stdout, STAGES_TEXTURED)
    _check_stage_times(proc.stdout, STAGE_TIMES)
    assert f"wrote {out}" in " ".join(proc.stdout.split())

    mesh = _read_mesh(out)
    assert mesh["attributes"] == {"POSITION", "NORMAL", "TEXCOORD_0"}
    assert mesh["recon"]["target"] == "blender" and mesh["recon"]["metres_per_world_unit"] == 1.0
    assert mesh["recon"]["source_checkpoint"] == str(trained_run / "checkpoints" / "latest.pt")
    # the estimated up is the demo's +z (cameras on rings above the ground)
    np.testing.assert_allclose(mesh["recon"]["world_up"], [0, 0, 1], atol=0.02)
    assert 1000 < len(mesh["faces"]) <= 6000
    assert mesh["texture"].shape == (256, 256, 3)

    report, = validate_glb(out)
    assert report["numErrors"] == 0, report["messages"]
    assert report["info"]["hasTextures"] and report["info"]["totalTriangleCount"] == len(mesh["faces"])

    blender = blender_import(out)
    bmesh, = blender["meshes"]
    assert bmesh["color_attributes"] == [] and bmesh["uv"] is not None
    mat, = bmesh["materials"]
    assert mat["name"] == "recon_mesh_material"
    assert [im["size"] for im in mat["images"]] == [[256, 256]]
    _check_geometry(mesh, bmesh, scale=1.0)

    # The texture shows the scene's colours where the mesh is: texel under each sampled point's UV
    # (glTF: v runs down the image) against the demo's shading there.
    face, bary, points = _sample_faces(mesh["vertices"], mesh["faces"], 20000, np.random.default_rng(1))
    uv = np.einsum("kj,kjc->kc", bary, mesh["uvs"][mesh["faces"][face]])
    tex = mesh["texture"]
    rows = np.clip((uv[:, 1] * tex.shape[0]).astype(int), 0, tex.shape[0] - 1)
    cols = np.clip((uv[:, 0] * tex.shape[1]).astype(int), 0, tex.shape[1] - 1)
    error = np.abs(tex[rows, cols] - _true_colors(points))
    print(f"texture colour error: median {np.median(error):.4f}, 90th percentile {np.quantile(error, 0.9):.4f}")
    assert np.median(error) < COLOR_BOUND


@pytest.mark.slow
def test_vertex_colour_mesh_with_another_target_and_scale(trained_run):
    out = trained_run / "export" / "mesh.glb"  # the default output
    proc = _export(trained_run, "--vertex-colors", "--target", "unreal", "--scale", "0.5", *EXPORT_ARGS)
    assert proc.returncode == 0, proc.stderr
    _no_leftovers(out.parent, {"point_cloud.ply", "mesh.glb"})  # the PLY is recon-train's
    _check_stages(proc.stdout, tuple(s for s in STAGES_TEXTURED if s not in ("UV unwrap", "texture bake")),
                  absent=("UV unwrap", "texture bake"))
    _check_stage_times(proc.stdout, tuple(s for s in STAGE_TIMES if s not in ("unwrap", "bake")),
                       absent=("unwrap", "bake"))

    mesh = _read_mesh(out)
    assert mesh["attributes"] == {"POSITION", "NORMAL", "COLOR_0"}
    assert "baseColorTexture" not in mesh["material"]["pbrMetallicRoughness"]
    assert mesh["recon"]["target"] == "unreal" and mesh["recon"]["metres_per_world_unit"] == 0.5

    report, = validate_glb(out)
    assert report["numErrors"] == 0, report["messages"]
    assert not report["info"]["hasTextures"]

    blender = blender_import(out)
    bmesh, = blender["meshes"]
    assert len(bmesh["color_attributes"]) == 1 and bmesh["uv"] is None
    mat, = bmesh["materials"]
    assert mat["images"] == []
    _check_geometry(mesh, bmesh, scale=0.5)

    # COLOR_0 is linear RGB: the demo's display colours, linearised, at each vertex.
    error = np.abs(mesh["colors"][:, :3] - srgb_to_linear(_true_colors(mesh["vertices"])))
    print(f"vertex colour error (linear): median {np.median(error):.4f}, 90th percentile {np.quantile(error, 0.9):.4f}")
    assert np.median(error) < COLOR_BOUND


def test_up_of_an_uneven_capture_is_the_true_up():
    """The training split of the demo (every 8th view held out) covers one side more: the mean of
    the cameras' image-up axes leans 5 degrees towards it, the normal of their right axes does not."""
    from recon.datasets.demo import demo_cameras
    from recon.export.gltf import scene_up_vector

    train = [c for i, c in enumerate(demo_cameras(n_views=16)) if i % 8]
    mean_up = -np.mean([c.c2w[:3, 1] for c in train], axis=0)
    assert math.degrees(math.acos(mean_up[2] / np.linalg.norm(mean_up))) > 4.0  # the bias being fixed
    np.testing.assert_allclose(scene_up_vector(train), [0, 0, 1], atol=1e-9)
    # a rig looking straight down, turned every which way: still +z (the sign from the viewing direction)
    rng = np.random.default_rng(0)
    nadir = [look_at_c2w([x, y, 5.0], [x, y, 0.0], up=(math.cos(a), math.sin(a), 0.0))
             for x, y, a in rng.random((9, 3)) * 6]
    np.testing.assert_allclose(scene_up_vector(nadir), [0, 0, 1], atol=1e-9)
    # forward-facing (right axes nearly parallel): the mean image-up, as before
    facing = [look_at_c2w([x, -5.0, 1.0 + z], [0.0, 0.0, 1.0]) for x, z in rng.random((9, 2)) - 0.5]
    mean_up = -np.mean([m[:3, 1] for m in facing], axis=0)
    np.testing.assert_allclose(scene_up_vector(facing), mean_up / np.linalg.norm(mean_up), atol=1e-12)


def test_fusion_skips_views_that_see_nothing():
    """A camera whose render has no opaque pixel (sky only) adds nothing instead of aborting the
    fusion (open3d refuses to integrate a depth map that touches no voxel)."""
    from recon.datasets.demo import demo_cameras
    from recon.export.tsdf import RenderedView, fuse_tsdf

    gt = demo_ground_truth()
    cameras = demo_cameras(width=64, height=48, n_views=8)
    views = [RenderedView(c, gt.render(c, 1), gt.depth(c), (gt.depth(c) > 0).astype(np.float32)) for c in cameras]
    empty = RenderedView(cameras[0], np.ones((48, 64, 3), np.float32), np.zeros((48, 64), np.float32),
                         np.zeros((48, 64), np.float32))
    kw = dict(voxel_size=0.06, sdf_trunc=0.24, depth_trunc=8.0)
    mesh = fuse_tsdf(views[:4] + [empty] + views[4:], **kw)
    reference = fuse_tsdf(views, **kw)
    # (open3d's threaded block hashing may order the output differently from run to run)
    assert mesh.num_faces == reference.num_faces > 1000
    np.testing.assert_array_equal(np.unique(mesh.vertices, axis=0), np.unique(reference.vertices, axis=0))
    with pytest.raises(ValueError, match="none of the 2 views has depth"):
        fuse_tsdf([empty, empty], **kw)


# --- bad input: one line naming the file, exit 2, nothing written --------------------------------------
def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2 and one error line (the last; before it at most the image loader's progress bars)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), proc.stderr
    assert all("━" in line for line in lines[:-1]), proc.stderr
    for needle in needles:
        assert needle in lines[-1], (needle, proc.stderr)


def test_folder_without_checkpoint(tmp_path):
    out = tmp_path / "m.glb"
    proc = _export(tmp_path, "-o", out)
    _assert_one_line_error(proc, str(tmp_path), "checkpoints")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoints" / "latest.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    proc = _export(tmp_path)
    _assert_one_line_error(proc, str(ckpt), "not a readable recon checkpoint")
    assert not (tmp_path / "export").exists()


def test_zero_faces(tmp_path):
    out = tmp_path / "m.glb"
    proc = _export(tmp_path, "--faces", "0", "-o", out)
    _assert_one_line_error(proc, "--faces must be >= 1")
    assert not out.exists()


@pytest.mark.slow  # trains the run fixture
def test_output_folder_that_cannot_be_created(trained_run, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    out = blocker / "sub" / "m.glb"
    proc = _export(trained_run, "-o", out, *EXPORT_ARGS)
    _assert_one_line_error(proc, str(out), str(blocker))
    assert blocker.read_text() == "not a folder\n" and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.slow  # trains the run fixture
def test_output_that_is_not_a_glb(trained_run, tmp_path):
    out = tmp_path / "m.gltf"  # the exporter writes binary glTF only
    proc = _export(trained_run, "-o", out, *EXPORT_ARGS)
    _assert_one_line_error(proc, str(out), ".glb")
    assert not out.exists()


@pytest.mark.slow
def test_scene_without_surface(trained_run, tmp_path):
    """A run whose Gaussians are all transparent has no surface to mesh: one line naming the
    checkpoint, not a traceback, and no file."""
    run = tmp_path / "empty"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "latest.pt"
    ckpt.write_bytes((trained_run / "checkpoints" / "latest.pt").read_bytes())
    params = _surface_gaussians(500)
    params["opacities"] = torch.full((500,), -12.0)
    _replace_scene(ckpt, params)
    out = tmp_path / "m.glb"
    proc = _export(run, "-o", out, *EXPORT_ARGS)
    _assert_one_line_error(proc, str(ckpt), "surface")
    assert not out.exists() and not (run / "export").exists()
