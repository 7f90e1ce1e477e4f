"""Multiresolution hash encoding (instant-ngp style) as a recon op.

``hash_grid_encode(x, table, cfg)`` maps points in [0,1]^3 to ``[N, L*F]`` features. Backends:
``"reference"`` (pure PyTorch, ``reference/hashgrid.py``; CPU path, oracle, differentiable w.r.t. x and
the table to any order), ``"cuda"`` (``cuda/csrc/hashgrid.cu``: one fused kernel per pass, gradient
w.r.t. the table and, when x requires grad, first-order w.r.t. x), ``"auto"`` (CUDA for CUDA tensors
when the core builds, otherwise the reference). tiny-cuda-nn is not used: its tables share our layout
(``shared/notes/surfaces_4d_export.md`` 3.2) but a missing tcnn must never matter.

``HashGridEncoding`` holds the table as a Parameter and supports coarse-to-fine training through
``set_active_levels(k)``: levels >= k output zeros and receive no gradient.
"""

from __future__ import annotations

import torch

from .reference.hashgrid import (
    HashGridConfig,
    LevelLayout,
    hash_grid_encode_reference,
    init_table,
    level_layout,
    resolve_level_mask,
    table_rows,
)

__all__ = [
    "HashGridConfig",
    "HashGridEncoding",
    "LevelLayout",
    "hash_grid_encode",
    "hash_grid_encode_reference",
    "init_table",
    "level_layout",
    "table_rows",
]

_META_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _device_meta(cfg: HashGridConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales [L] float32, meta [L, 4] int32: resolution, row offset, rows, dense) on ``device``, cached."""
    key = (cfg.n_levels, cfg.log2_table_size, cfg.base_resolution, cfg.growth, str(device))
    hit = _META_CACHE.get(key)
    if hit is None:
        lay = level_layout(cfg)
        if lay.total_rows * cfg.n_features >= 2**31:
            raise ValueError("hash grid too large for the CUDA kernels (2^31 table entries)")
        scales = torch.tensor(lay.scales, dtype=torch.float32)
        meta = torch.tensor(
            [[r, o, s, int(d)] for r, o, s, d in zip(lay.resolutions, lay.offsets, lay.sizes, lay.dense)], dtype=torch.int32
        )
        hit = (scales.to(device), meta.to(device))
        _META_CACHE[key] = hit
    return hit


_MASK_CACHE: dict[tuple, torch.Tensor] = {}


def _active_bytes(cfg: HashGridConfig, level_mask, device) -> torch.Tensor:
    """The kernels' per-level uint8 mask on ``device`` (empty = all active). Masks given as an int or a
    Python sequence are cached per device: building them anew would be a blocking host-to-device copy
    on every call (e.g. every step of coarse-to-fine training)."""
    if isinstance(level_mask, torch.Tensor):
        mask = resolve_level_mask(cfg, level_mask.to(device))
        return torch.empty(0, dtype=torch.uint8, device=device) if mask is None else mask.to(dtype=torch.uint8)
    key = (cfg.n_levels, level_mask if level_mask is None or isinstance(level_mask, int) else tuple(bool(v) for v in level_mask), str(device))
    hit = _MASK_CACHE.get(key)
    if hit is None:
        mask = resolve_level_mask(cfg, level_mask)
        hit = torch.empty(0, dtype=torch.uint8) if mask is None else mask.to(torch.uint8)
        hit = hit.to(device)
        if len(_MASK_CACHE) > 1024:
            _MASK_CACHE.clear()
        _MASK_CACHE[key] = hit
    return hit


class _HashGridCuda(torch.autograd.Function):
    """The CUDA op: forward kernel, backward kernel (table gradient; x gradient when x requires grad).
    Not twice differentiable: use the reference (or finite differences) for Eikonal terms."""

    @staticmethod
    def forward(ctx, x, table, scales, meta, active, smoothstep: bool, feature_major: bool, pair: bool):
        out = torch.ops.recon.hashgrid_fwd(x, table, scales, meta, active, smoothstep, feature_major, pair)
        ctx.save_for_backward(x, table, scales, meta, active)
        ctx.smoothstep = smoothstep
        ctx.pair = pair
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, table, scales, meta, active = ctx.saved_tensors
        want_x = ctx.needs_input_grad[0]
        grad_table, grad_x = torch.ops.recon.hashgrid_bwd(
            x, table, scales, meta, active, ctx.smoothstep, grad_out, want_x, ctx.pair
        )
        grad_table = grad_table.to(table.dtype) if ctx.needs_input_grad[1] else None
        return (grad_x if want_x else None), grad_table, None, None, None, None, None, None


def hash_grid_encode_cuda(
    x: torch.Tensor,
    table: torch.Tensor,
    cfg: HashGridConfig,
    level_mask=None,
    feature_major: bool = False,
    pair_loads: bool = True,
) -> torch.Tensor:
    """The CUDA kernels (x float32 CUDA [N,3]; table float32/float16 CUDA). Output float32 [N, L*F].

    ``feature_major``: the output is stored as [L*F, N] and returned as its transpose (strides (1, N)):
    the kernel's writes and the backward's reads are then coalesced; matmuls consume it without a copy,
    ``.view`` does not (use ``.reshape``). ``pair_loads``: x-neighbouring corners that share a 16-byte row
    group are read with one load and updated with one atomic (F == 2; same results)."""
    from .cuda import _backend

    _backend.load()
    if table.shape != (table_rows(cfg), cfg.n_features):
        raise ValueError(f"table must be [{table_rows(cfg)}, {cfg.n_features}] for this config, got {tuple(table.shape)}")
    scales, meta = _device_meta(cfg, x.device)
    active = _active_bytes(cfg, level_mask, x.device)
    smooth = cfg.interpolation == "smoothstep"
    if table.data_ptr() % 16:  # the kernels' vector loads need 16-byte aligned rows: a (rare) offset view is copied
        table = table.clone(memory_format=torch.contiguous_format)
    return _HashGridCuda.apply(x.float().contiguous(), table.contiguous(), scales, meta, active, smooth, feature_major, pair_loads)


def _cuda_usable(x: torch.Tensor, table: torch.Tensor) -> bool:
    if not (x.is_cuda and table.is_cuda) or table.dtype not in (torch.float32, torch.float16):
        return False
    from .cuda import _backend

    return _backend.is_available()


def hash_grid_encode(
    x: torch.Tensor,
    table: torch.Tensor,
    cfg: HashGridConfig,
    *,
    backend: str = "auto",
    level_mask=None,
    feature_major: bool = False,
) -> torch.Tensor:
    """Encode ``x [N,3]`` in [0,1] (clamped) with ``table [sum_l T_l, F]`` -> ``[N, L*F]``.

    ``level_mask``: None, an int k (levels >= k masked) or a bool [L]; masked levels output zeros and get
    no gradient. ``backend``: "auto" | "reference" | "cuda". ``feature_major`` (CUDA only; same values):
    see :func:`hash_grid_encode_cuda`."""
    if backend == "reference":
        return hash_grid_encode_reference(x, table, cfg, level_mask)
    if backend == "cuda":
        if not (x.is_cuda and table.is_cuda):
            raise ValueError("backend='cuda' needs x and table on a CUDA device")
        return hash_grid_encode_cuda(x, table, cfg, level_mask, feature_major)
    if backend != "auto":
        raise ValueError(f"backend must be 'auto', 'reference' or 'cuda', got {backend!r}")
    if _cuda_usable(x, table):
        return hash_grid_encode_cuda(x, table, cfg, level_mask, feature_major)
    return hash_grid_encode_reference(x, table, cfg, level_mask)


class HashGridEncoding(torch.nn.Module):
    """A trainable hash-grid encoding: ``forward(x [N,3] in [0,1]) -> [N, output_dim]``."""

    def __init__(
        self,
        cfg: HashGridConfig | None = None,
        *,
        backend: str = "auto",
        seed: int | None = None,
        device=None,
        feature_major: bool = False,
    ):
        super().__init__()
        self.cfg = cfg or HashGridConfig()
        self.backend = backend
        self.feature_major = feature_major
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.table = torch.nn.Parameter(init_table(self.cfg, generator=gen).to(device))
        self.active_levels = self.cfg.n_levels

    @property
    def output_dim(self) -> int:
        return self.cfg.output_dim

    @property
    def n_levels(self) -> int:
        return self.cfg.n_levels

    def set_active_levels(self, k: int) -> None:
        """Coarse-to-fine: only the first ``k`` levels contribute (the rest output 0, get no gradient)."""
        self.active_levels = max(0, min(self.cfg.n_levels, int(k)))

    def finest_active_resolution(self) -> int:
        """Vertex resolution of the finest active level (e.g. for finite-difference step sizes)."""
        lay = level_layout(self.cfg)
        return lay.resolutions[max(0, self.active_levels - 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = None if self.active_levels >= self.cfg.n_levels else self.active_levels
        return hash_grid_encode(x, self.table, self.cfg, backend=self.backend, level_mask=mask, feature_major=self.feature_major)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"levels={c.n_levels}, features={c.n_features}, log2_T={c.log2_table_size}, "
                f"res={c.base_resolution}..{c.finest_resolution}, {c.interpolation}, active={self.active_levels}")  # fmt: skip
