"""Triangle Splatting (``--method triangles``) and opaque, connected triangles as in Triangle Splatting+
(``--method opaque-triangles``). Formulas and published constants: shared/notes/rasterizers.md a.5, a.6.

Both methods compress their 30k-step reference schedules for shorter runs (``steps / 30000`` with floors,
off with ``--no-compress-schedules``), like the Gaussians do for theirs.

Opaque triangles, per step: learning-rate decay of the vertices; the global window exponent ``sigma``
annealed linearly from ``sigma_start`` to ``sigma_end`` (reached at ``sigma_anneal_end`` of the run); the
vertex-weight floor ``m`` raised linearly ``floor_start -> floor_end`` between ``floor_from`` and ``floor_to``
(fractions of the run). Every ``refine_every`` steps until ``refine_stop``: faces are pruned (minimum vertex
weight <= tau, max blending weight <= tau while visible, or larger than ``prune_extent_px`` on screen; tau
starts at ``tau_start`` and grows by ``tau_step`` per refinement after ``floor_from``), then faces are
subdivided at their midpoints (sampled by opacity or by size, alternately) to grow the face count by
``growth``. Over the last ``final_window`` steps the max blending weight of every face is collected again
and at the last step faces below ``final_prune_weight`` go (the opaque mesh keeps what the views see).
Colours are one per vertex (SH degree 0, what the GLB carries) unless ``vertex_colors_from`` > 0. As in
TS+, training views are rendered at 2x and then 4x resolution late in the run and area-averaged, and
evaluation and viewers render at ``render_supersample`` x (the faces are hard-edged by then).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from recon.eval.metrics import psnr
from recon.methods.base import SplatMethod, render_supersampled
from recon.methods.gaussians import points_or_random
from recon.rasterizers.reference.triangle import TriangleSettings
from recon.scenes.triangles import OpaqueTriangleScene, TriangleScene
from recon.strategy.base import Strategy
from recon.strategy.triangle import TriangleSoupStrategy, remove_faces, subdivide_faces
from recon.training.losses import photometric_loss

REFERENCE_STEPS = 30_000
REFINE_FLOORS = {"refine_start": 50, "refine_every": 25, "refine_stop": 100}


def _lr_decay(lr0: float, lr1: float, step: int, total: int) -> float:
    t = min(max(step / max(total, 1), 0.0), 1.0)
    return lr0 * (lr1 / lr0) ** t if lr0 > 0 and lr1 > 0 else lr0


@dataclass
class TriangleConfig:
    """Triangle Splatting (a soup of triangle splats), --method triangles."""

    vertices_lr: float = 1.6e-4
    """Vertex learning rate × scene extent, decayed exponentially to ``vertices_lr_final``."""
    vertices_lr_final: float = 1.6e-5
    sigmas_lr: float = 2.5e-3
    opacities_lr: float = 2.5e-2
    sh0_lr: float = 2.5e-3
    shN_lr: float = 1.25e-4
    init_opacity: float = 0.28
    init_sigma: float = 1.16
    init_size: float = 2.23
    """Initial triangle size: vertices this many times the 3-NN point spacing from the point."""
    opacity_reg: float = 0.0055
    """Weight of mean(opacity) in the loss (sparsity)."""
    refine_start: int = 500
    refine_stop: int = 25_000
    refine_every: int = 500
    growth: float = 1.3
    cap_max: int = 2_000_000
    prune_max_weight: float = 0.022
    prune_opacity: float = 0.014
    big_extent_px: float = 24.0
    min_inradius: float = 1.0
    """Cull triangles with a smaller inradius on screen (px)."""
    stopgrad_inradius: bool = True
    """Treat the incircle normaliser as a constant (as the published code); False = full gradient."""
    random_init_points: int = 5000
    """Triangles of a random initialisation (scenes without SfM points, e.g. the demo)."""


@dataclass
class OpaqueTriangleConfig:
    """Opaque, connected triangles (Triangle Splatting+), --method opaque-triangles."""

    vertices_lr: float = 1.6e-4
    vertices_lr_final: float = 1.6e-6
    weights_lr: float = 2.5e-2
    sh0_lr: float = 2.5e-3
    shN_lr: float = 1.25e-4
    init_weight: float = 0.5
    max_edge_factor: float = 8.0
    """Initial Delaunay faces longer than this × the local point spacing are dropped."""
    max_init_faces: int = 0
    """Keep at most this many initial faces (random subset; 0 = all)."""
    sigma_start: float = 1.0
    sigma_end: float = 1e-4
    sigma_anneal_end: float = 0.9
    floor_start: float = 0.1
    floor_end: float = 0.9999
    floor_from: float = 1 / 6
    floor_to: float = 0.8
    weight_reg: float = 1.9e-6
    refine_start: int = 500
    refine_stop: int = 13_000
    refine_every: int = 500
    growth: float = 1.3
    """Face count growth per refinement (before pruning), by midpoint subdivision."""
    cap_max: int = 2_000_000
    tau_start: float = 0.235
    tau_step: float = 0.01
    prune_extent_px: float = 1400.0
    final_window: float = 0.1
    """Fraction of the run at its end over which the final pruning statistics are collected."""
    final_prune_weight: float = 0.5
    min_cos: float = 1e-3
    stopgrad_inradius: bool = True
    random_init_points: int = 3000
    vertex_colors_from: float = 0.0
    """Fraction of the run from which colours are view-independent (SH degree 0: the one colour per vertex
    that the GLB carries), so the exported mesh looks like the trained scene; before it, SH up to
    ``--sh-degree``. 0 (default) = vertex colours throughout; 1 = SH throughout (the splat render is then
    ~3 dB better on fox, but the GLB carries only the view-averaged DC term and loses that and more;
    docs/benchmarks.md)."""
    train_supersample_2x_from: float = 2 / 3
    """Render training views at 2x resolution and area-average (SSAA) from this fraction of the run
    (the edges are hard by then, so single-sample pixels alias); 1 = never."""
    train_supersample_4x_from: float = 5 / 6
    """... and at 4x from this fraction of the run; 1 = never."""
    render_supersample: int = 4
    """Supersampling factor of evaluation and viewer renders (hard-edged faces; 1 = off)."""


class _LrConfig:
    """Adapter: the scene's optimizer_groups ask ``initial_lr(name)``."""

    def __init__(self, cfg: Any, scene_scale: float) -> None:
        self.cfg, self.scene_scale = cfg, scene_scale

    def initial_lr(self, name: str) -> float:
        lr = float(getattr(self.cfg, f"{name}_lr"))
        return lr * self.scene_scale if name == "vertices" else lr


def _schedule_scale(cfg: Any, steps: int) -> float:
    return min(1.0, steps / REFERENCE_STEPS) if cfg.compress_schedules else 1.0


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


class TriangleMethod(SplatMethod):
    name = "triangles"
    scene_class = TriangleScene

    def __init__(self, cfg, *, steps, scene_scale, device, background) -> None:
        super().__init__(cfg, steps=steps, scene_scale=scene_scale, device=device, background=background)
        t = cfg.triangles
        self.tcfg = t
        base = TriangleSoupStrategy(
            refine_start=t.refine_start, refine_stop=t.refine_stop, refine_every=t.refine_every, growth=t.growth,
            cap_max=t.cap_max, prune_max_weight=t.prune_max_weight, prune_opacity=t.prune_opacity, big_extent_px=t.big_extent_px,
        )  # fmt: skip
        k = _schedule_scale(cfg, steps)
        self._strategy = base if k >= 1.0 else base.scaled(k, REFINE_FLOORS)
        self.lrs = _LrConfig(t, scene_scale)

    @property
    def strategy(self):
        return self._strategy

    def settings(self) -> TriangleSettings:
        return TriangleSettings(min_inradius=self.tcfg.min_inradius, stopgrad_inradius=self.tcfg.stopgrad_inradius)

    def initial_scene(self, data):
        cfg, t = self.cfg, self.tcfg
        points, colors = points_or_random(cfg, data, self.device, t.random_init_points)
        scene = TriangleScene.from_points(
            points, colors, sh_degree=cfg.sh_degree, init_opacity=t.init_opacity, init_sigma=t.init_sigma,
            init_size=t.init_size, seed=cfg.seed, triangle_settings=self.settings(),
        )  # fmt: skip
        from recon.export.gltf import scene_up_vector

        scene.up = [float(x) for x in scene_up_vector(data.scene_data)]
        return scene.to(self.device)

    def make_optimizers(self, scene):
        return scene.make_optimizers(self.lrs)

    def schedule(self, scene, optimizers, step):
        t = self.tcfg
        _set_lr(optimizers["vertices"], self.scene_scale * _lr_decay(t.vertices_lr, t.vertices_lr_final, step, self.steps))

    def regularization(self, scene, out, step):
        if self.tcfg.opacity_reg <= 0:
            return {}
        return {"opacity_reg": self.tcfg.opacity_reg * torch.sigmoid(scene.params["opacities"]).mean()}

    def export(self, scene, run_dir):
        path = run_dir / "export" / "triangles.glb"
        scene.export(path)
        return {"glb": path}


class OpaqueTriangleMethod(SplatMethod):
    name = "opaque-triangles"
    scene_class = OpaqueTriangleScene

    def __init__(self, cfg, *, steps, scene_scale, device, background) -> None:
        super().__init__(cfg, steps=steps, scene_scale=scene_scale, device=device, background=background)
        t = cfg.opaque_triangles
        self.tcfg = t
        k = _schedule_scale(cfg, steps)
        self.refine_start = max(int(round(t.refine_start * k)), REFINE_FLOORS["refine_start"])
        self.refine_every = max(int(round(t.refine_every * k)), REFINE_FLOORS["refine_every"])
        self.refine_stop = max(int(round(t.refine_stop * k)), REFINE_FLOORS["refine_stop"])
        self.final_start = max(self.refine_stop, steps - max(1, int(round(t.final_window * steps))))
        self.lrs = _LrConfig(t, scene_scale)
        self._strategy = Strategy()

    @property
    def strategy(self):
        return self._strategy

    @property
    def sh_degree(self) -> int:
        """SH degree of the final colours (evaluation, viewers, export): 0 unless SH are kept to the end."""
        return self.cfg.sh_degree if self.tcfg.vertex_colors_from >= 1 else 0

    def sh_degree_at(self, step: int) -> int:
        if step >= self.tcfg.vertex_colors_from * self.steps:
            return 0
        return super().sh_degree_at(step)

    def supersample_at(self, step: int) -> int:
        t = self.tcfg
        if step >= t.train_supersample_4x_from * self.steps:
            return 4
        return 2 if step >= t.train_supersample_2x_from * self.steps else 1

    def _render(self, scene, camera, sh_degree: int, supersample: int):
        cfg = self.cfg

        def render(cam):
            return scene.render(cam, background=self.background, sh_degree=sh_degree, settings=cfg.raster, backend=cfg.backend)

        return render_supersampled(render, camera, supersample)

    def render_train(self, scene, view, step):
        return self._render(scene, view.camera, self.sh_degree_at(step), self.supersample_at(step))

    def render(self, scene, camera):
        return self._render(scene, camera, self.sh_degree, max(1, int(self.tcfg.render_supersample))).image

    def settings(self) -> TriangleSettings:
        return TriangleSettings(min_inradius=0.0, min_extent=0.0, min_cos=self.tcfg.min_cos,
                                stopgrad_inradius=self.tcfg.stopgrad_inradius)  # fmt: skip

    def initial_scene(self, data):
        cfg, t = self.cfg, self.tcfg
        points, colors = points_or_random(cfg, data, self.device, t.random_init_points)
        scene = OpaqueTriangleScene.from_points(
            points, colors, sh_degree=cfg.sh_degree if t.vertex_colors_from > 0 else 0, init_weight=t.init_weight, max_edge_factor=t.max_edge_factor,
            max_faces=t.max_init_faces, seed=cfg.seed, triangle_settings=self.settings(),
        )  # fmt: skip
        from recon.export.gltf import scene_up_vector

        scene.up = [float(x) for x in scene_up_vector(data.scene_data)]
        scene.sigma = self.sigma_at(0)
        scene.weight_floor = self.floor_at(0)
        return scene.to(self.device)

    def make_optimizers(self, scene):
        return scene.make_optimizers(self.lrs)

    def _face_state(self, n: int) -> dict[str, Any]:
        return {
            "max_weight": torch.zeros(n, device=self.device),
            "visible": torch.zeros(n, dtype=torch.int32, device=self.device),
            "max_extent": torch.zeros(n, device=self.device),
        }

    def initial_state(self, scene):
        return {**self._face_state(scene.num_primitives), "refines": 0}

    def check(self, scene, optimizers):
        self._strategy.check_sanity(scene.params, optimizers)
        if scene.faces.numel() and int(scene.faces.max()) >= scene.num_vertices:
            raise ValueError("faces reference missing vertices")

    # --- schedules -----------------------------------------------------------------------------
    def sigma_at(self, step: int) -> float:
        t = self.tcfg
        frac = min(1.0, step / max(1.0, t.sigma_anneal_end * self.steps))
        return t.sigma_start + (t.sigma_end - t.sigma_start) * frac

    def floor_at(self, step: int) -> float:
        t = self.tcfg
        a, b = t.floor_from * self.steps, t.floor_to * self.steps
        frac = min(1.0, max(0.0, (step - a) / max(1.0, b - a)))
        return t.floor_start + (t.floor_end - t.floor_start) * frac

    def tau_at(self, step: int) -> float:
        t = self.tcfg
        after = max(0.0, step - t.floor_from * self.steps) / self.refine_every
        return t.tau_start + t.tau_step * math.floor(after)

    def schedule(self, scene, optimizers, step):
        t = self.tcfg
        _set_lr(optimizers["vertices"], self.scene_scale * _lr_decay(t.vertices_lr, t.vertices_lr_final, step, self.steps))
        scene.sigma = self.sigma_at(step)
        scene.weight_floor = self.floor_at(step)

    # --- one step ------------------------------------------------------------------------------
    def train_step(self, scene, optimizers, state, view, step):
        t = self.tcfg
        self.schedule(scene, optimizers, step)
        out = self.render_train(scene, view, step)
        loss, parts = photometric_loss(out.image, view.image, view.mask, self.cfg.ssim_lambda)
        extra = {}
        if t.weight_reg > 0 and step < t.floor_from * self.steps:
            extra["weight_reg"] = t.weight_reg * torch.sigmoid(scene.params["weights"]).mean()
        for term in extra.values():
            loss = loss + term
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        self._accumulate(state, out.meta)
        stats = {}
        if self.refine_start <= step < self.refine_stop and step > 0 and (step - self.refine_start) % self.refine_every == 0:
            stats = self.refine(scene, optimizers, state, step)
        if step + 1 == self.final_start:
            state.update(self._face_state(scene.num_primitives))
        if step + 1 == self.steps:
            stats = self.final_prune(scene, optimizers, state)
        with torch.no_grad():
            p = psnr(out.image.detach(), view.image, view.mask)
        result = {"loss": float(loss.detach()), "psnr": float(p), "l1": float(parts["l1"]), "sigma": scene.sigma}
        result.update({name: float(v.detach()) for name, v in extra.items()})
        result.update({k: float(v) for k, v in stats.items()})
        return result

    @torch.no_grad()
    def _accumulate(self, state, meta) -> None:
        mw = meta["max_weight"].detach().float().to(self.device)
        ext = meta["extents"].detach().float().to(self.device)
        state["max_weight"] = torch.maximum(state["max_weight"], mw)
        state["visible"] += (ext > 0).to(torch.int32)
        state["max_extent"] = torch.maximum(state["max_extent"], ext)

    @torch.no_grad()
    def refine(self, scene, optimizers, state, step) -> dict[str, float]:
        t = self.tcfg
        tau = self.tau_at(step)
        w = scene.vertex_weights().detach()[scene.faces].amin(1)
        prune = (w <= tau) | ((state["visible"] > 0) & (state["max_weight"] <= tau)) | (state["max_extent"] > t.prune_extent_px)
        n_faces = scene.num_primitives
        if bool(prune.all()):  # never delete everything: keep the most visible half
            prune = state["max_weight"] < state["max_weight"].median()
        removed, _ = remove_faces(scene, optimizers, prune)
        # growth by midpoint subdivision (a split adds 3 faces), sampled by opacity or by size
        f = scene.num_primitives
        n_split = max(0, min(int((t.growth - 1.0) * f / 3), (t.cap_max - f) // 3))
        added = 0
        if n_split > 0 and f > 0:
            refines = int(state.get("refines", 0))
            if refines % 2 == 0:
                score = scene.face_opacities().detach()
            else:
                v = scene.params["vertices"].detach()[scene.faces]
                score = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1).norm(dim=-1)
            pick = torch.multinomial(score.clamp_min(1e-12), min(n_split, f), replacement=False)
            mask = torch.zeros(f, dtype=torch.bool, device=scene.faces.device)
            mask[pick] = True
            subdivide_faces(scene, optimizers, mask)
            added = 3 * int(mask.sum())
        state.update(self._face_state(scene.num_primitives))
        state["refines"] = int(state.get("refines", 0)) + 1
        return {"faces_pruned": removed, "faces_added": added, "faces_before": n_faces}

    @torch.no_grad()
    def final_prune(self, scene, optimizers, state) -> dict[str, float]:
        """Faces whose max blending weight over the final window stayed at or below ``final_prune_weight``."""
        prune = state["max_weight"] <= self.tcfg.final_prune_weight
        if bool(prune.all()):
            return {"faces_final_pruned": 0}
        removed, _ = remove_faces(scene, optimizers, prune)
        state.update(self._face_state(scene.num_primitives))
        return {"faces_final_pruned": removed}

    def export(self, scene, run_dir):
        path = run_dir / "export" / "mesh.glb"
        scene.export(path)
        return {"glb": path}
