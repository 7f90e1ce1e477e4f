"""Rays from recon cameras (OpenCV axes, pixel centres at +0.5) and ray/box intersection."""

from __future__ import annotations

import torch


def pixel_rays(camera, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space rays through pixel centres ``(xs + 0.5, ys + 0.5)`` of ``camera``.

    ``xs``/``ys`` are integer (or float) pixel indices of any shape; returns ``origins`` and unit
    ``directions`` of shape ``[..., 3]`` on the device and dtype of ``xs`` (float32 for integers)."""
    device = xs.device
    dtype = xs.dtype if xs.is_floating_point() else torch.float32
    c2w = torch.as_tensor(camera.c2w, dtype=torch.float64, device=device)
    u = (xs.to(torch.float64) + 0.5 - camera.cx) / camera.fx
    v = (ys.to(torch.float64) + 0.5 - camera.cy) / camera.fy
    d_cam = torch.stack([u, v, torch.ones_like(u)], dim=-1)
    d = d_cam @ c2w[:3, :3].T
    d = d / d.norm(dim=-1, keepdim=True)
    o = c2w[:3, 3].expand_as(d)
    return o.to(dtype).contiguous(), d.to(dtype).contiguous()


def image_rays(camera, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of every pixel, row-major: ``[H*W, 3]`` origins and directions."""
    ys, xs = torch.meshgrid(
        torch.arange(camera.height, device=device), torch.arange(camera.width, device=device), indexing="ij"
    )
    return pixel_rays(camera, xs.reshape(-1), ys.reshape(-1))


def ray_box(origins: torch.Tensor, dirs: torch.Tensor, lo, hi, near: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slab intersection of rays with the axis-aligned box ``[lo, hi]``.

    Returns ``t_near``, ``t_far`` (``t_near`` clamped to ``near``) and ``hit`` (``t_far > t_near``)."""
    lo = torch.as_tensor(lo, dtype=origins.dtype, device=origins.device)
    hi = torch.as_tensor(hi, dtype=origins.dtype, device=origins.device)
    # Directions exactly parallel to a slab: a huge reciprocal keeps min/max well defined.
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12) * torch.where(dirs < 0, -1.0, 1.0), dirs)
    inv = 1.0 / safe
    t0 = (lo - origins) * inv
    t1 = (hi - origins) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(near)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far, t_far > t_near
