"""3D smooth convexes (3D Convex Splatting): parameters, initialisation, optimizer defaults, rendering, export.

Parameters (raw, pre-activation; ``N`` convexes of ``K`` points each; ``S = (sh_degree + 1)^2``):

- ``points [N, K, 3]`` the convex's free 3D points in the world frame (its shape is their 3D hull, its
  screen footprint the smooth indicator of their projected 2D hull, ``shared/notes/rasterizers.md`` a.4);
- ``deltas [N]`` log smoothness (activation ``exp``): large = sharp corners, small = rounded;
- ``sigmas [N]`` log sharpness (activation ``exp``): large = a hard edge, small = a soft falloff;
- ``opacities [N]`` logit opacity (activation ``sigmoid``);
- ``sh0 [N, 1, 3]`` / ``shN [N, S - 1, 3]`` SH colour evaluated at the centroid (as :mod:`.gaussians`).

Initialisation from SfM points (3DCS): ``K`` points on a Fibonacci sphere of radius
``1.2 sqrt(mean squared distance to the 3 nearest neighbours)`` around each point,
``delta = 0.1 / that distance``, ``sigma = 9.5e-4``, opacity 0.1.

Export: a binary PLY with one ``vertex`` per convex (the :meth:`ConvexScene.export` docstring lists the
properties) — the same layout :meth:`ConvexScene.from_ply` reads back.
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
from recon.scenes.gaussians import _knn_scale, rgb_to_sh0

PARAM_NAMES = ("points", "deltas", "sigmas", "opacities", "sh0", "shN")
PLY_COMMENT = (
    "recon convexes: one vertex per convex; px_k py_k pz_k = its K world points (OpenCV/COLMAP world as trained); "
    "delta, sigma, opacity raw (exp, exp, sigmoid); f_dc/f_rest SH at the centroid (3DGS layout, f_rest channel-major)"
)


@dataclass
class ConvexOptimConfig(ScheduledAdamConfig):
    """Per-parameter Adam learning rates of the convex scene (recon defaults; points as Gaussian means).

    ``points`` uses ``points_lr * scene_scale`` decayed log-linearly to ``points_lr_final * scene_scale``."""

    points_lr: float = 1.6e-4
    points_lr_final: float = 1.6e-6
    deltas_lr: float = 5e-3
    sigmas_lr: float = 5e-3
    opacities_lr: float = 5e-2
    sh0_lr: float = 2.5e-3
    shN_lr: float = 2.5e-3 / 20.0
    scene_scale: float = 1.0
    """Multiplies the points learning rates; the method multiplies in the scene extent."""
    eps: float = 1e-15
    betas: tuple[float, float] = (0.9, 0.999)

    SCHEDULED = "points"

    def points_lr_at(self, step: int, total_steps: int) -> float:
        """The points learning rate at ``step`` (:meth:`~ScheduledAdamConfig.scheduled_lr_at`)."""
        return self.scheduled_lr_at(step, total_steps)


def fibonacci_sphere(k: int) -> np.ndarray:
    """``k`` nearly uniform unit vectors [k, 3] (golden-angle spiral)."""
    i = np.arange(k, dtype=np.float64) + 0.5
    z = 1.0 - 2.0 * i / k
    r = np.sqrt(np.maximum(0.0, 1.0 - z * z))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], -1)


class ConvexScene(SceneModel):
    """A set of smooth convexes with ``K`` points each and SH colour up to ``sh_degree``."""

    def __init__(self, params: Mapping[str, torch.Tensor], sh_degree: int = 3, *, depth_law: str = "linear",
                 backend: str = "auto") -> None:  # fmt: skip
        self.sh_degree = int(sh_degree)
        self.depth_law = depth_law
        self.backend = backend
        self.params: dict[str, torch.nn.Parameter] = {}
        self._set_params(params)

    def _set_params(self, params: Mapping[str, torch.Tensor], device: torch.device | None = None, sh_degree: int | None = None) -> None:
        self._require_params(params, PARAM_NAMES)
        sh_degree = self.sh_degree if sh_degree is None else int(sh_degree)
        n, k = params["points"].shape[:2]
        if params["points"].dim() != 3 or not 3 <= k <= 8:
            raise ValueError(f"points must be [N, K, 3] with 3 <= K <= 8, got {tuple(params['points'].shape)}")
        s = (sh_degree + 1) ** 2
        shapes = {"points": (n, k, 3), "deltas": (n,), "sigmas": (n,), "opacities": (n,), "sh0": (n, 1, 3), "shN": (n, s - 1, 3)}
        self._install_params(params, {name: shapes[name] for name in PARAM_NAMES}, device)
        self.sh_degree = sh_degree

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def from_points(
        cls,
        points: np.ndarray | torch.Tensor,
        colors: np.ndarray | torch.Tensor | None = None,
        *,
        k: int = 6,
        sh_degree: int = 3,
        init_opacity: float = 0.1,
        radius_scale: float = 1.2,
        delta_scale: float = 0.1,
        init_sigma: float = 9.5e-4,
        depth_law: str = "linear",
        device: str | torch.device = "cpu",
    ) -> "ConvexScene":
        """One convex per point (3DCS initialisation, see the module docstring); colours uint8 or 0..1."""
        pts = point_array(points)
        n = len(pts)
        rgb = point_rgb(colors, n)
        dist = _knn_scale(pts)  # sqrt(mean squared 3-NN distance)
        offsets = fibonacci_sphere(k)[None] * (radius_scale * dist)[:, None, None]
        f32 = torch.float32
        params = {
            "points": torch.as_tensor(pts[:, None, :] + offsets, dtype=f32),
            "deltas": torch.log(torch.as_tensor(delta_scale / np.maximum(dist, 1e-7), dtype=f32)),
            "sigmas": torch.full((n,), math.log(init_sigma), dtype=f32),
            "opacities": torch.full((n,), math.log(init_opacity / (1.0 - init_opacity)), dtype=f32),
            "sh0": rgb_to_sh0(torch.as_tensor(rgb, dtype=f32)).reshape(n, 1, 3),
            "shN": torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3, dtype=f32),
        }
        return cls({name: v.to(device) for name, v in params.items()}, sh_degree=sh_degree, depth_law=depth_law)

    @classmethod
    def random_in_bounds(cls, bounds_min: Sequence[float], bounds_max: Sequence[float], n: int, seed: int = 0, **kw) -> "ConvexScene":
        """``n`` convexes at uniform random points of the box with random colours (seeded), then :meth:`from_points`."""
        pts, rgb = random_points(bounds_min, bounds_max, n, seed)
        return cls.from_points(pts, rgb, **kw)

    # --- SceneModel -------------------------------------------------------------------------------
    @property
    def num_primitives(self) -> int:
        return int(self.params["points"].shape[0])

    @property
    def points_per_convex(self) -> int:
        return int(self.params["points"].shape[1])

    def __len__(self) -> int:
        return self.num_primitives

    def optimizer_groups(self, config: ConvexOptimConfig | None = None) -> list[dict]:
        return (ConvexOptimConfig() if config is None else config).adam_groups(self.params, PARAM_NAMES)

    def make_optimizers(self, config: ConvexOptimConfig | None = None) -> dict[str, torch.optim.Optimizer]:
        return super().make_optimizers(ConvexOptimConfig() if config is None else config)

    def activated(self, sh_degree: int | None = None) -> dict[str, Any]:
        """Post-activation tensors as the rasterizer takes them (differentiable)."""
        p = self.params
        colors, degree = sh_colors(p, self.sh_degree, sh_degree)
        return {
            "points": p["points"],
            "deltas": torch.exp(p["deltas"]),
            "sigmas": torch.exp(p["sigmas"]),
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
        """Render one pinhole camera; ``out.meta`` gets ``width``, ``height``, ``n_cameras = 1`` added next to
        the rasterizer's (``means2d``, ``sigmas``, ``radii``, ...)."""
        from recon.rasterizers.convexes import render_convexes

        viewmat, K, background = self._camera_inputs(camera, background, self.params["points"])
        act = self.activated(sh_degree)
        out = render_convexes(
            act["points"], act["deltas"], act["sigmas"], act["opacities"], act["colors"], viewmat, K,
            int(camera.width), int(camera.height), sh_degree=act["sh_degree"], background=background,
            settings=RasterSettings() if settings is None else settings, render_depth=render_depth,
            depth_law=self.depth_law, backend=self.backend if backend is None else backend,
        )  # fmt: skip
        return self._with_camera_meta(out, camera)

    def state_dict(self) -> dict[str, Any]:
        """``{"sh_degree", "depth_law", "params": {name: tensor}}`` (detached)."""
        return {"sh_degree": self.sh_degree, "depth_law": self.depth_law, "params": {k: v.detach() for k, v in self.params.items()}}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "ConvexScene":
        return cls(state["params"], sh_degree=int(state["sh_degree"]), depth_law=str(state.get("depth_law", "linear")))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        device = self.params["points"].device if self.params else None
        self.depth_law = str(state.get("depth_law", self.depth_law))
        self._set_params(state["params"], device=device, sh_degree=int(state["sh_degree"]))

    def export(self, path: str | Path) -> None:
        """Binary little-endian PLY, one ``vertex`` per convex, every property ``float``, in this order:
        ``x y z`` (centroid), ``px_k py_k pz_k`` for k < K (the points), ``delta sigma opacity`` (raw: log,
        log, logit), ``f_dc_0..2``, ``f_rest_*`` (3DGS layout). Written atomically."""
        from recon.utils.atomic import atomic_path

        p = {k: v.detach().float().cpu() for k, v in self.params.items()}
        n, k = p["points"].shape[:2]
        names = ["x", "y", "z"] + [f"p{a}_{i}" for i in range(k) for a in "xyz"] + ["delta", "sigma", "opacity"]
        names += [f"f_dc_{c}" for c in range(3)] + [f"f_rest_{i}" for i in range(p["shN"].shape[1] * 3)]
        cols = [p["points"].mean(1), p["points"].reshape(n, 3 * k), p["deltas"][:, None], p["sigmas"][:, None],
                p["opacities"][:, None], p["sh0"].reshape(n, 3), p["shN"].transpose(1, 2).reshape(n, -1)]  # fmt: skip
        data = torch.cat(cols, 1).numpy().astype("<f4")
        header = ["ply", "format binary_little_endian 1.0", f"comment {PLY_COMMENT}", f"comment sh_degree {self.sh_degree}",
                  f"comment depth_law {self.depth_law}", f"element vertex {n}"] + [f"property float {a}" for a in names]  # fmt: skip
        header.append("end_header")
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(("\n".join(header) + "\n").encode("ascii"))
                fh.write(data.tobytes())

    @classmethod
    def from_ply(cls, path: str | Path, *, device: str | torch.device = "cpu") -> "ConvexScene":
        """Read a file written by :meth:`export`."""
        from recon.errors import InputError
        from recon.utils.ply import read_ply_header, read_ply_vertices

        v = read_ply_vertices(path)
        k = sum(1 for name in v if name.startswith("px_"))
        if k < 3 or any(f"p{a}_{i}" not in v for i in range(k) for a in "xyz"):
            raise InputError(path, "not a recon convex PLY (needs px_k/py_k/pz_k properties)")
        n_rest = sum(1 for name in v if name.startswith("f_rest_"))
        degree = math.isqrt(n_rest // 3 + 1) - 1
        law = "linear"
        for c in read_ply_header(path).get("comments", []):
            if c.startswith("depth_law "):
                law = c.split()[1]
        t = lambda name: torch.from_numpy(np.array(v[name], np.float32))  # noqa: E731
        n = len(t("delta"))
        pts = torch.stack([torch.stack([t(f"p{a}_{i}") for a in "xyz"], -1) for i in range(k)], 1)
        rest = torch.stack([t(f"f_rest_{i}") for i in range(n_rest)], -1).reshape(n, 3, -1).transpose(1, 2) if n_rest else torch.zeros(n, 0, 3)
        params = {"points": pts, "deltas": t("delta"), "sigmas": t("sigma"), "opacities": t("opacity"),
                  "sh0": torch.stack([t(f"f_dc_{c}") for c in range(3)], -1)[:, None], "shN": rest}  # fmt: skip
        return cls({name: x.to(device) for name, x in params.items()}, sh_degree=degree, depth_law=law)

    def to(self, device: str | torch.device) -> "ConvexScene":
        self._set_params(dict(self.params), device=torch.device(device))
        return self
