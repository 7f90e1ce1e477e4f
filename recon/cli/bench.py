"""``recon-bench``: device-timed benchmarks that print a ratio against an anchor measured in the same run.

Subcommands: ``raster`` (recon's CUDA Gaussian rasterizer vs gsplat 1.5.3, when installed). More
(``hashgrid``, ...) plug in as further subcommands. Benchmarks are never timed assertions in tests.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from recon.bench_common import require_cuda_core
from recon.cli.common import run_cli
from recon.errors import InputError


@dataclass
class RasterBench:
    """Forward and forward+backward time (median of CUDA-event timings after warm-up) and peak memory of
    recon's CUDA Gaussian rasterizer against gsplat 1.5.3 on the same Gaussians and cameras."""

    scenes: tuple[str, ...] = ("garden", "1M", "3M")
    """'garden' ($RECON_DATA/gsplat_garden/test_garden.npz, 3 cameras batched, 648x420) and/or synthetic
    sizes such as '100k', '1M', '3M' (one camera, width x height)."""
    width: int = 1297
    height: int = 840
    sh_degree: int = 3
    warmup: int = 5
    iters: int = 30
    seed: int = 0
    gsplat: bool = True
    """Also time gsplat (skipped with a note when it is not installed)."""
    variants: tuple[str, ...] = ("default",)
    """recon variants: 'default' (exact tile test, two-level sort), 'rect64' (rectangle tiles, one 64-bit
    key sort: the gsplat-like baseline), 'rect' (rectangle tiles, two-level sort), 'sort64' (exact tiles,
    64-bit keys)."""
    profile: bool = False
    """Print the CUDA kernel time table of one recon fwd+bwd (torch.profiler)."""
    data: Path | None = None
    """Folder holding gsplat_garden/ (default: $RECON_DATA)."""
    out: Path | None = None
    """Write results.json and results.md here."""
    convexes: bool = False
    """Also time recon's 3D convexes on the anchors.md convex frame for each synthetic count (sharp and soft
    edges; recon.bench_convex), against recon's Gaussians in this run and the recorded official 3DCS numbers."""
    triangles: bool = False
    """Also time recon's triangle splats on the anchors.md triangle frame for each synthetic count (and the 2x
    larger triangles where anchors.md has them; recon.bench_triangle), against recon's Gaussians in this run
    and the recorded official Triangle Splatting numbers."""


VARIANTS = {
    "default": dict(exact_tiles=True, sort_mode=1),
    "rect64": dict(exact_tiles=False, sort_mode=0),
    "rect": dict(exact_tiles=False, sort_mode=1),
    "sort64": dict(exact_tiles=True, sort_mode=0),
}


def _parse_count(name: str) -> int:
    s = name.lower().strip()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1], 1)
    try:
        return int(float(s[:-1] if s[-1] in "km" else s) * mult)
    except ValueError as exc:
        raise InputError(None, f"unknown scene {name!r}: use 'garden' or a count like '1M'") from exc


def synthetic_scene(n: int, width: int, height: int, sh_degree: int, seed: int, device):
    """Random Gaussians filling one camera's view between depths 2 and 12, sizes 0.002-0.022 (anchors.md)."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    f = 1100.0
    z = torch.rand(n, generator=g) * 10 + 2
    x = (torch.rand(n, generator=g) - 0.5) * width / f * z
    y = (torch.rand(n, generator=g) - 0.5) * height / f * z
    means = torch.stack([x, y, z], -1)
    quats = torch.randn(n, 4, generator=g)
    quats = quats / quats.norm(dim=-1, keepdim=True)
    scales = torch.rand(n, 3, generator=g) * 0.02 + 0.002
    opac = torch.rand(n, generator=g) * 0.95 + 0.05
    coeffs = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.2
    viewmats = torch.eye(4)[None]
    Ks = torch.tensor([[[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]]])
    dev = lambda t: t.to(device).contiguous()  # noqa: E731
    return [dev(t) for t in (means, quats, scales, opac, coeffs)], dev(viewmats), dev(Ks), width, height


def garden_scene(root: Path, sh_degree: int, seed: int, device):
    """The gsplat test asset: points cropped to [-2,2]^3, scales ~U(0,0.02), random quats, opacities ~U(0,1)."""
    import numpy as np
    import torch

    path = root / "gsplat_garden" / "test_garden.npz"
    if not path.exists():
        raise InputError(path, "not found (set --data or $RECON_DATA to the folder holding gsplat_garden/)")
    d = np.load(path)
    means = torch.from_numpy(d["means3d"]).float()
    rgb = torch.from_numpy(d["colors"]).float() / 255.0
    keep = (means.abs() <= 2).all(dim=-1)
    means, rgb = means[keep], rgb[keep]
    n = means.shape[0]
    g = torch.Generator().manual_seed(seed)
    scales = torch.rand(n, 3, generator=g) * 0.02
    quats = torch.randn(n, 4, generator=g)
    quats = quats / quats.norm(dim=-1, keepdim=True)
    opac = torch.rand(n, generator=g)
    coeffs = torch.zeros(n, (sh_degree + 1) ** 2, 3)
    coeffs[:, 0] = (rgb - 0.5) / 0.28209479177387814
    dev = lambda t: t.to(device).contiguous()  # noqa: E731
    return ([dev(t) for t in (means, quats, scales, opac, coeffs)], dev(torch.from_numpy(d["viewmats"]).float()),
            dev(torch.from_numpy(d["Ks"]).float()), int(d["width"]), int(d["height"]))  # fmt: skip


def _time(fn: Callable[[], None], warmup: int, iters: int) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _peak_mib(fn: Callable[[], None]) -> float:
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def _measure(render: Callable[[list], object], tensors: list, cfg: RasterBench) -> dict:
    """render(leaves) -> image [..., H, W, 3]. Returns fwd ms, fwd+bwd ms, peak MiB (inputs + grads included)."""
    import torch

    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    img0 = render(leaves)
    cot = torch.randn_like(img0)

    def fwd():
        render(leaves)

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        (render(leaves) * cot).sum().backward()

    res = {"fwd_ms": _time(fwd, cfg.warmup, cfg.iters), "fwdbwd_ms": _time(fwd_bwd, cfg.warmup, cfg.iters)}
    for t in leaves:
        t.grad = None
    res["peak_mib"] = _peak_mib(fwd_bwd)
    res["image"] = img0.detach()
    return res


def _recon_renderer(viewmats, Ks, width, height, sh_degree, variant):
    from recon.rasterizers.cuda import render_gaussians_cuda

    kw = VARIANTS[variant]
    batched = viewmats.shape[0] > 1

    def render(leaves):
        means, quats, scales, opac, coeffs = leaves
        out = render_gaussians_cuda(means, quats, scales, opac, coeffs, viewmats if batched else viewmats[0],
                                    Ks if batched else Ks[0], width, height, sh_degree=sh_degree, **kw)  # fmt: skip
        return out.image

    return render


def _gsplat_renderer(viewmats, Ks, width, height, sh_degree):
    import gsplat

    batched = viewmats.shape[0] > 1

    def render(leaves):
        means, quats, scales, opac, coeffs = leaves
        img, _, _ = gsplat.rasterization(means, quats, scales, opac, coeffs, viewmats, Ks, width, height, sh_degree=sh_degree)
        return img if batched else img[0]

    return render


def _isects(tensors, viewmats, Ks, width, height, sh_degree, variant) -> int:
    import torch

    from recon.rasterizers.cuda import render_gaussians_cuda

    with torch.no_grad():
        out = render_gaussians_cuda(*tensors, viewmats if viewmats.shape[0] > 1 else viewmats[0],
                                    Ks if Ks.shape[0] > 1 else Ks[0], width, height, sh_degree=sh_degree,
                                    **VARIANTS[variant])  # fmt: skip
    return int(out.meta["n_isects"])


def run_raster(cfg: RasterBench) -> int:
    import torch

    require_cuda_core("recon-bench raster")
    for v in cfg.variants:
        if v not in VARIANTS:
            raise InputError(None, f"unknown variant {v!r}; choose from {sorted(VARIANTS)}")
    have_gsplat = False
    if cfg.gsplat:
        try:
            import gsplat  # noqa: F401

            have_gsplat = True
        except Exception as exc:  # noqa: BLE001
            print(f"note: gsplat not importable ({exc}); timing recon only", file=sys.stderr)
    dev = torch.device("cuda")
    data = cfg.data or (Path(os.environ["RECON_DATA"]) if os.environ.get("RECON_DATA") else None)
    info = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gsplat": __import__("gsplat").__version__ if have_gsplat else None,
        "sh_degree": cfg.sh_degree,
        "warmup": cfg.warmup,
        "iters": cfg.iters,
    }
    rows = []
    for scene in cfg.scenes:
        if scene == "garden":
            if data is None:
                raise InputError(None, "scene 'garden' needs --data or $RECON_DATA")
            tensors, viewmats, Ks, w, h = garden_scene(data, cfg.sh_degree, cfg.seed, dev)
            label = f"garden ({tensors[0].shape[0] / 1e3:.0f}k, {viewmats.shape[0]} cams, {w}x{h})"
        else:
            n = _parse_count(scene)
            tensors, viewmats, Ks, w, h = synthetic_scene(n, cfg.width, cfg.height, cfg.sh_degree, cfg.seed, dev)
            label = f"synthetic {scene} ({w}x{h})"
        ref = None
        if have_gsplat:
            ref = _measure(_gsplat_renderer(viewmats, Ks, w, h, cfg.sh_degree), tensors, cfg)
            rows.append(dict(scene=label, impl="gsplat 1.5.3", **{k: v for k, v in ref.items() if k != "image"}))
            torch.cuda.empty_cache()
        for variant in cfg.variants:
            res = _measure(_recon_renderer(viewmats, Ks, w, h, cfg.sh_degree, variant), tensors, cfg)
            row = dict(scene=label, impl=f"recon ({variant})", **{k: v for k, v in res.items() if k != "image"})
            row["isects"] = _isects(tensors, viewmats, Ks, w, h, cfg.sh_degree, variant)
            if ref is not None:
                row["fwd_ratio"] = res["fwd_ms"] / ref["fwd_ms"]
                row["fwdbwd_ratio"] = res["fwdbwd_ms"] / ref["fwdbwd_ms"]
                row["mem_ratio"] = res["peak_mib"] / ref["peak_mib"]
                row["mean_abs_diff_vs_gsplat"] = (res["image"] - ref["image"]).abs().mean().item()
            rows.append(row)
            torch.cuda.empty_cache()
        if cfg.profile:
            _profile(tensors, viewmats, Ks, w, h, cfg)
        del tensors
        torch.cuda.empty_cache()
        if cfg.convexes and scene != "garden":  # after the Gaussians are freed: peak memory is the convexes' own
            from recon.bench_convex import convex_rows

            rows += convex_rows(_parse_count(scene), cfg, [r for r in rows if r["scene"] == label])
        if cfg.triangles and scene != "garden":
            from recon.bench_triangle import triangle_rows

            rows += triangle_rows(_parse_count(scene), cfg, [r for r in rows if r["scene"] == label])
    md = _markdown(info, rows)
    if cfg.convexes:
        from recon.bench_convex import convex_markdown

        md += "\nConvexes (anchors.md frame; the 3DCS columns divide by numbers recorded in anchors.md, not measured here):\n\n"
        md += convex_markdown(rows)
    if cfg.triangles:
        from recon.bench_triangle import triangle_markdown

        md += ("\nTriangles (anchors.md frame; the TS columns divide by the official Triangle Splatting numbers recorded "
               "in anchors.md, not measured here):\n\n")  # fmt: skip
        md += triangle_markdown(rows)
    print(md)
    if cfg.out is not None:
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / "results.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2))
        (cfg.out / "results.md").write_text(md)
    return 0


def _profile(tensors, viewmats, Ks, w, h, cfg: RasterBench) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    render = _recon_renderer(viewmats, Ks, w, h, cfg.sh_degree, cfg.variants[0])
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    def step():
        for t in leaves:
            t.grad = None
        render(leaves).sum().backward()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))


def _markdown(info: dict, rows: list[dict]) -> str:
    head = (f"GPU: {info['gpu']}; torch {info['torch']}; CUDA {info['cuda']}; gsplat {info['gsplat']}; "
            f"SH degree {info['sh_degree']}; median of {info['iters']} after {info['warmup']} warm-up\n\n")  # fmt: skip
    lines = ["| scene | renderer | fwd ms | fwd+bwd ms | peak MiB | tile isects | fwd ratio | fwd+bwd ratio | mem ratio |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def f(v, p=2):
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{p}f}"

    for r in rows:
        lines.append(
            f"| {r['scene']} | {r['impl']} | {f(r['fwd_ms'])} | {f(r['fwdbwd_ms'])} | {f(r['peak_mib'], 0)} | "
            f"{r.get('isects', '—')} | {f(r.get('fwd_ratio'))} | {f(r.get('fwdbwd_ratio'))} | {f(r.get('mem_ratio'))} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import tyro

    from recon.cli.bench_hashgrid import HashGridBench, run_hashgrid

    cmd = tyro.extras.subcommand_cli_from_dict({"raster": RasterBench, "hashgrid": HashGridBench}, args=argv, prog="recon-bench")
    if isinstance(cmd, RasterBench):
        return run_raster(cmd)
    if isinstance(cmd, HashGridBench):
        return run_hashgrid(cmd)
    raise InputError(None, f"unknown benchmark {cmd!r}")


def entrypoint() -> None:
    run_cli(main)


if __name__ == "__main__":
    entrypoint()
