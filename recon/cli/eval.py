"""``recon-eval``: score a trained run on its held-out views (PSNR, SSIM, LPIPS when available)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro
from rich.console import Console

from recon.cli.common import run_cli


@dataclass
class EvalConfig:
    """Evaluate a trained run on the shared held-out split and write eval/results.json."""

    run: tyro.conf.Positional[Path]
    """Run folder or checkpoint file."""
    checkpoint: Literal["best", "latest"] = "best"
    data: str | None = None
    """Override the dataset path stored in the run (e.g. the data moved)."""
    output: Path | None = None
    """Folder for results.json / per_view.json / renders. Default: <run>/eval."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    save_renders: bool = True


def main(cfg: EvalConfig | None = None) -> int:
    from recon.cli.runs import load_run, run_dir_of
    from recon.eval.evaluate import describe_protocol, evaluate_views
    from recon.eval.metrics import Lpips
    from recon.training.trainer import prepare_data

    cfg = cfg if cfg is not None else tyro.cli(EvalConfig)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    scene, train_cfg, ckpt, ckpt_path = load_run(cfg.run, cfg.checkpoint, device)
    if cfg.data is not None:
        train_cfg = dataclasses.replace(train_cfg, data=cfg.data)
    train_cfg = dataclasses.replace(train_cfg, progress=False)
    data = prepare_data(train_cfg, device, need_train_views=False)
    views = data.test_views or data.train_views
    background = torch.tensor(data.background, dtype=torch.float32, device=device)
    lpips = Lpips(device=device)
    protocol = describe_protocol(
        views, holdout_every=train_cfg.holdout_every if data.test_views else 0, downscale=data.downscale,
        background=data.background, lpips=lpips,
    )

    from recon.methods import METHODS

    method = METHODS[ckpt.get("method", train_cfg.method)](
        train_cfg, steps=int(ckpt["step"]) or 1, scene_scale=data.scene_data.scene_scale(), device=device,
        background=background,
    )

    def render(view):
        with torch.no_grad():
            return method.render(scene, view.camera)

    run_dir = run_dir_of(ckpt_path)
    out_dir = cfg.output or (run_dir / "eval")
    results = evaluate_views(
        render, views, out_dir=out_dir, protocol=protocol, lpips=lpips, save_renders=cfg.save_renders,
        extra={"method": train_cfg.method, "data": train_cfg.data, "step": int(ckpt["step"]),
               "checkpoint": str(ckpt_path), "num_primitives": scene.num_primitives, "device": device},
    )
    console = Console()
    console.print(json.dumps({k: results[k] for k in ("num_views", "psnr", "ssim", "lpips")}), highlight=False)
    console.print(f"wrote {out_dir / 'results.json'}", highlight=False)
    return 0


def entrypoint() -> None:
    run_cli(main)


if __name__ == "__main__":
    entrypoint()
