"""One camera type for the whole toolkit.

Conventions (every loader converts to these, nothing downstream converts again):
- pose: ``c2w`` is a 4x4 camera-to-world matrix in OpenCV axes (x right, y down, z forward);
- intrinsics: pinhole ``fx, fy, cx, cy`` in pixels of an image ``width`` x ``height``;
- pixel centres: the top-left pixel covers [0, 1]^2, so its centre is (0.5, 0.5). This is COLMAP's
  convention and the one the rasterizers use, so COLMAP / transforms.json intrinsics apply unchanged;
- lens distortion (when present) maps ideal normalised coordinates to distorted ones, COLMAP style.
  Images are undistorted once on load (``recon.datasets.images``); the cameras the trainer sees are pure
  pinhole (``distortion is None``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Parameter names per supported distortion model, in COLMAP's order (after fx, fy, cx, cy).
DISTORTION_MODELS: dict[str, tuple[str, ...]] = {
    "SIMPLE_RADIAL": ("k1",),
    "RADIAL": ("k1", "k2"),
    "OPENCV": ("k1", "k2", "p1", "p2"),
    "FULL_OPENCV": ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"),
    "OPENCV_FISHEYE": ("k1", "k2", "k3", "k4"),
}


def look_at_c2w(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV camera-to-world (x right, y down, z forward) at ``eye`` looking at ``target``, with
    ``up`` pointing up in the image (``up`` must not be parallel to the viewing direction)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


# OpenCV <-> OpenGL camera axes (y and z flipped); the same matrix converts both ways.
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Distortion:
    """Lens distortion in one of :data:`DISTORTION_MODELS`, parameters keyed by name."""

    model: str
    params: dict[str, float]

    def __post_init__(self) -> None:
        if self.model not in DISTORTION_MODELS:
            raise ValueError(f"unsupported distortion model {self.model!r}")

    def is_identity(self) -> bool:
        return all(abs(v) == 0.0 for v in self.params.values())

    def _p(self, name: str) -> float:
        return float(self.params.get(name, 0.0))

    def distort(self, xy: np.ndarray) -> np.ndarray:
        """Ideal normalised image coordinates [..., 2] -> distorted normalised coordinates."""
        x, y = xy[..., 0], xy[..., 1]
        if self.model == "OPENCV_FISHEYE":
            r = np.sqrt(x * x + y * y)
            theta = np.arctan(r)
            t2 = theta * theta
            theta_d = theta * (1 + t2 * (self._p("k1") + t2 * (self._p("k2") + t2 * (self._p("k3") + t2 * self._p("k4")))))
            scale = np.where(r > 1e-12, theta_d / np.maximum(r, 1e-12), 1.0)
            return np.stack([x * scale, y * scale], axis=-1)
        r2 = x * x + y * y
        k1, k2, k3 = self._p("k1"), self._p("k2"), self._p("k3")
        k4, k5, k6 = self._p("k4"), self._p("k5"), self._p("k6")
        radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        p1, p2 = self._p("p1"), self._p("p2")
        dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return np.stack([x * radial + dx, y * radial + dy], axis=-1)

    def undistort(self, xy_distorted: np.ndarray, iterations: int = 20) -> np.ndarray:
        """Inverse of :meth:`distort` by fixed-point iteration (accurate for realistic lenses)."""
        xy = np.array(xy_distorted, dtype=np.float64, copy=True)
        for _ in range(iterations):
            err = self.distort(xy) - xy_distorted
            xy = xy - err
        return xy

    def to_dict(self) -> dict:
        return {"model": self.model, "params": dict(self.params)}


@dataclass
class Camera:
    """A calibrated view: pose, pinhole intrinsics, optional distortion, and where its pixels live."""

    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    c2w: np.ndarray  # (4, 4) float64, OpenCV axes, camera-to-world
    distortion: Distortion | None = None
    image_path: Path | None = None
    mask_path: Path | None = None  # white (>= 128) = keep, black = ignore
    time: float | None = None  # normalised capture time in [0, 1] for dynamic scenes
    camera_id: int = 0  # which physical camera (shared intrinsics) took this view
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.c2w = np.asarray(self.c2w, dtype=np.float64).reshape(4, 4)
        self.width, self.height = int(self.width), int(self.height)
        if self.distortion is not None and self.distortion.is_identity():
            self.distortion = None

    # --- matrices -------------------------------------------------------------------------------
    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def w2c(self) -> np.ndarray:
        R = self.c2w[:3, :3]
        t = self.c2w[:3, 3]
        out = np.eye(4)
        out[:3, :3] = R.T
        out[:3, 3] = -R.T @ t
        return out

    @property
    def center(self) -> np.ndarray:
        return self.c2w[:3, 3].copy()

    # --- derived cameras ------------------------------------------------------------------------
    def scaled(self, factor: float) -> "Camera":
        """The same view at ``1/factor`` resolution (sizes rounded, intrinsics scaled to match).

        With the pixel-centre-at-0.5 convention, scaling the image by s scales fx, fy, cx, cy by the
        exact ratio of the new to the old size per axis."""
        if factor == 1:
            return dataclasses.replace(self)
        w = max(1, int(round(self.width / factor)))
        h = max(1, int(round(self.height / factor)))
        sx, sy = w / self.width, h / self.height
        return dataclasses.replace(
            self, width=w, height=h, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy
        )

    def pinhole(self) -> "Camera":
        """This camera with its distortion dropped (the camera of an undistorted image)."""
        return dataclasses.replace(self, distortion=None)

    # --- geometry -------------------------------------------------------------------------------
    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points [N, 3] -> pixel coordinates [N, 2] (with distortion) and depths [N]."""
        pts = np.asarray(points, dtype=np.float64)
        cam = pts @ self.w2c[:3, :3].T + self.w2c[:3, 3]
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            xy = cam[:, :2] / z[:, None]
        if self.distortion is not None:
            xy = self.distortion.distort(xy)
        uv = np.stack([self.fx * xy[:, 0] + self.cx, self.fy * xy[:, 1] + self.cy], axis=-1)
        return uv, z

    def pixel_rays(self, uv: np.ndarray) -> np.ndarray:
        """Pixel coordinates [N, 2] -> unit ray directions in world space [N, 3] (undistorting)."""
        xy = np.stack([(uv[:, 0] - self.cx) / self.fx, (uv[:, 1] - self.cy) / self.fy], axis=-1)
        if self.distortion is not None:
            xy = self.distortion.undistort(xy)
        d = np.concatenate([xy, np.ones((len(xy), 1))], axis=-1) @ self.c2w[:3, :3].T
        return d / np.linalg.norm(d, axis=-1, keepdims=True)

    def to_dict(self) -> dict:
        """JSON-friendly description (used in run folders and eval reports)."""
        return {
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "fx": self.fx,
            "fy": self.fy,
            "cx": self.cx,
            "cy": self.cy,
            "c2w": self.c2w.tolist(),
            "distortion": None if self.distortion is None else self.distortion.to_dict(),
            "image_path": None if self.image_path is None else str(self.image_path),
            "mask_path": None if self.mask_path is None else str(self.mask_path),
            "time": self.time,
            "camera_id": self.camera_id,
        }
