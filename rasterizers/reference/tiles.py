"""Tile binning (reference for the CUDA isect / sort / offsets kernels) and pixel-pair expansion.

Conventions (the CUDA core must produce exactly these, integer for integer):

- Image of ``W x H`` pixels, ``tiles_x = ceil(W / ts)``, ``tiles_y = ceil(H / ts)``, tile id
  ``ty * tiles_x + tx``.
- A primitive's pixel rect ``(x0, y0, x1, y1)`` (end exclusive, already clipped to the image; empty
  when ``x1 <= x0`` or ``y1 <= y0`` = culled) touches tiles ``tx in [x0 // ts, ceil(x1 / ts))``,
  ``ty in [y0 // ts, ceil(y1 / ts))``.
- Intersections are sorted by ``(tile id, depth ascending, primitive index)``: ties in depth are broken
  by primitive index, which is what a stable radix sort over ``tile << 32 | float_bits(depth)`` keys
  produces when the pairs are emitted in primitive order (depths are > 0, so float bits sort like
  floats; the CUDA core sorts float32 depths, so compare in float32 when depths differ only below
  float32 precision).
- ``offsets`` has ``n_tiles + 1`` entries: the intersections of tile ``t`` are
  ``[offsets[t], offsets[t + 1])``. (gsplat stores only the ``n_tiles`` starts; the last end is the
  number of intersections.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "TileIntersections",
    "tile_grid",
    "rects_to_tile_rects",
    "intersect_tiles",
    "tile_lists",
    "tile_pixels",
    "plan_tile_chunks",
]


class TileIntersections(NamedTuple):
    tile_ids: torch.Tensor  # [M] int64, sorted ascending
    prim_ids: torch.Tensor  # [M] int64, within a tile sorted by (depth, index)
    offsets: torch.Tensor  # [n_tiles + 1] int64
    tiles_x: int
    tiles_y: int


def tile_grid(width: int, height: int, tile_size: int) -> tuple[int, int]:
    """Number of tiles ``(tiles_x, tiles_y)`` covering a ``width x height`` image."""
    return (width + tile_size - 1) // tile_size, (height + tile_size - 1) // tile_size


def rects_to_tile_rects(rects: torch.Tensor, tile_size: int) -> torch.Tensor:
    """Pixel rects [N, 4] (x0, y0, x1, y1; end exclusive) -> tile rects [N, 4] int64, end exclusive.

    Empty pixel rects give empty tile rects (all zeros).
    """
    r = rects.to(torch.int64)
    valid = (r[:, 2] > r[:, 0]) & (r[:, 3] > r[:, 1])
    t0 = torch.div(r[:, :2], tile_size, rounding_mode="floor")
    t1 = torch.div(r[:, 2:] + (tile_size - 1), tile_size, rounding_mode="floor")
    out = torch.cat([t0, t1], dim=-1)
    return torch.where(valid[:, None], out, torch.zeros_like(out))


def depth_order(depths: torch.Tensor) -> torch.Tensor:
    """Indices sorting ``depths`` ascending, ties by index (stable)."""
    return torch.sort(depths.detach(), stable=True).indices


@torch.no_grad()
def intersect_tiles(
    rects: torch.Tensor, depths: torch.Tensor, width: int, height: int, tile_size: int
) -> TileIntersections:
    """Bin primitives into tiles by their pixel rects and sort every tile's list by depth."""
    device = rects.device
    tiles_x, tiles_y = tile_grid(width, height, tile_size)
    n_tiles = tiles_x * tiles_y
    trect = rects_to_tile_rects(rects, tile_size)
    order = depth_order(depths)  # emit in depth order, then a stable sort by tile keeps it per tile
    tr = trect[order]
    tw = tr[:, 2] - tr[:, 0]
    counts = tw * (tr[:, 3] - tr[:, 1])
    total = int(counts.sum())
    if total == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return TileIntersections(empty, empty, torch.zeros(n_tiles + 1, dtype=torch.int64, device=device), tiles_x, tiles_y)
    src = torch.repeat_interleave(torch.arange(order.numel(), device=device), counts)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(total, device=device) - starts[src]
    w = tw[src]
    tile = (tr[src, 1] + local // w) * tiles_x + tr[src, 0] + local % w
    tile_sorted, perm = torch.sort(tile, stable=True)
    prim = order[src[perm]]
    offsets = torch.searchsorted(tile_sorted, torch.arange(n_tiles + 1, device=device))
    return TileIntersections(tile_sorted, prim, offsets, tiles_x, tiles_y)


def tile_lists(isects: TileIntersections, tiles: torch.Tensor, kmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded per-tile primitive lists: ``prim_ids`` [T, kmax] (depth order) and ``valid`` [T, kmax] bool.

    Padding slots hold primitive 0 and ``valid = False``.
    """
    start = isects.offsets[tiles]
    count = isects.offsets[tiles + 1] - start
    slot = torch.arange(kmax, device=tiles.device)
    valid = slot[None, :] < count[:, None]
    idx = torch.where(valid, start[:, None] + slot[None, :], torch.zeros((), dtype=torch.int64, device=tiles.device))
    prim = isects.prim_ids[idx] if isects.prim_ids.numel() else torch.zeros_like(idx)
    return torch.where(valid, prim, torch.zeros_like(prim)), valid


def tile_pixels(tiles: torch.Tensor, tiles_x: int, tile_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer pixel coordinates ``(px, py)``, each [T, tile_size^2], of the pixels of ``tiles`` (row-major
    inside a tile; pixels beyond the image border are included, rects never contain them)."""
    local = torch.arange(tile_size * tile_size, device=tiles.device)
    px = (tiles % tiles_x)[:, None] * tile_size + (local % tile_size)[None, :]
    py = torch.div(tiles, tiles_x, rounding_mode="floor")[:, None] * tile_size + torch.div(local, tile_size, rounding_mode="floor")[None, :]
    return px, py


def plan_tile_chunks(counts: torch.Tensor, tile_size: int, budget: int) -> list[tuple[torch.Tensor, int]]:
    """Group non-empty tiles into chunks whose padded block ``n_tiles x kmax x tile_size^2`` stays <= ``budget``.

    ``counts`` [n_tiles] = intersections per tile. Tiles are taken in decreasing count (ties by id), so
    a chunk's padding is small. Returns ``[(tile_ids [T], kmax), ...]``; a tile above the budget on its
    own forms a chunk.
    """
    order = torch.sort(counts, descending=True, stable=True).indices
    c_sorted = counts[order].tolist()
    order_l = order.tolist()
    px = tile_size * tile_size
    chunks: list[tuple[torch.Tensor, int]] = []
    i, n = 0, len(c_sorted)
    while i < n and c_sorted[i] > 0:
        kmax = c_sorted[i]
        take = max(1, budget // (kmax * px))
        j = i + 1
        while j < n and j - i < take and c_sorted[j] > 0:
            j += 1
        chunks.append((torch.tensor(order_l[i:j], dtype=torch.int64, device=counts.device), kmax))
        i = j
    return chunks
