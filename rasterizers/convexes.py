"""``render_convexes``: 3D smooth convexes (3D Convex Splatting) on recon's shared rasterization core.

A convex primitive costs one footprint, one projection and one scene class; everything else (tile
binning, sorting, the compositor forward and backward) is the core every primitive shares.

Stages (each a public op; formulas in ``shared/notes/rasterizers.md`` a.4 and
:mod:`recon.rasterizers.reference.convex`):

1. projection: points -> pixels, 2D hull, edge lines, depth-scaled record, conservative pixel rect —
   :func:`~recon.rasterizers.reference.convex.project_convexes` (PyTorch, autograd) or
   :func:`project_convexes_cuda` (CUDA kernel + hand-written backward, one autograd Function);
2. colour: SH evaluated at the centroid along ``normalize(centroid - camera centre)`` (+0.5, clamped);
3. composite with the convex footprint: the reference compositor with
   :data:`~recon.rasterizers.reference.convex.convex_footprint`, or the CUDA core's
   ``intersect_tiles`` / ``rasterize`` with ``footprint = ConvexFootprint``'s id.

``backend="auto"`` uses CUDA for CUDA inputs when the core loads; nothing compiles for CPU inputs.
"""

from __future__ import annotations


from typing import NamedTuple

import torch
from torch import Tensor

from .gaussians import gaussian_colors
from .reference.composite import composite
from .reference.convex import CONVEX_MAX_POINTS, CONVEX_RECORD_SIZE, DEPTH_LAWS, convex_footprint, project_convexes
from .backend import choose_backend
from .outputs import cuda_output, reference_output
from .types import RasterSettings, RenderOutput

__all__ = [
    "render_convexes",
    "render_convexes_reference",
    "render_convexes_cuda",
    "project_convexes_cuda",
    "ConvexProjectionCuda",
    "convex_footprint_id",
]



def _check_inputs(points, deltas, sigmas, opacities, depth_law):
    if points.dim() != 3 or points.shape[-1] != 3 or not 3 <= points.shape[1] <= CONVEX_MAX_POINTS:
        raise ValueError(f"points must be [N, K, 3] with 3 <= K <= {CONVEX_MAX_POINTS}, got {tuple(points.shape)}")
    n = points.shape[0]
    for name, t in (("deltas", deltas), ("sigmas", sigmas), ("opacities", opacities)):
        if tuple(t.shape) != (n,):
            raise ValueError(f"{name} must be [{n}], got {tuple(t.shape)}")
    if depth_law not in DEPTH_LAWS:
        raise ValueError(f"depth_law must be one of {sorted(DEPTH_LAWS)}, got {depth_law!r}")


def render_convexes_reference(
    points: Tensor,
    deltas: Tensor,
    sigmas: Tensor,
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
    depth_law: str = "linear",
    mode: str = "tiled",
) -> RenderOutput:
    """The pure-PyTorch path of :func:`render_convexes` (``mode``: the compositor, "tiled" or "dense")."""
    _check_inputs(points, deltas, sigmas, opacities, depth_law)
    proj = project_convexes(points, deltas, sigmas, opacities, viewmat, K, width, height, settings, depth_law=depth_law)
    feats = gaussian_colors(points.mean(1), colors, viewmat, sh_degree)
    res = composite(
        convex_footprint, proj.records, opacities, feats, proj.depths, proj.rects, width, height, background, settings,
        render_depth=render_depth, mode=mode,
    )  # fmt: skip
    meta = {
        "means2d": proj.means2d,
        "radii": proj.radii,
        "depths": proj.depths,
        "rects": proj.rects,
        "records": proj.records,
        "opacities": opacities,
        "sigmas": sigmas,
        "colors": feats,
        "hull_counts": proj.counts,
    }
    return reference_output(res, meta, width, height, settings)


# ------------------------------------------------------------------------------------------------
# CUDA projection op
# ------------------------------------------------------------------------------------------------
def convex_footprint_id() -> int:
    """The compositor id of the CUDA ``ConvexFootprint`` policy (from its marker line)."""
    from .cuda import _backend

    return _backend.footprint_id("ConvexFootprint")


class ConvexProjectionCuda(NamedTuple):
    records: Tensor  # [I, N, 28] differentiable (slots 0:2 = means2d)
    depths: Tensor  # [I, N] zeta, 0 = culled; differentiable
    radii: Tensor  # [I, N] int32, 0 = culled
    rects: Tensor  # [I, N, 4] int32 pixel rect, end exclusive
    means2d: Tensor  # [I, N, 2] 2D centres; pass to rasterize(means2d=...) for the translation gradient
    hull: Tensor  # [I, N] int32: hull point indices, 4 bits each (vertex j in bits 4j..4j+3); count in records[..., 26]


class _ProjectConvexes(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points, deltas, sigmas, opacities, viewmats, Ks, width, height, near, far, alpha_min, pixel_offset, law):
        from .cuda import _backend

        _backend.load()
        args = [t.detach().float().contiguous() for t in (points, deltas, sigmas, opacities, viewmats, Ks)]
        records, depths, radii, rects, means2d, hull = torch.ops.recon.project_convexes_fwd(
            *args, width, height, near, far, alpha_min, pixel_offset, law
        )
        ctx.save_for_backward(args[0], args[1], args[2], args[4], args[5], radii, hull)
        ctx.law = law
        ctx.mark_non_differentiable(radii, rects, hull)
        return records, depths, radii, rects, means2d, hull

    @staticmethod
    def backward(ctx, v_records, v_depths, _v_radii, _v_rects, _v_means2d, _v_hull):
        points, deltas, sigmas, viewmats, Ks, radii, hull = ctx.saved_tensors
        # the means2d slot of the records carries no world gradient (see reference/convex.py): the
        # compositor's position gradient was routed to the means2d tensor itself
        v_records = torch.zeros(radii.shape + (CONVEX_RECORD_SIZE,), device=radii.device) if v_records is None else v_records
        v_depths = torch.zeros(radii.shape, device=radii.device) if v_depths is None else v_depths
        v_points, v_deltas, v_sigmas = torch.ops.recon.project_convexes_bwd(
            points, deltas, sigmas, viewmats, Ks, radii, hull, v_records.float().contiguous(), v_depths.float().contiguous(),
            ctx.law,
        )  # fmt: skip
        g = ctx.needs_input_grad
        return (v_points if g[0] else None, v_deltas if g[1] else None, v_sigmas if g[2] else None) + (None,) * 10


def project_convexes_cuda(
    points: Tensor, deltas: Tensor, sigmas: Tensor, opacities: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int,
    settings: RasterSettings = RasterSettings(), *, depth_law: str = "linear",
) -> ConvexProjectionCuda:  # fmt: skip
    """CUDA twin of ``reference.convex.project_convexes`` for I cameras (viewmats [I,4,4], Ks [I,3,3]).

    Same hull, culling, record layout and rects (float32). Gradients flow to points, deltas and sigmas."""
    _check_inputs(points, deltas, sigmas, opacities, depth_law)
    out = _ProjectConvexes.apply(
        points, deltas, sigmas, opacities, viewmats, Ks, int(width), int(height), float(settings.near), float(settings.far),
        float(settings.alpha_min), float(settings.pixel_offset), int(DEPTH_LAWS[depth_law]),
    )  # fmt: skip
    return ConvexProjectionCuda(*out)


def render_convexes_cuda(
    points: Tensor,
    deltas: Tensor,
    sigmas: Tensor,
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
    depth_law: str = "linear",
    return_max_weight: bool = False,
    exact_tiles: bool = True,
) -> RenderOutput:
    """CUDA twin of :func:`render_convexes_reference` (same arguments, outputs and meta keys; ``viewmat``
    may be [I, 4, 4] with ``K`` [I, 3, 3] for batched cameras, outputs then carry a leading I)."""
    from .cuda import ops as cops

    viewmats, Ks, batched = cops.batch_cameras(viewmat, K, points.device)
    I = viewmats.shape[0]
    proj = project_convexes_cuda(points, deltas, sigmas, opacities, viewmats, Ks, width, height, settings, depth_law=depth_law)
    feats = cops.camera_features(colors, sh_degree, points.mean(1), viewmats, proj.radii)
    opac = opacities.float()[None].expand(I, -1)
    means2d = proj.means2d if batched else proj.means2d[0]
    out = cops.composite_features(
        proj.records, proj.depths, proj.rects, opac, feats, width, height, settings, footprint=convex_footprint_id(),
        background=background, depth_feature=proj.depths[..., None] if render_depth else None,
        return_max_weight=return_max_weight, means2d=means2d, exact_tiles=exact_tiles,
    )  # fmt: skip
    per_camera = {
        "radii": proj.radii,
        "depths": proj.depths,
        "rects": proj.rects,
        "records": proj.records,
        "colors": feats,
        "hull_counts": proj.records[..., 2 + 3 * CONVEX_MAX_POINTS].detach().long(),
    }
    return cuda_output(out, batched, per_camera, {"means2d": means2d, "opacities": opacities, "sigmas": sigmas}, width, height, settings)


def render_convexes(
    points: Tensor,
    deltas: Tensor,
    sigmas: Tensor,
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
    depth_law: str = "linear",
    backend: str = "auto",
) -> RenderOutput:
    """Render N smooth convexes into one ``width x height`` pinhole camera.

    Args:
        points [N, K, 3] (3 <= K <= 8), deltas [N] smoothness (> 0), sigmas [N] sharpness (> 0), opacities [N]
        in [0, 1]; colors [N, Kc, 3] SH coefficients with ``sh_degree`` or [N, C] features; viewmat [4, 4]
        world-to-camera (OpenCV axes); K [3, 3]; background [C] or None; ``depth_law`` "linear" (3DCS code,
        default), "sqrt" or "none"; backend "reference", "cuda" or "auto".

    Returns a :class:`RenderOutput`; ``meta`` holds ``means2d`` [N, 2] (call ``retain_grad()`` before
    backward: its gradient is the hull's screen-space translation gradient), ``sigmas`` (the tensor given:
    ``retain_grad()`` on it yields the sharpness gradient 3DCS densifies on), ``radii`` [N] int32 (0 =
    culled), ``depths``, ``rects``, ``records`` [N, 28], ``opacities``, ``colors``, ``hull_counts``,
    ``n_contrib``, ``width``, ``height``, ``tile_size``, ``backend``; the reference adds ``max_weight`` and
    ``contrib_count``, CUDA ``n_isects`` and ``last_ids``.
    """
    args = (points, deltas, sigmas, opacities, colors, viewmat, K, width, height)
    kwargs = dict(sh_degree=sh_degree, background=background, settings=settings, render_depth=render_depth, depth_law=depth_law)
    if choose_backend(backend, points.is_cuda, "ConvexFootprint") == "cuda":
        return render_convexes_cuda(*args, **kwargs)
    return render_convexes_reference(*args, **kwargs)
