"""Typed configuration for training (tyro dataclasses), saved as ``config.yml`` in every run folder."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from recon.rasterizers.types import RasterSettings
from recon.scenes.gaussians import GaussianOptimConfig
from recon.strategy.default import DefaultStrategy
from recon.surfaces.config import SurfaceConfig
from recon.methods.convexes import ConvexConfig
from recon.methods.triangles import OpaqueTriangleConfig, TriangleConfig

# The 3DGS schedules (densify from 500 to 15k, opacity reset every 3k, SH band every 1k) were tuned
# for runs of 7k-30k steps. Shorter runs (CPU, demo, tests) compress them by steps / 7000.
SCHEDULE_REFERENCE_STEPS = 7000
# Floors for compressed schedules: densifying from the first steps, or every few steps, multiplies the
# count before the optimiser has settled anything (seen: 5k -> 54k Gaussians in 100 demo steps).
SHORT_RUN_FLOORS = {"refine_start": 100, "refine_every": 25, "reset_every": 200}


@dataclass
class TrainConfig:
    """Train a scene representation on captured photos (or the built-in demo scene)."""

    data: str = "demo"
    """Photos folder, video, transforms.json, COLMAP model, LLFF folder, or 'demo' for the built-in scene."""
    output: Path | None = None
    """Run folder. Default: outputs/<scene name>. Re-running the same command resumes from it."""
    method: Literal["gaussians", "surface", "convexes", "triangles", "opaque-triangles"] = "gaussians"
    """Scene representation (recon.methods.METHODS). The Gaussians' optimiser and densification are the
    `optim` and `strategy` sections below; every other method has a section named after it."""
    steps: int | None = None
    """Training steps. Default: 30000 on a GPU; on a CPU 500 for the demo (a few minutes on 2 cores)
    and 300 otherwise."""
    downscale: int | None = None
    """Image downscale factor (1, 2, 4, 8, ...). Default: the smallest power of two that brings the
    long side to at most 1600 px on a GPU, 320 px on a CPU."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fresh: bool = False
    """Start over even if the run folder has a checkpoint (the old checkpoints are replaced)."""
    seed: int = 0
    holdout_every: int = 8
    """Hold out every N-th view (sorted by name, starting with the first) for evaluation; 0 = none."""
    eval_every: int | None = None
    """Evaluate on the held-out views every N steps (default: 5 times per run) and at the end."""
    checkpoint_every: int = 500
    """Write a full checkpoint every N steps ..."""
    checkpoint_seconds: float = 300.0
    """... or every this many seconds, whichever comes first (a kill loses at most this much)."""
    ssim_lambda: float = 0.2
    sh_degree: int = 3
    sh_degree_interval: int = 1000
    """Raise the active SH degree by one every N steps (compressed for short runs)."""
    background: tuple[float, float, float] | None = None
    """Background colour; default: the dataset's (demo) or black."""
    init: Literal["auto", "points", "random"] = "auto"
    """Initial Gaussians: SfM points when there are any (triangulated with the known poses if needed),
    else random in the scene bounds."""
    random_init_points: int = 20_000
    init_opacity: float = 0.1
    backend: Literal["auto", "reference", "cuda"] = "auto"
    """Rasterizer: 'auto' uses the CUDA core when the device is a GPU, the PyTorch reference otherwise."""
    optim: GaussianOptimConfig = field(default_factory=GaussianOptimConfig)
    strategy: DefaultStrategy = field(default_factory=DefaultStrategy)
    raster: RasterSettings = field(default_factory=RasterSettings)
    surface: SurfaceConfig = field(default_factory=SurfaceConfig)
    """NeuS-style neural surface on a hash grid (--method surface)."""
    convexes: ConvexConfig = field(default_factory=ConvexConfig)
    """3D smooth convexes (--method convexes)."""
    triangles: TriangleConfig = field(default_factory=TriangleConfig)
    """Triangle Splatting, a soup of triangle splats (--method triangles)."""
    opaque_triangles: OpaqueTriangleConfig = field(default_factory=OpaqueTriangleConfig)
    """Opaque, connected triangles that train into a mesh, as Triangle Splatting+ (--method opaque-triangles)."""
    compress_schedules: bool = True
    """For runs shorter than 7000 steps, compress the densification and SH schedules by steps / 7000
    (with floors); off = use the strategy's step numbers exactly as given."""
    progress: bool = True
    """Show a live progress bar (disable for logs)."""
    save_eval_renders: bool = True
    viewer: bool = False
    """Watch training live in the browser (viser); the viewer stays up after training until Ctrl-C."""
    viewer_port: int = 8080
    """Viewer port (the next free one is used when it is taken; the printed URL is the real one)."""
    viewer_host: str = "127.0.0.1"
    """Viewer address. The default keeps it on this machine (reach it from elsewhere with ssh -L);
    0.0.0.0 lets anyone on the network connect."""

    # --- resolution of defaults -----------------------------------------------------------------
    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            from recon.errors import InputError

            raise InputError(None, "--device cuda was asked for, but torch sees no CUDA device (run recon-doctor)")
        return self.device

    def resolved_steps(self, device: str) -> int:
        if self.steps is not None:
            return self.steps
        if device == "cuda":
            return 30_000
        return 500 if self.data == "demo" else 300

    def schedule_scale(self, steps: int) -> float:
        if not self.compress_schedules:
            return 1.0
        return min(1.0, steps / SCHEDULE_REFERENCE_STEPS)

    def resolved_sh_interval(self, steps: int) -> int:
        return max(1, int(round(self.sh_degree_interval * self.schedule_scale(steps))))

    def resolved_strategy(self, steps: int) -> DefaultStrategy:
        k = self.schedule_scale(steps)
        if k >= 1.0:
            return self.strategy
        scaled = self.strategy.scaled(k)
        return dataclasses.replace(
            scaled, **{name: max(getattr(scaled, name), floor) for name, floor in SHORT_RUN_FLOORS.items()}
        )


def config_to_dict(cfg: Any) -> dict:
    """Dataclass -> plain dict with YAML-friendly values (paths as strings, tuples as lists)."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        return v

    return convert(cfg)


def dump_config_yaml(cfg: Any) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def train_config_from_dict(d: dict) -> TrainConfig:
    """Inverse of :func:`config_to_dict` for :class:`TrainConfig` (unknown keys are rejected).

    YAML gives lists where the config has tuples (background, Adam betas) and strings for paths."""

    def build(cls: type, values: dict) -> Any:
        names = {f.name for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)  # nested sections are the fields typed as dataclasses
        kwargs = {}
        for key, value in values.items():
            if key not in names:
                raise ValueError(f"unknown config key {key!r} for {cls.__name__}")
            if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
                value = build(hints[key], value)
            elif isinstance(value, list):
                value = tuple(value)
            elif key == "output" and value is not None:
                value = Path(value)
            kwargs[key] = value
        return cls(**kwargs)

    return build(TrainConfig, d)
