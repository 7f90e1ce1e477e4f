"""Neural implicit surface (NeuS on a multiresolution hash grid, as in NeuS2): the ``surface`` scene.

Normalised space: the scene's box (``center`` +- ``half_size``, a cube so distances stay isotropic) maps
to the unit cube ``[0, 1]^3``, where the hash grid, the occupancy grid, rays and the SDF live
(``x_unit = (x_world - center) / (2 half_size) + 0.5``; SDF values are in unit-cube units).

Field (notes/surfaces_4d_export.md 1.2-1.4):
- SDF MLP on ``[p, hash(x)]`` (``p = 2 x - 1``), Softplus(beta=100) hidden layers, outputs the SDF and a
  feature vector. Geometric initialisation (first layer sees only ``p``, last layer weights
  ``sqrt(pi)/sqrt(hidden)``, bias ``-r``) starts it as the SDF of a sphere of radius ``init_radius``;
- normals (and the Eikonal term) from 4-tap tetrahedral finite differences with a step tied to the
  finest active hash level: first-order autograd only, so every hash-grid backend works;
- colour MLP on ``[p, normal, SH(view direction), feature]``, sigmoid output;
- NeuS' inverse standard deviation ``s = exp(10 v)`` with one learnable ``v`` (init 0.3);
- background: a small MLP on the ray direction (unmasked captures: what rays see after leaving the
  box), or a fixed colour (masked / white-background data).

The occupancy grid (:class:`recon.surfaces.occupancy.OccupancyGrid`) is part of the scene: rendering needs
it, and it is saved with the parameters. ``num_primitives`` reports its occupied cells.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from recon.rasterizers.hashgrid import HashGridConfig, HashGridEncoding
from recon.rasterizers.reference.sh import sh_basis
from recon.rasterizers.types import RenderOutput
from recon.scenes.base import SceneModel
from recon.surfaces.neus import accumulate, annealed_cos, endpoint_alpha, neus_alpha, weights_from_alpha
from recon.surfaces.occupancy import OccupancyGrid, PackedSamples, nerfacc_available
from recon.surfaces.rays import image_rays

# Tetrahedron taps for finite-difference gradients: sum_i k_i k_i^T = 4 I.
_TAPS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])
DIR_SH_DEGREE = 3
BACKGROUND_SH_DEGREE = 2


def _mlp(n_in: int, hidden: int, layers: int, n_out: int, activation: Callable[[], nn.Module]) -> nn.Sequential:
    mods: list[nn.Module] = []
    width = n_in
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), activation()]
        width = hidden
    mods.append(nn.Linear(width, n_out))
    return nn.Sequential(*mods)


def _geometric_init(net: nn.Sequential, n_pos: int, radius: float) -> None:
    """SAL/IGR initialisation: the network starts as ``|p| - radius`` (first input ``n_pos`` columns = p)."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for i, lin in enumerate(linears):
            out_dim, in_dim = lin.weight.shape
            if i == len(linears) - 1:
                nn.init.normal_(lin.weight, mean=math.sqrt(math.pi) / math.sqrt(in_dim), std=1e-4)
                nn.init.constant_(lin.bias, -radius)
                lin.weight[1:].normal_(0.0, 1e-3)  # feature outputs: small, not part of the sphere
                lin.bias[1:].zero_()
            else:
                nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0) / math.sqrt(out_dim))
                nn.init.zeros_(lin.bias)
                if i == 0:
                    lin.weight[:, n_pos:].zero_()  # the encoding starts silent; it learns the detail


class SurfaceScene(SceneModel):
    def __init__(
        self,
        *,
        center=(0.0, 0.0, 0.0),
        half_size: float = 1.0,
        grid: HashGridConfig | dict | None = None,
        sdf_hidden: int = 64,
        sdf_layers: int = 1,
        feature_dim: int = 15,
        color_hidden: int = 64,
        color_layers: int = 2,
        init_radius: float = 0.25,
        init_variance: float = 0.3,
        background: str = "mlp",
        background_color=(0.0, 0.0, 0.0),
        occupancy_resolution: int = 64,
        up=(0.0, 0.0, 1.0),
        seed: int = 0,
        grid_backend: str = "auto",
        object_masks: bool = False,
        to_original: list | None = None,
    ) -> None:
        if background not in ("mlp", "color"):
            raise ValueError(f"background must be 'mlp' or 'color', got {background!r}")
        if half_size <= 0:
            raise ValueError(f"half_size must be > 0, got {half_size}")
        grid = HashGridConfig(**grid) if isinstance(grid, dict) else (grid or HashGridConfig())
        self.spec = {
            "center": [float(c) for c in center], "half_size": float(half_size), "grid": _grid_dict(grid),
            "sdf_hidden": int(sdf_hidden), "sdf_layers": int(sdf_layers), "feature_dim": int(feature_dim),
            "color_hidden": int(color_hidden), "color_layers": int(color_layers), "init_radius": float(init_radius),
            "init_variance": float(init_variance), "background": background,
            "background_color": [float(c) for c in background_color], "occupancy_resolution": int(occupancy_resolution),
            "up": [float(u) for u in up], "seed": int(seed), "grid_backend": grid_backend,
            # facts about the training data the method needs after a resume (no data at load time)
            "object_masks": bool(object_masks),
            "to_original": None if to_original is None else [[float(v) for v in row] for row in to_original],
        }
        self.center = torch.tensor(self.spec["center"], dtype=torch.float32)
        self.half_size = float(half_size)
        softplus = lambda: nn.Softplus(beta=100.0)  # noqa: E731 - smooth ReLU keeps normals continuous
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG stream
            torch.manual_seed(seed)
            self.encoding = HashGridEncoding(grid, backend=grid_backend, seed=seed)
            sdf_net = _mlp(3 + self.encoding.output_dim, sdf_hidden, sdf_layers, 1 + feature_dim, softplus)
            # radius in p = 2x - 1 units; the network output is halved to unit-cube units below
            _geometric_init(sdf_net, 3, 2.0 * init_radius)
            n_dir = (DIR_SH_DEGREE + 1) ** 2
            color_net = _mlp(3 + 3 + n_dir + feature_dim, color_hidden, color_layers, 3, nn.ReLU)
            self.modules = nn.ModuleDict({"encoding": self.encoding, "sdf": sdf_net, "color": color_net})
            if background == "mlp":
                self.modules["background"] = _mlp((BACKGROUND_SH_DEGREE + 1) ** 2, 32, 1, 3, nn.ReLU)
        self.variance = nn.Parameter(torch.tensor(float(init_variance)))
        self.background_color = torch.tensor(self.spec["background_color"], dtype=torch.float32)
        self.params = {name.replace(".", "/"): p for name, p in self.modules.named_parameters()}
        self.params["variance"] = self.variance
        self.occupancy = OccupancyGrid(occupancy_resolution)
        # Rendering settings the method keeps current (saved, so a loaded scene renders as trained).
        self.render_step = math.sqrt(3.0) / 256
        self.chunk = 8192

    # --- device -----------------------------------------------------------------------------------
    def to(self, device) -> "SurfaceScene":
        self.modules.to(device)
        self.variance.data = self.variance.data.to(device)
        self.center = self.center.to(device)
        self.background_color = self.background_color.to(device)
        self.occupancy.to(device)
        return self

    # --- coordinates ------------------------------------------------------------------------------
    def world_to_unit(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.center) / (2.0 * self.half_size) + 0.5

    def unit_to_world(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) * (2.0 * self.half_size) + self.center

    # --- the field --------------------------------------------------------------------------------
    def inv_s(self) -> torch.Tensor:
        return torch.exp(10.0 * self.variance).clamp(1e-6, 1e6)

    def fd_step(self) -> float:
        """Finite-difference step: one cell of the finest active hash level (in unit-cube units)."""
        return 1.0 / max(2, self.encoding.finest_active_resolution())

    def sdf_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SDF [N] (unit-cube units) and features [N, F] at ``x [N, 3]`` in the unit cube."""
        p = 2.0 * x - 1.0
        h = torch.cat([p, self.encoding(x.clamp(0.0, 1.0))], dim=-1)
        out = self.modules["sdf"](h)
        return 0.5 * out[:, 0], out[:, 1:]

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        return self.sdf_and_features(x)[0]

    def sdf_with_gradient(self, x: torch.Tensor, eps: float | None = None):
        """SDF, features and the SDF gradient by 4-tap finite differences (one batched evaluation of
        5N points; differentiable with first-order autograd)."""
        eps = self.fd_step() if eps is None else eps
        d = eps / math.sqrt(3.0)
        taps = _TAPS.to(x.device, x.dtype)
        pts = torch.cat([x, (x[:, None, :] + d * taps[None]).reshape(-1, 3)])
        sdf, feat = self.sdf_and_features(pts)
        n = x.shape[0]
        f_taps = sdf[n:].reshape(n, 4)
        grad = (f_taps[..., None] * taps[None]).sum(1) / (4.0 * d)
        return sdf[:n], feat[:n], grad

    def color(self, x: torch.Tensor, normals: torch.Tensor, dirs: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        h = torch.cat([2.0 * x - 1.0, normals, sh_basis(DIR_SH_DEGREE, dirs), features], dim=-1)
        return torch.sigmoid(self.modules["color"](h))

    def background_rgb(self, dirs: torch.Tensor) -> torch.Tensor:
        if "background" in self.modules:
            return torch.sigmoid(self.modules["background"](sh_basis(BACKGROUND_SH_DEGREE, dirs)))
        return self.background_color.to(dirs.device).expand(dirs.shape[0], 3)

    # --- volume rendering -------------------------------------------------------------------------
    def _visibility_alpha_fn(self, origins, dirs, inv_s):
        """Opacity estimate for early ray termination: the SDF at both ends of each section (the
        midpoint formula needs normals, i.e. 5 evaluations; a cos = -1 bound over-estimates grazing
        sections and would cut silhouette rays short)."""
        def alpha_fn(s: PackedSamples) -> torch.Tensor:
            o, d = origins[s.ray_indices], dirs[s.ray_indices]
            f = self.sdf(torch.cat([o + s.t_starts[:, None] * d, o + s.t_ends[:, None] * d]))
            return endpoint_alpha(f[: len(s)], f[len(s):], inv_s)
        return alpha_fn

    def render_rays(
        self,
        origins: torch.Tensor,
        dirs: torch.Tensor,
        *,
        step_size: float | None = None,
        anneal_ratio: float = 1.0,
        stratified: bool = False,
        early_stop: bool = True,
        use_nerfacc: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """Render unit-space rays (``origins`` in the unit cube frame, unit ``dirs``).

        Returns ``rgb`` [R, 3] (without background), ``opacity`` [R, 1], ``depth`` [R, 1] (unit-space
        ``sum w t``), ``gradients`` [M, 3] (SDF gradients at the samples, for the Eikonal term),
        ``points`` [M, 3] and ``n_samples``."""
        n = origins.shape[0]
        step = self.render_step if step_size is None else step_size
        inv_s = self.inv_s()
        with torch.no_grad():
            samples = self.occupancy.march(
                origins, dirs, step_size=step, stratified=stratified, use_nerfacc=use_nerfacc,
                alpha_fn=self._visibility_alpha_fn(origins, dirs, inv_s.detach()) if early_stop else None,
            )
        ri = samples.ray_indices
        t_mid = 0.5 * (samples.t_starts + samples.t_ends)
        d = dirs[ri]
        x = origins[ri] + t_mid[:, None] * d
        if len(samples) == 0:
            zero = origins.new_zeros(n, 1)
            return {"rgb": origins.new_zeros(n, 3) + 0.0 * self.variance, "opacity": zero, "depth": zero,
                    "gradients": origins.new_zeros(0, 3), "points": x, "n_samples": 0}
        sdf, feat, grad = self.sdf_with_gradient(x)
        normals = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        alpha = neus_alpha(sdf, annealed_cos(d, normals, anneal_ratio), samples.t_ends - samples.t_starts, inv_s)
        rgb = self.color(x, normals, d, feat)
        if use_nerfacc is None:
            use_nerfacc = origins.is_cuda and nerfacc_available()
        weights, _ = weights_from_alpha(alpha, ri, n, use_nerfacc=use_nerfacc)
        return {
            "rgb": accumulate(weights, rgb, ri, n),
            "opacity": accumulate(weights, None, ri, n),
            "depth": accumulate(weights, t_mid[:, None], ri, n),
            "gradients": grad,
            "points": x,
            "n_samples": len(samples),
        }

    @torch.no_grad()
    def render(self, camera, *, background=None, sh_degree=None, settings=None, render_depth: bool = False) -> RenderOutput:
        """Render a recon camera in chunks of rays. ``background``: a fixed colour replacing the scene's
        background model (None: the scene's own). ``depth`` is the world-space z-depth times opacity."""
        dev = self.variance.device
        o_w, d_w = image_rays(camera, dev)
        o = self.world_to_unit(o_w)
        rgb, alpha, depth = [], [], []
        for oc, dc in zip(o.split(self.chunk), d_w.split(self.chunk)):
            out = self.render_rays(oc, dc)
            bg = background.to(dev).expand(len(oc), 3) if background is not None else self.background_rgb(dc)
            rgb.append(out["rgb"] + (1.0 - out["opacity"]) * bg)
            alpha.append(out["opacity"])
            depth.append(out["depth"])
        h, w = camera.height, camera.width
        image = torch.cat(rgb).reshape(h, w, 3).clamp(0.0, 1.0)
        acc = torch.cat(alpha).reshape(h, w, 1)
        out_depth = None
        if render_depth:
            # ray t (unit space) -> world distance -> camera z via the ray's z component
            z_axis = torch.as_tensor(camera.c2w[:3, 2], dtype=torch.float32, device=dev)
            cos_z = (d_w @ z_axis).reshape(h, w, 1)
            out_depth = torch.cat(depth).reshape(h, w, 1) * (2.0 * self.half_size) * cos_z
        return RenderOutput(image=image, alpha=acc, depth=out_depth, meta={"width": w, "height": h, "n_cameras": 1})

    # --- occupancy --------------------------------------------------------------------------------
    def update_occupancy(self, *, warmup: bool, threshold: float = 0.01, decay: float = 0.95) -> None:
        with torch.no_grad():
            self.occupancy.update(self.sdf, float(self.inv_s()), warmup=warmup, threshold=threshold, decay=decay)

    # --- mesh -------------------------------------------------------------------------------------
    @torch.no_grad()
    def extract_mesh(self, resolution: int = 256, *, colors: bool = True, chunk: int = 1 << 18):
        """The zero level set as a :class:`recon.export.mesh.TriangleMesh` in world coordinates, with
        vertex colours from the colour network seen head-on (view direction = -normal)."""
        from recon.export.mesh import TriangleMesh
        from recon.surfaces.marching_cubes import extract_mesh

        dev = self.variance.device
        verts, faces = extract_mesh(self.sdf, resolution, device=dev, chunk=chunk)
        vertex_colors = None
        if colors and len(verts):
            cols = []
            for xc in torch.from_numpy(verts).to(dev).split(chunk // 8):
                _, feat, grad = self.sdf_with_gradient(xc)
                nrm = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-6)
                cols.append(self.color(xc, nrm, -nrm, feat))
            vertex_colors = torch.cat(cols).float().cpu().numpy()
        world = self.unit_to_world(torch.from_numpy(verts).to(dev)).cpu().numpy() if len(verts) else verts
        return TriangleMesh(vertices=world, faces=faces, vertex_colors=vertex_colors)

    # --- SceneModel -------------------------------------------------------------------------------
    @property
    def num_primitives(self) -> int:
        return int(self.occupancy.binary.sum())

    def optimizer_groups(self, config: Any) -> list[dict]:
        lr = getattr(config, "lr", 1e-2)
        return [{"name": name, "params": [p], "lr": lr} for name, p in self.params.items()]

    def state_dict(self) -> dict[str, Any]:
        return {
            "spec": dict(self.spec),
            "modules": {k: v.detach().cpu() for k, v in self.modules.state_dict().items()},
            "variance": self.variance.detach().cpu(),
            "occupancy": self.occupancy.state_dict(),
            "active_levels": int(self.encoding.active_levels),
            "render_step": float(self.render_step),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "SurfaceScene":
        spec = dict(state["spec"])
        spec["grid"] = dict(spec["grid"])
        scene = cls(**spec)
        scene.load_state_dict(state)
        return scene

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = self.variance.device
        self.modules.load_state_dict(state["modules"])
        self.variance.data = state["variance"].to(dev).float()
        self.occupancy = OccupancyGrid.from_state_dict(state["occupancy"], dev)
        self.encoding.set_active_levels(int(state["active_levels"]))
        self.render_step = float(state["render_step"])

    def export(self, path: str | Path) -> None:
        """A GLB mesh of the zero level set (256^3 grid, vertex colours)."""
        from recon.export.gltf import write_mesh_glb

        write_mesh_glb(self.extract_mesh(256), path, up=self.spec["up"], extras={"method": "surface"})


def _grid_dict(cfg: HashGridConfig) -> dict:
    import dataclasses

    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
