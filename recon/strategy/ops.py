"""Primitive-set surgery that keeps parameters, Adam moments and strategy state consistent.

Every op takes ``params`` (a dict of ``nn.Parameter`` with a shared first dimension N), ``optimizers``
(any mapping of optimizers; the one holding a parameter is found by identity), ``state`` (the
strategy's dict: every tensor value with first dimension N is per-primitive and is permuted the same
way; empty tensors mean "not initialised yet" and are left alone; 0-d tensors and non-tensors are
global and left alone) and a boolean ``mask [N]``. Parameters are replaced by new ``nn.Parameter``
objects in the same dict (and in the optimizers' param groups); the per-parameter optimizer state is
moved to the new object with every per-row tensor (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``)
updated — rows of new primitives get zero moments; the scalar ``step`` is kept.

Formulas: notes/rasterizers.md a.9 (3DGS adaptive density control, as in gsplat's ``strategy/ops``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

Params = dict[str, torch.nn.Parameter]  # the scene's parameter dict, edited in place
Optimizers = Mapping[str, torch.optim.Optimizer]
StrategyState = dict[str, Any]
ParamFn = Callable[[str, Tensor], Tensor]
RowFn = Callable[[Tensor], Tensor]


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Quaternions [..., 4] (w, x, y, z; normalised here) -> rotation matrices [..., 3, 3]."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    r = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return r.reshape(*q.shape[:-1], 3, 3)


def num_primitives(params: Mapping[str, Tensor]) -> int:
    return int(next(iter(params.values())).shape[0])


def _check_mask(params: Mapping[str, Tensor], mask: Tensor) -> Tensor:
    n = num_primitives(params)
    if mask.dtype != torch.bool or mask.shape != (n,):
        raise ValueError(f"mask must be a bool tensor of shape ({n},), got {mask.dtype} {tuple(mask.shape)}")
    return mask.to(next(iter(params.values())).device)


def selected_and_rest(params: Mapping[str, Tensor], mask: Tensor) -> tuple[Tensor, Tensor]:
    """The indices of the masked primitives and of the others, in index order (``mask`` checked)."""
    mask = _check_mask(params, mask)
    return torch.where(mask)[0], torch.where(~mask)[0]


@torch.no_grad()
def _replace(params: Params, optimizers: Optimizers, param_fn: ParamFn, moment_fn: RowFn, names: list[str] | None = None) -> None:
    """Replace ``params[name]`` by ``param_fn(name, old)`` and rewrite its optimizer state rows."""
    for name in list(params.keys()) if names is None else names:
        old = params[name]
        n_old = old.shape[0]
        new = torch.nn.Parameter(param_fn(name, old.detach()).contiguous(), requires_grad=old.requires_grad)
        params[name] = new
        for opt in optimizers.values():
            holds = False
            for group in opt.param_groups:
                for i, p in enumerate(group["params"]):
                    if p is old:
                        group["params"][i] = new
                        holds = True
            if not holds:
                continue
            pstate = opt.state.pop(old, None)
            if pstate:
                for key, v in list(pstate.items()):
                    if key != "step" and isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n_old:
                        pstate[key] = moment_fn(v)
                opt.state[new] = pstate


def _update_state(state: StrategyState | None, n_old: int, fn: RowFn) -> None:
    if not state:
        return
    for key, v in list(state.items()):
        if not isinstance(v, Tensor) or v.dim() == 0:
            continue
        if v.shape[0] == n_old:
            state[key] = fn(v)
        elif v.shape[0] != 0:
            raise ValueError(f"strategy state {key!r} has {v.shape[0]} rows but there are {n_old} primitives")


def _zeros_rows(v: Tensor, k: int) -> Tensor:
    return torch.zeros((k, *v.shape[1:]), dtype=v.dtype, device=v.device)


@torch.no_grad()
def replace_by_children(
    params: Params, optimizers: Optimizers, state: StrategyState | None, sel: Tensor, rest: Tensor, copies: int,
    children: ParamFn,
) -> None:  # fmt: skip
    """Replace the primitives ``sel`` by ``copies`` children each; the others (``rest``) keep their order
    at the front. ``children(name, parent_rows)`` gives the children's rows of parameter ``name`` from
    its rows at ``sel``, laid out ``[child 0 of every parent..., child 1 of every parent..., ...]``.
    Children get zero Adam moments and a copy of their parent's strategy state."""
    n = len(sel) + len(rest)
    _replace(
        params, optimizers, lambda name, p: torch.cat([p[rest], children(name, p[sel]).to(p.dtype)]),
        lambda v: torch.cat([v[rest], _zeros_rows(v, copies * len(sel))]),
    )  # fmt: skip

    def state_fn(v: Tensor) -> Tensor:
        s, r = sel.to(v.device), rest.to(v.device)
        return torch.cat([v[r], v[s].repeat((copies,) + (1,) * (v.dim() - 1))])

    _update_state(state, n, state_fn)


@torch.no_grad()
def duplicate(params: Params, optimizers: Optimizers, state: StrategyState | None, mask: Tensor) -> None:
    """Append an identical copy of every masked primitive (rows N..N+k-1, in index order).
    Copies get zero Adam moments and a copy of the parent's strategy state."""
    n = num_primitives(params)
    sel, _ = selected_and_rest(params, mask)
    if len(sel) == 0:
        return
    _replace(params, optimizers, lambda name, p: torch.cat([p, p[sel]]), lambda v: torch.cat([v, _zeros_rows(v, len(sel))]))
    _update_state(state, n, lambda v: torch.cat([v, v[sel.to(v.device)]]))


@torch.no_grad()
def split(
    params: Params, optimizers: Optimizers, state: StrategyState | None, mask: Tensor, revised_opacity: bool = False,
    generator: torch.Generator | None = None,
) -> None:  # fmt: skip
    """Replace every masked Gaussian by 2 children drawn from N(μ, Σ), Σ = R S Sᵀ Rᵀ, with scales
    divided by 1.6 (other parameters copied; with ``revised_opacity`` the child opacity is
    1 - sqrt(1 - o), arXiv:2404.06109). Unmasked primitives keep their order at the front; the
    children follow as [first child of each parent..., second child of each parent...]. Children get
    zero Adam moments and a copy of the parent's strategy state. Needs ``means``, ``scales`` (log),
    ``quats`` (wxyz); ``opacities`` (logit) only with ``revised_opacity``."""
    sel, rest = selected_and_rest(params, mask)
    if len(sel) == 0:
        return
    k = len(sel)
    means = params["means"].detach()
    scales = torch.exp(params["scales"].detach()[sel])  # [k, 3]
    rot = quat_to_rotmat(params["quats"].detach()[sel])  # [k, 3, 3]
    eps = torch.randn(
        (2, k, 3), generator=generator, dtype=means.dtype,
        device=means.device if generator is None else generator.device,
    ).to(means.device)
    offsets = torch.einsum("kij,kj,bkj->bki", rot, scales, eps)  # R S eps, [2, k, 3]

    def children(name: str, parent: Tensor) -> Tensor:
        reps = (2,) + (1,) * (parent.dim() - 1)
        if name == "means":
            return (parent.unsqueeze(0) + offsets).reshape(2 * k, 3)
        if name == "scales":
            return torch.log(scales / 1.6).repeat(2, 1)
        if name == "opacities" and revised_opacity:
            o = torch.sigmoid(parent)
            return torch.logit(1.0 - torch.sqrt(1.0 - o)).repeat(reps)
        return parent.repeat(reps)

    replace_by_children(params, optimizers, state, sel, rest, 2, children)


@torch.no_grad()
def remove(params: Params, optimizers: Optimizers, state: StrategyState | None, mask: Tensor) -> None:
    """Drop every masked primitive (the rest keep their order, moments and state)."""
    mask = _check_mask(params, mask)
    n = num_primitives(params)
    if not bool(mask.any()):
        return
    keep = torch.where(~mask)[0]
    _replace(params, optimizers, lambda name, p: p[keep], lambda v: v[keep])
    _update_state(state, n, lambda v: v[keep.to(v.device)])


@torch.no_grad()
def reset_opacity(params: Params, optimizers: Optimizers, state: StrategyState | None, value: float) -> None:
    """Clamp every opacity to at most ``value`` (post-sigmoid; the logit is clamped) and zero the Adam
    moments of ``opacities``. Other parameters and the strategy state are untouched."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"opacity reset value must be in (0, 1), got {value}")
    def clamp(name: str, p: Tensor) -> Tensor:
        # the largest logit in p's dtype whose sigmoid does not exceed value
        bound = torch.tensor(math.log(value / (1.0 - value)), dtype=p.dtype, device=p.device)
        while bool(torch.sigmoid(bound) > value):
            bound = torch.nextafter(bound, torch.tensor(-math.inf, dtype=p.dtype, device=p.device))
        return torch.minimum(p, bound)

    _replace(params, optimizers, clamp, torch.zeros_like, names=["opacities"])
