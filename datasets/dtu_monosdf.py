"""DTU scans in the IDR / MonoSDF layout -> :class:`SceneData` (normalised space, OpenCV cameras).

Layout: ``cameras.npz`` with ``world_mat_<i>`` (4x4 projection ``K [R | t]`` of the original DTU
camera, 1600x1200 pixels) and ``scale_mat_<i>`` (maps the unit sphere of the normalised space onto the
object's bounding sphere in DTU world units, mm), plus the images ``<i:06d>_rgb.png`` (MonoSDF: centre
cropped to 1200x1200 and resized, e.g. 384x384) or ``image/<i:03d>.png`` (IDR: full 1600x1200).
Optional object masks: ``<i:06d>_mask.png`` or ``mask/<i:03d>.png`` (white = object).

Cameras (``shared/data/README.md``): ``P = (world_mat @ scale_mat)[:3, :4]``; RQ-decompose ``P[:, :3]``
into K (positive diagonal) and R, ``t = K^-1 P[:, 3]``, K normalised by ``K[2, 2]``; a square image
means the 1600x1200 frame was centre-cropped to 1200x1200 (``cx -= 200``); then K's first two rows
scale with the image (``* W / 1200`` or ``* W / 1600``); ``c2w = inv([R | t])`` (already OpenCV
axes). The scene lives in the normalised space (object inside the unit sphere); ``extras["scale_mat"]``
keeps the way back to DTU millimetres (:func:`to_dtu_world`), as DTU's Chamfer evaluation needs.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from recon.datasets.cameras import Camera
from recon.datasets.scene import SceneData
from recon.errors import InputError

DTU_SIZE = (1600, 1200)
_RGB = re.compile(r"^(\d+)_rgb\.(png|jpg)$", re.IGNORECASE)
_IDR = re.compile(r"^(\d+)\.(png|jpg)$", re.IGNORECASE)


def is_dtu_folder(path: Path) -> bool:
    """A folder with ``cameras.npz`` holding ``world_mat_0`` next to MonoSDF or IDR images."""
    path = Path(path)
    if not (path / "cameras.npz").is_file():
        return False
    return bool(_images(path))


def _images(root: Path) -> dict[int, Path]:
    found = {int(m.group(1)): p for p in root.iterdir() if p.is_file() and (m := _RGB.match(p.name))}
    if not found and (root / "image").is_dir():
        found = {int(m.group(1)): p for p in (root / "image").iterdir() if p.is_file() and (m := _IDR.match(p.name))}
    return found


def _mask(root: Path, index: int, image: Path) -> Path | None:
    for cand in (root / f"{index:06d}_mask.png", root / "mask" / f"{index:03d}.png", root / "mask" / image.name):
        if cand.is_file():
            return cand
    return None


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``P [3,4] = K [R | t]`` -> (K with positive diagonal and K[2,2] = 1, R (det +1), t)."""
    from scipy.linalg import rq

    K, R = rq(P[:, :3])
    signs = np.diag(np.sign(np.diag(K)))  # K R = (K S)(S R) with S = S^-1
    K, R = K @ signs, signs @ R
    if np.linalg.det(R) < 0:  # P is defined up to scale: a negative overall sign flips R
        R, P = -R, -P
        K, R2 = rq(P[:, :3])
        signs = np.diag(np.sign(np.diag(K)))
        K, R = K @ signs, signs @ R2
    t = np.linalg.solve(K, P[:, 3])
    return K / K[2, 2], R, t


def _intrinsics_for_image(K: np.ndarray, size: tuple[int, int], path: Path) -> np.ndarray:
    """K of the original 1600x1200 frame -> K of an image of ``size`` (see the module docstring)."""
    w, h = size
    K = K.copy()
    if (w, h) == DTU_SIZE:
        return K
    if w == h:  # MonoSDF: centre crop 1600 -> 1200, then resize
        K[0, 2] -= (DTU_SIZE[0] - DTU_SIZE[1]) / 2
        K[:2] *= w / DTU_SIZE[1]
        return K
    if abs(w * DTU_SIZE[1] - h * DTU_SIZE[0]) <= max(w, h) // 100:  # a 4:3 resize of the full frame
        K[0] *= w / DTU_SIZE[0]
        K[1] *= h / DTU_SIZE[1]
        return K
    raise InputError(path, f"image is {w}x{h}: expected 1600x1200, a 4:3 resize of it, or a square MonoSDF crop")


def load_dtu_monosdf(path: str | Path) -> SceneData:
    """Load a DTU scan folder (MonoSDF or IDR layout); see the module docstring."""
    from PIL import Image

    root = Path(path)
    if root.is_file() and root.name == "cameras.npz":
        root = root.parent
    npz = root / "cameras.npz"
    if not npz.is_file():
        raise InputError(root, "no cameras.npz here: not a DTU (IDR / MonoSDF) folder")
    images = _images(root)
    if not images:
        raise InputError(root, "no <index>_rgb.png or image/<index>.png files next to cameras.npz")
    try:
        cams_npz = dict(np.load(npz))
    except Exception as exc:  # noqa: BLE001
        raise InputError(npz, f"cannot read: {exc}") from exc
    cameras: list[Camera] = []
    scale_mat = None
    for index in sorted(images):
        img = images[index]
        wkey, skey = f"world_mat_{index}", f"scale_mat_{index}"
        if wkey not in cams_npz:
            raise InputError(npz, f"has no {wkey} for image {img.name}")
        world = np.asarray(cams_npz[wkey], dtype=np.float64)
        scale = np.asarray(cams_npz.get(skey, np.eye(4)), dtype=np.float64)
        if world.shape not in ((4, 4), (3, 4)) or scale.shape != (4, 4) or not (np.isfinite(world).all() and np.isfinite(scale).all()):
            raise InputError(npz, f"{wkey} / {skey} must be finite 4x4 (or 3x4) matrices")
        if scale_mat is None:
            scale_mat = scale
        elif not np.allclose(scale, scale_mat, rtol=1e-6, atol=1e-6):
            raise InputError(npz, f"{skey} differs from scale_mat of the first image (one normalisation per scan expected)")
        P = (world[:3, :4] @ scale)  # [3, 4]: projection of normalised-space points
        K, R, t = decompose_projection(P)
        with Image.open(img) as im:
            size = im.size
        K = _intrinsics_for_image(K, size, img)
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = R, t
        c2w = np.linalg.inv(w2c)
        cameras.append(Camera(name=img.name if img.parent == root else f"image/{img.name}", width=size[0], height=size[1],
                              fx=K[0, 0], fy=K[1, 1], cx=K[0, 2], cy=K[1, 2], c2w=c2w, image_path=img,
                              mask_path=_mask(root, index, img), extras={"dtu_index": index, "skew": float(K[0, 1])}))  # fmt: skip
    extras = {"scale_mat": scale_mat, "dtu_indices": sorted(images), "normalized_space": "object inside the unit sphere"}
    return SceneData(root=root, source="dtu", cameras=cameras, extras=extras)


def to_dtu_world(points: np.ndarray, scene: SceneData) -> np.ndarray:
    """Points [N,3] of the normalised space -> DTU world coordinates (mm) via ``scale_mat``."""
    S = np.asarray(scene.extras["scale_mat"], dtype=np.float64)
    pts = np.asarray(points, dtype=np.float64)
    return pts @ S[:3, :3].T + S[:3, 3]
