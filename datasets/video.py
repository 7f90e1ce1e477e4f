"""Frames from a video, for SfM: ``extract_frames(video, out_dir) -> [frame_00001.jpg, ...]``.

Reading video needs the optional packages ``imageio`` and ``imageio-ffmpeg`` (the latter ships an
ffmpeg binary): ``pip install imageio imageio-ffmpeg``. Frames are sampled at ``fps`` frames per
second; when that would give more than ``max_frames``, the rate is lowered so the frames still
span the whole video. The frames are numbered consecutively (``frame_00001.jpg`` ...) and a small
marker file (:data:`recon.datasets.sfm.VIDEO_MARKER`) records where they came from, so SfM picks
sequential matching and a second call with the same video and settings reuses the frames.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from pathlib import Path

from recon.errors import InputError
from recon.utils.atomic import write_text_atomic

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".3gp")
FRAME_PATTERN = "frame_{:05d}.jpg"
MARKER = ".recon_video.json"  # same value as recon.datasets.sfm.VIDEO_MARKER
INSTALL_HINT = "pip install imageio imageio-ffmpeg"

__all__ = ["extract_frames", "is_video_file", "VIDEO_SUFFIXES", "FRAME_PATTERN"]


def is_video_file(path: str | Path) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES


def _ffmpeg_reader():
    try:
        import imageio  # noqa: F401  - the documented optional dependency pair
        import imageio_ffmpeg
    except ImportError as err:
        raise InputError(None, f"reading video needs the optional packages imageio and imageio-ffmpeg: {INSTALL_HINT}") from err
    return imageio_ffmpeg


def _marker_content(video: Path, fps: float, max_frames: int, quality: int) -> dict:
    st = video.stat()
    return {"source": str(video), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "fps": float(fps),
            "max_frames": int(max_frames), "quality": int(quality)}


def _existing_frames(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.glob("frame_*.jpg") if p.is_file())


def extract_frames(
    video_path: str | Path,
    out_dir: str | Path,
    fps: float = 2,
    max_frames: int = 300,
    *,
    quality: int = 95,
    force: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Write frames of ``video_path`` as ``out_dir/frame_00001.jpg ...`` and return their paths.

    ``fps``: frames per second of video to keep (lowered when the video is long, so at most
    ``max_frames`` frames cover the whole video). Reuses frames written earlier from the same video
    file with the same settings unless ``force``. Other files in ``out_dir`` are left alone; old
    ``frame_*.jpg`` from a different video or setting are replaced. Raises :class:`InputError` when
    the file is missing, is not a video ffmpeg can read, or has no frames, and when the optional
    packages are not installed."""
    video = Path(video_path).expanduser()
    out = Path(out_dir).expanduser()
    if not video.exists():
        raise InputError(video, "no such file")
    if not video.is_file():
        raise InputError(video, "not a video file")
    if not (fps > 0) or not math.isfinite(fps):
        raise InputError(None, f"fps must be a positive number, not {fps}")
    if int(max_frames) < 1:
        raise InputError(None, f"max_frames must be at least 1, not {max_frames}")
    video = video.resolve()
    want = _marker_content(video, fps, max_frames, quality)
    marker = out / MARKER
    if not force and marker.is_file():
        try:
            have = json.loads(marker.read_text())
        except (OSError, ValueError):
            have = None
        frames = _existing_frames(out)
        if have is not None and {k: have.get(k) for k in want} == want and frames and len(frames) == have.get("frames"):
            return frames

    ffmpeg = _ffmpeg_reader()
    from PIL import Image

    # Probe duration and rate, then pick the sampling rate.
    try:
        probe = ffmpeg.read_frames(str(video))
        meta = next(probe)
        probe.close()
    except (OSError, RuntimeError, StopIteration, IndexError, ValueError, AttributeError) as err:
        raise InputError(video, f"not a video ffmpeg can read ({str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__})") from err
    duration = float(meta.get("duration") or 0.0)
    rate = float(fps)
    if duration > 0 and duration * rate > max_frames:
        rate = max_frames / duration
    width, height = meta["size"]

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".tmp-frames-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    written: list[Path] = []
    try:
        bar = None
        if progress:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            expected = min(max_frames, max(1, int(duration * rate))) if duration > 0 else None
            bar = Progress(SpinnerColumn(finished_text="[green]✓[/]"), TextColumn("[bold]{task.description:<10}[/]"),
                           BarColumn(bar_width=30), MofNCompleteColumn(), TimeElapsedColumn(),
                           console=Console(stderr=True))
            bar.__enter__()
            task = bar.add_task("frames", total=expected)
        try:
            gen = ffmpeg.read_frames(str(video), output_params=["-vf", f"fps={rate:.6f}"])
            next(gen)
            for i, raw in enumerate(gen):
                if i >= max_frames:
                    break
                img = Image.frombytes("RGB", (width, height), raw)
                path = tmp / FRAME_PATTERN.format(i + 1)
                img.save(path, quality=int(quality))
                written.append(path)
                if bar is not None:
                    bar.advance(task)
            gen.close()
        except (OSError, RuntimeError, ValueError) as err:
            raise InputError(video, f"cannot decode the video ({str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__})") from err
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
        if not written:
            raise InputError(video, "the video has no frames")
        # Swap the new frames in: old frames out first, the marker (the "complete" flag) last.
        marker.unlink(missing_ok=True)
        for old in _existing_frames(out):
            old.unlink()
        final = []
        for p in written:
            dst = out / p.name
            os.replace(p, dst)
            final.append(dst)
        write_text_atomic(marker, json.dumps({**want, "frames": len(final), "rate": rate,
                                              "width": width, "height": height}, indent=2) + "\n")
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
