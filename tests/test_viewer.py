"""The live viewer (recon.viewers): camera conversion, server binding, frames equal to the method's
renders, pause/resume of a live run, the recon-view / recon-train --viewer command lines, and a real
headless browser showing a server-rendered frame."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_client
from recon.config import TrainConfig
from recon.datasets.cameras import Camera, look_at_c2w
from recon.datasets.demo import demo_cameras
from recon.scenes.gaussians import GaussianScene
from recon.strategy import DefaultStrategy
from recon.training.trainer import Trainer
from recon.viewers.camera import (
    camera_from_viser, focus_point, matrix_to_quat, quat_to_matrix, render_size, up_vector, viser_pose_of,
)
from recon.viewers.live import LiveViewer, announce_line, to_uint8
from recon.viewers.sources import RenderOptions, SceneRenderer, ViewTarget, open_target

REPO = Path(__file__).resolve().parent.parent
TINY = dict(data="demo", random_init_points=400, progress=False, save_eval_renders=False, holdout_every=0,
            compress_schedules=False, strategy=DefaultStrategy(refine_start=1000, refine_stop=1000),
            sh_degree_interval=5)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """IPv4/IPv6 addresses a socket of this machine listens on at ``port`` (from /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A = LISTEN
                continue
            raw = bytes.fromhex(addr_hex)
            if len(raw) == 4:
                found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
            else:  # /proc prints IPv6 as four little-endian 32-bit words
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read().decode("utf-8", "replace")


def random_scene(n: int = 300, sh_scale: float = 0.0, opacity: float = 0.1, seed: int = 0) -> GaussianScene:
    scene = GaussianScene.random_in_bounds([-1.0, -1.0, 0.0], [1.0, 1.0, 0.8], n, seed=seed, sh_degree=3,
                                           init_opacity=opacity)
    if sh_scale:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            scene.params["shN"].copy_(sh_scale * torch.randn(scene.params["shN"].shape, generator=g))
    return scene


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 6-step demo run (its own cache, so nothing is written outside the test's temp folders)."""
    root = tmp_path_factory.mktemp("viewer-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECON_CACHE", str(root / "cache"))
        trainer = Trainer(TrainConfig(output=root / "run", steps=6, **TINY))
        trainer.setup()
        trainer.train()
    trainer.demo_cache = root / "cache"  # tests that reload the demo's cameras reuse it
    return trainer


# --- camera conversion ------------------------------------------------------------------------------


def test_quaternion_round_trip_and_agreement_with_viser():
    import viser.transforms as vtf

    rng = np.random.default_rng(0)
    quats = list(rng.normal(size=(50, 4)))
    quats += [np.array([0.0, 1.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 1.0]), np.array([1e-4, 0.7, 0.7, 0.0])]  # ~180 deg
    for q in quats:
        q = q / np.linalg.norm(q)
        R = quat_to_matrix(q)
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-12) and np.isclose(np.linalg.det(R), 1.0)
        # viser's own reading of the same quaternion (what the browser camera means)
        assert np.allclose(R, vtf.SO3(q).as_matrix(), atol=1e-12)
        q2 = matrix_to_quat(R)
        assert np.allclose(quat_to_matrix(q2), R, atol=1e-12)
        assert np.isclose(abs(float(q2 @ q)), 1.0, atol=1e-12)


def test_camera_round_trip():
    for cam in demo_cameras(width=64, height=48, n_views=10):
        pose = viser_pose_of(cam)
        assert np.isclose(pose.aspect, 64 / 48)
        back = camera_from_viser(pose.wxyz, pose.position, pose.fov, pose.aspect, cam.width, cam.height)
        assert np.allclose(back.c2w, cam.c2w, atol=1e-12)
        assert np.allclose([back.fx, back.fy, back.cx, back.cy], [cam.fx, cam.fy, cam.cx, cam.cy], atol=1e-9)
    # the height follows the aspect when not given; the field of view is vertical
    cam = camera_from_viser([1, 0, 0, 0], [0, 0, 0], math.radians(60), 2.0, 200)
    assert (cam.width, cam.height) == (200, 100)
    assert np.isclose(2 * math.atan(0.5 * cam.height / cam.fy), math.radians(60))
    assert render_size(0.5, 320) == (160, 320) and render_size(16 / 9, 320) == (320, 180)
    with pytest.raises(ValueError):
        camera_from_viser([1, 0, 0, 0], [0, 0, 0], 0.0, 1.0, 10)


def test_converted_camera_renders_like_the_training_view():
    """A training view sent through viser's description and back renders the same image."""
    scene = random_scene(sh_scale=0.3, opacity=0.5)
    cam = demo_cameras(width=48, height=36, n_views=4)[1]
    pose = viser_pose_of(cam)
    viewer_cam = camera_from_viser(pose.wxyz, pose.position, pose.fov, pose.aspect, cam.width)
    a = scene.render(cam, background=(1.0, 1.0, 1.0)).image
    b = scene.render(viewer_cam, background=(1.0, 1.0, 1.0)).image
    assert a.std() > 0.02, "the test scene must be visible from this view"
    assert torch.allclose(a, b, atol=1e-5)


def test_up_and_focus_from_cameras():
    cams = demo_cameras(width=32, height=24, n_views=16)
    up = up_vector(cams)
    assert up is not None and float(up @ np.array([0.0, 0.0, 1.0])) > 0.9  # the demo is z-up
    assert np.allclose(focus_point(cams), [0.0, 0.0, 0.25], atol=1e-6)  # the demo's look-at point
    assert up_vector([]) is None and focus_point([]) is None
    # cameras looking the same way: no least-squares point, fall back to the mean centre
    c2ws = [look_at_c2w([x, 0.0, 0.0], [x, 1.0, 0.0]) for x in (0.0, 1.0, 2.0)]
    parallel = [Camera("p", 8, 8, 8.0, 8.0, 4.0, 4.0, c) for c in c2ws]
    assert np.allclose(focus_point(parallel), [1.0, 0.0, 0.0])


# --- the server ---------------------------------------------------------------------------------------


def test_server_binds_loopback_and_serves_the_client():
    target = ViewTarget(label="random", render=SceneRenderer(random_scene(), (0.0, 0.0, 0.0)), max_sh_degree=3)
    port = free_port()
    viewer = LiveViewer(target, port=port)
    try:
        assert viewer.port == port
        assert listening_addresses(port) == {"127.0.0.1"}
        status, body = http_get(viewer.url + "/")
        assert status == 200 and "<title>Viser</title>" in body
    finally:
        viewer.stop()
    line = announce_line("127.0.0.1", port)
    assert line == f"recon-view: http://127.0.0.1:{port}  (remote machine? ssh -L {port}:127.0.0.1:{port} user@host)"
    # a taken port: the viewer moves on, and what it reports (and prints) is the port it really has
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        viewer = LiveViewer(target, port=busy)
        try:
            assert viewer.port != busy and http_get(viewer.url + "/")[0] == 200
        finally:
            viewer.stop()


@pytest.mark.slow
def test_frames_equal_the_methods_render(tiny_run, monkeypatch):
    """recon-view on a run folder renders through the run's Method: the same image as method.render."""
    trainer = tiny_run
    monkeypatch.setenv("RECON_CACHE", str(trainer.demo_cache))
    target = open_target(trainer.run_dir, which="latest")
    assert target.info["method"] == "gaussians" and target.info["step"] == 6
    assert len(target.cameras) == 48 and target.background == (1.0, 1.0, 1.0)  # demo: white background
    viewer = LiveViewer(target, port=free_port())
    try:
        cam = trainer.views_on_device[0].camera
        expected = trainer.method.render(trainer.scene, cam).detach()
        assert torch.equal(viewer.render_image(cam, RenderOptions()), expected)
        assert np.array_equal(viewer.render_frame(cam, RenderOptions()), to_uint8(expected))
        # GUI defaults equal the run's own settings, so the viewer starts exactly as trained
        assert viewer.render_options() == RenderOptions()
        # overrides: SH degree and background go through a twin of the same method
        sh0 = viewer.render_image(cam, RenderOptions(sh_degree=0))
        assert torch.equal(sh0, trainer.scene.render(cam, background=trainer.background, sh_degree=0).image.detach())
        red = viewer.render_image(cam, RenderOptions(background=(1.0, 0.0, 0.0)))
        assert torch.equal(red, trainer.scene.render(cam, background=(1.0, 0.0, 0.0), sh_degree=3).image.detach())
        assert not torch.equal(red, expected)
        # the GUI controls map onto those options (setting a value runs viser's update callbacks)
        version = viewer.settings_version
        viewer._sh.value = "0"
        viewer._background.value = (255, 0, 0)
        assert viewer.render_options() == RenderOptions(sh_degree=0, background=(1.0, 0.0, 0.0))
        assert viewer.settings_version == version + 2
        chosen = RenderOptions(sh_degree=0, background=(1.0, 0.0, 0.0))
        assert torch.equal(viewer.render_image(cam), viewer.render_image(cam, chosen))  # None = the GUI's
    finally:
        viewer.stop()


def test_splat_and_mesh_files(tiny_run, tmp_path):
    ply = tiny_run.run_dir / "export" / "point_cloud.ply"
    target = open_target(ply)
    assert target.max_sh_degree == 3 and target.num_primitives() == tiny_run.scene.num_primitives
    cam = tiny_run.views_on_device[0].camera
    image = target.render(cam, RenderOptions(background=(1.0, 1.0, 1.0)))
    expected = tiny_run.scene.render(cam, background=(1.0, 1.0, 1.0)).image.detach()
    assert torch.allclose(image, expected, atol=1e-5)

    # the other splat formats go through the same dispatch (recon.export.formats); glTF splats are told
    # apart from glTF meshes by their extension
    from recon.export.formats import write_splats

    params = {k: v.detach() for k, v in tiny_run.scene.params.items()}
    for name in ("scene.spz", "scene.splat", "scene.glb"):
        path = write_splats(params, tmp_path / name)
        other = open_target(path)
        assert other.render is not None and other.num_primitives() == tiny_run.scene.num_primitives, name
        assert other.render(cam, RenderOptions()).shape == expected.shape

    import trimesh

    glb = tmp_path / "box.glb"
    trimesh.creation.box(extents=(1.0, 2.0, 3.0)).export(glb)
    mesh = open_target(glb)
    assert mesh.render is None and mesh.glb == glb.read_bytes() and mesh.info["faces"] == 12
    assert np.allclose(mesh.up, [0, 1, 0])
    viewer = LiveViewer(mesh, port=free_port())
    try:
        assert http_get(viewer.url + "/")[0] == 200
    finally:
        viewer.stop()


# --- live training --------------------------------------------------------------------------------


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_until_still(get, quiet: float, timeout: float = 60.0):
    """The value of ``get()`` once it has not changed for ``quiet`` seconds."""
    value, since, deadline = get(), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise AssertionError("value kept changing")
        time.sleep(0.05)
        now_value = get()
        if now_value != value:
            value, since = now_value, time.monotonic()
    return value


@pytest.mark.slow
def test_train_viewer_pause_and_resume(tmp_path, monkeypatch):
    """--viewer attaches the hook; its pause button stops the step counter, resume finishes the run."""
    from rich.console import Console

    from recon.cli.train import viewer_hooks

    cfg = TrainConfig(output=tmp_path / "run", steps=20, viewer=True, viewer_port=free_port(), **TINY)
    hooks = viewer_hooks(cfg, Console(stderr=True))
    (hook,) = hooks
    trainer = Trainer(cfg, hooks=hooks)
    trainer.setup()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            trainer.train()
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: trainer.step >= 3, 120, "3 training steps")
        assert listening_addresses(hook.port) == {"127.0.0.1"}
        assert http_get(hook.url + "/")[0] == 200
        # a frame of the live scene, rendered under the trainer's lock
        frame = hook.viewer.render_frame(trainer.views_on_device[0].camera)
        assert frame.shape == (120, 160, 3) and frame.dtype == np.uint8

        hook.viewer._pause_button.value = True  # what a click in the browser does (runs on_click)
        assert trainer.paused.is_set()
        paused_at = trainer.step
        # At most the step already under way when the button was pressed completes; once the counter
        # shows it, the loop is certainly waiting (or it never started: then the counter stays still).
        stopped_at = wait_until_still(lambda: trainer.step, quiet=3.0)
        assert stopped_at in (paused_at, paused_at + 1) and stopped_at < cfg.steps, (paused_at, stopped_at)
        time.sleep(1.0)
        assert trainer.step == stopped_at, "training went on while paused"
        assert "(paused)" in hook.stats_markdown()
        assert hook.viewer._pause_button.label == "Resume training"

        hook.viewer._pause_button.value = True  # the same button resumes
        assert not trainer.paused.is_set() and hook.viewer._pause_button.label == "Pause training"
        thread.join(timeout=300)
        assert not thread.is_alive() and not errors, errors
        assert trainer.step == cfg.steps
        assert "(finished)" in hook.stats_markdown() and f"step {cfg.steps} / {cfg.steps}" in hook.stats_markdown()
        assert hook.viewer._pause_button.disabled
    finally:
        trainer.paused.clear()
        thread.join(timeout=300)
        hook.close()


@pytest.mark.slow
def test_recon_train_viewer_command_line(tmp_path):
    """The real command: prints the URL line, serves the page, keeps serving after training until Ctrl-C."""
    port = free_port()
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "250"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recon.cli.train", "--data", "demo", "--steps", "4", "--viewer", "--viewer-port", str(port),
         "--output", str(out), "--random-init-points", "300", "--holdout-every", "0", "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    lines: list[str] = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "press Ctrl-C" in line:
                break
        text = "".join(lines)
        assert f"recon-train viewer: http://127.0.0.1:{port}  (remote machine? ssh -L {port}:127.0.0.1:{port} user@host)" in text, text
        assert f"viewer still running at http://127.0.0.1:{port}" in text, text
        assert http_get(f"http://127.0.0.1:{port}/")[0] == 200
        assert (out / "summary.json").is_file()
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 0, text + rest
        assert "Traceback" not in text + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("kind", ["missing", "unknown suffix", "broken mesh", "broken ply"])
def test_recon_view_bad_input_is_one_line(tmp_path, kind):
    if kind == "missing":
        path, needle = tmp_path / "nothing_here", "no such file or folder"
    elif kind == "unknown suffix":
        path, needle = tmp_path / "notes.txt", "cannot view this file"
        path.write_text("hello")
    elif kind == "broken mesh":
        path, needle = tmp_path / "broken.glb", "not a readable glTF mesh"
        path.write_bytes(b"glTF but not really")
    else:
        path, needle = tmp_path / "broken.ply", "broken.ply"
        path.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n")
    proc = subprocess.run([sys.executable, "-m", "recon.cli.view", str(path), "--port", str(free_port())],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in proc.stderr, proc.stderr
    assert str(path.name) in lines[0] and needle in lines[0], lines[0]
    assert proc.stdout == ""  # no server was started, so no URL was printed


# --- thumbnails of the training cameras ----------------------------------------------------------------


def _solid_png(path: Path, size: tuple[int, int], rgb: tuple[int, int, int], mtime: float) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)
    os.utime(path, (mtime, mtime))


def test_thumbnail_reads_the_smallest_fresh_cached_copy(tmp_path):
    """A thumbnail comes from the smallest downscaled copy (images_N) that is still big enough and not
    older than the image, else from the image itself; a missing or broken image is one InputError."""
    from PIL import Image

    from recon.datasets.images import cached_image_path
    from recon.errors import InputError
    from recon.viewers.sources import image_thumbnail

    yy, xx = np.mgrid[0:480, 0:640]
    gradient = np.stack([xx * 255 // 639, yy * 255 // 479, np.full_like(xx, 60)], axis=-1).astype(np.uint8)
    source = tmp_path / "photos" / "view.jpg"
    source.parent.mkdir()
    Image.fromarray(gradient).save(source, quality=95)
    now = source.stat().st_mtime
    cam = Camera("view.jpg", 640, 480, 500.0, 500.0, 320.0, 240.0, np.eye(4), image_path=source)

    thumb = image_thumbnail(cam, 96)  # no cached copies: the JPEG itself (decoded at a reduced scale)
    assert thumb.dtype == np.uint8 and thumb.shape == (72, 96, 3) and thumb.flags.c_contiguous
    expected = np.asarray(Image.fromarray(gradient).resize((96, 72), Image.Resampling.BOX), dtype=np.float64)
    assert np.abs(thumb - expected).mean() < 3.0  # the picture, downscaled (JPEG error only)

    # cached copies: 1/8 (80x60) is too small for 96 pixels; 1/4 (160x120) is the smallest big enough
    _solid_png(cached_image_path(source, 8), (80, 60), (255, 0, 0), now + 10)
    _solid_png(cached_image_path(source, 4), (160, 120), (0, 255, 0), now + 10)
    _solid_png(cached_image_path(source, 2), (320, 240), (0, 0, 255), now + 10)
    thumb = image_thumbnail(cam, 96)
    assert thumb.shape == (72, 96, 3) and (thumb == [0, 255, 0]).all()
    # a copy older than the image is stale: the next size up is used
    os.utime(cached_image_path(source, 4), (now - 10, now - 10))
    assert (image_thumbnail(cam, 96) == [0, 0, 255]).all()
    # a smaller thumbnail can use the 1/8 copy
    assert (image_thumbnail(cam, 48) == [255, 0, 0]).all()

    missing = Camera("gone.jpg", 64, 48, 50.0, 50.0, 32.0, 24.0, np.eye(4), image_path=tmp_path / "gone.jpg")
    with pytest.raises(InputError, match="gone.jpg: image file not found"):
        image_thumbnail(missing, 96)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(InputError, match="broken.png: cannot read image"):
        image_thumbnail(Camera("broken.png", 64, 48, 50.0, 50.0, 32.0, 24.0, np.eye(4), image_path=broken), 96)


def area_downscaled(image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """[H, W, 3] float image -> [h, w, 3] numpy, area-averaged (the reference a thumbnail is compared to)."""
    return torch.nn.functional.interpolate(image.permute(2, 0, 1)[None], size=size, mode="area")[0].permute(1, 2, 0).numpy()


def test_run_folder_frustums_get_thumbnails_after_the_viewer_is_up(tiny_run, monkeypatch):
    """recon-view on a run folder: opening it reads no image; the viewer then gives every frustum the
    thumbnail of its own camera's image (as the live training viewer does from memory)."""
    import recon.viewers.sources as sources

    monkeypatch.setenv("RECON_CACHE", str(tiny_run.demo_cache))
    reads: list[str] = []
    real = sources.image_thumbnail
    monkeypatch.setattr(sources, "image_thumbnail", lambda cam, size: (reads.append(cam.name), real(cam, size))[1])
    target = open_target(tiny_run.run_dir, which="latest")
    assert target.thumbnails is None and target.load_thumbnail is not None and reads == []
    logged: list[str] = []
    viewer = LiveViewer(target, port=free_port(), log=logged.append)
    try:
        assert viewer.thumbnails_done.wait(timeout=120)
        assert viewer.thumbnails_shown == len(viewer.frustums) == 48 and len(reads) == 48
        assert logged == []
        views = {v.camera.name: v.image for v in tiny_run.data.train_views}  # the demo's 160x120 images
        checked = 0
        for (index, cam), handle in zip(viewer._cameras, viewer.frustums):
            thumb = handle.image
            assert thumb is not None and thumb.dtype == np.uint8 and thumb.shape == (72, 96, 3), index
            if cam.name not in views:
                continue
            own = np.abs(thumb / 255.0 - area_downscaled(views[cam.name], (72, 96))).mean()
            other = np.abs(thumb / 255.0 - area_downscaled(next(im for n, im in views.items() if n != cam.name), (72, 96))).mean()
            assert own < 0.01 < other, (index, own, other)
            checked += 1
        assert checked == len(views)
    finally:
        viewer.stop()


@pytest.mark.slow
def test_run_folder_without_its_data_shows_frustums_without_thumbnails(tmp_path, monkeypatch):
    """A run records its cameras (cameras.json). A missing image leaves its frustum empty; with the whole
    data folder gone the cameras come from that record, drawn without images. One log line each time."""
    import shutil

    from builders import write_transforms
    from recon.datasets.loader import load_scene
    from recon.training.run_folder import read_cameras

    data = write_transforms(tmp_path / "data", n=4).parent
    cfg = TrainConfig(data=str(data), output=tmp_path / "run", steps=2, random_init_points=100, progress=False,
                      save_eval_renders=False, holdout_every=0, compress_schedules=False,
                      strategy=DefaultStrategy(refine_start=1000, refine_stop=1000))
    trainer = Trainer(cfg)
    trainer.setup()
    trainer.train()
    recorded = read_cameras(cfg.output)
    loaded = load_scene(str(data)).cameras
    assert [c.name for c in recorded] == [c.name for c in loaded]
    for a, b in zip(recorded, loaded):
        assert np.array_equal(a.c2w, b.c2w)
        assert (a.width, a.height, a.fx, a.fy, a.cx, a.cy) == (b.width, b.height, b.fx, b.fy, b.cx, b.cy)
        assert a.image_path == b.image_path and a.image_path.is_file()

    def shown(logged: list[str]) -> LiveViewer:
        viewer = LiveViewer(open_target(cfg.output), port=free_port(), log=logged.append)
        assert viewer.thumbnails_done.wait(timeout=120)
        return viewer

    (data / "images" / "img_002.png").unlink()  # one image gone: the data still loads (without that frame)
    logged: list[str] = []
    with pytest.warns(UserWarning, match="img_002.png"):
        viewer = shown(logged)
    try:
        assert len(viewer.frustums) == 4 and viewer.thumbnails_shown == 3
        assert [h.image is None for h in viewer.frustums] == [False, False, True, False]
        assert len(logged) == 1 and "1 of 4 training cameras shown without a thumbnail" in logged[0], logged
        assert "img_002.png: image file not found" in logged[0]
    finally:
        viewer.stop()

    shutil.rmtree(data)  # the whole data folder gone: cameras from the run's record
    logged = []
    viewer = shown(logged)
    try:
        assert len(viewer.frustums) == 4 and viewer.thumbnails_shown == 0
        assert all(h.image is None for h in viewer.frustums)
        assert "cameras.json" in viewer.target.info["note"]
        assert len(logged) == 1 and "4 of 4 training cameras shown without a thumbnail" in logged[0], logged
        # the frustums stand where the training cameras stood
        for (_, cam), handle, original in zip(viewer._cameras, viewer.frustums, loaded):
            assert np.allclose(handle.position, original.center) and np.array_equal(cam.c2w, original.c2w)
    finally:
        viewer.stop()


# --- a real browser ---------------------------------------------------------------------------------


def magenta_share(pixels: np.ndarray) -> float:
    p = pixels.astype(np.int32)
    return float(((p[..., 0] > 200) & (p[..., 1] < 60) & (p[..., 2] > 200)).mean())


def test_headless_browser_shows_frames_and_refines_after_moving(tmp_path):
    """Chromium loads the viewer page, connects and shows the frame recon rendered (the magenta
    background exists only in that frame; viser's own page has none). Orbiting the camera with the
    mouse makes the server render quarter-size previews while moving, then a full-size frame."""
    from browser import Chromium, chromium_path

    require_client(chromium_path() is not None, "chromium (headless browser)")
    scene = random_scene(n=200, opacity=0.8)
    target = ViewTarget(label="random", render=SceneRenderer(scene, (1.0, 0.0, 1.0)), max_sh_degree=3,
                        cameras=demo_cameras(width=64, height=48, n_views=8))
    viewer = LiveViewer(target, port=free_port(), max_size=256)
    try:
        with Chromium() as browser:
            page = browser.open(viewer.url + "/", 640, 480, timeout=120,
                                wait_for="!!document.body && document.body.innerText.includes('Resolution')")
            wait_for(lambda: any(not p for r in viewer.clients() for (_, _, p) in r.history), 120, "a full-size frame")
            wait_for(lambda: magenta_share(page.screenshot()) > 0.2, 60, "the rendered frame on the page")
            page.screenshot(tmp_path / "viewer.png")
            assert page.screenshot().reshape(-1, 3).std(axis=0).max() > 20, "the page is blank"

            (renderer,) = viewer.clients()
            seen, version = len(renderer.history), renderer.camera_version
            page.send("Input.dispatchMouseEvent", {"type": "mousePressed", "x": 150, "y": 300, "button": "left",
                                                   "buttons": 1, "clickCount": 1})
            for k in range(1, 21):  # a slow drag (1 s): camera updates keep arriving while it lasts
                page.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": 150 + 6 * k, "y": 300 - 2 * k,
                                                       "button": "left", "buttons": 1})
                time.sleep(0.05)
            page.send("Input.dispatchMouseEvent", {"type": "mouseReleased", "x": 270, "y": 260, "button": "left",
                                                   "buttons": 0, "clickCount": 1})
            wait_for(lambda: len(renderer.history) > seen and not renderer.history[-1][2]
                     and time.monotonic() - renderer.camera_time > 1.0, 120, "the full-size frame after the drag")
            assert renderer.camera_version > version, "dragging did not move the browser's camera"
            after = list(renderer.history)[seen:]
            previews = [(w, h) for w, h, preview in after if preview]
            full = [(w, h) for w, h, preview in after if not preview]
            assert previews and full, after
            assert max(previews[-1]) == max(full[-1]) // 4 and max(full[-1]) <= 256, after
    finally:
        viewer.stop()
