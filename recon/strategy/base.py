"""Densification strategy interface (the gsplat pattern, restated).

A strategy operates on the scene's parameter dict ``params: dict[str, nn.Parameter]`` and a dict of
optimizers ``optimizers: dict[str, torch.optim.Optimizer]`` (one per parameter name, each with one
param group holding exactly ``params[name]``), plus its own running ``state``: a plain dict whose
tensor values are per-primitive (first dimension = number of primitives) and whose non-tensor values
are plain Python scalars. The state can be saved with ``torch.save`` and restored exactly.

Per training step, in this order::

    out = scene.render(camera, ...)                    # out.meta: means2d, radii, width, height, ...
    strategy.step_pre_backward(params, optimizers, state, step, out.meta)   # retains means2d.grad
    loss.backward()
    for opt in optimizers.values(): opt.step(); opt.zero_grad(set_to_none=True)
    strategy.step_post_backward(params, optimizers, state, step, out.meta)  # may add/remove primitives

``step_post_backward`` replaces entries of ``params`` (and the optimizers' param references and Adam
moments) in place, so never hold on to a parameter tensor across steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch

from recon.strategy import ops
from recon.strategy.ops import Optimizers, Params, StrategyState

#: A render's ``meta``, or the list of metas when one step renders several views separately.
Info = Mapping[str, Any] | Sequence[Mapping[str, Any]]


def as_metas(info: Info) -> list[Mapping[str, Any]]:
    """``info`` as a list of render metas."""
    return list(info) if isinstance(info, (list, tuple)) else [info]


@dataclass
class Strategy:
    """Base class: sanity checks, the three hooks and the bookkeeping every policy shares; subclasses
    implement the policy."""

    #: Per-primitive float32 accumulators (first dimension N) that :meth:`initialize_state` creates.
    STATE_KEYS: ClassVar[tuple[str, ...]] = ()
    #: Step-valued fields that :meth:`scaled` multiplies; those named in ``AT_LEAST_ONE`` stay >= 1.
    STEP_FIELDS: ClassVar[tuple[str, ...]] = ()
    AT_LEAST_ONE: ClassVar[tuple[str, ...]] = ("refine_every", "reset_every")

    def scaled(self, factor: float) -> "Strategy":
        """A copy with every step-valued field (``STEP_FIELDS``) multiplied by ``factor`` (rounded; the
        periods ``AT_LEAST_ONE`` at least 1). E.g. ``scaled(steps / 30_000)`` for a run of ``steps`` steps."""
        changes = {}
        for name in self.STEP_FIELDS:
            v = int(round(getattr(self, name) * factor))
            changes[name] = max(v, 1) if name in self.AT_LEAST_ONE else v
        return dataclasses.replace(self, **changes)

    def check_sanity(self, params: Mapping[str, torch.nn.Parameter], optimizers: Optimizers) -> None:
        """Raise ``ValueError`` unless every trainable parameter has an optimizer of the same name with
        exactly one param group holding exactly that parameter, all parameters share their first
        dimension, and no optimizer is left without a parameter."""
        if not params:
            raise ValueError("no parameters")
        n = {name: p.shape[0] if p.dim() > 0 else None for name, p in params.items()}
        if len(set(n.values())) != 1 or None in n.values():
            raise ValueError(f"parameters must share their first dimension, got {n}")
        for name, p in params.items():
            if name not in optimizers:
                if p.requires_grad:
                    raise ValueError(f"trainable parameter {name!r} has no optimizer")
                continue
            groups = optimizers[name].param_groups
            if len(groups) != 1 or len(groups[0]["params"]) != 1:
                raise ValueError(f"optimizer {name!r} must have one param group with one parameter")
            if groups[0]["params"][0] is not p:
                raise ValueError(f"optimizer {name!r} does not hold params[{name!r}] (stale reference?)")
        extra = set(optimizers) - set(params)
        if extra:
            raise ValueError(f"optimizers without parameters: {sorted(extra)}")

    def initialize_state(
        self, scene_scale: float = 1.0, num_primitives: int = 0, device: str | torch.device = "cpu"
    ) -> StrategyState:
        """``{key: zeros [num_primitives] float32 for key in STATE_KEYS, "scene_scale": float}``. With
        ``num_primitives=0`` the tensors start empty and are sized by :meth:`_sized_state` on first use."""
        state: StrategyState = {k: torch.zeros(num_primitives, dtype=torch.float32, device=device) for k in self.STATE_KEYS}
        state["scene_scale"] = float(scene_scale)
        return state

    def step_pre_backward(self, params: Params, optimizers: Optimizers, state: StrategyState, step: int, info: Info) -> None:
        """Called after the forward pass, before ``loss.backward()``."""

    def step_post_backward(
        self, params: Params, optimizers: Optimizers, state: StrategyState, step: int, info: Info, packed: bool = False
    ) -> dict[str, Any]:
        """Called after ``loss.backward()`` (and after the optimizer step). Returns what it did."""
        return {}

    # --- shared bookkeeping ------------------------------------------------------------------------
    def _sized_state(self, state: StrategyState, n: int, device: torch.device) -> None:
        """Make every ``STATE_KEYS`` accumulator a [n] tensor on ``device``: empty ones (sizes not known
        at :meth:`initialize_state`) become zeros; a row count other than ``n`` is an error."""
        for k in self.STATE_KEYS:
            v = state.get(k)
            if v is None or v.numel() == 0:
                state[k] = torch.zeros(n, dtype=torch.float32, device=device)
            elif v.shape[0] != n:
                raise ValueError(f"strategy state {k!r} has {v.shape[0]} rows but there are {n} primitives")
            elif v.device != device:
                state[k] = v.to(device)

    def _summary(self, params: Params, step: int, report: dict[str, Any], verbose: bool) -> dict[str, Any]:
        """``report`` (what a step did) with the primitive count added when it is not empty; printed
        when ``verbose``."""
        if report:
            report["num_primitives"] = ops.num_primitives(params)
            if verbose:
                print(f"[{type(self).__name__}] step {step}: {report}")
        return report
