"""Finding a trained run from what a user points at: a run folder or a checkpoint file."""

from __future__ import annotations

from pathlib import Path

import yaml

from recon.config import TrainConfig, train_config_from_dict
from recon.errors import InputError
from recon.training.checkpoint import load_checkpoint


def resolve_checkpoint(target: Path, which: str = "best") -> Path:
    target = Path(target).expanduser()
    if target.is_file():
        return target
    if target.is_dir():
        for name in ((which, "latest") if which != "latest" else ("latest",)):
            candidate = target / "checkpoints" / f"{name}.pt"
            if candidate.is_file():
                return candidate
        raise InputError(target, "no checkpoints/best.pt or checkpoints/latest.pt in this folder (is it a recon run folder?)")
    raise InputError(target, "no such file or folder")


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/x.pt`` -> ``<run>``)."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def load_run(target: Path, which: str = "best", device: str = "cpu"):
    """(scene, config, checkpoint payload) of a trained run."""
    from recon.methods import METHODS

    path = resolve_checkpoint(target, which)
    ckpt = load_checkpoint(path, map_location=device)
    try:
        cfg = train_config_from_dict(yaml.safe_load(ckpt["config"]))
    except Exception as exc:
        raise InputError(path, f"checkpoint config is unreadable ({exc})") from None
    method = ckpt.get("method", cfg.method)
    if method not in METHODS:
        raise InputError(path, f"unknown method {method!r} (known: {', '.join(METHODS)})")
    scene = METHODS[method].scene_class.from_state_dict(ckpt["scene"]).to(device)
    return scene, cfg, ckpt, path


__all__ = ["TrainConfig", "load_run", "resolve_checkpoint", "run_dir_of"]
