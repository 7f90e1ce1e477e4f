"""Densification of 3D smooth convexes (3D Convex Splatting, ``shared/notes/rasterizers.md`` a.4).

Restated from the paper/notes, in recon's strategy interface (:mod:`recon.strategy.base`):

- every step before ``refine_stop``: for each convex visible in the view (``radii > 0``) accumulate
  ``|dL/dsigma|`` (the gradient of the loss w.r.t. its activated sharpness, read from the render's
  ``meta["sigmas"]``; 3DCS's densification signal) and a visibility count; the translation gradient
  ``|dL/dmeans2d|`` is accumulated next to it for logging;
- every ``refine_every`` steps in (``refine_start``, ``refine_stop``): convexes whose mean signal is at least
  ``grow_sigma_grad`` are replaced by ``K`` children: child ``k`` is the parent shrunk by ``child_scale``
  about its centroid ``c`` and moved to ``c + child_offset (P_k - c)``, with opacity ``o / 2``, raw
  (log) delta times ``child_delta_factor`` and raw (log) sigma times ``child_sigma_factor`` (< 1 makes a
  negative log larger: sharper children). The count is capped at ``cap_max`` (keeping the
  highest-signal candidates). Then convexes with opacity < ``prune_opa`` are removed, and after the first
  opacity reset also those whose 3D size (max point distance from the centroid) exceeds
  ``prune_size3d x scene_scale``; the accumulators restart;
- every ``reset_every`` steps (before ``refine_stop``): opacities are clamped to ``reset_opa`` and their
  Adam moments zeroed.

Not reproduced: 3DCS's straight-through binary opacity mask (its pruning aid) — pruning here is by opacity
and size only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from recon.strategy import ops
from recon.strategy.base import Strategy, as_metas

STATE_KEYS = ("sigma_grad", "grad2d", "count")


@dataclass
class ConvexStrategy(Strategy):
    """3DCS densification (step counts in optimisation steps; :meth:`scaled` compresses them)."""

    grow_sigma_grad: float = 2.5e-5
    """Mean |dL/dsigma| over the views where a convex was visible at which it is split into K children."""
    child_scale: float = 0.65
    child_offset: float = 1.0
    child_delta_factor: float = 1.0
    child_sigma_factor: float = 0.87
    prune_opa: float = 0.03
    prune_size3d: float = 0.3
    reset_opa: float = 0.2
    refine_start: int = 500
    refine_stop: int = 9000
    refine_every: int = 200
    reset_every: int = 3000
    opacity_reset: bool = True
    cap_max: int = 1_000_000
    verbose: bool = False

    STATE_KEYS = STATE_KEYS
    STEP_FIELDS = ("refine_start", "refine_stop", "refine_every", "reset_every")

    def check_sanity(self, params: Mapping[str, torch.nn.Parameter], optimizers: ops.Optimizers) -> None:
        super().check_sanity(params, optimizers)
        for key in ("points", "deltas", "sigmas", "opacities"):
            if key not in params:
                raise ValueError(f"ConvexStrategy needs params[{key!r}]")

    # --- hooks -----------------------------------------------------------------------------------
    def step_pre_backward(self, params, optimizers, state, step, info) -> None:
        """Retain the gradients of ``meta["sigmas"]`` and ``meta["means2d"]`` (before ``loss.backward()``)."""
        if step >= self.refine_stop:
            return
        for meta in as_metas(info):
            for key in ("sigmas", "means2d"):
                if key not in meta:
                    raise KeyError(f"info must contain {key!r} (the convex render's meta)")
                t = meta[key]
                if t.requires_grad and not t.is_leaf:
                    t.retain_grad()

    def step_post_backward(self, params, optimizers, state, step, info, packed: bool = False) -> dict[str, Any]:
        if step >= self.refine_stop:
            return {}
        for meta in as_metas(info):
            self._accumulate(params, state, meta)
        report: dict[str, Any] = {}
        if step > self.refine_start and step % self.refine_every == 0:
            seen = state["count"] > 0
            if self.verbose and bool(seen.any()):  # the signal's spread, to judge grow_sigma_grad on new data
                signal = (state["sigma_grad"] / state["count"].clamp_min(1))[seen]
                report["signal_p50_p90"] = [float(q) for q in torch.quantile(signal.float().cpu(), torch.tensor([0.5, 0.9]))]
            n_split, capped = self._grow(params, optimizers, state)
            n_prune = self._prune(params, optimizers, state, step)
            for k in STATE_KEYS:
                state[k].zero_()
            report.update(split=n_split, pruned=n_prune, capped=capped)
        if self.opacity_reset and step > 0 and step % self.reset_every == 0:
            ops.reset_opacity(params, optimizers, state, value=self.reset_opa)
            report["opacity_reset"] = True
        return self._summary(params, step, report, self.verbose)

    # --- internals -------------------------------------------------------------------------------
    @torch.no_grad()
    def _accumulate(self, params: Mapping[str, Tensor], state: dict[str, Any], info: Mapping[str, Any]) -> None:
        sig = info["sigmas"]
        g_sigma = sig.grad
        g_m2d = info["means2d"].grad
        if g_sigma is None or g_m2d is None:
            raise RuntimeError("meta['sigmas'].grad / meta['means2d'].grad is None: call step_pre_backward before loss.backward()")
        self._sized_state(state, ops.num_primitives(params), params["points"].device)
        radii = info["radii"]
        visible = radii > 0
        if visible.dim() == 2:  # batched cameras [I, N]
            count = visible.float().sum(0)
            m2d = (g_m2d.float().norm(dim=-1) * visible).sum(0)
        else:
            count = visible.float()
            m2d = g_m2d.float().norm(dim=-1) * visible
        state["sigma_grad"] += g_sigma.float().abs() * (count > 0)
        state["grad2d"] += m2d
        state["count"] += count

    @torch.no_grad()
    def _grow(self, params: dict[str, Tensor], optimizers, state: dict[str, Any]) -> tuple[int, int]:
        n = ops.num_primitives(params)
        k = params["points"].shape[1]
        signal = state["sigma_grad"] / state["count"].clamp_min(1)
        cand = torch.where(signal >= self.grow_sigma_grad)[0]
        # each split adds K - 1 convexes; respect the cap with the strongest candidates
        budget = max(int(self.cap_max) - n, 0) // max(k - 1, 1)
        capped = 0
        if len(cand) > budget:
            capped = len(cand) - budget
            order = torch.argsort(signal[cand], descending=True, stable=True)
            cand = cand[order[:budget]]
        if len(cand):
            mask = torch.zeros(n, dtype=torch.bool, device=signal.device)
            mask[cand] = True
            split_into_children(params, optimizers, state, mask, scale=self.child_scale, offset=self.child_offset,
                                delta_factor=self.child_delta_factor, sigma_factor=self.child_sigma_factor)  # fmt: skip
        return len(cand), capped

    @torch.no_grad()
    def _prune(self, params: dict[str, Tensor], optimizers, state: dict[str, Any], step: int) -> int:
        prune = torch.sigmoid(params["opacities"]) < self.prune_opa
        if step > self.reset_every:
            pts = params["points"]
            size = (pts - pts.mean(1, keepdim=True)).norm(dim=-1).amax(1)
            prune |= size > self.prune_size3d * state["scene_scale"]
        n_prune = int(prune.sum())
        if n_prune:
            ops.remove(params, optimizers, state, prune)
        return n_prune


@torch.no_grad()
def split_into_children(
    params: ops.Params, optimizers: ops.Optimizers, state: ops.StrategyState | None, mask: Tensor, *, scale: float = 0.65,
    offset: float = 1.0, delta_factor: float = 1.0, sigma_factor: float = 0.87,
) -> None:  # fmt: skip
    """Replace every masked convex by K children (one per point; see :class:`ConvexStrategy`).

    Unmasked convexes keep their order at the front; the children follow, grouped by point index
    ``[child 0 of every parent..., child 1 of every parent..., ...]``. Children get zero Adam moments and
    a copy of the parent's strategy state; other per-convex parameters (SH) are copied."""
    sel, rest = ops.selected_and_rest(params, mask)
    if len(sel) == 0:
        return
    pts = params["points"].detach()[sel]  # [s, K, 3]
    k = pts.shape[1]
    c = pts.mean(1, keepdim=True)  # [s, 1, 3]
    shape = (pts - c) * scale  # the shrunk parent about its centroid
    centres = c + offset * (pts - c)  # [s, K, 3]: child k sits at parent point k
    children = centres.transpose(0, 1)[:, :, None, :] + shape[None]  # [K, s, K, 3]

    def child_rows(name: str, parent: Tensor) -> Tensor:
        if name == "points":
            return children.reshape(k * len(sel), k, 3)
        if name == "opacities":
            o = torch.sigmoid(parent) * 0.5
            return torch.log(o / (1.0 - o)).repeat(k)
        if name == "deltas":
            return (parent * delta_factor).repeat(k)
        if name == "sigmas":
            return (parent * sigma_factor).repeat(k)
        return parent.repeat((k,) + (1,) * (parent.dim() - 1))

    ops.replace_by_children(params, optimizers, state, sel, rest, k, child_rows)
