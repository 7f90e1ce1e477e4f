"""What every scene representation provides to the trainer, the exporters and the viewers.

A representation owns a flat dict of named leaf parameters (``params``). Densification strategies
(``recon.strategy``) replace entries of that same dict object in place (new ``nn.Parameter`` with a
different first dimension), so code that needs a parameter reads ``scene.params[name]`` each time and
never caches the tensor. Optimizers follow the gsplat pattern: one optimizer per parameter name,
``dict[str, torch.optim.Optimizer]``, each with exactly one param group holding ``params[name]``.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch

from recon.rasterizers.types import RasterSettings, RenderOutput


class ScheduledAdamConfig:
    """Mixin for a per-parameter Adam config dataclass with fields ``<name>_lr`` for every parameter,
    ``<SCHEDULED>_lr_final``, ``scene_scale``, ``eps`` and ``betas``.

    Parameter ``SCHEDULED`` (the positions) starts at ``<SCHEDULED>_lr * scene_scale`` and decays
    log-linearly to ``<SCHEDULED>_lr_final * scene_scale`` over the run; the other rates are constant."""

    SCHEDULED: ClassVar[str]

    def initial_lr(self, name: str) -> float:
        if name == self.SCHEDULED:
            return getattr(self, f"{name}_lr") * self.scene_scale
        return float(getattr(self, f"{name}_lr"))

    def scheduled_lr_at(self, step: int, total_steps: int) -> float:
        """Log-linear interpolation from ``<SCHEDULED>_lr`` to ``<SCHEDULED>_lr_final`` (× scene_scale)
        over ``total_steps``: ``lr(s) = lr0 * (lr1/lr0)^(s/total)``, clamped at both ends (gsplat's
        ``ExponentialLR(gamma = 0.01^(1/max_steps))`` with the default ratio 0.01)."""
        t = min(max(step / max(int(total_steps), 1), 0.0), 1.0)
        lr0, lr1 = getattr(self, f"{self.SCHEDULED}_lr"), getattr(self, f"{self.SCHEDULED}_lr_final")
        if lr0 <= 0 or lr1 <= 0:
            return lr0 * self.scene_scale
        return self.scene_scale * lr0 * (lr1 / lr0) ** t

    def apply_schedule(self, optimizers: Mapping[str, torch.optim.Optimizer], step: int, total_steps: int) -> None:
        """Set the learning rate of ``optimizers[SCHEDULED]`` for ``step`` (call once per step, before
        ``optimizer.step()``). Other groups are constant."""
        opt = optimizers.get(self.SCHEDULED)
        if opt is not None:
            lr = self.scheduled_lr_at(step, total_steps)
            for group in opt.param_groups:
                group["lr"] = lr

    def adam_groups(self, params: Mapping[str, torch.nn.Parameter], names: Sequence[str]) -> list[dict]:
        """One Adam param group per parameter name (:meth:`SceneModel.optimizer_groups`)."""
        return [
            {"name": name, "params": [params[name]], "lr": self.initial_lr(name), "eps": self.eps, "betas": tuple(self.betas)}
            for name in names
        ]


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def point_array(points: Any) -> np.ndarray:
    """Initial points (tensor or array-like, [N, 3]) as float64 numpy [N, 3]."""
    return _numpy(points).astype(np.float64).reshape(-1, 3)


def point_rgb(colors: Any, n: int) -> np.ndarray:
    """Colours of ``n`` initial points as float64 [n, 3] in [0, 1]: uint8 (0..255) or float (0..1)
    input, grey (0.5) when ``colors`` is None."""
    if colors is None:
        return np.full((n, 3), 0.5)
    c = _numpy(colors).reshape(n, 3)
    return c.astype(np.float64) / 255.0 if c.dtype == np.uint8 else c.astype(np.float64)


def random_points(bounds_min: Sequence[float], bounds_max: Sequence[float], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniform in the box [bounds_min, bounds_max] and random colours in [0, 1], both [n, 3]
    float64 from their own generator (seeded; the global RNG is untouched)."""
    rng = np.random.default_rng(seed)
    lo = np.asarray(bounds_min, np.float64).reshape(3)
    hi = np.asarray(bounds_max, np.float64).reshape(3)
    pts = lo + (hi - lo) * rng.random((int(n), 3))
    return pts, rng.random((int(n), 3))


def sh_colors(params: Mapping[str, torch.Tensor], max_degree: int, sh_degree: int | None) -> tuple[torch.Tensor, int]:
    """SH coefficients [N, (d + 1)^2, 3] from ``params["sh0"]`` / ``params["shN"]`` for the active degree
    ``d`` (``sh_degree`` clamped to [0, max_degree]; None = max_degree), and ``d``."""
    degree = max_degree if sh_degree is None else max(0, min(int(sh_degree), max_degree))
    k = (degree + 1) ** 2
    return torch.cat([params["sh0"], params["shN"][:, : k - 1]], dim=1), degree


class SceneModel(abc.ABC):
    """Minimal base class for trainable scene representations (Gaussians, convexes, triangles, ...)."""

    #: Named leaf parameters. Densification replaces entries in place; always read through the dict.
    params: dict[str, torch.nn.Parameter]

    # --- optimisation -----------------------------------------------------------------------------
    @abc.abstractmethod
    def optimizer_groups(self, config: Any) -> list[dict]:
        """One param-group dict per parameter: ``{"name", "params": [p], "lr", ...}`` (extra keys such
        as ``eps`` are honoured by ``torch.optim.Adam``)."""

    def make_optimizers(self, config: Any) -> dict[str, torch.optim.Optimizer]:
        """One ``torch.optim.Adam`` per parameter name (the layout ``recon.strategy`` expects).

        Call again after :meth:`load_state_dict` (the parameters are new objects), then restore each
        optimizer with ``optimizer.load_state_dict``."""
        optimizers: dict[str, torch.optim.Optimizer] = {}
        for group in self.optimizer_groups(config):
            group = dict(group)
            optimizers[group["name"]] = torch.optim.Adam([group])
        return optimizers

    # --- rendering --------------------------------------------------------------------------------
    @abc.abstractmethod
    def render(
        self,
        camera: Any,
        *,
        background: torch.Tensor | None = None,
        sh_degree: int | None = None,
        settings: RasterSettings | None = None,
        render_depth: bool = False,
    ) -> RenderOutput:
        """Render one :class:`recon.datasets.cameras.Camera`. ``out.meta`` carries what densification
        needs (``means2d``, ``radii``, ``width``, ``height``, ``n_cameras``)."""

    # --- persistence ------------------------------------------------------------------------------
    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain containers only (loadable with ``torch.load(weights_only=True)``)."""

    @classmethod
    @abc.abstractmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "SceneModel":
        """A new scene from :meth:`state_dict` output (how checkpoints are loaded)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the primitive count may differ from the current one."""

    @property
    @abc.abstractmethod
    def num_primitives(self) -> int:
        """How many primitives the scene holds now."""

    @abc.abstractmethod
    def export(self, path: str | Path) -> None:
        """Write the representation's standard interchange file (PLY for Gaussians)."""

    # --- conveniences -----------------------------------------------------------------------------
    @staticmethod
    def _camera_inputs(
        camera: Any, background: torch.Tensor | Sequence[float] | None, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(viewmat, K, background)`` of a pinhole camera (``camera.w2c``, ``camera.K``) as tensors
        with ``like``'s device and dtype; a camera with lens distortion is refused."""
        if getattr(camera, "distortion", None) is not None:
            raise ValueError(f"camera {getattr(camera, 'name', '')!r} has lens distortion; render undistorted (pinhole) cameras")
        viewmat = torch.as_tensor(np.asarray(camera.w2c), dtype=like.dtype, device=like.device)
        K = torch.as_tensor(np.asarray(camera.K), dtype=like.dtype, device=like.device)
        if isinstance(background, torch.Tensor):
            background = background.to(device=like.device, dtype=like.dtype)
        elif background is not None:
            background = torch.as_tensor(background, dtype=like.dtype, device=like.device)
        return viewmat, K, background

    @staticmethod
    def _with_camera_meta(out: RenderOutput, camera: Any) -> RenderOutput:
        """``out`` with the ``width``, ``height`` and ``n_cameras = 1`` densification reads (kept when
        the rasterizer set them)."""
        out.meta.setdefault("width", int(camera.width))
        out.meta.setdefault("height", int(camera.height))
        out.meta.setdefault("n_cameras", 1)
        return out

    def _require_params(self, params: Mapping[str, torch.Tensor], names: Sequence[str]) -> None:
        missing = [n for n in names if n not in params]
        if missing:
            raise ValueError(f"{type(self).__name__} is missing parameters {missing}")

    def _install_params(
        self, params: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], device: torch.device | None = None
    ) -> None:
        """Check ``params`` against ``expected`` shapes (its keys, in order, are the parameter names) and
        make them this scene's leaf parameters, keeping the same ``self.params`` dict object (strategies
        and trainers may hold a reference to it). Call :meth:`_require_params` first."""
        for name, shape in expected.items():
            if tuple(params[name].shape) != tuple(shape):
                raise ValueError(f"parameter {name} has shape {tuple(params[name].shape)}, expected {tuple(shape)}")
        installed = {}
        for name in expected:
            t = params[name].detach()
            if device is not None:
                t = t.to(device)
            installed[name] = torch.nn.Parameter(t.clone().contiguous(), requires_grad=True)
        self.params.clear()
        self.params.update(installed)

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.params.values())
