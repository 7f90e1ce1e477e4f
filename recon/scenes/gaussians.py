"""3D Gaussian splats (3DGS): parameters, initialisation, optimizer defaults, rendering, export.

Parameters (raw, pre-activation; ``N`` Gaussians; ``K = (sh_degree + 1)^2``):

- ``means [N, 3]`` world-space centres (OpenCV/COLMAP world, as the cameras);
- ``quats [N, 4]`` rotation quaternion (w, x, y, z), normalised inside the rasterizer;
- ``scales [N, 3]`` log standard deviations along the rotated axes (activation ``exp``);
- ``opacities [N]`` logit opacity (activation ``sigmoid``);
- ``sh0 [N, 1, 3]`` degree-0 SH coefficient (colour = SH_C0 * sh0 + 0.5 for a degree-0 scene);
- ``shN [N, K - 1, 3]`` higher SH bands (``[N, 0, 3]`` when the maximum degree is 0).

Learning-rate defaults follow 3DGS / gsplat (see :class:`GaussianOptimConfig`). The maximum SH degree is
fixed at construction; the *active* degree is chosen per render by the trainer (``sh_degree=``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from recon.rasterizers.types import RasterSettings, RenderOutput
from recon.scenes.base import SceneModel, ScheduledAdamConfig, point_array, point_rgb, random_points, sh_colors

SH_C0 = 0.28209479177387814
PARAM_NAMES = ("means", "quats", "scales", "opacities", "sh0", "shN")


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """Colour in [0, 1] -> the degree-0 SH coefficient that renders it (inverse of ``SH_C0*c + 0.5``)."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    return sh0 * SH_C0 + 0.5


@dataclass
class GaussianOptimConfig(ScheduledAdamConfig):
    """Per-parameter Adam learning rates (3DGS / gsplat defaults) and the means schedule.

    ``means`` uses ``means_lr * scene_scale`` decayed exponentially to ``means_lr_final * scene_scale``
    over the run (:meth:`means_lr_at`); the other rates are constant. Adam ``eps = 1e-15`` as gsplat."""

    means_lr: float = 1.6e-4
    means_lr_final: float = 1.6e-6
    scales_lr: float = 5e-3
    quats_lr: float = 1e-3
    opacities_lr: float = 5e-2
    sh0_lr: float = 2.5e-3
    shN_lr: float = 2.5e-3 / 20.0
    scene_scale: float = 1.0
    """Multiplies the means learning rates; the trainer multiplies in the scene extent (camera rig
    radius x 1.1, as 3DGS), so 1.0 means 'the 3DGS default for this scene'."""
    eps: float = 1e-15
    betas: tuple[float, float] = (0.9, 0.999)

    SCHEDULED = "means"

    def means_lr_at(self, step: int, total_steps: int) -> float:
        """The means learning rate at ``step`` (:meth:`~ScheduledAdamConfig.scheduled_lr_at`)."""
        return self.scheduled_lr_at(step, total_steps)


def _knn_scale(points: np.ndarray, k: int = 3) -> np.ndarray:
    """sqrt(mean squared distance to the k nearest other points) per point (3DGS initial scale)."""
    try:
        from scipy.spatial import cKDTree  # explicit dependency: scipy (pyproject "dependencies")
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ImportError("GaussianScene.from_points needs scipy (pip install scipy)") from exc

    n = len(points)
    if n == 0:
        return np.zeros((0,), np.float64)
    if n == 1:
        return np.full((1,), 0.01)
    kk = min(k, n - 1)
    dist, _ = cKDTree(points).query(points, k=kk + 1)
    dist = np.asarray(dist).reshape(n, kk + 1)[:, 1:]  # drop the point itself
    d2 = np.maximum((dist**2).mean(axis=1), 1e-7)
    return np.sqrt(d2)


class GaussianScene(SceneModel):
    """A set of 3D Gaussians with SH colour up to ``sh_degree`` (≤ 3 by default convention)."""

    def __init__(self, params: Mapping[str, torch.Tensor], sh_degree: int = 3, *, backend: str = "auto") -> None:
        self.sh_degree = int(sh_degree)
        self.backend = backend
        self.params: dict[str, torch.nn.Parameter] = {}
        self._set_params(params)

    # --- construction -----------------------------------------------------------------------------
    def _set_params(
        self, params: Mapping[str, torch.Tensor], device: torch.device | None = None, sh_degree: int | None = None
    ) -> None:
        self._require_params(params, PARAM_NAMES)
        sh_degree = self.sh_degree if sh_degree is None else int(sh_degree)
        n = params["means"].shape[0]
        k = (sh_degree + 1) ** 2
        shapes = {
            "means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,),
            "sh0": (n, 1, 3), "shN": (n, k - 1, 3),
        }
        self._install_params(params, {name: shapes[name] for name in PARAM_NAMES}, device)
        self.sh_degree = sh_degree

    @classmethod
    def from_points(
        cls,
        points: np.ndarray | torch.Tensor,
        colors: np.ndarray | torch.Tensor | None = None,
        *,
        sh_degree: int = 3,
        init_opacity: float = 0.1,
        init_scale: float = 1.0,
        device: str | torch.device = "cpu",
    ) -> "GaussianScene":
        """Gaussians at ``points [N, 3]`` with ``colors [N, 3]`` (uint8 0..255 or float 0..1; grey when
        None). Isotropic scale = ``init_scale`` × sqrt(mean squared distance to the 3 nearest
        neighbours) (scipy cKDTree), identity rotations, opacity ``init_opacity``, higher SH zero."""
        pts = point_array(points)
        n = len(pts)
        rgb = point_rgb(colors, n)
        dist = _knn_scale(pts) * float(init_scale)
        f32 = torch.float32
        means = torch.as_tensor(pts, dtype=f32)
        scales = torch.log(torch.as_tensor(dist, dtype=f32)).unsqueeze(-1).repeat(1, 3)
        quats = torch.zeros(n, 4, dtype=f32)
        quats[:, 0] = 1.0
        opacities = torch.full((n,), math.log(init_opacity / (1.0 - init_opacity)), dtype=f32)
        sh0 = rgb_to_sh0(torch.as_tensor(rgb, dtype=f32)).reshape(n, 1, 3)
        shN = torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3, dtype=f32)
        params = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "sh0": sh0, "shN": shN}
        scene = cls({k: v.to(device) for k, v in params.items()}, sh_degree=sh_degree)
        return scene

    @classmethod
    def random_in_bounds(
        cls,
        bounds_min: Sequence[float] | np.ndarray,
        bounds_max: Sequence[float] | np.ndarray,
        n: int,
        seed: int = 0,
        *,
        sh_degree: int = 3,
        init_opacity: float = 0.1,
        init_scale: float = 1.0,
        device: str | torch.device = "cpu",
    ) -> "GaussianScene":
        """``n`` Gaussians uniformly in the box [bounds_min, bounds_max] with random colours (seeded,
        independent of the global RNG), then as :meth:`from_points`."""
        pts, rgb = random_points(bounds_min, bounds_max, n, seed)
        return cls.from_points(
            pts, rgb, sh_degree=sh_degree, init_opacity=init_opacity, init_scale=init_scale, device=device
        )

    @classmethod
    def from_scene_data(
        cls,
        data: Any,
        *,
        sh_degree: int = 3,
        init_opacity: float = 0.1,
        init_scale: float = 1.0,
        random_points: int = 100_000,
        random_extent: float = 3.0,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> "GaussianScene":
        """From a :class:`recon.datasets.scene.SceneData`: its SfM points when present, otherwise
        ``random_points`` in a cube of half-size ``random_extent × scene_scale`` around the cameras'
        centroid (gsplat's random init)."""
        if data.points is not None and len(data.points) > 0:
            return cls.from_points(
                data.points, data.point_colors, sh_degree=sh_degree, init_opacity=init_opacity,
                init_scale=init_scale, device=device,
            )
        centre = data.camera_centers().mean(0)
        half = random_extent * data.scene_scale()
        return cls.random_in_bounds(
            centre - half, centre + half, random_points, seed, sh_degree=sh_degree,
            init_opacity=init_opacity, init_scale=init_scale, device=device,
        )

    @classmethod
    def from_ply(cls, path: str | Path, *, device: str | torch.device = "cpu") -> "GaussianScene":
        from recon.export.ply import read_ply

        params = read_ply(path)
        degree = math.isqrt(params["shN"].shape[1] + 1) - 1
        return cls({k: v.to(device) for k, v in params.items()}, sh_degree=degree)

    @classmethod
    def from_file(cls, path: str | Path, *, device: str | torch.device = "cpu") -> "GaussianScene":
        """Gaussians from any splat file recon reads (3DGS PLY, SuperSplat compressed PLY, SPZ, .splat,
        glTF ``KHR_gaussian_splatting``; detected from the content), in recon's world frame."""
        from recon.export.formats import read_splats

        params = read_splats(path)
        degree = math.isqrt(params["shN"].shape[1] + 1) - 1
        return cls({k: v.to(device) for k, v in params.items()}, sh_degree=degree)

    # --- SceneModel -------------------------------------------------------------------------------
    @property
    def num_primitives(self) -> int:
        return int(self.params["means"].shape[0])

    def __len__(self) -> int:
        return self.num_primitives

    def optimizer_groups(self, config: GaussianOptimConfig | None = None) -> list[dict]:
        return (GaussianOptimConfig() if config is None else config).adam_groups(self.params, PARAM_NAMES)

    def make_optimizers(self, config: GaussianOptimConfig | None = None) -> dict[str, torch.optim.Optimizer]:
        return super().make_optimizers(GaussianOptimConfig() if config is None else config)

    def activated(self, sh_degree: int | None = None) -> dict[str, torch.Tensor]:
        """Post-activation tensors as the rasterizer takes them (differentiable)."""
        p = self.params
        colors, degree = sh_colors(p, self.sh_degree, sh_degree)  # [N, K, 3]
        return {
            "means": p["means"],
            "quats": p["quats"],
            "scales": torch.exp(p["scales"]),
            "opacities": torch.sigmoid(p["opacities"]),
            "colors": colors,
            "sh_degree": degree,
        }

    def render(
        self,
        camera: Any,
        *,
        background: torch.Tensor | Sequence[float] | None = None,
        sh_degree: int | None = None,
        settings: RasterSettings | None = None,
        render_depth: bool = False,
        backend: str | None = None,
    ) -> RenderOutput:
        """Render one pinhole camera (``camera.w2c`` is the view matrix, ``camera.K`` the intrinsics).

        ``sh_degree``: active SH degree (None = the scene's maximum; values above it are clamped).
        ``out.meta`` gets ``width``, ``height`` and ``n_cameras = 1`` added (for the densification
        strategy) next to what the rasterizer returns (``means2d``, ``radii``, ...)."""
        from recon.rasterizers import render_gaussians

        viewmat, K, background = self._camera_inputs(camera, background, self.params["means"])
        act = self.activated(sh_degree)
        out = render_gaussians(
            act["means"], act["quats"], act["scales"], act["opacities"], act["colors"],
            viewmat, K, int(camera.width), int(camera.height),
            sh_degree=act["sh_degree"],
            background=background,
            settings=RasterSettings() if settings is None else settings,
            render_depth=render_depth,
            backend=self.backend if backend is None else backend,
        )
        return self._with_camera_meta(out, camera)

    def state_dict(self) -> dict[str, Any]:
        """``{"sh_degree": int, "params": {name: tensor}}`` (detached; shares storage with the params)."""
        return {"sh_degree": self.sh_degree, "params": {k: v.detach() for k, v in self.params.items()}}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "GaussianScene":
        """A scene rebuilt from :meth:`state_dict` (e.g. a checkpoint's ``scene`` entry)."""
        return cls(state["params"], sh_degree=int(state["sh_degree"]))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace every parameter (the count may change) keeping ``self.params`` the same dict object
        and the current device. Rebuild the optimizers afterwards (:meth:`make_optimizers`)."""
        device = self.params["means"].device if self.params else None
        self._set_params(state["params"], device=device, sh_degree=int(state["sh_degree"]))

    def export(self, path: str | Path) -> None:
        """Write the standard 3DGS PLY (see :mod:`recon.export.ply`)."""
        from recon.export.ply import write_ply

        write_ply(path, self.params)

    def to(self, device: str | torch.device) -> "GaussianScene":
        """Move the parameters (before creating optimizers). Returns self."""
        self._set_params(dict(self.params), device=torch.device(device))
        return self
