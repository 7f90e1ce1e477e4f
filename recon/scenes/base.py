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
from typing import Any, Mapping, Sequence

import torch

from recon.rasterizers.types import RasterSettings, RenderOutput


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
