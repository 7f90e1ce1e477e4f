"""The live viewer: a viser server whose frames recon renders itself.

Every connected browser gets its own render thread. The thread re-renders when that browser's camera
moves, when a GUI setting changes, or when the scene changes (a training step), and sends the frame
as a JPEG background image (``client.scene.set_background_image``). While the camera is moving it
renders at a quarter of the resolution (previews keep orbiting responsive on slow devices), then once
the camera has been still for a moment at full resolution. Scene changes during training are picked
up at most as often as keeps rendering under ~20% of the wall time, because rendering holds the
trainer's lock and so pauses training.

Training cameras are drawn as frustums (click one to look through it) with thumbnails of their
images: given in memory by a live run, or read from disk by a background thread after the server is
up (a run folder: a large capture opens at once and the thumbnails arrive one by one). The GUI shows
the target's stats, render resolution, SH degree, background and a time slider (enabled only for
dynamic scenes).
The server binds 127.0.0.1 unless told otherwise: the scene is private to the machine, and the
printed ``ssh -L`` line is how a remote machine's viewer reaches a laptop's browser.
"""

from __future__ import annotations

import collections
import contextlib
import io
import threading
import time
import warnings
from typing import Any, Callable

import numpy as np
import torch

from recon.datasets.cameras import Camera
from recon.errors import InputError
from recon.viewers.camera import camera_from_viser, focus_point, render_size, up_vector, viser_pose_of
from recon.viewers.sources import RenderOptions, ViewTarget

# Long side of still frames by device: the CPU reference rasterizer is ~100x slower than CUDA.
DEFAULT_MAX_SIZE = {"cuda": 1920, "cpu": 320}
PREVIEW_DIVISOR = 4  # previews while the camera moves: this much smaller per side
MIN_PREVIEW = 48
SETTLE_SECONDS = 0.25  # the camera counts as still this long after its last update
MIN_REFRESH_SECONDS = 0.2  # fastest re-render for scene changes (training steps)
RENDER_SHARE = 0.2  # re-render on scene changes so that rendering takes at most this share of the time
MAX_FRUSTUMS = 300  # more scene nodes make the browser stutter; larger captures show an even subset
THUMBNAIL_SIZE = 96


def viewer_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("127.0.0.1", "localhost") else host
    return f"http://{shown}:{port}"


def announce_line(host: str, port: int, prefix: str = "recon-view") -> str:
    """What a command prints when its viewer is up: the URL and how to reach it from elsewhere."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return f"{prefix}: {viewer_url(host, port)}  (remote machine? ssh -L {port}:127.0.0.1:{port} user@host)"
    return f"{prefix}: {viewer_url(host, port)}  (listening on {host}: anyone who can reach this address can connect)"


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """A rendered [H, W, C>=3] float image in 0..1 -> contiguous uint8 RGB."""
    return image[..., :3].detach().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).cpu().numpy()


# A frame that finishes rendering just after its browser left is dropped; viser warns about each.
warnings.filterwarnings("ignore", message="Queued a BackgroundImageMessage on a closed connection", category=UserWarning)


def start_server(host: str, port: int):
    """A viser server on ``host:port`` (viser moves to the next free port when this one is taken; read
    the real one with ``server.get_port()``). viser's own banner is dropped: recon prints one line."""
    import viser

    with contextlib.redirect_stdout(io.StringIO()):
        return viser.ViserServer(host=host, port=port, verbose=False)


class ClientRenderer:
    """The render loop of one connected browser (a daemon thread)."""

    def __init__(self, viewer: "LiveViewer", client: Any) -> None:
        self.viewer = viewer
        self.client = client
        self.camera_version = 0
        self.camera_time = 0.0
        self.scene_version_shown = viewer.scene_version
        self.last_render_end = 0.0
        self.last_render_seconds = 0.0
        self.frames = 0
        self.history: collections.deque[tuple[int, int, bool]] = collections.deque(maxlen=64)  # (w, h, preview)
        self._have_full: tuple | None = None
        self._have_preview: tuple | None = None
        self._wake = threading.Event()
        self._stopped = False
        self._error_reported = False
        client.camera.on_update(lambda _camera: self.camera_moved())
        self._thread = threading.Thread(target=self._run, name=f"recon-viewer-client-{client.client_id}", daemon=True)
        self._thread.start()

    def camera_moved(self) -> None:
        self.camera_version += 1
        self.camera_time = time.monotonic()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _scene_refresh_due(self, now: float) -> bool:
        wait = max(MIN_REFRESH_SECONDS, self.last_render_seconds * (1.0 - RENDER_SHARE) / RENDER_SHARE)
        return now - self.last_render_end >= wait

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(timeout=0.1)
            self._wake.clear()
            if self._stopped:
                break
            now = time.monotonic()
            if self.viewer.scene_version != self.scene_version_shown and self._scene_refresh_due(now):
                self.scene_version_shown = self.viewer.scene_version
            state = (self.camera_version, self.viewer.settings_version, self.scene_version_shown)
            moving = now - self.camera_time < SETTLE_SECONDS
            if state == self._have_full or (moving and state == self._have_preview):
                continue
            if self.camera_version == 0:
                continue  # no camera message yet
            try:
                self._render(preview=moving)
            except Exception as exc:  # keep the viewer alive; say what went wrong once per client
                if not self._error_reported:
                    self._error_reported = True
                    self.viewer.log(f"viewer: rendering failed ({type(exc).__name__}: {exc})")
                continue
            if moving:
                self._have_preview = state
            else:
                self._have_full = state

    def _render(self, preview: bool) -> None:
        cam = self.client.camera
        canvas_long = max(int(cam.image_width), int(cam.image_height), 1)
        long_side = min(self.viewer.max_size(), canvas_long)
        if preview:
            long_side = max(MIN_PREVIEW, long_side // PREVIEW_DIVISOR)
        width, height = render_size(cam.aspect, long_side)
        camera = camera_from_viser(cam.wxyz, cam.position, cam.fov, cam.aspect, width, height)
        t0 = time.perf_counter()
        frame = self.viewer.render_frame(camera)
        self.last_render_seconds = time.perf_counter() - t0
        if self._stopped:
            return
        self.client.scene.set_background_image(frame, format="jpeg", jpeg_quality=self.viewer.jpeg_quality())
        self.last_render_end = time.monotonic()
        self.frames += 1
        self.history.append((width, height, preview))
        self.viewer.frames_sent += 1


class LiveViewer:
    """A viser server showing one :class:`ViewTarget`; ``stop()`` when done."""

    def __init__(
        self, target: ViewTarget, *, host: str = "127.0.0.1", port: int = 8080, device: str = "cpu",
        max_size: int | None = None, log: Callable[[str], None] | None = None,
    ) -> None:
        self.target = target
        self.host = host
        self.log = log or (lambda message: None)
        self.scene_version = 0
        self.settings_version = 0
        self.frames_sent = 0  # to all browsers, ever (tests and stats)
        self._renderers: dict[int, ClientRenderer] = {}
        self._renderers_lock = threading.Lock()
        self._default_max_size = max_size or DEFAULT_MAX_SIZE.get(device, DEFAULT_MAX_SIZE["cpu"])
        self.server = start_server(host, port)
        self.port = int(self.server.get_port())
        self.url = viewer_url(host, self.port)
        self._cameras = self._shown_cameras()
        self.thumbnails_shown = 0  # frustums with an image (tests and stats)
        self.thumbnails_done = threading.Event()  # every shown frustum has its thumbnail, or failed to get one
        self._stopping = threading.Event()
        self._thumbnail_thread: threading.Thread | None = None
        self._set_up_scene()
        self._build_gui()
        self._start_thumbnails()
        if target.render is not None:
            self.server.on_client_connect(self._client_connected)
            self.server.on_client_disconnect(self._client_disconnected)

    # --- scene ------------------------------------------------------------------------------------
    def _shown_cameras(self) -> list[tuple[int, Camera]]:
        cams = list(enumerate(self.target.cameras))
        if len(cams) > MAX_FRUSTUMS:
            keep = np.linspace(0, len(cams) - 1, MAX_FRUSTUMS).round().astype(int)
            cams = [cams[i] for i in keep]
        return cams

    def _set_up_scene(self) -> None:
        target, scene = self.target, self.server.scene
        cams = [c for _, c in self._cameras]
        up = target.up if target.up is not None else up_vector(cams)
        if up is not None:
            scene.set_up_direction(np.asarray(up, dtype=np.float64))
        focus = target.focus if target.focus is not None else focus_point(cams)
        initial = self.server.initial_camera
        if cams:
            first = cams[0]
            if focus is None or np.linalg.norm(first.center - focus) < 1e-6:
                focus = first.center + first.c2w[:3, 2]
            # Start behind the first training view, so the ring of training cameras is in sight.
            initial.position = focus + 1.5 * (first.center - focus)
            initial.look_at = focus
            initial.fov = viser_pose_of(first).fov
            spread = float(np.median([np.linalg.norm(c.center - focus) for c in cams]))
            self._frustum_scale = 0.08 * spread if spread > 0 else 0.1
        elif focus is not None:
            extent = target.extent or 1.0
            up_dir = np.asarray(up if up is not None else (0.0, 0.0, 1.0), dtype=np.float64)
            side = np.cross(up_dir, [1.0, 0.0, 0.0])
            side = side if np.linalg.norm(side) > 1e-3 else np.cross(up_dir, [0.0, 1.0, 0.0])
            side /= np.linalg.norm(side)
            initial.position = focus + 2.5 * extent * (side + 0.5 * up_dir)
            initial.look_at = focus
        self.frustums = []
        if cams:
            thumbs = self.target.thumbnails
            for index, cam in self._cameras:
                pose = viser_pose_of(cam)
                handle = scene.add_camera_frustum(
                    f"/training_cameras/{index:05d}", fov=pose.fov, aspect=pose.aspect, scale=self._frustum_scale,
                    thickness=0.02 * self._frustum_scale, color=(230, 120, 30), wxyz=pose.wxyz, position=pose.position,
                    image=None if thumbs is None else thumbs[index], format="jpeg",
                )
                handle.on_click(lambda event, cam=cam: self.look_through(event.client, cam))
                self.frustums.append(handle)
            self.thumbnails_shown = 0 if thumbs is None else len(self.frustums)
        if target.glb is not None:
            scene.add_glb("/mesh", target.glb)

    def _start_thumbnails(self) -> None:
        if self.target.thumbnails is not None or self.target.load_thumbnail is None or not self.frustums:
            self.thumbnails_done.set()
            return
        self._thumbnail_thread = threading.Thread(
            target=self._load_thumbnails, name="recon-viewer-thumbnails", daemon=True
        )
        self._thumbnail_thread.start()

    def _load_thumbnails(self) -> None:
        """Give each shown frustum its image (viser sends each to the browsers as it is set). Images
        that cannot be read leave their frustum empty; one log line says how many and why."""
        load = self.target.load_thumbnail
        assert load is not None
        missing, first_problem = 0, None
        try:
            for (index, _cam), handle in zip(self._cameras, self.frustums):
                if self._stopping.is_set():
                    return
                try:
                    image = load(index, THUMBNAIL_SIZE)
                except InputError as err:
                    missing += 1
                    first_problem = first_problem or str(err)
                    continue
                handle.image = image
                self.thumbnails_shown += 1
            if missing:
                self.log(f"viewer: {missing} of {len(self.frustums)} training cameras shown without a thumbnail "
                         f"(their images cannot be read; first: {first_problem})")
        finally:
            self.thumbnails_done.set()

    def look_through(self, client: Any, camera: Camera) -> None:
        """Move one browser's camera onto a (training) camera."""
        pose = viser_pose_of(camera)
        with client.atomic():
            client.camera.position = pose.position
            client.camera.wxyz = pose.wxyz
            client.camera.fov = pose.fov

    # --- GUI --------------------------------------------------------------------------------------
    def _build_gui(self) -> None:
        gui, target = self.server.gui, self.target
        with gui.add_folder("Scene", order=1):
            self._info_md = gui.add_markdown(self._info_markdown())
            if self._cameras:
                show = gui.add_checkbox("Training cameras", True, hint="Show the training views (click one to look through it)")
                show.on_update(lambda _: self._show_frustums(show.value))
        self._max_size = self._sh = self._background = self._jpeg = self._time = None
        if target.render is None:
            return
        with gui.add_folder("Render", order=2):
            self._max_size = gui.add_slider(
                "Resolution", min=64, max=4096, step=32, initial_value=int(min(4096, max(64, self._default_max_size))),
                hint="Long side of still frames in pixels (capped by the browser window); moving previews use a quarter",
            )
            if target.max_sh_degree is not None:
                options = [str(d) for d in range(int(target.max_sh_degree) + 1)]
                self._sh = gui.add_dropdown("SH degree", options, initial_value=options[-1],
                                            hint="Spherical-harmonics degree of the colours (the highest = as trained)")
            self._background = gui.add_rgb("Background", tuple(int(round(255 * c)) for c in target.background))
            self._jpeg = gui.add_slider("JPEG quality", min=50, max=100, step=1, initial_value=85)
            self._time = gui.add_slider(
                "Time", min=0.0, max=1.0, step=0.01, initial_value=0.0, disabled=not target.dynamic,
                hint="Capture time of dynamic (4D) scenes" if target.dynamic else "This scene is static (no time axis)",
            )
        for handle in (self._max_size, self._sh, self._background, self._jpeg, self._time):
            if handle is not None:
                handle.on_update(lambda _: self.settings_changed())

    def _info_markdown(self) -> str:
        t = self.target
        lines = [f"**{t.label}**"]
        for key, value in t.info.items():
            lines.append(f"{key}: {value}")
        if t.num_primitives is not None:
            lines.append(f"primitives: {t.num_primitives():,}")
        if len(self._cameras) < len(t.cameras):
            lines.append(f"showing {len(self._cameras)} of {len(t.cameras)} training cameras")
        return "  \n".join(lines)

    def refresh_info(self) -> None:
        self._info_md.content = self._info_markdown()

    def _show_frustums(self, visible: bool) -> None:
        for handle in self.frustums:
            handle.visible = visible

    def add_training_controls(self, on_pause: Callable[[bool], None]) -> None:
        """Add a Training folder (first in the panel): stats and a pause/resume button calling
        ``on_pause(paused)``."""
        gui = self.server.gui
        with gui.add_folder("Training", order=0):
            self._stats_md = gui.add_markdown("")
            self._pause_button = gui.add_button("Pause training")
        self._paused = False

        def clicked(_event: Any) -> None:
            self.set_paused_label(not self._paused)
            on_pause(self._paused)

        self._pause_button.on_click(clicked)

    def set_paused_label(self, paused: bool) -> None:
        self._paused = paused
        self._pause_button.label = "Resume training" if paused else "Pause training"

    def set_training_finished(self) -> None:
        self._pause_button.label = "Training finished"
        self._pause_button.disabled = True

    def set_stats(self, markdown: str) -> None:
        self._stats_md.content = markdown

    # --- settings the GUI holds -------------------------------------------------------------------
    def max_size(self) -> int:
        return int(self._max_size.value) if self._max_size is not None else self._default_max_size

    def jpeg_quality(self) -> int:
        return int(self._jpeg.value) if self._jpeg is not None else 85

    def render_options(self) -> RenderOptions:
        """The GUI's settings; values equal to the target's own defaults stay None (= as trained)."""
        if self._sh is None and self._background is None:
            return RenderOptions()
        sh = None
        if self._sh is not None and int(self._sh.value) != self.target.max_sh_degree:
            sh = int(self._sh.value)
        background = None
        if self._background is not None:
            chosen = tuple(float(c) / 255.0 for c in self._background.value)
            default = tuple(int(round(255 * c)) for c in self.target.background)
            if tuple(int(c) for c in self._background.value) != default:
                background = chosen
        time_value = float(self._time.value) if (self._time is not None and self.target.dynamic) else None
        return RenderOptions(sh_degree=sh, background=background, time=time_value)  # type: ignore[arg-type]

    # --- rendering --------------------------------------------------------------------------------
    def render_image(self, camera: Camera, options: RenderOptions | None = None) -> torch.Tensor:
        """The target's image [H, W, 3] for ``camera`` (under the target's lock: the trainer's when live)."""
        if self.target.render is None:
            raise RuntimeError("this target is drawn by the browser (a mesh); there is nothing to render here")
        options = self.render_options() if options is None else options
        # A live run's lock is the trainer's FairLock: this render gets it after the step under way.
        with self.target.lock:
            return self.target.render(camera, options)

    def render_frame(self, camera: Camera, options: RenderOptions | None = None) -> np.ndarray:
        """:meth:`render_image` as the uint8 RGB frame sent to browsers."""
        return to_uint8(self.render_image(camera, options))

    def settings_changed(self) -> None:
        self.settings_version += 1
        self._wake_all()

    def scene_changed(self) -> None:
        """The scene's parameters changed (a training step): browsers re-render soon."""
        self.scene_version += 1
        self._wake_all()

    def _wake_all(self) -> None:
        with self._renderers_lock:
            renderers = list(self._renderers.values())
        for r in renderers:
            r.wake()

    def renderer_of(self, client_id: int) -> ClientRenderer | None:
        with self._renderers_lock:
            return self._renderers.get(client_id)

    def clients(self) -> list[ClientRenderer]:
        with self._renderers_lock:
            return list(self._renderers.values())

    def _client_connected(self, client: Any) -> None:
        renderer = ClientRenderer(self, client)
        with self._renderers_lock:
            self._renderers[client.client_id] = renderer
        renderer.camera_moved()  # the first camera message arrived with the connection

    def _client_disconnected(self, client: Any) -> None:
        with self._renderers_lock:
            renderer = self._renderers.pop(client.client_id, None)
        if renderer is not None:
            renderer.stop()

    def stop(self) -> None:
        self._stopping.set()
        if self._thumbnail_thread is not None:
            self._thumbnail_thread.join(timeout=5.0)
        with self._renderers_lock:
            renderers = list(self._renderers.values())
            self._renderers.clear()
        for r in renderers:
            r.stop()
        for r in renderers:
            r.join(timeout=5.0)
        with contextlib.redirect_stdout(io.StringIO()):  # viser prints "Server stopped"
            self.server.stop()


def wait_forever(poll: float = 0.5) -> None:
    """Block until Ctrl-C (KeyboardInterrupt propagates to the caller)."""
    while True:
        time.sleep(poll)


__all__ = ["ClientRenderer", "LiveViewer", "announce_line", "start_server", "to_uint8", "viewer_url", "wait_forever"]
