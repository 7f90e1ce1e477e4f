"""recon's CUDA tile rasterization core (one pipeline for every splat primitive).

Importing this package never compiles: the extension is built on first use (JIT, cached; one progress
line) or ahead of time with ``python -m recon.rasterizers.cuda.build``. Without a CUDA device
:func:`is_available` returns False without trying.
"""

from __future__ import annotations

from ._backend import build_dir, cuda_device_present, is_built, unavailable_reason
from ._backend import is_available as is_available
from .ops import (
    CHANNELS,
    FOOTPRINT_GAUSSIAN,
    Projection,
    TileBins,
    intersect_tiles,
    project_gaussians,
    rasterize,
    render_gaussians_cuda,
    spherical_harmonics,
)

__all__ = [
    "is_available",
    "unavailable_reason",
    "cuda_device_present",
    "is_built",
    "build_dir",
    "render_gaussians_cuda",
    "project_gaussians",
    "spherical_harmonics",
    "intersect_tiles",
    "rasterize",
    "Projection",
    "TileBins",
    "FOOTPRINT_GAUSSIAN",
    "CHANNELS",
]
