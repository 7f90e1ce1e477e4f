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

from dataclasses import dataclass
from typing import Any, Mapping

import torch


@dataclass
class Strategy:
    """Base class: sanity checks and the three hooks; subclasses implement the policy."""

    def check_sanity(
        self, params: Mapping[str, torch.nn.Parameter], optimizers: Mapping[str, torch.optim.Optimizer]
    ) -> None:
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

    def initialize_state(self, scene_scale: float = 1.0) -> dict[str, Any]:
        return {"scene_scale": float(scene_scale)}

    def step_pre_backward(
        self,
        params: Mapping[str, torch.nn.Parameter],
        optimizers: Mapping[str, torch.optim.Optimizer],
        state: dict[str, Any],
        step: int,
        info: dict[str, Any],
    ) -> None:
        """Called after the forward pass, before ``loss.backward()``."""

    def step_post_backward(
        self,
        params: dict[str, torch.nn.Parameter],
        optimizers: Mapping[str, torch.optim.Optimizer],
        state: dict[str, Any],
        step: int,
        info: dict[str, Any],
        packed: bool = False,
    ) -> dict[str, Any]:
        """Called after ``loss.backward()`` (and after the optimizer step). Returns what it did."""
        return {}
