"""Triangle scenes: a soup of independent triangle splats (Triangle Splatting) and an opaque, connected
triangle mesh trained as splats (Triangle Splatting+). Formulas: shared/notes/rasterizers.md a.5, a.6.

:class:`TriangleScene` (soup; ``N`` triangles, raw parameters):

- ``vertices [N, 3, 3]`` world vertices of each triangle (independent per triangle);
- ``sigmas [N]`` window exponent, activation ``sigma = 0.01 + exp(raw)``;
- ``opacities [N]`` logit opacity; ``sh0 [N, 1, 3]`` / ``shN [N, K-1, 3]`` SH colour at the centroid.

:class:`OpaqueTriangleScene` (shared vertices; ``Nv`` vertices, ``F`` faces):

- parameters, all per vertex: ``vertices [Nv, 3]``, ``weights [Nv]`` (logit ``x_v`` of the opacity weight
  ``w_v = m + (1 - m) sigmoid(x_v)`` with the floor ``m`` raised during training), ``sh0 [Nv, 1, 3]``,
  ``shN [Nv, K-1, 3]`` (SH colour per vertex, evaluated towards the vertex);
- ``faces [F, 3]`` int64 vertex indices (not a parameter: densification rewrites it);
- ``sigma`` the one global window exponent (annealed towards 0: hard edges) and ``weight_floor`` ``m``.
  A face's opacity is the minimum of its vertices' weights; its colour at a pixel is the screen-space
  barycentric interpolation of its vertices' colours.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from recon.rasterizers.reference.triangle import TriangleSettings
from recon.rasterizers.types import RasterSettings, RenderOutput
from recon.scenes.base import SceneModel, point_array, point_rgb, sh_colors
from recon.scenes.gaussians import _knn_scale, rgb_to_sh0

SOUP_PARAMS = ("vertices", "sigmas", "opacities", "sh0", "shN")
OPAQUE_PARAMS = ("vertices", "weights", "sh0", "shN")
SIGMA_OFFSET = 0.01


class _ParamScene(SceneModel):
    """Shared plumbing: one dict of leaf parameters with fixed names and shapes, SH up to ``sh_degree``."""

    names: tuple[str, ...] = ()

    def _shapes(self, params: Mapping[str, torch.Tensor], k: int) -> dict[str, tuple]:
        raise NotImplementedError

    def _set_params(self, params: Mapping[str, torch.Tensor], device: torch.device | None = None, sh_degree: int | None = None) -> None:
        self._require_params(params, self.names)
        sh_degree = self.sh_degree if sh_degree is None else int(sh_degree)
        shapes = self._shapes(params, (sh_degree + 1) ** 2)
        self._install_params(params, {name: shapes[name] for name in self.names}, device)
        self.sh_degree = sh_degree

    def sh_coeffs(self, sh_degree: int | None) -> tuple[torch.Tensor, int]:
        return sh_colors(self.params, self.sh_degree, sh_degree)


class TriangleScene(_ParamScene):
    """A soup of independent triangle splats (module docstring)."""

    names = SOUP_PARAMS

    def __init__(self, params: Mapping[str, torch.Tensor], sh_degree: int = 3, *, triangle_settings: TriangleSettings = TriangleSettings(),
                 backend: str = "auto") -> None:  # fmt: skip
        self.sh_degree = int(sh_degree)
        self.backend = backend
        self.triangle_settings = triangle_settings
        self.up: list[float] = [0.0, 0.0, 1.0]  # world up (for exports); set from the cameras by the method
        self.params: dict[str, torch.nn.Parameter] = {}
        self._set_params(params)

    def _shapes(self, params, k):
        n = params["vertices"].shape[0]
        return {"vertices": (n, 3, 3), "sigmas": (n,), "opacities": (n,), "sh0": (n, 1, 3), "shN": (n, k - 1, 3)}

    @classmethod
    def from_points(
        cls, points: Any, colors: Any = None, *, sh_degree: int = 3, init_opacity: float = 0.28, init_sigma: float = 1.16,
        init_size: float = 2.23, seed: int = 0, triangle_settings: TriangleSettings = TriangleSettings(),
    ) -> "TriangleScene":  # fmt: skip
        """One equilateral triangle per point: vertices at ``init_size * d`` from it along three coplanar unit
        directions 120 degrees apart, randomly rotated (``d`` = RMS distance to the 3 nearest points)."""
        pts = point_array(points)
        n = len(pts)
        rng = np.random.default_rng(seed)
        ang = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
        base = np.stack([np.cos(ang), np.sin(ang), np.zeros(3)], axis=-1)  # [3, 3]
        q = rng.normal(size=(n, 4))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        w, x, y, z = q.T
        rot = np.stack([
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ], axis=-1).reshape(n, 3, 3)  # fmt: skip
        d = _knn_scale(pts) * float(init_size)
        verts = pts[:, None, :] + d[:, None, None] * np.einsum("nij,vj->nvi", rot, base)
        f32 = torch.float32
        params = {
            "vertices": torch.as_tensor(verts, dtype=f32),
            "sigmas": torch.full((n,), math.log(init_sigma - SIGMA_OFFSET), dtype=f32),
            "opacities": torch.full((n,), math.log(init_opacity / (1 - init_opacity)), dtype=f32),
            "sh0": rgb_to_sh0(torch.as_tensor(point_rgb(colors, n), dtype=f32)).reshape(n, 1, 3),
            "shN": torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3, dtype=f32),
        }
        return cls(params, sh_degree=sh_degree, triangle_settings=triangle_settings)

    @property
    def num_primitives(self) -> int:
        return int(self.params["vertices"].shape[0])

    def optimizer_groups(self, config: Any) -> list[dict]:
        return [
            {"name": name, "params": [self.params[name]], "lr": config.initial_lr(name), "eps": 1e-15} for name in self.names
        ]

    def activated(self) -> dict[str, torch.Tensor]:
        p = self.params
        return {
            "vertices": p["vertices"],
            "sigmas": SIGMA_OFFSET + torch.exp(p["sigmas"]),
            "opacities": torch.sigmoid(p["opacities"]),
        }

    def render(self, camera: Any, *, background=None, sh_degree: int | None = None, settings: RasterSettings | None = None,
               render_depth: bool = False, backend: str | None = None) -> RenderOutput:  # fmt: skip
        from recon.rasterizers.triangles import render_triangles

        like = self.params["vertices"]
        viewmat, K, bg = self._camera_inputs(camera, background, like)
        act = self.activated()
        coeffs, degree = self.sh_coeffs(sh_degree)
        out = render_triangles(
            act["vertices"], act["opacities"], act["sigmas"], coeffs, viewmat, K, int(camera.width), int(camera.height),
            sh_degree=degree, background=bg, settings=settings or RasterSettings(), triangle_settings=self.triangle_settings,
            render_depth=render_depth, backend=backend or self.backend,
        )  # fmt: skip
        return self._with_camera_meta(out, camera)

    def state_dict(self) -> dict[str, Any]:
        return {"sh_degree": self.sh_degree, "params": {k: v.detach() for k, v in self.params.items()},
                "triangle_settings": _settings_dict(self.triangle_settings), "up": list(self.up)}  # fmt: skip

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "TriangleScene":
        scene = cls(state["params"], sh_degree=int(state["sh_degree"]),
                    triangle_settings=TriangleSettings(**state.get("triangle_settings", {})))  # fmt: skip
        scene.up = [float(x) for x in state.get("up", scene.up)]
        return scene

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._set_params(state["params"], device=self.params["vertices"].device, sh_degree=int(state["sh_degree"]))

    def to(self, device: str | torch.device) -> "TriangleScene":
        self._set_params(dict(self.params), device=torch.device(device))
        return self

    def export(self, path: str | Path) -> None:
        """A GLB of the soup (three own vertices per triangle, colours of the SH DC term, opacity as alpha)."""
        from recon.export.triangle_mesh import write_scene_glb

        write_scene_glb(self, path)


class OpaqueTriangleScene(_ParamScene):
    """Opaque, connected triangles (Triangle Splatting+): a vertex table + faces (module docstring)."""

    names = OPAQUE_PARAMS

    def __init__(self, params: Mapping[str, torch.Tensor], faces: torch.Tensor, sh_degree: int = 3, *, sigma: float = 1.0,
                 weight_floor: float = 0.1, triangle_settings: TriangleSettings = TriangleSettings(min_inradius=0.0, min_extent=0.0),
                 backend: str = "auto") -> None:  # fmt: skip
        self.sh_degree = int(sh_degree)
        self.backend = backend
        self.sigma = float(sigma)
        self.weight_floor = float(weight_floor)
        self.triangle_settings = triangle_settings
        self.up: list[float] = [0.0, 0.0, 1.0]  # world up (for exports); set from the cameras by the method
        self.params: dict[str, torch.nn.Parameter] = {}
        self._set_params(params)
        self.set_faces(faces)

    def _shapes(self, params, k):
        n = params["vertices"].shape[0]
        return {"vertices": (n, 3), "weights": (n,), "sh0": (n, 1, 3), "shN": (n, k - 1, 3)}

    def set_faces(self, faces: torch.Tensor) -> None:
        faces = torch.as_tensor(faces).to(device=self.params["vertices"].device, dtype=torch.int64).reshape(-1, 3)
        nv = self.params["vertices"].shape[0]
        if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= nv):
            raise ValueError(f"face indices must lie in [0, {nv})")
        self.faces = faces.contiguous()

    @classmethod
    def from_points(
        cls, points: Any, colors: Any = None, *, sh_degree: int = 3, init_weight: float = 0.5, max_edge_factor: float = 8.0,
        max_faces: int = 0, seed: int = 0, triangle_settings: TriangleSettings = TriangleSettings(min_inradius=0.0, min_extent=0.0),
    ) -> "OpaqueTriangleScene":  # fmt: skip
        """Faces of a 3D Delaunay tetrahedralisation of the points (all four faces of every tetrahedron,
        deduplicated; scipy), without faces whose longest edge exceeds ``max_edge_factor`` times the local
        point spacing (RMS distance to the 3 nearest points, the larger of the face's vertices).
        ``max_faces`` > 0 keeps a random subset of that many."""
        from scipy.spatial import Delaunay

        pts = point_array(points)
        n = len(pts)
        if n < 4:
            raise ValueError(f"need at least 4 points for a tetrahedralisation, got {n}")
        tets = Delaunay(pts).simplices
        combos = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
        faces = np.sort(tets[:, combos].reshape(-1, 3), axis=1)
        faces = np.unique(faces, axis=0)
        spacing = _knn_scale(pts)
        v = pts[faces]
        longest = np.linalg.norm(v - v[:, [1, 2, 0]], axis=-1).max(axis=1)
        faces = faces[longest <= max_edge_factor * spacing[faces].max(axis=1)]
        if max_faces and len(faces) > max_faces:
            faces = faces[np.random.default_rng(seed).choice(len(faces), max_faces, replace=False)]
        used = np.unique(faces)
        remap = np.full(n, -1, np.int64)
        remap[used] = np.arange(len(used))
        f32 = torch.float32
        m = len(used)
        params = {
            "vertices": torch.as_tensor(pts[used], dtype=f32),
            "weights": torch.full((m,), math.log(init_weight / (1 - init_weight)), dtype=f32),
            "sh0": rgb_to_sh0(torch.as_tensor(point_rgb(colors, n)[used], dtype=f32)).reshape(m, 1, 3),
            "shN": torch.zeros(m, (sh_degree + 1) ** 2 - 1, 3, dtype=f32),
        }
        return cls(params, torch.as_tensor(remap[faces]), sh_degree=sh_degree, triangle_settings=triangle_settings)

    @property
    def num_primitives(self) -> int:
        return int(self.faces.shape[0])

    @property
    def num_vertices(self) -> int:
        return int(self.params["vertices"].shape[0])

    def optimizer_groups(self, config: Any) -> list[dict]:
        return [
            {"name": name, "params": [self.params[name]], "lr": config.initial_lr(name), "eps": 1e-15} for name in self.names
        ]

    def vertex_weights(self) -> torch.Tensor:
        m = self.weight_floor
        return m + (1.0 - m) * torch.sigmoid(self.params["weights"])

    def face_opacities(self) -> torch.Tensor:
        return self.vertex_weights()[self.faces].amin(dim=1)

    def vertex_colors(self, camera_center: torch.Tensor, sh_degree: int | None = None) -> torch.Tensor:
        """Per-vertex RGB [Nv, 3]: SH towards each vertex from ``camera_center`` (+0.5, clamped >= 0)."""
        from recon.rasterizers.reference.sh import eval_sh

        coeffs, degree = self.sh_coeffs(sh_degree)
        dirs = self.params["vertices"] - camera_center
        return torch.clamp_min(eval_sh(degree, coeffs, dirs) + 0.5, 0.0)

    def render(self, camera: Any, *, background=None, sh_degree: int | None = None, settings: RasterSettings | None = None,
               render_depth: bool = False, backend: str | None = None) -> RenderOutput:  # fmt: skip
        from recon.rasterizers.reference.projection import camera_center
        from recon.rasterizers.triangles import render_triangles

        like = self.params["vertices"]
        viewmat, K, bg = self._camera_inputs(camera, background, like)
        vcol = self.vertex_colors(camera_center(viewmat), sh_degree)
        verts = self.params["vertices"][self.faces]  # [F, 3, 3]
        sigmas = torch.full((self.num_primitives,), self.sigma, dtype=like.dtype, device=like.device)
        out = render_triangles(
            verts, self.face_opacities(), sigmas, vcol[self.faces], viewmat, K, int(camera.width), int(camera.height),
            background=bg, settings=settings or RasterSettings(), triangle_settings=self.triangle_settings,
            render_depth=render_depth, backend=backend or self.backend,
        )  # fmt: skip
        return self._with_camera_meta(out, camera)

    def state_dict(self) -> dict[str, Any]:
        return {
            "sh_degree": self.sh_degree,
            "params": {k: v.detach() for k, v in self.params.items()},
            "faces": self.faces.detach(),
            "sigma": self.sigma,
            "weight_floor": self.weight_floor,
            "triangle_settings": _settings_dict(self.triangle_settings),
            "up": list(self.up),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "OpaqueTriangleScene":
        scene = cls(state["params"], state["faces"], sh_degree=int(state["sh_degree"]), sigma=float(state["sigma"]),
                    weight_floor=float(state["weight_floor"]), triangle_settings=TriangleSettings(**state["triangle_settings"]))  # fmt: skip
        scene.up = [float(x) for x in state.get("up", scene.up)]
        return scene

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._set_params(state["params"], device=self.params["vertices"].device, sh_degree=int(state["sh_degree"]))
        self.set_faces(state["faces"])
        self.sigma = float(state["sigma"])
        self.weight_floor = float(state["weight_floor"])

    def to(self, device: str | torch.device) -> "OpaqueTriangleScene":
        faces = self.faces
        self._set_params(dict(self.params), device=torch.device(device))
        self.set_faces(faces)
        return self

    def export(self, path: str | Path) -> None:
        """The GLB mesh (see :mod:`recon.export.triangle_mesh`)."""
        from recon.export.triangle_mesh import write_scene_glb

        write_scene_glb(self, path)


def _settings_dict(s: TriangleSettings) -> dict[str, Any]:
    return {f: getattr(s, f) for f in TriangleSettings.__dataclass_fields__}


def with_settings(scene: TriangleScene | OpaqueTriangleScene, **changes: Any) -> None:
    """Replace fields of the scene's :class:`TriangleSettings`."""
    scene.triangle_settings = replace(scene.triangle_settings, **changes)


__all__: Sequence[str] = ["TriangleScene", "OpaqueTriangleScene", "SIGMA_OFFSET"]
