"""Triangle rows of ``recon-bench raster --triangles``: recon's triangle rasterizer on the anchors.md frame.

Frame (``shared/notes/anchors.md``, "Convex and triangle rasterizers"): one camera 1297x840, focal 1100,
SH degree 3, centres uniform in the view between depths 2 and 12, sizes ``d ~ U(0.002, 0.022)``; each
triangle has its vertices at ``2.23 d`` from its centre along three independent uniformly random unit
directions (Triangle Splatting's initialisation: random directions scaled by ``k d``, ``k = 2.23``).
Independent directions, not an equilateral triple: with them this frame reproduces the anchor's culled
share (67 % here, 63 % recorded) and its intersection counts (bounding-rect tiles 85k / 852k / 2.2M against
the recorded 71k / 707k / 1.78M, which the official rasterizer counts on opacity-shrunk triangles); an
equilateral triple culls only 44 % and doubles the intersections. Window exponent ``sigma = 1.16`` (the
trainer's initial value), opacities ~U(0.05, 1) and SH coefficients ~N(0, 0.2^2) as in the Gaussian and
convex frames. Variants: ``1x`` and, where the anchor table has it, ``2x`` (every triangle twice as large,
same centres and directions).

recon culls as the official rasterizer does (``TriangleSettings`` defaults: inradius or extent under 1 px),
so most triangles of this frame are dropped (anchors.md: 63 %); each row prints its own culled share.
The renderer is :func:`recon.rasterizers.triangles.render_triangles` with ``backend="cuda"`` and its
training defaults (the per-triangle max blending weight is computed, as the official rasterizer does).

Each row prints fwd / fwd+bwd ms, peak MiB, tile intersections, coverage, the cost per million
intersections against recon's own Gaussian path measured in the same run on the Gaussian scene of the
same count (``per_isect_vs_gaussians``), and ratios against the official Triangle Splatting rasterizer's
numbers *recorded* in anchors.md (not measured in this run): plain, and at equal intersections (each
side's fwd+bwd ms per million of its own tile intersections).
"""

from __future__ import annotations

FOCAL = 1100.0
INIT_SIZE = 2.23  # Triangle Splatting's initial vertex distance, in units of the point spacing
INIT_SIGMA = 1.16  # Triangle Splatting's initial window exponent

# Official Triangle Splatting rasterizer, one H100, recorded in shared/notes/anchors.md: (size scale, N) ->
# fwd ms, fwd+bwd ms, peak MiB (None: not recorded), tile intersections.
RECORDED_TS = {
    (1.0, 100_000): dict(fwd_ms=0.36, fwdbwd_ms=0.97, peak_mib=343, isects=71_000),
    (1.0, 1_000_000): dict(fwd_ms=0.94, fwdbwd_ms=2.95, peak_mib=1161, isects=707_000),
    (2.0, 1_000_000): dict(fwd_ms=1.14, fwdbwd_ms=4.67, peak_mib=None, isects=1_780_000),
}


def triangle_scene(n: int, width: int, height: int, sh_degree: int, seed: int, device, size_scale: float = 1.0):
    """The anchors.md triangle frame: ``[vertices [N,3,3], opacities [N], sigmas [N], coeffs [N,K,3]], viewmat, K``.

    ``size_scale`` multiplies every triangle's size about its centre (same centres and directions)."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.rand(n, generator=g) * 10 + 2
    x = (torch.rand(n, generator=g) - 0.5) * width / FOCAL * z
    y = (torch.rand(n, generator=g) - 0.5) * height / FOCAL * z
    size = torch.rand(n, generator=g) * 0.02 + 0.002
    dirs = torch.randn(n, 3, 3, generator=g)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)  # [N, 3 vertices, xyz]: uniform on the unit sphere
    opac = torch.rand(n, generator=g) * 0.95 + 0.05
    coeffs = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.2
    radius = INIT_SIZE * float(size_scale) * size
    centres = torch.stack([x, y, z], -1)
    vertices = centres[:, None] + dirs * radius[:, None, None]
    sigmas = torch.full((n,), INIT_SIGMA)
    viewmat = torch.eye(4)
    K = torch.tensor([[FOCAL, 0.0, width / 2], [0.0, FOCAL, height / 2], [0.0, 0.0, 1.0]])
    dev = lambda t: t.to(device).contiguous()  # noqa: E731
    return [dev(t) for t in (vertices, opac, sigmas, coeffs)], dev(viewmat), dev(K)


def triangle_renderer(viewmat, K, width: int, height: int, sh_degree: int, backend: str = "cuda"):
    """``render(leaves, meta=None) -> image [H, W, 3]`` for leaves ``[vertices, opacities, sigmas, coeffs]``."""
    from recon.rasterizers.triangles import render_triangles

    def render(leaves, meta=None):
        vertices, opacities, sigmas, coeffs = leaves
        out = render_triangles(vertices, opacities, sigmas, coeffs, viewmat, K, width, height, sh_degree=sh_degree,
                               backend=backend)  # fmt: skip
        if meta is not None:
            meta.update(out.meta)
        return out.image

    return render


def size_variants(n: int) -> list[float]:
    """Size scales timed at ``n``: 1x always, larger ones only where anchors.md recorded them."""
    return [1.0] + sorted(s for (s, m) in RECORDED_TS if m == n and s != 1.0)


def variant_name(size_scale: float) -> str:
    return "recon triangles" if size_scale == 1.0 else f"recon triangles ({size_scale:g}x larger)"


def finish_row(row: dict, n: int, size_scale: float, g_row: dict | None) -> dict:
    """Add the culled share, the same-run Gaussian ratio and the recorded-anchor ratios to a timed row."""
    from recon.bench_common import add_per_isect, add_recorded_ratios

    row["n"] = n
    row["size_scale"] = size_scale
    row["culled_fraction"] = 1.0 - row["visible"] / max(n, 1)
    add_per_isect(row, g_row)
    add_recorded_ratios(row, RECORDED_TS.get((size_scale, n)), "ts", per_isect=True)
    return row


def triangle_rows(n: int, cfg, gaussian_rows: list[dict]) -> list[dict]:
    """Time recon's triangle path for ``n`` triangles (each size variant); ``gaussian_rows``: this run's recon
    Gaussian rows for the same count (the same-run per-intersection anchor)."""
    import torch

    from recon.bench_common import gaussian_anchor_row, measure_primitive

    g_row = gaussian_anchor_row(gaussian_rows)
    rows = []
    for scale in size_variants(n):
        tensors, viewmat, K = triangle_scene(n, cfg.width, cfg.height, cfg.sh_degree, cfg.seed, torch.device("cuda"), scale)
        render = triangle_renderer(viewmat, K, cfg.width, cfg.height, cfg.sh_degree, backend="cuda")
        row = measure_primitive(render, tensors, cfg, scene=f"triangle frame {n / 1e3:.0f}k ({cfg.width}x{cfg.height})",
                                impl=variant_name(scale), visible=lambda meta: (meta["inradii"] > 0).sum())  # fmt: skip
        rows.append(finish_row(row, n, scale, g_row))
        del tensors
        torch.cuda.empty_cache()
    return rows


TABLE_HEADER = (
    "| scene | renderer | fwd ms | fwd+bwd ms | peak MiB | tile isects | culled (< 1 px) | coverage | fwd+bwd ms / M isects | "
    "per isect vs recon Gaussians (same run) | fwd vs TS (recorded anchor) | fwd+bwd vs TS (recorded anchor) | "
    "fwd+bwd per isect vs TS (recorded anchor, equal isects) | mem vs TS (recorded anchor) |"
)


def triangle_markdown(rows: list[dict]) -> str:
    """The triangle rows as a table (the recorded-anchor columns say so)."""
    from recon.bench_common import fmt as f

    lines = [TABLE_HEADER, "|" + "---|" * TABLE_HEADER.count(" |")]
    for r in rows:
        if not str(r.get("impl", "")).startswith("recon triangles"):
            continue
        lines.append(
            f"| {r['scene']} | {r['impl']} | {f(r['fwd_ms'])} | {f(r['fwdbwd_ms'])} | {f(r['peak_mib'], 0)} | {r['isects']} | "
            f"{f(100 * r['culled_fraction'], 0)} % | {f(r['coverage'])} | {f(r['fwdbwd_ms_per_m_isects'])} | "
            f"{f(r.get('per_isect_vs_gaussians'))} | {f(r.get('fwd_vs_recorded_ts'))} | {f(r.get('fwdbwd_vs_recorded_ts'))} | "
            f"{f(r.get('fwdbwd_per_isect_vs_recorded_ts'))} | {f(r.get('mem_vs_recorded_ts'))} |"
        )
    return "\n".join(lines) + "\n"
