"""Densification and pruning for triangle scenes (notes/rasterizers.md a.5 and a.6, restated).

:class:`TriangleSoupStrategy` (Triangle Splatting, MCMC-like): between refinements it keeps, per
triangle, the largest blending weight ``max_p alpha T`` it reached in any rendered view and how often it
was visible. Every ``refine_every`` steps in ``[refine_start, refine_stop)``:

- *dead*: visible but its max blending weight stayed below ``prune_max_weight``, or opacity <=
  ``prune_opacity``;
- the count grows to ``min(cap_max, growth * N)``: ``N_target - N_alive`` new triangles come from
  candidates sampled (without replacement) proportionally to opacity on even refinements and to
  ``1 / sigma`` on odd ones. A candidate larger than ``big_extent_px`` on screen is *subdivided* at its edge
  midpoints into 4 children (parameters copied; the parent goes), a smaller one is *cloned* with an
  in-plane offset, parent and clone both getting opacity ``1 - sqrt(1 - o)``;
- dead triangles are removed; the statistics restart.

Opaque, connected triangles (Triangle Splatting+) change a shared vertex table and integer faces, so
their operations take the scene: :func:`subdivide_faces` (midpoint subdivision with the edge midpoints
shared between neighbouring faces, new vertices = mean of the edge's endpoints) and
:func:`remove_faces` (then unreferenced vertices go too). Parameters and Adam moments stay consistent
through :mod:`recon.strategy.ops`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from recon.strategy import ops
from recon.strategy.base import Strategy

STATE_KEYS = ("max_weight", "visible", "max_extent")


@torch.no_grad()
def append_rows(params: dict[str, torch.nn.Parameter], optimizers: Mapping[str, torch.optim.Optimizer],
                state: dict[str, Any] | None, rows: Mapping[str, Tensor]) -> None:  # fmt: skip
    """Append new primitives with the given parameter rows (zero Adam moments, zero statistics)."""
    n = ops.num_primitives(params)
    k = next(iter(rows.values())).shape[0]
    if k == 0:
        return
    ops._replace(params, optimizers, lambda name, p: torch.cat([p, rows[name].to(p.dtype)]),
                 lambda v: torch.cat([v, ops._zeros_rows(v, k)]))  # fmt: skip
    ops._update_state(state, n, lambda v: torch.cat([v, ops._zeros_rows(v, k)]))


def _midpoint_children(v: Tensor) -> Tensor:
    """[k, 3, 3] triangles -> [4k, 3, 3] children of the midpoint subdivision (children of parent j at 4j..4j+3)."""
    m01, m12, m20 = 0.5 * (v[:, 0] + v[:, 1]), 0.5 * (v[:, 1] + v[:, 2]), 0.5 * (v[:, 2] + v[:, 0])
    kids = torch.stack([
        torch.stack([v[:, 0], m01, m20], 1), torch.stack([m01, v[:, 1], m12], 1),
        torch.stack([m20, m12, v[:, 2]], 1), torch.stack([m01, m12, m20], 1),
    ], 1)  # fmt: skip
    return kids.reshape(-1, 3, 3)


@dataclass
class TriangleSoupStrategy(Strategy):
    """MCMC-like growth + pruning of a triangle soup (module docstring). Steps are optimisation steps."""

    refine_start: int = 500
    refine_stop: int = 25_000
    refine_every: int = 500
    growth: float = 1.3
    cap_max: int = 2_000_000
    prune_max_weight: float = 0.022
    prune_opacity: float = 0.014
    big_extent_px: float = 24.0
    clone_offset: float = 0.2
    """Clone offset in the triangle's plane, as a fraction of its mean edge length (standard deviation)."""

    def scaled(self, k: float, floors: Mapping[str, int] | None = None) -> "TriangleSoupStrategy":
        """The step schedule multiplied by ``k`` (short runs), each step number at least its floor."""
        floors = dict(floors or {})
        changes = {name: max(int(round(getattr(self, name) * k)), floors.get(name, 1))
                   for name in ("refine_start", "refine_stop", "refine_every")}  # fmt: skip
        return dataclasses.replace(self, **changes)

    def initialize_state(self, scene_scale: float = 1.0, num_primitives: int = 0, device: Any = "cpu") -> dict[str, Any]:
        return {
            "scene_scale": float(scene_scale),
            "max_weight": torch.zeros(num_primitives, device=device),
            "visible": torch.zeros(num_primitives, dtype=torch.int32, device=device),
            "max_extent": torch.zeros(num_primitives, device=device),
            "refines": 0,
        }

    @torch.no_grad()
    def accumulate(self, state: dict[str, Any], info: Mapping[str, Any]) -> None:
        mw = info["max_weight"].detach().float()
        ext = info["extents"].detach().float()
        if mw.dim() == 2:  # batched cameras
            mw, vis, ext = mw.amax(0), (ext > 0).sum(0), ext.amax(0)
        else:
            vis = ext > 0
        state["max_weight"] = torch.maximum(state["max_weight"], mw.to(state["max_weight"].device))
        state["visible"] += vis.to(state["visible"].device, torch.int32)
        state["max_extent"] = torch.maximum(state["max_extent"], ext.to(state["max_extent"].device))

    def step_post_backward(self, params, optimizers, state, step, info, packed: bool = False) -> dict[str, Any]:
        if step >= self.refine_stop:
            return {}
        self.accumulate(state, info)
        if step < self.refine_start or (step - self.refine_start) % self.refine_every != 0 or step == 0:
            return {}
        return self.refine(params, optimizers, state)

    @torch.no_grad()
    def refine(self, params, optimizers, state, generator: torch.Generator | None = None) -> dict[str, Any]:
        n = ops.num_primitives(params)
        dev = params["vertices"].device
        opac = torch.sigmoid(params["opacities"].detach())
        sigma = 0.01 + torch.exp(params["sigmas"].detach())
        dead = ((state["visible"] > 0) & (state["max_weight"] < self.prune_max_weight)) | (opac <= self.prune_opacity)
        alive = torch.where(~dead)[0]
        target = min(self.cap_max, int(self.growth * n))
        n_add = max(0, target - len(alive))
        refine_index = int(state.get("refines", 0))
        n_sub = n_clone = 0
        new_rows: dict[str, list[Tensor]] = {k: [] for k in params}
        drop = dead.clone()
        if n_add > 0 and len(alive) > 0:
            score = opac[alive] if refine_index % 2 == 0 else 1.0 / sigma[alive]
            k = min(len(alive), n_add)
            pick = alive[torch.multinomial(score.clamp_min(1e-12), k, replacement=False, generator=generator)]
            big = state["max_extent"][pick] > self.big_extent_px
            # a subdivision adds 3, a clone 1: keep the prefix that fits the budget
            cost = torch.where(big, 3, 1).cumsum(0)
            pick, big = pick[cost <= n_add], big[cost <= n_add]
            sub, clo = pick[big], pick[~big]
            n_sub, n_clone = len(sub), len(clo)
            if n_sub:
                kids = _midpoint_children(params["vertices"].detach()[sub])
                for name, p in params.items():
                    new_rows[name].append(kids if name == "vertices" else p.detach()[sub].repeat_interleave(4, dim=0))
                drop[sub] = True
            if n_clone:
                v = params["vertices"].detach()[clo]
                e1, e2 = v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]
                scale = (e1.norm(dim=-1) + e2.norm(dim=-1) + (v[:, 2] - v[:, 1]).norm(dim=-1)) / 3.0
                coef = torch.randn(n_clone, 2, generator=generator, device=generator.device if generator else dev).to(dev)
                offset = (coef[:, :1] * e1 / e1.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                          + coef[:, 1:] * e2 / e2.norm(dim=-1, keepdim=True).clamp_min(1e-12)) * (self.clone_offset * scale)[:, None]  # fmt: skip
                new_o = torch.logit(1.0 - torch.sqrt(1.0 - opac[clo]).clamp(1e-6, 1 - 1e-6))
                for name, p in params.items():
                    if name == "vertices":
                        new_rows[name].append(v + offset[:, None, :])
                    elif name == "opacities":
                        new_rows[name].append(new_o)
                    else:
                        new_rows[name].append(p.detach()[clo])
                # the parent's opacity is lowered the same way (parameter edit in place; moments kept)
                params["opacities"].data[clo] = new_o.to(params["opacities"].dtype)
        rows = {name: torch.cat(parts) for name, parts in new_rows.items() if parts}
        if rows:
            append_rows(params, optimizers, state, rows)
        n_now = ops.num_primitives(params)
        mask = torch.zeros(n_now, dtype=torch.bool, device=dev)
        mask[:n] = drop
        ops.remove(params, optimizers, state, mask)
        for key in STATE_KEYS:
            state[key].zero_()
        state["refines"] = refine_index + 1
        return {"pruned": int(dead.sum()), "subdivided": n_sub, "cloned": n_clone, "count": ops.num_primitives(params)}


# ---------------------------------------------------------------------------------------------------
# opaque, connected triangles
# ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def subdivide_faces(scene: Any, optimizers: Mapping[str, torch.optim.Optimizer], face_mask: Tensor) -> int:
    """Split every masked face into 4 at its edge midpoints. A midpoint is one new vertex shared by the
    faces on both sides of its edge (its parameters: the mean of the edge's endpoints); unmasked
    neighbours keep their faces (a T-junction, as in TS+). Returns the number of new vertices."""
    faces = scene.faces
    sel = faces[face_mask]
    if len(sel) == 0:
        return 0
    nv = scene.num_vertices
    edges = torch.stack([sel[:, [0, 1]], sel[:, [1, 2]], sel[:, [2, 0]]], 1).reshape(-1, 2)  # [3k, 2]
    key = torch.sort(edges, dim=1).values
    uniq, inv = torch.unique(key, dim=0, return_inverse=True)
    params = scene.params
    rows = {name: 0.5 * (p.detach()[uniq[:, 0]] + p.detach()[uniq[:, 1]]) for name, p in params.items()}
    append_rows(params, optimizers, None, rows)
    mid = (inv + nv).reshape(-1, 3)  # midpoints of edges (0-1, 1-2, 2-0) of each selected face
    a, b, c = sel[:, 0], sel[:, 1], sel[:, 2]
    m01, m12, m20 = mid[:, 0], mid[:, 1], mid[:, 2]
    kids = torch.stack([
        torch.stack([a, m01, m20], 1), torch.stack([m01, b, m12], 1),
        torch.stack([m20, m12, c], 1), torch.stack([m01, m12, m20], 1),
    ], 1).reshape(-1, 3)  # fmt: skip
    scene.set_faces(torch.cat([faces[~face_mask], kids]))
    return len(uniq)


@torch.no_grad()
def remove_faces(scene: Any, optimizers: Mapping[str, torch.optim.Optimizer], face_mask: Tensor) -> tuple[int, int]:
    """Drop masked faces, then every vertex no face references. Returns (faces removed, vertices removed)."""
    keep = scene.faces[~face_mask]
    nv = scene.num_vertices
    used = torch.zeros(nv, dtype=torch.bool, device=keep.device)
    used[keep.reshape(-1)] = True
    remap = torch.cumsum(used.to(torch.int64), 0) - 1
    ops.remove(scene.params, optimizers, None, ~used)
    scene.set_faces(remap[keep])
    return int(face_mask.sum()), int((~used).sum())


def face_extent_world(scene: Any) -> Tensor:
    """Longest edge of every face in world units [F]."""
    v = scene.params["vertices"].detach()[scene.faces]
    return (v - v[:, [1, 2, 0]]).norm(dim=-1).amax(-1)
