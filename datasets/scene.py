"""What every loader returns: cameras, their images, optional SfM points, one split rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recon.datasets.cameras import Camera

# One held-out split rule for every method: sort views by name, hold out every 8th (0, 8, 16, ...).
HOLDOUT_EVERY = 8


@dataclass
class SceneData:
    """A captured scene, in OpenCV camera-to-world convention, views sorted by name."""

    root: Path
    source: str  # "colmap" | "nerf" | "llff" | "folder" | "demo"
    cameras: list[Camera]
    points: np.ndarray | None = None  # (N, 3) float32 world points for initialisation (SfM)
    point_colors: np.ndarray | None = None  # (N, 3) uint8
    extras: dict = field(default_factory=dict)  # loader-specific facts (e.g. aabb hints, GT geometry)

    def __post_init__(self) -> None:
        self.cameras = sorted(self.cameras, key=lambda c: c.name)

    def split(self, holdout_every: int = HOLDOUT_EVERY) -> tuple[list[int], list[int]]:
        """(train indices, test indices): every ``holdout_every``-th view (0, k, 2k, ...) is held out.
        ``holdout_every <= 0`` trains on everything and holds nothing out."""
        n = len(self.cameras)
        if holdout_every <= 0 or n < 2:
            return list(range(n)), []
        test = list(range(0, n, holdout_every))
        train = [i for i in range(n) if i % holdout_every != 0]
        return train, test

    def camera_centers(self) -> np.ndarray:
        return np.stack([c.center for c in self.cameras])

    def scene_scale(self) -> float:
        """Radius of the camera rig around its centroid, times 1.1 (the 3DGS 'cameras extent')."""
        centers = self.camera_centers()
        radius = np.linalg.norm(centers - centers.mean(0), axis=1).max()
        return float(max(radius, 1e-6) * 1.1)
