"""The built-in demo scene: files, conventions, determinism, ground truth, caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recon.datasets import demo
from recon.datasets.cameras import Camera
from recon.datasets.demo import DemoGroundTruth, demo_cameras, demo_ground_truth, demo_scene_path, make_demo_scene
from recon.datasets.scene import SceneData
from recon.utils.paths import cache_root

W, H, N = 96, 72, 16  # small for speed; the defaults (160x120, 48 views) use the same code
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return make_demo_scene(tmp_path_factory.mktemp("demo") / "scene", width=W, height=H, n_views=N)


def _meta(root: Path) -> dict:
    return json.loads((root / "transforms.json").read_text())


def _cameras(root: Path) -> list[Camera]:
    """Cameras built from transforms.json the way a nerfstudio loader does (OpenGL -> OpenCV)."""
    m = _meta(root)
    return [
        Camera(
            name=Path(f["file_path"]).stem, width=m["w"], height=m["h"], fx=m["fl_x"], fy=m["fl_y"],
            cx=m["cx"], cy=m["cy"], c2w=np.asarray(f["transform_matrix"]) @ GL_TO_CV, image_path=root / f["file_path"],
        )
        for f in m["frames"]
    ]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- layout and metadata ------------------------------------------------------------------------
def test_layout_and_metadata(scene: Path):
    m = _meta(scene)
    assert (m["w"], m["h"]) == (W, H)
    assert m["cx"] == W / 2 and m["cy"] == H / 2 and m["fl_x"] == m["fl_y"] > 0
    assert not any(k in m for k in ("k1", "k2", "p1", "p2"))  # pinhole
    names = [Path(f["file_path"]).stem for f in m["frames"]]
    assert names == [f"r_{i:03d}" for i in range(N)]
    for f in m["frames"]:
        img = Image.open(scene / f["file_path"])
        assert img.size == (W, H) and img.mode == "RGB"
        depth = np.load(scene / f["depth_file_path"])
        assert depth.shape == (H, W) and depth.dtype == np.float32
    assert not (scene / "points3D.ply").exists() and "ply_file_path" not in m
    assert sorted(p.name for p in scene.iterdir()) == ["depth", "images", "transforms.json"]
    block = m["recon_demo"]
    assert block["version"] == demo.VERSION
    assert block["background"] == [1.0, 1.0, 1.0]
    assert block["seed"] == 0
    lo, hi = np.asarray(block["bounds"])
    assert np.all(lo < hi)
    np.testing.assert_array_equal(np.asarray(block["bounds"]), demo_ground_truth().bounds)


def test_split_holds_out_interpolated_views():
    """Every 8th view (SceneData.split) sits between training views of the same ring."""
    cams = demo_cameras()
    assert len(cams) == 48
    data = SceneData(root=Path("."), source="demo", cameras=cams)
    train, test = data.split()
    assert test == [0, 8, 16, 24, 32, 40]
    look_at = np.asarray(demo.LOOK_AT)
    dirs = np.stack([(c.center - look_at) / np.linalg.norm(c.center - look_at) for c in cams])
    for i in test:
        ang = np.degrees(np.arccos(np.clip(dirs[train] @ dirs[i], -1, 1)))
        assert np.sort(ang)[1] < 25.0  # at least two training views close by ...
        near = np.asarray(train)[np.argsort(ang)[:2]]
        a, b = dirs[near] - dirs[i]
        assert a @ b < 0  # ... on opposite sides


def test_cameras_look_at_the_centre(scene: Path):
    look_at = np.asarray(_meta(scene)["recon_demo"]["look_at"])
    for cam in _cameras(scene):
        R = cam.c2w[:3, :3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        uv, z = cam.project(look_at[None])
        np.testing.assert_allclose(uv[0], [cam.cx, cam.cy], atol=1e-9)  # on the optical axis
        assert z[0] > 0
        assert cam.center[2] > 0.5  # above the ground ...
        assert R[2, 1] < 0  # ... upright: image down (+y) points down in the world (z up)
        assert abs(R[2, 0]) < 1e-9  # no roll


# --- conventions: geometry, depth maps and pixels agree -----------------------------------------
def _bilinear(depth: np.ndarray, uv: np.ndarray):
    """Bilinear lookup with the pixel-centre-at-0.5 convention; returns values, 4 corners, in-bounds."""
    h, w = depth.shape
    x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    ok = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < w) & (y0 + 1 < h)
    x0, y0 = np.clip(x0, 0, w - 2), np.clip(y0, 0, h - 2)
    fx, fy = x - x0, y - y0
    q = np.stack([depth[y0, x0], depth[y0, x0 + 1], depth[y0 + 1, x0], depth[y0 + 1, x0 + 1]], axis=1)
    val = q[:, 0] * (1 - fx) * (1 - fy) + q[:, 1] * fx * (1 - fy) + q[:, 2] * (1 - fx) * fy + q[:, 3] * fx * fy
    return val, q, ok


def test_surface_points_project_onto_matching_depth(scene: Path):
    gt = demo_ground_truth()
    pts, _ = gt.sample_surface(30000, seed=1)
    for cam in _cameras(scene)[::3]:
        depth = np.load(scene / "depth" / f"{cam.name}.npy")
        uv, z = cam.project(pts)
        t, _ = gt.intersect(cam.center[None], pts - cam.center)  # the point is the first hit: t == 1
        visible = (z > 0) & (np.abs(t - 1.0) < 1e-6)
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        sel = visible & inside
        assert sel.sum() > 2000

        # the point's depth lies between the depths of the (up to) four pixel centres around it
        # (slack 0.5 %); only where all four centres hit something (not on the outer silhouette),
        # and allowing a few points near occlusion edges
        _, q, ok = _bilinear(depth, uv)
        covered = sel & ok & (q.min(1) > 0)
        assert covered.sum() > 0.8 * sel.sum()
        bracketed = (z >= q.min(1) * 0.995) & (z <= q.max(1) * 1.005)
        assert np.mean(bracketed[covered]) > 0.98, cam.name

        # interpolated at the exact sub-pixel position, the depth map matches the point closely;
        # with pixel centres at integers (a half-pixel shift) it would be far off
        errs = {}
        for shift in (0.0, 0.5):
            val, q, ok = _bilinear(depth, uv + shift)
            smooth = sel & ok & (q.min(1) > 0) & (q.max(1) - q.min(1) < 0.05 * q.min(1))
            errs[shift] = np.abs(val - z)[smooth] / z[smooth]
        assert np.median(errs[0.0]) < 2e-4, cam.name
        assert np.percentile(errs[0.0], 99) < 1e-2, cam.name
        assert np.median(errs[0.5]) > 10 * np.median(errs[0.0]), cam.name


def test_depth_background_is_background_colour(scene: Path):
    for cam in _cameras(scene)[::4]:
        img = np.asarray(Image.open(cam.image_path))
        depth = np.load(scene / "depth" / f"{cam.name}.npy")
        pad = np.pad(depth, 1, constant_values=0)
        empty = np.ones_like(depth, dtype=bool)
        for dy in range(3):
            for dx in range(3):
                empty &= pad[dy : dy + H, dx : dx + W] == 0
        assert empty.any() and (depth > 0).mean() > 0.2
        assert np.all(img[empty] == 255)  # white background wherever nothing is near
        assert np.all(img[0] == 255)  # the top row is sky


def test_images_have_texture(scene: Path):
    for cam in _cameras(scene):
        img = np.asarray(Image.open(cam.image_path)).astype(np.float64)
        fg = np.load(scene / "depth" / f"{cam.name}.npy") > 0
        assert img.std() > 30
        assert img[fg].std() > 25  # the objects themselves are textured, not flat
        assert len(np.unique(img[fg].reshape(-1, 3), axis=0)) > 300
        assert 0.2 < fg.mean() < 0.9


def test_files_are_the_ground_truth_renderer(scene: Path):
    """render(camera) / depth(camera) reproduce the files exactly for a camera read from JSON."""
    gt = demo_ground_truth()
    for cam in _cameras(scene)[::5]:
        img = np.clip(np.round(gt.render(cam).astype(np.float64) * 255), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(img, np.asarray(Image.open(cam.image_path)))
        np.testing.assert_array_equal(gt.depth(cam), np.load(scene / "depth" / f"{cam.name}.npy"))


def test_render_novel_view_and_supersampling():
    gt = demo_ground_truth()
    cam = demo_cameras(width=40, height=30, n_views=48, seed=7)[5]
    one, two = gt.render(cam, supersample=1), gt.render(cam, supersample=2)
    assert one.shape == two.shape == (30, 40, 3) and one.dtype == np.float32
    assert 0.0 <= two.min() and two.max() <= 1.0
    assert 0 < np.abs(one - two).mean() < 0.1  # anti-aliasing changes edges, not the picture
    half = cam.scaled(2)
    assert gt.depth(half).shape == (15, 20)


# --- determinism, atomicity, caching ------------------------------------------------------------
def test_generation_is_deterministic(tmp_path: Path, scene: Path):
    again = make_demo_scene(tmp_path / "again", width=W, height=H, n_views=N)
    assert _files(again) == _files(scene)
    other = make_demo_scene(tmp_path / "seed1", width=W, height=H, n_views=N, seed=1)
    assert _meta(other)["recon_demo"]["seed"] == 1
    assert _meta(other)["frames"] != _meta(scene)["frames"]  # the seed jitters the cameras


def test_killed_run_leaves_nothing(tmp_path: Path, monkeypatch):
    calls = {"n": 0}
    real = DemoGroundTruth.render

    def flaky(self, camera, supersample=2):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, camera, supersample)

    monkeypatch.setattr(DemoGroundTruth, "render", flaky)
    with pytest.raises(KeyboardInterrupt):
        make_demo_scene(tmp_path / "scene", width=32, height=24, n_views=8)
    assert list(tmp_path.iterdir()) == []


def test_make_replaces_an_existing_folder(tmp_path: Path):
    out = tmp_path / "scene"
    (out / "images").mkdir(parents=True)
    (out / "stale.txt").write_text("old")
    make_demo_scene(out, width=32, height=24, n_views=8)
    assert not (out / "stale.txt").exists() and len(_meta(out)["frames"]) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]


def test_demo_scene_path_is_cached_and_reused():
    path = demo_scene_path(48, 36)
    assert path == cache_root() / "demo" / f"v{demo.VERSION}-48x36"
    m = _meta(path)
    assert len(m["frames"]) == 48 and (m["w"], m["h"]) == (48, 36)
    stamp = {p: p.stat().st_mtime_ns for p in path.rglob("*")}
    assert demo_scene_path(48, 36) == path
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*")} == stamp  # not rendered again
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp folders left


def test_demo_scene_path_replaces_an_incomplete_folder():
    path = cache_root() / "demo" / f"v{demo.VERSION}-32x24-n8-s0"
    (path / "images").mkdir(parents=True)  # e.g. left by hand: no transforms.json
    assert demo_scene_path(32, 24, n_views=8) == path
    assert len(_meta(path)["frames"]) == 8


# --- ground-truth geometry ----------------------------------------------------------------------
def test_sample_surface():
    gt = demo_ground_truth()
    pts, nrm = gt.sample_surface(5000, seed=3)
    assert pts.shape == nrm.shape == (5000, 3)
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-12)
    lo, hi = gt.bounds
    assert np.all(pts >= lo - 1e-9) and np.all(pts <= hi + 1e-9)
    again = gt.sample_surface(5000, seed=3)
    np.testing.assert_array_equal(pts, again[0])
    assert not np.array_equal(pts, gt.sample_surface(5000, seed=4)[0])

    # on the surface, normals outward: a ray from just outside, back along -n, hits at once
    t, obj = gt.intersect(pts + 1e-3 * nrm, -nrm)
    np.testing.assert_allclose(t, 1e-3, atol=1e-9)
    # every part is represented, in proportion to its area
    counts = np.bincount(obj, minlength=4) / len(obj)
    areas = gt.surface_areas()
    total = sum(areas.values())
    expect = [
        areas["ground"] / total,
        areas["sphere"] / total,
        (areas["box_sides"] + areas["box_top"]) / total,
        (areas["cylinder_side"] + areas["cylinder_top"]) / total,
    ]
    np.testing.assert_allclose(counts, expect, atol=0.02)


def test_depth_of_a_hand_made_camera():
    """A camera straight above the sphere sees its top at the analytic distance."""
    gt = demo_ground_truth()
    top = demo.SPHERE_CENTER + [0.0, 0.0, demo.SPHERE_RADIUS]
    eye = top + [0.0, 0.0, 2.0]
    c2w = np.eye(4)
    c2w[:3, :3] = np.diag([1.0, -1.0, -1.0])  # looking straight down (OpenCV z = world -z)
    c2w[:3, 3] = eye
    cam = Camera(name="top", width=21, height=21, fx=30.0, fy=30.0, cx=10.5, cy=10.5, c2w=c2w)
    depth = gt.depth(cam)
    assert depth[10, 10] == pytest.approx(2.0, abs=1e-6)
    ground_z = eye[2]  # the ground is a plane facing the camera: constant z-depth
    _, obj = gt.intersect(eye[None], np.concatenate([(np.mgrid[0:21, 0:21][::-1].reshape(2, -1).T + 0.5 - 10.5) / 30.0,
                                                     np.ones((441, 1))], 1) @ c2w[:3, :3].T)
    on_ground = obj.reshape(21, 21) == demo.GROUND
    assert on_ground.sum() > 50
    np.testing.assert_allclose(depth[on_ground], ground_z, rtol=1e-6)
    assert depth.max() <= ground_z + 1e-5


# --- through the real NeRF loader, once it exists -----------------------------------------------
def test_nerf_loader_reads_the_demo(scene: Path):
    nerf = pytest.importorskip("recon.datasets.nerf")
    load = getattr(nerf, "load_nerf", None)
    if load is None:
        pytest.skip("recon.datasets.nerf has no load_nerf yet")
    data = load(scene)
    assert len(data.cameras) == N
    ours = sorted(_cameras(scene), key=lambda c: c.name)
    for cam, ref in zip(data.cameras, ours):
        assert Path(cam.name).stem == ref.name
        np.testing.assert_allclose(cam.c2w, ref.c2w, atol=1e-9)
        assert (cam.fx, cam.fy, cam.cx, cam.cy) == (ref.fx, ref.fy, ref.cx, ref.cy)
        assert (cam.width, cam.height) == (ref.width, ref.height) and cam.distortion is None
    if "demo" not in data.extras:
        pytest.xfail("load_nerf does not copy the transforms.json 'recon_demo' block into extras['demo'] yet")
    assert data.extras["demo"] == _meta(scene)["recon_demo"]
