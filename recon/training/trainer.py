"""The training loop: small and readable; data, scene, strategy, checkpoints and eval plug in.

One step: pick a view -> render -> photometric loss -> backward -> optimizer step -> densification
-> (periodic) checkpoint / evaluation. Everything the next step depends on (parameters, optimizer
moments, densification statistics, RNG, step) is in the checkpoint, so a resumed run continues
bit-for-bit where the killed one stopped (tested on the CPU path).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from recon.config import TrainConfig, dump_config_yaml
from recon.errors import InputError
from recon.eval.evaluate import describe_protocol, evaluate_views
from recon.eval.metrics import psnr
from recon.training import run_folder
from recon.training.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from recon.training.losses import photometric_loss
from recon.training.progress import TrainProgress
from recon.utils.atomic import atomic_path, write_text_atomic


@dataclass
class PreparedData:
    """Everything loaded and validated before a run folder is touched."""

    scene_data: Any  # recon.datasets.scene.SceneData
    train_views: list
    test_views: list
    downscale: int
    background: tuple[float, float, float]


def choose_downscale(cfg: TrainConfig, cameras: list, device: str) -> int:
    if cfg.downscale is not None:
        if cfg.downscale < 1:
            raise InputError(None, f"--downscale must be >= 1 (got {cfg.downscale})")
        return cfg.downscale
    target = 1600 if device == "cuda" else 320
    long_side = max(max(c.width, c.height) for c in cameras)
    factor = 1
    while long_side / factor > target:
        factor *= 2
    return factor


def prepare_data(cfg: TrainConfig, device: str, *, need_train_views: bool = True) -> PreparedData:
    """Load and validate the scene and all images (bad input fails here, before any output exists).

    ``need_train_views=False`` (evaluation) skips decoding the training images unless there is no
    held-out split to evaluate on."""
    from recon.datasets.images import load_views
    from recon.datasets.loader import load_scene

    scene_data = load_scene(cfg.data)
    if len(scene_data.cameras) < 2:
        raise InputError(scene_data.root, f"need at least 2 posed views to train, found {len(scene_data.cameras)}")
    downscale = choose_downscale(cfg, scene_data.cameras, device)
    train_idx, test_idx = scene_data.split(cfg.holdout_every)
    test_views = load_views(scene_data, test_idx, downscale, progress=cfg.progress)
    need_train_views = need_train_views or not test_views
    train_views = load_views(scene_data, train_idx, downscale, progress=cfg.progress) if need_train_views else []
    if cfg.background is not None:
        background = tuple(float(x) for x in cfg.background)
    else:
        background = tuple(scene_data.extras.get("demo", {}).get("background", (0.0, 0.0, 0.0)))
    return PreparedData(scene_data, train_views, test_views, downscale, background)  # type: ignore[arg-type]


def initial_scene(cfg: TrainConfig, data: PreparedData, device: str):
    """Build the initial representation: from SfM points when available, else random in the bounds."""
    from recon.scenes.gaussians import GaussianScene

    sd = data.scene_data
    points, colors = sd.points, sd.point_colors
    if cfg.init in ("auto", "points") and (points is None or len(points) == 0) and sd.source != "demo":
        from recon.datasets.sfm import triangulate_known_poses

        # 1000 px keeps SIFT + matching to minutes on a CPU; the GPU default matches 3DGS's 1600.
        points, colors = triangulate_known_poses(
            sd, max_image_size=1600 if device == "cuda" else 1000, progress=cfg.progress
        )
    if cfg.init == "points" and (points is None or len(points) == 0):
        raise InputError(sd.root, "--init points was asked for, but the scene has no SfM points")
    if cfg.init != "random" and points is not None and len(points) > 0:
        scene = GaussianScene.from_points(
            points, colors, sh_degree=cfg.sh_degree, init_opacity=cfg.init_opacity
        )
    else:
        bounds = sd.extras.get("demo", {}).get("bounds")
        if bounds is None:  # a box around what the cameras look at
            centers = sd.camera_centers()
            mid = centers.mean(0)
            r = sd.scene_scale()
            bounds = [(mid - r).tolist(), (mid + r).tolist()]
        scene = GaussianScene.random_in_bounds(
            bounds[0], bounds[1], cfg.random_init_points, seed=cfg.seed,
            sh_degree=cfg.sh_degree, init_opacity=cfg.init_opacity,
        )
    return scene.to(device)


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.device = cfg.resolved_device()
        self.steps = cfg.resolved_steps(self.device)
        if self.steps < 1:
            raise InputError(None, f"--steps must be >= 1 (got {self.steps})")
        # Compress the 3DGS schedules for short runs (see recon.config).
        self.strategy = cfg.resolved_strategy(self.steps)
        self.sh_interval = cfg.resolved_sh_interval(self.steps)
        self.eval_every = cfg.eval_every or max(1, self.steps // 5)
        self.run_dir = run_folder.resolve_run_dir(cfg)
        self._lpips = None

    # --- setup --------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        if self.device == "cpu":
            # Multi-threaded CPU backward of indexing (index_put_ with accumulate) sums in a varying
            # order; deterministic mode makes a run, and a resumed run, bit-for-bit reproducible.
            torch.use_deterministic_algorithms(True, warn_only=True)
        resume_path = run_folder.checkpoint_to_resume(self.run_dir, cfg)  # validates before loading data
        self.data = prepare_data(cfg, self.device)
        self.background = torch.tensor(self.data.background, dtype=torch.float32, device=self.device)
        self.scene_scale = self.data.scene_data.scene_scale()
        self.optim = replace(cfg.optim, scene_scale=cfg.optim.scene_scale * self.scene_scale)
        if resume_path is not None:
            self._resume(resume_path)
        else:
            torch.manual_seed(cfg.seed)
            self.scene = initial_scene(cfg, self.data, self.device)
            self.optimizers = self.scene.make_optimizers(self.optim)
            self.strategy_state = self.strategy.initialize_state(
                scene_scale=self.scene_scale, num_primitives=self.scene.num_primitives, device=self.device
            )
            self.step = 0
            self.best_psnr = -math.inf
            self.train_seconds = 0.0
            run_folder.create(self.run_dir, fresh=cfg.fresh)
        self.strategy.check_sanity(self.scene.params, self.optimizers)
        write_text_atomic(self.run_dir / "config.yml", dump_config_yaml(cfg))
        self.views_on_device = [self._to_device(v) for v in self.data.train_views]

    def _to_device(self, view):
        return replace(view, image=view.image.to(self.device), mask=None if view.mask is None else view.mask.to(self.device))

    def _resume(self, path: Path) -> None:
        from recon.scenes import SCENES

        ckpt = load_checkpoint(path, map_location=self.device)
        self.scene = SCENES[self.cfg.method].from_state_dict(ckpt["scene"]).to(self.device)
        self.optimizers = self.scene.make_optimizers(self.optim)
        for name, opt in self.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][name])
        self.strategy_state = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in ckpt["strategy_state"].items()}
        self.step = int(ckpt["step"])
        self.best_psnr = float(ckpt.get("best_psnr", -math.inf))
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))
        restore_rng_state(ckpt["rng"])

    # --- one step -----------------------------------------------------------------------------
    def view_for_step(self, step: int):
        """A fixed function of (seed, step): a fresh permutation of the training views per epoch."""
        n = len(self.views_on_device)
        epoch, pos = divmod(step, n)
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return self.views_on_device[int(torch.randperm(n, generator=g)[pos])]

    def train_step(self, step: int) -> dict[str, Any]:
        cfg = self.cfg
        view = self.view_for_step(step)
        sh_degree = min(cfg.sh_degree, step // self.sh_interval)
        self.optim.apply_schedule(self.optimizers, step, self.steps)
        out = self.scene.render(
            view.camera, background=self.background, sh_degree=sh_degree, settings=cfg.raster, backend=cfg.backend
        )
        info = out.meta  # the scene's render adds width, height and n_cameras for the strategy
        self.strategy.step_pre_backward(self.scene.params, self.optimizers, self.strategy_state, step, info)
        loss, parts = photometric_loss(out.image, view.image, view.mask, cfg.ssim_lambda)
        loss.backward()
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.strategy.step_post_backward(self.scene.params, self.optimizers, self.strategy_state, step, info)
        with torch.no_grad():
            p = psnr(out.image.detach(), view.image, view.mask)
        return {"loss": float(loss.detach()), "psnr": float(p), "l1": float(parts["l1"])}

    # --- evaluation and checkpoints -----------------------------------------------------------
    def render_view(self, view) -> torch.Tensor:
        out = self.scene.render(
            view.camera, background=self.background, sh_degree=self.cfg.sh_degree, settings=self.cfg.raster,
            backend=self.cfg.backend,
        )
        return out.image

    def evaluate(self) -> dict[str, Any] | None:
        views = self.data.test_views
        if not views:
            return None
        if self._lpips is None:  # built once per run: loading the network is not free
            from recon.eval.metrics import Lpips

            self._lpips = Lpips(device=self.device)
        lpips = self._lpips
        protocol = describe_protocol(
            views, holdout_every=self.cfg.holdout_every, downscale=self.data.downscale,
            background=self.data.background, lpips=lpips,
        )
        extra = {
            "method": self.cfg.method,
            "data": self.cfg.data,
            "step": self.step,
            "num_primitives": self.scene.num_primitives,
            "train_seconds": round(self.train_seconds, 2),
            "device": self.device,
        }
        return evaluate_views(
            lambda v: self.render_view(self._to_device(v)), views, out_dir=self.run_dir / "eval", protocol=protocol,
            extra=extra, lpips=lpips, save_renders=self.cfg.save_eval_renders,
        )

    def checkpoint_payload(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "scene": self.scene.state_dict(),
            "method": self.cfg.method,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "strategy_state": {k: (v.detach().cpu() if torch.is_tensor(v) else v) for k, v in self.strategy_state.items()},
            "rng": rng_state(),
            "best_psnr": self.best_psnr,
            "train_seconds": self.train_seconds,
            "config": dump_config_yaml(self.cfg),
        }

    def save(self, best: bool = False) -> None:
        ckpt_dir = self.run_dir / "checkpoints"
        save_checkpoint(ckpt_dir / "latest.pt", self.checkpoint_payload())
        if best:
            with atomic_path(ckpt_dir / "best.pt") as tmp:
                shutil.copyfile(ckpt_dir / "latest.pt", tmp)

    def export(self) -> Path:
        path = self.run_dir / "export" / "point_cloud.ply"
        self.scene.export(path)
        return path

    # --- the loop -----------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        last_ckpt_time = time.monotonic()
        results: dict[str, Any] | None = None
        with TrainProgress(total=self.steps, start=self.step, enabled=cfg.progress, device=self.device) as bar:
            while self.step < self.steps:
                t0 = time.perf_counter()
                stats = self.train_step(self.step)
                self.train_seconds += time.perf_counter() - t0
                self.step += 1
                bar.update(self.step, n=self.scene.num_primitives, psnr=stats["psnr"])
                is_last = self.step == self.steps
                if self.step % self.eval_every == 0 or is_last:
                    results = self.evaluate()
                    improved = results is not None and results["psnr"] > self.best_psnr
                    if improved:
                        self.best_psnr = results["psnr"]
                    if results is not None:
                        bar.log(f"step {self.step}: held-out PSNR {results['psnr']:.2f} dB, SSIM {results['ssim']:.4f}")
                    self.save(best=improved or results is None)
                    last_ckpt_time = time.monotonic()
                elif self.step % cfg.checkpoint_every == 0 or time.monotonic() - last_ckpt_time > cfg.checkpoint_seconds:
                    self.save()
                    last_ckpt_time = time.monotonic()
        if results is None and self.data.test_views:
            results = self.evaluate()
        ply = self.export()
        summary = {
            "run_dir": str(self.run_dir),
            "steps": self.steps,
            "num_primitives": self.scene.num_primitives,
            "train_seconds": round(self.train_seconds, 2),
            "ply": str(ply),
            "eval": None if results is None else {k: results[k] for k in ("psnr", "ssim", "lpips")},
        }
        write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary
