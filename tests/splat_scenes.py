"""A small, exactly known Gaussian scene for the browser tests, and the image checks they share.

The scene is the demo's true surface (``recon.datasets.demo``) covered by flat Gaussians: centres
sampled uniformly by area, each a disc tangent to the surface (normal scale 1/14 of the tangent
scales), coloured with the demo's own shading of that surface point, opacity sigmoid(2) = 0.88, plus
small seeded random SH bands 1-3 (sigma 0.04) so that view-dependent colour is exercised too. It looks
like the demo scene from every camera and needs no training, so the tests compare a browser's
picture with :meth:`GaussianScene.render` of the same camera in seconds.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from recon.datasets.demo import demo_cameras, demo_ground_truth
from recon.scenes.gaussians import GaussianScene, rgb_to_sh0

WIDTH, HEIGHT = 160, 120


def _quats_z_to(normals: np.ndarray) -> np.ndarray:
    """Quaternions (wxyz) of the shortest rotations taking +z to each unit normal."""
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(np.broadcast_to(z, normals.shape), normals)
    s = np.linalg.norm(axis, axis=1)
    angle = np.arctan2(s, normals @ z)
    axis = np.where(s[:, None] > 1e-9, axis / np.maximum(s[:, None], 1e-12), np.array([1.0, 0.0, 0.0]))
    return np.concatenate([np.cos(angle / 2)[:, None], axis * np.sin(angle / 2)[:, None]], axis=1)


def demo_surface_gaussians(n: int = 12_000, *, sh_sigma: float = 0.04, seed: int = 0) -> dict[str, torch.Tensor]:
    """Raw GaussianScene parameters (SH degree 3) covering the demo scene's surfaces."""
    gt = demo_ground_truth()
    points, normals = gt.sample_surface(n, seed=seed)
    rgb, _ = gt.shade_rays(points + 1e-3 * normals, -normals)  # the colour a camera sees at that point
    spacing = math.sqrt(sum(gt.surface_areas().values()) / n)
    rng = np.random.default_rng(seed)
    f32 = torch.float32
    return {
        "means": torch.tensor(points, dtype=f32),
        "quats": torch.tensor(_quats_z_to(normals), dtype=f32),
        "scales": torch.log(torch.tensor([[0.7 * spacing, 0.7 * spacing, 0.05 * spacing]], dtype=f32).repeat(n, 1)),
        "opacities": torch.full((n,), 2.0, dtype=f32),
        "sh0": rgb_to_sh0(torch.tensor(rgb, dtype=f32)).reshape(n, 1, 3),
        "shN": torch.tensor(rng.normal(0.0, sh_sigma, (n, 15, 3)), dtype=f32),
    }


def cameras(width: int = WIDTH, height: int = HEIGHT):
    """The demo's 48 cameras (the dataset's; index 0 is the first held-out view)."""
    return demo_cameras(width=width, height=height)


def render_reference(params: dict[str, torch.Tensor], camera, background=(1.0, 1.0, 1.0)) -> np.ndarray:
    """recon's own render (the PyTorch reference rasterizer), [H, W, 3] float64 in 0..1."""
    scene = GaussianScene(params, sh_degree=3, backend="reference")
    with torch.no_grad():
        out = scene.render(camera, background=torch.tensor(background, dtype=torch.float32))
    return out.image.clamp(0, 1).double().numpy()


# --- image checks ------------------------------------------------------------------------------
def as_float(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)


def centre(img: np.ndarray) -> np.ndarray:
    """The middle half of the image in each direction (a quarter of its area)."""
    h, w = img.shape[:2]
    return img[h // 4 : h - h // 4, w // 4 : w - w // 4]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((as_float(a) - as_float(b)) ** 2))
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def centre_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return psnr(centre(as_float(a)), centre(as_float(b)))


def content_fraction(img: np.ndarray, background=(1.0, 1.0, 1.0), tol: float = 0.1) -> float:
    """Fraction of pixels that differ from the background colour by more than ``tol`` in some channel."""
    diff = np.abs(as_float(img) - np.asarray(background, dtype=np.float64)).max(axis=-1)
    return float((diff > tol).mean())


def assert_not_blank(img: np.ndarray, background=(1.0, 1.0, 1.0), min_fraction: float = 0.2) -> None:
    """The picture shows something: varied pixel values and enough non-background pixels (the demo
    scene covers about 45% of a demo view)."""
    f = as_float(img)
    assert f.std() > 0.05, f"screenshot is (nearly) uniform: std {f.std():.4f}"
    frac = content_fraction(f, background)
    assert frac > min_fraction, f"only {frac:.1%} of the screenshot differs from the background"


def keep_screenshot(path: Path) -> None:
    """Copy a test's screenshot into $RECON_SCREENSHOT_DIR when that is set (for people to look at)."""
    target = os.environ.get("RECON_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / Path(path).name)
