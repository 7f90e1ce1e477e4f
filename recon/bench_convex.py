"""Convex rows of ``recon-bench raster --convexes``: recon's convex rasterizer on the anchors.md frame.

Frame (``shared/notes/anchors.md``, "Convex and triangle rasterizers"): one camera 1297x840, focal 1100,
SH degree 3, centres uniform in the view between depths 2 and 12, sizes ~U(0.002, 0.022) x 1.2 (the 3DCS
initial radius factor): each convex is 6 points on a randomly rotated Fibonacci sphere of that radius.
Two edge regimes, as in the anchor table:

- ``sharp``: the footprint's transition about 1 px wide (``s^2 sigma delta |edge| = 4`` per pixel);
- ``soft``: 3DCS's initial values (``delta = 0.1 / size``, ``sigma = 9.5e-4``).

Each row prints fwd / fwd+bwd ms, peak MiB and tile intersections, the cost per million intersections
against recon's own Gaussian path measured in the same run on the Gaussian scene of the same count
(``per_isect_vs_gaussians``), and the ratio of fwd+bwd to the official 3DCS rasterizer's numbers
*recorded* in anchors.md (a recorded anchor, not measured in this run; same GPU class).
"""

from __future__ import annotations

# Official 3DCS rasterizer, one H100, recorded in shared/notes/anchors.md (fwd ms, fwd+bwd ms, peak MiB,
# tile intersections); ranges are given there, the upper end is used here (the conservative side for us).
RECORDED_3DCS = {
    ("sharp", 100_000): dict(fwd_ms=1.1, fwdbwd_ms=2.1, peak_mib=382, isects=166_000),
    ("sharp", 1_000_000): dict(fwd_ms=6.8, fwdbwd_ms=15.0, peak_mib=1575, isects=1_660_000),
    ("soft", 1_000_000): dict(fwd_ms=13.6, fwdbwd_ms=54.0, peak_mib=1648, isects=3_900_000),
}


def convex_scene(n: int, width: int, height: int, sh_degree: int, seed: int, device, edges: str = "sharp"):
    """The anchors.md convex frame: ``[points, deltas, sigmas, opacities, coeffs], viewmat, K``."""
    import torch

    from recon.scenes.convexes import fibonacci_sphere

    g = torch.Generator(device="cpu").manual_seed(seed)
    f = 1100.0
    z = torch.rand(n, generator=g) * 10 + 2
    x = (torch.rand(n, generator=g) - 0.5) * width / f * z
    y = (torch.rand(n, generator=g) - 0.5) * height / f * z
    size = torch.rand(n, generator=g) * 0.02 + 0.002
    radius = 1.2 * size
    q = torch.randn(n, 4, generator=g)
    from recon.rasterizers.reference.projection import quat_to_rotmat

    R = quat_to_rotmat(q / q.norm(dim=-1, keepdim=True))
    sphere = torch.as_tensor(fibonacci_sphere(6), dtype=torch.float32)
    points = torch.stack([x, y, z], -1)[:, None] + torch.einsum("nij,kj->nki", R, sphere) * radius[:, None, None]
    if edges == "sharp":
        # A_j ~ s delta |edge| d; pick delta so A is ~ the pixel distance d, then sigma so beta phi ~ 4 d
        r_px = (f * radius / z).clamp_min(0.1)
        deltas = 1.0 / (z * r_px)
        sigmas = 4.0 / z
    elif edges == "soft":
        deltas = 0.1 / size
        sigmas = torch.full((n,), 9.5e-4)
    else:
        raise ValueError(f"edges must be 'sharp' or 'soft', got {edges!r}")
    opac = torch.rand(n, generator=g) * 0.95 + 0.05
    coeffs = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.2
    viewmat = torch.eye(4)
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    dev = lambda t: t.to(device).contiguous()  # noqa: E731
    return [dev(t) for t in (points, deltas, sigmas, opac, coeffs)], dev(viewmat), dev(K)


def convex_rows(n: int, cfg, gaussian_rows: list[dict], edge_modes=("sharp", "soft")) -> list[dict]:
    """Time recon's convex path for ``n`` convexes (both edge regimes); ``gaussian_rows``: this run's recon
    Gaussian rows for the same count (the same-run per-intersection anchor)."""
    import torch

    from recon.bench_common import add_per_isect, add_recorded_ratios, gaussian_anchor_row, measure_primitive
    from recon.rasterizers.convexes import render_convexes_cuda

    g_row = gaussian_anchor_row(gaussian_rows)
    rows = []
    for edges in edge_modes:
        tensors, viewmat, K = convex_scene(n, cfg.width, cfg.height, cfg.sh_degree, cfg.seed, torch.device("cuda"), edges)

        def render(leaves, meta=None):
            out = render_convexes_cuda(*leaves, viewmat, K, cfg.width, cfg.height, sh_degree=cfg.sh_degree)
            if meta is not None:
                meta.update(out.meta)
            return out.image

        row = measure_primitive(render, tensors, cfg, scene=f"convex frame {n / 1e3:.0f}k ({cfg.width}x{cfg.height})",
                                impl=f"recon convexes ({edges})", visible=lambda meta: (meta["radii"] > 0).sum())  # fmt: skip
        add_per_isect(row, g_row)
        add_recorded_ratios(row, RECORDED_3DCS.get((edges, n)), "3dcs")
        rows.append(row)
        del tensors
        torch.cuda.empty_cache()
    return rows


def convex_markdown(rows: list[dict]) -> str:
    """The convex rows as a table (the recorded-anchor columns say so)."""

    from recon.bench_common import fmt as f

    lines = [
        "| scene | renderer | fwd ms | fwd+bwd ms | peak MiB | tile isects | coverage | fwd+bwd ms / M isects | "
        "per isect vs recon Gaussians (same run) | fwd+bwd vs 3DCS (recorded anchor) | mem vs 3DCS (recorded anchor) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not str(r.get("impl", "")).startswith("recon convexes"):
            continue
        lines.append(
            f"| {r['scene']} | {r['impl']} | {f(r['fwd_ms'])} | {f(r['fwdbwd_ms'])} | {f(r['peak_mib'], 0)} | {r['isects']} | "
            f"{f(r['coverage'])} | {f(r['fwdbwd_ms_per_m_isects'])} | {f(r.get('per_isect_vs_gaussians'))} | "
            f"{f(r.get('fwdbwd_vs_recorded_3dcs'))} | {f(r.get('mem_vs_recorded_3dcs'))} |"
        )
    return "\n".join(lines) + "\n"


def profile(n: int = 1_000_000, edges: str = "sharp", width: int = 1297, height: int = 840, sh_degree: int = 3) -> None:
    """Print the CUDA kernel time table of recon's convex fwd+bwd on the anchors.md frame (torch.profiler)."""
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from recon.rasterizers.convexes import render_convexes_cuda

    tensors, viewmat, K = convex_scene(n, width, height, sh_degree, 0, torch.device("cuda"), edges)
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]

    def step():
        for t in leaves:
            t.grad = None
        render_convexes_cuda(*leaves, viewmat, K, width, height, sh_degree=sh_degree).image.sum().backward()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=16, max_name_column_width=60))
