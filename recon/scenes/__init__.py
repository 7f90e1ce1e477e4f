"""Scene representations. ``SCENES`` maps a config name to its class."""

from __future__ import annotations

from recon.scenes.base import SceneModel
from recon.scenes.convexes import ConvexScene
from recon.scenes.gaussians import GaussianOptimConfig, GaussianScene
from recon.scenes.surface import SurfaceScene
from recon.scenes.triangles import OpaqueTriangleScene, TriangleScene

SCENES: dict[str, type[SceneModel]] = {"gaussians": GaussianScene, "surface": SurfaceScene, "convexes": ConvexScene,
                                     "triangles": TriangleScene, "opaque-triangles": OpaqueTriangleScene}

__all__ = ["SCENES", "SceneModel", "GaussianScene", "GaussianOptimConfig", "SurfaceScene", "ConvexScene", "TriangleScene", "OpaqueTriangleScene"]
