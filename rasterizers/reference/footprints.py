"""Per-primitive footprints: the only primitive-specific function the compositor evaluates per pixel.

A **footprint** is any callable ``footprint(records, pixels) -> w`` with

- ``records`` ``[..., R]``: the fixed-size screen-space record of a primitive (Gaussian: R = 5,
  ``(u_x, u_y, a, b, c)``); ``pixels`` ``[..., 2]``: sample positions in pixel coordinates (pixel
  ``(x, y)`` is sampled at ``(x + pixel_offset, y + pixel_offset)``; the compositor passes positions
  already offset);
- leading dimensions broadcast against each other (e.g. records ``[T, 1, K, R]`` with pixels
  ``[T, P, 1, 2]`` gives ``w`` ``[T, P, K]``, or both flat ``[M, R]`` / ``[M, 2]``);
- ``w`` in ``[0, 1]``; a sample that is invalid for the primitive returns exactly 0;
- pure (no state, no in-place writes to its inputs) and differentiable by autograd w.r.t.
  ``records`` with finite gradients wherever the inputs are finite.

The compositor turns ``w`` into ``alpha = min(alpha_max, o * w)``; everything else (sorting,
thresholds, transmittance) is shared. Convex and triangle footprints implement the same protocol
(and their CUDA twins an ``eval``/``vjp`` pair with the same semantics, notes a.8).
"""

from __future__ import annotations

from typing import Protocol

import torch

__all__ = ["Footprint", "GaussianFootprint", "gaussian_footprint", "GAUSSIAN_RECORD_SIZE"]

GAUSSIAN_RECORD_SIZE = 5


class Footprint(Protocol):
    """``(records [..., R], pixels [..., 2]) -> w [...]`` (broadcasting), see the module docstring.

    Optional fast path: a ``grid(records [..., R], xs [..., X], ys [..., Y]) -> w [..., Y, X]`` method
    evaluating the footprint on the pixel grid ``xs x ys`` (the tiled compositor's no-grad selection
    pass uses it when present; it must agree with ``__call__`` up to rounding).
    """

    def __call__(self, records: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor: ...


def _gaussian_eval(records: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    dx = records[..., 0] - pixels[..., 0]
    dy = records[..., 1] - pixels[..., 1]
    e = 0.5 * (records[..., 2] * dx * dx + records[..., 4] * dy * dy) + records[..., 3] * dx * dy
    # E < 0 only for an indefinite conic; clamp inside exp so the unused branch has a finite gradient.
    return torch.where(e >= 0, torch.exp(-e.clamp_min(0)), torch.zeros((), dtype=e.dtype, device=e.device))


def _gaussian_grid(records: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Separable evaluation on a pixel grid: 3 full-size ops for E instead of ~12."""
    dx = records[..., 0:1] - xs  # [..., X]
    dy = records[..., 1:2] - ys  # [..., Y]
    ex = (0.5 * records[..., 2:3]) * dx * dx
    ey = (0.5 * records[..., 4:5]) * dy * dy
    e = (records[..., 3:4] * dx)[..., None, :] * dy[..., :, None]
    e += ex[..., None, :]
    e += ey[..., :, None]
    w = torch.exp(-e.clamp_min(0))
    return w.masked_fill_(e < 0, 0.0)


class GaussianFootprint:
    """EWA Gaussian: ``d = u - p``, ``E = 0.5 (a dx^2 + c dy^2) + b dx dy``, ``w = exp(-E)``, 0 where E < 0.

    ``records`` ``[..., 5]`` = ``(u_x, u_y, a, b, c)`` (``(a, b, c)`` = conic, the inverse of the
    dilated 2D covariance); ``pixels`` ``[..., 2]``. Returns ``w`` with the broadcast leading shape.
    """

    record_size = GAUSSIAN_RECORD_SIZE

    def __call__(self, records: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        return _gaussian_eval(records, pixels)

    def grid(self, records: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        return _gaussian_grid(records, xs, ys)

    def __repr__(self) -> str:
        return "gaussian_footprint"


gaussian_footprint = GaussianFootprint()
