"""``recon-view``: look at a trained run, a checkpoint, a splat file or a glTF mesh in the browser."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro
from rich.console import Console

from recon.cli.common import run_cli
from recon.errors import InputError


@dataclass
class ViewConfig:
    """Open a live viewer (viser) on a run folder, a checkpoint (.pt), a Gaussian splat file (.ply,
    compressed .ply, .spz, .splat) or a mesh (.glb/.gltf). Frames are rendered by recon itself, so a
    scene shows exactly as it was trained (full SH)."""

    target: tyro.conf.Positional[Path]
    """Run folder, checkpoint, splat file or glTF mesh."""
    host: str = "127.0.0.1"
    """Address to listen on. The default keeps the viewer on this machine (reach it from elsewhere
    with the printed ssh -L line); 0.0.0.0 lets anyone on the network connect."""
    port: int = 8080
    """Port (the next free one is used when it is taken; the printed URL is the real one)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render: 'auto' = the GPU when there is one."""
    checkpoint: Literal["best", "latest"] = "best"
    """Which checkpoint of a run folder to show."""
    resolution: int | None = None
    """Long side of still frames in pixels (default: 1920 on a GPU, 320 on a CPU; changeable in the GUI)."""


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "--device cuda was asked for, but torch sees no CUDA device (run recon-doctor)")
    return device


def main(cfg: ViewConfig | None = None) -> int:
    cfg = cfg if cfg is not None else tyro.cli(ViewConfig)
    console = Console(stderr=True)
    device = resolve_device(cfg.device)
    if cfg.resolution is not None and cfg.resolution < 16:
        raise InputError(None, f"--resolution must be at least 16 pixels (got {cfg.resolution})")

    from recon.viewers.live import LiveViewer, announce_line, wait_forever
    from recon.viewers.sources import open_target

    target = open_target(cfg.target, device=device, which=cfg.checkpoint)
    viewer = LiveViewer(
        target, host=cfg.host, port=cfg.port, device=device, max_size=cfg.resolution,
        log=lambda line: console.print(line, highlight=False),
    )
    try:
        print(announce_line(cfg.host, viewer.port), flush=True)
        console.print(f"showing {target.label} (press Ctrl-C to stop)", highlight=False)
        try:
            wait_forever()
        except KeyboardInterrupt:
            console.print("viewer stopped", highlight=False)
    finally:
        viewer.stop()
    return 0


def entrypoint() -> None:
    run_cli(main)


if __name__ == "__main__":
    entrypoint()
