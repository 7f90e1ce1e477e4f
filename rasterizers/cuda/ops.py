"""The recon CUDA core as PyTorch ops: every stage is a public op with its own autograd Function.

Pipeline (rasterizers.md a.2): :func:`project_gaussians` -> :func:`spherical_harmonics` ->
:func:`intersect_tiles` (no grad) -> :func:`rasterize` (footprint-generic compositor), composed by
:func:`render_gaussians_cuda`, which has the signature and semantics of
``recon.rasterizers.render_gaussians`` (the PyTorch reference is the oracle; see reference/*.py for the
exact conventions). Cameras may be batched (``viewmats`` [I, 4, 4]); per-image outputs then carry a
leading I.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..outputs import cuda_output
from ..types import RasterSettings, RenderOutput
from . import _backend

__all__ = [
    "FOOTPRINT_GAUSSIAN",
    "CHANNELS",
    "Projection",
    "TileBins",
    "project_gaussians",
    "spherical_harmonics",
    "intersect_tiles",
    "rasterize",
    "batch_cameras",
    "camera_features",
    "Composited",
    "composite_features",
    "render_gaussians_cuda",
]

FOOTPRINT_GAUSSIAN = 0
CHANNELS = (1, 2, 3, 4, 8, 16, 32)  # compositor instantiations; other channel counts are zero-padded up
# Defaults of the binning stage (docs/cuda_variants.md): exact ellipse-tile test, two-level sort.
DEFAULT_EXACT_TILES = True
DEFAULT_SORT_MODE = 1


def _C():
    return _backend.load()


def _f32(x: Tensor) -> Tensor:
    return x.detach().float().contiguous() if x.dtype != torch.float32 or not x.is_contiguous() else x.detach()


def _grad(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g.float().contiguous()


# ------------------------------------------------------------------------------------------------
# projection
# ------------------------------------------------------------------------------------------------
class Projection(NamedTuple):
    records: Tensor  # [I, N, 5] (u_x, u_y | conic a, b, c); differentiable
    depths: Tensor  # [I, N] camera z (0 = culled); differentiable
    radii: Tensor  # [I, N] int32, max(r_x, r_y), 0 = culled
    rects: Tensor  # [I, N, 4] int32 pixel bbox (x0, y0, x1, y1), end exclusive
    opacities: Tensor  # [I, N] opacity x compensation; differentiable
    compensation: Tensor  # [I, N] antialiasing factor (1 when off, 0 when culled); no grad
    means2d: Tensor  # [I, N, 2] the records' positions as their own tensor (pass it to rasterize(means2d=...)
    #                  so that its .grad is the screen-space gradient densification reads); differentiable

    @property
    def conics(self) -> Tensor:
        return self.records[..., 2:5]


class _ProjectGaussians(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near, far, alpha_min, antialiased):
        args = [_f32(t) for t in (means, quats, scales, opacities, viewmats, Ks)]
        records, depths, radii, rects, opac, comp, means2d = _C().project_gaussians_fwd(
            *args, width, height, eps2d, near, far, alpha_min, antialiased
        )
        ctx.save_for_backward(*args, radii)
        ctx.cfg = (width, height, eps2d, antialiased)
        ctx.mark_non_differentiable(radii, rects, comp)
        return records, depths, radii, rects, opac, comp, means2d

    @staticmethod
    def backward(ctx, v_records, v_depths, _v_radii, _v_rects, v_opac, _v_comp, v_means2d):
        means, quats, scales, opacities, viewmats, Ks, radii = ctx.saved_tensors
        width, height, eps2d, antialiased = ctx.cfg
        v_means, v_quats, v_scales, v_opacities = _C().project_gaussians_bwd(
            means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, antialiased, radii,
            _grad(v_records, radii.new_empty(radii.shape + (5,), dtype=torch.float32)),
            _grad(v_depths, radii.new_empty(radii.shape, dtype=torch.float32)),
            _grad(v_opac, radii.new_empty(radii.shape, dtype=torch.float32)),
            _grad(v_means2d, radii.new_empty(radii.shape + (2,), dtype=torch.float32)),
        )  # fmt: skip
        g = ctx.needs_input_grad
        return (
            v_means if g[0] else None,
            v_quats if g[1] else None,
            v_scales if g[2] else None,
            v_opacities if g[3] else None,
        ) + (None,) * 9


def project_gaussians(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int,
    settings: RasterSettings = RasterSettings(),
) -> Projection:  # fmt: skip
    """EWA projection of N Gaussians into I pinhole cameras (viewmats [I,4,4] world->camera, Ks [I,3,3]).

    Same conventions and culling as ``reference.projection.project_gaussians`` with opacities given.
    Gradients flow to means, quats, scales and opacities (not to the cameras).
    """
    out = _ProjectGaussians.apply(
        means, quats, scales, opacities, viewmats, Ks, int(width), int(height), float(settings.eps2d), float(settings.near),
        float(settings.far), float(settings.alpha_min), bool(settings.antialiased),
    )  # fmt: skip
    return Projection(*out)


# ------------------------------------------------------------------------------------------------
# spherical harmonics
# ------------------------------------------------------------------------------------------------
class _SphericalHarmonics(torch.autograd.Function):
    @staticmethod
    def forward(ctx, degree, means, coeffs, viewmats, radii):
        means_, coeffs_, viewmats_ = _f32(means), _f32(coeffs), _f32(viewmats)
        radii_ = radii.contiguous() if radii is not None else means_.new_empty(0, dtype=torch.int32)
        colors = _C().sh_fwd(degree, means_, coeffs_, viewmats_, radii_)
        ctx.degree = degree
        ctx.save_for_backward(means_, coeffs_, viewmats_, radii_, colors)
        return colors

    @staticmethod
    def backward(ctx, v_colors):
        means, coeffs, viewmats, radii, colors = ctx.saved_tensors
        v_coeffs, v_means = _C().sh_bwd(ctx.degree, means, coeffs, viewmats, radii, colors, v_colors.float().contiguous())
        g = ctx.needs_input_grad
        return None, (v_means if g[1] else None), (v_coeffs if g[2] else None), None, None


def spherical_harmonics(degree: int, means: Tensor, coeffs: Tensor, viewmats: Tensor, radii: Tensor | None = None) -> Tensor:
    """Colours [I, N, 3] = max(0, SH_degree(coeffs [N,K,3]; normalize(mean - camera centre)) + 0.5).

    With ``radii`` [I, N], entries with radius 0 are skipped (colour 0, no gradient). Gradients flow to
    coeffs and to means (through the view direction).
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"sh degree must be in 0..3, got {degree}")
    return _SphericalHarmonics.apply(int(degree), means, coeffs, viewmats, radii)


# ------------------------------------------------------------------------------------------------
# tile intersection (no grad)
# ------------------------------------------------------------------------------------------------
class TileBins(NamedTuple):
    tile_offsets: Tensor  # [I * tiles_y * tiles_x + 1] int32; tile t's entries are [off[t], off[t+1])
    flatten_ids: Tensor  # [M] int32 index into I*N, per tile in depth order (ties by index)
    tile_ids: Tensor  # [M] int32 flat tile id (image * tiles + ty * tiles_x + tx) of each entry
    tiles_x: int
    tiles_y: int


@torch.no_grad()
def intersect_tiles(
    records: Tensor, depths: Tensor, rects: Tensor, opacities: Tensor, width: int, height: int,
    settings: RasterSettings = RasterSettings(), *, footprint: int = FOOTPRINT_GAUSSIAN,
    exact: bool = DEFAULT_EXACT_TILES, mode: int = DEFAULT_SORT_MODE,
) -> TileBins:  # fmt: skip
    """Bin primitives into tiles and sort each tile's list by depth.

    ``exact=False`` reproduces ``reference.tiles.intersect_tiles`` integer for integer (tiles of the pixel
    rect); ``exact=True`` also drops tiles whose pixel centres the footprint cannot reach with
    alpha >= alpha_min (same image, fewer intersections). ``mode`` 0: one 64-bit (image|tile|depth) key
    radix sort; 1: depth sort of the primitives then a stable 32-bit tile-key sort.
    """
    ts = int(settings.tile_size)
    offsets, flat, tile_ids = _C().intersect_tiles(
        footprint, _f32(records), _f32(depths), rects.contiguous(), _f32(opacities), int(width), int(height), ts,
        float(settings.pixel_offset), float(settings.alpha_min), bool(exact), int(mode),
    )  # fmt: skip
    return TileBins(offsets, flat, tile_ids, (width + ts - 1) // ts, (height + ts - 1) // ts)


# ------------------------------------------------------------------------------------------------
# rasterize (the footprint-generic compositor)
# ------------------------------------------------------------------------------------------------
class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, records, opacities, colors, background, tile_offsets, flatten_ids, width, height, settings, footprint,
                want_max_weight, means2d):  # fmt: skip
        rec, op, col = _f32(records), _f32(opacities), _f32(colors)
        bg = _f32(background) if background is not None else rec.new_empty(0)
        cfg = (footprint, width, height, int(settings.tile_size), float(settings.pixel_offset), float(settings.alpha_min),
               float(settings.alpha_max), float(settings.t_min))  # fmt: skip
        image, alpha, last_ids, n_contrib, max_weight = _C().composite_fwd(
            cfg[0], rec, op, col, bg, tile_offsets, flatten_ids, *cfg[1:], bool(want_max_weight)
        )
        ctx.cfg = cfg
        ctx.has_bg = background is not None
        ctx.m2d_shape = None if means2d is None else means2d.shape
        ctx.save_for_backward(rec, op, col, bg, tile_offsets, flatten_ids, alpha, last_ids)
        ctx.mark_non_differentiable(last_ids, n_contrib, max_weight)
        return image, alpha, last_ids, n_contrib, max_weight

    @staticmethod
    def backward(ctx, v_image, v_alpha, *_):
        rec, op, col, bg, tile_offsets, flatten_ids, alpha, last_ids = ctx.saved_tensors
        v_image = _grad(v_image, alpha.new_empty(alpha.shape[:-1] + (col.shape[-1],)))
        v_alpha = _grad(v_alpha, alpha)
        v_rec, v_op, v_col = _C().composite_bwd(
            ctx.cfg[0], rec, op, col, bg, tile_offsets, flatten_ids, *ctx.cfg[1:], alpha, last_ids, v_image, v_alpha
        )
        v_bg = None
        if ctx.has_bg and ctx.needs_input_grad[3]:
            v_bg = (v_image * (1.0 - alpha)).sum(dim=(1, 2))  # [I, C]
        v_m2d = None
        if ctx.m2d_shape is not None:
            # the position gradient goes to means2d (so means2d.grad holds it), not twice through records
            v_m2d = v_rec[..., 0:2].clone().view(ctx.m2d_shape)
            v_rec[..., 0:2] = 0.0
        g = ctx.needs_input_grad
        return (v_rec if g[0] else None, v_op if g[1] else None, v_col if g[2] else None, v_bg) + (None,) * 7 + (v_m2d,)


def rasterize(
    records: Tensor, opacities: Tensor, colors: Tensor, bins: TileBins, width: int, height: int,
    settings: RasterSettings = RasterSettings(), *, background: Tensor | None = None, footprint: int = FOOTPRINT_GAUSSIAN,
    max_weight: bool = False, means2d: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:  # fmt: skip
    """Composite front to back: records [I,N,R], opacities [I,N], colors [I,N,C], background [I,C] or None.

    Returns image [I,H,W,C], alpha [I,H,W,1], last_ids [I,H,W] int32, n_contrib [I,H,W] int32 and
    max_weight [I,N] (None unless asked: it costs one global atomic per contributing pixel).
    Differentiable w.r.t. records, opacities, colors and background. With ``means2d`` (a tensor equal to
    ``records[..., :2]``, e.g. ``Projection.means2d``) the gradient of the record positions is routed to
    ``means2d`` instead of ``records``, so ``means2d.grad`` is the screen-space gradient.
    """
    c = colors.shape[-1]
    cp = next((k for k in CHANNELS if k >= c), None)
    if cp is None:
        raise ValueError(f"at most {CHANNELS[-1]} channels are supported, got {c}")
    if cp != c:
        colors = torch.nn.functional.pad(colors, (0, cp - c))
        if background is not None:
            background = torch.nn.functional.pad(background, (0, cp - c))
    image, alpha, last_ids, n_contrib, mw = _Rasterize.apply(
        records, opacities, colors, background, bins.tile_offsets, bins.flatten_ids, int(width), int(height), settings,
        int(footprint), bool(max_weight), means2d,
    )  # fmt: skip
    if cp != c:
        image = image[..., :c]
    return image, alpha, last_ids, n_contrib, (mw if max_weight else None)


# ------------------------------------------------------------------------------------------------
# the composed renderer
# ------------------------------------------------------------------------------------------------
def batch_cameras(viewmat: Tensor, K: Tensor, device: torch.device) -> tuple[Tensor, Tensor, bool]:
    """viewmats [I, 4, 4] and Ks [I, 3, 3] (float32 on ``device``) from one camera or a batch of them,
    and whether a batch was given (outputs then keep their leading I)."""
    batched = viewmat.dim() == 3
    viewmats = (viewmat if batched else viewmat[None]).to(device=device, dtype=torch.float32)
    Ks = (K if batched else K[None]).to(device=device, dtype=torch.float32)
    return viewmats, Ks, batched


def camera_features(colors: Tensor, sh_degree: int | None, centres: Tensor, viewmats: Tensor, radii: Tensor | None = None) -> Tensor:
    """Per-camera features [I, N, C]: SH coefficients [N, K, 3] evaluated towards each primitive's
    ``centres`` [N, 3] when ``sh_degree`` is set (skipping culled entries when ``radii`` is given), else
    plain features [N, C] repeated per camera."""
    if sh_degree is None:
        if colors.dim() != 2:
            raise ValueError(f"colors must be [N, C] when sh_degree is None, got {tuple(colors.shape)}")
        return colors.float()[None].expand(viewmats.shape[0], -1, -1)
    if colors.dim() != 3:
        raise ValueError(f"colors must be SH coefficients [N, K, 3] when sh_degree is set, got {tuple(colors.shape)}")
    return spherical_harmonics(sh_degree, centres, colors, viewmats, radii)


class Composited(NamedTuple):
    image: Tensor  # [I, H, W, C] (+ background)
    alpha: Tensor  # [I, H, W, 1]
    depth: Tensor | None  # [I, H, W, 1] when a depth feature was composited
    last_ids: Tensor
    n_contrib: Tensor
    max_weight: Tensor | None  # [I, N] with return_max_weight
    bins: TileBins


def composite_features(
    records: Tensor, depths: Tensor, rects: Tensor, opacities: Tensor, feats: Tensor, width: int, height: int,
    settings: RasterSettings = RasterSettings(), *, footprint: int = FOOTPRINT_GAUSSIAN, background: Tensor | None = None,
    depth_feature: Tensor | None = None, return_max_weight: bool = False, means2d: Tensor | None = None,
    exact_tiles: bool = DEFAULT_EXACT_TILES, sort_mode: int = DEFAULT_SORT_MODE,
) -> Composited:  # fmt: skip
    """Bin projected primitives of any footprint into tiles and composite their features: the stages
    every primitive's CUDA render shares after its own projection.

    ``records/depths/rects/opacities`` [I, N, ...] come from a projection op, ``feats`` [I, N, ...C] are the
    per-camera colours/features; ``depth_feature`` (same leading shape as ``feats`` with one channel) is
    composited as an extra channel and split off as ``depth`` (the background gets 0 there);
    ``background`` is [C] or [I, C]; ``means2d`` is handed to :func:`rasterize` (see there)."""
    I = records.shape[0]
    c = feats.shape[-1]
    rast_colors = torch.cat([feats, depth_feature], dim=-1) if depth_feature is not None else feats
    bg = None
    if background is not None:
        bg = background.to(device=records.device, dtype=torch.float32)
        bg = bg[None].expand(I, -1) if bg.dim() == 1 else bg
        if depth_feature is not None:
            bg = torch.cat([bg, bg.new_zeros(I, 1)], dim=-1)
    bins = intersect_tiles(records, depths, rects, opacities, width, height, settings, footprint=footprint,
                           exact=exact_tiles, mode=sort_mode)  # fmt: skip
    image, alpha, last_ids, n_contrib, max_weight = rasterize(
        records, opacities, rast_colors.contiguous(), bins, width, height, settings, background=bg, footprint=footprint,
        max_weight=return_max_weight, means2d=means2d,
    )  # fmt: skip
    depth = image[..., c:c + 1] if depth_feature is not None else None
    return Composited(image[..., :c], alpha, depth, last_ids, n_contrib, max_weight, bins)


def render_gaussians_cuda(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    background: Tensor | None = None,
    settings: RasterSettings = RasterSettings(),
    render_depth: bool = False,
    return_max_weight: bool = False,
    exact_tiles: bool = DEFAULT_EXACT_TILES,
    sort_mode: int = DEFAULT_SORT_MODE,
) -> RenderOutput:
    """CUDA twin of ``recon.rasterizers.render_gaussians`` (same arguments, outputs and meta keys).

    ``viewmat`` may also be [I, 4, 4] with ``K`` [I, 3, 3] (batched cameras): outputs then have a leading I.
    ``meta['max_weight']`` is only present with ``return_max_weight=True`` (one global atomic per
    contributing pixel); ``contrib_count`` is not computed. ``retain_grad()`` on ``meta['means2d']`` gives
    the screen-space gradient (for batched cameras it is [I, N, 2]).
    """
    viewmats, Ks, batched = batch_cameras(viewmat, K, means.device)
    proj = project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height, settings)
    feats = camera_features(colors, sh_degree, means, viewmats)
    # means2d (handed out in meta, as in the reference) receives the screen-space position gradient; the
    # tensor given to the rasterizer is the very one in meta, so retain_grad() on it works.
    means2d = proj.means2d if batched else proj.means2d[0]
    out = composite_features(
        proj.records, proj.depths, proj.rects, proj.opacities, feats, width, height, settings, background=background,
        depth_feature=proj.depths[..., None] if render_depth else None, return_max_weight=return_max_weight,
        means2d=means2d, exact_tiles=exact_tiles, sort_mode=sort_mode,
    )  # fmt: skip
    per_camera = {
        "radii": proj.radii,
        "depths": proj.depths,
        "conics": proj.conics,
        "opacities": proj.opacities,
        "colors": feats,
        "rects": proj.rects,
        "compensation": proj.compensation,
        "records": proj.records,
    }
    meta = {"means2d": means2d, "tile_offsets": out.bins.tile_offsets, "flatten_ids": out.bins.flatten_ids}
    return cuda_output(out, batched, per_camera, meta, width, height, settings)
