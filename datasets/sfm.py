"""Structure from motion in-process (pycolmap): photos -> cameras, poses and sparse points.

Two entry points:

- :func:`run_sfm` -- photos without poses. SIFT features (CPU), exhaustive matching for small
  unordered sets and sequential matching for video frames, incremental mapping with a fall-back to
  global mapping (GLOMAP) when the incremental model registers too few images or disagrees with
  the photos' EXIF GPS. Writes a standard COLMAP binary model (``sparse/0``) that
  :func:`recon.datasets.colmap.load_colmap` reads.
- :func:`triangulate_known_poses` -- a scene with poses but no points (transforms.json, LLFF):
  features + matches, then triangulation with the poses and intrinsics held fixed. This is what
  3DGS-style training initialises from.

Both cache their results in :func:`recon.utils.paths.derived_dir` (``sfm`` / ``sfm_points``),
keyed on the images (names, sizes, mtimes), the masks and the options; ``force=True`` recomputes.
A cache folder is valid only when its ``report.json`` carries the current key, and the report is
written last (atomically) after everything else was built in a temporary folder and renamed into
place, so an interrupted run never leaves a cache that looks complete.

Masks (white = keep, black = ignore, same stem as the image, ``.png``) are thresholded at 128 and
written under COLMAP's naming (``X.jpg`` -> ``X.jpg.png``) into a temporary folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from recon.datasets.folder import IMAGE_SUFFIXES, find_images, find_mask
from recon.datasets.video import MARKER as VIDEO_MARKER  # extract_frames() leaves it among the frames
from recon.errors import InputError
from recon.utils.atomic import write_text_atomic
from recon.utils.paths import derived_dir

# Bump when the layout or meaning of a cache folder changes (old caches are then recomputed).
CACHE_VERSION = 1
# "auto" matching: exhaustive up to this many images (all pairs are affordable on a CPU) ...
EXHAUSTIVE_MAX_IMAGES = 100
# ... and sequential (each frame against its next SEQUENTIAL_OVERLAP frames, plus frames 2^k ahead
# for loop closure, as COLMAP's quadratic overlap) for video frames and for larger sets.
SEQUENTIAL_OVERLAP = 10
# Incremental mapping "registered too few" when below this fraction of the images (or below 3):
# then global mapping is tried too (also when the model disagrees with EXIF GPS, see _gps_check).
FALLBACK_FRACTION = 0.8
REPORT_NAME = "report.json"
MATCHERS = ("auto", "exhaustive", "sequential")

__all__ = [
    "SfmResult",
    "run_sfm",
    "triangulate_known_poses",
    "choose_matcher",
    "looks_like_frames",
    "print_report",
    "camera_to_pycolmap",
    "CACHE_VERSION",
]


def _pycolmap():
    try:
        import pycolmap
    except ImportError as err:  # a broken install, not bad input
        raise RuntimeError(f"SfM needs pycolmap (pip install pycolmap): {err}") from err
    return pycolmap


# =============================================================================================
# result
# =============================================================================================
@dataclass
class SfmResult:
    """What :func:`run_sfm` produced. ``model_dir`` is the COLMAP binary model (``.../sparse/0``);
    ``report`` is the content of ``report.json`` beside it. ``os.fspath(result)`` is the model dir."""

    model_dir: Path
    report: dict
    registered: int
    total: int
    output_dir: Path | None = None  # the folder holding database.db, sparse/0, report.json
    cached: bool = False  # True when the result came from the cache without recomputing

    def __fspath__(self) -> str:  # so Path(run_sfm(...)) is the model folder
        return str(self.model_dir)


# =============================================================================================
# small helpers
# =============================================================================================
_FRAME_RE = re.compile(r"^(.*?)(\d+)$")


def looks_like_frames(names: Sequence[str]) -> bool:
    """True when ``names`` read like consecutive video frames: one common prefix, one extension, a
    trailing frame number, and the numbers form an unbroken run with a constant step (``00000.jpg,
    00001.jpg, ...`` or ``frame_0001.jpg, frame_0002.jpg, ...``). A photo shoot with gaps in its
    numbering (deleted shots, as ``DSC_0007 ... DSC_0073`` without ``DSC_0066``) does not count."""
    if len(names) < 3:
        return False
    prefixes, exts, numbers = set(), set(), []
    for name in names:
        p = Path(name)
        m = _FRAME_RE.match(p.stem)
        if m is None:
            return False
        prefixes.add(m.group(1))
        exts.add(p.suffix.lower())
        numbers.append(int(m.group(2)))
    if len(prefixes) != 1 or len(exts) != 1:
        return False
    steps = np.diff(sorted(numbers))
    return bool(steps[0] >= 1 and np.all(steps == steps[0]))


def _frame_order(names: Sequence[str]) -> list[str]:
    """Names in frame order (numeric when every name ends in a number, else lexicographic)."""
    def key(n: str):
        m = _FRAME_RE.match(Path(n).stem)
        return (0, m.group(1), int(m.group(2)), n) if m else (1, n, 0, n)

    return sorted(names, key=key)


def choose_matcher(image_dir: Path, names: Sequence[str], matcher: str = "auto") -> tuple[str, str]:
    """(matcher, why): ``"sequential"`` for frames of a video (a folder written by
    :func:`recon.datasets.video.extract_frames`, or names that read like consecutive frames) and
    for more than :data:`EXHAUSTIVE_MAX_IMAGES` images; ``"exhaustive"`` otherwise."""
    if matcher not in MATCHERS:
        raise InputError(None, f"unknown matcher {matcher!r} (choose one of {', '.join(MATCHERS)})")
    if matcher != "auto":
        return matcher, "asked for"
    if (Path(image_dir) / VIDEO_MARKER).is_file():
        return "sequential", "frames extracted from a video"
    if looks_like_frames(names):
        return "sequential", "file names read like consecutive video frames"
    if len(names) > EXHAUSTIVE_MAX_IMAGES:
        return "sequential", (
            f"more than {EXHAUSTIVE_MAX_IMAGES} images: matched in file-name order "
            "(pass matcher='exhaustive' to match every pair)"
        )
    return "exhaustive", f"at most {EXHAUSTIVE_MAX_IMAGES} images: every pair is matched"


def _exhaustive_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    return list(itertools.combinations(names, 2))


def _sequential_pairs(names: Sequence[str], overlap: int = SEQUENTIAL_OVERLAP) -> list[tuple[str, str]]:
    """COLMAP's sequential pairing with quadratic overlap: i with i+1..i+overlap and i+2^k."""
    order = _frame_order(names)
    n = len(order)
    pairs: set[tuple[int, int]] = set()
    for i in range(n):
        for o in range(1, overlap + 1):
            if i + o < n:
                pairs.add((i, i + o))
        for k in range(overlap):
            j = i + (1 << k)
            if j < n:
                pairs.add((i, j))
    return [(order[i], order[j]) for i, j in sorted(pairs)]


def _exif_camera(path: Path) -> tuple:
    """(width, height, make, model, focal) -- images that agree share a physical camera."""
    with Image.open(path) as im:
        size = im.size
        try:
            exif = im.getexif()
            make, model = exif.get(0x010F), exif.get(0x0110)
            focal = exif.get_ifd(0x8769).get(0x920A) if hasattr(exif, "get_ifd") else None
        except Exception:  # unreadable EXIF is no reason to fail
            make = model = focal = None
    return (size[0], size[1], str(make or ""), str(model or ""), str(focal or ""))


def _decide_single_camera(paths: Sequence[Path], single_camera: str | bool) -> tuple[bool, str]:
    if isinstance(single_camera, bool):
        return single_camera, "asked for"
    if single_camera not in ("auto", "yes", "no", "true", "false"):
        raise InputError(None, f"single_camera must be 'auto', True or False, not {single_camera!r}")
    if single_camera in ("yes", "true"):
        return True, "asked for"
    if single_camera in ("no", "false"):
        return False, "asked for"
    try:
        keys = {_exif_camera(p) for p in paths}
    except OSError as err:
        raise InputError(getattr(err, "filename", None) or paths[0], f"cannot read image ({err})") from err
    if len(keys) == 1:
        return True, "all images have the same size and EXIF camera"
    return False, f"{len(keys)} different image sizes / EXIF cameras"


def _check_camera_model(camera_model: str) -> str:
    if camera_model == "auto":
        return "SIMPLE_RADIAL"  # COLMAP's default: one focal, principal point, one radial term
    pycolmap = _pycolmap()
    name = camera_model.upper()
    if name not in pycolmap.CameraModelId.__members__ or name == "INVALID":
        known = ", ".join(k for k in pycolmap.CameraModelId.__members__ if k != "INVALID")
        raise InputError(None, f"unknown camera model {camera_model!r} (choose auto or one of {known})")
    return name


def _file_signature(paths: Sequence[Path], root: Path) -> list[list]:
    out = []
    for p in paths:
        st = p.stat()
        out.append([p.relative_to(root).as_posix() if root in p.parents else str(p), st.st_size, st.st_mtime_ns])
    return out


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _auto_mask_dir(image_dir: Path) -> Path | None:
    """A masks folder beside the images: ``masks_4/`` for ``images_4/``, ``masks/`` beside
    ``images/`` (or any photo folder), or ``masks/`` inside the photo folder."""
    cands = []
    name = image_dir.name
    if name.startswith("images"):
        cands.append(image_dir.parent / ("masks" + name[len("images"):]))
    cands += [image_dir.parent / "masks", image_dir / "masks"]
    for c in cands:
        if c.is_dir() and c.resolve() != image_dir.resolve():
            return c
    return None


def _collect_masks(image_dir: Path, names: Sequence[str], mask_dir: Path | None) -> dict[str, Path]:
    if mask_dir is None:
        return {}
    return {n: m for n in names if (m := find_mask(mask_dir, n)) is not None}


def _write_colmap_masks(masks: dict[str, Path], image_paths: dict[str, Path], out: Path) -> Path:
    """Binary masks under COLMAP's names (``X.jpg`` -> ``X.jpg.png``, 0 = ignore, 255 = keep) at
    the size of their image. Our masks are white = keep with soft edges: threshold at 128."""
    out.mkdir(parents=True, exist_ok=True)
    for name, src in masks.items():
        dst = out / f"{name}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            with Image.open(src) as m:
                mask = m.convert("L")
            with Image.open(image_paths[name]) as im:
                size = im.size
        except OSError as err:
            raise InputError(src, f"cannot read mask ({err})") from err
        if mask.size != size:
            mask = mask.resize(size, Image.NEAREST)
        arr = np.where(np.asarray(mask) >= 128, 255, 0).astype(np.uint8)
        # Written by COLMAP's own image writer, not Pillow's: once pycolmap 4.2.1 is loaded,
        # Pillow's PNG encoder can abort the process (zlib symbol clash; PNG *reading* is fine).
        if not _pycolmap().Bitmap.from_array(np.ascontiguousarray(arr)).write(str(dst)):
            raise RuntimeError(f"could not write the COLMAP mask {dst}")
    return out


@contextlib.contextmanager
def _quiet_colmap(enabled: bool = True) -> Iterator[None]:
    """COLMAP logs every step through glog on stderr; keep the terminal for our own progress.
    ``RECON_SFM_VERBOSE=1`` keeps COLMAP's log."""
    pycolmap = _pycolmap()
    if not enabled or os.environ.get("RECON_SFM_VERBOSE"):
        yield
        return
    try:
        old = pycolmap.logging.minloglevel
        pycolmap.logging.minloglevel = 3  # FATAL only; failures reach us as return values/exceptions
    except Exception:  # pragma: no cover - logging API differs
        yield
        return
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def _threads(num_threads: int) -> int:
    return int(num_threads) if num_threads and num_threads > 0 else (os.cpu_count() or 1)


def _device():
    pycolmap = _pycolmap()
    return pycolmap.Device.auto if getattr(pycolmap, "has_cuda", False) else pycolmap.Device.cpu


# =============================================================================================
# progress
# =============================================================================================
def _progress_columns():
    from rich.progress import ProgressColumn, SpinnerColumn, TimeRemainingColumn
    from rich.text import Text

    class CountColumn(ProgressColumn):
        """``done/total`` for counted stages, nothing for spinner stages."""

        def render(self, task):
            if not task.fields.get("counted", True) or task.total is None:
                return Text("")
            return Text(f"{int(task.completed)}/{int(task.total)}", style="progress.download")

    class EtaColumn(TimeRemainingColumn):
        """``eta 0:00:12`` while a counted stage runs; nothing otherwise."""

        def render(self, task):
            if task.finished or task.stop_time is not None or not task.fields.get("counted", True) \
                    or task.total is None or not task.completed:
                return Text("")
            return Text("eta ") + super().render(task)

    class DoneSpinnerColumn(SpinnerColumn):
        """A spinner while the stage runs, a tick once it ended (even short of its total, as a
        mapper that registered 50 of 65 images)."""

        def render(self, task):
            if task.finished or task.stop_time is not None:
                return Text("✓", style="green")
            return super().render(task)

    return CountColumn, EtaColumn, DoneSpinnerColumn


def _CountColumn():  # noqa: N802 - column factories, built lazily so importing sfm needs no rich
    return _progress_columns()[0]()


def _EtaColumn():  # noqa: N802
    return _progress_columns()[1]()


def _SpinColumn():  # noqa: N802
    return _progress_columns()[2]()


class _Stages:
    """One rich progress line per stage, with a bar and an ETA when the stage has a known number
    of steps, and a spinner with the elapsed time when it does not. Silent when disabled."""

    def __init__(self, enabled: bool, title: str, console=None) -> None:
        self.enabled = enabled
        self.title = title
        self.console = console
        self.progress = None
        self.times: dict[str, float] = {}

    def __enter__(self) -> "_Stages":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.console = self.console or Console(stderr=True)
            self.progress = Progress(
                _SpinColumn(),
                TextColumn("[bold]{task.description:<10}[/]"),
                BarColumn(bar_width=30),
                _CountColumn(),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                _EtaColumn(),
                console=self.console,
                transient=False,
            )
            self.progress.__enter__()
            self.console.print(f"[bold]{self.title}[/]", highlight=False)
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None, note: str = "") -> Iterator["_Stage"]:
        st = _Stage(self, name, total, note)
        t0 = time.perf_counter()
        try:
            yield st
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0
            st.finish()


class _Stage:
    def __init__(self, parent: _Stages, name: str, total: int | None, note: str) -> None:
        self.parent, self.name, self.total = parent, name, total
        self.task = None
        if parent.progress is not None:
            self.task = parent.progress.add_task(name, total=total, note=note, counted=total is not None)

    def advance(self, n: float = 1) -> None:
        if self.task is not None:
            self.parent.progress.advance(self.task, n)

    def set(self, completed: float | None = None, note: str | None = None, total: int | None = None) -> None:
        if self.task is not None:
            kw: dict[str, Any] = {}
            if completed is not None:
                kw["completed"] = completed
            if note is not None:
                kw["note"] = note
            if total is not None:
                kw["total"] = total
            self.parent.progress.update(self.task, **kw)

    def finish(self) -> None:
        if self.task is not None:
            task = self.parent.progress.tasks[self.task]
            if task.total is None:  # a spinner stage: show it as done
                self.parent.progress.update(self.task, total=1, completed=1)
            self.parent.progress.stop_task(self.task)


# =============================================================================================
# pipeline stages (shared by run_sfm and triangulate_known_poses)
# =============================================================================================
def _run_cancellable(fn):
    """Run the blocking pycolmap call ``fn(token)`` in a worker thread (pycolmap releases the GIL),
    so Ctrl-C reaches Python at once and cancels the call through COLMAP's CancellationToken
    (where the call takes one). Exceptions of the call are re-raised here."""
    pycolmap = _pycolmap()
    try:
        token = pycolmap.CancellationToken()
    except Exception:  # pragma: no cover - API differs
        token = None
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(token)
        except BaseException as err:  # noqa: BLE001 - handed to the calling thread
            box["error"] = err

    th = threading.Thread(target=target, name="recon-sfm", daemon=True)
    th.start()
    try:
        while th.is_alive():
            th.join(0.2)
    except KeyboardInterrupt:
        if token is not None:
            token.cancel()
            th.join(30)
        raise
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _extract(
    db_path: Path,
    image_dir: Path,
    names: Sequence[str],
    *,
    camera_model: str,
    single_camera: bool,
    max_image_size: int,
    num_threads: int,
    mask_dir: Path | None,
    stages: _Stages,
) -> None:
    """SIFT features of ``names`` into the database (one shared camera, or one per image).

    pycolmap has no progress callback, so the images go in a few calls and the line moves per
    call. COLMAP extracts the images of one call in parallel: a call gets at least 3 images per
    thread (smaller calls leave cores idle), and there are at most 20 calls."""
    pycolmap = _pycolmap()
    eopts = pycolmap.FeatureExtractionOptions()
    eopts.max_image_size = int(max_image_size)
    eopts.num_threads = int(num_threads)
    n_chunks = max(1, min(20, len(names) // (3 * _threads(num_threads))))
    bounds = np.linspace(0, len(names), n_chunks + 1).round().astype(int)
    mode = pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.PER_IMAGE
    camera_id = None
    with stages.stage("extract", total=len(names)) as st:
        for i, j in zip(bounds[:-1], bounds[1:]):
            ropts = pycolmap.ImageReaderOptions()
            ropts.camera_model = camera_model
            if mask_dir is not None:
                ropts.mask_path = str(mask_dir)
            if single_camera and camera_id is not None:
                ropts.existing_camera_id = camera_id  # later calls join the first call's camera
            chunk = list(names[i:j])
            _run_cancellable(
                lambda tok: pycolmap.extract_features(
                    str(db_path), str(image_dir), image_names=chunk, camera_mode=mode, reader_options=ropts,
                    extraction_options=eopts, device=_device(), cancellation_token=tok,
                )
            )
            if single_camera and camera_id is None:
                db = pycolmap.Database.open(str(db_path))
                try:
                    cams = db.read_all_cameras()
                    camera_id = cams[0].camera_id if cams else None
                finally:
                    db.close()
            st.advance(int(j - i))


def _pair_chunks(pairs: list[tuple[str, str]], order: Sequence[str]) -> list[list[tuple[str, str]]]:
    """Split pairs into calls that each touch few images.

    Each call loads the features of every image it touches (~0.1 s per image on a CPU), so pairs
    are grouped by blocks of the image order: exhaustive pairs become block x block tiles, the
    near-diagonal pairs of sequential matching become windows, and what is left (the far pairs of
    quadratic overlap, small tiles) goes into one last call. Loads stay within ~10 % of one call."""
    n = len(order)
    block = max(10, math.ceil(n / 6))
    index = {name: i for i, name in enumerate(order)}
    tiles: dict[tuple[int, int], list[tuple[str, str]]] = {}
    for a, b in pairs:
        i, j = sorted((index[a], index[b]))
        tiles.setdefault((i // block, j // block), []).append((a, b))
    chunks, rest = [], []
    for key in sorted(tiles):
        if len(tiles[key]) >= block * 2:
            chunks.append(tiles[key])
        else:
            rest.extend(tiles[key])
    if rest:
        chunks.append(rest)
    return chunks


def _match(
    db_path: Path,
    pairs: list[tuple[str, str]],
    order: Sequence[str],
    work: Path,
    *,
    num_threads: int,
    stages: _Stages,
    note: str = "",
) -> None:
    """Match and geometrically verify image pairs, in a few calls so the line moves (with ETA)."""
    pycolmap = _pycolmap()
    mopts = pycolmap.FeatureMatchingOptions()
    mopts.num_threads = int(num_threads)
    with stages.stage("match", total=len(pairs), note=note) as st:
        if not pairs:
            return
        if any(" " in a or " " in b for a, b in pairs):  # the pair file is space separated
            _run_cancellable(
                lambda tok: pycolmap.match_exhaustive(
                    str(db_path), matching_options=mopts, device=_device(), cancellation_token=tok
                )
            )
            return
        pair_file = work / "pairs.txt"
        for chunk in _pair_chunks(pairs, order):
            pair_file.write_text("".join(f"{a} {b}\n" for a, b in chunk))
            popts = pycolmap.ImportedPairingOptions()
            popts.match_list_path = str(pair_file)
            _run_cancellable(
                lambda tok: pycolmap.match_image_pairs(
                    str(db_path), matching_options=mopts, pairing_options=popts, device=_device(),
                    cancellation_token=tok,
                )
            )
            st.advance(len(chunk))


def _db_facts(db_path: Path) -> dict:
    """What the database knows per image: id, camera, keypoints; verified inliers per pair."""
    pycolmap = _pycolmap()
    db = pycolmap.Database.open(str(db_path))
    try:
        images = {im.name: im for im in db.read_all_images()}
        keypoints = {name: db.num_keypoints_for_image(im.image_id) for name, im in images.items()}
        pair_ids, counts = db.read_two_view_geometry_num_inliers()
        inliers: dict[tuple[int, int], int] = {}
        for pid, cnt in zip(pair_ids, counts):
            a, b = pycolmap.pair_id_to_image_pair(pid)
            inliers[(int(a), int(b))] = int(cnt)
        ids = {name: int(im.image_id) for name, im in images.items()}
        cameras = {name: int(im.camera_id) for name, im in images.items()}
    finally:
        db.close()
    return {"ids": ids, "cameras": cameras, "keypoints": keypoints, "inliers": inliers}


def _model_stats(rec) -> dict:
    n_points = int(rec.num_points3D())
    return {
        "registered": int(rec.num_reg_images()),
        "num_points": n_points,
        "num_cameras": int(rec.num_cameras()),
        "mean_reprojection_error": float(rec.compute_mean_reprojection_error()) if n_points else None,
        "mean_track_length": float(rec.compute_mean_track_length()) if n_points else None,
        "mean_observations_per_image": float(rec.compute_mean_observations_per_reg_image()) if n_points else None,
    }


# =============================================================================================
# run_sfm
# =============================================================================================
def run_sfm(
    image_dir: str | Path,
    *,
    output_dir: str | Path | None = None,
    mask_dir: str | Path | None | bool = None,
    matcher: str = "auto",
    camera_model: str = "auto",
    single_camera: str | bool = "auto",
    max_image_size: int = 1600,
    num_threads: int = -1,
    force: bool = False,
    progress: bool = True,
) -> SfmResult:
    """Structure from motion on the photos directly in ``image_dir`` (.jpg/.jpeg/.png).

    - ``output_dir``: where ``database.db``, ``sparse/0`` (the largest model, COLMAP binary) and
      ``report.json`` go; default ``derived_dir(image_dir, "sfm")``. Other files there are left alone.
    - ``mask_dir``: white = keep, black = ignore, same stem as the image (``X.png`` or COLMAP's
      ``X.jpg.png``). None looks for ``masks/`` (or ``masks_4/`` beside ``images_4/``) beside the
      photos; False uses no masks.
    - ``matcher``: ``"auto"`` (see :func:`choose_matcher`), ``"exhaustive"`` or ``"sequential"``.
    - ``camera_model``: ``"auto"`` (SIMPLE_RADIAL) or any COLMAP model name (``"OPENCV"``...).
    - ``single_camera``: ``"auto"`` shares one camera when every image has the same size and EXIF
      camera (video, one phone), else one camera per image; or True/False.
    - ``max_image_size``: long side the images are downscaled to for SIFT (keypoints are in
      full-resolution pixels). ``num_threads=-1`` uses every core.

    Mapping is incremental; when it registers fewer than 80 % of the images (or fewer than 3), or
    when the photos carry EXIF GPS and the model's camera centres disagree with it (after a
    similarity transform), global mapping runs too. The model that agrees with GPS, then the one
    registering more images, is kept (``report["mapper"]``, details in ``report["mappers"]``).
    Raises :class:`InputError` for a missing folder, fewer than 2 images, bad options, or when
    nothing registers at all (e.g. photos that do not overlap); a partial result is returned with
    the unregistered images and the reason for each in ``report["failed"]``.
    """
    pycolmap = _pycolmap()
    t_start = time.perf_counter()
    image_dir = Path(image_dir).expanduser()
    if not image_dir.exists():
        raise InputError(image_dir, "no such folder")
    if not image_dir.is_dir():
        raise InputError(image_dir, "not a folder of photos")
    image_dir = image_dir.resolve()
    paths = find_images(image_dir)
    if not paths:
        raise InputError(image_dir, f"no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    if len(paths) < 2:
        raise InputError(image_dir, f"SfM needs at least 2 overlapping photos, found 1 ({paths[0].name})")
    names = [p.name for p in paths]
    path_of = {p.name: p for p in paths}

    if mask_dir is False:
        mdir = None
    elif mask_dir is None or mask_dir is True:
        mdir = _auto_mask_dir(image_dir)
    else:
        mdir = Path(mask_dir).expanduser()
        if not mdir.is_dir():
            raise InputError(mdir, "mask folder not found")
    masks = _collect_masks(image_dir, names, mdir)
    if mask_dir not in (None, True, False) and not masks:
        raise InputError(mdir, f"no mask matches any photo (expected e.g. {Path(names[0]).stem}.png)")
    if not masks:
        mdir = None

    matcher_name, matcher_why = choose_matcher(image_dir, names, matcher)
    model_name = _check_camera_model(camera_model)
    single, single_why = _decide_single_camera(paths, single_camera)
    if int(max_image_size) < 64:
        raise InputError(None, f"max_image_size must be at least 64 pixels, not {max_image_size}")

    out = Path(output_dir).expanduser() if output_dir is not None else derived_dir(image_dir, "sfm")
    options = {
        "matcher": matcher_name,
        "camera_model": model_name,
        "single_camera": single,
        "max_image_size": int(max_image_size),
        "masks": str(mdir) if mdir else None,
    }
    key = _digest({
        "version": CACHE_VERSION,
        "pycolmap": pycolmap.__version__,
        "images": _file_signature(paths, image_dir),
        "masks": _file_signature(list(masks.values()), mdir) if mdir else [],
        "options": options,
    })

    console = None
    if not force:
        cached = _read_cache(out, key)
        if cached is not None:
            if progress:
                from rich.console import Console

                console = Console(stderr=True)
                console.print(f"[bold]SfM[/] {image_dir}: reusing the result in {out}", highlight=False)
                print_report(cached, console, cached=True)
            return _result_from_report(out, cached, image_dir, cached=True)
    _check_output_dir(out, force)

    out.mkdir(parents=True, exist_ok=True)
    work = out / f".tmp-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        with _quiet_colmap(), _Stages(progress, f"SfM on {len(names)} images in {image_dir}") as stages:
            console = stages.console
            db_path = work / "database.db"
            colmap_masks = _write_colmap_masks(masks, path_of, work / "masks") if masks else None
            _extract(
                db_path, image_dir, names, camera_model=model_name, single_camera=single,
                max_image_size=max_image_size, num_threads=num_threads, mask_dir=colmap_masks, stages=stages,
            )
            facts = _db_facts(db_path)
            with_features = [n for n in names if facts["keypoints"].get(n, 0) > 0]
            pairs = (_exhaustive_pairs if matcher_name == "exhaustive" else _sequential_pairs)(with_features)
            order = with_features if matcher_name == "exhaustive" else _frame_order(with_features)
            _match(db_path, pairs, order, work, num_threads=num_threads, stages=stages, note=f"{matcher_name} pairs")
            facts = _db_facts(db_path)
            best, attempts, mapper = _map(db_path, image_dir, work, len(names), num_threads, stages,
                                          gps=_exif_gps(paths))

            report = {
                "version": CACHE_VERSION,
                "cache_key": key,
                "image_dir": str(image_dir),
                "total": len(names),
                "registered": 0,
                "mapper": mapper,
                "mappers": attempts,
                "matcher": matcher_name,
                "matcher_reason": matcher_why,
                "num_pairs": len(pairs),
                "num_verified_pairs": sum(1 for v in facts["inliers"].values() if v > 0),
                "camera_model": model_name,
                "single_camera": single,
                "single_camera_reason": single_why,
                "max_image_size": int(max_image_size),
                "masks": str(mdir) if mdir else None,
                "num_masks": len(masks),
                "num_points": 0,
                "num_cameras": 0,
                "mean_reprojection_error": None,
                "mean_track_length": None,
                "mean_observations_per_image": None,
                "failed": [],
                "timings": {},
                "pycolmap_version": pycolmap.__version__,
            }
            if best is not None:
                report.update(_model_stats(best))
                best.write(str(_mkdir(work / "sparse" / "0")))
            report["failed"] = _failure_reasons(names, best, facts, attempts)
            report["timings"] = {k: round(v, 3) for k, v in stages.times.items()}
            report["timings"]["total"] = round(time.perf_counter() - t_start, 3)
        _commit(work, out, report, ("database.db", "sparse"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if progress:
        print_report(report, console)
    return _result_from_report(out, report, image_dir, cached=False)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _exif_gps(paths: Sequence[Path]) -> dict[str, np.ndarray]:
    """Image name -> GPS position in local metres (east, north, up) from EXIF, for the images
    that have one. Equirectangular around the mean position: plenty for checking a model."""
    raw = {}
    for p in paths:
        try:
            with Image.open(p) as im:
                g = im.getexif().get_ifd(0x8825)
            if not g or 2 not in g or 4 not in g:
                continue

            def deg(v) -> float:
                return float(v[0]) + float(v[1]) / 60 + float(v[2]) / 3600

            lat = deg(g[2]) * (-1 if str(g.get(1, "N")).upper().startswith("S") else 1)
            lon = deg(g[4]) * (-1 if str(g.get(3, "E")).upper().startswith("W") else 1)
            alt = float(g.get(6, 0.0)) * (-1 if g.get(5, 0) in (1, b"\x01") else 1)
            if math.isfinite(lat) and math.isfinite(lon) and (lat, lon) != (0.0, 0.0):
                raw[p.name] = (lat, lon, alt if math.isfinite(alt) else 0.0)
        except Exception:  # missing or broken EXIF: no GPS for this image
            continue
    if not raw:
        return {}
    lat0 = np.mean([v[0] for v in raw.values()])
    lon0 = np.mean([v[1] for v in raw.values()])
    r = 6_371_000.0
    return {
        n: np.array([math.radians(lon - lon0) * r * math.cos(math.radians(lat0)), math.radians(lat - lat0) * r, alt])
        for n, (lat, lon, alt) in raw.items()
    }


def _umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising |s R src + t - dst|^2."""
    ms, md = src.mean(0), dst.mean(0)
    xs, xd = src - ms, dst - md
    u, sv, vt = np.linalg.svd(xd.T @ xs / len(src))
    d = np.eye(3)
    if np.linalg.det(u @ vt) < 0:
        d[2, 2] = -1
    rot = u @ d @ vt
    var = xs.var(0).sum()
    scale = float(np.trace(np.diag(sv) @ d) / var) if var > 0 else 1.0
    return scale, rot, md - scale * rot @ ms


# A model "agrees with GPS" when, after the best similarity transform, its camera centres are
# within max(GPS_TOLERANCE_M, GPS_TOLERANCE_FRACTION * extent) of the GPS positions (median).
GPS_MIN_IMAGES = 5
GPS_MIN_EXTENT_M = 30.0
# (Phone GPS is good to ~5-10 m. On opensfm_lund a right model sits at 4 m, wrong incremental
# models at 15-35 m over a 180 m walk.)
GPS_TOLERANCE_M = 10.0
GPS_TOLERANCE_FRACTION = 0.05


def _gps_check(rec, gps: dict[str, np.ndarray]) -> dict | None:
    """Compare a model's camera centres with EXIF GPS; None when GPS cannot judge it (too few
    images with GPS, or they span less than GPS_MIN_EXTENT_M: GPS noise is ~5-10 m)."""
    if rec is None or not gps:
        return None
    names, centres, pos = [], [], []
    for iid in rec.reg_image_ids():
        im = rec.image(iid)
        if im.name in gps:
            names.append(im.name)
            centres.append(np.asarray(im.projection_center(), dtype=np.float64))
            pos.append(gps[im.name])
    if len(names) < GPS_MIN_IMAGES:
        return None
    c, g = np.stack(centres), np.stack(pos)
    extent = float(np.linalg.norm(g[:, :2].max(0) - g[:, :2].min(0)))
    if extent < GPS_MIN_EXTENT_M:
        return None
    s, rot, t = _umeyama(c, g)
    res = np.linalg.norm((s * c @ rot.T + t - g)[:, :2], axis=1)  # horizontal: GPS altitude is poor
    tol = max(GPS_TOLERANCE_M, GPS_TOLERANCE_FRACTION * extent)
    med = float(np.median(res))
    return {"images": len(names), "extent_m": round(extent, 1), "median_residual_m": round(med, 2),
            "max_residual_m": round(float(res.max()), 2), "tolerance_m": round(tol, 1), "consistent": med <= tol}


def _map(db_path: Path, image_dir: Path, work: Path, total: int, num_threads: int, stages: _Stages,
         gps: dict[str, np.ndarray] | None = None):
    """Incremental mapping, then global mapping too when incremental registered fewer than
    FALLBACK_FRACTION of the images (or fewer than 3), or when its model disagrees with the
    photos' EXIF GPS. Keeps the model that agrees with GPS, then the one registering more images
    (incremental on a tie). Returns (reconstruction or None, attempts for the report, mapper)."""
    pycolmap = _pycolmap()
    attempts: dict[str, dict] = {}
    models: dict[str, Any] = {}
    need = max(3, math.ceil(FALLBACK_FRACTION * total)) if total >= 3 else total

    def largest(recs: dict):
        recs = [r for r in (recs or {}).values() if r.num_reg_images() > 0]
        return max(recs, key=lambda r: (r.num_reg_images(), r.num_points3D()), default=None), len(recs)

    def record(name: str, fn, t0: float) -> None:
        try:
            rec, n_models = largest(fn())
            attempts[name] = {"registered": 0 if rec is None else int(rec.num_reg_images()), "num_models": n_models}
            models[name] = rec
            check = _gps_check(rec, gps or {})
            if check is not None:
                attempts[name]["gps"] = check
        except Exception as err:  # a failed mapper is a result, not a crash
            msg = str(err).strip().splitlines()
            attempts[name] = {"registered": 0, "num_models": 0, "error": msg[-1][-300:] if msg else type(err).__name__}
            models[name] = None
        attempts[name]["seconds"] = round(time.perf_counter() - t0, 3)

    with stages.stage("map", total=total, note="incremental") as st:
        opts = pycolmap.IncrementalPipelineOptions()
        opts.num_threads = int(num_threads)
        # small sets: keep models of a few images (COLMAP's default discards models under 10)
        opts.min_model_size = int(min(opts.min_model_size, max(2, min(3, total))))
        count = {"n": 0}

        def on_init() -> None:
            count["n"] = 2
            st.set(completed=min(2, total))

        def on_next() -> None:
            count["n"] += 1
            st.set(completed=min(count["n"], total))

        inc_dir = str(_mkdir(work / "incremental"))
        record("incremental", lambda: _run_cancellable(
            lambda tok: pycolmap.incremental_mapping(
                str(db_path), str(image_dir), inc_dir, opts,
                initial_image_pair_callback=on_init, next_image_callback=on_next, cancellation_token=tok,
            )
        ), time.perf_counter())
        got = attempts["incremental"]["registered"]
        gps_bad = attempts["incremental"].get("gps", {}).get("consistent") is False
        st.set(completed=got, note=f"incremental: {got}/{total}" + (" [red]disagrees with GPS[/]" if gps_bad else ""))

    if got < need or gps_bad:
        with stages.stage("map", total=None, note="global mapping (GLOMAP)") as st:
            gopts = pycolmap.GlobalPipelineOptions()
            gopts.num_threads = int(num_threads)
            glob_dir = str(_mkdir(work / "global"))
            record("global", lambda: _run_cancellable(
                lambda tok: pycolmap.global_mapping(str(db_path), str(image_dir), glob_dir, gopts)
            ), time.perf_counter())
            g = attempts["global"]
            st.set(note=f"global: {g['registered']}/{total}"
                   + (" [red]disagrees with GPS[/]" if g.get("gps", {}).get("consistent") is False else ""))

    def rank(name: str):
        gps_ok = attempts[name].get("gps", {}).get("consistent")
        return (1 if gps_ok is None else 2 * int(gps_ok), attempts[name]["registered"], name == "incremental")

    candidates = [n for n in models if models[n] is not None]
    if not candidates:
        return None, attempts, None
    mapper = max(candidates, key=rank)
    return models[mapper], attempts, mapper


def _failure_reasons(names: Sequence[str], rec, facts: dict, attempts: dict) -> list[dict]:
    """Why each unregistered image failed, from the database's keypoint and inlier counts."""
    registered_names = set()
    if rec is not None:
        registered_names = {rec.image(i).name for i in rec.reg_image_ids()}
    reg_ids = {facts["ids"][n] for n in registered_names if n in facts["ids"]}
    failed = []
    for name in names:
        if name in registered_names:
            continue
        if name not in facts["ids"]:
            failed.append({"image": name, "reason": "could not be read (no features)"})
            continue
        if facts["keypoints"].get(name, 0) == 0:
            failed.append({"image": name, "reason": "no features"})
            continue
        iid = facts["ids"][name]
        with_reg, best_any = 0, 0
        for (a, b), cnt in facts["inliers"].items():
            if iid in (a, b):
                best_any = max(best_any, cnt)
                other = b if a == iid else a
                if other in reg_ids:
                    with_reg = max(with_reg, cnt)
        n = with_reg if reg_ids else best_any
        if n < 100:  # registration needs ~30 inliers of a 2D-3D pose; below ~100 matches that is rare
            reason = f"not registered: too few matches ({n} inlier matches)"
        else:
            reason = f"not registered: pose estimation failed ({n} inlier matches with a registered image)" \
                if reg_ids else f"not registered: no model could be built ({n} inlier matches)"
        failed.append({"image": name, "reason": reason})
    return failed


# --- cache ------------------------------------------------------------------------------------
def _read_cache(out: Path, key: str) -> dict | None:
    rp = out / REPORT_NAME
    if not rp.is_file():
        return None
    try:
        report = json.loads(rp.read_text())
    except (OSError, ValueError):
        return None
    if report.get("cache_key") != key:
        return None
    if report.get("registered", 0) > 0 and not (out / "sparse" / "0" / "images.bin").is_file():
        return None
    return report


def _check_output_dir(out: Path, force: bool) -> None:
    """Never overwrite a COLMAP project that recon did not make (unless forced)."""
    if force or not out.exists():
        return
    if not out.is_dir():
        raise InputError(out, "output exists and is not a folder")
    if (out / REPORT_NAME).is_file():
        return  # ours (stale): recompute in place
    theirs = [n for n in ("database.db", "sparse") if (out / n).exists()]
    if theirs:
        raise InputError(
            out, f"already holds {' and '.join(theirs)} that recon did not make; choose another output or use --force"
        )


def _commit(work: Path, out: Path, report: dict, entries: Sequence[str]) -> None:
    """Move the freshly built entries from ``work`` into ``out``; the report goes last.

    The old report is removed first, so a crash in between leaves a folder without a valid cache
    (recomputed next time) instead of a mixture of old and new files that looks valid."""
    (out / REPORT_NAME).unlink(missing_ok=True)
    for name in entries:
        src, dst = work / name, out / name
        if not src.exists():
            if dst.is_dir():
                shutil.rmtree(dst, ignore_errors=True)
            elif dst.exists():
                dst.unlink()
            continue
        if dst.is_dir() and not dst.is_symlink():
            trash = work / f".old-{name}"
            os.replace(dst, trash)
        os.replace(src, dst)
    write_text_atomic(out / REPORT_NAME, json.dumps(report, indent=2) + "\n")


def _result_from_report(out: Path, report: dict, image_dir: Path, cached: bool) -> SfmResult:
    if report.get("registered", 0) == 0:
        raise InputError(image_dir, _nothing_registered(report))
    return SfmResult(
        model_dir=out / "sparse" / "0", report=report, registered=int(report["registered"]),
        total=int(report["total"]), output_dir=out, cached=cached,
    )


def _nothing_registered(report: dict) -> str:
    total = report.get("total", 0)
    no_feat = sum(1 for f in report.get("failed", []) if "no features" in f["reason"])
    best = 0
    for f in report.get("failed", []):
        m = re.search(r"\((\d+) inlier", f["reason"])
        if m:
            best = max(best, int(m.group(1)))
    why = (
        f"SfM registered none of the {total} photos"
        f" ({report.get('num_verified_pairs', 0)} of {report.get('num_pairs', 0)} image pairs verified,"
        f" best pair {best} inlier matches"
        + (f", {no_feat} photos without features" if no_feat else "")
        + "); the photos must show the same scene from overlapping viewpoints"
    )
    return why


# --- report -----------------------------------------------------------------------------------
def print_report(report: dict, console=None, cached: bool = False) -> None:
    """A short rich table: registered/total, mapper, points, error, timings, failed images."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(stderr=True)
    reg, total = report.get("registered", 0), report.get("total", 0)
    colour = "green" if reg == total else ("yellow" if reg else "red")
    table = Table(title="SfM report" + (" (cached)" if cached else ""), show_header=False, title_justify="left", box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("registered", f"[{colour}]{reg}/{total}[/]")
    mappers = report.get("mappers", {})
    tried = ", ".join(f"{k} {v.get('registered', 0)}/{total}" for k, v in mappers.items())
    table.add_row("mapper", f"{report.get('mapper')}  ({tried})" if tried else str(report.get("mapper")))
    checks = [f"{k} {v['gps']['median_residual_m']:.1f} m " + ("[green]ok[/]" if v["gps"]["consistent"] else "[red]off[/]")
              for k, v in mappers.items() if v.get("gps")]
    if checks:
        table.add_row("GPS check", ", ".join(checks) + " (median camera-to-GPS distance)")
    table.add_row("matcher", f"{report.get('matcher')} ({report.get('num_verified_pairs', 0)}/"
                  f"{report.get('num_pairs', 0)} pairs verified)")
    table.add_row("cameras", f"{report.get('num_cameras', 0)} {report.get('camera_model', '')}")
    if report.get("num_masks"):
        table.add_row("masks", f"{report['num_masks']} from {report.get('masks')}")
    table.add_row("points", f"{report.get('num_points', 0):,}")
    err = report.get("mean_reprojection_error")
    table.add_row("reproj. error", "-" if err is None else f"{err:.3f} px")
    tl = report.get("mean_track_length")
    table.add_row("track length", "-" if tl is None else f"{tl:.2f}")
    t = report.get("timings", {})
    table.add_row("time", " / ".join(f"{k} {v:.1f}s" for k, v in t.items()))
    console.print(table)
    failed = report.get("failed", [])
    for f in failed[:10]:
        console.print(f"  [yellow]{f['image']}[/]: {f['reason']}", highlight=False)
    if len(failed) > 10:
        console.print(f"  ... and {len(failed) - 10} more (see report.json)", highlight=False)


# =============================================================================================
# triangulation with known poses
# =============================================================================================
def camera_to_pycolmap(cam, camera_id: int, width: int | None = None, height: int | None = None):
    """Our :class:`~recon.datasets.cameras.Camera` as a pycolmap camera (intrinsics rescaled to an
    image of ``width`` x ``height`` when given). Pinhole -> PINHOLE; SIMPLE_RADIAL / RADIAL keep
    their model when fx == fy, else become OPENCV; OPENCV, FULL_OPENCV, OPENCV_FISHEYE map 1:1."""
    pycolmap = _pycolmap()
    w = int(width or cam.width)
    h = int(height or cam.height)
    sx, sy = w / cam.width, h / cam.height
    fx, fy, cx, cy = cam.fx * sx, cam.fy * sy, cam.cx * sx, cam.cy * sy
    d = cam.distortion
    p = (lambda k: float(d.params.get(k, 0.0))) if d is not None else (lambda k: 0.0)
    same_f = abs(fx - fy) <= 1e-6 * max(abs(fx), 1.0)
    if d is None:
        model, params = "PINHOLE", [fx, fy, cx, cy]
    elif d.model == "SIMPLE_RADIAL" and same_f:
        model, params = "SIMPLE_RADIAL", [fx, cx, cy, p("k1")]
    elif d.model == "RADIAL" and same_f:
        model, params = "RADIAL", [fx, cx, cy, p("k1"), p("k2")]
    elif d.model in ("SIMPLE_RADIAL", "RADIAL", "OPENCV"):
        model, params = "OPENCV", [fx, fy, cx, cy, p("k1"), p("k2"), p("p1"), p("p2")]
    elif d.model == "FULL_OPENCV":
        model, params = "FULL_OPENCV", [fx, fy, cx, cy] + [p(k) for k in ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")]
    elif d.model == "OPENCV_FISHEYE":
        model, params = "OPENCV_FISHEYE", [fx, fy, cx, cy] + [p(k) for k in ("k1", "k2", "k3", "k4")]
    else:  # pragma: no cover - Distortion validates its model
        raise ValueError(f"unsupported distortion model {d.model!r}")
    pcam = pycolmap.Camera(
        camera_id=int(camera_id), model=model, width=w, height=h, params=np.asarray(params, dtype=np.float64)
    )
    try:
        pcam.has_prior_focal_length = True
    except Exception:  # pragma: no cover
        pass
    return pcam


def _known_pairs(cams: Sequence, names: Sequence[str], matcher: str, k: int = 20) -> tuple[list[tuple[str, str]], str]:
    """Pairs to match when poses are known: every pair for small sets, else each view with its
    ``k`` nearest views (camera centre distance, weighted by viewing-direction agreement)."""
    n = len(names)
    if matcher == "exhaustive" or (matcher == "auto" and n <= EXHAUSTIVE_MAX_IMAGES):
        return _exhaustive_pairs(names), "exhaustive"
    if matcher == "sequential":
        return _sequential_pairs(names), "sequential"
    centers = np.stack([c.center for c in cams])
    dirs = np.stack([c.c2w[:3, 2] for c in cams])
    dist = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
    cosang = np.clip(dirs @ dirs.T, -1, 1)
    score = dist / (np.median(dist[dist > 0]) + 1e-12) + 2.0 * (1 - cosang)
    np.fill_diagonal(score, np.inf)
    pairs: set[tuple[int, int]] = set()
    for i in range(n):
        for j in np.argsort(score[i])[: min(k, n - 1)]:
            pairs.add((min(i, int(j)), max(i, int(j))))
    return [(names[i], names[j]) for i, j in sorted(pairs)], f"{k} nearest views"


def triangulate_known_poses(
    scene,
    *,
    max_image_size: int = 1600,
    matcher: str = "auto",
    output_dir: str | Path | None = None,
    num_threads: int = -1,
    force: bool = False,
    progress: bool = True,
    return_report: bool = False,
):
    """Sparse points for a scene whose cameras are known (poses + intrinsics, incl. distortion).

    SIFT features (masks honoured), matching (every pair up to 100 views, else the nearest views by
    pose), then COLMAP's point triangulation with cameras and poses held fixed. Returns
    ``(points (N, 3) float32, colors (N, 3) uint8)``; with ``return_report=True`` also the report
    dict. When nothing can be triangulated (e.g. noise images) the arrays are empty, not an error.
    Cached in ``derived_dir(<image folder>, "sfm_points")`` (or ``output_dir``): ``points.npz``,
    ``sparse/0`` (the triangulated COLMAP model) and ``report.json``.
    """
    pycolmap = _pycolmap()
    t_start = time.perf_counter()
    cams = list(scene.cameras)
    if not cams:
        raise InputError(getattr(scene, "root", None), "the scene has no cameras to triangulate from")
    paths = []
    for c in cams:
        if c.image_path is None:
            raise InputError(getattr(scene, "root", None), f"view {c.name!r} has no image file")
        p = Path(c.image_path).expanduser().resolve()
        if not p.is_file():
            raise InputError(p, "image not found")
        paths.append(p)
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    names = [p.relative_to(root).as_posix() for p in paths]
    if len(set(names)) != len(names):
        raise InputError(root, "two views use the same image file")
    if matcher not in MATCHERS:
        raise InputError(None, f"unknown matcher {matcher!r} (choose one of {', '.join(MATCHERS)})")

    sizes = []
    for p in paths:
        try:
            with Image.open(p) as im:
                sizes.append(im.size)
        except OSError as err:
            raise InputError(p, f"cannot read image ({err})") from err
    masks = {n: Path(c.mask_path) for n, c in zip(names, cams) if c.mask_path is not None and Path(c.mask_path).is_file()}
    path_of = dict(zip(names, paths))

    cam_sig = [
        [c.fx, c.fy, c.cx, c.cy, c.width, c.height, None if c.distortion is None else c.distortion.to_dict(),
         np.round(c.c2w, 9).tolist()]
        for c in cams
    ]
    key = _digest({
        "version": CACHE_VERSION,
        "kind": "triangulate_known_poses",
        "pycolmap": pycolmap.__version__,
        "images": _file_signature(paths, root),
        "masks": _file_signature(list(masks.values()), Path("/")),
        "cameras": cam_sig,
        "max_image_size": int(max_image_size),
        "matcher": matcher,
    })
    out = Path(output_dir).expanduser() if output_dir is not None else derived_dir(root, "sfm_points")
    if not force:
        report = _read_points_cache(out, key)
        if report is not None:
            data = np.load(out / "points.npz")
            pts, cols = data["points"].astype(np.float32), data["colors"].astype(np.uint8)
            if progress:
                from rich.console import Console

                Console(stderr=True).print(
                    f"[bold]SfM points[/]: reusing {len(pts):,} triangulated points from {out}", highlight=False
                )
            return (pts, cols, report) if return_report else (pts, cols)

    out.mkdir(parents=True, exist_ok=True)
    work = out / f".tmp-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        with _quiet_colmap(), _Stages(progress, f"Triangulating points for {len(cams)} posed views in {root}") as stages:
            db_path = work / "database.db"
            colmap_masks = _write_colmap_masks(masks, path_of, work / "masks") if masks else None
            _extract(
                db_path, root, names, camera_model="PINHOLE", single_camera=False, max_image_size=max_image_size,
                num_threads=num_threads, mask_dir=colmap_masks, stages=stages,
            )
            # Put the known intrinsics into the database (so verification uses calibrated geometry)
            # and build the posed reconstruction with the database's ids.
            db = pycolmap.Database.open(str(db_path))
            rec = pycolmap.Reconstruction()
            try:
                by_name = {im.name: im for im in db.read_all_images()}
                for n, c, (w, h) in zip(names, cams, sizes):
                    im = by_name.get(n)
                    if im is None:  # unreadable for COLMAP: no features, nothing to add
                        continue
                    pcam = camera_to_pycolmap(c, im.camera_id, w, h)
                    db.update_camera(pcam)
                    rec.add_camera_with_trivial_rig(pcam)
                    w2c = c.w2c
                    image = pycolmap.Image(name=n, camera_id=im.camera_id, image_id=im.image_id)
                    rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(w2c[:3, :4]))
            finally:
                db.close()
            with_features = [n for n in names if n in by_name]
            pairs, how = _known_pairs([c for c, n in zip(cams, names) if n in by_name], with_features, matcher)
            _match(db_path, pairs, with_features, work, num_threads=num_threads, stages=stages, note=how)
            with stages.stage("triangulate", total=None):
                opts = pycolmap.IncrementalPipelineOptions()
                opts.num_threads = int(num_threads)
                try:
                    tri = pycolmap.triangulate_points(
                        rec, str(db_path), str(root), str(_mkdir(work / "tri")), clear_points=True, options=opts,
                        refine_intrinsics=False,
                    )
                except Exception as err:
                    tri, tri_error = None, str(err).strip()[-300:]
                else:
                    tri_error = None
            if tri is None or tri.num_points3D() == 0:
                pts = np.zeros((0, 3), np.float32)
                cols = np.zeros((0, 3), np.uint8)
                stats = {"num_points": 0, "mean_reprojection_error": None, "mean_track_length": None}
            else:
                ids = sorted(tri.points3D.keys()) if hasattr(tri.points3D, "keys") else list(tri.point3D_ids())
                pts = np.array([tri.points3D[i].xyz for i in ids], dtype=np.float32).reshape(-1, 3)
                cols = np.array([tri.points3D[i].color for i in ids], dtype=np.uint8).reshape(-1, 3)
                stats = _model_stats(tri)
                tri.write(str(_mkdir(work / "sparse" / "0")))
            np.savez(work / "points.npz", points=pts, colors=cols)
            report = {
                "version": CACHE_VERSION,
                "cache_key": key,
                "image_dir": str(root),
                "total": len(names),
                "with_features": len(with_features),
                "matcher": how,
                "num_pairs": len(pairs),
                "max_image_size": int(max_image_size),
                "num_masks": len(masks),
                "error": tri_error,
                **{k: stats.get(k) for k in ("num_points", "mean_reprojection_error", "mean_track_length")},
                "timings": {k: round(v, 3) for k, v in stages.times.items()},
                "pycolmap_version": pycolmap.__version__,
            }
            report["timings"]["total"] = round(time.perf_counter() - t_start, 3)
        _commit(work, out, report, ("points.npz", "sparse"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if stages.console is not None:
        err = report["mean_reprojection_error"]
        stages.console.print(
            f"[bold]SfM points[/]: {len(pts):,} points"
            + ("" if err is None else f", {err:.2f} px, track length {report['mean_track_length']:.2f}")
            + f" in {report['timings']['total']:.1f} s -> {out}",
            highlight=False,
        )
    return (pts, cols, report) if return_report else (pts, cols)


def _read_points_cache(out: Path, key: str) -> dict | None:
    rp = out / REPORT_NAME
    if not rp.is_file() or not (out / "points.npz").is_file():
        return None
    try:
        report = json.loads(rp.read_text())
    except (OSError, ValueError):
        return None
    return report if report.get("cache_key") == key else None
