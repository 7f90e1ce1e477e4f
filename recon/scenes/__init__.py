"""Scene representations. ``SCENES`` maps a config name to its class."""

from __future__ import annotations

from recon.scenes.base import SceneModel
from recon.scenes.gaussians import GaussianOptimConfig, GaussianScene

SCENES: dict[str, type[SceneModel]] = {"gaussians": GaussianScene}

__all__ = ["SCENES", "SceneModel", "GaussianScene", "GaussianOptimConfig"]
