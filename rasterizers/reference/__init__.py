"""Pure-PyTorch reference rasterizer: the CPU path of the toolkit and the oracle for the CUDA core.

Every stage is a public op with its intermediates returned: projection (EWA), spherical harmonics,
footprints, tile binning and the footprint-generic compositor. Formulas:
``shared/notes/rasterizers.md`` (a.1-a.3, a.8).
"""

from .composite import CompositeResult, composite, pixel_centers
from .footprints import GAUSSIAN_RECORD_SIZE, Footprint, GaussianFootprint, gaussian_footprint
from .projection import (
    GaussianProjection,
    camera_center,
    project_gaussians,
    quat_to_rotmat,
    scales_quats_to_covars,
    world_to_camera,
)
from .sh import SH_C0, eval_sh, num_sh_bases, rgb_to_sh, sh_basis, sh_to_rgb
from .tiles import TileIntersections, intersect_tiles, plan_tile_chunks, rects_to_tile_rects, tile_grid, tile_lists, tile_pixels

__all__ = [
    "CompositeResult",
    "composite",
    "pixel_centers",
    "GAUSSIAN_RECORD_SIZE",
    "Footprint",
    "GaussianFootprint",
    "gaussian_footprint",
    "GaussianProjection",
    "camera_center",
    "project_gaussians",
    "quat_to_rotmat",
    "scales_quats_to_covars",
    "world_to_camera",
    "SH_C0",
    "eval_sh",
    "num_sh_bases",
    "rgb_to_sh",
    "sh_basis",
    "sh_to_rgb",
    "TileIntersections",
    "intersect_tiles",
    "plan_tile_chunks",
    "rects_to_tile_rects",
    "tile_grid",
    "tile_lists",
    "tile_pixels",
]
