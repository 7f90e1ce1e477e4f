"""3D Gaussian splatting (3DGS / gsplat defaults) as a recon method."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from recon.errors import InputError
from recon.methods.base import SplatMethod
from recon.scenes.gaussians import GaussianScene


def initial_points(cfg: Any, data: Any, device: str):
    """SfM points and colours for initialisation ((None, None) when the method should start random).

    Scenes without points are triangulated with their known poses first (``--init auto|points``)."""
    sd = data.scene_data
    points, colors = sd.points, sd.point_colors
    if cfg.init in ("auto", "points") and (points is None or len(points) == 0) and sd.source != "demo":
        from recon.datasets.sfm import triangulate_known_poses

        # 1000 px keeps SIFT + matching to minutes on a CPU; the GPU default matches 3DGS's 1600.
        points, colors = triangulate_known_poses(sd, max_image_size=1600 if device == "cuda" else 1000, progress=cfg.progress)
    if cfg.init == "points" and (points is None or len(points) == 0):
        raise InputError(sd.root, "--init points was asked for, but the scene has no SfM points")
    if cfg.init == "random" or points is None or len(points) == 0:
        return None, None
    return points, colors


def random_init_bounds(data: Any) -> tuple[list[float], list[float]]:
    """The box random initialisation fills: the demo's bounds, else a box around the cameras' centroid."""
    sd = data.scene_data
    bounds = sd.extras.get("demo", {}).get("bounds")
    if bounds is None:
        centers = sd.camera_centers()
        mid = centers.mean(0)
        r = sd.scene_scale()
        bounds = [(mid - r).tolist(), (mid + r).tolist()]
    return bounds[0], bounds[1]


def points_or_random(cfg: Any, data: Any, device: str, n_random: int):
    """:func:`initial_points`, or ``n_random`` points with random colours in :func:`random_init_bounds`
    (seeded by ``cfg.seed``) when the method should start random."""
    points, colors = initial_points(cfg, data, device)
    if points is None:
        import numpy as np

        lo, hi = (np.asarray(b, dtype=np.float64) for b in random_init_bounds(data))
        rng = np.random.default_rng(cfg.seed)
        points = lo + (hi - lo) * rng.random((int(n_random), 3))
        colors = rng.random((int(n_random), 3))
    return points, colors


class GaussianMethod(SplatMethod):
    name = "gaussians"
    scene_class = GaussianScene

    def __init__(self, cfg, *, steps, scene_scale, device, background) -> None:
        super().__init__(cfg, steps=steps, scene_scale=scene_scale, device=device, background=background)
        # Compress the 3DGS schedules for short runs (see recon.config).
        self._strategy = cfg.resolved_strategy(steps)
        self.optim = replace(cfg.optim, scene_scale=cfg.optim.scene_scale * scene_scale)

    @property
    def strategy(self):
        return self._strategy

    def initial_scene(self, data):
        cfg = self.cfg
        points, colors = initial_points(cfg, data, self.device)
        if points is not None:
            scene = GaussianScene.from_points(points, colors, sh_degree=cfg.sh_degree, init_opacity=cfg.init_opacity)
        else:
            lo, hi = random_init_bounds(data)
            scene = GaussianScene.random_in_bounds(
                lo, hi, cfg.random_init_points, seed=cfg.seed, sh_degree=cfg.sh_degree, init_opacity=cfg.init_opacity
            )
        return scene.to(self.device)

    def make_optimizers(self, scene):
        return scene.make_optimizers(self.optim)

    def schedule(self, scene, optimizers, step):
        self.optim.apply_schedule(optimizers, step, self.steps)
