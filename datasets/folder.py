"""Plain photo folders (no poses) and the small file-finding helpers every loader shares.

A folder of photos cannot be trained on directly: it needs SfM first. :func:`scan_folder` returns an
:class:`ImageFolder` describing what SfM should run on; ``recon.datasets.loader`` runs SfM and then
loads the resulting COLMAP model. Keeping SfM out of this module keeps it importable (and testable)
without pycolmap's heavy machinery.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recon.errors import InputError

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")
NO_IMAGES = "no images found (looked for .jpg, .jpeg, .png)"


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def find_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` (any case of .jpg/.jpeg/.png), sorted by name.
    Hidden files (``._IMG.jpg`` from macOS, temp files of atomic writes) are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


def find_mask(mask_dir: Path, image_name: str) -> Path | None:
    """The mask for ``image_name`` in ``mask_dir``: ``<name>.png`` (COLMAP's convention, e.g.
    ``a.jpg.png``), ``<stem>.png``, or a file with the same name; None if there is none."""
    name = Path(image_name)
    for cand in (mask_dir / f"{image_name}.png", mask_dir / name.with_suffix(".png"), mask_dir / image_name):
        if cand.is_file():
            return cand
    return None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header (no pixels decoded); InputError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except UnidentifiedImageError as err:
        raise InputError(path, "cannot read image (corrupt or not an image): unknown or damaged format") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(path, f"cannot read image (corrupt or not an image): {err}") from err


@dataclass(frozen=True)
class ImageFolder:
    """Photos without poses: the input of SfM. ``mask_dir`` is set when a ``masks/`` folder sits
    beside an ``images/`` folder (object captures need masks for SfM, see the data README)."""

    image_dir: Path
    images: list[Path]
    mask_dir: Path | None = None


def image_folder_of(path: str | Path) -> Path | None:
    """``path/images`` when it holds images, else ``path`` when it does; None otherwise."""
    path = Path(path)
    for cand in (path / "images", path):
        if find_images(cand):
            return cand
    return None


def scan_folder(path: str | Path) -> ImageFolder:
    """Describe a folder of photos for SfM; a folder without images is an InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if not path.is_dir():
        raise InputError(path, "not a folder")
    image_dir = image_folder_of(path)
    if image_dir is None:
        raise InputError(path, NO_IMAGES)
    mask_dir = image_dir.parent / "masks" if image_dir.name == "images" else None
    return ImageFolder(image_dir, find_images(image_dir), mask_dir if mask_dir is not None and mask_dir.is_dir() else None)
