"""The one place where every primitive's render packs its result into a :class:`RenderOutput`.

Gaussians, convexes and triangles each build the ``meta`` entries of their own projection; what both
paths add on top is the same for all of them and lives here:

- every path: ``width``, ``height``, ``tile_size`` and ``backend``;
- the PyTorch reference: the compositor's ``max_weight``, ``contrib_count`` and ``n_contrib``;
- the CUDA core: ``n_contrib``, ``last_ids``, ``n_isects`` and, when it was computed, ``max_weight``.
  Per-camera tensors carry a leading camera axis I; a render of one (unbatched) camera drops it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from torch import Tensor

from .types import RasterSettings, RenderOutput

if TYPE_CHECKING:
    from .cuda.ops import Composited
    from .reference.composite import CompositeResult

__all__ = ["reference_output", "cuda_output"]


def _frame_meta(width: int, height: int, settings: RasterSettings, backend: str) -> dict[str, Any]:
    return {"width": width, "height": height, "tile_size": settings.tile_size, "backend": backend}


def reference_output(
    res: CompositeResult, meta: Mapping[str, Any], width: int, height: int, settings: RasterSettings, *,
    image: Tensor | None = None, depth: Tensor | None = None,
) -> RenderOutput:  # fmt: skip
    """The output of a reference render: ``res`` from ``reference.composite.composite`` and the
    primitive's own ``meta``. ``image`` / ``depth`` replace ``res.image`` / ``res.depth`` when the caller
    composited the depth as an extra colour channel and split it off itself."""
    meta = {
        **meta,
        "max_weight": res.max_weight,
        "contrib_count": res.contrib_count,
        "n_contrib": res.n_contrib,
        **_frame_meta(width, height, settings, "reference"),
    }
    image = res.image if image is None else image
    depth = res.depth if depth is None else depth
    return RenderOutput(image=image, alpha=res.alpha, depth=depth, meta=meta)


def cuda_output(
    out: Composited, batched: bool, per_camera: Mapping[str, Tensor], meta: Mapping[str, Any], width: int, height: int,
    settings: RasterSettings,
) -> RenderOutput:  # fmt: skip
    """The output of a CUDA render: ``out`` from ``cuda.ops.composite_features``, the primitive's
    ``per_camera`` tensors [I, ...] (their leading I is dropped unless ``batched``) and its other ``meta``
    entries (taken as they are)."""

    def one(t: Tensor | None) -> Tensor | None:
        return t if batched or t is None else t[0]

    full = {
        **{name: one(t) for name, t in per_camera.items()},
        **meta,
        "n_contrib": one(out.n_contrib),
        "last_ids": one(out.last_ids),
        "n_isects": int(out.bins.flatten_ids.numel()),
        **_frame_meta(width, height, settings, "cuda"),
    }
    if out.max_weight is not None:
        full["max_weight"] = one(out.max_weight)
    return RenderOutput(image=one(out.image), alpha=one(out.alpha), depth=one(out.depth), meta=full)
