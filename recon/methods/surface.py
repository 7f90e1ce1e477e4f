"""NeuS-style neural surfaces on a hash grid as a recon method (``recon-train --method surface``).

One step: rays from random pixels of the step's view -> occupancy-grid marching -> NeuS compositing
-> colour loss (+ mask BCE for object masks) + Eikonal on the samples' finite-difference gradients
-> Adam. Schedules: learning-rate warm-up and exponential decay, coarse-to-fine hash levels, NeuS'
cosine annealing; the inverse standard deviation ``s`` is learnt. The occupancy grid is refreshed
every ``occupancy_every`` steps. Export: marching tetrahedra on the SDF -> clean -> decimate ->
vertex colours from the colour network -> ``export/surface.glb`` (glTF, Y-up) and
``export/surface.ply`` (the same mesh in the dataset's own coordinates).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from recon.eval.metrics import psnr
from recon.methods.base import Method
from recon.rasterizers.hashgrid import HashGridConfig
from recon.scenes.surface import SurfaceScene
from recon.surfaces.config import SurfaceConfig
from recon.surfaces.rays import pixel_rays


def scene_box(data: Any, cfg: SurfaceConfig) -> tuple[np.ndarray, float]:
    """(centre, half edge) of the cube the surface lives in, in world units.

    In order: ``--surface.aabb``; the dataset's bounds (demo ``bounds``, ``aabb``, the unit sphere of
    IDR/DTU-normalised scenes); the 2nd-98th
    percentile box of the SfM points (+10 %); else the point the cameras look at (least squares of
    their optical axes) with half the mean camera distance."""
    sd = data.scene_data
    box = None
    if cfg.aabb is not None:
        box = np.asarray(cfg.aabb, dtype=np.float64).reshape(2, 3)
    elif "demo" in sd.extras and "bounds" in sd.extras["demo"]:
        box = np.asarray(sd.extras["demo"]["bounds"], dtype=np.float64).reshape(2, 3)
    elif "aabb" in sd.extras:
        box = np.asarray(sd.extras["aabb"], dtype=np.float64).reshape(2, 3)
    elif "scale_mat" in sd.extras:  # IDR / MonoSDF normalisation: the object lies inside the unit sphere
        box = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    elif sd.points is not None and len(sd.points) >= 20:
        pts = np.asarray(sd.points, dtype=np.float64)
        lo, hi = np.percentile(pts, 2, axis=0), np.percentile(pts, 98, axis=0)
        mid, half = 0.5 * (lo + hi), 0.55 * (hi - lo)
        box = np.stack([mid - half, mid + half])
    if box is not None:
        center = 0.5 * (box[0] + box[1])
        half = 0.5 * float((box[1] - box[0]).max())
        return center, half * 1.05  # a margin so the surface never touches the grid's border
    centers = sd.camera_centers()
    axes = np.stack([c.c2w[:3, 2] for c in sd.cameras])
    # argmin_p sum_i |(I - a_i a_i^T)(p - c_i)|^2
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c, a in zip(centers, axes):
        P = np.eye(3) - np.outer(a, a)
        A += P
        b += P @ c
    target = np.linalg.lstsq(A, b, rcond=None)[0]
    dist = np.linalg.norm(centers - target, axis=1).mean()
    return target, 0.5 * float(dist)


def visual_hull_box(views: list, center: np.ndarray, half: float, resolution: int = 48) -> tuple[np.ndarray, float] | None:
    """Tighten a box with object masks: the bounds (+10 %) of grid points that at least a quarter of the
    views see, and every view whose image they project into sees inside its mask (a coarse visual
    hull). None when the masks leave nothing (inconsistent masks)."""
    axis = np.linspace(-half, half, resolution)
    pts = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3) + center
    keep = np.ones(len(pts), dtype=bool)
    seen = np.zeros(len(pts), dtype=np.int64)
    n_views = 0
    for v in views:
        if v.mask is None:
            continue
        cam = v.camera
        w2c = cam.w2c
        pc = pts @ w2c[:3, :3].T + w2c[:3, 3]
        z = pc[:, 2]
        front = z > 1e-6
        u = np.floor(cam.fx * pc[:, 0] / np.where(front, z, 1.0) + cam.cx).astype(np.int64)
        r = np.floor(cam.fy * pc[:, 1] / np.where(front, z, 1.0) + cam.cy).astype(np.int64)
        inside = front & (u >= 0) & (u < cam.width) & (r >= 0) & (r < cam.height)
        mask = v.mask[..., 0].cpu().numpy() > 0.5
        seen_out = inside.copy()
        seen_out[inside] = ~mask[r[inside], u[inside]]
        keep &= ~seen_out
        seen += inside
        n_views += 1
    # points few views see are unconstrained (outside most frusta): not part of the object's box
    keep &= seen >= 0.25 * max(n_views, 1)
    if keep.sum() < 8:
        return None
    lo, hi = pts[keep].min(0), pts[keep].max(0)
    step = 2 * half / (resolution - 1)
    return 0.5 * (lo + hi), 0.55 * float((hi - lo).max()) + step


def uses_object_masks(data: Any, cfg: SurfaceConfig) -> bool:
    if cfg.masks != "auto":
        return cfg.masks == "object"
    views = list(data.train_views) + list(data.test_views)
    return any(v.camera.mask_path is not None or v.alpha is not None for v in views)


class SurfaceMethod(Method):
    name = "surface"
    scene_class = SurfaceScene

    def __init__(self, cfg, *, steps, scene_scale, device, background) -> None:
        super().__init__(cfg, steps=steps, scene_scale=scene_scale, device=device, background=background)
        self.sc: SurfaceConfig = cfg.surface.resolved(device)
        self.use_nerfacc = None  # auto: nerfacc on CUDA when it imports

    # --- building -------------------------------------------------------------------------------
    def grid_config(self) -> HashGridConfig:
        sc = self.sc
        return HashGridConfig(
            n_levels=sc.grid_levels, n_features=sc.grid_features, log2_table_size=sc.grid_log2_table,
            base_resolution=sc.grid_base_resolution, finest_resolution=max(sc.grid_finest_resolution, sc.grid_base_resolution),
        )

    def initial_scene(self, data):
        from recon.export.gltf import scene_up_vector

        sc = self.sc
        center, half = scene_box(data, sc)
        object_masks = uses_object_masks(data, sc)
        if object_masks and sc.aabb is None:
            hull = visual_hull_box(data.train_views, center, half)
            if hull is not None:
                center, half = hull
        mode = sc.background
        if mode == "auto":
            stated = self.cfg.background is not None or "background" in data.scene_data.extras.get("demo", {})
            mode = "color" if (object_masks or stated) else "mlp"
        try:
            up = scene_up_vector(data.scene_data)
        except ValueError:
            up = np.array([0.0, 0.0, 1.0])
        scene = SurfaceScene(
            center=center, half_size=half, grid=self.grid_config(), sdf_hidden=sc.sdf_hidden, sdf_layers=sc.sdf_layers,
            feature_dim=sc.feature_dim, color_hidden=sc.color_hidden, color_layers=sc.color_layers,
            init_radius=sc.init_radius, background=mode, background_color=self.background.tolist(),
            occupancy_resolution=sc.occupancy_resolution, up=up, seed=self.cfg.seed, object_masks=object_masks,
            to_original=_to_original(data.scene_data),
        )
        scene.render_step = math.sqrt(3.0) / sc.samples_per_ray
        scene.chunk = 16384 if self.device == "cuda" else 4096
        return scene.to(self.device)

    def load_scene(self, state):
        scene = super().load_scene(state)
        scene.chunk = 16384 if self.device == "cuda" else 4096
        return scene

    def make_optimizers(self, scene):
        sc = self.sc
        grid = [p for n, p in scene.params.items() if n.startswith("encoding/")]
        mlp_w = [p for n, p in scene.params.items() if not n.startswith("encoding/") and n != "variance" and p.ndim > 1]
        mlp_b = [p for n, p in scene.params.items() if not n.startswith("encoding/") and n != "variance" and p.ndim <= 1]
        adam = dict(betas=(0.9, 0.99), eps=1e-15)
        return {
            "grid": torch.optim.Adam([{"params": grid, "lr": sc.lr}], **adam),
            "mlp": torch.optim.Adam(
                [{"params": mlp_w, "lr": sc.lr, "weight_decay": sc.weight_decay}, {"params": mlp_b, "lr": sc.lr}], **adam
            ),
            "variance": torch.optim.Adam([{"params": [scene.variance], "lr": sc.lr_variance}], **adam),
        }

    def initial_state(self, scene):
        return {}

    def check(self, scene, optimizers):
        n_opt = sum(len(g["params"]) for o in optimizers.values() for g in o.param_groups)
        if n_opt != len(scene.params):
            raise ValueError(f"optimizers hold {n_opt} parameters, the scene has {len(scene.params)}")

    # --- schedules ------------------------------------------------------------------------------
    def lr_factor(self, step: int) -> float:
        sc = self.sc
        warmup = min(sc.warmup_steps, max(1, self.steps // 10))  # short runs: at most a tenth of the run
        warm = min(1.0, (step + 1) / warmup)
        progress = max(0.0, (step - warmup) / max(1, self.steps - warmup))
        return warm * sc.lr_final_factor ** min(1.0, progress)

    def active_levels(self, step: int) -> int:
        sc = self.sc
        total = sc.grid_levels
        start = max(1, math.ceil(sc.level_start_fraction * total))
        full_at = min(1000, max(1, int(sc.level_full_fraction * self.steps)))
        return min(total, start + int((total - start) * min(1.0, step / full_at) + 1e-9))

    def anneal_ratio(self, step: int) -> float:
        n = self.sc.cos_anneal_fraction * self.steps
        return 1.0 if n <= 0 else min(1.0, step / n)

    def schedule(self, scene: SurfaceScene, optimizers, step: int) -> None:
        sc = self.sc
        f = self.lr_factor(step)
        for name, opt in optimizers.items():
            base = sc.lr_variance if name == "variance" else sc.lr
            for g in opt.param_groups:
                g["lr"] = base * f
        scene.encoding.set_active_levels(self.active_levels(step))
        if step % sc.occupancy_every == 0:
            scene.update_occupancy(warmup=step < sc.occupancy_warmup_steps, threshold=sc.occupancy_threshold)

    # --- training -------------------------------------------------------------------------------
    def train_step(self, scene: SurfaceScene, optimizers, state, view, step):
        sc = self.sc
        self.schedule(scene, optimizers, step)
        cam = view.camera
        dev = view.image.device
        n = sc.rays_per_step
        xs = torch.randint(0, cam.width, (n,), device=dev)
        ys = torch.randint(0, cam.height, (n,), device=dev)
        o_w, d = pixel_rays(cam, xs, ys)
        out = scene.render_rays(scene.world_to_unit(o_w), d, anneal_ratio=self.anneal_ratio(step), stratified=True, use_nerfacc=self.use_nerfacc)
        rgb = out["rgb"] + (1.0 - out["opacity"]) * scene.background_rgb(d)
        target = view.image[ys, xs]
        mask = None if view.mask is None else view.mask[ys, xs]
        losses: dict[str, torch.Tensor] = {}
        if mask is not None and scene.spec.get("object_masks", False):
            inside = mask.sum().clamp_min(1.0)
            losses["l1"] = ((rgb - target).abs() * mask).sum() / (3.0 * inside)
            op = out["opacity"].clamp(1e-3, 1.0 - 1e-3)
            losses["mask"] = sc.mask_weight * F.binary_cross_entropy(op, mask)
        elif mask is not None:
            losses["l1"] = ((rgb - target).abs() * mask).sum() / (3.0 * mask.sum().clamp_min(1.0))
        else:
            losses["l1"] = (rgb - target).abs().mean()
        grads = out["gradients"]
        if grads.shape[0] > 0:
            losses["eikonal"] = sc.eikonal_weight * ((grads.norm(dim=-1) - 1.0) ** 2).mean()
        loss = sum(losses.values())
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            p = psnr(rgb.detach().clamp(0, 1)[None], target[None], None if mask is None else mask[None])
        stats = {"loss": float(loss.detach()), "psnr": float(p)}
        stats.update({k: float(v.detach()) for k, v in losses.items()})
        stats.update({"inv_s": float(scene.inv_s().detach()), "samples_per_ray": out["n_samples"] / n,
                      "active_levels": scene.encoding.active_levels})
        return stats

    # --- rendering and export -------------------------------------------------------------------
    def render(self, scene, camera):
        return scene.render(camera).image

    def export(self, scene: SurfaceScene, run_dir: Path) -> dict[str, Path]:
        from recon.export.gltf import write_mesh_glb
        from recon.export.mesh import clean_mesh, decimate
        from recon.surfaces.mesh_io import write_mesh_ply

        mesh = scene.extract_mesh(self.sc.mesh_resolution)
        if mesh.num_faces == 0:
            raise RuntimeError("the trained SDF has no zero level set inside its box; nothing to export")
        mesh = clean_mesh(mesh)
        if self.sc.mesh_faces and mesh.num_faces > self.sc.mesh_faces:
            try:
                mesh = decimate(mesh, self.sc.mesh_faces)
            except ImportError:  # open3d missing (a GPU box without it): keep the full mesh
                pass
        out = run_dir / "export"
        glb = write_mesh_glb(mesh, out / "surface.glb", up=scene.spec["up"], extras={"method": "surface"})
        original = scene.spec.get("to_original")
        verts = mesh.vertices
        if original is not None:
            m = np.asarray(original, dtype=np.float64)
            verts = (verts.astype(np.float64) @ m[:3, :3].T + m[:3, 3]).astype(np.float32)
        ply = write_mesh_ply(out / "surface.ply", verts, mesh.faces, mesh.vertex_colors)
        return {"glb": Path(glb), "ply": ply}


def _to_original(scene_data) -> list | None:
    """4x4 from recon world to the dataset's original frame, when the loader normalised it
    (``extras["to_original"]``, or DTU's ``scale_mat``); None when they are the same."""
    m = scene_data.extras.get("to_original", scene_data.extras.get("scale_mat"))
    if m is None:
        return None
    m = np.asarray(m, dtype=np.float64).reshape(4, 4)
    return m.tolist()
