"""Photometric training loss: (1 - lambda) L1 + lambda (1 - SSIM), as in 3DGS."""

from __future__ import annotations

import torch

from recon.eval.metrics import ssim_map


def photometric_loss(
    render: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, ssim_lambda: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss on channels-last images [H, W, 3]; ``mask`` [H, W, 1] (1 = supervised) or None."""
    if mask is not None:
        # Masked pixels are set equal in both images so neither term sees them.
        render = render * mask + target.detach() * (1 - mask)
        denom = mask.sum().clamp_min(1) * render.shape[-1]
        l1 = (render - target).abs().sum() / denom
        s = (ssim_map(render, target).permute(0, 2, 3, 1)[0] * mask).sum() / denom
    else:
        l1 = (render - target).abs().mean()
        s = ssim_map(render, target).mean()
    loss = (1 - ssim_lambda) * l1 + ssim_lambda * (1 - s)
    return loss, {"l1": l1.detach(), "ssim": s.detach()}
