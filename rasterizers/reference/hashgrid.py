"""Multiresolution hash encoding in pure PyTorch: the CPU path and the oracle for the CUDA kernels.

Conventions (``shared/notes/surfaces_4d_export.md`` 1.1 and 3.2, the tiny-cuda-nn ones so tables stay
interchangeable):

- level ``l`` has scale ``s_l = N_min * b**l - 1`` (``b`` the per-level growth) and vertex resolution
  ``R_l = ceil(s_l) + 1``; a point ``x`` in [0,1]^3 sits at ``p = s_l * x + 0.5`` (the half-cell offset
  staggers the levels), in cell ``floor(p)`` with fraction ``p - floor(p)``;
- a level whose ``R_l**3`` vertices fit in the table is dense (``idx = i0 + i1*R + i2*R*R``), the finer
  ones are hashed (``idx = i0*1 ^ i1*2654435761 ^ i2*805459861`` in uint32 arithmetic, the
  "CoherentPrime" hash); either way ``idx mod T_l``;
- ``T_l = min(T, R_l**3 rounded up to a multiple of 8)``; the levels are concatenated in one table
  ``[sum_l T_l, F]``; the output is ``[N, L*F]``, level-major.

Positions are clamped to [0,1] (the gradient w.r.t. x is zero outside). The product ``s_l * x + 0.5`` is
formed in float64 and rounded once to float32, which equals the CUDA kernel's ``fmaf`` except on
double-rounding ties, so both backends pick the same cells.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch

# The "CoherentPrime" hash: the first prime is 1 so that neighbouring cells along x land in
# neighbouring table rows (shared cache lines).
HASH_PRIMES = (1, 2654435761, 805459861)
UINT32_MASK = 0xFFFFFFFF
N_DIMS = 3


@dataclass(frozen=True)
class HashGridConfig:
    """A 3D multiresolution hash grid (instant-ngp / tiny-cuda-nn defaults)."""

    n_levels: int = 16
    n_features: int = 2
    """Features per level (F); the encoding has ``n_levels * n_features`` outputs."""
    log2_table_size: int = 19
    """log2 of the largest per-level table (T); coarse levels that fit densely use fewer rows."""
    base_resolution: int = 16
    """N_min: the coarsest level's resolution."""
    finest_resolution: int = 2048
    """N_max: the finest level's resolution; ignored when ``per_level_scale`` is given."""
    per_level_scale: float | None = None
    """Growth factor b between levels; default exp((ln N_max - ln N_min) / (L - 1))."""
    interpolation: Literal["linear", "smoothstep"] = "linear"
    """'smoothstep' (w^2 (3 - 2w)) makes the encoding C1, so analytic normals are continuous."""
    dtype: Literal["float32", "float16", "float64"] = "float32"
    """Storage type of the table (float16 halves memory and bandwidth; the CUDA path accumulates in fp32)."""

    def __post_init__(self) -> None:
        if not 1 <= self.n_levels <= 128:
            raise ValueError(f"n_levels must be in 1..128, got {self.n_levels}")
        if self.n_features not in (1, 2, 4, 8):
            raise ValueError(f"n_features must be 1, 2, 4 or 8, got {self.n_features}")
        if not 3 <= self.log2_table_size <= 30:
            raise ValueError(f"log2_table_size must be in 3..30, got {self.log2_table_size}")
        if self.base_resolution < 2:
            raise ValueError(f"base_resolution must be >= 2, got {self.base_resolution}")
        if self.per_level_scale is None and self.finest_resolution < self.base_resolution:
            raise ValueError("finest_resolution must be >= base_resolution")
        if self.interpolation not in ("linear", "smoothstep"):
            raise ValueError(f"interpolation must be 'linear' or 'smoothstep', got {self.interpolation!r}")
        if self.dtype not in ("float32", "float16", "float64"):
            raise ValueError(f"dtype must be float32, float16 or float64, got {self.dtype!r}")

    @property
    def growth(self) -> float:
        if self.per_level_scale is not None:
            return float(self.per_level_scale)
        if self.n_levels == 1:
            return 1.0
        return math.exp((math.log(self.finest_resolution) - math.log(self.base_resolution)) / (self.n_levels - 1))

    @property
    def output_dim(self) -> int:
        return self.n_levels * self.n_features

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass(frozen=True)
class LevelLayout:
    """Per-level constants shared by both backends (plain Python numbers, computed once per config)."""

    scales: tuple[float, ...]
    """s_l, already rounded to float32."""
    resolutions: tuple[int, ...]
    offsets: tuple[int, ...]
    """Row offset of each level in the table; ``offsets[L]`` is the total row count."""
    sizes: tuple[int, ...]
    dense: tuple[bool, ...]

    @property
    def total_rows(self) -> int:
        return self.offsets[-1]


def _to_f32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float32))


@functools.lru_cache(maxsize=64)
def level_layout(cfg: HashGridConfig) -> LevelLayout:
    table = 1 << cfg.log2_table_size
    log2_b = math.log2(cfg.growth)
    scales, res, offs, sizes, dense = [], [], [0], [], []
    for level in range(cfg.n_levels):
        s = _to_f32(2.0 ** (level * log2_b) * cfg.base_resolution - 1.0)
        r = int(math.ceil(s)) + 1
        n_dense = r**N_DIMS
        size = min(table, (n_dense + 7) // 8 * 8)
        scales.append(s)
        res.append(r)
        sizes.append(size)
        dense.append(n_dense <= size)
        offs.append(offs[-1] + size)
    return LevelLayout(tuple(scales), tuple(res), tuple(offs), tuple(sizes), tuple(dense))


def table_rows(cfg: HashGridConfig) -> int:
    """Rows of the concatenated table, ``sum_l T_l``."""
    return level_layout(cfg).total_rows


def init_table(cfg: HashGridConfig, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """A fresh table ``[rows, F]`` drawn from U(-1e-4, 1e-4) (instant-ngp's init)."""
    t = torch.empty(table_rows(cfg), cfg.n_features, dtype=torch.float32, device=device)
    t.uniform_(-1e-4, 1e-4, generator=generator)
    return t.to(cfg.torch_dtype)


def resolve_level_mask(cfg: HashGridConfig, level_mask, device=None) -> torch.Tensor | None:
    """``level_mask`` as a bool tensor [L] (True = active), or None when every level is active.

    Accepts None, an int k (the first k levels active) or a bool sequence/tensor of length L."""
    if level_mask is None:
        return None
    if isinstance(level_mask, int) and not isinstance(level_mask, bool):
        k = max(0, min(cfg.n_levels, level_mask))
        if k == cfg.n_levels:
            return None
        mask = torch.arange(cfg.n_levels) < k
    else:
        mask = torch.as_tensor(level_mask, dtype=torch.bool).flatten()
        if mask.numel() != cfg.n_levels:
            raise ValueError(f"level_mask has {mask.numel()} entries, the grid has {cfg.n_levels} levels")
    return mask.to(device)


def interpolation_weights(frac: torch.Tensor, interpolation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension weight of the upper corner and its derivative d weight / d frac."""
    if interpolation == "smoothstep":
        return frac * frac * (3.0 - 2.0 * frac), 6.0 * frac * (1.0 - frac)
    return frac, torch.ones_like(frac)


def corner_offsets(device=None) -> torch.Tensor:
    """The 8 cube corners as [8, 3] int64 bits, corner c = (c & 1, c >> 1 & 1, c >> 2 & 1)."""
    c = torch.arange(8, device=device)
    return torch.stack([c & 1, (c >> 1) & 1, (c >> 2) & 1], dim=-1)


def level_cells(x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell index [N,3] int64 and fraction [N,3] (x's dtype, float32 at least) of x at one level."""
    p64 = x.detach().double() * scale + 0.5
    p_round = p64.float() if x.dtype != torch.float64 else p64
    cell = torch.floor(p_round)
    # The fraction carries the input gradient: d frac / d x = scale.
    frac = (p_round - cell).to(torch.promote_types(x.dtype, torch.float32))
    if x.requires_grad:
        frac = frac + (x - x.detach()) * scale
    return cell.long(), frac


def corner_indices(cell: torch.Tensor, resolution: int, size: int, dense: bool) -> torch.Tensor:
    """Row (within the level) of each of the 8 corners: [N, 8] int64."""
    corners = cell[:, None, :] + corner_offsets(cell.device)[None]  # [N, 8, 3]
    if dense:
        idx = corners[..., 0] + corners[..., 1] * resolution + corners[..., 2] * (resolution * resolution)
        idx = idx & UINT32_MASK
    else:
        idx = torch.zeros_like(corners[..., 0])
        for k in range(N_DIMS):
            idx = idx ^ ((corners[..., k] * HASH_PRIMES[k]) & UINT32_MASK)
    return idx % size


def corner_weights(frac: torch.Tensor, interpolation: str) -> torch.Tensor:
    """Trilinear (or smoothstep) weight of each corner: [N, 8]. Products written out, not torch.prod,
    whose double backward is very slow."""
    w1, _ = interpolation_weights(frac, interpolation)
    w0 = 1.0 - w1
    bits = corner_offsets(frac.device)
    per_dim = [torch.where(bits[None, :, k].bool(), w1[:, k : k + 1], w0[:, k : k + 1]) for k in range(N_DIMS)]
    return per_dim[0] * per_dim[1] * per_dim[2]


def hash_grid_encode_reference(
    x: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig, level_mask=None
) -> torch.Tensor:
    """Encode points ``x [N,3]`` in [0,1] with ``table [rows, F]``: ``[N, L*F]`` (autograd w.r.t. both).

    Computation is in the promoted type of table and float32 (float16 tables accumulate in float32, and
    the output is float32 then)."""
    if x.ndim != 2 or x.shape[-1] != N_DIMS:
        raise ValueError(f"x must be [N, 3], got {tuple(x.shape)}")
    layout = level_layout(cfg)
    if table.shape != (layout.total_rows, cfg.n_features):
        raise ValueError(f"table must be [{layout.total_rows}, {cfg.n_features}] for this config, got {tuple(table.shape)}")
    mask = resolve_level_mask(cfg, level_mask)
    out_dtype = torch.promote_types(torch.promote_types(table.dtype, torch.float32), x.dtype)
    x = x.clamp(0.0, 1.0)
    feats = []
    for level in range(cfg.n_levels):
        if mask is not None and not bool(mask[level]):
            feats.append(torch.zeros(x.shape[0], cfg.n_features, dtype=out_dtype, device=x.device))
            continue
        cell, frac = level_cells(x, layout.scales[level])
        idx = corner_indices(cell, layout.resolutions[level], layout.sizes[level], layout.dense[level])
        w = corner_weights(frac, cfg.interpolation).to(out_dtype)  # [N, 8]
        rows = table[layout.offsets[level] + idx].to(out_dtype)  # [N, 8, F]
        feats.append((w[..., None] * rows).sum(dim=1))
    return torch.cat(feats, dim=-1)


class VectorizedHashGrid:
    """All levels at once in a handful of tensor ops (no Python loop over levels): the same function as
    :func:`hash_grid_encode_reference`, shaped for ``torch.compile`` (the benchmark's baseline and a fast
    pure-PyTorch GPU path). Per-level constants are tensors on the target device, built once."""

    def __init__(self, cfg: HashGridConfig, device=None):
        lay = level_layout(cfg)
        self.cfg = cfg
        self.scales = torch.tensor(lay.scales, dtype=torch.float64, device=device)
        self.res = torch.tensor(lay.resolutions, dtype=torch.int64, device=device)
        self.sizes = torch.tensor(lay.sizes, dtype=torch.int64, device=device)
        self.offsets = torch.tensor(lay.offsets[:-1], dtype=torch.int64, device=device)
        self.dense = torch.tensor(lay.dense, dtype=torch.bool, device=device)
        self.bits = corner_offsets(device)  # [8, 3]

    def __call__(self, x: torch.Tensor, table: torch.Tensor, level_mask=None) -> torch.Tensor:
        cfg = self.cfg
        out_dtype = torch.promote_types(torch.promote_types(table.dtype, torch.float32), x.dtype)
        x = x.clamp(0.0, 1.0)
        p64 = x.detach().double()[:, None, :] * self.scales[None, :, None] + 0.5  # [N, L, 3]
        p = p64.float() if x.dtype != torch.float64 else p64
        cell_f = torch.floor(p)
        # weights in the position's precision (float32 for float32 x, like the kernel), then promoted
        frac = p - cell_f
        if x.requires_grad:
            frac = frac + (x - x.detach())[:, None, :].to(frac.dtype) * self.scales[None, :, None].to(frac.dtype)
        cell = cell_f.long()
        w1, _ = interpolation_weights(frac, cfg.interpolation)
        w0 = 1.0 - w1
        res = self.res[None, :]
        acc = None
        for c in range(8):
            b = [(c >> k) & 1 for k in range(N_DIMS)]
            ci = [cell[..., k] + b[k] for k in range(N_DIMS)]
            dense_idx = (ci[0] + ci[1] * res + ci[2] * res * res) & UINT32_MASK
            hashed = ((ci[0] * HASH_PRIMES[0]) & UINT32_MASK) ^ ((ci[1] * HASH_PRIMES[1]) & UINT32_MASK)
            hashed = hashed ^ ((ci[2] * HASH_PRIMES[2]) & UINT32_MASK)
            idx = torch.where(self.dense[None, :], dense_idx, hashed) % self.sizes[None, :] + self.offsets[None, :]
            w = (w1[..., 0] if b[0] else w0[..., 0]) * (w1[..., 1] if b[1] else w0[..., 1]) * (w1[..., 2] if b[2] else w0[..., 2])
            term = w.to(out_dtype)[..., None] * table[idx].to(out_dtype)  # [N, L, F]
            acc = term if acc is None else acc + term
        mask = resolve_level_mask(cfg, level_mask, device=x.device)
        if mask is not None:
            acc = acc * mask[None, :, None].to(out_dtype)
        return acc.reshape(x.shape[0], cfg.output_dim)
