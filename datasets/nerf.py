"""NeRF / instant-ngp / nerfstudio ``transforms.json`` -> :class:`SceneData`.

The format in one place:
- intrinsics at the top level and/or per frame (per frame wins): ``fl_x, fl_y, cx, cy, w, h`` or the
  NeRF-synthetic ``camera_angle_x`` (+ optional ``camera_angle_y``); missing ``w``/``h`` are read
  from the image file; missing ``cx``/``cy`` default to the image centre;
- distortion ``k1..k4, p1, p2`` (instant-ngp, nerfstudio). A perspective camera uses COLMAP's
  ``OPENCV`` model, or ``FULL_OPENCV`` when any of k3..k6 is non-zero; the names are read with
  OpenCV's meaning (k3: r^6 numerator term, k4..k6: rational denominator terms), which is
  COLMAP's FULL_OPENCV parameter order. ``camera_model: OPENCV_FISHEYE`` (or ``FISHEYE``, or
  instant-ngp's ``is_fisheye``) selects the fisheye model with k1..k4;
- ``transform_matrix`` is camera-to-world with OpenGL camera axes (x right, y up, z backward);
  recon's OpenCV axes are ``c2w @ diag(1, -1, -1, 1)``. No other scale/offset is applied
  (instant-ngp's internal 0.33 / 0.5 normalisation is not part of the file);
- intrinsics follow COLMAP's pixel-centre convention (0.5 at the top-left pixel centre), as every
  writer of this format derives them from COLMAP; no half-pixel shift is applied.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from recon.datasets.cameras import Camera, Distortion
from recon.datasets.folder import IMAGE_SUFFIXES, image_size
from recon.datasets.scene import SceneData
from recon.errors import InputError
from recon.utils.ply import read_ply_vertices

OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])

_INTRINSIC_KEYS = (
    "fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y",
    "k1", "k2", "k3", "k4", "k5", "k6", "p1", "p2", "camera_model", "is_fisheye",
)  # fmt: skip
_PERSPECTIVE_MODELS = {"OPENCV", "FULL_OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "PERSPECTIVE"}
_FISHEYE_MODELS = {"OPENCV_FISHEYE", "FISHEYE"}
_RIGID_TOL = 2e-3  # files often store 4-6 decimals; a real scale or shear is far larger


def find_transforms(path: Path) -> Path | None:
    """``path`` if it is a JSON file, else ``path/transforms.json`` if present."""
    if path.is_file() and path.suffix.lower() == ".json":
        return path
    cand = path / "transforms.json"
    return cand if cand.is_file() else None


def _resolve_image(base: Path, file_path: str) -> Path | None:
    """The image a ``file_path`` names: as written, or with .png/.jpg/... appended when it has no
    image extension (NeRF-synthetic writes ``./train/r_0``)."""
    raw = Path(file_path)
    path = raw if raw.is_absolute() else base / raw
    if path.is_file():
        return path
    if raw.suffix.lower() not in IMAGE_SUFFIXES:
        for ext in (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG"):
            cand = path.with_name(path.name + ext)
            if cand.is_file():
                return cand
    return None


def _number(json_path: Path, where: str, key: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError) as err:
        raise InputError(json_path, f"{where} has a non-numeric {key!r}: {value!r}") from err
    if not math.isfinite(out):
        raise InputError(json_path, f"{where} has a non-finite {key!r}")
    return out


def _intrinsics(
    json_path: Path, where: str, meta: dict, image_path: Path
) -> tuple[int, int, float, float, float, float, Distortion | None]:
    """(w, h, fx, fy, cx, cy, distortion) from the merged top-level + frame dictionary ``meta``."""
    num = lambda k: _number(json_path, where, k, meta[k])  # noqa: E731
    if "w" in meta and "h" in meta:
        w, h = int(round(num("w"))), int(round(num("h")))
    else:
        w, h = image_size(image_path)
    if w <= 0 or h <= 0:
        raise InputError(json_path, f"{where} has a non-positive image size w={w}, h={h}")
    fx = fy = None
    if "fl_x" in meta:
        fx = num("fl_x")
    elif "camera_angle_x" in meta:
        fx = 0.5 * w / math.tan(0.5 * num("camera_angle_x"))
    if "fl_y" in meta:
        fy = num("fl_y")
    elif "camera_angle_y" in meta:
        fy = 0.5 * h / math.tan(0.5 * num("camera_angle_y"))
    if fx is None and fy is None:
        raise InputError(json_path, f"{where} has no intrinsics: missing focal length (fl_x/fl_y or camera_angle_x)")
    fx = fy if fx is None else fx
    fy = fx if fy is None else fy
    if not (fx > 0 and fy > 0):
        raise InputError(json_path, f"{where} has a non-positive focal length")
    cx = num("cx") if "cx" in meta else w / 2.0
    cy = num("cy") if "cy" in meta else h / 2.0

    coeff = {k: num(k) for k in ("k1", "k2", "k3", "k4", "k5", "k6", "p1", "p2") if k in meta}
    model = str(meta.get("camera_model", "OPENCV")).upper()
    if model in _FISHEYE_MODELS or bool(meta.get("is_fisheye", False)):
        dist = Distortion("OPENCV_FISHEYE", {k: coeff.get(k, 0.0) for k in ("k1", "k2", "k3", "k4")})
    elif model in _PERSPECTIVE_MODELS:
        if any(coeff.get(k, 0.0) != 0.0 for k in ("k3", "k4", "k5", "k6")):
            names = ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")
            dist = Distortion("FULL_OPENCV", {k: coeff.get(k, 0.0) for k in names})
        else:
            dist = Distortion("OPENCV", {k: coeff.get(k, 0.0) for k in ("k1", "k2", "p1", "p2")})
    else:
        raise InputError(
            json_path,
            f"camera_model {meta.get('camera_model')!r} is not supported "
            f"(supported: {', '.join(sorted(_PERSPECTIVE_MODELS | _FISHEYE_MODELS))})",
        )
    return w, h, fx, fy, cx, cy, (None if dist.is_identity() else dist)


def _pose(json_path: Path, i: int, frame: dict) -> np.ndarray:
    """OpenCV c2w of frame ``i``, after checking it is a finite rigid transform."""
    if "transform_matrix" not in frame:
        raise InputError(json_path, f"frame {i} has no transform_matrix")
    try:
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(json_path, f"frame {i} has a transform_matrix that is not a 4x4 matrix of numbers") from err
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise InputError(json_path, f"frame {i} has a transform_matrix of shape {m.shape}, expected 4x4")
    if not np.isfinite(m).all():
        raise InputError(json_path, f"frame {i} has a non-finite transform_matrix")
    R = m[:3, :3]
    if (
        np.abs(R.T @ R - np.eye(3)).max() > _RIGID_TOL
        or np.linalg.det(R) < 0
        or np.abs(m[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-6
    ):
        raise InputError(
            json_path, f"frame {i} has a transform_matrix that is not a rigid transform (rotation must be orthonormal, last row 0 0 0 1)"
        )
    return m @ OPENGL_TO_OPENCV


def load_nerf(path: str | Path) -> SceneData:
    """Load a ``transforms.json`` (a path to the file or to the folder holding it).

    Frames whose image file is missing are skipped with one warning (instant-ngp does the same);
    none left is an InputError. Per-frame ``mask_path`` (white = keep) and ``time`` are kept; times
    outside [0, 1] are min-max normalised (the original range goes to ``extras["time_range"]``).
    ``ply_file_path`` (nerfstudio) gives the initial points."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    json_path = find_transforms(path)
    if json_path is None:
        raise InputError(path, "no transforms.json here")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(json_path, f"cannot read JSON: {err}") from err
    if not isinstance(meta, dict) or "frames" not in meta:
        raise InputError(json_path, 'no "frames" list: not a NeRF/instant-ngp/nerfstudio transforms file')
    frames = meta["frames"]
    if not isinstance(frames, list) or not frames:
        raise InputError(json_path, '"frames" is empty or not a list')

    base = json_path.parent
    shared = {k: meta[k] for k in _INTRINSIC_KEYS if k in meta}
    cameras: list[Camera] = []
    missing: list[str] = []
    intrinsic_ids: dict[tuple, int] = {}
    times: list[float | None] = []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise InputError(json_path, f"frame {i} is not an object")
        if "file_path" not in frame:
            raise InputError(json_path, f"frame {i} has no file_path")
        c2w = _pose(json_path, i, frame)
        image_path = _resolve_image(base, str(frame["file_path"]))
        if image_path is None:
            missing.append(str(frame["file_path"]))
            continue
        merged = {**shared, **{k: frame[k] for k in _INTRINSIC_KEYS if k in frame}}
        w, h, fx, fy, cx, cy, dist = _intrinsics(json_path, f"frame {i}", merged, image_path)
        key = (w, h, fx, fy, cx, cy, None if dist is None else (dist.model, tuple(sorted(dist.params.items()))))
        camera_id = intrinsic_ids.setdefault(key, len(intrinsic_ids))

        mask_path = None
        if frame.get("mask_path"):
            mask_path = _resolve_image(base, str(frame["mask_path"]))
            if mask_path is None:
                raise InputError(json_path, f"frame {i}: mask {frame['mask_path']!r} not found")
        time = _number(json_path, f"frame {i}", "time", frame["time"]) if "time" in frame else None
        times.append(time)
        try:
            name = image_path.relative_to(base).as_posix()
        except ValueError:
            name = str(frame["file_path"])
        extras = {k: frame[k] for k in ("sharpness", "colmap_im_id") if k in frame}
        cameras.append(
            Camera(
                name=name, width=w, height=h, fx=fx, fy=fy, cx=cx, cy=cy, c2w=c2w, distortion=dist,
                image_path=image_path, mask_path=mask_path, time=time, camera_id=camera_id, extras=extras,
            )  # fmt: skip
        )
    if missing:
        warnings.warn(
            f"{json_path}: {len(missing)} of {len(frames)} frames have no image file and were skipped (first: {missing[0]})",
            stacklevel=2,
        )
    if not cameras:
        raise InputError(json_path, f"none of the {len(frames)} frames has an image file (first: {missing[0]})")

    extras: dict = {k: meta[k] for k in ("aabb_scale", "aabb", "scale", "offset", "applied_transform") if k in meta}
    extras["transforms_path"] = json_path
    if isinstance(meta.get("recon_demo"), dict):  # recon's own demo scene: background, bounds, ...
        extras["demo"] = meta["recon_demo"]
    extras["frames_skipped"] = len(missing)
    known = [t for t in times if t is not None]
    if known and (min(known) < 0.0 or max(known) > 1.0):
        lo, hi = min(known), max(known)
        extras["time_range"] = (lo, hi)
        for cam in cameras:
            if cam.time is not None:
                cam.time = (cam.time - lo) / (hi - lo) if hi > lo else 0.0

    points = colors = None
    if meta.get("ply_file_path"):
        ply = Path(str(meta["ply_file_path"]))
        ply = ply if ply.is_absolute() else base / ply
        if not ply.is_file():
            raise InputError(json_path, f"ply_file_path {meta['ply_file_path']!r} not found")
        points, colors = read_ply_points(ply)
    return SceneData(root=base, source="nerf", cameras=cameras, points=points, point_colors=colors, extras=extras)


# --------------------------------------------------------------------------------------------
# minimal PLY point reader (nerfstudio's sparse_pc.ply); our own, no GPL dependency
# --------------------------------------------------------------------------------------------
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


def read_ply_points(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``vertex`` x, y, z (and red, green, blue when present) of an ascii or binary PLY.
    Returns float32 (N, 3) points and uint8 (N, 3) colours (None when the file has none)."""
    path = Path(path)
    cols = read_ply_vertices(path)
    if not {"x", "y", "z"} <= cols.keys():
        raise InputError(path, "PLY vertices have no x, y, z properties")
    xyz = np.stack([cols["x"], cols["y"], cols["z"]], axis=-1).astype(np.float32)
    colors = None
    if {"red", "green", "blue"} <= cols.keys():
        rgb = np.stack([cols["red"], cols["green"], cols["blue"]], axis=-1).astype(np.float64)
        if cols["red"].dtype.kind == "f":  # float colours are in [0, 1]
            rgb = rgb * 255.0
        colors = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    return xyz, colors
