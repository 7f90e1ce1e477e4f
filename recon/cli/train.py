"""``recon-train``: train a scene on photos, a video, a posed dataset, or the built-in demo."""

from __future__ import annotations

import tyro
from rich.console import Console

from recon.cli.common import run_cli
from recon.config import TrainConfig


def viewer_hooks(cfg: TrainConfig, console: Console) -> list:
    """The hooks ``--viewer`` attaches (empty without it)."""
    if not cfg.viewer:
        return []
    from recon.viewers.train_hook import ViewerHook

    return [ViewerHook(cfg.viewer_host, cfg.viewer_port, print_line=lambda line: console.print(line, highlight=False))]


def main(cfg: TrainConfig | None = None) -> int:
    from recon.training.trainer import Trainer

    cfg = cfg if cfg is not None else tyro.cli(TrainConfig)
    console = Console(stderr=True)
    hooks = viewer_hooks(cfg, console)
    trainer = Trainer(cfg, hooks=hooks)
    trainer.setup()
    try:
        return _train(cfg, trainer, console, hooks)
    finally:
        for hook in hooks:
            hook.close()


def _train(cfg: TrainConfig, trainer, console: Console, hooks: list) -> int:
    resumed = trainer.step > 0
    console.print(
        f"[bold]recon[/] {cfg.method} on [cyan]{cfg.data}[/] -> {trainer.run_dir} "
        f"({len(trainer.data.train_views)} train / {len(trainer.data.test_views)} test views, "
        f"downscale {trainer.data.downscale}, {trainer.device}"
        + (f", resuming at step {trainer.step}" if resumed else "") + ")",
        highlight=False,
    )
    summary = trainer.train()
    ev = summary["eval"]
    line = f"done: {summary['num_primitives']:,} primitives, {summary['train_seconds']:.1f} s training"
    if ev:
        line += f", held-out PSNR {ev['psnr']:.2f} dB, SSIM {ev['ssim']:.4f}"
    console.print(line, highlight=False)
    files = ", ".join(f"{kind}: {path}" for kind, path in summary["exports"].items())
    console.print(f"run folder: {summary['run_dir']}  ({files})", highlight=False)
    if hooks:
        from recon.viewers.live import wait_forever

        console.print(f"viewer still running at {hooks[0].url} (press Ctrl-C to stop)", highlight=False)
        try:
            wait_forever()
        except KeyboardInterrupt:
            console.print("viewer stopped", highlight=False)
    return 0


def entrypoint() -> None:
    run_cli(main)


if __name__ == "__main__":
    entrypoint()
