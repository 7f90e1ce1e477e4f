"""Full-state checkpoints: parameters, optimizers, densification state, RNG, step, config.

Written atomically (temp file + fsync + rename), so a crash or kill at any moment leaves either the
previous checkpoint or the new one, never a torn file. Loaded with ``weights_only=True``: a checkpoint
holds only tensors and plain containers, so loading one a user hands us cannot execute code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from recon.errors import InputError
from recon.utils.atomic import atomic_path

FORMAT_VERSION = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    payload = {"format_version": FORMAT_VERSION, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise InputError(path, f"not a readable recon checkpoint ({type(exc).__name__}: {exc})".split("\n")[0]) from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise InputError(path, "not a recon checkpoint (missing or unknown format_version)")
    return payload


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
