"""``recon-train --viewer``: a :class:`TrainHook` that shows the run live in the browser.

The server starts when training starts. Frames are rendered through the run's own Method under
``trainer.lock`` (so a frame never sees a half-applied optimizer step); every step marks the scene
changed; stats (step, PSNR, held-out PSNR, primitive count, time) update a few times a second; the
GUI's pause button sets ``trainer.paused``, which halts the loop between steps.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

from recon.training.trainer import TrainHook
from recon.viewers.live import THUMBNAIL_SIZE, LiveViewer, announce_line
from recon.viewers.sources import MethodRenderer, ViewTarget

STATS_INTERVAL_SECONDS = 0.25


def thumbnail(image: torch.Tensor, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """A small uint8 copy of a view's image [H, W, 3] (nearest pixel, longest side ``size``)."""
    h, w = int(image.shape[0]), int(image.shape[1])
    step = max(1, int(np.ceil(max(h, w) / size)))
    small = image[::step, ::step, :3].detach().clamp(0, 1).mul(255).round().to(torch.uint8)
    return np.ascontiguousarray(small.cpu().numpy())


def training_target(trainer: Any) -> ViewTarget:
    """A :class:`ViewTarget` over a set-up :class:`recon.training.trainer.Trainer`'s live scene."""
    cfg = trainer.cfg
    views = trainer.data.train_views
    demo = trainer.data.scene_data.extras.get("demo", {})
    return ViewTarget(
        label=f"{cfg.method} on {cfg.data}",
        render=MethodRenderer(trainer.method, lambda: trainer.scene),
        background=tuple(float(x) for x in trainer.data.background),  # type: ignore[arg-type]
        max_sh_degree=getattr(trainer.scene, "sh_degree", None),
        cameras=[v.camera for v in views],
        thumbnails=[thumbnail(v.image) for v in views],
        dynamic=any(v.camera.time is not None for v in views),
        lock=trainer.lock,
        info={"run folder": str(trainer.run_dir), "device": trainer.device},
        num_primitives=lambda: trainer.scene.num_primitives,
        focus=None if demo.get("look_at") is None else np.asarray(demo["look_at"], dtype=np.float64),
    )


class ViewerHook(TrainHook):
    """Starts a :class:`LiveViewer` on the trainer at ``on_start``; ``close()`` stops it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, *, print_line: Callable[[str], None] = print,
                 max_size: int | None = None) -> None:
        self.host = host
        self.requested_port = port
        self.print_line = print_line
        self.max_size = max_size
        self.viewer: LiveViewer | None = None
        self.trainer: Any = None
        self.finished = False
        self._last_stats_time = 0.0

    # --- TrainHook --------------------------------------------------------------------------------
    def on_start(self, trainer: Any) -> None:
        self.trainer = trainer
        if self.viewer is None:
            self.viewer = LiveViewer(
                training_target(trainer), host=self.host, port=self.requested_port, device=trainer.device,
                max_size=self.max_size, log=self.print_line,
            )
            self.viewer.add_training_controls(self.set_paused)
            self.print_line(announce_line(self.host, self.viewer.port, prefix="recon-train viewer"))
        self.update_stats(force=True)

    def on_step(self, trainer: Any, stats: dict[str, Any]) -> None:
        assert self.viewer is not None
        self.viewer.scene_changed()
        self.update_stats()

    def on_eval(self, trainer: Any, results: dict[str, Any]) -> None:
        self.update_stats(force=True)

    def on_end(self, trainer: Any, summary: dict[str, Any]) -> None:
        self.finished = True
        trainer.paused.clear()
        if self.viewer is not None:
            self.viewer.set_training_finished()
            self.viewer.scene_changed()
        self.update_stats(force=True)

    # --- controls ---------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self.viewer is not None, "the viewer starts with training (on_start)"
        return self.viewer.port

    @property
    def url(self) -> str:
        assert self.viewer is not None, "the viewer starts with training (on_start)"
        return self.viewer.url

    def set_paused(self, paused: bool) -> None:
        """Pause (or resume) training between steps; what the GUI button does."""
        if self.trainer is None or self.finished:
            return
        if paused:
            self.trainer.paused.set()
        else:
            self.trainer.paused.clear()
        if self.viewer is not None:
            self.viewer.set_paused_label(paused)
        self.update_stats(force=True)

    def stats_markdown(self) -> str:
        t = self.trainer
        status = "finished" if self.finished else ("paused" if t.paused.is_set() else "training")
        lines = [f"**step {t.step:,} / {t.steps:,}** ({status})"]
        if t.last_stats:
            lines.append(f"train PSNR: {t.last_stats['psnr']:.2f} dB")
        if t.last_eval:
            lines.append(f"held-out PSNR: {t.last_eval['psnr']:.2f} dB (step {t.last_eval.get('step', '?')})")
        lines.append(f"primitives: {t.scene.num_primitives:,}")
        lines.append(f"training time: {t.train_seconds:.1f} s")
        return "  \n".join(lines)

    def update_stats(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.viewer is None or (not force and now - self._last_stats_time < STATS_INTERVAL_SECONDS):
            return
        self._last_stats_time = now
        self.viewer.set_stats(self.stats_markdown())
        self.viewer.refresh_info()

    def close(self) -> None:
        if self.viewer is not None:
            self.viewer.stop()
            self.viewer = None
