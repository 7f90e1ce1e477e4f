"""Occupancy grid over the unit cube and ray marching through it.

The grid (notes/surfaces_4d_export.md 1.3, 2.1, 2.3) stores one value per cell: a running maximum of the
opacity a section through the cell could have, ``values = max(decay * values, new)``, and a bit per
cell, ``value > min(threshold, mean)``. Marching emits fixed-length sections whose midpoints fall in
occupied cells, packed as ``(ray_indices, t_starts, t_ends)`` (sorted by ray, then ``t``).

Why the cell value cannot miss the surface: a cell the zero level set passes through has every point
within one cell diagonal ``D`` of the surface, so ``|f(x)| <= D`` for a true distance function at any
jittered point ``x``; a section of length ``2D`` centred there starts at SDF ``>= 0`` and ends at
``<= 0`` when it runs straight in, and its NeuS opacity is ``>= 1 - 2 sigmoid(-2 D s)`` (0.79 for
s = 20 on a 32^3 grid), far above the threshold.

Two marchers with one interface: the PyTorch one (dense candidate sections per ray, then boolean
compaction; CPU and GPU) and nerfacc's ``OccGridEstimator.sampling`` (CUDA grid traversal) when
nerfacc imports and the rays live on a GPU. Both share this grid's bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from recon.surfaces.neus import section_alpha_bound, weights_from_alpha
from recon.surfaces.rays import ray_box


@dataclass
class PackedSamples:
    ray_indices: torch.Tensor  # [M] int64, sorted
    t_starts: torch.Tensor  # [M]
    t_ends: torch.Tensor  # [M]
    n_rays: int

    def __len__(self) -> int:
        return int(self.ray_indices.numel())

    def select(self, keep: torch.Tensor) -> "PackedSamples":
        return PackedSamples(self.ray_indices[keep], self.t_starts[keep], self.t_ends[keep], self.n_rays)


def nerfacc_available() -> bool:
    try:
        import nerfacc  # noqa: F401
    except Exception:  # ImportError, or a broken install: either way use the PyTorch path
        return False
    return True


class OccupancyGrid:
    """A ``resolution^3`` occupancy grid over ``[0, 1]^3`` (the surface scene's normalised space)."""

    def __init__(self, resolution: int, device: str | torch.device = "cpu") -> None:
        if resolution < 2:
            raise ValueError(f"occupancy resolution must be >= 2, got {resolution}")
        self.resolution = int(resolution)
        # Before the first update every cell counts as occupied, so an untrained field still renders.
        self.values = torch.zeros(self.resolution**3, device=device)
        self.binary = torch.ones((self.resolution,) * 3, dtype=torch.bool, device=device)
        self.updates = 0
        self._estimator = None

    # --- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"resolution": self.resolution, "values": self.values.detach().cpu(), "binary": self.binary.cpu(), "updates": self.updates}

    @classmethod
    def from_state_dict(cls, state: dict, device: str | torch.device = "cpu") -> "OccupancyGrid":
        grid = cls(int(state["resolution"]), device)
        grid.values = state["values"].to(device).float()
        grid.binary = state["binary"].to(device).bool()
        grid.updates = int(state["updates"])
        return grid

    def to(self, device) -> "OccupancyGrid":
        self.values = self.values.to(device)
        self.binary = self.binary.to(device)
        self._estimator = None
        return self

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def cell_size(self) -> float:
        return 1.0 / self.resolution

    def occupied_fraction(self) -> float:
        return float(self.binary.float().mean())

    # --- update ---------------------------------------------------------------------------------
    def cell_centers(self, indices: torch.Tensor) -> torch.Tensor:
        r = self.resolution
        i, j, k = indices // (r * r), (indices // r) % r, indices % r
        return (torch.stack([i, j, k], dim=-1).float() + 0.5) / r

    @torch.no_grad()
    def update(
        self,
        sdf_fn: Callable[[torch.Tensor], torch.Tensor],
        inv_s: float | torch.Tensor,
        *,
        warmup: bool,
        threshold: float = 0.01,
        decay: float = 0.95,
        chunk: int = 1 << 18,
        generator: torch.Generator | None = None,
    ) -> None:
        """Re-evaluate cells (all of them while ``warmup``, else a quarter at random plus as many
        occupied ones) at a jittered point each, and refresh the bits.

        ``sdf_fn(x [N, 3] in [0, 1]^3) -> [N]`` signed distance in normalised units."""
        r3 = self.resolution**3
        dev = self.device
        if warmup:
            idx = torch.arange(r3, device=dev)
        else:
            uniform = torch.randint(0, r3, (r3 // 4,), device=dev, generator=generator)
            occupied = self.binary.reshape(-1).nonzero().squeeze(-1)
            if occupied.numel() > 0:
                pick = torch.randint(0, occupied.numel(), (min(r3 // 4, occupied.numel()),), device=dev, generator=generator)
                idx = torch.cat([uniform, occupied[pick]])
            else:
                idx = uniform
        jitter = torch.rand(idx.numel(), 3, device=dev, generator=generator) - 0.5
        x = self.cell_centers(idx) + jitter * self.cell_size
        diag = math.sqrt(3.0) * self.cell_size
        occ = torch.cat([section_alpha_bound(sdf_fn(xc).float(), 2.0 * diag, inv_s) for xc in x.split(chunk)])
        # Duplicated indices (random picks) resolve to one of their values; all are valid estimates.
        self.values[idx] = torch.maximum(self.values[idx] * decay, occ)
        thre = min(threshold, float(self.values.mean()))
        self.binary = (self.values > thre).reshape(self.binary.shape)
        self.updates += 1

    # --- marching -------------------------------------------------------------------------------
    def lookup(self, x: torch.Tensor) -> torch.Tensor:
        """Occupancy bit of the cells holding points ``x [..., 3]`` (points outside the cube: False)."""
        r = self.resolution
        ijk = torch.floor(x * r).long()
        inside = ((ijk >= 0) & (ijk < r)).all(-1)
        ijk = ijk.clamp(0, r - 1)
        return self.binary[ijk[..., 0], ijk[..., 1], ijk[..., 2]] & inside

    def march(
        self,
        origins: torch.Tensor,
        dirs: torch.Tensor,
        *,
        step_size: float,
        near: float = 0.0,
        stratified: bool = False,
        alpha_fn: Callable[[PackedSamples], torch.Tensor] | None = None,
        early_stop_eps: float = 1e-4,
        alpha_thre: float = 0.0,
        use_nerfacc: bool | None = None,
    ) -> PackedSamples:
        """Sections of length ``step_size`` along unit-direction rays in ``[0,1]^3``, skipping empty cells.

        With ``alpha_fn`` (no grad), sections behind an opaque surface (transmittance below
        ``early_stop_eps``) and sections with opacity below ``alpha_thre`` are dropped too."""
        if use_nerfacc is None:
            use_nerfacc = origins.is_cuda and nerfacc_available()
        if use_nerfacc and origins.is_cuda:
            return self._march_nerfacc(origins, dirs, step_size, near, stratified, alpha_fn, early_stop_eps, alpha_thre)
        samples = self._march_torch(origins, dirs, step_size, near, stratified)
        if alpha_fn is not None and len(samples) > 0 and (early_stop_eps > 0 or alpha_thre > 0):
            with torch.no_grad():
                alphas = alpha_fn(samples)
                _, trans = weights_from_alpha(alphas, samples.ray_indices, samples.n_rays)
                keep = trans > early_stop_eps
                if alpha_thre > 0:
                    keep &= alphas >= min(alpha_thre, float(self.values.mean()))
            samples = samples.select(keep)
        return samples

    def _march_torch(self, origins, dirs, step_size, near, stratified) -> PackedSamples:
        n = origins.shape[0]
        t0, t1, hit = ray_box(origins, dirs, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), near)
        if not bool(hit.any()):
            empty = origins.new_zeros(0)
            return PackedSamples(empty.long(), empty, empty, n)
        span = float((t1 - t0)[hit].max())
        n_steps = max(1, int(math.ceil(span / step_size)))
        if stratified:
            t0 = t0 + torch.rand_like(t0) * step_size
        k = torch.arange(n_steps, device=origins.device, dtype=origins.dtype)
        starts = t0[:, None] + k[None, :] * step_size
        ends = starts + step_size
        mids = 0.5 * (starts + ends)
        valid = hit[:, None] & (ends <= t1[:, None])
        pts = origins[:, None, :] + mids[..., None] * dirs[:, None, :]
        valid &= self.lookup(pts)
        rays, steps = valid.nonzero(as_tuple=True)  # row-major: sorted by ray, then t
        return PackedSamples(rays, starts[rays, steps], ends[rays, steps], n)

    def _estimator_for(self, device):
        if self._estimator is None:
            import nerfacc

            est = nerfacc.OccGridEstimator(roi_aabb=[0.0, 0.0, 0.0, 1.0, 1.0, 1.0], resolution=self.resolution, levels=1)
            self._estimator = est.to(device)
        est = self._estimator
        est.binaries = self.binary[None]
        est.occs = self.values
        return est

    def _march_nerfacc(self, origins, dirs, step_size, near, stratified, alpha_fn, early_stop_eps, alpha_thre) -> PackedSamples:
        est = self._estimator_for(origins.device)
        n = origins.shape[0]
        fn = None
        if alpha_fn is not None:
            def fn(t_starts, t_ends, ray_indices):
                return alpha_fn(PackedSamples(ray_indices.long(), t_starts, t_ends, n))
        with torch.no_grad():
            ray_indices, t_starts, t_ends = est.sampling(
                origins.contiguous(), dirs.contiguous(), alpha_fn=fn, near_plane=near, render_step_size=step_size,
                stratified=stratified, early_stop_eps=early_stop_eps if fn is not None else 0.0, alpha_thre=alpha_thre,
            )
        return PackedSamples(ray_indices.long(), t_starts, t_ends, n)
