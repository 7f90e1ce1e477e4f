"""LLFF ``poses_bounds.npy`` -> :class:`SceneData`.

Per view, 17 numbers: a 3x5 matrix (rows x columns, row-major) and the near/far depth bounds.
Columns 0-2 are the camera-to-world rotation with camera axes in [down, right, back] order, column 3
the camera centre, column 4 ``(H, W, focal)`` of the *original* capture. OpenCV axes are
[right, down, forward] = columns ``[c1, c0, -c2]``. Row i belongs to the i-th image in sorted name
order. LLFF assumes a centred principal point; the focal is rescaled to the size of the image files
actually used (``images_N/`` usually holds the originals downscaled N times).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from recon.datasets.cameras import Camera
from recon.datasets.folder import find_images, find_mask, image_size
from recon.datasets.scene import SceneData
from recon.errors import InputError

_FOLDER_RE = re.compile(r"^images(?:_(\d+))?$")


def llff_to_opencv(poses: np.ndarray) -> np.ndarray:
    """(N, 3, >=4) LLFF [down, right, back | centre] -> (N, 4, 4) OpenCV c2w."""
    poses = np.asarray(poses, dtype=np.float64)
    c2w = np.tile(np.eye(4), (len(poses), 1, 1))
    c2w[:, :3, 0] = poses[:, :, 1]  # right
    c2w[:, :3, 1] = poses[:, :, 0]  # down
    c2w[:, :3, 2] = -poses[:, :, 2]  # forward = -back
    c2w[:, :3, 3] = poses[:, :, 3]
    return c2w


def opencv_to_llff(c2w: np.ndarray, hwf: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Inverse of :func:`llff_to_opencv` plus hwf and bounds: (N, 17) rows of ``poses_bounds.npy``."""
    c2w = np.asarray(c2w, dtype=np.float64)
    n = len(c2w)
    P = np.zeros((n, 3, 5))
    P[:, :, 0] = c2w[:, :3, 1]
    P[:, :, 1] = c2w[:, :3, 0]
    P[:, :, 2] = -c2w[:, :3, 2]
    P[:, :, 3] = c2w[:, :3, 3]
    P[:, :, 4] = np.broadcast_to(np.asarray(hwf, np.float64), (n, 3))
    return np.concatenate([P.reshape(n, 15), np.broadcast_to(np.asarray(bounds, np.float64), (n, 2))], axis=1)


def _image_folders(root: Path) -> list[tuple[int, Path]]:
    """(downscale N, folder) for ``images`` (N=1) and ``images_N``, smallest N first."""
    out = []
    for p in root.iterdir() if root.is_dir() else []:
        m = _FOLDER_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1) or 1), p))
    return sorted(out, key=lambda t: (t[0], t[1].name))


def load_llff(root: str | Path) -> SceneData:
    """Load an LLFF capture: ``root/poses_bounds.npy`` plus ``images/`` or ``images_N/``.

    Of the image folders, the one whose image count matches the number of poses is used (the
    full-resolution ``images/`` first, then increasing N); recon downscales on its own, so the
    originals are preferred. Masks come from ``masks_N/`` (matching the images) or ``masks/``,
    same stem, ``.png``. Near/far bounds go to each camera's ``extras["bounds"]``."""
    root = Path(root)
    if root.is_file() and root.name == "poses_bounds.npy":
        root = root.parent
    pb_path = root / "poses_bounds.npy"
    if not pb_path.is_file():
        raise InputError(root, "no poses_bounds.npy here")
    try:
        pb = np.load(pb_path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(pb_path, f"cannot read numpy array: {err}") from err
    if pb.ndim != 2 or pb.shape[1] < 15:
        raise InputError(pb_path, f"expected an (N, 17) array, got shape {pb.shape}")
    pb = pb.astype(np.float64)
    if not np.isfinite(pb).all():
        bad = int(np.nonzero(~np.isfinite(pb).all(axis=1))[0][0])
        raise InputError(pb_path, f"pose {bad} has non-finite values")
    n = len(pb)
    if n == 0:
        raise InputError(pb_path, "contains no poses")
    P = pb[:, :15].reshape(n, 3, 5)
    R = P[:, :, :3]
    if np.abs(np.einsum("nji,njk->nik", R, R) - np.eye(3)).max() > 2e-3:
        raise InputError(pb_path, "rotation columns are not orthonormal (not a rigid transform)")

    folders = _image_folders(root)
    if not folders:
        raise InputError(root, "no images/ or images_N/ folder next to poses_bounds.npy")
    counts = [(f, s, find_images(f)) for s, f in folders]
    chosen = next(((f, s, imgs) for f, s, imgs in counts if len(imgs) == n), None)
    if chosen is None:
        found = ", ".join(f"{f.name}/ has {len(imgs)}" for f, _, imgs in counts)
        raise InputError(pb_path, f"{n} poses but no image folder has {n} images ({found})")
    image_dir, factor, images = chosen

    mask_dir = None
    for cand in ([root / f"masks_{factor}"] if factor > 1 else []) + [root / "masks"]:
        if cand.is_dir():
            mask_dir = cand
            break

    c2w = llff_to_opencv(P)
    cameras: list[Camera] = []
    for i, img in enumerate(images):
        H0, W0, f0 = P[i, :, 4]
        if not (H0 > 0 and W0 > 0 and f0 > 0):
            raise InputError(pb_path, f"pose {i} has a non-positive height/width/focal {P[i, :, 4].tolist()}")
        w, h = image_size(img)  # reads the header only
        sx, sy = w / W0, h / H0
        if abs(sx - sy) > 0.01 * max(sx, sy):
            raise InputError(
                img, f"image is {w}x{h}, which does not have the aspect ratio of the poses' {W0:g}x{H0:g} (hwf in poses_bounds.npy)"
            )
        mask = None
        if mask_dir is not None:
            mask = find_mask(mask_dir, img.name)
            if mask is None:
                raise InputError(mask_dir / f"{img.stem}.png", "mask missing (the masks folder has no mask for this image)")
        cameras.append(
            Camera(
                name=img.name,
                width=w,
                height=h,
                fx=f0 * sx,
                fy=f0 * sy,
                cx=w / 2.0,
                cy=h / 2.0,
                c2w=c2w[i],
                image_path=img,
                mask_path=mask,
                extras={"bounds": pb[i, 15:17].copy()} if pb.shape[1] >= 17 else {},
            )
        )
    extras: dict = {"image_dir": image_dir, "poses_bounds_path": pb_path}
    if pb.shape[1] >= 17:
        extras["bounds"] = pb[:, 15:17].copy()
    return SceneData(root=root, source="llff", cameras=cameras, extras=extras)
