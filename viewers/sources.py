"""What the viewer shows: open what the user points at, or wrap a live training run.

A :class:`ViewTarget` is everything the server needs: a render function (recon camera + options ->
image, rendered server-side through recon's own renderer, so every representation shows exactly as
trained), the lock to hold while rendering, the training cameras with their thumbnails (in memory
during training; read from disk on demand for a run folder), and defaults (background, SH degree).
Meshes are the exception: a ``.glb``/``.gltf`` is handed to the browser as a GLB and drawn by
viser's three.js client.

:func:`open_target` dispatches on what the path is: a run folder or checkpoint (rendered through the
run's :class:`recon.methods.Method`), a Gaussian splat file (``.ply``, compressed ``.ply``, ``.spz``,
``.splat``, glTF with ``KHR_gaussian_splatting``; rendered with :meth:`GaussianScene.render`), or a
glTF mesh. Anything else is one :class:`InputError` line.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from recon.datasets.cameras import Camera
from recon.errors import InputError


@dataclass(frozen=True)
class RenderOptions:
    """Viewer-side overrides; ``None`` = as trained (the run's SH degree, its background)."""

    sh_degree: int | None = None
    background: tuple[float, float, float] | None = None
    time: float | None = None  # dynamic scenes only: the normalised capture time to show


RenderFn = Callable[[Camera, RenderOptions], torch.Tensor]


@dataclass
class ViewTarget:
    """A thing the viewer can show. ``render`` is None for meshes (drawn by the browser from ``glb``)."""

    label: str
    render: RenderFn | None
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    max_sh_degree: int | None = None  # None: the representation has no SH degree to choose
    cameras: list[Camera] = field(default_factory=list)  # training views, drawn as frustums
    thumbnails: list[np.ndarray] | None = None  # uint8 [h, w, 3] per camera, when the images are in memory
    # Otherwise (camera index, long side) -> uint8 [h, w, 3] read from disk when the viewer asks (after it
    # is up); raises InputError when that camera's image is missing or unreadable.
    load_thumbnail: Callable[[int, int], np.ndarray] | None = None
    dynamic: bool = False  # has a time axis (the time slider is enabled only then)
    lock: Any = field(default_factory=threading.RLock)  # held while rendering (the trainer's lock when live)
    glb: bytes | None = None
    info: dict[str, Any] = field(default_factory=dict)  # shown in the GUI (method, step, primitives, ...)
    num_primitives: Callable[[], int] | None = None
    up: np.ndarray | None = None  # world up; None = from the cameras (or viser's +z without cameras)
    focus: np.ndarray | None = None  # where the initial camera looks; None = from the cameras
    extent: float | None = None  # rough scene radius (initial camera distance when there are no cameras)


# --- rendering ----------------------------------------------------------------------------------------


def _with_time(camera: Camera, options: RenderOptions) -> Camera:
    return camera if options.time is None else dataclasses.replace(camera, time=float(options.time))


class MethodRenderer:
    """Render through a run's :class:`Method` (``method.render(scene, camera)``): what evaluation sees.

    Viewer overrides of the SH degree or background render through a twin of the method built from
    the same config with that one field changed (cached), so the method stays the only renderer."""

    def __init__(self, method: Any, scene: Callable[[], Any]) -> None:
        self.method = method
        self.scene = scene
        self._variants: dict[tuple, Any] = {}

    def _method_for(self, options: RenderOptions) -> Any:
        base = self.method
        sh = None if options.sh_degree is None or options.sh_degree == getattr(base.cfg, "sh_degree", None) else int(options.sh_degree)
        bg = None if options.background is None else tuple(float(x) for x in options.background)
        if bg is not None and torch.allclose(base.background.float().cpu(), torch.tensor(bg)):
            bg = None
        if sh is None and bg is None:
            return base
        key = (sh, bg)
        if key not in self._variants:
            cfg = base.cfg if sh is None else dataclasses.replace(base.cfg, sh_degree=sh)
            background = base.background if bg is None else torch.tensor(bg, dtype=torch.float32, device=base.device)
            self._variants[key] = type(base)(
                cfg, steps=base.steps, scene_scale=base.scene_scale, device=base.device, background=background
            )
        return self._variants[key]

    def __call__(self, camera: Camera, options: RenderOptions) -> torch.Tensor:
        method = self._method_for(options)
        with torch.no_grad():
            return method.render(self.scene(), _with_time(camera, options))


class SceneRenderer:
    """Render a bare scene (a splat file) with ``scene.render`` and the viewer's options."""

    def __init__(self, scene: Any, background: tuple[float, float, float]) -> None:
        self.scene = scene
        self.background = background

    def __call__(self, camera: Camera, options: RenderOptions) -> torch.Tensor:
        bg = self.background if options.background is None else options.background
        with torch.no_grad():
            return self.scene.render(_with_time(camera, options), background=bg, sh_degree=options.sh_degree).image


# --- opening what the user points at ------------------------------------------------------------------

SPLAT_SUFFIXES = (".ply", ".spz", ".splat")  # and .glb/.gltf with KHR_gaussian_splatting
MESH_SUFFIXES = (".glb", ".gltf")
CHECKPOINT_SUFFIXES = (".pt",)


def supported_suffixes() -> list[str]:
    return [*SPLAT_SUFFIXES, *MESH_SUFFIXES, *CHECKPOINT_SUFFIXES]


def is_gltf_splats(path: Path) -> bool:
    """Whether a glTF/GLB holds Gaussian splats (``KHR_gaussian_splatting``) rather than a mesh."""
    import json

    from recon.export.gltf import read_glb
    from recon.export.gltf_splats import EXTENSION

    try:
        data = path.read_bytes()
        doc = read_glb(data)[0] if data[:4] == b"glTF" else json.loads(data.decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False  # not parseable as glTF here; the mesh loader reports the problem
    return isinstance(doc, dict) and EXTENSION in (doc.get("extensionsUsed") or [])


def open_target(path: str | Path, *, device: str = "cpu", which: str = "best") -> ViewTarget:
    """A :class:`ViewTarget` for a run folder, a checkpoint, a splat file or a glTF mesh."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(path, "no such file or folder")
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in CHECKPOINT_SUFFIXES:
        return open_run(path, device=device, which=which)
    if suffix in SPLAT_SUFFIXES or (suffix in MESH_SUFFIXES and is_gltf_splats(path)):
        return open_splats(path, device=device)
    if suffix in MESH_SUFFIXES:
        return open_mesh(path)
    raise InputError(path, f"cannot view this file (expected a run folder, a checkpoint or one of {', '.join(supported_suffixes())})")


def _scene_data_of(data: str):
    """The training scene's cameras (and demo extras) when they can be loaded cheaply; else None and
    why. Photo folders and videos are skipped: loading them would run SfM."""
    from recon.datasets.loader import detect_format, load_scene

    try:
        if detect_format(data) in ("folder", "video"):
            return None, "the run was trained from raw photos/video"
        return load_scene(data, check_images=False), None
    except InputError as err:
        return None, str(err)


# --- thumbnails ---------------------------------------------------------------------------------------

THUMBNAIL_SOURCE_FACTORS = (32, 16, 8, 4, 2)  # downscaled copies training may have cached (images_N)


def image_thumbnail(camera: Camera, size: int) -> np.ndarray:
    """A small uint8 RGB copy of ``camera``'s image, longest side at most ``size``, read cheaply.

    Source: the smallest downscaled copy training cached (``images_N``, see
    :func:`recon.datasets.images.cached_image_path`) that is still at least ``size`` pixels and not
    older than the image; else the image itself, where JPEGs decode at 1/2..1/8 scale in the DCT
    domain (PIL ``draft``), a fraction of a full decode. The thumbnail is of the stored (distorted)
    pixels: close enough for a frustum. Missing or unreadable: InputError naming the file."""
    from PIL import Image, UnidentifiedImageError

    from recon.datasets.images import _to_rgb_or_rgba, cached_image_path

    if camera.image_path is None:
        raise InputError(None, f"view {camera.name!r} has no image file")
    path = Path(camera.image_path)
    try:
        source_mtime = path.stat().st_mtime
    except OSError:
        raise InputError(path, "image file not found") from None
    source = path
    long_side = max(camera.width, camera.height)
    for factor in THUMBNAIL_SOURCE_FACTORS:
        if long_side / factor < size:
            continue
        cached = cached_image_path(path, factor)
        try:
            if cached.stat().st_mtime >= source_mtime:
                source = cached
                break
        except OSError:
            continue  # no such copy
    try:
        with Image.open(source) as im:
            im.draft("RGB", (size, size))  # JPEG only: decode at the smallest scale still >= size
            im.load()
            small = _to_rgb_or_rgba(im).convert("RGB")
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise InputError(source, f"cannot read image for a thumbnail ({str(err) or type(err).__name__})") from None
    small.thumbnail((size, size), Image.Resampling.BOX)
    return np.ascontiguousarray(np.asarray(small, dtype=np.uint8))


class CameraThumbnails:
    """``load_thumbnail`` over a list of cameras (their image files, read on demand)."""

    def __init__(self, cameras: list[Camera]) -> None:
        self.cameras = cameras

    def __call__(self, index: int, size: int) -> np.ndarray:
        return image_thumbnail(self.cameras[index], size)


def run_background(cfg: Any, scene_data: Any) -> tuple[float, float, float]:
    """The background a run was trained with (as :func:`recon.training.trainer.prepare_data` picks it)."""
    if cfg.background is not None:
        return tuple(float(x) for x in cfg.background)  # type: ignore[return-value]
    extras = {} if scene_data is None else scene_data.extras
    return tuple(float(x) for x in extras.get("demo", {}).get("background", (0.0, 0.0, 0.0)))  # type: ignore[return-value]


def open_run(target: Path, *, device: str = "cpu", which: str = "best") -> ViewTarget:
    """A trained run (folder or checkpoint), rendered through its Method.

    Training cameras come from the run's own record (``cameras.json``: exactly the views it was
    trained on, readable without the data folder) or, for runs from before that record, from the data
    as it is on disk now; their thumbnails are read from the image files on demand."""
    from recon.cli.runs import load_run, run_dir_of
    from recon.methods import METHODS
    from recon.training.run_folder import read_cameras

    scene, cfg, ckpt, ckpt_path = load_run(target, which=which, device=device)
    method_name = ckpt.get("method", cfg.method)
    scene_data, why_no_data = _scene_data_of(cfg.data)  # background, scale and look-at of the data
    try:
        recorded, why_no_record = read_cameras(run_dir_of(ckpt_path)), None
    except InputError as err:
        recorded, why_no_record = None, str(err)
    note = None
    if recorded:
        cameras = recorded
        if scene_data is None:
            note = f"data not loaded ({why_no_data}); training cameras from the run's cameras.json"
    elif scene_data is not None:
        cameras = list(scene_data.cameras)
    else:
        cameras = []
        note = f"training cameras not shown ({'; '.join(w for w in (why_no_data, why_no_record) if w)})"
    background = run_background(cfg, scene_data)
    scene_scale = scene_data.scene_scale() if scene_data is not None else 1.0
    method = METHODS[method_name](
        cfg, steps=cfg.resolved_steps(device), scene_scale=scene_scale, device=device,
        background=torch.tensor(background, dtype=torch.float32, device=device),
    )
    info = {"method": method_name, "checkpoint": str(ckpt_path), "step": int(ckpt.get("step", 0))}
    if note:
        info["note"] = note
    return ViewTarget(
        label=str(ckpt_path),
        render=MethodRenderer(method, lambda: scene),
        background=background,
        max_sh_degree=getattr(scene, "sh_degree", None),
        cameras=cameras,
        load_thumbnail=CameraThumbnails(cameras) if cameras else None,
        dynamic=any(c.time is not None for c in cameras),
        info=info,
        num_primitives=lambda: scene.num_primitives,
        focus=_demo_look_at(scene_data),
    )


def _demo_look_at(scene_data: Any) -> np.ndarray | None:
    look_at = None if scene_data is None else scene_data.extras.get("demo", {}).get("look_at")
    return None if look_at is None else np.asarray(look_at, dtype=np.float64)


def open_splats(path: Path, *, device: str = "cpu") -> ViewTarget:
    """A Gaussian splat file (any format :func:`recon.export.formats.read_splats` reads), rendered
    with full SH by :class:`GaussianScene` on ``device``."""
    from recon.scenes.gaussians import GaussianScene

    scene = GaussianScene.from_file(path, device=device)
    degree = scene.sh_degree
    means = scene.params["means"].detach().double().cpu().numpy()
    centre = np.median(means, axis=0)
    extent = float(np.percentile(np.linalg.norm(means - centre, axis=1), 90)) or 1.0
    return ViewTarget(
        label=str(path),
        render=SceneRenderer(scene, (0.0, 0.0, 0.0)),
        max_sh_degree=degree,
        info={"file": path.name, "sh_degree": degree},
        num_primitives=lambda: scene.num_primitives,
        focus=centre,
        extent=extent,
    )


def open_mesh(path: Path) -> ViewTarget:
    """A glTF mesh, drawn by the browser. glTF is Y-up by definition, so the viewer's up is +Y."""
    import trimesh

    try:
        loaded = trimesh.load(path, force="scene")
        glb = path.read_bytes() if path.suffix.lower() == ".glb" else loaded.export(file_type="glb")
    except Exception as exc:  # trimesh raises many types for a broken file; all mean "unreadable"
        raise InputError(path, f"not a readable glTF mesh ({type(exc).__name__}: {exc})") from None
    if loaded.is_empty:
        raise InputError(path, "holds no geometry")
    bounds = np.asarray(loaded.bounds, dtype=np.float64)
    faces = sum(len(g.faces) for g in loaded.geometry.values() if hasattr(g, "faces"))
    return ViewTarget(
        label=str(path),
        render=None,
        glb=glb,
        info={"format": path.suffix.lower().lstrip("."), "faces": faces},
        up=np.array([0.0, 1.0, 0.0]),
        focus=bounds.mean(axis=0),
        extent=float(np.linalg.norm(bounds[1] - bounds[0]) / 2) or 1.0,
    )
