"""Images for training: decode, downscale (cached), undistort, mask.

What the trainer gets from :func:`load_view` is a :class:`View`: a *pinhole* camera at the loaded
resolution and the matching image, so nothing downstream ever handles lens distortion.

Order of operations, and why:
1. the camera is brought to the image file's actual size (files may legitimately be an exact integer
   factor smaller or larger than the intrinsics, e.g. LLFF ``images_4``); anything else is an error,
   because silently stretching would put every pixel in the wrong place;
2. the image is downscaled with an area (box) filter -- it averages exactly the source pixels each
   output pixel covers, so it neither aliases nor rings -- and cached as ``images_N`` via
   :func:`recon.utils.paths.derived_dir` so later runs skip the decode + resize;
3. undistortion happens at the downscaled size (N^2 times cheaper): every output pixel centre is
   pushed through :meth:`Distortion.distort` with the *same* pinhole K and bilinearly sampled from
   the distorted image; pixels whose source lies outside the image (or where the lens model folds
   over) are masked out instead of being filled with made-up colour.

EXIF orientation is deliberately not applied: COLMAP does not apply it either, so intrinsics and
keypoints refer to the stored pixel layout.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from recon.datasets.cameras import Camera
from recon.datasets.scene import SceneData
from recon.errors import InputError
from recon.utils.atomic import atomic_path
from recon.utils.paths import derived_dir

_READ_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


@dataclass
class View:
    """One training/eval view, ready for the rasterizer.

    - ``camera``: pinhole (``distortion is None``) at the loaded size, ``width x height``;
    - ``image``: float32 [H, W, 3] in [0, 1], straight (not premultiplied) RGB;
    - ``mask``: float32 [H, W, 1] with values in {0, 1} (1 = use the pixel), or None when every pixel
      is valid. It combines the user's mask (>= 128 keeps), the alpha channel of RGBA images
      (alpha >= 0.5 keeps) and the pixels undistortion could fill;
    - ``alpha``: float32 [H, W, 1] soft alpha of RGBA sources (None otherwise), for trainers that
      want to composite over a background instead of masking.
    """

    camera: Camera
    image: torch.Tensor
    mask: torch.Tensor | None
    alpha: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------
def _why(err: BaseException) -> str:
    """PIL's reason, without the path it repeats (the InputError already names the file)."""
    if isinstance(err, UnidentifiedImageError):
        return "unknown or damaged format"
    return str(err) or type(err).__name__


def _size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except _READ_ERRORS as err:
        raise InputError(path, f"cannot read image (corrupt or not an image): {_why(err)}") from err


def _to_rgb_or_rgba(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, or RGBA when the image carries transparency."""
    if im.mode in ("RGB", "RGBA"):
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit grayscale PNG
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 or im.mode != "I" else 255.0
        arr8 = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if im.mode == "F":
        arr8 = np.clip(np.round(np.asarray(im, np.float64) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if im.mode in ("LA", "La", "RGBa", "PA") or (im.mode == "P" and "transparency" in im.info):
        return im.convert("RGBA")
    return im.convert("RGB")


def _decode(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb_or_rgba(im).copy()
    except _READ_ERRORS as err:
        raise InputError(path, f"cannot read image (corrupt or not an image): {_why(err)}") from err


# --------------------------------------------------------------------------------------------
# sizes and cameras
# --------------------------------------------------------------------------------------------
def resized_camera(camera: Camera, width: int, height: int) -> Camera:
    """``camera`` for the same view at ``width x height`` (exact per-axis ratios, which is right
    for the pixel-centre-at-0.5 convention)."""
    if (width, height) == (camera.width, camera.height):
        return dataclasses.replace(camera)
    sx, sy = width / camera.width, height / camera.height
    return dataclasses.replace(
        camera, width=width, height=height, fx=camera.fx * sx, fy=camera.fy * sy, cx=camera.cx * sx, cy=camera.cy * sy
    )


def _related(big: tuple[int, int], small: tuple[int, int]) -> bool:
    """True when ``small`` is ``big`` divided by one integer factor k >= 2 (rounded either way)."""
    k = round(big[0] / small[0]) if small[0] else 0
    return k >= 2 and abs(big[0] / k - small[0]) < 1 and abs(big[1] / k - small[1]) < 1


def _size_matches(expected: tuple[int, int], actual: tuple[int, int]) -> bool:
    return expected == actual or _related(expected, actual) or _related(actual, expected)


def file_camera(camera: Camera) -> Camera:
    """``camera`` at its image file's actual size; InputError when the file is missing, unreadable,
    or not the intrinsics' size (or an exact integer factor of it)."""
    path = camera.image_path
    if path is None:
        raise InputError(None, f"view {camera.name!r} has no image file")
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "image file not found")
    actual = _size(path)
    expected = (camera.width, camera.height)
    if not _size_matches(expected, actual):
        raise InputError(
            path,
            f"image size {actual[0]}x{actual[1]} disagrees with the camera intrinsics, which expect "
            f"{expected[0]}x{expected[1]} (or that size divided/multiplied by an integer)",
        )
    return resized_camera(camera, *actual)


def check_view_files(camera: Camera) -> None:
    """Raise the InputError :func:`load_view` would raise for a missing, unreadable (header) or
    wrongly sized image or mask, reading file headers only. Lets loaders fail before training."""
    src = file_camera(camera)
    if camera.mask_path is not None:
        mask_path = Path(camera.mask_path)
        if not mask_path.is_file():
            raise InputError(mask_path, "mask file not found")
        try:
            with Image.open(mask_path) as im:
                msize = im.size
        except _READ_ERRORS as err:
            raise InputError(mask_path, f"cannot read mask (corrupt or not an image): {_why(err)}") from err
        if not _size_matches((src.width, src.height), msize):
            raise InputError(mask_path, f"mask is {msize[0]}x{msize[1]} but its image is {src.width}x{src.height}")


def target_camera(camera: Camera, downscale: int) -> Camera:
    """The camera of the image :func:`load_view` returns (before dropping distortion)."""
    return file_camera(camera).scaled(downscale)


# --------------------------------------------------------------------------------------------
# downscaled copies (cached)
# --------------------------------------------------------------------------------------------
def cached_image_path(image_path: Path, downscale: int) -> Path:
    """Where the ``1/downscale`` copy of ``image_path`` lives.

    Format choice: always lossless PNG (``<name>.png`` for non-PNG sources). A lossy cache would
    make the first run (which uses the freshly downscaled pixels) and every later run (which reads
    the cache) train and evaluate on different images; seen on fox: 23.43 vs 23.42 dB for the same
    checkpoint with a JPEG q95 cache."""
    folder = derived_dir(image_path.parent, f"images_{downscale}")
    if image_path.suffix.lower() == ".png":
        return folder / image_path.name
    return folder / f"{image_path.name}.png"


def box_resize(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Area-average ``im`` (RGB/RGBA/L) to ``size``, rounding to 8 bits once.

    Pillow's 8-bit BOX resize rounds after each of its two passes, which brightens images by about
    half a grey level on average (and up to one); we average in float instead: an exact block mean
    for integer factors, Pillow's float (mode "F") BOX filter for any other ratio. RGBA is averaged
    premultiplied, so transparent pixels do not bleed their colour into visible ones."""
    w, h = im.size
    arr = np.asarray(im, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    has_alpha = im.mode == "RGBA"
    if has_alpha:
        alpha = arr[..., 3:4] / 255.0
        arr = np.concatenate([arr[..., :3] * alpha, arr[..., 3:4]], axis=-1)
    tw, th = size
    kx, ky = w // tw, h // th
    if kx == ky and kx * tw == w and ky * th == h:
        out = arr.reshape(th, ky, tw, kx, arr.shape[-1]).mean(axis=(1, 3))
    else:
        chans = [np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., c])).resize(size, Image.Resampling.BOX)) for c in range(arr.shape[-1])]
        out = np.stack(chans, axis=-1)
    if has_alpha:
        a = out[..., 3:4]
        out = np.concatenate([np.where(a > 0, out[..., :3] * 255.0 / np.maximum(a, 1e-6), 0.0), a], axis=-1)
    out8 = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return Image.fromarray(out8[..., 0] if out8.shape[-1] == 1 else out8)  # uint8: L, RGB or RGBA


def _load_resized(path: Path, size: tuple[int, int], downscale: int) -> Image.Image:
    """The image at ``size``: decoded directly when the file has that size, else from (or into)
    the ``images_{downscale}`` cache. A cache entry is reused only if it is at least as new as
    the source and has the expected size; otherwise it is rebuilt (atomically)."""
    if _size(path) == size:
        return _decode(path)
    cache = cached_image_path(path, downscale)
    try:
        if cache.is_file() and cache.stat().st_mtime >= path.stat().st_mtime:
            with Image.open(cache) as im:
                if im.size == size:
                    im.load()
                    return _to_rgb_or_rgba(im).copy()
    except _READ_ERRORS:
        pass  # a damaged cache entry is rebuilt below
    small = box_resize(_decode(path), size)
    try:
        with atomic_path(cache) as tmp:
            small.save(tmp, format="PNG", compress_level=1)
    except OSError:
        pass  # a read-only cache only costs speed, never correctness
    return small


def _load_mask(mask_path: Path, image_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """User mask -> float32 {0, 1} at ``size``; white (>= 128) keeps. Masks may be stored at the
    image's size or an integer factor of it (e.g. full-resolution masks with ``images_4``)."""
    if not mask_path.is_file():
        raise InputError(mask_path, "mask file not found")
    try:
        with Image.open(mask_path) as im:
            im.load()
            msize = im.size
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                im = _to_rgb_or_rgba(im)
            gray = im.convert("L")
    except _READ_ERRORS as err:
        raise InputError(mask_path, f"cannot read mask (corrupt or not an image): {_why(err)}") from err
    if not _size_matches(image_size, msize):
        raise InputError(mask_path, f"mask is {msize[0]}x{msize[1]} but its image is {image_size[0]}x{image_size[1]}")
    if gray.size != size:
        gray = box_resize(gray, size)
    return (np.asarray(gray, dtype=np.float32) >= 127.5).astype(np.float32)


# --------------------------------------------------------------------------------------------
# undistortion
# --------------------------------------------------------------------------------------------
_GRID_CACHE: dict[tuple, tuple[torch.Tensor, np.ndarray]] = {}
_GRID_LOCK = threading.Lock()


def undistortion_grid(camera: Camera) -> tuple[torch.Tensor, np.ndarray]:
    """For a distorted ``camera``: the ``grid_sample`` grid [1, H, W, 2] that maps each pixel of the
    pinhole image (same K, same size) to its source in the distorted image, and a bool [H, W] of
    the pixels that source lies inside the image and where the lens model is locally one-to-one.

    Cached per intrinsics (many views share one physical camera)."""
    dist = camera.distortion
    assert dist is not None
    key = (camera.width, camera.height, camera.fx, camera.fy, camera.cx, camera.cy, dist.model, tuple(sorted(dist.params.items())))
    with _GRID_LOCK:
        hit = _GRID_CACHE.get(key)
    if hit is not None:
        return hit
    W, H = camera.width, camera.height
    u = (np.arange(W, dtype=np.float64) + 0.5 - camera.cx) / camera.fx
    v = (np.arange(H, dtype=np.float64) + 0.5 - camera.cy) / camera.fy
    xy = np.stack(np.meshgrid(u, v, indexing="xy"), axis=-1)  # [H, W, 2]
    with np.errstate(all="ignore"):
        xd = dist.distort(xy)
    src_u = camera.fx * xd[..., 0] + camera.cx
    src_v = camera.fy * xd[..., 1] + camera.cy
    valid = np.isfinite(src_u) & np.isfinite(src_v) & (src_u >= 0) & (src_u <= W) & (src_v >= 0) & (src_v <= H)
    if W > 1 and H > 1:  # where the Jacobian's determinant is <= 0 the model folds back on itself
        du_dy, du_dx = np.gradient(src_u)
        dv_dy, dv_dx = np.gradient(src_v)
        with np.errstate(all="ignore"):
            valid &= (du_dx * dv_dy - du_dy * dv_dx) > 0
    # align_corners=False: normalised -1 / +1 are the outer image edges, pixel centres at i + 0.5.
    gx = np.where(valid, 2.0 * src_u / W - 1.0, 0.0)
    gy = np.where(valid, 2.0 * src_v / H - 1.0, 0.0)
    grid = torch.from_numpy(np.stack([gx, gy], axis=-1).astype(np.float32))[None]
    out = (grid, valid)
    with _GRID_LOCK:
        if len(_GRID_CACHE) > 32:
            _GRID_CACHE.clear()
        _GRID_CACHE[key] = out
    return out


def _sample(arr: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """[H, W, C] sampled at ``grid`` (bilinear, edge-clamped) -> [H, W, C]."""
    x = arr.permute(2, 0, 1)[None]
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return y[0].permute(1, 2, 0).contiguous()


# --------------------------------------------------------------------------------------------
# public
# --------------------------------------------------------------------------------------------
def load_view(camera: Camera, downscale: int = 1) -> View:
    """Load ``camera``'s image at ``1/downscale`` of the file's size, undistorted, with its mask."""
    if int(downscale) != downscale or downscale < 1:
        raise ValueError(f"downscale must be a positive integer, got {downscale!r}")
    downscale = int(downscale)
    src_cam = file_camera(camera)
    cam = src_cam.scaled(downscale)
    size = (cam.width, cam.height)
    path = Path(camera.image_path)  # type: ignore[arg-type]

    pil = _load_resized(path, size, downscale)
    arr = np.asarray(pil, dtype=np.uint8)
    image = torch.from_numpy(arr[..., :3].astype(np.float32) / 255.0)
    alpha = None
    if arr.shape[-1] == 4 and arr[..., 3].min() < 255:
        alpha = torch.from_numpy(arr[..., 3:4].astype(np.float32) / 255.0)
    user_mask = None
    if camera.mask_path is not None:
        user_mask = torch.from_numpy(_load_mask(Path(camera.mask_path), (src_cam.width, src_cam.height), size)[..., None])

    valid = None
    if cam.distortion is not None:
        grid, valid_np = undistortion_grid(cam)
        image = _sample(image, grid).clamp_(0.0, 1.0)
        if alpha is not None:
            alpha = _sample(alpha, grid).clamp_(0.0, 1.0)
        if user_mask is not None:
            user_mask = (_sample(user_mask, grid) >= 0.5).float()
        if not valid_np.all():
            valid = torch.from_numpy(valid_np.astype(np.float32))[..., None]

    mask = None
    for part in (user_mask, None if alpha is None else (alpha >= 0.5).float(), valid):
        if part is not None:
            mask = part if mask is None else mask * part
    if valid is not None:
        image = image * valid  # pixels outside the source are black, and masked
    return View(camera=cam.pinhole(), image=image, mask=mask, alpha=alpha)


def load_views(
    scene: SceneData,
    indices: Sequence[int] | None = None,
    downscale: int = 1,
    progress: bool = True,
    workers: int | None = None,
) -> list[View]:
    """:func:`load_view` for ``scene.cameras[i]`` for each i in ``indices`` (all when None), in order.

    Decoding runs on a few threads (PIL releases the GIL while decoding) behind a rich progress bar
    on stderr; without a TTY rich prints no animation, so logs stay clean."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    idx = list(range(len(scene.cameras))) if indices is None else [int(i) for i in indices]
    if not idx:
        return []
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    columns = (TextColumn("[bold]loading images[/] (1/{task.fields[ds]})"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    views: list[View] = []
    with Progress(*columns, console=Console(stderr=True), disable=not progress, transient=False) as bar:
        task = bar.add_task("load", total=len(idx), ds=downscale)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(load_view, scene.cameras[i], downscale) for i in idx]
            try:
                for fut in futures:
                    views.append(fut.result())
                    bar.advance(task)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    return views
