"""What the CUDA-vs-reference tests share: a test camera, the double render with the same cotangents,
and the image / gradient error measures (tolerances: see test_cuda_core.py's module docstring)."""

from __future__ import annotations

from typing import Callable

import torch

DEV = "cuda"


def camera(width, height, seed=0, rotate=False, f=None):
    """``(viewmat [4, 4], K [3, 3])``: a pinhole with an off-centre principal point and, with ``rotate``,
    a small seeded rotation and translation (so no axis is special)."""
    f = f if f is not None else 0.9 * max(width, height)
    K = torch.tensor([[f, 0.0, width / 2 + 3.1], [0.0, f * 1.02, height / 2 - 2.3], [0.0, 0.0, 1.0]])
    viewmat = torch.eye(4)
    if rotate:
        g = torch.Generator().manual_seed(seed + 99)
        q = torch.randn(4, generator=g) * torch.tensor([1.0, 0.1, 0.1, 0.1])
        w, x, y, z = (q / q.norm()).tolist()
        viewmat[:3, :3] = torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                                        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                                        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])  # fmt: skip
        viewmat[:3, 3] = torch.tensor([0.05, -0.03, 0.1])
    return viewmat, K


def rel(a, b) -> float:
    """Relative L2 error ``||a - b|| / ||b||`` in float64 on the CPU."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def render_both(render: Callable, inputs, width, height, channels, *, render_depth=False, seed=0) -> dict:
    """Render with CUDA (float32) and the reference (float64, CPU) and backprop the same random
    cotangents of image, alpha (and depth) through both.

    ``render(leaves, device, dtype, backend)`` renders the given leaf tensors (``inputs`` moved and made
    to require grad) and calls ``retain_grad()`` on the meta tensors the test compares. Returns
    ``{"cuda": (out, leaf grads), "ref": (out, leaf grads)}``."""
    g = torch.Generator().manual_seed(seed + 7)
    v_img = torch.randn(height, width, channels, generator=g, dtype=torch.float64)
    v_alpha = torch.randn(height, width, 1, generator=g, dtype=torch.float64)
    v_depth = torch.randn(height, width, 1, generator=g, dtype=torch.float64) * 0.1
    outs = {}
    for name, dev, dt, backend in (("cuda", DEV, torch.float32, "cuda"), ("ref", "cpu", torch.float64, "reference")):
        leaves = [t.to(dev, dt).clone().requires_grad_(True) for t in inputs]
        out = render(leaves, dev, dt, backend)
        loss = (out.image * v_img.to(dev, dt)).sum() + (out.alpha * v_alpha.to(dev, dt)).sum()
        if render_depth:
            loss = loss + (out.depth * v_depth.to(dev, dt)).sum()
        loss.backward()
        outs[name] = (out, [t.grad for t in leaves])
    return outs


def check_images(a, b, name, max_frac=1e-3, max_abs=0.05, mean_abs=2e-5) -> None:
    """Mean and max |a - b| and the fraction of pixels off by more than 1e-3 within bounds (printed)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert a.shape == b.shape, (name, a.shape, b.shape)
    d = (a - b).abs()
    frac = (d > 1e-3).double().mean().item()
    print(f"{name}: max {d.max().item():.2e} mean {d.mean().item():.2e} frac>1e-3 {frac:.2e}")
    assert torch.isfinite(a).all()
    assert d.mean().item() < mean_abs, name
    assert frac < max_frac, name
    assert d.max().item() < max_abs, name


def check_grads(outs, names, meta_keys, tol=1e-2) -> None:
    """Relative error of every leaf gradient (``names``; skipped where the reference's is zero) and of
    the retained gradients of ``out.meta[key]`` for ``meta_keys`` below ``tol``."""
    for n, a, b in zip(names, outs["cuda"][1], outs["ref"][1]):
        if b is None or b.abs().max() == 0:
            continue
        assert a is not None and torch.isfinite(a).all(), n
        r = rel(a, b)
        print(f"grad {n}: rel {r:.2e}")
        assert r < tol, (n, r)
    for key in meta_keys:
        r = rel(outs["cuda"][0].meta[key].grad, outs["ref"][0].meta[key].grad)
        print(f"grad meta[{key}]: rel {r:.2e}")
        assert r < tol, (key, r)
