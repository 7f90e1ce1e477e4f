"""What goes into SfM: matcher choice (video frames or not), image pair lists, the
single-camera decision from EXIF, the camera-model check, and masks (found, then written in
COLMAP's naming)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Sequence

import numpy as np

# Import order: Pillow is imported here at module level, pycolmap only lazily through
# colmap_steps._pycolmap(). Once pycolmap 4.2.1 is loaded, Pillow's PNG *encoder* can abort the
# process (zlib symbol clash; PNG reading is fine): never write PNGs with Pillow in this package.
from PIL import Image

from recon.datasets.folder import find_mask
from recon.datasets.sfm.colmap_steps import _pycolmap
from recon.datasets.video import MARKER as VIDEO_MARKER  # extract_frames() leaves it among the frames
from recon.errors import InputError

# "auto" matching: exhaustive up to this many images (all pairs are affordable on a CPU) ...
EXHAUSTIVE_MAX_IMAGES = 100
# ... and sequential (each frame against its next SEQUENTIAL_OVERLAP frames, plus frames 2^k ahead
# for loop closure, as COLMAP's quadratic overlap) for video frames and for larger sets.
SEQUENTIAL_OVERLAP = 10
MATCHERS = ("auto", "exhaustive", "sequential")

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
