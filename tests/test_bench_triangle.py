"""CPU checks of ``recon-bench raster --triangles``: the anchors.md triangle frame, the row arithmetic and the
table. (The timings themselves need CUDA and are never asserted.)"""

from __future__ import annotations

import math

import pytest
import torch

from recon.bench_common import add_per_isect, add_recorded_ratios, fmt, gaussian_anchor_row, ms_per_m_isects
from recon.bench_triangle import (
    FOCAL,
    INIT_SIGMA,
    INIT_SIZE,
    RECORDED_TS,
    TABLE_HEADER,
    finish_row,
    size_variants,
    triangle_markdown,
    triangle_renderer,
    triangle_scene,
    variant_name,
)

W, H = 1297, 840


def _frame(n=4000, seed=0, scale=1.0, sh_degree=3, width=W, height=H):
    return triangle_scene(n, width, height, sh_degree, seed, torch.device("cpu"), scale)


def test_scene_shapes_and_parameters():
    (verts, opac, sigmas, coeffs), viewmat, K = _frame(n=500, sh_degree=3)
    assert verts.shape == (500, 3, 3) and opac.shape == (500,) and sigmas.shape == (500,)
    assert coeffs.shape == (500, 16, 3)
    assert triangle_scene(7, W, H, 1, 0, "cpu")[0][3].shape == (7, 4, 3)
    assert torch.all(sigmas == INIT_SIGMA)
    assert opac.min() >= 0.05 and opac.max() <= 1.0
    assert torch.equal(viewmat, torch.eye(4))
    assert K[0, 0] == FOCAL and K[1, 1] == FOCAL and K[0, 2] == W / 2 and K[1, 2] == H / 2


def _centres_and_offsets(n, seed=0):
    """Each triangle's centre and vertex offsets, recovered from the outputs alone: the 1x and 2x frames of
    one seed share centres c and offsets o (v1 = c + o, v2 = c + 2 o), so c = 2 v1 - v2 and o = v2 - v1."""
    v1 = _frame(n=n, seed=seed)[0][0].double()
    v2 = _frame(n=n, seed=seed, scale=2.0)[0][0].double()
    return 2 * v1 - v2, v2 - v1


def test_scene_depths_view_and_sizes():
    n = 4000
    centres, offsets = _centres_and_offsets(n)
    # centres fill the view between depths 2 and 12
    z = centres[:, 0, 2]
    assert torch.allclose(centres, centres[:, :1].expand(-1, 3, -1), atol=1e-5)
    assert z.min() >= 2 - 1e-5 and z.max() <= 12 + 1e-5
    assert z.min() < 2.1 and z.max() > 11.9
    u = FOCAL * centres[:, 0, 0] / z + W / 2
    v = FOCAL * centres[:, 0, 1] / z + H / 2
    assert u.min() >= -1e-2 and u.max() <= W + 1e-2 and v.min() >= -1e-2 and v.max() <= H + 1e-2
    assert u.min() < 0.02 * W and u.max() > 0.98 * W and v.min() < 0.02 * H and v.max() > 0.98 * H
    # all three vertices at distance 2.23 * d from the centre, d ~ U(0.002, 0.022)
    radii = offsets.norm(dim=-1)
    r = radii[:, 0]
    assert torch.allclose(radii, r[:, None].expand(-1, 3), rtol=1e-3)
    assert r.min() >= INIT_SIZE * 0.002 * (1 - 1e-3) and r.max() <= INIT_SIZE * 0.022 * (1 + 1e-3)
    assert r.max() > INIT_SIZE * 0.021 and r.min() < INIT_SIZE * 0.003  # the whole range is used
    verts = _frame(n=n)[0][0]
    assert torch.allclose(verts.double(), centres + offsets, atol=1e-5)


def test_scene_directions_are_independent_not_equilateral():
    _, offsets = _centres_and_offsets(4000)
    unit = offsets / offsets.norm(dim=-1, keepdim=True)
    cos01 = (unit[:, 0] * unit[:, 1]).sum(-1)
    # independent uniform directions: cosines spread over [-1, 1] with mean ~0 (an equilateral triple: all -0.5)
    assert cos01.std() > 0.4 and abs(float(cos01.mean())) < 0.1
    assert abs(float(unit[..., 2].mean())) < 0.05  # no preferred orientation


def test_scene_deterministic_and_size_scale():
    a, _, _ = _frame(n=300, seed=3)
    b, _, _ = _frame(n=300, seed=3)
    c, _, _ = _frame(n=300, seed=4)
    big, _, _ = _frame(n=300, seed=3, scale=2.0)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])
    # 2x larger: the same opacities, sigmas, colours; vertices farther from the (shared) centres
    for x, y in zip(a[1:], big[1:]):
        assert torch.equal(x, y)
    assert not torch.allclose(a[0], big[0])


def test_sub_pixel_share_matches_the_anchor():
    # anchors.md: the official rasterizer drops 63 % of this frame's triangles (inradius or extent < 1 px);
    # recon's reference projection with the same thresholds culls a similar share on the generated frame
    from recon.rasterizers.reference.triangle import TriangleSettings, project_triangles
    from recon.rasterizers.types import RasterSettings

    (verts, opac, sigmas, _), viewmat, K = _frame(n=20_000)
    proj = project_triangles(verts, opac, sigmas, viewmat, K, W, H, RasterSettings(), TriangleSettings())
    culled = 1 - float(proj.valid.float().mean())
    assert 0.58 < culled < 0.72


def test_renderer_argument_order_on_reference_backend():
    # a small frame through the same closure the benchmark times (reference backend on the CPU): the leaves
    # [vertices, opacities, sigmas, coeffs] reach render_triangles in its order, and the meta keys read by
    # the rows exist; most triangles of this frame are culled as sub-pixel
    (verts, opac, sigmas, coeffs), viewmat, K = triangle_scene(300, 96, 64, 1, 0, "cpu")
    render = triangle_renderer(viewmat, K, 96, 64, 1, backend="reference")
    meta: dict = {}
    img = render([verts, opac, sigmas, coeffs], meta)
    assert img.shape == (64, 96, 3) and torch.isfinite(img).all()
    visible = int((meta["inradii"] > 0).sum())
    assert 0 < visible < 300
    assert 0 < float((meta["n_contrib"] > 0).float().mean()) <= 1
    zeroed = render([verts, torch.zeros_like(opac), sigmas, coeffs])
    assert float(zeroed.abs().max()) == 0.0 and float(img.abs().max()) > 0.0


def test_size_variants_follow_the_recorded_anchors():
    assert size_variants(100_000) == [1.0]
    assert size_variants(1_000_000) == [1.0, 2.0]
    assert size_variants(3_000_000) == [1.0]
    assert variant_name(1.0) == "recon triangles" and variant_name(2.0) == "recon triangles (2x larger)"
    assert RECORDED_TS[(2.0, 1_000_000)]["peak_mib"] is None


def _timed_row(fwd, fwdbwd, peak, isects, visible, impl="recon triangles"):
    return dict(scene="triangle frame 1000k (1297x840)", impl=impl, fwd_ms=fwd, fwdbwd_ms=fwdbwd, peak_mib=peak,
                isects=isects, visible=visible, coverage=0.9)  # fmt: skip


def test_row_ratios():
    gaussians = [dict(impl="gsplat 1.5.3", fwdbwd_ms=9.0), dict(impl="recon (default)", fwdbwd_ms=3.0, isects=3_000_000)]
    g = gaussian_anchor_row(gaussians)
    assert g is gaussians[1]
    row = finish_row(_timed_row(0.5, 1.5, 580.5, 1_000_000, 340_000), 1_000_000, 1.0, g)
    assert row["culled_fraction"] == pytest.approx(0.66)
    assert row["fwdbwd_ms_per_m_isects"] == pytest.approx(1.5)
    assert row["per_isect_vs_gaussians"] == pytest.approx(1.5)  # 1.5 ms/M vs 3.0 / 3 = 1.0 ms/M
    assert row["fwd_vs_recorded_ts"] == pytest.approx(0.5 / 0.94)
    assert row["fwdbwd_vs_recorded_ts"] == pytest.approx(1.5 / 2.95)
    assert row["mem_vs_recorded_ts"] == pytest.approx(0.5)
    # equal intersections: (1.5 ms / 1.0M) / (2.95 ms / 0.707M)
    assert row["fwdbwd_per_isect_vs_recorded_ts"] == pytest.approx(1.5 / (2.95 / 0.707))
    # the 2x anchor has no recorded memory; a count without an anchor gets no recorded ratios
    big = finish_row(_timed_row(1.0, 4.0, 900.0, 2_000_000, 570_000, "recon triangles (2x larger)"), 1_000_000, 2.0, None)
    assert "mem_vs_recorded_ts" not in big and "per_isect_vs_gaussians" not in big
    assert big["fwdbwd_per_isect_vs_recorded_ts"] == pytest.approx((4.0 / 2.0) / (4.67 / 1.78))
    other = finish_row(_timed_row(1.0, 2.0, 100.0, 10, 5), 3_000_000, 1.0, None)
    assert not any("recorded" in k for k in other)


def test_recorded_ratios_leave_convex_keys_unchanged():
    # the convex rows use the same helper without the per-intersection column
    anchor = dict(fwd_ms=6.8, fwdbwd_ms=15.0, peak_mib=1575, isects=1)
    row = add_recorded_ratios(dict(fwd_ms=3.4, fwdbwd_ms=7.5, peak_mib=1575 / 2), anchor, "3dcs")
    added = set(row) - {"fwd_ms", "fwdbwd_ms", "peak_mib"}
    assert added == {"recorded_3dcs", "fwd_vs_recorded_3dcs", "fwdbwd_vs_recorded_3dcs", "mem_vs_recorded_3dcs"}
    assert row["fwdbwd_vs_recorded_3dcs"] == pytest.approx(0.5) and row["mem_vs_recorded_3dcs"] == pytest.approx(0.5)
    assert add_per_isect(dict(fwdbwd_ms=2.0, isects=0), None)["fwdbwd_ms_per_m_isects"] > 1e6  # no division by zero
    assert ms_per_m_isects(3.0, 2_000_000) == pytest.approx(1.5)


def test_fmt():
    assert fmt(None) == "—" and fmt(float("nan")) == "—"
    assert fmt(1.23456) == "1.23" and fmt(1160.6, 0) == "1161" and fmt(0.5, 3) == "0.500"


def test_markdown_table():
    g = dict(impl="recon (default)", fwdbwd_ms=3.0, isects=3_000_000)
    rows = [
        dict(scene="synthetic 1M (1297x840)", impl="recon (default)", fwd_ms=1.0, fwdbwd_ms=3.0, peak_mib=900.0, isects=3_000_000),
        dict(scene="convex frame 1000k (1297x840)", impl="recon convexes (sharp)", fwd_ms=3.0, fwdbwd_ms=7.0, peak_mib=1200.0,
             isects=2_000_000, coverage=0.9, fwdbwd_ms_per_m_isects=3.5),  # fmt: skip
        finish_row(_timed_row(0.5, 1.5, 580.4, 1_000_000, 340_000), 1_000_000, 1.0, g),
        finish_row(_timed_row(1.0, 4.0, 900.0, 2_000_000, 570_000, "recon triangles (2x larger)"), 1_000_000, 2.0, g),
        finish_row(_timed_row(0.2, 0.9, 100.0, 90_000, 33_000), 100_000, 1.0, None) | {"scene": "triangle frame 100k (1297x840)"},
    ]
    md = triangle_markdown(rows)
    lines = md.strip().split("\n")
    assert lines[0] == TABLE_HEADER
    ncols = TABLE_HEADER.count("|")
    assert len(lines) == 2 + 3  # header, rule, the three triangle rows (Gaussian and convex rows left out)
    assert all(line.count("|") == ncols for line in lines)
    assert "recorded anchor" in TABLE_HEADER and "same run" in TABLE_HEADER and "equal isects" in TABLE_HEADER
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:8] == ["triangle frame 1000k (1297x840)", "recon triangles", "0.50", "1.50", "580", "1000000", "66 %", "0.90"]
    assert cells[8:] == ["1.50", "1.50", f"{0.5 / 0.94:.2f}", f"{1.5 / 2.95:.2f}", f"{1.5 / (2.95 / 0.707):.2f}", "0.50"]
    big = [c.strip() for c in lines[3].strip("|").split("|")]
    assert big[1] == "recon triangles (2x larger)" and big[-1] == "—"  # no recorded memory for the 2x anchor
    small = [c.strip() for c in lines[4].strip("|").split("|")]
    assert small[9] == "—"  # no Gaussian row of that count in this run
    assert small[10] == f"{0.2 / 0.36:.2f}"
    assert not math.isnan(float(small[12]))


def test_cli_flag_parses():
    import tyro

    from recon.cli.bench import RasterBench

    cfg = tyro.cli(RasterBench, args=["--scenes", "100k", "1M", "--triangles", "--no-gsplat"])
    assert cfg.triangles and not cfg.convexes and not cfg.gsplat and cfg.scenes == ("100k", "1M")
    assert tyro.cli(RasterBench, args=[]).triangles is False
