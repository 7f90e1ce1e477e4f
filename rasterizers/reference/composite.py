"""Front-to-back alpha compositing of screen-space primitives, generic over the footprint.

Semantics (identical for ``mode="dense"``, ``mode="tiled"`` and the CUDA core; notes a.2 step 5).
For every pixel ``p`` (sampled at ``(x + pixel_offset, y + pixel_offset)``):

1. Candidates: the primitives whose pixel rect ``[x0, x1) x [y0, y1)`` contains ``p`` (a primitive
   with an empty rect is culled), in compositing order = ``depths`` ascending, ties by primitive
   index (a stable sort; the order is not differentiated).
2. ``w = footprint(record, p)``, ``alpha = min(alpha_max, opacity * w)``.
3. ``alpha < alpha_min``: the sample is skipped (no contribution, T unchanged, no gradient).
4. Otherwise, if ``T * (1 - alpha) <= t_min`` the pixel is done: this sample and everything after it
   are ignored (exclusive stop, gsplat's ``break``), so ``T_end > t_min`` always.
   Else ``C += c alpha T``, ``D += z alpha T``, ``T *= 1 - alpha``.
5. ``image = C + T_end * background``, ``alpha = 1 - T_end``, ``depth = D`` (not normalised).

The CUDA kernel evaluates every primitive of the pixel's *tile*, not only those whose rect contains
the pixel; that is the same result whenever ``opacity * w < alpha_min`` outside the rect, which the
Gaussian projection guarantees (opacity-aware extent). Other primitives must either guarantee it
too or test the rect per pixel.

Per-pixel colour hook (triangles of Triangle Splatting+, notes a.6): with ``color_weights`` (a callable
``(records [..., R], pixels [..., 2]) -> [..., V]``), ``colors`` is ``[N, V, C]`` and the colour of a sample
is ``sum_v color_weights(record, p)_v * colors[k, v]`` (step 4 uses it in place of ``c``); without it
``colors`` is ``[N, C]`` and nothing changes.

Gradients flow to ``records``, ``opacities``, ``colors``, ``depths`` (as values: through ``D`` only)
and ``background``; ``alpha_max`` clamping zeroes the gradient of the clamped sample's ``o`` and
``w`` (as in CUDA), while its colour and transmittance still get theirs.

Implementations:

- ``dense``: every candidate primitive against every pixel, ``[P, N]`` tensors and ``cumprod``
  (brute force; tiny inputs and tests only).
- ``tiled``: primitives are binned to square bins by their rects (:func:`.tiles.intersect_tiles`, the
  oracle of the CUDA isect/sort/offsets stages), each bin's list sorted by depth. Pass 1 (no grad)
  takes chunks of bins of similar list length, pads them to ``[bins, kmax, bin, bin]`` and evaluates
  footprint (its separable ``grid`` method when it has one), thresholds and the stop rule with a
  float ``cumprod`` along the list (the kernel's arithmetic); it keeps only the (pixel, primitive)
  pairs that contribute. Pass 2 (autograd) recomputes those pairs only with the pointwise footprint
  and composites them with a segmented scan (log-transmittance prefix sums in float64), then
  scatters to the image. The backward therefore touches contributing pairs only (the CPU analogue
  of the kernel's early exit); memory is bounded by ``chunk_elements`` in pass 1 and by the number
  of contributing pairs in pass 2. The bin edge is a performance knob (default 8, not
  ``settings.tile_size``): results do not depend on it because of the rect rule above.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from ..types import RasterSettings
from . import tiles as _tiles

__all__ = ["CompositeResult", "composite", "pixel_centers"]

# Pass-1 block size (bins x kmax x bin^2) per chunk; a few such float/bool blocks are live.
DEFAULT_CHUNK_ELEMENTS = 1 << 23
# Bin edge of the tiled mode's selection pass. Results do not depend on it (a primitive only reaches
# pixels inside its rect), so it is a pure CPU performance knob, independent of settings.tile_size:
# 8 wastes less of the padded block on small splats than 16 and keeps lists long enough to vectorise.
DEFAULT_BIN_SIZE = 8


class CompositeResult(NamedTuple):
    image: torch.Tensor  # [H, W, C]
    alpha: torch.Tensor  # [H, W, 1]
    depth: torch.Tensor | None  # [H, W, 1] sum(alpha T z), or None
    max_weight: torch.Tensor  # [N] max over pixels of alpha * T (0 = never contributed); no grad
    contrib_count: torch.Tensor  # [N] int64, number of pixels the primitive contributed to
    n_contrib: torch.Tensor  # [H, W] int32, number of contributing primitives per pixel


def pixel_centers(pixel_ids: torch.Tensor, width: int, offset: float, dtype: torch.dtype) -> torch.Tensor:
    """Flat pixel ids ``y * W + x`` -> sample positions [..., 2] ``(x + offset, y + offset)``."""
    x = (pixel_ids % width).to(dtype) + offset
    y = torch.div(pixel_ids, width, rounding_mode="floor").to(dtype) + offset
    return torch.stack([x, y], dim=-1)


def _check(records, opacities, colors, depths, rects, background, color_weights=None) -> None:
    n = records.shape[0]
    if records.dim() != 2:
        raise ValueError(f"records must be [N, R], got {tuple(records.shape)}")
    for name, t, shape in (("opacities", opacities, (n,)), ("depths", depths, (n,)), ("rects", rects, (n, 4))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {list(shape)}, got {list(t.shape)}")
    want = 3 if color_weights is not None else 2
    if colors.dim() != want or colors.shape[0] != n:
        layout = "[N, V, C]" if color_weights is not None else "[N, C]"
        raise ValueError(f"colors must be {layout} with N={n}, got {tuple(colors.shape)}")
    if background is not None and tuple(background.shape) != (colors.shape[-1],):
        raise ValueError(f"background must be [C]={colors.shape[-1]}, got {tuple(background.shape)}")


def composite(
    footprint: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    records: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    depths: torch.Tensor,
    rects: torch.Tensor,
    width: int,
    height: int,
    background: torch.Tensor | None = None,
    settings: RasterSettings = RasterSettings(),
    *,
    render_depth: bool = False,
    mode: str = "tiled",
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    bin_size: int | None = None,
    color_weights: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> CompositeResult:
    """Composite N primitives (records [N,R], opacities [N], colors [N,C], depths [N], rects [N,4]).

    See the module docstring for the exact semantics. ``mode`` is ``"tiled"`` (default, bounded
    memory, the CPU training path) or ``"dense"`` (brute force oracle). ``chunk_elements`` bounds the
    size of the padded ``[bins, kmax, bin_size^2]`` block pass 1 of the tiled mode holds at once;
    ``bin_size`` (default 8) is the bin edge of that pass. Neither changes the result. ``color_weights``:
    the per-pixel colour hook (module docstring; ``colors`` is then ``[N, V, C]``).
    """
    _check(records, opacities, colors, depths, rects, background, color_weights)
    if mode == "dense":
        return _composite_dense(
            footprint, records, opacities, colors, depths, rects, width, height, background, settings, render_depth, color_weights
        )
    if mode == "tiled":
        return _composite_tiled(
            footprint, records, opacities, colors, depths, rects, width, height, background, settings, render_depth, chunk_elements, bin_size,
            color_weights,
        )
    raise ValueError(f"mode must be 'tiled' or 'dense', got {mode!r}")


def _finish(
    color_sum, t_end, depth_sum, background, width, height, n, weights, prim_ids, pix_ids, device
) -> CompositeResult:
    """Shared epilogue: background, reshape, pruning statistics."""
    image = color_sum
    if background is not None:
        image = image + t_end[:, None] * background.to(color_sum.dtype)
    c = color_sum.shape[-1]
    image = image.reshape(height, width, c)
    alpha = (1.0 - t_end).reshape(height, width, 1)
    depth = None if depth_sum is None else depth_sum.reshape(height, width, 1)
    with torch.no_grad():
        w = weights.detach()
        max_weight = torch.zeros(n, dtype=w.dtype, device=device)
        if w.numel():
            max_weight = max_weight.scatter_reduce(0, prim_ids, w, reduce="amax", include_self=True)
        contrib_count = torch.bincount(prim_ids, minlength=n)
        n_contrib = torch.bincount(pix_ids, minlength=width * height).to(torch.int32).reshape(height, width)
    return CompositeResult(image, alpha, depth, max_weight, contrib_count, n_contrib)


def _composite_dense(
    footprint, records, opacities, colors, depths, rects, width, height, background, settings, render_depth, color_weights=None
):
    device, dtype = records.device, records.dtype
    n = records.shape[0]
    p_count = width * height
    with torch.no_grad():
        nonempty = (rects[:, 2] > rects[:, 0]) & (rects[:, 3] > rects[:, 1])
        cand = torch.nonzero(nonempty).squeeze(1)
        cand = cand[_tiles.depth_order(depths[cand])]
        pix_all = torch.arange(p_count, device=device)
        r = rects[cand].to(torch.int64)
        px, py = pix_all % width, pix_all // width
        inside = (
            (px[:, None] >= r[None, :, 0]) & (px[:, None] < r[None, :, 2]) & (py[:, None] >= r[None, :, 1]) & (py[:, None] < r[None, :, 3])
        )
    pixels = pixel_centers(pix_all, width, settings.pixel_offset, dtype)  # [P, 2]
    w = footprint(records[cand][None, :, :], pixels[:, None, :])  # [P, S]
    alpha = torch.clamp(opacities[cand][None, :] * w, max=settings.alpha_max)
    with torch.no_grad():
        keep = inside & (alpha >= settings.alpha_min)
        a0 = torch.where(keep, alpha, torch.zeros((), dtype=dtype, device=device))
        contrib = keep & (torch.cumprod(1.0 - a0, dim=1) > settings.t_min)
    a_eff = torch.where(contrib, alpha, torch.zeros((), dtype=dtype, device=device))
    t_incl = torch.cumprod(1.0 - a_eff, dim=1)
    t_excl = torch.cat([torch.ones(p_count, 1, dtype=dtype, device=device), t_incl[:, :-1]], dim=1)
    weights = a_eff * t_excl  # [P, S]
    t_end = t_incl[:, -1] if cand.numel() else torch.ones(p_count, dtype=dtype, device=device)
    if color_weights is None:
        color_sum = weights @ colors[cand].to(dtype)
    else:  # per-pixel colour: sum_v b_v(p) c_v
        bw = color_weights(records[cand][None, :, :], pixels[:, None, :])  # [P, S, V]
        color_sum = torch.einsum("ps,psv,svc->pc", weights, bw, colors[cand].to(dtype))
    depth_sum = weights @ depths[cand].to(dtype) if render_depth else None
    pix_idx, k_idx = torch.nonzero(contrib, as_tuple=True)
    return _finish(
        color_sum, t_end, depth_sum, background, width, height, n, weights[pix_idx, k_idx], cand[k_idx], pix_idx, device
    )


def _segment_starts(pix: torch.Tensor) -> torch.Tensor:
    """For pairs grouped by pixel: the index of the first pair of each pair's pixel segment."""
    idx = torch.arange(pix.numel(), device=pix.device)
    is_start = torch.ones_like(pix, dtype=torch.bool)
    is_start[1:] = pix[1:] != pix[:-1]
    return torch.cummax(torch.where(is_start, idx, torch.zeros_like(idx)), dim=0).values


def _exclusive_log_transmittance(log1m_alpha: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Segmented exclusive prefix sums of log(1 - alpha) (float64): log T before each pair."""
    incl = torch.cumsum(log1m_alpha, dim=0)
    excl = incl - log1m_alpha
    return excl - excl[starts]


def _composite_tiled(
    footprint, records, opacities, colors, depths, rects, width, height, background, settings, render_depth, chunk_elements, bin_size,
    color_weights=None,
):
    device, dtype = records.device, records.dtype
    n = records.shape[0]
    p_count = width * height
    bs = bin_size or DEFAULT_BIN_SIZE
    off = settings.pixel_offset

    # ---- pass 1 (no grad): per chunk of bins (tiles of ``bin_size``), a padded [bins, kmax, bs, bs] block
    # of every bin's depth-sorted list against every pixel of the bin; keep the contributing pairs.
    with torch.no_grad():
        isects = _tiles.intersect_tiles(rects, depths, width, height, bs)
        counts = isects.offsets[1:] - isects.offsets[:-1]
        rec_d, op_d = records.detach(), opacities.detach()
        rects64 = rects.to(torch.int64)
        grid_fn = getattr(footprint, "grid", None)
        lin = torch.arange(bs, device=device)
        keep_pix, keep_prim = [], []
        for tile_ids, kmax in _tiles.plan_tile_chunks(counts, bs, chunk_elements):
            prim, valid = _tiles.tile_lists(isects, tile_ids, kmax)  # [T, K]
            xs_i = (tile_ids % isects.tiles_x)[:, None] * bs + lin  # [T, bs]
            ys_i = torch.div(tile_ids, isects.tiles_x, rounding_mode="floor")[:, None] * bs + lin
            r = rects64[prim]  # [T, K, 4]
            in_x = (xs_i[:, None, :] >= r[..., 0:1]) & (xs_i[:, None, :] < r[..., 2:3])  # [T, K, X]
            in_y = (ys_i[:, None, :] >= r[..., 1:2]) & (ys_i[:, None, :] < r[..., 3:4]) & valid[..., None]
            keep = in_y[..., :, None] & in_x[..., None, :]  # [T, K, Y, X]
            del r, in_x, in_y
            xs = xs_i.to(dtype) + off
            ys = ys_i.to(dtype) + off
            rec = rec_d[prim]  # [T, K, R]
            if grid_fn is not None:
                w = grid_fn(rec, xs[:, None, :], ys[:, None, :])
            else:
                grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)  # [T, Y, X, 2]
                w = footprint(rec[:, :, None, None, :], grid[:, None])
            alpha = torch.clamp_(op_d[prim][..., None, None] * w, max=settings.alpha_max)
            del w
            keep &= alpha >= settings.alpha_min
            one_minus = torch.neg_(alpha).add_(1.0).masked_fill_(~keep, 1.0)
            keep &= torch.cumprod(one_minus, dim=1) > settings.t_min  # float, sequential: as the kernel
            del one_minus, alpha
            t_i, y_i, x_i, k_i = torch.nonzero(keep.permute(0, 2, 3, 1), as_tuple=True)  # (bin, y, x, depth)
            keep_pix.append(ys_i[t_i, y_i] * width + xs_i[t_i, x_i])
            keep_prim.append(prim[t_i, k_i])
        if keep_pix:
            pix_c = torch.cat(keep_pix)
            prim_c = torch.cat(keep_prim)
        else:
            pix_c = torch.zeros(0, dtype=torch.int64, device=device)
            prim_c = torch.zeros(0, dtype=torch.int64, device=device)
        starts = _segment_starts(pix_c)
        pixels = pixel_centers(pix_c, width, off, dtype)

    # ---- pass 2: differentiable compositing of the contributing pairs only ----
    w = footprint(records[prim_c], pixels)
    alpha = torch.clamp(opacities[prim_c] * w, max=settings.alpha_max)
    la = torch.log1p(-alpha.to(torch.float64))
    t = torch.exp(_exclusive_log_transmittance(la, starts)).to(dtype)
    weights = alpha * t
    pair_colors = colors[prim_c].to(dtype)
    if color_weights is not None:  # per-pixel colour: sum_v b_v(p) c_v
        pair_colors = (color_weights(records[prim_c], pixels)[..., None] * pair_colors).sum(1)
    color_sum = torch.zeros(p_count, colors.shape[-1], dtype=dtype, device=device).index_add(
        0, pix_c, weights[:, None] * pair_colors
    )
    log_t_end = torch.zeros(p_count, dtype=torch.float64, device=device).index_add(0, pix_c, la)
    t_end = torch.exp(log_t_end).to(dtype)
    depth_sum = None
    if render_depth:
        depth_sum = torch.zeros(p_count, dtype=dtype, device=device).index_add(0, pix_c, weights * depths[prim_c].to(dtype))
    return _finish(color_sum, t_end, depth_sum, background, width, height, n, weights, prim_c, pix_c, device)
