"""``recon-bench hashgrid``: recon's CUDA hash encoding against a ``torch.compile``d PyTorch encoding.

Both encode the same points with the same table (tiny-cuda-nn conventions); times are medians of CUDA
event timings after warm-up, measured in the same run, and the ratio column is recon / compiled
PyTorch. Forward+backward means the output's gradient flowing back to the table (x needs no grad), as
in training a neural field. If ``torch.compile`` fails (e.g. no working Triton), the baseline falls back
to eager PyTorch and the table says so.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from recon.bench_common import require_cuda_core
from recon.errors import InputError


@dataclass
class HashGridBench:
    """Forward and forward+backward time of the hash encoding for many points."""

    n_points: int = 2**18
    n_levels: int = 16
    n_features: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    finest_resolution: int = 2048
    interpolation: str = "linear"
    table_dtypes: tuple[str, ...] = ("float32", "float16")
    """Table storage types timed for recon's kernels (the baseline always uses float32)."""
    layouts: tuple[str, ...] = ("row", "feature")
    """Output storage of recon's kernels: 'row' ([N, L*F] row-major) and/or 'feature' (feature-major,
    [L*F, N] returned transposed: coalesced writes)."""
    pair_loads: tuple[bool, ...] = (True, False)
    """recon kernels with and/or without paired 16-byte loads / float4 atomics for x-neighbouring corners."""
    orders: tuple[str, ...] = ("random", "morton")
    """Point orders: 'random' (uniform points as given) and/or 'morton' (the same points sorted along a
    Z-order curve, as rays marched in tiles roughly are): shows how much memory locality matters."""
    compile: bool = True
    """Time the torch.compile'd baseline (else eager PyTorch)."""
    eager: bool = False
    """Also time eager PyTorch."""
    warmup: int = 10
    iters: int = 50
    seed: int = 0
    per_level: bool = False
    """Also time recon's kernels one level at a time (all other levels masked; the 'none' row is the cost
    of a call with every level masked, to subtract)."""
    profile: bool = False
    """Print the CUDA kernel table of one recon forward+backward (torch.profiler)."""
    out: Path | None = None
    """Write results.json and results.md here."""


def morton_order(x):
    """Permutation sorting points in [0,1]^3 along a 30-bit Z-order (Morton) curve."""
    import torch

    q = (x.clamp(0, 1) * 1023).long()

    def spread(v):
        v = (v | (v << 16)) & 0x030000FF
        v = (v | (v << 8)) & 0x0300F00F
        v = (v | (v << 4)) & 0x030C30C3
        return (v | (v << 2)) & 0x09249249

    code = spread(q[:, 0]) | (spread(q[:, 1]) << 1) | (spread(q[:, 2]) << 2)
    return torch.argsort(code)


def _time(fn, warmup: int, iters: int) -> float:
    from recon.cli.bench import _time as time_cuda

    return time_cuda(fn, warmup, iters)


def _measure(encode, x, table, cfg: HashGridBench) -> dict:
    import torch

    leaf = table.detach().clone().requires_grad_(True)
    y0 = encode(x, leaf)
    # the same cotangent for every implementation, so their table gradients can be compared
    gen = torch.Generator(device=x.device).manual_seed(cfg.seed + 1)
    # laid out like the output (as the gradient from a consumer such as a matmul would be)
    cot = torch.empty_like(y0).copy_(torch.randn(y0.shape, generator=gen, device=x.device))

    def fwd():
        with torch.no_grad():
            encode(x, leaf)

    def fwd_bwd():
        leaf.grad = None
        (encode(x, leaf) * cot).sum().backward()

    res = {"fwd_ms": _time(fwd, cfg.warmup, cfg.iters), "fwdbwd_ms": _time(fwd_bwd, cfg.warmup, cfg.iters)}
    leaf.grad = None
    fwd_bwd()
    res["out"] = y0.detach().float()
    res["grad"] = leaf.grad.detach().float()
    return res


def run_hashgrid(cfg: HashGridBench) -> int:
    import torch

    from recon.rasterizers.hashgrid import HashGridConfig, hash_grid_encode_cuda, init_table
    from recon.rasterizers.reference.hashgrid import VectorizedHashGrid

    require_cuda_core("recon-bench hashgrid")
    for layout in cfg.layouts:
        if layout not in ("row", "feature"):
            raise InputError(None, f"unknown layout {layout!r}: use 'row' or 'feature'")
    for order in cfg.orders:
        if order not in ("random", "morton"):
            raise InputError(None, f"unknown order {order!r}: use 'random' or 'morton'")
    dev = torch.device("cuda")
    grid = HashGridConfig(n_levels=cfg.n_levels, n_features=cfg.n_features, log2_table_size=cfg.log2_table_size,
                          base_resolution=cfg.base_resolution, finest_resolution=cfg.finest_resolution,
                          interpolation=cfg.interpolation)  # fmt: skip
    g = torch.Generator().manual_seed(cfg.seed)
    points = torch.rand(cfg.n_points, 3, generator=g).to(dev)
    table = init_table(grid, generator=g).to(dev)
    table.mul_(1e3)  # values ~U(-0.1, 0.1): differences between implementations are then visible

    baseline_fn = VectorizedHashGrid(grid, device=dev)
    label = "torch.compile"
    if cfg.compile:
        try:
            compiled = torch.compile(baseline_fn.__call__, dynamic=False)
            compiled(points, table.clone().requires_grad_(True)).sum().backward()
            torch.cuda.synchronize()
            baseline = compiled
        except Exception as exc:  # noqa: BLE001
            print(f"note: torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                  "falling back to eager PyTorch", file=sys.stderr)  # fmt: skip
            baseline, label = baseline_fn, "eager PyTorch (compile failed)"
    else:
        baseline, label = baseline_fn, "eager PyTorch"

    info = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
            "n_points": cfg.n_points, "levels": cfg.n_levels, "features": cfg.n_features,
            "log2_table": cfg.log2_table_size, "resolution": f"{cfg.base_resolution}..{cfg.finest_resolution}",
            "interpolation": cfg.interpolation, "table_rows": table.shape[0], "warmup": cfg.warmup, "iters": cfg.iters}  # fmt: skip
    rows = []
    for order in cfg.orders:
        x = points if order == "random" else points[morton_order(points)].contiguous()
        ref = _measure(baseline, x, table, cfg)
        rows.append(dict(order=order, impl=f"{label} (float32 table)", fwd_ms=ref["fwd_ms"], fwdbwd_ms=ref["fwdbwd_ms"]))
        if cfg.eager and label.startswith("torch.compile"):
            eager = _measure(baseline_fn, x, table, cfg)
            rows.append(dict(order=order, impl="eager PyTorch (float32 table)", fwd_ms=eager["fwd_ms"],
                             fwdbwd_ms=eager["fwdbwd_ms"], fwd_ratio=eager["fwd_ms"] / ref["fwd_ms"],
                             fwdbwd_ratio=eager["fwdbwd_ms"] / ref["fwdbwd_ms"]))  # fmt: skip
            del eager
        for dtype, layout, pair in itertools.product(cfg.table_dtypes, cfg.layouts, cfg.pair_loads):
            t = table.to(getattr(torch, dtype))
            fm = layout == "feature"
            res = _measure(lambda xx, tt: hash_grid_encode_cuda(xx, tt, grid, feature_major=fm, pair_loads=pair), x, t, cfg)
            name = f"recon CUDA ({dtype} table, {layout}-major out{', pair loads' if pair else ''})"
            rows.append(dict(order=order, impl=name, fwd_ms=res["fwd_ms"], fwdbwd_ms=res["fwdbwd_ms"],
                             fwd_ratio=res["fwd_ms"] / ref["fwd_ms"], fwdbwd_ratio=res["fwdbwd_ms"] / ref["fwdbwd_ms"],
                             max_abs_diff_out=(res["out"] - ref["out"]).abs().max().item(),
                             max_abs_diff_grad=(res["grad"] - ref["grad"]).abs().max().item()))  # fmt: skip
            del res
        del ref
        torch.cuda.empty_cache()
    if cfg.profile:
        _profile(points, table, grid)
    md = _markdown(info, rows, label)
    if cfg.per_level:
        md += "\n" + _per_level(points, table, grid, cfg)
    print(md)
    if cfg.out is not None:
        from recon.utils.atomic import write_text_atomic

        cfg.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cfg.out / "results.json", json.dumps({"info": info, "rows": rows}, indent=2))
        write_text_atomic(cfg.out / "results.md", md)
    return 0


def _per_level(points, table, grid, cfg: HashGridBench) -> str:
    """Markdown table: recon fwd and fwd+bwd time with one level active at a time (float32 table,
    feature-major output, pair loads, random order)."""
    import torch

    from recon.rasterizers.hashgrid import hash_grid_encode_cuda, level_layout

    lay = level_layout(grid)
    lines = ["| level | resolution | rows | dense | fwd ms | fwd+bwd ms |", "|---|---|---|---|---|---|"]
    for level in [None, *range(grid.n_levels)]:
        # a device tensor: no host-to-device copy inside the timed calls
        mask = torch.zeros(grid.n_levels, dtype=torch.bool, device=points.device)
        if level is not None:
            mask[level] = True
        enc = lambda xx, tt: hash_grid_encode_cuda(xx, tt, grid, level_mask=mask, feature_major=True)  # noqa: E731
        res = _measure(enc, points, table, cfg)
        if level is None:
            lines.append(f"| none | | | | {res['fwd_ms']:.4f} | {res['fwdbwd_ms']:.4f} |")
        else:
            lines.append(f"| {level} | {lay.resolutions[level]} | {lay.sizes[level]} | {lay.dense[level]} | "
                         f"{res['fwd_ms']:.4f} | {res['fwdbwd_ms']:.4f} |")  # fmt: skip
        del res
    torch.cuda.empty_cache()
    return "Per level (one level active, the rest masked):\n\n" + "\n".join(lines) + "\n"


def _profile(points, table, grid) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from recon.rasterizers.hashgrid import hash_grid_encode_cuda

    leaf = table.detach().clone().requires_grad_(True)

    def step():
        leaf.grad = None
        hash_grid_encode_cuda(points, leaf, grid, feature_major=True).sum().backward()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=70))


def _markdown(info: dict, rows: list[dict], label: str) -> str:
    head = (f"GPU: {info['gpu']}; torch {info['torch']}; CUDA {info['cuda']}; {info['n_points']} points, "
            f"{info['levels']} levels x {info['features']} features, table 2^{info['log2_table']} "
            f"({info['table_rows']} rows), resolution {info['resolution']}, {info['interpolation']}; "
            f"median of {info['iters']} after {info['warmup']} warm-up; ratio = time / {label} time\n\n")  # fmt: skip
    lines = ["| points | implementation | fwd ms | fwd+bwd ms | fwd ratio | fwd+bwd ratio | max |out diff| | max |grad diff| |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def f(v, p=3):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        return f"{v:.{p}f}" if p else f"{v:.1e}"

    for r in rows:
        lines.append(f"| {r['order']} | {r['impl']} | {f(r['fwd_ms'])} | {f(r['fwdbwd_ms'])} | {f(r.get('fwd_ratio'))} | "
                     f"{f(r.get('fwdbwd_ratio'))} | {f(r.get('max_abs_diff_out'), 0)} | {f(r.get('max_abs_diff_grad'), 0)} |")  # fmt: skip
    return head + "\n".join(lines) + "\n"
