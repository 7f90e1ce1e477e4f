"""Held-out evaluation shared by every method: PSNR, SSIM, LPIPS (when available), with the protocol.

Writes ``eval/results.json`` (summary + protocol), ``eval/per_view.json`` and, optionally, the renders
and ground truths as PNGs. Every method goes through :func:`evaluate_views`, so numbers are comparable.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from recon.eval.metrics import SSIM_SIGMA, SSIM_WINDOW, Lpips, psnr, ssim
from recon.utils.atomic import atomic_path, write_text_atomic


def save_png(path: Path, image: torch.Tensor) -> None:
    """Channels-last float image in [0, 1] -> 8-bit PNG, written atomically."""
    arr = (image.detach().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def describe_protocol(
    views: Sequence[Any], *, holdout_every: int, downscale: int, background: Sequence[float], lpips: Lpips | None,
) -> dict[str, Any]:
    """The protocol block of ``results.json``; view names, resolution and masking come from ``views``."""
    test_names = [v.camera.name for v in views]
    resolution = (views[0].camera.width, views[0].camera.height) if views else None
    masked = any(v.mask is not None for v in views)
    return {
        "split": (
            f"views sorted by name; every {holdout_every}th view held out (indices 0, {holdout_every}, "
            f"{2 * holdout_every}, ...)" if holdout_every > 0 else "no held-out views (training views evaluated)"
        ),
        "test_views": list(test_names),
        "downscale": downscale,
        "resolution": None if resolution is None else list(resolution),
        "undistorted": True,
        "background": [float(x) for x in background],
        "masked": masked,
        "psnr": "10 log10(1 / MSE) on [0, 1] RGB" + (", masked pixels only" if masked else ""),
        "ssim": f"{SSIM_WINDOW}x{SSIM_WINDOW} Gaussian window, sigma {SSIM_SIGMA}, zero padding",
        "lpips": (
            {"network": lpips.net} if (lpips is not None and lpips.available)
            else {"network": None, "reason": "not requested" if lpips is None else lpips.reason}
        ),
    }


@torch.no_grad()
def evaluate_views(
    render: Callable[[Any], torch.Tensor],
    views: Sequence[Any],
    *,
    out_dir: Path | None,
    protocol: dict[str, Any],
    extra: dict[str, Any] | None = None,
    lpips: Lpips | None = None,
    save_renders: bool = True,
    render_subdir: str = "renders",
) -> dict[str, Any]:
    """Render every view with ``render(view) -> [H, W, 3]`` and score it against ``view.image``.

    ``views`` are loaded views (``recon.datasets.images.View``: camera, image, mask). Returns the
    summary dict (also written to ``out_dir/results.json`` when ``out_dir`` is given)."""
    per_view = []
    started = time.perf_counter()
    for view in views:
        image = render(view).clamp(0, 1)
        target = view.image.to(image.device)
        mask = None if view.mask is None else view.mask.to(image.device)
        if mask is not None:
            # Unsupervised pixels are shown as ground truth so SSIM/LPIPS windows don't see them.
            image_m = image * mask + target * (1 - mask)
        else:
            image_m = image
        row = {
            "name": view.camera.name,
            "psnr": float(psnr(image, target, mask)),
            "ssim": float(ssim(image_m, target)),
        }
        if lpips is not None and lpips.available:
            row["lpips"] = lpips(image_m, target)
        per_view.append(row)
        if out_dir is not None and save_renders:
            stem = Path(view.camera.name).stem
            save_png(out_dir / render_subdir / f"{stem}.png", image)
            save_png(out_dir / "gt" / f"{stem}.png", target)
    elapsed = time.perf_counter() - started
    summary: dict[str, Any] = {
        "num_views": len(per_view),
        "psnr": float(np.mean([r["psnr"] for r in per_view])) if per_view else None,
        "ssim": float(np.mean([r["ssim"] for r in per_view])) if per_view else None,
        "lpips": float(np.mean([r["lpips"] for r in per_view])) if per_view and "lpips" in per_view[0] else None,
        "render_seconds_per_view": elapsed / max(1, len(per_view)),
        **(extra or {}),
        "protocol": protocol,
    }
    if out_dir is not None:
        write_text_atomic(out_dir / "results.json", json.dumps(summary, indent=2) + "\n")
        write_text_atomic(out_dir / "per_view.json", json.dumps(per_view, indent=2) + "\n")
    return summary
