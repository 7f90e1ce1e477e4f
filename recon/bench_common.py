"""Pieces shared by the non-Gaussian rows of ``recon-bench raster`` (``--convexes``, ``--triangles``).

Each such row times one renderer on its anchors.md frame with the same protocol as the Gaussian rows
(``recon.cli.bench._measure``: fwd ms, fwd+bwd ms, peak MiB), then adds the tile intersections, visible
primitives and pixel coverage of one no-grad render, its cost per million intersections against recon's
own Gaussian path measured in the same run, and ratios against an official rasterizer's numbers *recorded*
in ``shared/notes/anchors.md`` (a recorded anchor: same GPU class, not measured in this run).
"""

from __future__ import annotations

import math
from typing import Callable


def require_cuda_core(tool: str) -> None:
    """Raise InputError (one line, exit 2 from the CLI) unless a GPU and the built recon CUDA core are there."""
    import torch

    from recon.errors import InputError

    if not torch.cuda.is_available():
        raise InputError(None, f"{tool} needs a CUDA GPU")
    from recon.rasterizers import cuda as rc

    if not rc.is_available():
        raise InputError(None, f"recon CUDA core unavailable: {rc.unavailable_reason()} (run recon-doctor)")


def fmt(v, p: int = 2) -> str:
    """A table cell: ``v`` with ``p`` decimals, or an em dash for missing / NaN values."""
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{p}f}"


def ms_per_m_isects(ms: float, isects: int) -> float:
    """Milliseconds per million tile intersections."""
    return ms / max(isects / 1e6, 1e-9)


def gaussian_anchor_row(gaussian_rows: list[dict]) -> dict | None:
    """This run's recon Gaussian row (default variant) among ``gaussian_rows``, if it was timed."""
    return next((r for r in gaussian_rows if r.get("impl") == "recon (default)"), None)


def add_per_isect(row: dict, g_row: dict | None) -> dict:
    """``fwdbwd_ms_per_m_isects`` and, when this run timed recon's Gaussians, ``per_isect_vs_gaussians``."""
    per_m = ms_per_m_isects(row["fwdbwd_ms"], row["isects"])
    row["fwdbwd_ms_per_m_isects"] = per_m
    if g_row is not None and g_row.get("isects"):
        row["per_isect_vs_gaussians"] = per_m / ms_per_m_isects(g_row["fwdbwd_ms"], g_row["isects"])
    return row


def add_recorded_ratios(row: dict, anchor: dict | None, tag: str, *, per_isect: bool = False) -> dict:
    """Ratios of ``row`` to a recorded anchor (``fwd_ms``, ``fwdbwd_ms``, optional ``peak_mib`` / ``isects``):
    ``recorded_<tag>``, ``fwd_vs_recorded_<tag>``, ``fwdbwd_vs_recorded_<tag>``, ``mem_vs_recorded_<tag>``
    (when the anchor has a peak) and, with ``per_isect``, ``fwdbwd_per_isect_vs_recorded_<tag>``: the
    fwd+bwd ratio at equal intersections (each side's ms per million of its own tile intersections)."""
    if anchor is None:
        return row
    row[f"recorded_{tag}"] = anchor
    row[f"fwd_vs_recorded_{tag}"] = row["fwd_ms"] / anchor["fwd_ms"]
    row[f"fwdbwd_vs_recorded_{tag}"] = row["fwdbwd_ms"] / anchor["fwdbwd_ms"]
    if anchor.get("peak_mib") is not None:
        row[f"mem_vs_recorded_{tag}"] = row["peak_mib"] / anchor["peak_mib"]
    if per_isect and anchor.get("isects") and row.get("isects"):
        row[f"fwdbwd_per_isect_vs_recorded_{tag}"] = ms_per_m_isects(row["fwdbwd_ms"], row["isects"]) / ms_per_m_isects(
            anchor["fwdbwd_ms"], anchor["isects"]
        )
    return row


def measure_primitive(render: Callable, tensors: list, cfg, *, scene: str, impl: str, visible: Callable[[dict], int]) -> dict:
    """Time ``render(leaves, meta=None) -> image`` (CUDA; the protocol of ``recon.cli.bench._measure``) and
    read ``n_isects``, ``visible(meta)`` and the coverage (pixels with a contributor) from one no-grad render."""
    import torch

    from recon.cli.bench import _measure

    res = _measure(render, tensors, cfg)
    meta: dict = {}
    with torch.no_grad():
        render(tensors, meta)
    row = dict(scene=scene, impl=impl, **{k: v for k, v in res.items() if k != "image"})
    row["isects"] = int(meta["n_isects"])
    row["visible"] = int(visible(meta))
    row["coverage"] = float((meta["n_contrib"] > 0).float().mean())
    return row
