"""Image metrics shared by training (loss, progress bar) and evaluation.

SSIM follows the usual 3DGS/gsplat evaluation: 11x11 Gaussian window, sigma 1.5, constants
K1=0.01, K2=0.03 on images in [0, 1], 'valid'-free ('same' padding by zero, as the 3DGS training
loss does). The window size is part of the reported protocol.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


@functools.lru_cache(maxsize=8)
def _gaussian_window(size: int, sigma: float, channels: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    w2d = (g[:, None] * g[None, :]).to(device=device, dtype=dtype)
    return w2d.expand(channels, 1, size, size).contiguous()


def _to_nchw(img: torch.Tensor) -> torch.Tensor:
    """[H, W, C] or [B, H, W, C] -> [B, C, H, W]."""
    if img.dim() == 3:
        img = img[None]
    return img.permute(0, 3, 1, 2)


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM of two channels-last images in [0, 1]; returns [B, C, H, W]."""
    x, y = _to_nchw(a), _to_nchw(b)
    c = x.shape[1]
    w = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, c, str(x.device), x.dtype)
    pad = SSIM_WINDOW // 2
    mu_x = F.conv2d(x, w, padding=pad, groups=c)
    mu_y = F.conv2d(y, w, padding=pad, groups=c)
    sxx = F.conv2d(x * x, w, padding=pad, groups=c) - mu_x**2
    syy = F.conv2d(y * y, w, padding=pad, groups=c) - mu_y**2
    sxy = F.conv2d(x * y, w, padding=pad, groups=c) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ssim_map(a, b).mean()


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PSNR in dB for images in [0, 1]; with a mask [H, W, 1], only masked pixels count."""
    err = (a - b) ** 2
    if mask is not None:
        m = mask.expand_as(err)
        mse = (err * m).sum() / m.sum().clamp_min(1)
    else:
        mse = err.mean()
    return -10.0 * torch.log10(mse.clamp_min(1e-12))


class Lpips:
    """LPIPS when the ``lpips`` package and its backbone weights are present offline, else unavailable.

    The ``lpips`` wheel ships only its linear heads; the backbone comes from torchvision's weight cache.
    We never download at evaluation time: ``available`` is False with a ``reason`` instead, and the
    eval JSON says so."""

    def __init__(self, net: str = "alex", device: str | torch.device = "cpu") -> None:
        self.net = net
        self.model = None
        self.reason = ""
        try:
            import os

            os.environ.setdefault("TORCH_HOME", os.path.expanduser("~/.cache/torch"))
            import lpips  # type: ignore[import-not-found]
            from torch.hub import get_dir

            ckpt_dir = os.path.join(get_dir(), "checkpoints")
            names = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet"}
            if not os.path.isdir(ckpt_dir) or not any(f.startswith(names[net]) for f in os.listdir(ckpt_dir)):
                self.reason = f"backbone weights for LPIPS-{net} are not cached in {ckpt_dir} (no download at eval time)"
                return
            self.model = lpips.LPIPS(net=net, verbose=False).to(device).eval()
        except ImportError:
            self.reason = "the 'lpips' package is not installed"
        except Exception as exc:  # weights missing or incompatible: report, don't crash evaluation
            self.reason = f"LPIPS unavailable: {exc}"

    @property
    def available(self) -> bool:
        return self.model is not None

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> float:
        assert self.model is not None
        x = _to_nchw(a) * 2 - 1
        y = _to_nchw(b) * 2 - 1
        return float(self.model(x, y).mean())
