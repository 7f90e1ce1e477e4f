"""``render_gaussians``: the public entry point for 3D Gaussian splatting, on any backend.

Reference pipeline (``backend="reference"``, the CPU path; every stage is a public op):

1. :func:`~recon.rasterizers.reference.projection.project_gaussians` with the opacities, so the
   extent is opacity-aware and ``o * compensation < alpha_min`` culls;
2. opacities ``o * compensation`` (compensation is 1 unless ``settings.antialiased``);
3. colours: SH (``colors`` [N, K, 3] with ``sh_degree``) evaluated along
   ``normalize(mean - camera_centre)``, ``+ 0.5``, clamped at 0; or plain features [N, C];
4. records ``(means2d, conics)`` -> :func:`~recon.rasterizers.reference.composite.composite` with the
   Gaussian footprint.

``backend="cuda"`` calls ``recon.rasterizers.cuda.render_gaussians_cuda`` (same signature without
``backend``, same :class:`RenderOutput` and ``meta`` keys). ``"auto"`` uses CUDA only when the inputs
live on a CUDA device and the CUDA backend loads; nothing is ever compiled for CPU inputs.
"""

from __future__ import annotations



import torch

from .reference.composite import composite
from .reference.footprints import gaussian_footprint
from .reference.projection import camera_center, project_gaussians
from .reference.sh import eval_sh
from .backend import choose_backend
from .outputs import reference_output
from .types import RasterSettings, RenderOutput

__all__ = ["render_gaussians", "render_gaussians_reference", "gaussian_colors"]



def gaussian_colors(
    means: torch.Tensor, colors: torch.Tensor, viewmat: torch.Tensor, sh_degree: int | None
) -> torch.Tensor:
    """Per-Gaussian colours [N, C]: SH evaluated along the view direction (+0.5, clamped >= 0), or ``colors``."""
    if sh_degree is None:
        if colors.dim() != 2:
            raise ValueError(f"colors must be [N, C] when sh_degree is None, got {tuple(colors.shape)}")
        return colors
    if colors.dim() != 3:
        raise ValueError(f"colors must be SH coefficients [N, K, C] when sh_degree is set, got {tuple(colors.shape)}")
    dirs = means - camera_center(viewmat.to(means.dtype))
    return torch.clamp_min(eval_sh(sh_degree, colors, dirs) + 0.5, 0.0)


def render_gaussians_reference(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    background: torch.Tensor | None = None,
    settings: RasterSettings = RasterSettings(),
    render_depth: bool = False,
    mode: str = "tiled",
) -> RenderOutput:
    """The pure-PyTorch path of :func:`render_gaussians` (``mode`` selects the compositor)."""
    proj = project_gaussians(means, quats, scales, viewmat, K, width, height, settings, opacities=opacities)
    opac = opacities * proj.compensation
    feats = gaussian_colors(means, colors, viewmat, sh_degree)
    records = torch.cat([proj.means2d, proj.conics], dim=-1)
    res = composite(
        gaussian_footprint,
        records,
        opac,
        feats,
        proj.depths,
        proj.rects,
        width,
        height,
        background,
        settings,
        render_depth=render_depth,
        mode=mode,
    )
    meta = {
        "means2d": proj.means2d,
        "radii": proj.radii,
        "depths": proj.depths,
        "conics": proj.conics,
        "opacities": opac,
        "colors": feats,
        "rects": proj.rects,
        "records": records,
        "compensation": proj.compensation,
    }
    return reference_output(res, meta, width, height, settings)


def render_gaussians(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    background: torch.Tensor | None = None,
    settings: RasterSettings = RasterSettings(),
    render_depth: bool = False,
    backend: str = "auto",
) -> RenderOutput:
    """Render N Gaussians into one ``width x height`` pinhole camera.

    Args:
        means [N, 3], quats [N, 4] (wxyz, need not be normalised), scales [N, 3] (linear),
        opacities [N] (in [0, 1]), colors [N, K, 3] SH coefficients with ``sh_degree`` or [N, C]
        features with ``sh_degree=None``; viewmat [4, 4] world-to-camera (OpenCV axes); K [3, 3];
        background [C] or None (black); render_depth adds ``depth = sum(alpha T z)``.
        backend: ``"reference"``, ``"cuda"`` or ``"auto"``.

    Returns a :class:`RenderOutput`. ``meta`` holds ``means2d`` [N, 2] (the tensor the records were
    built from: call ``retain_grad()`` on it before backward to get screen-space gradients),
    ``radii`` [N] int32, ``depths`` [N], ``conics`` [N, 3], ``opacities`` [N] (after
    compensation), ``colors`` [N, C] (after SH, clamped), ``rects`` [N, 4] int32 (x0, y0, x1, y1; end
    exclusive), ``records`` [N, 5] (means2d | conics, what the compositor saw), ``compensation`` [N],
    ``max_weight`` [N] (max over pixels of alpha*T; no grad), ``contrib_count`` [N] int64 (pixels a
    Gaussian contributed to), ``n_contrib`` [H, W] int32 (contributing Gaussians per pixel),
    ``width``, ``height``, ``tile_size``, ``backend`` (``"reference"`` or ``"cuda"``).
    """
    kwargs = dict(sh_degree=sh_degree, background=background, settings=settings, render_depth=render_depth)
    args = (means, quats, scales, opacities, colors, viewmat, K, width, height)
    if choose_backend(backend, means.is_cuda, "GaussianFootprint") == "cuda":
        from .cuda import render_gaussians_cuda

        return render_gaussians_cuda(*args, **kwargs)
    return render_gaussians_reference(*args, **kwargs)
