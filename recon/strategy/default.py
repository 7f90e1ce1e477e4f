"""3DGS adaptive density control (clone / split / prune / opacity reset), with a hard count cap.

Restated from notes/rasterizers.md a.9 (gsplat ``DefaultStrategy`` semantics):

- every step before ``refine_stop``: accumulate, for each Gaussian visible in the view (radii > 0),
  ``‖∇u‖`` where ``∇u`` is the gradient of the loss w.r.t. its screen-space mean rescaled to NDC-like
  units (x by W/2·n_cameras, y by H/2·n_cameras), a visibility count, and the max screen radius
  normalised by max(W, H);
- every ``refine_every`` steps in (``refine_start``, ``refine_stop``) (and at least
  ``pause_refine_after_reset`` steps after an opacity reset): Gaussians whose mean statistic exceeds
  ``grow_grad2d`` are *duplicated* when small (max scale ≤ ``grow_scale3d`` × scene_scale) and *split*
  (2 children from N(μ, Σ), scales / 1.6) when large; the total is capped at ``cap_max`` (keeping the
  highest-gradient candidates); then Gaussians with opacity < ``prune_opa`` are removed, and after the
  first reset also those larger than ``prune_scale3d`` × scene_scale; the accumulators are zeroed;
- every ``reset_every`` steps (step > 0, before ``refine_stop``): opacities are clamped to
  ``2 × prune_opa`` and their Adam moments zeroed.

Screen-size rules (``grow_scale2d``, ``prune_scale2d``) apply only while step < ``refine_scale2d_stop``
(0 = off, the 3DGS/gsplat default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from recon.strategy import ops
from recon.strategy.base import Info, Strategy, as_metas
from recon.strategy.ops import Optimizers, Params, StrategyState

STATE_KEYS = ("grad2d", "count", "radii")


@dataclass
class DefaultStrategy(Strategy):
    """3DGS adaptive density control. All step counts are in optimisation steps (use :meth:`scaled`
    for runs shorter or longer than the 30k-step reference)."""

    prune_opa: float = 0.005
    grow_grad2d: float = 2e-4
    grow_scale3d: float = 0.01
    grow_scale2d: float = 0.05
    prune_scale3d: float = 0.1
    prune_scale2d: float = 0.15
    refine_scale2d_stop: int = 0
    refine_start: int = 500
    refine_stop: int = 15_000
    refine_every: int = 100
    reset_every: int = 3000
    pause_refine_after_reset: int = 0
    #: False reproduces gsplat 1.5.3, whose reset condition ``step % reset_every == 0 & step > 0`` is
    #: always false (fixed upstream after 1.5.3); True is 3DGS / gsplat HEAD.
    opacity_reset: bool = True
    absgrad: bool = False
    revised_opacity: bool = False
    cap_max: int = 1_000_000
    verbose: bool = False

    # --- configuration ---------------------------------------------------------------------------
    #: accumulators: ``grad2d`` (sum of NDC gradient norms), ``count`` (views where visible), ``radii``
    #: (max radius / max(W, H)), each [N] float32
    STATE_KEYS = STATE_KEYS
    STEP_FIELDS = ("refine_start", "refine_stop", "refine_every", "reset_every", "pause_refine_after_reset", "refine_scale2d_stop")

    def check_sanity(self, params: Mapping[str, torch.nn.Parameter], optimizers: Optimizers) -> None:
        super().check_sanity(params, optimizers)
        for key in ("means", "scales", "quats", "opacities"):
            if key not in params:
                raise ValueError(f"DefaultStrategy needs params[{key!r}]")

    # --- hooks -----------------------------------------------------------------------------------
    def step_pre_backward(self, params: Params, optimizers: Optimizers, state: StrategyState, step: int, info: Info) -> None:
        """Retain the gradient of ``info["means2d"]`` (call before ``loss.backward()``). ``info`` may
        be a list of metas when one step renders several views separately."""
        for meta in as_metas(info):
            if "means2d" not in meta:
                raise KeyError("info must contain 'means2d' (the render's meta)")
            m = meta["means2d"]
            if step < self.refine_stop and m.requires_grad:
                m.retain_grad()

    def step_post_backward(
        self, params: Params, optimizers: Optimizers, state: StrategyState, step: int, info: Info, packed: bool = False
    ) -> dict[str, Any]:
        """Accumulate the statistics of this step and refine / reset when scheduled.

        ``info``: the render's ``meta`` (needs ``means2d`` with its gradient, ``radii``, ``width``,
        ``height``; ``n_cameras`` defaults to 1, or C for batched [C, N, 2] layouts; ``gaussian_ids``
        when ``packed``). When one step renders B views separately and averages their losses, pass
        the list of the B metas: each view is accumulated with its gradient scaled by B (the same
        convention as gsplat's ``n_cameras``).

        Returns ``{}`` or a summary ``{"duplicated", "split", "pruned", "capped", "opacity_reset",
        "num_primitives"}`` for logging."""
        if step >= self.refine_stop:
            return {}
        metas = as_metas(info)
        for meta in metas:
            self._accumulate(params, state, meta, packed, batch=len(metas))
        report: dict[str, Any] = {}
        if (
            step > self.refine_start
            and step % self.refine_every == 0
            and step % self.reset_every >= self.pause_refine_after_reset
        ):
            n_dup, n_split, capped = self._grow(params, optimizers, state, step)
            n_prune = self._prune(params, optimizers, state, step)
            for k in STATE_KEYS:
                state[k].zero_()
            report.update(duplicated=n_dup, split=n_split, pruned=n_prune, capped=capped)
        if self.opacity_reset and step > 0 and step % self.reset_every == 0:
            ops.reset_opacity(params, optimizers, state, value=2.0 * self.prune_opa)
            report["opacity_reset"] = True
        return self._summary(params, step, report, self.verbose)

    # --- internals -------------------------------------------------------------------------------
    @torch.no_grad()
    def _accumulate(
        self, params: Mapping[str, Tensor], state: dict[str, Any], info: Mapping[str, Any], packed: bool, batch: int = 1
    ) -> None:
        for key in ("means2d", "radii", "width", "height"):
            if key not in info:
                raise KeyError(f"info must contain {key!r} (the render's meta)")
        means2d = info["means2d"]
        grad = getattr(means2d, "absgrad", None) if self.absgrad else means2d.grad
        if grad is None:
            what = "means2d.absgrad (render with absgrad)" if self.absgrad else "means2d.grad"
            raise RuntimeError(f"{what} is None: call step_pre_backward before loss.backward()")
        width, height = float(info["width"]), float(info["height"])
        n_cams = float(info.get("n_cameras", 1 if means2d.dim() == 2 else means2d.shape[0])) * batch
        g = grad.detach().float().clone()
        g[..., 0] *= width / 2.0 * n_cams
        g[..., 1] *= height / 2.0 * n_cams

        radii = info["radii"].detach()
        per_axis = radii.dim() == g.dim()  # [..., N, 2] radii (gsplat >= 1.5) vs [..., N]
        if packed:
            ids = info["gaussian_ids"].long()
            r = radii.max(dim=-1).values if per_axis else radii
            vis_g, vis_r = g, r
        else:
            visible = (radii > 0).all(dim=-1) if per_axis else radii > 0  # [..., N]
            r = radii.max(dim=-1).values if per_axis else radii
            ids = torch.where(visible)[-1]  # primitive index of each visible (camera, primitive)
            vis_g, vis_r = g[visible], r[visible]

        device = g.device
        self._sized_state(state, ops.num_primitives(params), device)
        ids = ids.to(device)
        state["grad2d"].index_add_(0, ids, vis_g.norm(dim=-1))
        state["count"].index_add_(0, ids, torch.ones_like(ids, dtype=torch.float32))
        state["radii"].scatter_reduce_(0, ids, vis_r.float() / max(width, height), reduce="amax")

    @torch.no_grad()
    def _grow(self, params: Params, optimizers: Optimizers, state: StrategyState, step: int) -> tuple[int, int, int]:
        n = ops.num_primitives(params)
        grads = state["grad2d"] / state["count"].clamp_min(1)
        device = params["means"].device
        grads = grads.to(device)
        high = grads > self.grow_grad2d
        small = torch.exp(params["scales"]).max(dim=-1).values <= self.grow_scale3d * state["scene_scale"]
        is_dup = high & small
        is_split = high & ~small
        if step < self.refine_scale2d_stop:
            # gsplat semantics: large on screen -> split, whatever the gradient (off by default)
            is_split |= state["radii"].to(device) > self.grow_scale2d
            is_dup &= ~is_split
        # each duplicate or split adds one primitive; respect the cap by keeping the best candidates
        cand = torch.where(is_dup | is_split)[0]
        budget = max(int(self.cap_max) - n, 0)
        capped = 0
        if len(cand) > budget:
            capped = len(cand) - budget
            order = torch.argsort(grads[cand], descending=True, stable=True)
            keep = torch.zeros(n, dtype=torch.bool, device=device)
            keep[cand[order[:budget]]] = True
            is_dup &= keep
            is_split &= keep
        n_dup = int(is_dup.sum())
        n_split = int(is_split.sum())
        if n_dup:
            ops.duplicate(params, optimizers, state, is_dup)
        if n_split:
            # the copies appended by duplicate are not split
            is_split = torch.cat([is_split, torch.zeros(n_dup, dtype=torch.bool, device=device)])
            ops.split(params, optimizers, state, is_split, revised_opacity=self.revised_opacity)
        return n_dup, n_split, capped

    @torch.no_grad()
    def _prune(self, params: Params, optimizers: Optimizers, state: StrategyState, step: int) -> int:
        prune = torch.sigmoid(params["opacities"].reshape(-1)) < self.prune_opa
        if step > self.reset_every:
            too_big = torch.exp(params["scales"]).max(dim=-1).values > self.prune_scale3d * state["scene_scale"]
            if step < self.refine_scale2d_stop:
                too_big |= state["radii"].to(too_big.device) > self.prune_scale2d
            prune |= too_big
        n_prune = int(prune.sum())
        if n_prune:
            ops.remove(params, optimizers, state, prune)
        return n_prune
