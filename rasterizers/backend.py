"""Choosing between the CUDA core and the PyTorch reference: one rule for every primitive's render.

``backend="reference"`` always takes the PyTorch path; ``"cuda"`` takes the CUDA core or raises with
the reason it cannot; ``"auto"`` takes the CUDA core for tensors on a CUDA device when it loads (and
knows the primitive's footprint policy), else the reference, warning once per footprint.
"""

from __future__ import annotations

import warnings

BACKENDS = ("auto", "reference", "cuda")

_unavailable: dict[str, str] = {}  # footprint policy -> why the CUDA path cannot be used (remembered)
_warned: set[str] = set()


def cuda_unavailable_reason(footprint: str) -> str | None:
    """None when the CUDA core loads and has footprint policy ``footprint``, else why not (cached)."""
    if footprint in _unavailable:
        return _unavailable[footprint]
    try:
        from .cuda import _backend

        if not _backend.is_available():
            raise RuntimeError(_backend.unavailable_reason() or "recon CUDA core unavailable")
        _backend.footprint_id(footprint)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure to load means "use the reference"
        _unavailable[footprint] = f"{type(exc).__name__}: {exc}"
        return _unavailable[footprint]


def choose_backend(backend: str, on_cuda: bool, footprint: str) -> str:
    """``"cuda"`` or ``"reference"`` for a render request (see the module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'reference' or 'cuda', got {backend!r}")
    if backend == "reference" or (backend == "auto" and not on_cuda):
        return "reference"
    reason = cuda_unavailable_reason(footprint)
    if reason is None:
        return "cuda"
    if backend == "cuda":
        raise RuntimeError(f"CUDA rasterizer unavailable ({reason})")
    if footprint not in _warned:
        _warned.add(footprint)
        warnings.warn(f"CUDA rasterizer unavailable ({reason}); using the PyTorch reference", stacklevel=3)
    return "reference"
