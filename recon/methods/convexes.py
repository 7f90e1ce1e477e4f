"""3D smooth convexes (3D Convex Splatting) as a recon method: ``recon-train --method convexes``.

Everything but the scene, its optimizer and its strategy is shared with the Gaussians (trainer,
photometric loss, SH schedule, checkpoints, eval JSON, viewers). The ``convexes`` section of the config
(:class:`ConvexConfig`) holds the shape constants, learning rates and densification schedule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import Literal

from recon.methods.base import SplatMethod
from recon.methods.gaussians import initial_points, random_init_bounds
from recon.scenes.convexes import ConvexOptimConfig, ConvexScene
from recon.strategy.convex import ConvexStrategy


@dataclass
class ConvexConfig:
    """3D smooth convexes (``--method convexes``): shape, initialisation, optimiser and densification."""

    points_per_convex: int = 6
    """K points per convex (3..8; 3DCS uses 6)."""
    depth_law: Literal["linear", "sqrt", "none"] = "linear"
    """How the footprint's smoothness and sharpness scale with view depth: 'linear' (the 3DCS code, which
    the published numbers come from), 'sqrt' (the paper's ablation favourite) or 'none'."""
    init_opacity: float = 0.1
    init_sigma: float = 9.5e-4
    init_radius_scale: float = 1.2
    """Initial convex radius = this x sqrt(mean squared distance to the 3 nearest SfM points)."""
    init_delta_scale: float = 0.1
    """Initial smoothness = this / that distance."""
    schedule_reference_steps: int = 15_000
    """Runs shorter than this compress the densification schedule by steps / this (with the floors the
    Gaussians use); the 3DCS schedule (densify 500-9000 every 200, reset every 3000) is kept from here up."""
    optim: ConvexOptimConfig = field(default_factory=ConvexOptimConfig)
    strategy: ConvexStrategy = field(default_factory=ConvexStrategy)

    def resolved_strategy(self, steps: int, compress: bool = True) -> ConvexStrategy:
        from recon.config import SHORT_RUN_FLOORS

        k = min(1.0, steps / self.schedule_reference_steps) if compress else 1.0
        if k >= 1.0:
            return self.strategy
        scaled = self.strategy.scaled(k)
        floors = {name: max(getattr(scaled, name), floor) for name, floor in SHORT_RUN_FLOORS.items() if hasattr(scaled, name)}
        return dataclasses.replace(scaled, **floors)


class ConvexMethod(SplatMethod):
    name = "convexes"
    scene_class = ConvexScene

    def __init__(self, cfg, *, steps, scene_scale, device, background) -> None:
        super().__init__(cfg, steps=steps, scene_scale=scene_scale, device=device, background=background)
        self.ccfg: ConvexConfig = cfg.convexes
        self._strategy = self.ccfg.resolved_strategy(steps, cfg.compress_schedules)
        self.optim = replace(self.ccfg.optim, scene_scale=self.ccfg.optim.scene_scale * scene_scale)

    @property
    def strategy(self):
        return self._strategy

    def initial_scene(self, data):
        cfg, c = self.cfg, self.ccfg
        kw = dict(k=c.points_per_convex, sh_degree=cfg.sh_degree, init_opacity=c.init_opacity, radius_scale=c.init_radius_scale,
                  delta_scale=c.init_delta_scale, init_sigma=c.init_sigma, depth_law=c.depth_law)  # fmt: skip
        points, colors = initial_points(cfg, data, self.device)
        if points is not None:
            scene = ConvexScene.from_points(points, colors, **kw)
        else:
            lo, hi = random_init_bounds(data)
            scene = ConvexScene.random_in_bounds(lo, hi, cfg.random_init_points, seed=cfg.seed, **kw)
        return scene.to(self.device)

    def make_optimizers(self, scene):
        return scene.make_optimizers(self.optim)

    def schedule(self, scene, optimizers, step):
        self.optim.apply_schedule(optimizers, step, self.steps)

    def export(self, scene, run_dir):
        path = run_dir / "export" / "convexes.ply"
        scene.export(path)
        return {"convex_ply": path}
