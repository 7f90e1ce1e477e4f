"""Real spherical harmonics up to degree 3 (Sloan's form; constants in ``shared/notes/rasterizers.md`` a.3).

Basis order inside a coefficient tensor ``[..., K, C]`` is l = 0, 1, 2, 3 and, within a band, the order
listed below (the order 3DGS/gsplat PLY files use), so ``K = (degree + 1) ** 2``.

Colour convention of the toolkit: ``rgb = eval_sh(...) + 0.5``, clamped at 0 by the caller
(:func:`recon.rasterizers.render_gaussians` does the clamp).
"""

from __future__ import annotations

import torch

__all__ = ["SH_C0", "eval_sh", "sh_to_rgb", "rgb_to_sh", "num_sh_bases", "sh_basis"]

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    """Number of coefficients of a degree-``degree`` expansion: (degree + 1)^2."""
    return (degree + 1) ** 2


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """Basis values [..., (degree+1)^2] at directions [..., 3] (normalised inside)."""
    if not 0 <= degree <= 3:
        raise ValueError(f"sh degree must be in 0..3, got {degree}")
    d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            SH_C2[0] * xy,
            SH_C2[1] * yz,
            SH_C2[2] * (2 * zz - xx - yy),
            SH_C2[3] * xz,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3 * xx - yy),
            SH_C3[1] * xy * z,
            SH_C3[2] * y * (4 * zz - xx - yy),
            SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            SH_C3[4] * x * (4 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, coeffs: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Evaluate SH: coeffs [..., K, C] (K >= (degree+1)^2; extra bands ignored), dirs [..., 3] -> [..., C].

    ``dirs`` need not be normalised. No +0.5 offset and no clamp here.
    """
    k = num_sh_bases(degree)
    if coeffs.shape[-2] < k:
        raise ValueError(f"sh degree {degree} needs {k} coefficients, got {coeffs.shape[-2]}")
    basis = sh_basis(degree, dirs).to(coeffs.dtype)  # [..., k]
    return (basis[..., :, None] * coeffs[..., :k, :]).sum(dim=-2)


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    """DC coefficient whose evaluated colour (+0.5) is ``rgb``: (rgb - 0.5) / C0."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: torch.Tensor) -> torch.Tensor:
    """Colour of a DC coefficient: sh * C0 + 0.5."""
    return sh * SH_C0 + 0.5
