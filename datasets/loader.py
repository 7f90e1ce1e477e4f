"""One entry point for every scene format: :func:`load_scene` (and :func:`detect_format`).

Detection order for a folder, and why: an explicit ``transforms.json`` is what the user (or
nerfstudio / instant-ngp) chose to train on, so it wins; a COLMAP model beats ``poses_bounds.npy``
because LLFF poses are usually derived from it and drop its distortion and points (Mip-NeRF 360
folders ship both); a folder with only photos needs SfM.
"""

from __future__ import annotations

from pathlib import Path

from recon.datasets.colmap import find_model_dir, load_colmap
from recon.datasets.dtu_monosdf import is_dtu_folder, load_dtu_monosdf
from recon.datasets.folder import NO_IMAGES, image_folder_of, scan_folder
from recon.datasets.llff import load_llff
from recon.datasets.nerf import find_transforms, load_nerf
from recon.datasets.scene import SceneData
from recon.errors import InputError

FORMATS = ("demo", "nerf", "colmap", "llff", "dtu", "folder", "video")
_COLMAP_FILES = {"cameras.bin", "cameras.txt", "images.bin", "images.txt", "points3D.bin", "points3D.txt"}


def detect_format(path: str | Path) -> str:
    """``"demo"``, ``"nerf"``, ``"colmap"``, ``"llff"``, ``"dtu"`` (IDR / MonoSDF ``cameras.npz``),
    ``"folder"`` (photos that need SfM) or ``"video"`` (frames are extracted next to it, then SfM with
    sequential matching).

    Accepts the folder of a scene or one of its defining files (``transforms.json``,
    ``poses_bounds.npy``, a COLMAP ``cameras.bin``...). InputError when nothing usable is there."""
    if str(path) == "demo":
        return "demo"
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(p, "no such file or folder")
    if p.is_file():
        if p.suffix.lower() == ".json":
            return "nerf"
        if p.name == "poses_bounds.npy":
            return "llff"
        if p.name in _COLMAP_FILES:
            return "colmap"
        if p.name == "cameras.npz":
            return "dtu"
        from recon.datasets.video import is_video_file

        if is_video_file(p):
            return "video"
        raise InputError(p, "not a scene file (expected transforms.json, poses_bounds.npy, a COLMAP model or a folder)")
    if find_transforms(p) is not None:
        return "nerf"
    if find_model_dir(p) is not None:
        return "colmap"
    if (p / "poses_bounds.npy").is_file():
        return "llff"
    if is_dtu_folder(p):
        return "dtu"
    if image_folder_of(p) is not None:
        return "folder"
    raise InputError(p, f"{NO_IMAGES}; nor a transforms.json, COLMAP model (sparse/0) or poses_bounds.npy")


def load_scene(path: str | Path, check_images: bool = True) -> SceneData:
    """Load any supported scene; see :func:`detect_format`. ``"demo"`` loads the bundled demo scene.

    A plain photo folder runs SfM (``recon.datasets.sfm.run_sfm``) and loads its COLMAP result;
    ``source`` is then ``"folder"``. With ``check_images`` every image file's header is read (cheap:
    no pixels are decoded) so that a missing, unreadable or wrongly sized image or mask is reported now, in
    name order, before a training run creates any output, rather than halfway through loading."""
    scene = _load(path)
    if check_images:
        from recon.datasets.images import check_view_files  # lazy: pulls in torch

        for cam in scene.cameras:
            check_view_files(cam)
    return scene


def _load(path: str | Path) -> SceneData:
    fmt = detect_format(path)
    if fmt == "demo":
        from recon.datasets.demo import demo_scene_path  # lazy: may download/build the demo data

        scene = load_nerf(demo_scene_path())
        scene.source = "demo"
        return scene
    p = Path(path).expanduser()
    if fmt == "nerf":
        return load_nerf(p)
    if fmt == "llff":
        return load_llff(p)
    if fmt == "dtu":
        return load_dtu_monosdf(p)
    if fmt == "colmap":
        return load_colmap(p.parent if p.is_file() else p)
    if fmt == "video":
        from recon.datasets.video import extract_frames
        from recon.utils.paths import derived_dir

        frames_dir = derived_dir(p.parent, f"{p.stem}_frames")
        extract_frames(p, frames_dir)
        return _load_folder(frames_dir)
    return _load_folder(p)


def _load_folder(path: Path) -> SceneData:
    folder = scan_folder(path)
    try:
        from recon.datasets.sfm import run_sfm  # lazy: SfM pulls in pycolmap's mapping machinery
    except ImportError as err:  # a broken install, not bad input
        raise RuntimeError(f"{path} has photos but no poses, and SfM (recon.datasets.sfm) is unavailable: {err}") from err
    model_dir = run_sfm(folder.image_dir, mask_dir=folder.mask_dir)
    scene = load_colmap(Path(model_dir), image_dir=folder.image_dir, mask_dir=folder.mask_dir)
    scene.source = "folder"
    scene.extras["sfm_model_dir"] = Path(model_dir)
    return scene
