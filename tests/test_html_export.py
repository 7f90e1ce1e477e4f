"""``recon-export html``: one self-contained file, opened in real headless Chromium with the network cut.

Reference pictures come from recon's own renderer (``GaussianScene.render``, PyTorch reference path)
of the same camera. Resemblance is PSNR over the centre crop (the middle half of each axis):

- the page must reach >= 30 dB. Page and recon evaluate the same formulas; what differs is float16
  storage of scales/rotations/opacity/colour, int8 higher SH bands and blending in an 8-bit
  framebuffer. Measured on this scene: 50.2 dB;
- the same page looking through a camera 15 degrees of azimuth away must score < 20 dB against the
  right reference (measured 14.7 dB), so the threshold does tell views apart; and that page must
  match recon's render of the camera it was given (it honours ``#cam=``).

Screenshots land in the test's tmp folder, and also in $RECON_SCREENSHOT_DIR when that is set.
"""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from browser import Chromium, chromium_path
from conftest import require_client
from recon.export.html import DEFAULT_MAX_SPLATS, ViewerCamera, build_page, default_camera, write_html
from splat_scenes import (
    HEIGHT, WIDTH, as_float, assert_not_blank, cameras, centre_psnr, demo_surface_gaussians, keep_screenshot,
    render_reference,
)

MATCH_DB = 30.0
MISMATCH_DB = 20.0
WRONG = 1  # the next camera on the ring: 15 degrees of azimuth from camera 0
READY = "window.reconViewer && (window.reconViewer.ready || window.reconViewer.error)"

pytestmark = pytest.mark.slow


def need_chromium() -> None:
    require_client(chromium_path() is not None, "chromium (Debian package)")


@pytest.fixture(scope="module")
def scene():
    return demo_surface_gaussians(), cameras()


@pytest.fixture(scope="module")
def references(scene):
    params, cams = scene
    return {i: render_reference(params, cams[i]) for i in (0, WRONG)}


@pytest.fixture(scope="module")
def page_file(scene, tmp_path_factory) -> Path:
    params, cams = scene
    return write_html(tmp_path_factory.mktemp("html") / "scene.html", gaussians=params, cameras=cams,
                      initial_camera=0, background=(1.0, 1.0, 1.0), title="demo splats")


def embedded(page: str) -> tuple[dict, bytes]:
    meta = json.loads(re.search(r'<script id="recon-meta" type="application/json">(.*?)</script>', page, re.S).group(1))
    data = base64.b64decode(re.search(r'<script id="recon-data" type="application/octet-stream">(.*?)</script>', page, re.S).group(1))
    return meta, data


def section(meta: dict, data: bytes, name: str) -> np.ndarray:
    s = meta["sections"][name]
    return np.frombuffer(data, dtype=np.dtype(s["dtype"]).newbyteorder("<"), count=s["length"] // np.dtype(s["dtype"]).itemsize,
                         offset=s["offset"]).reshape(s["shape"])


def after_next_frame(page, action) -> None:
    """Run ``action`` (input, navigation), then wait until the viewer has drawn and presented a new
    frame whose splats were sorted for its view (sorting runs in a worker and may lag a frame)."""
    frames = page.evaluate("reconViewer.frames")
    action()
    page.evaluate(
        "(async () => { while (reconViewer.frames === %d || !reconViewer.settled)"
        " await new Promise(r => requestAnimationFrame(r));"
        " await new Promise(r => requestAnimationFrame(r)); })()" % frames
    )


# --- the file itself (no browser) ----------------------------------------------------------------
def test_page_is_one_self_contained_file(page_file, scene):
    text = page_file.read_text(encoding="utf-8")
    assert not re.search(r"(https?|ftp|wss?):", text, re.I), "the page must not name any network URL"
    assert not re.search(r"\bsrc\s*=|<link\b|@import|\bimport\s*\(|\bfetch\s*\(|XMLHttpRequest", text), \
        "the page must not load anything from outside itself"
    meta, _ = embedded(text)
    params, cams = scene
    assert meta["gaussians"]["count"] == params["means"].shape[0] and meta["gaussians"]["sh_degree"] == 3
    assert len(meta["cameras"]) == len(cams) and meta["initial_camera"] == 0
    assert np.allclose(meta["cameras"][0]["c2w"], cams[0].c2w)


def test_embedded_gaussians_decode_to_the_scene(page_file, scene):
    params, _ = scene
    meta, data = embedded(page_file.read_text(encoding="utf-8"))
    assert np.array_equal(section(meta, data, "means"), params["means"].numpy())
    logs = section(meta, data, "log_scales").astype(np.float64)
    assert np.abs(logs - params["scales"].numpy()).max() < 4e-3  # float16 of |log s| < 8: step 2^-8
    q = params["quats"].numpy() / np.linalg.norm(params["quats"].numpy(), axis=1, keepdims=True)
    assert np.abs(section(meta, data, "quats").astype(np.float64) - q).max() < 1e-3
    assert np.abs(section(meta, data, "opacities") - torch.sigmoid(params["opacities"]).numpy()).max() < 1e-3
    assert np.abs(section(meta, data, "dc") - 0.28209479177387814 * params["sh0"].numpy().reshape(-1, 3)).max() < 1e-3
    rest = section(meta, data, "sh_rest").astype(np.float64).reshape(-1, 15, 3) * meta["gaussians"]["sh_rest_scale"] / 127
    err = np.abs(rest - params["shN"].numpy())
    inside = np.abs(params["shN"].numpy()) <= meta["gaussians"]["sh_rest_scale"]
    assert err[inside].max() <= meta["gaussians"]["sh_rest_scale"] / 254 + 1e-7  # half a quantisation step
    assert inside.mean() > 0.998  # only the top 0.1% is clipped to the scale


def test_max_splats_keeps_the_most_visible_gaussians():
    n = 2000
    params = demo_surface_gaussians(n)
    params["opacities"][: n // 2] = -6.0  # nearly transparent half
    params["scales"][n // 2 : n // 2 + 100] -= 3.0  # 100 tiny ones among the opaque half
    _, meta = build_page(gaussians=params, max_splats=800)
    assert meta["gaussians"]["count"] == 800 and meta["gaussians"]["total"] == n
    page, _ = build_page(gaussians=params, max_splats=800)
    kept = section(*embedded(page), "means")
    opaque = {tuple(p) for p in params["means"][n // 2 + 100 :].numpy()}
    assert all(tuple(p) in opaque for p in kept)
    assert DEFAULT_MAX_SPLATS >= 1_000_000


@pytest.mark.parametrize("up", [(0.0, 0.0, 1.0), (0.0, -1.0, 0.0), (0.3, 0.2, -0.9)])
def test_default_camera_looks_at_the_content_upright(up):
    from recon.datasets.cameras import Camera

    cam = default_camera({"center": [1.0, 2.0, 3.0], "radius": 2.0}, up, 320, 240)
    camera = Camera("default", cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy, cam.c2w)
    assert np.allclose(cam.c2w[:3, :3] @ cam.c2w[:3, :3].T, np.eye(3)) and np.linalg.det(cam.c2w[:3, :3]) > 0
    centre = np.array([1.0, 2.0, 3.0])
    uv, z = camera.project(np.stack([centre, centre + 0.5 * np.asarray(up) / np.linalg.norm(up)]))
    assert np.allclose(uv[0], [160, 120]) and (z > 0).all()
    assert uv[1, 1] < uv[0, 1] - 10 and abs(uv[1, 0] - uv[0, 0]) < 1e-6  # "up" is straight up in the picture


def test_nothing_to_show_is_an_error():
    with pytest.raises(ValueError, match="nothing to show"):
        build_page()


# --- in the browser -------------------------------------------------------------------------------
def test_browser_offline_draws_recon_render_of_the_held_out_view(page_file, scene, references, tmp_path):
    need_chromium()
    params, cams = scene
    with Chromium(offline=True) as browser:
        # No URL fragment: the page must start at the camera the exporter chose (the held-out view 0).
        page = browser.open(page_file.as_uri(), WIDTH, HEIGHT, wait_for=READY)
        assert page.evaluate("window.reconViewer.error") is None, page.errors()
        assert page.errors() == []
        assert page.evaluate("window.reconViewer.splats") == params["means"].shape[0]
        shot = page.screenshot(tmp_path / "html_heldout_view.png")
        keep_screenshot(tmp_path / "html_heldout_view.png")
        assert_not_blank(shot)
        match = centre_psnr(shot, references[0])
        assert match >= MATCH_DB, f"page vs recon render: {match:.1f} dB"
        assert centre_psnr(shot, references[WRONG]) < MISMATCH_DB

        # Another camera through the URL fragment (hashchange): the page shows exactly that view.
        fragment = ViewerCamera.from_camera(cams[WRONG]).url_fragment() + "&ui=0"
        after_next_frame(page, lambda: page.evaluate(f"location.hash = {json.dumps(fragment)}"))
        moved = page.screenshot(tmp_path / "html_other_camera.png")
        keep_screenshot(tmp_path / "html_other_camera.png")
        wrong = centre_psnr(moved, references[0])
        assert wrong < MISMATCH_DB, f"a camera 15 degrees away still scores {wrong:.1f} dB: the check cannot tell views apart"
        assert centre_psnr(moved, references[WRONG]) >= MATCH_DB

        # Controls: a drag orbits away from that view (and re-sorts); "r" returns to the start camera,
        # "n" steps to the dataset's next camera.
        sorts = page.evaluate("reconViewer.sorts")
        after_next_frame(page, lambda: page.drag((60, 60), (110, 75)))
        orbited = page.screenshot()
        assert page.evaluate("reconViewer.sorts") > sorts
        assert centre_psnr(orbited, references[WRONG]) < MISMATCH_DB
        assert_not_blank(orbited, min_fraction=0.05)
        after_next_frame(page, lambda: page.press("r"))
        assert centre_psnr(page.screenshot(), references[0]) >= MATCH_DB
        after_next_frame(page, lambda: page.press("n"))
        assert centre_psnr(page.screenshot(), references[WRONG]) >= MATCH_DB
        assert page.errors() == []
        urls = page.requested_urls()
    assert urls and all(u.startswith(("file:", "data:", "blob:")) for u in urls), urls


def _uv_sphere(center, radius, rings=48, segments=96):
    from recon.export.mesh import TriangleMesh

    theta = np.linspace(0, math.pi, rings + 1)[:, None]
    phi = np.linspace(0, 2 * math.pi, segments + 1)[None, :]
    pts = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta) + 0 * phi], -1).reshape(-1, 3)
    idx = np.arange((rings + 1) * (segments + 1)).reshape(rings + 1, segments + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    colors = np.where(pts[:, 2:3] > 0, [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]).astype(np.float32)  # red top, blue bottom (linear)
    return TriangleMesh(np.asarray(center) + radius * pts, faces, vertex_colors=colors)


def _textured_square(half):
    from recon.export.mesh import TriangleMesh

    verts = np.array([[-half, -half, 0], [half, -half, 0], [half, half, 0], [-half, half, 0]], np.float32)
    uvs = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], np.float32)  # v runs top to bottom of the image
    tex = np.zeros((64, 64, 3), np.uint8)
    tex[:32, :32] = (230, 60, 40)  # top-left of the image: world (-x, +y)
    tex[:32, 32:] = (40, 170, 60)  # top-right: (+x, +y)
    tex[32:, :32] = (50, 80, 220)  # bottom-left: (-x, -y)
    tex[32:, 32:] = (240, 200, 40)  # bottom-right: (+x, -y)
    return TriangleMesh(verts, np.array([[0, 1, 2], [0, 2, 3]]), uvs=uvs, texture=tex), tex


def _srgb(linear):
    linear = np.clip(linear, 0, 1)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def test_browser_draws_recon_glb_meshes_in_the_cameras_world(tmp_path):
    """A vertex-coloured sphere above a textured square, both written by recon's GLB writer (Y-up,
    rotated from the demo's z-up world), shown through demo camera 0. Expected picture computed
    analytically per pixel centre: which surface the ray hits first and that surface's colour
    (vertex colours are linear -> shown sRGB-encoded; the texture is sRGB -> shown as is)."""
    need_chromium()
    from recon.export.gltf import write_mesh_glb

    center, radius, half = np.array([0.1, -0.2, 0.55]), 0.4, 1.2
    write_mesh_glb(_uv_sphere(center, radius), tmp_path / "sphere.glb", up=(0.0, 0.0, 1.0))
    square, tex = _textured_square(half)
    write_mesh_glb(square, tmp_path / "square.glb", up=(0.0, 0.0, 1.0))
    cam = cameras()[0]
    page_path = write_html(tmp_path / "meshes.html", meshes=[(tmp_path / n).read_bytes() for n in ("sphere.glb", "square.glb")],
                           cameras=[cam], background=(1.0, 1.0, 1.0))
    with Chromium(offline=True) as browser:
        page = browser.open(page_path.as_uri() + "#ui=0", WIDTH, HEIGHT, wait_for=READY)
        assert page.evaluate("window.reconViewer.error") is None, page.errors()
        assert page.evaluate("window.reconViewer.meshes") == 2
        shot = as_float(page.screenshot(tmp_path / "html_meshes.png"))
        keep_screenshot(tmp_path / "html_meshes.png")

    # Analytic picture: class per pixel (0 background, 1 sphere top, 2 sphere bottom, 3.. texture quadrants).
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH] + 0.5
    dirs = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u)], -1) @ cam.c2w[:3, :3].T
    o = cam.c2w[:3, 3]
    oc = o - center
    b = dirs @ oc
    a = (dirs * dirs).sum(-1)
    disc = b * b - a * (oc @ oc - radius**2)
    t_sphere = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
    t_plane = -o[2] / dirs[..., 2]
    hit_plane = o + t_plane[..., None] * dirs
    on_square = (t_plane > 0) & (np.abs(hit_plane[..., 0]) < half) & (np.abs(hit_plane[..., 1]) < half)
    t_plane = np.where(on_square, t_plane, np.inf)
    expected = np.ones((HEIGHT, WIDTH, 3))
    certain = np.zeros((HEIGHT, WIDTH), bool)
    sphere_first = np.isfinite(t_sphere) & (t_sphere < t_plane)
    z = (o + t_sphere[..., None] * dirs)[..., 2] - center[2]
    for mask, col in ((sphere_first & (z > 0.15 * radius), [0.8, 0.1, 0.1]), (sphere_first & (z < -0.15 * radius), [0.1, 0.1, 0.8])):
        expected[mask] = _srgb(np.array(col))
        certain |= mask
    square_first = np.isfinite(t_plane) & ~sphere_first
    x, y = hit_plane[..., 0], hit_plane[..., 1]
    away_from_seams = (np.abs(x) > 0.08) & (np.abs(y) > 0.08) & (np.abs(x) < half - 0.08) & (np.abs(y) < half - 0.08)
    for sx, sy, col in ((-1, 1, tex[0, 0]), (1, 1, tex[0, 63]), (-1, -1, tex[63, 0]), (1, -1, tex[63, 63])):
        mask = square_first & away_from_seams & (np.sign(x) == sx) & (np.sign(y) == sy)
        expected[mask] = col / 255.0
        certain |= mask
    empty = ~np.isfinite(np.minimum(t_sphere, t_plane))
    certain |= empty
    # Drop pixels next to a silhouette (their coverage depends on rasterisation rules).
    edge = np.zeros_like(certain)
    label = np.where(sphere_first, 1, np.where(np.isfinite(t_plane), 2, 0))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            edge |= np.roll(label, (dy, dx), (0, 1)) != label
    certain &= ~edge
    assert certain.sum() > 0.5 * certain.size
    assert (sphere_first & certain).sum() > 300 and (square_first & certain).sum() > 3000
    close = np.abs(shot - expected).max(-1) < 0.06
    assert close[certain].mean() > 0.97, f"only {close[certain].mean():.1%} of the pixels show the expected surface colour"


def test_browser_draws_splats_and_a_mesh_together_with_depth(scene, references, tmp_path):
    """The demo splats plus an opaque sphere mesh in one page: where the sphere is nearer than every
    demo surface it hides the splats (depth test), and away from the sphere the picture is still
    recon's render of the splats."""
    need_chromium()
    from recon.datasets.demo import demo_ground_truth
    from recon.export.gltf import write_mesh_glb

    params, cams = scene
    cam = cams[0]
    center, radius = np.array([0.9, 0.6, 0.7]), 0.3
    write_mesh_glb(_uv_sphere(center, radius), tmp_path / "sphere.glb", up=(0.0, 0.0, 1.0))
    page_path = write_html(tmp_path / "both.html", gaussians=params, meshes=[(tmp_path / "sphere.glb").read_bytes()],
                           cameras=cams, initial_camera=0, background=(1.0, 1.0, 1.0))
    with Chromium(offline=True) as browser:
        page = browser.open(page_path.as_uri() + "#ui=0", WIDTH, HEIGHT, wait_for=READY)
        assert page.evaluate("window.reconViewer.error") is None, page.errors()
        assert page.evaluate("[reconViewer.splats, reconViewer.meshes]") == [params["means"].shape[0], 1]
        shot = as_float(page.screenshot(tmp_path / "html_splats_and_mesh.png"))
        keep_screenshot(tmp_path / "html_splats_and_mesh.png")
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH] + 0.5
    dirs = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u)], -1) @ cam.c2w[:3, :3].T
    oc = cam.c2w[:3, 3] - center
    b = dirs @ oc
    a = (dirs * dirs).sum(-1)
    disc = b * b - a * (oc @ oc - radius**2)
    t_sphere = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)  # z-depth: dirs have camera z = 1
    near_sphere = np.zeros_like(disc, bool)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            near_sphere |= np.roll(disc > -0.05 * radius**2 * a, (dy, dx), (0, 1))
    assert (~near_sphere).mean() > 0.8 and near_sphere.sum() > 400
    splats_only = as_float(references[0])
    outside = -10 * math.log10(np.mean((shot[~near_sphere] - splats_only[~near_sphere]) ** 2))
    assert outside >= MATCH_DB, f"away from the mesh the page differs from the splat render: {outside:.1f} dB"
    depth = demo_ground_truth().depth(cam)
    in_front = np.isfinite(t_sphere) & ((depth == 0) | (t_sphere < depth - 0.1)) & (disc > 0.2 * radius**2 * a)
    z = (cam.c2w[:3, 3] + t_sphere[..., None] * dirs)[..., 2] - center[2]
    expected = np.where((z > 0)[..., None], _srgb(np.array([0.8, 0.1, 0.1])), _srgb(np.array([0.1, 0.1, 0.8])))
    certain = in_front & (np.abs(z) > 0.15 * radius)
    assert certain.sum() > 100
    close = np.abs(shot - expected).max(-1) < 0.06
    assert close[certain].mean() > 0.95, f"the mesh shows its colour on only {close[certain].mean():.1%} of its pixels"


# --- the command line -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "demo"
    subprocess.run(
        [sys.executable, "-m", "recon.cli.train", "--data", "demo", "--output", str(out), "--steps", "2",
         "--random-init-points", "500", "--no-progress", "--no-save-eval-renders"],
        check=True, capture_output=True, text=True, timeout=900,
    )
    return out


def test_cli_html_of_a_trained_run_shows_its_held_out_view(trained_run, tmp_path):
    need_chromium()
    from recon.cli.runs import load_run

    out = tmp_path / "run.html"
    proc = subprocess.run([sys.executable, "-m", "recon.cli.export", "html", str(trained_run), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "wrote" in proc.stdout
    assert "note:" not in proc.stdout, proc.stdout  # the run's cameras were found
    scene, cfg, _, _ = load_run(trained_run, "latest", "cpu")
    from recon.datasets.loader import load_scene

    data = load_scene(cfg.data, check_images=False)
    held_out = data.cameras[data.split(cfg.holdout_every)[1][0]]
    with torch.no_grad():
        reference = scene.render(held_out, background=torch.ones(3)).image.clamp(0, 1).double().numpy()
    with Chromium(offline=True) as browser:
        page = browser.open(out.as_uri(), held_out.width, held_out.height, wait_for=READY)
        assert page.evaluate("window.reconViewer.error") is None, page.errors()
        shot = page.screenshot(tmp_path / "html_cli_run.png")
        keep_screenshot(tmp_path / "html_cli_run.png")
    assert_not_blank(shot, min_fraction=0.05)
    match = centre_psnr(shot, reference)
    assert match >= MATCH_DB, f"page vs recon render of the held-out view: {match:.1f} dB; export said: {proc.stdout}"


@pytest.mark.parametrize(
    "args, problem",
    [
        (["{missing}"], "no such file or folder"),
        (["{run}", "-o", "{tmp}/scene.png"], "must end in .html"),
        (["{run}", "--max-splats", "0"], "--max-splats must be at least 1"),
        (["{run}", "--mesh", "{tmp}/not_a.glb"], "not a GLB"),
    ],
)
def test_cli_html_bad_input_is_one_line(trained_run, tmp_path, args, problem):
    (tmp_path / "not_a.glb").write_text("hello")
    fill = {"missing": str(tmp_path / "missing"), "run": str(trained_run), "tmp": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "recon.cli.export", "html", *[a.format(**fill) for a in args]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert "Traceback" not in proc.stderr and len(errors) == 1 and problem in errors[0], proc.stderr
    assert not list(tmp_path.glob("*.html")) and not (trained_run / "export" / "scene.html").exists()
