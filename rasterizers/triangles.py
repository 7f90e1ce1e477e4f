"""``render_triangles``: triangle splats (Triangle Splatting; TS+ opaque mode) on any backend.

Pipeline (every stage a public op; formulas in :mod:`recon.rasterizers.reference.triangle`):

1. projection -> screen-space records (edge lines, inradius normaliser, sigma[, barycentric factors]),
   sort depths and the bound rects: :func:`project_triangles_cuda` (autograd Function over the
   ``torch.ops.recon.project_triangles_{fwd,bwd}`` kernels of ``cuda/csrc/project_triangle.cu``) or its
   PyTorch twin :func:`recon.rasterizers.reference.triangle.project_triangles`;
2. colours: SH at the centroid (``colors`` [N, K, 3] with ``sh_degree``), flat features [N, C], or
   per-vertex features [N, 3, C] interpolated per pixel with screen-space barycentrics (TS+);
3. tile binning (footprint-generic, exact triangle/tile test) and the shared compositor with the
   ``TriangleFootprint`` / ``TriangleBaryFootprint`` policy (``cuda/csrc/footprint_triangle.cuh``), or the
   reference compositor with :data:`triangle_footprint` / :data:`triangle_bary_footprint`.

``meta`` holds ``records``, ``depths``, ``rects``, ``verts2d`` (reference only), ``extents`` and ``inradii``
(px, 0 = culled), ``opacities``, ``colors``, ``max_weight`` (max over pixels of alpha*T; always computed:
the densification strategies need it), ``n_contrib``, ``width``, ``height``, ``tile_size``, ``backend``.
"""

from __future__ import annotations


from typing import NamedTuple

import torch
from torch import Tensor

from .reference.composite import composite
from .reference.projection import camera_center
from .reference.sh import eval_sh
from .reference.triangle import (
    TRIANGLE_BARY_RECORD_SIZE,
    TRIANGLE_RECORD_SIZE,
    TriangleSettings,
    project_triangles,
    triangle_bary_footprint,
    triangle_footprint,
)
from .backend import choose_backend
from .outputs import cuda_output, reference_output
from .types import RasterSettings, RenderOutput

__all__ = [
    "render_triangles",
    "render_triangles_reference",
    "render_triangles_cuda",
    "project_triangles_cuda",
    "TriangleProjectionCuda",
    "TriangleSettings",
    "triangle_colors",
]



def _color_mode(colors: Tensor, sh_degree: int | None) -> str:
    if sh_degree is not None:
        if colors.dim() != 3:
            raise ValueError(f"colors must be SH coefficients [N, K, 3] when sh_degree is set, got {tuple(colors.shape)}")
        return "sh"
    if colors.dim() == 2:
        return "flat"
    if colors.dim() == 3 and colors.shape[1] == 3:
        return "vertex"
    raise ValueError(f"colors must be [N, C], [N, 3, C] (per vertex) or SH [N, K, 3] with sh_degree, got {tuple(colors.shape)}")


def triangle_colors(vertices: Tensor, colors: Tensor, viewmat: Tensor, sh_degree: int | None) -> Tensor:
    """Per-triangle colours: SH at the centroid direction (+0.5, clamped >= 0), or ``colors`` as given."""
    if _color_mode(colors, sh_degree) != "sh":
        return colors
    dirs = vertices.mean(1) - camera_center(viewmat.to(vertices.dtype))
    return torch.clamp_min(eval_sh(sh_degree, colors, dirs) + 0.5, 0.0)


def render_triangles_reference(
    vertices: Tensor, opacities: Tensor, sigmas: Tensor, colors: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int,
    *, sh_degree: int | None = None, background: Tensor | None = None, settings: RasterSettings = RasterSettings(),
    triangle_settings: TriangleSettings = TriangleSettings(), render_depth: bool = False, mode: str = "tiled",
) -> RenderOutput:  # fmt: skip
    """The pure-PyTorch path of :func:`render_triangles` (``mode`` selects the compositor)."""
    cmode = _color_mode(colors, sh_degree)
    bary = cmode == "vertex"
    proj = project_triangles(
        vertices, opacities, sigmas, viewmat, K, width, height, settings, triangle_settings, barycentric=bary
    )
    feats = triangle_colors(vertices, colors, viewmat, sh_degree)
    if render_depth:  # depth rides along as one more channel (per vertex: the same value for all three)
        dcol = proj.depths[:, None, None].expand(-1, 3, 1) if bary else proj.depths[:, None]
        feats_c = torch.cat([feats.to(proj.records.dtype), dcol.to(proj.records.dtype)], dim=-1)
    else:
        feats_c = feats
    bg = background
    if bg is not None and render_depth:
        bg = torch.cat([bg, bg.new_zeros(1)])
    res = composite(
        triangle_bary_footprint if bary else triangle_footprint,
        proj.records, opacities, feats_c, proj.depths, proj.rects, width, height, bg, settings,
        mode=mode, color_weights=triangle_bary_footprint.color_weights if bary else None,
    )  # fmt: skip
    c = feats.shape[-1]
    image = res.image[..., :c]
    depth = res.image[..., c:] if render_depth else None
    meta = {
        "records": proj.records,
        "depths": proj.depths,
        "rects": proj.rects,
        "verts2d": proj.verts2d,
        "extents": proj.extents,
        "inradii": proj.inradii,
        "opacities": opacities,
        "colors": feats,
    }
    return reference_output(res, meta, width, height, settings, image=image, depth=depth)


# ------------------------------------------------------------------------------------------------
# CUDA: projection op (autograd Function) + composition over the shared core
# ------------------------------------------------------------------------------------------------
class TriangleProjectionCuda(NamedTuple):
    records: Tensor  # [I, N, R]; differentiable (vertices, sigmas)
    depths: Tensor  # [I, N]; differentiable
    rects: Tensor  # [I, N, 4] int32
    extents: Tensor  # [I, N] px, 0 = culled; no grad
    inradii: Tensor  # [I, N] px, 0 = culled; no grad


def _f32(x: Tensor) -> Tensor:
    return x.detach().float().contiguous()


class _ProjectTriangles(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vertices, opacities, sigmas, viewmats, Ks, width, height, settings, tri, barycentric):
        from .cuda import _backend

        _backend.load()
        args = [_f32(t) for t in (vertices, opacities, sigmas, viewmats, Ks)]
        records, depths, rects, extents, inradii = torch.ops.recon.project_triangles_fwd(
            *args, width, height, float(settings.near), float(settings.far), float(settings.alpha_min),
            float(settings.pixel_offset), float(tri.min_inradius), float(tri.min_extent), float(tri.max_extent),
            float(tri.min_cos), bool(barycentric),
        )  # fmt: skip
        ctx.save_for_backward(args[0], args[3], args[4], inradii)
        ctx.cfg = (width, height, bool(tri.stopgrad_inradius), bool(barycentric))
        ctx.mark_non_differentiable(rects, extents, inradii)
        return records, depths, rects, extents, inradii

    @staticmethod
    def backward(ctx, v_records, v_depths, *_):
        vertices, viewmats, Ks, inradii = ctx.saved_tensors
        width, height, stopgrad, bary = ctx.cfg
        r = TRIANGLE_BARY_RECORD_SIZE if bary else TRIANGLE_RECORD_SIZE
        if v_records is None:
            v_records = torch.zeros(inradii.shape + (r,), dtype=torch.float32, device=inradii.device)
        if v_depths is None:
            v_depths = torch.zeros_like(inradii)
        v_records = v_records.float().contiguous()
        v_vertices = torch.ops.recon.project_triangles_bwd(
            vertices, viewmats, Ks, inradii, v_records, v_depths.float().contiguous(), width, height, stopgrad, bary
        )
        g = ctx.needs_input_grad
        v_sigmas = (v_records[..., 10] * (inradii > 0)).sum(0) if g[2] else None  # culled records do not depend on sigma
        return (v_vertices if g[0] else None), None, v_sigmas, None, None, None, None, None, None, None


def project_triangles_cuda(
    vertices: Tensor, opacities: Tensor, sigmas: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int,
    settings: RasterSettings = RasterSettings(), triangle_settings: TriangleSettings = TriangleSettings(),
    *, barycentric: bool = False,
) -> TriangleProjectionCuda:  # fmt: skip
    """CUDA twin of ``reference.triangle.project_triangles`` for I cameras (viewmats [I,4,4], Ks [I,3,3]).

    Same records, depths, culling and rects; gradients flow to vertices and sigmas."""
    out = _ProjectTriangles.apply(
        vertices, opacities, sigmas, viewmats, Ks, int(width), int(height), settings, triangle_settings, bool(barycentric)
    )
    return TriangleProjectionCuda(*out)


def render_triangles_cuda(
    vertices: Tensor, opacities: Tensor, sigmas: Tensor, colors: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int,
    *, sh_degree: int | None = None, background: Tensor | None = None, settings: RasterSettings = RasterSettings(),
    triangle_settings: TriangleSettings = TriangleSettings(), render_depth: bool = False, return_max_weight: bool = True,
) -> RenderOutput:  # fmt: skip
    """CUDA twin of :func:`render_triangles_reference` (one camera, or batched viewmat [I,4,4] / K [I,3,3])."""
    from .cuda import _backend
    from .cuda.ops import batch_cameras, composite_features, spherical_harmonics

    cmode = _color_mode(colors, sh_degree)
    bary = cmode == "vertex"
    viewmats, Ks, batched = batch_cameras(viewmat, K, vertices.device)
    I = viewmats.shape[0]
    proj = project_triangles_cuda(
        vertices, opacities, sigmas, viewmats, Ks, width, height, settings, triangle_settings, barycentric=bary
    )
    if cmode == "sh":
        feats = spherical_harmonics(sh_degree, vertices.mean(1), colors, viewmats)  # [I, N, 3]
    else:
        feats = colors.float()[None].expand(I, *colors.shape)
    depth_feature = None
    if render_depth:  # per-vertex colours carry the depth at each vertex slot
        d = proj.depths[..., None]
        depth_feature = d[..., None, :].expand(-1, -1, 3, 1) if bary else d
    fp = _backend.footprint_id("TriangleBaryFootprint" if bary else "TriangleFootprint")
    opac = opacities.float()[None].expand(I, -1).contiguous()
    out = composite_features(
        proj.records, proj.depths, proj.rects, opac, feats, width, height, settings, footprint=fp, background=background,
        depth_feature=depth_feature, return_max_weight=return_max_weight,
    )  # fmt: skip
    per_camera = {
        "records": proj.records,
        "depths": proj.depths,
        "rects": proj.rects,
        "extents": proj.extents,
        "inradii": proj.inradii,
        "colors": feats,
    }
    return cuda_output(out, batched, per_camera, {"opacities": opacities}, width, height, settings)


def render_triangles(
    vertices: Tensor, opacities: Tensor, sigmas: Tensor, colors: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int,
    *, sh_degree: int | None = None, background: Tensor | None = None, settings: RasterSettings = RasterSettings(),
    triangle_settings: TriangleSettings = TriangleSettings(), render_depth: bool = False, backend: str = "auto",
) -> RenderOutput:  # fmt: skip
    """Render N triangle splats into one ``width x height`` pinhole camera.

    Args:
        vertices [N, 3, 3] world vertices per triangle; opacities [N] in [0, 1]; sigmas [N] window
        exponents (> 0); colors: SH [N, K, 3] with ``sh_degree`` (evaluated towards the centroid),
        [N, C] per triangle, or [N, 3, C] per vertex (screen-space barycentric interpolation, TS+);
        viewmat [4, 4] world-to-camera (OpenCV); K [3, 3]; background [C] or None (black).
        backend: ``"reference"``, ``"cuda"`` or ``"auto"`` (CUDA for CUDA inputs when it loads).
    """
    kwargs = dict(
        sh_degree=sh_degree, background=background, settings=settings, triangle_settings=triangle_settings,
        render_depth=render_depth,
    )
    args = (vertices, opacities, sigmas, colors, viewmat, K, width, height)
    if choose_backend(backend, vertices.is_cuda, "TriangleFootprint") == "cuda":
        return render_triangles_cuda(*args, **kwargs)
    return render_triangles_reference(*args, **kwargs)
