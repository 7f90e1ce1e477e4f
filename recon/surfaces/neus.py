"""NeuS: signed distance -> discrete opacity, and front-to-back compositing of packed samples.

Formulas (notes/surfaces_4d_export.md 1.2). ``Phi_s(t) = sigmoid(s t)`` with one learnable inverse
standard deviation ``s``. A ray section of length ``dt`` whose midpoint has SDF ``f`` and whose direction
makes the (annealed) cosine ``cos`` with the surface normal has SDF ``f - cos dt/2`` at its start and
``f + cos dt/2`` at its end; its opacity is

    alpha = clamp((Phi(f_start) - Phi(f_end) + 1e-5) / (Phi(f_start) + 1e-5), 0, 1).

Samples are *packed*: flat tensors with ``ray_indices`` (sorted, ascending ``t`` within a ray), the
layout nerfacc uses, so the PyTorch twins below and nerfacc's CUDA functions are interchangeable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def annealed_cos(dirs: torch.Tensor, normals: torch.Tensor, anneal_ratio: float) -> torch.Tensor:
    """NeuS' cosine between ray and normal, blended from a soft version (ratio 0: every section is
    treated as partly crossing the surface, so gradients reach back faces early) to the true one
    (ratio 1). Always <= 0 for sections heading into the surface."""
    dn = (dirs * normals).sum(-1)
    r = float(anneal_ratio)
    return -(F.relu(-dn * 0.5 + 0.5) * (1.0 - r) + F.relu(-dn) * r)


def neus_alpha(sdf: torch.Tensor, cos: torch.Tensor, dt: torch.Tensor, inv_s: torch.Tensor) -> torch.Tensor:
    """Opacity of each section from its midpoint SDF (see the module docstring)."""
    half = cos * dt * 0.5
    cdf_start = torch.sigmoid((sdf - half) * inv_s)
    cdf_end = torch.sigmoid((sdf + half) * inv_s)
    return ((cdf_start - cdf_end + 1e-5) / (cdf_start + 1e-5)).clamp(0.0, 1.0)


def section_alpha_bound(sdf: torch.Tensor, length: float | torch.Tensor, inv_s: torch.Tensor | float) -> torch.Tensor:
    """The opacity a section of ``length`` centred at a point with SDF ``sdf`` has when it runs straight
    into the surface (cos = -1): an upper bound over directions, used for occupancy decisions."""
    return neus_alpha(sdf, torch.full_like(sdf, -1.0), torch.as_tensor(length, dtype=sdf.dtype, device=sdf.device), inv_s)


def endpoint_alpha(sdf_start: torch.Tensor, sdf_end: torch.Tensor, inv_s: torch.Tensor | float) -> torch.Tensor:
    """NeuS' discrete opacity from the SDF at both ends of a section (no normal needed): what the
    marcher uses, without gradients, to decide which sections lie behind an opaque surface."""
    cdf_start = torch.sigmoid(sdf_start * inv_s)
    cdf_end = torch.sigmoid(sdf_end * inv_s)
    return ((cdf_start - cdf_end + 1e-5) / (cdf_start + 1e-5)).clamp(0.0, 1.0)


# --- packed compositing (PyTorch twins of nerfacc.render_weight_from_alpha / accumulate_along_rays) ---
def ray_starts(ray_indices: torch.Tensor, n_rays: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first sample index, sample count) of every ray; ``ray_indices`` must be sorted."""
    counts = torch.bincount(ray_indices, minlength=n_rays)
    starts = torch.cumsum(counts, 0) - counts
    return starts, counts


def transmittance_from_alpha(alphas: torch.Tensor, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Exclusive transmittance ``T_i = prod_{j<i, same ray} (1 - alpha_j)`` of packed samples.

    A global cumulative sum of ``log(1 - alpha)`` in float64 minus its value at each ray's first
    sample (float64 so long batches do not cancel away small per-ray sums); differentiable."""
    if alphas.numel() == 0:
        return alphas.clone()
    log_keep = torch.log1p(-alphas.clamp(max=1.0 - 1e-7)).to(torch.float64)
    exclusive = torch.cumsum(log_keep, 0) - log_keep
    starts, _ = ray_starts(ray_indices, n_rays)
    base = exclusive[starts[ray_indices]]
    return torch.exp(exclusive - base).to(alphas.dtype)


def weights_from_alpha_torch(alphas: torch.Tensor, ray_indices: torch.Tensor, n_rays: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights, transmittance)`` with ``w_i = T_i alpha_i`` (PyTorch)."""
    trans = transmittance_from_alpha(alphas, ray_indices, n_rays)
    return trans * alphas, trans


def weights_from_alpha(alphas: torch.Tensor, ray_indices: torch.Tensor, n_rays: int, *, use_nerfacc: bool = False):
    """``(weights, transmittance)``: nerfacc's CUDA scan when asked for (and the tensors are on a GPU),
    the PyTorch twin otherwise. Both give the same numbers up to float rounding."""
    if use_nerfacc and alphas.is_cuda and alphas.numel() > 0:
        import nerfacc

        return nerfacc.render_weight_from_alpha(alphas, ray_indices=ray_indices, n_rays=n_rays)
    return weights_from_alpha_torch(alphas, ray_indices, n_rays)


def accumulate(weights: torch.Tensor, values: torch.Tensor | None, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """``sum_i w_i v_i`` per ray (``values=None``: ``sum_i w_i``), shape ``[n_rays, C]``."""
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros(n_rays, src.shape[-1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)
