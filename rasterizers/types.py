"""Types shared by every rasterizer backend (PyTorch reference and CUDA)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class RasterSettings:
    """Numerical constants that change published numbers; defaults follow 3DGS / gsplat.

    - ``alpha_min``: a sample with alpha below this contributes nothing (1/255).
    - ``alpha_max``: alpha is clamped to this (0.99 as in 3DGS and gsplat HEAD; gsplat 1.5.3 used 0.999).
    - ``t_min``: compositing stops *before* the sample that would bring transmittance to <= t_min
      (exclusive, as gsplat), so T_end >= t_min and the backward's T/(1-alpha) recovery stays stable.
    - ``eps2d``: low-pass dilation added to the 2D covariance diagonal, in pixels^2 (0.3).
    - ``antialiased``: Mip-Splatting style opacity compensation sqrt(det S / det(S + eps2d I)).
    - ``pixel_offset``: pixel (x, y) is sampled at (x + offset, y + offset); 0.5 = COLMAP/gsplat.
    - ``near`` / ``far``: primitives with camera depth outside (near, far) are culled.
    - ``tile_size``: tile edge in pixels for tile binning.
    """

    alpha_min: float = 1.0 / 255.0
    alpha_max: float = 0.99
    t_min: float = 1e-4
    eps2d: float = 0.3
    antialiased: bool = False
    pixel_offset: float = 0.5
    near: float = 0.01
    far: float = 1e10
    tile_size: int = 16


@dataclass
class RenderOutput:
    """What a render returns. Images are channels-last.

    - ``image`` [H, W, C] composited colour (background added);
    - ``alpha`` [H, W, 1] accumulated opacity 1 - T_end;
    - ``depth`` [H, W, 1] accumulated depth sum(alpha_k T_k z_k) (divide by alpha for expected depth),
      or None when not requested;
    - ``meta``: intermediates, never hidden. For Gaussians at least ``means2d`` [N, 2] (a tensor that
      requires grad when the inputs do; densification reads ``means2d.grad`` after backward, so call
      ``retain_grad()`` on it before), ``radii`` [N] int (0 = culled), ``depths`` [N], ``conics`` [N, 3],
      ``opacities`` [N] (after antialiasing compensation), ``colors`` [N, C].
    """

    image: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)
