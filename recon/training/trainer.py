"""The training loop: small and readable; data, method, checkpoints, eval and hooks plug in.

One step: pick a view -> ``method.train_step`` (render, loss, backward, optimizer step, densification)
-> (periodic) checkpoint / evaluation. The representation-specific half lives in ``recon.methods``.
Everything the next step depends on (parameters, optimizer moments, method state, RNG, step) is in
the checkpoint, so a resumed run continues bit-for-bit where the killed one stopped (tested on the
CPU path).

Hooks (``Trainer.hooks``, e.g. the live viewer) see the run at its start, after every step, after
every evaluation and at the end. ``Trainer.lock`` is held while a step changes the scene, so another
thread may render it between steps; it is a :class:`~recon.training.fair_lock.FairLock`, so a thread
that asks for it mid-step gets it right after that step instead of competing with the loop's next
acquire. Setting ``Trainer.paused`` halts the loop between steps (paused time does not count as
training time).
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from recon.config import TrainConfig, dump_config_yaml
from recon.errors import InputError
from recon.eval.evaluate import describe_protocol, evaluate_views
from recon.training import run_folder
from recon.training.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from recon.training.fair_lock import FairLock
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


class TrainHook:
    """Something that watches (or steers) a run; every method is optional. Called on the training thread."""

    def on_start(self, trainer: "Trainer") -> None: ...
    def on_step(self, trainer: "Trainer", stats: dict[str, Any]) -> None: ...
    def on_eval(self, trainer: "Trainer", results: dict[str, Any]) -> None: ...
    def on_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None: ...


class Trainer:
    def __init__(self, cfg: TrainConfig, hooks: list[TrainHook] | None = None) -> None:
        from recon.methods import METHODS

        self.cfg = cfg
        self.device = cfg.resolved_device()
        self.steps = cfg.resolved_steps(self.device)
        if self.steps < 1:
            raise InputError(None, f"--steps must be >= 1 (got {self.steps})")
        if cfg.method not in METHODS:
            raise InputError(None, f"unknown --method {cfg.method!r} (known: {', '.join(METHODS)})")
        self.method_class = METHODS[cfg.method]
        self.eval_every = cfg.eval_every or max(1, self.steps // 5)
        self.run_dir = run_folder.resolve_run_dir(cfg)
        self.hooks: list[TrainHook] = list(hooks or [])
        self.lock = FairLock()  # FIFO: viewers asking between steps are not starved by the loop
        self.paused = threading.Event()
        self.last_stats: dict[str, Any] = {}
        self.last_eval: dict[str, Any] | None = None
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
        self.method = self.method_class(
            cfg, steps=self.steps, scene_scale=self.scene_scale, device=self.device, background=self.background
        )
        if resume_path is not None:
            self._resume(resume_path)
        else:
            torch.manual_seed(cfg.seed)
            self.scene = self.method.initial_scene(self.data)
            self.optimizers = self.method.make_optimizers(self.scene)
            self.state = self.method.initial_state(self.scene)
            self.step = 0
            self.best_psnr = -math.inf
            self.train_seconds = 0.0
            run_folder.create(self.run_dir, fresh=cfg.fresh)
        self.method.check(self.scene, self.optimizers)
        write_text_atomic(self.run_dir / "config.yml", dump_config_yaml(cfg))
        run_folder.write_cameras(self.run_dir, self.data.scene_data.cameras)  # viewers draw them without the data
        self.views_on_device = [self._to_device(v) for v in self.data.train_views]

    def _to_device(self, view):
        return replace(view, image=view.image.to(self.device), mask=None if view.mask is None else view.mask.to(self.device))

    def _resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location=self.device)
        method = ckpt.get("method", "gaussians")
        if method != self.cfg.method:
            raise InputError(path, f"this run was trained with --method {method}, not {self.cfg.method} (use --fresh to start over)")
        self.scene = self.method.load_scene(ckpt["scene"])
        self.optimizers = self.method.make_optimizers(self.scene)
        for name, opt in self.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][name])
        self.state = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in ckpt["method_state"].items()}
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
        return self.method.train_step(self.scene, self.optimizers, self.state, self.view_for_step(step), step)

    # --- evaluation and checkpoints -----------------------------------------------------------
    def render_view(self, view) -> torch.Tensor:
        return self.method.render(self.scene, view.camera)

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
            "method_state": {k: (v.detach().cpu() if torch.is_tensor(v) else v) for k, v in self.state.items()},
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

    def export(self) -> dict[str, Path]:
        return self.method.export(self.scene, self.run_dir)

    # --- the loop -----------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        last_ckpt_time = time.monotonic()
        results: dict[str, Any] | None = None
        for hook in self.hooks:
            hook.on_start(self)
        with TrainProgress(total=self.steps, start=self.step, enabled=cfg.progress, device=self.device) as bar:
            while self.step < self.steps:
                while self.paused.is_set():  # a viewer paused the run; paused time is not training time
                    time.sleep(0.05)
                t0 = time.perf_counter()
                with self.lock:
                    stats = self.train_step(self.step)
                    self.train_seconds += time.perf_counter() - t0
                    self.step += 1
                self.last_stats = stats
                for hook in self.hooks:
                    hook.on_step(self, stats)
                bar.update(self.step, n=self.scene.num_primitives, psnr=stats["psnr"])
                is_last = self.step == self.steps
                if self.step % self.eval_every == 0 or is_last:
                    with self.lock:
                        results = self.evaluate()
                    improved = results is not None and results["psnr"] > self.best_psnr
                    if improved:
                        self.best_psnr = results["psnr"]
                    if results is not None:
                        self.last_eval = results
                        bar.log(f"step {self.step}: held-out PSNR {results['psnr']:.2f} dB, SSIM {results['ssim']:.4f}")
                        for hook in self.hooks:
                            hook.on_eval(self, results)
                    self.save(best=improved or results is None)
                    last_ckpt_time = time.monotonic()
                elif self.step % cfg.checkpoint_every == 0 or time.monotonic() - last_ckpt_time > cfg.checkpoint_seconds:
                    self.save()
                    last_ckpt_time = time.monotonic()
        if results is None and self.data.test_views:
            results = self.evaluate()
        exports = self.export()
        summary = {
            "run_dir": str(self.run_dir),
            "method": cfg.method,
            "steps": self.steps,
            "num_primitives": self.scene.num_primitives,
            "train_seconds": round(self.train_seconds, 2),
            "exports": {kind: str(path) for kind, path in exports.items()},
            "eval": None if results is None else {k: results[k] for k in ("psnr", "ssim", "lpips")},
        }
        write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        for hook in self.hooks:
            hook.on_end(self, summary)
        return summary
