"""COLMAP sparse models (binary and text) -> :class:`SceneData`.

Our own reader (``struct`` + numpy) rather than pycolmap's, because:
- it reads the classic three files only, so models written by any COLMAP version load, including
  pycolmap 4.x output whose extra ``rigs.bin`` / ``frames.bin`` we do not need (single-camera rigs);
- every problem becomes an :class:`~recon.errors.InputError` naming the file, instead of a C++ abort.

COLMAP stores world-to-camera rotations (quaternion w, x, y, z) and translations in OpenCV axes,
and puts the centre of the top-left pixel at (0.5, 0.5), which is recon's convention, so intrinsics
are used unchanged and ``c2w = inv([R | t])``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recon.datasets.cameras import Camera, Distortion
from recon.datasets.folder import find_mask
from recon.datasets.scene import SceneData
from recon.errors import InputError

# COLMAP's model ids (src/colmap/sensor/models.h); names are used in error messages.
MODEL_NAMES: dict[int, str] = {
    0: "SIMPLE_PINHOLE",
    1: "PINHOLE",
    2: "SIMPLE_RADIAL",
    3: "RADIAL",
    4: "OPENCV",
    5: "OPENCV_FISHEYE",
    6: "FULL_OPENCV",
    7: "FOV",
    8: "SIMPLE_RADIAL_FISHEYE",
    9: "RADIAL_FISHEYE",
    10: "THIN_PRISM_FISHEYE",
    11: "RAD_TAN_THIN_PRISM_FISHEYE",
    12: "DIVISION",
    13: "SIMPLE_DIVISION",
    14: "SIMPLE_FISHEYE",
    15: "FISHEYE",
}

# Supported models: number of parameters. Only these are converted; others raise InputError.
SUPPORTED_MODELS: dict[str, int] = {
    "SIMPLE_PINHOLE": 3,
    "PINHOLE": 4,
    "SIMPLE_RADIAL": 4,
    "RADIAL": 5,
    "OPENCV": 8,
    "OPENCV_FISHEYE": 8,
    "FULL_OPENCV": 12,
}

INVALID_POINT3D_ID = -1  # COLMAP writes uint64 max; read as int64 that is -1


@dataclass
class ColmapCamera:
    camera_id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # float64, COLMAP order


@dataclass
class ColmapImage:
    image_id: int
    qvec: np.ndarray  # (4,) w, x, y, z: world-to-camera rotation
    tvec: np.ndarray  # (3,) world-to-camera translation
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (M, 2) keypoints, COLMAP pixels
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # (M,), -1 = none


@dataclass
class ColmapPoints:
    ids: np.ndarray  # (N,) int64
    xyz: np.ndarray  # (N, 3) float64
    rgb: np.ndarray  # (N, 3) uint8
    errors: np.ndarray  # (N,) float64
    tracks: list[np.ndarray]  # N arrays (L_i, 2) int64: (image_id, point2D_idx)


@dataclass
class ColmapModel:
    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points: ColmapPoints | None
    path: Path


# --------------------------------------------------------------------------------------------
# locating a model
# --------------------------------------------------------------------------------------------
def _has_model(folder: Path) -> bool:
    return folder.is_dir() and (
        (folder / "cameras.bin").is_file() or (folder / "cameras.txt").is_file()
    )


def find_model_dir(root: str | Path) -> Path | None:
    """The COLMAP model folder under ``root``: ``sparse/0``, ``sparse``, ``colmap/sparse/0`` (the
    nerfstudio layout), the lowest-numbered ``sparse/<n>``, or ``root`` itself; None if there is none."""
    root = Path(root)
    for cand in (root / "sparse" / "0", root / "sparse", root / "colmap" / "sparse" / "0", root):
        if _has_model(cand):
            return cand
    sparse = root / "sparse"
    if sparse.is_dir():
        numbered = sorted((p for p in sparse.iterdir() if p.name.isdigit() and _has_model(p)), key=lambda p: int(p.name))
        if numbered:
            return numbered[0]
    return None


# --------------------------------------------------------------------------------------------
# binary format
# --------------------------------------------------------------------------------------------
class _Reader:
    """Little-endian cursor over a file's bytes; running off the end is an InputError."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as err:
            raise InputError(path, f"cannot read file ({err.strerror or err})") from err
        self.pos = 0

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise InputError(self.path, "file is truncated or corrupt (ends in the middle of a record)")
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return out

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = dtype.itemsize * count
        if count < 0 or self.pos + nbytes > len(self.data):
            raise InputError(self.path, "file is truncated or corrupt (ends in the middle of a record)")
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += nbytes
        return out

    def cstring(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise InputError(self.path, "file is truncated or corrupt (unterminated image name)")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(self.path, "image name is not valid UTF-8 (corrupt file?)") from err


def _model_name(path: Path, camera_id: int, model_id: int) -> str:
    name = MODEL_NAMES.get(model_id)
    if name is None:
        raise InputError(path, f"camera {camera_id} uses unknown camera model id {model_id} (supported: {', '.join(SUPPORTED_MODELS)})")
    _check_supported(path, camera_id, name)
    return name


def _check_supported(path: Path, camera_id: int, name: str) -> None:
    if name not in SUPPORTED_MODELS:
        raise InputError(
            path,
            f"camera {camera_id} uses the {name} camera model, which recon does not support "
            f"(supported: {', '.join(SUPPORTED_MODELS)}); re-run COLMAP with one of those or undistort the images",
        )


def read_cameras_binary(path: Path) -> dict[int, ColmapCamera]:
    r = _Reader(path)
    (n,) = r.take("<Q")
    cameras: dict[int, ColmapCamera] = {}
    for _ in range(n):
        camera_id, model_id, width, height = r.take("<iiQQ")
        name = _model_name(path, camera_id, model_id)
        params = r.array("<f8", SUPPORTED_MODELS[name]).astype(np.float64)
        cameras[camera_id] = ColmapCamera(camera_id, name, int(width), int(height), params)
    return cameras


_POINT2D_DTYPE = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])


def read_images_binary(path: Path, with_points2d: bool = True) -> dict[int, ColmapImage]:
    r = _Reader(path)
    (n,) = r.take("<Q")
    images: dict[int, ColmapImage] = {}
    for _ in range(n):
        image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = r.take("<i7di")
        name = r.cstring()
        (m,) = r.take("<Q")
        pts = r.array(_POINT2D_DTYPE, m)
        img = ColmapImage(image_id, np.array([qw, qx, qy, qz]), np.array([tx, ty, tz]), camera_id, name)
        if with_points2d:
            img.xys = np.stack([pts["x"], pts["y"]], axis=-1).astype(np.float64)
            img.point3D_ids = pts["id"].astype(np.int64)
        images[image_id] = img
    return images


def read_points3d_binary(path: Path) -> ColmapPoints:
    r = _Reader(path)
    (n,) = r.take("<Q")
    ids = np.empty(n, np.int64)
    xyz = np.empty((n, 3), np.float64)
    rgb = np.empty((n, 3), np.uint8)
    errors = np.empty(n, np.float64)
    tracks: list[np.ndarray] = []
    for i in range(n):
        pid, x, y, z, cr, cg, cb, err, length = r.take("<Q3d3BdQ")
        ids[i] = pid
        xyz[i] = (x, y, z)
        rgb[i] = (cr, cg, cb)
        errors[i] = err
        tracks.append(r.array("<i4", 2 * length).reshape(-1, 2).astype(np.int64))
    return ColmapPoints(ids, xyz, rgb, errors, tracks)


# --------------------------------------------------------------------------------------------
# text format
# --------------------------------------------------------------------------------------------
def _text_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, content) for non-comment lines. Blank lines are kept: in images.txt an image
    with no keypoints has an empty second line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read file ({err})") from err
    return [(i + 1, line.strip()) for i, line in enumerate(text.splitlines()) if not line.lstrip().startswith("#")]


def read_cameras_text(path: Path) -> dict[int, ColmapCamera]:
    cameras: dict[int, ColmapCamera] = {}
    for lineno, line in _text_lines(path):
        if not line:
            continue
        tok = line.split()
        try:
            camera_id, name, width, height = int(tok[0]), tok[1], int(tok[2]), int(tok[3])
            params = np.array([float(v) for v in tok[4:]], np.float64)
        except (ValueError, IndexError) as err:
            raise InputError(path, f"line {lineno} is not 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...'") from err
        if name.isdigit():  # some writers store the numeric id
            name = _model_name(path, camera_id, int(name))
        _check_supported(path, camera_id, name)
        if len(params) != SUPPORTED_MODELS[name]:
            raise InputError(path, f"line {lineno}: {name} needs {SUPPORTED_MODELS[name]} parameters, found {len(params)}")
        cameras[camera_id] = ColmapCamera(camera_id, name, width, height, params)
    return cameras


def read_images_text(path: Path, with_points2d: bool = True) -> dict[int, ColmapImage]:
    lines = _text_lines(path)
    # Drop blank lines that precede the first image header; afterwards they are keypoint lines.
    while lines and not lines[0][1]:
        lines.pop(0)
    images: dict[int, ColmapImage] = {}
    i = 0
    while i < len(lines):
        lineno, header = lines[i]
        if not header:  # trailing blank lines
            i += 1
            continue
        tok = header.split(maxsplit=9)
        try:
            image_id = int(tok[0])
            q = np.array([float(v) for v in tok[1:5]])
            t = np.array([float(v) for v in tok[5:8]])
            camera_id = int(tok[8])
            name = tok[9]
        except (ValueError, IndexError) as err:
            raise InputError(path, f"line {lineno} is not 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'") from err
        points_line = lines[i + 1][1] if i + 1 < len(lines) else ""
        img = ColmapImage(image_id, q, t, camera_id, name)
        if with_points2d and points_line:
            vals = points_line.split()
            if len(vals) % 3:
                raise InputError(path, f"line {lineno + 1}: keypoints must come in triples 'X Y POINT3D_ID'")
            try:
                arr = np.array(vals, dtype=np.float64).reshape(-1, 3)
            except ValueError as err:
                raise InputError(path, f"line {lineno + 1}: keypoints are not numbers") from err
            img.xys = arr[:, :2].copy()
            img.point3D_ids = arr[:, 2].astype(np.int64)
        images[image_id] = img
        i += 2
    return images


def read_points3d_text(path: Path) -> ColmapPoints:
    ids, xyz, rgb, errors, tracks = [], [], [], [], []
    for lineno, line in _text_lines(path):
        if not line:
            continue
        tok = line.split()
        try:
            ids.append(int(tok[0]))
            xyz.append([float(v) for v in tok[1:4]])
            rgb.append([int(v) for v in tok[4:7]])
            errors.append(float(tok[7]))
            track = np.array([int(v) for v in tok[8:]], np.int64)
        except (ValueError, IndexError) as err:
            raise InputError(path, f"line {lineno} is not 'POINT3D_ID X Y Z R G B ERROR TRACK...'") from err
        if len(track) % 2:
            raise InputError(path, f"line {lineno}: track must come in pairs 'IMAGE_ID POINT2D_IDX'")
        tracks.append(track.reshape(-1, 2))
    return ColmapPoints(
        np.array(ids, np.int64),
        np.array(xyz, np.float64).reshape(-1, 3),
        np.array(rgb, np.uint8).reshape(-1, 3),
        np.array(errors, np.float64),
        tracks,
    )


# --------------------------------------------------------------------------------------------
# model -> SceneData
# --------------------------------------------------------------------------------------------
def read_model(model_dir: str | Path, with_points2d: bool = True) -> ColmapModel:
    """Read ``cameras``, ``images`` and (if present) ``points3D`` from a model folder, preferring
    the binary files when both formats exist. Extra files (rigs.bin, frames.bin, ...) are ignored."""
    model_dir = Path(model_dir)
    if (model_dir / "cameras.bin").is_file():
        ext = ".bin"
        cams_f, imgs_f, pts_f = read_cameras_binary, read_images_binary, read_points3d_binary
    elif (model_dir / "cameras.txt").is_file():
        ext = ".txt"
        cams_f, imgs_f, pts_f = read_cameras_text, read_images_text, read_points3d_text
    else:
        raise InputError(model_dir, "no COLMAP model here (expected cameras.bin or cameras.txt)")
    images_path = model_dir / f"images{ext}"
    if not images_path.is_file():
        raise InputError(images_path, "missing: a COLMAP model needs cameras, images and points3D files")
    cameras = cams_f(model_dir / f"cameras{ext}")
    images = imgs_f(images_path, with_points2d)
    pts_path = model_dir / f"points3D{ext}"
    points = pts_f(pts_path) if pts_path.is_file() else None
    return ColmapModel(cameras, images, points, model_dir)


def qvec_to_rotmat(q: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> 3x3 rotation matrix (Hamilton convention, as COLMAP)."""
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def colmap_intrinsics(cam: ColmapCamera) -> tuple[float, float, float, float, Distortion | None]:
    """(fx, fy, cx, cy, distortion) of a supported COLMAP camera."""
    p = [float(v) for v in cam.params]
    if cam.model == "SIMPLE_PINHOLE":
        return p[0], p[0], p[1], p[2], None
    if cam.model == "PINHOLE":
        return p[0], p[1], p[2], p[3], None
    if cam.model == "SIMPLE_RADIAL":
        return p[0], p[0], p[1], p[2], Distortion("SIMPLE_RADIAL", {"k1": p[3]})
    if cam.model == "RADIAL":
        return p[0], p[0], p[1], p[2], Distortion("RADIAL", {"k1": p[3], "k2": p[4]})
    if cam.model == "OPENCV":
        return p[0], p[1], p[2], p[3], Distortion("OPENCV", dict(zip(("k1", "k2", "p1", "p2"), p[4:8])))
    if cam.model == "OPENCV_FISHEYE":
        return p[0], p[1], p[2], p[3], Distortion("OPENCV_FISHEYE", dict(zip(("k1", "k2", "k3", "k4"), p[4:8])))
    if cam.model == "FULL_OPENCV":
        names = ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")
        return p[0], p[1], p[2], p[3], Distortion("FULL_OPENCV", dict(zip(names, p[4:12])))
    raise AssertionError(cam.model)  # read_* already rejected unsupported models


def _find_image_dir(model_dir: Path, root: Path, names: list[str]) -> Path | None:
    """The folder holding the model's images: ``<root>/images`` first, then the model folder's
    ancestors (and their ``images/``), so ``.../scene/colmap_sparse/0`` finds ``.../scene``.
    Picks the candidate where the most of the first few names exist."""
    cands: list[Path] = [root / "images", root]
    for parent in [model_dir, *model_dir.parents][:4]:
        cands += [parent / "images", parent]
    probe = names[:20]
    best, best_hits = None, 0
    seen: set[Path] = set()
    for cand in cands:
        cand = cand.resolve() if cand.exists() else cand
        if cand in seen or not cand.is_dir():
            continue
        seen.add(cand)
        hits = sum((cand / n).is_file() for n in probe)
        if hits > best_hits:
            best, best_hits = cand, hits
    return best


def _find_mask_dir(image_dir: Path) -> Path | None:
    for cand in (image_dir.parent / "masks", image_dir / "masks"):
        if cand.is_dir():
            return cand
    return None


def load_colmap(root: str | Path, image_dir: str | Path | None = None, mask_dir: str | Path | None = None) -> SceneData:
    """Load a COLMAP reconstruction.

    ``root`` is a folder containing ``sparse/0`` (or ``sparse``) plus ``images/``, or a model folder
    itself. ``image_dir`` overrides where images are looked up (otherwise found next to the model).
    Masks come from ``mask_dir`` or a ``masks/`` folder beside the images, named either
    ``<image name>.png`` (COLMAP's convention) or ``<image stem>.png``.

    A registered image whose file is missing is an InputError (naming it and how many are missing).
    ``SceneData.extras`` carries the SfM observations for checks and initialisation:
    ``colmap_point_ids`` (N,), ``colmap_tracks`` (list of (L, 2) arrays of (image_id, point2D_idx),
    aligned with ``points``), ``colmap_points_xyz`` (N, 3) float64, ``colmap_point_errors`` (N,),
    ``colmap_keypoints`` {image_id: (M, 2) pixel coords, COLMAP convention}, ``colmap_image_names``
    {image_id: camera name}, ``model_dir``.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(root, "no such file or folder")
    model_dir = find_model_dir(root)
    if model_dir is None:
        raise InputError(root, "no COLMAP model found (looked for sparse/0, sparse, or cameras.bin/.txt here)")
    model = read_model(model_dir)
    images_file = model_dir / ("images.bin" if (model_dir / "images.bin").is_file() else "images.txt")
    cams_file = model_dir / ("cameras.bin" if (model_dir / "cameras.bin").is_file() else "cameras.txt")
    if not model.images:
        raise InputError(images_file, "the COLMAP model has no registered images (SfM failed to register any view)")

    ordered = sorted(model.images.values(), key=lambda im: im.name)
    if image_dir is None:
        found = _find_image_dir(model_dir, root, [im.name for im in ordered])
        if found is None:
            raise InputError(
                root, f"cannot find the model's images (e.g. {ordered[0].name!r}); looked in images/ beside the model and its parent folders"
            )
        image_dir = found
    image_dir = Path(image_dir)
    if mask_dir is None:
        mask_dir = _find_mask_dir(image_dir)

    missing = [im.name for im in ordered if not (image_dir / im.name).is_file()]
    if missing:
        # Unlike transforms.json (where instant-ngp skips missing frames), a registered COLMAP image
        # without its file almost always means the wrong image folder or a half-copied dataset.
        raise InputError(
            image_dir / missing[0], f"image file not found ({len(missing)} of {len(ordered)} registered images are missing)"
        )
    cameras: list[Camera] = []
    for im in ordered:
        cam = model.cameras.get(im.camera_id)
        if cam is None:
            raise InputError(images_file, f"image {im.name!r} refers to camera {im.camera_id}, which {cams_file.name} does not define")
        q = np.asarray(im.qvec, np.float64)
        qn = float(np.linalg.norm(q))
        if not (np.isfinite(q).all() and np.isfinite(im.tvec).all()) or qn < 1e-8:
            raise InputError(images_file, f"image {im.name!r} has a non-finite or zero pose")
        R = qvec_to_rotmat(q / qn)
        c2w = np.eye(4)
        c2w[:3, :3] = R.T
        c2w[:3, 3] = -R.T @ np.asarray(im.tvec, np.float64)
        path = image_dir / im.name
        fx, fy, cx, cy, dist = colmap_intrinsics(cam)
        cameras.append(
            Camera(
                name=im.name,
                width=cam.width,
                height=cam.height,
                fx=fx,
                fy=fy,
                cx=cx,
                cy=cy,
                c2w=c2w,
                distortion=dist,
                image_path=path,
                mask_path=find_mask(Path(mask_dir), im.name) if mask_dir is not None else None,
                camera_id=im.camera_id,
                extras={"colmap_image_id": im.image_id},
            )
        )

    extras: dict = {
        "model_dir": model_dir,
        "colmap_keypoints": {im.image_id: im.xys for im in ordered},
        "colmap_point3D_ids_per_image": {im.image_id: im.point3D_ids for im in ordered},
        "colmap_image_names": {im.image_id: im.name for im in ordered},
    }
    points = colors = None
    if model.points is not None and len(model.points.ids):
        pts = model.points
        points = pts.xyz.astype(np.float32)
        colors = pts.rgb.astype(np.uint8)
        extras.update(
            colmap_point_ids=pts.ids,
            colmap_points_xyz=pts.xyz,
            colmap_point_errors=pts.errors,
            colmap_tracks=pts.tracks,
        )
    return SceneData(root=root, source="colmap", cameras=cameras, points=points, point_colors=colors, extras=extras)
