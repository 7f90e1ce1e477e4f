"""Small on-disk datasets made by the tests themselves (never real captures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from recon.datasets.cameras import OPENCV_TO_OPENGL, look_at_c2w


def look_at_c2w_gl(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenGL camera-to-world (x right, y up, z backward) looking from ``eye`` at ``target``."""
    return look_at_c2w(eye, target, up) @ OPENCV_TO_OPENGL


def write_noise_images(folder: Path, n: int, size=(64, 48), seed=0, ext=".png") -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img_{i:03d}{ext}"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def write_transforms(root: Path, n: int = 4, size=(64, 48), image_size=None, frames_override=None) -> Path:
    """A nerfstudio-style transforms.json with ``n`` noise images; returns the json path."""
    root.mkdir(parents=True, exist_ok=True)
    w, h = size
    write_noise_images(root / "images", n, size=image_size or size)
    frames = []
    for i in range(n):
        ang = 2 * np.pi * i / n
        c2w = look_at_c2w_gl((3 * np.cos(ang), 3 * np.sin(ang), 1.0))
        frames.append({"file_path": f"images/img_{i:03d}.png", "transform_matrix": c2w.tolist()})
    meta = {"fl_x": 60.0, "fl_y": 60.0, "cx": w / 2, "cy": h / 2, "w": w, "h": h,
            "frames": frames if frames_override is None else frames_override}
    path = root / "transforms.json"
    path.write_text(json.dumps(meta))
    return path


def write_colmap_text(root: Path, n_images: int = 3, camera_line: str | None = None, size=(64, 48),
                      write_images: bool = True, registered: bool = True) -> Path:
    """A COLMAP text model (sparse/0) plus images/; returns the project root."""
    w, h = size
    model = root / "sparse" / "0"
    model.mkdir(parents=True, exist_ok=True)
    cam = camera_line or f"1 PINHOLE {w} {h} 50 50 {w / 2} {h / 2}"
    (model / "cameras.txt").write_text("# Camera list\n" + cam + "\n")
    lines = ["# Image list"]
    if registered:
        for i in range(n_images):
            # identity rotation, translated along x; no 2D points
            lines.append(f"{i + 1} 1 0 0 0 {0.1 * i} 0 4 1 img_{i:03d}.png")
            lines.append("")
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    (model / "points3D.txt").write_text("# 3D point list\n")
    if write_images:
        write_noise_images(root / "images", n_images, size=size)
    return root
