"""The ``surface`` section of ``recon-train`` (typed, tyro): NeuS on a hash grid.

Fields left at ``None`` resolve per device (:meth:`SurfaceConfig.resolved`): a GPU gets NeuS2-sized
grids and batches, the CPU (tests, CI, laptops) small ones that train in seconds per hundred steps."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal


@dataclass
class SurfaceConfig:
    """NeuS-style neural surface on a multiresolution hash grid (``--method surface``)."""

    rays_per_step: int | None = None
    """Rays sampled from the step's view (default 4096 on a GPU, 128 on a CPU)."""
    samples_per_ray: int | None = None
    """Marching step = box diagonal / this (default 512 on a GPU, 48 on a CPU); empty cells are skipped."""
    grid_levels: int | None = None
    """Hash-grid levels L (default 16 GPU / 6 CPU)."""
    grid_features: int = 2
    grid_log2_table: int | None = None
    """log2 of the per-level table size (default 19 GPU / 12 CPU)."""
    grid_base_resolution: int = 16
    grid_finest_resolution: int | None = None
    """Finest level resolution over the box (default 2048 GPU / 64 CPU)."""
    sdf_hidden: int = 64
    sdf_layers: int = 1
    feature_dim: int = 15
    color_hidden: int = 64
    color_layers: int = 2
    init_radius: float = 0.25
    """Radius of the initial sphere, as a fraction of the box edge."""
    lr: float = 1e-2
    """Adam learning rate of the hash table and the MLPs (eps 1e-15, betas 0.9/0.99 as instant-ngp)."""
    lr_variance: float = 5e-3
    """Learning rate of NeuS' variance parameter v (s = exp(10 v))."""
    weight_decay: float = 1e-6
    """L2 on MLP weights only (never on the hash table)."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up (at most a tenth of the run); afterwards exponential decay to
    ``lr_final_factor`` at the end."""
    lr_final_factor: float = 0.1
    eikonal_weight: float = 0.1
    mask_weight: float = 0.1
    """Weight of the mask BCE on accumulated opacity (object masks only)."""
    level_start_fraction: float = 0.25
    """Coarse-to-fine: fraction of hash levels active at step 0 ..."""
    level_full_fraction: float = 0.1
    """... all active after this fraction of the run (at most 1000 steps), linearly in between."""
    cos_anneal_fraction: float = 0.05
    """NeuS' cosine annealing (soft -> true ray/normal cosine) over this fraction of the run."""
    occupancy_resolution: int | None = None
    """Occupancy grid cells per axis (default 128 GPU / 32 CPU)."""
    occupancy_every: int = 16
    occupancy_warmup_steps: int = 256
    """Until this step every cell is re-evaluated at each update; afterwards a random half."""
    occupancy_threshold: float = 0.01
    background: Literal["auto", "mlp", "color"] = "auto"
    """'mlp': learn what rays see past the box (unmasked captures); 'color': the run's background
    colour; 'auto': 'color' for object masks or a dataset with a stated background, else 'mlp'."""
    masks: Literal["auto", "object", "ignore"] = "auto"
    """'object': masks are object silhouettes (mask BCE + colour inside); 'ignore': masked pixels are
    only left out; 'auto': 'object' when the dataset has mask files or alpha channels."""
    aabb: tuple[float, float, float, float, float, float] | None = None
    """World box xmin ymin zmin xmax ymax zmax (default: dataset bounds, SfM points, or the cameras)."""
    mesh_resolution: int | None = None
    """Marching grid cells per axis at export (default 512 GPU / 64 CPU)."""
    mesh_faces: int = 200_000
    """Decimate the exported mesh to about this many faces (0 = keep all)."""

    def resolved(self, device: str) -> "SurfaceConfig":
        gpu = device == "cuda"
        defaults = {
            "rays_per_step": 4096 if gpu else 128,
            "samples_per_ray": 512 if gpu else 48,
            "grid_levels": 16 if gpu else 6,
            "grid_log2_table": 19 if gpu else 12,
            "grid_finest_resolution": 2048 if gpu else 64,
            "occupancy_resolution": 128 if gpu else 32,
            "mesh_resolution": 512 if gpu else 64,
        }
        return dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})
