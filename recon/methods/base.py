"""A method is one scene representation end to end, as the trainer sees it.

The trainer (``recon.training.trainer``) owns the loop, checkpoints, evaluation, progress and hooks;
a :class:`Method` owns everything specific to a representation: how the initial scene is built, its
optimizers, its densification state, what one training step does, how a view is rendered for
evaluation and viewers, and what is exported at the end. Adding a representation = a scene class
(``recon.scenes``) + a Method subclass registered in ``recon.methods.METHODS``.

:class:`SplatMethod` is the common case: rasterized primitives trained with the photometric loss,
SH degree raised on a schedule, and a densification strategy with gsplat's pre/post-backward hooks.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import dataclasses

import torch
import torch.nn.functional as F

from recon.eval.metrics import psnr
from recon.scenes.base import SceneModel
from recon.training.losses import photometric_loss

if TYPE_CHECKING:  # pragma: no cover
    from recon.config import TrainConfig
    from recon.training.trainer import PreparedData


def render_supersampled(render: Any, camera: Any, factor: int) -> Any:
    """``render(camera)`` at ``factor`` times the resolution, area-averaged back to the camera's size
    (supersampling anti-aliasing). Image, alpha and depth are averaged; ``meta`` stays that of the large
    render (its per-primitive screen extents are in the large render's pixels)."""
    if factor <= 1:
        return render(camera)
    out = render(camera.scaled(1.0 / factor))

    def down(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        return F.avg_pool2d(t.permute(2, 0, 1)[None], factor)[0].permute(1, 2, 0)

    return dataclasses.replace(out, image=down(out.image), alpha=down(out.alpha), depth=down(out.depth))


class Method(abc.ABC):
    """The representation-specific half of training. One instance per run."""

    #: The name ``recon-train --method`` takes and checkpoints record.
    name: ClassVar[str]
    #: The scene class its checkpoints hold (``scene_class.from_state_dict`` loads them).
    scene_class: ClassVar[type[SceneModel]]

    def __init__(self, cfg: "TrainConfig", *, steps: int, scene_scale: float, device: str, background: torch.Tensor) -> None:
        self.cfg = cfg
        self.steps = steps
        self.scene_scale = scene_scale
        self.device = device
        self.background = background

    # --- building -------------------------------------------------------------------------------
    @abc.abstractmethod
    def initial_scene(self, data: "PreparedData") -> SceneModel:
        """A fresh scene on ``self.device`` (from SfM points, random, or whatever suits the method)."""

    def load_scene(self, state: dict[str, Any]) -> SceneModel:
        """A scene from a checkpoint's ``scene`` entry, on ``self.device``."""
        return self.scene_class.from_state_dict(state).to(self.device)

    @abc.abstractmethod
    def make_optimizers(self, scene: SceneModel) -> dict[str, torch.optim.Optimizer]:
        """Optimizers by name; their ``state_dict`` goes into checkpoints."""

    def initial_state(self, scene: SceneModel) -> dict[str, Any]:
        """Running state besides parameters and optimizers (densification statistics, ...): tensors and
        plain values only, saved in checkpoints and handed back to :meth:`train_step`."""
        return {}

    def check(self, scene: SceneModel, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """Raise ``ValueError`` when scene and optimizers do not fit together (after build or resume)."""

    # --- training -------------------------------------------------------------------------------
    @abc.abstractmethod
    def train_step(
        self, scene: SceneModel, optimizers: dict[str, torch.optim.Optimizer], state: dict[str, Any], view: Any, step: int
    ) -> dict[str, float]:
        """One optimisation step on ``view`` (a :class:`recon.datasets.images.View` on the device):
        forward, loss, backward, optimizer steps, densification. Returns at least ``loss`` and
        ``psnr`` (of what the step rendered) as floats."""

    # --- rendering and export -------------------------------------------------------------------
    @abc.abstractmethod
    def render(self, scene: SceneModel, camera: Any) -> torch.Tensor:
        """The image [H, W, 3] of ``camera`` as evaluation and viewers see it (no grad needed)."""

    def export(self, scene: SceneModel, run_dir: Path) -> dict[str, Path]:
        """Files written at the end of training, by kind (e.g. ``{"ply": ...}``)."""
        path = run_dir / "export" / "point_cloud.ply"
        scene.export(path)
        return {"ply": path}


class SplatMethod(Method):
    """Rasterized primitives: photometric loss, SH schedule, a densification strategy.

    Subclasses set ``scene_class``, implement :meth:`initial_scene`, :meth:`make_optimizers` and
    :meth:`strategy`, and may add :meth:`regularization` terms or per-step :meth:`schedule` changes."""

    def __init__(self, cfg: "TrainConfig", *, steps: int, scene_scale: float, device: str, background: torch.Tensor) -> None:
        super().__init__(cfg, steps=steps, scene_scale=scene_scale, device=device, background=background)
        self.sh_interval = cfg.resolved_sh_interval(steps)

    @property
    @abc.abstractmethod
    def strategy(self) -> Any:
        """The densification strategy (``recon.strategy.base.Strategy`` interface)."""

    def initial_state(self, scene: SceneModel) -> dict[str, Any]:
        return self.strategy.initialize_state(
            scene_scale=self.scene_scale, num_primitives=scene.num_primitives, device=self.device
        )

    def check(self, scene: SceneModel, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.strategy.check_sanity(scene.params, optimizers)

    def sh_degree_at(self, step: int) -> int:
        return min(self.cfg.sh_degree, step // self.sh_interval)

    def schedule(self, scene: SceneModel, optimizers: dict[str, torch.optim.Optimizer], step: int) -> None:
        """Per-step changes before the forward pass (learning rates, annealed constants, ...)."""

    def regularization(self, scene: SceneModel, out: Any, step: int) -> dict[str, torch.Tensor]:
        """Extra loss terms by name (already weighted); added to the photometric loss."""
        return {}

    def render_train(self, scene: SceneModel, view: Any, step: int):
        cfg = self.cfg
        return scene.render(
            view.camera, background=self.background, sh_degree=self.sh_degree_at(step), settings=cfg.raster,
            backend=cfg.backend,
        )

    def train_step(self, scene, optimizers, state, view, step):
        self.schedule(scene, optimizers, step)
        out = self.render_train(scene, view, step)
        info = out.meta  # the scene's render adds width, height and n_cameras for the strategy
        self.strategy.step_pre_backward(scene.params, optimizers, state, step, info)
        loss, parts = photometric_loss(out.image, view.image, view.mask, self.cfg.ssim_lambda)
        extra = self.regularization(scene, out, step)
        for term in extra.values():
            loss = loss + term
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.strategy.step_post_backward(scene.params, optimizers, state, step, info)
        with torch.no_grad():
            p = psnr(out.image.detach(), view.image, view.mask)
        stats = {"loss": float(loss.detach()), "psnr": float(p), "l1": float(parts["l1"])}
        stats.update({name: float(t.detach()) for name, t in extra.items()})
        return stats

    def render(self, scene, camera):
        cfg = self.cfg
        return scene.render(camera, background=self.background, sh_degree=cfg.sh_degree, settings=cfg.raster, backend=cfg.backend).image
