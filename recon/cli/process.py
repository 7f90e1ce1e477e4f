"""``recon-process``: structure from motion on a folder of photos or a video.

    recon-process photos/                      # -> photos/sfm/{database.db, sparse/0, report.json}
    recon-process clip.mp4 --fps 3             # frames -> clip_frames/, then SfM on them
    recon-process scan/images --masks scan/masks --output scan/colmap

The COLMAP model it writes (``sparse/0``) is what ``recon-train --data <photos>`` trains on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro
from rich.console import Console

from recon.cli.common import run_cli
from recon.errors import InputError


@dataclass
class ProcessConfig:
    """Structure from motion (pycolmap, in-process): photos or a video -> cameras, poses, sparse points."""

    input: tyro.conf.Positional[Path]
    """A folder of photos (or a folder holding images/), or a video file."""
    output: Path | None = None
    """Folder for database.db, sparse/0 and report.json (and images/ for a video's frames).
    Default: sfm/ inside the photo folder, or the recon cache when that folder is read-only."""
    matcher: Literal["auto", "exhaustive", "sequential"] = "auto"
    """auto: sequential for video frames (or names like consecutive frames), exhaustive otherwise."""
    masks: Path | None = None
    """Mask folder: white = keep, black = ignore, same stem as the photo, .png.
    Default: masks/ beside the photos when there is one."""
    no_masks: tyro.conf.FlagCreatePairsOff[bool] = False
    """Ignore masks even when a masks/ folder sits beside the photos."""
    camera_model: str = "auto"
    """auto (SIMPLE_RADIAL) or a COLMAP camera model: PINHOLE, RADIAL, OPENCV, ..."""
    single_camera: Literal["auto", "yes", "no"] = "auto"
    """Share one camera between all photos (auto: when sizes and EXIF camera agree)."""
    max_image_size: int = 1600
    """Photos are downscaled to this long side for feature extraction."""
    fps: float = 2.0
    """Video only: frames per second of video to keep."""
    max_frames: int = 300
    """Video only: at most this many frames (the rate is lowered for long videos)."""
    force: bool = False
    """Recompute even when a cached result for the same photos and options exists."""
    progress: bool = True
    """Progress lines and the report table on stderr."""


def _photo_folder(path: Path) -> Path:
    from recon.datasets.folder import NO_IMAGES, image_folder_of

    folder = image_folder_of(path)
    if folder is None:
        raise InputError(path, NO_IMAGES)
    return folder


def main(cfg: ProcessConfig | None = None) -> int:
    from recon.datasets.video import VIDEO_SUFFIXES, extract_frames
    from recon.utils.paths import derived_dir

    cfg = cfg if cfg is not None else tyro.cli(ProcessConfig, prog="recon-process")
    src = Path(cfg.input).expanduser()
    if not src.exists():
        raise InputError(src, "no such file or folder")
    if cfg.masks is not None and cfg.no_masks:
        raise InputError(None, "--masks and --no-masks contradict each other")
    out = Path(cfg.output).expanduser() if cfg.output is not None else None

    if src.is_file():
        if src.suffix.lower() not in VIDEO_SUFFIXES:
            raise InputError(src, f"not a video ({', '.join(VIDEO_SUFFIXES)}) or a folder of photos")
        frames_dir = out / "images" if out is not None else derived_dir(src.resolve().parent, f"{src.stem}_frames")
        extract_frames(src, frames_dir, fps=cfg.fps, max_frames=cfg.max_frames, force=cfg.force, progress=cfg.progress)
        image_dir = frames_dir
    elif src.is_dir():
        image_dir = _photo_folder(src)
    else:
        raise InputError(src, "not a folder of photos or a video file")

    from recon.datasets.sfm import run_sfm  # lazy: pulls in pycolmap

    single = {"auto": "auto", "yes": True, "no": False}[cfg.single_camera]
    result = run_sfm(
        image_dir,
        output_dir=out,
        mask_dir=False if cfg.no_masks else cfg.masks,
        matcher=cfg.matcher,
        camera_model=cfg.camera_model,
        single_camera=single,
        max_image_size=cfg.max_image_size,
        force=cfg.force,
        progress=cfg.progress,
    )
    console = Console()
    colour = "green" if result.registered == result.total else "yellow"
    console.print(
        f"[{colour}]registered {result.registered}/{result.total} images[/]; "
        f"COLMAP model: {result.model_dir}",
        highlight=False, soft_wrap=True,
    )
    console.print(f"report: {result.output_dir / 'report.json'}", highlight=False, soft_wrap=True)
    if out is None:  # the loader finds this cached result again from the photo folder
        console.print(f"train on it with: recon-train --data {src if src.is_dir() else image_dir}",
                      highlight=False, soft_wrap=True)
    return 0


def entrypoint() -> None:
    run_cli(main)


if __name__ == "__main__":
    entrypoint()
