"""recon.rasterizers: the shared differentiable rasterization core.

``render_gaussians`` dispatches to the CUDA core (``recon.rasterizers.cuda``, loaded lazily and only
for CUDA inputs) or to the pure-PyTorch reference (``recon.rasterizers.reference``). Importing this
package never compiles anything.
"""

from .convexes import render_convexes, render_convexes_reference
from .gaussians import gaussian_colors, render_gaussians, render_gaussians_reference
from .hashgrid import HashGridConfig, HashGridEncoding, hash_grid_encode
from .reference.composite import CompositeResult, composite
from .reference.footprints import Footprint, gaussian_footprint
from .reference.projection import GaussianProjection, project_gaussians, quat_to_rotmat, scales_quats_to_covars
from .reference.sh import SH_C0, eval_sh, rgb_to_sh, sh_to_rgb
from .reference.tiles import TileIntersections, intersect_tiles
from .types import RasterSettings, RenderOutput
from .triangles import TriangleSettings, render_triangles, render_triangles_reference

__all__ = [
    "render_triangles",
    "render_triangles_reference",
    "TriangleSettings",
    "HashGridConfig",
    "HashGridEncoding",
    "hash_grid_encode",
    "RasterSettings",
    "RenderOutput",
    "render_gaussians",
    "render_convexes",
    "render_convexes_reference",
    "render_gaussians_reference",
    "gaussian_colors",
    "project_gaussians",
    "GaussianProjection",
    "quat_to_rotmat",
    "scales_quats_to_covars",
    "eval_sh",
    "sh_to_rgb",
    "rgb_to_sh",
    "SH_C0",
    "composite",
    "CompositeResult",
    "Footprint",
    "gaussian_footprint",
    "intersect_tiles",
    "TileIntersections",
]
