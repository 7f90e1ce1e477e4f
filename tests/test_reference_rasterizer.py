"""Reference (pure-PyTorch) rasterizer: gradchecks, dense-vs-tiled equality, analytic scenes.

Everything here is CPU-only, float64 where gradients are checked, and fast (tiny scenes).
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from recon.rasterizers import RasterSettings, RenderOutput, render_gaussians
from recon.rasterizers.gaussians import render_gaussians_reference
from recon.rasterizers.reference import (
    SH_C0,
    composite,
    eval_sh,
    gaussian_footprint,
    intersect_tiles,
    project_gaussians,
    quat_to_rotmat,
    rgb_to_sh,
    scales_quats_to_covars,
    sh_basis,
    sh_to_rgb,
)
from recon.rasterizers.reference.tiles import plan_tile_chunks, rects_to_tile_rects, tile_lists, tile_pixels

F64 = torch.float64


def _camera(width, height, f=None, dtype=F64):
    f = f if f is not None else float(max(width, height))
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]], dtype=dtype)
    return torch.eye(4, dtype=dtype), K


def _random_scene(n, width, height, seed, dtype=F64, f=None, scale_log=-2.5):
    g = torch.Generator().manual_seed(seed)
    f = f if f is not None else float(max(width, height))
    z = torch.rand(n, generator=g, dtype=dtype) * 3 + 1.5
    x = (torch.rand(n, generator=g, dtype=dtype) - 0.5) * 1.3 * width / f * z
    y = (torch.rand(n, generator=g, dtype=dtype) - 0.5) * 1.3 * height / f * z
    means = torch.stack([x, y, z], -1)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = (torch.randn(n, 3, generator=g, dtype=dtype) * 0.5 + scale_log).exp()
    opac = torch.rand(n, generator=g, dtype=dtype) * 0.95 + 0.04
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    return means, quats, scales, opac, colors


def _assert_away_from_switches(records, opac, width, height, s):
    """Every (pixel, primitive) alpha is far from alpha_min / alpha_max and T stays far above t_min."""
    pix = torch.stack(torch.meshgrid(torch.arange(width, dtype=F64) + 0.5, torch.arange(height, dtype=F64) + 0.5, indexing="xy"), -1)
    a = opac.detach()[None] * gaussian_footprint(records.detach()[None], pix.reshape(-1, 2)[:, None])
    assert (a > 3 * s.alpha_min).all() and (a < 0.9 * s.alpha_max).all()
    assert torch.prod(1 - a, dim=1).min() > 100 * s.t_min


def _box_rects(n, width, height):
    return torch.tensor([[0, 0, width, height]] * n, dtype=torch.int32)


# --------------------------------------------------------------------------------------------------
# footprint


def test_gaussian_footprint_values_and_broadcast():
    rec = torch.tensor([[10.0, 20.0, 0.5, 0.1, 0.25]], dtype=F64)
    pix = torch.tensor([[10.0, 20.0], [12.0, 19.0]], dtype=F64)
    w = gaussian_footprint(rec, pix)
    dx, dy = 10.0 - 12.0, 20.0 - 19.0
    e = 0.5 * (0.5 * dx * dx + 0.25 * dy * dy) + 0.1 * dx * dy
    torch.testing.assert_close(w, torch.tensor([1.0, math.exp(-e)], dtype=F64))
    # indefinite conic -> E < 0 somewhere -> invalid (0), not exp(+|E|)
    bad = torch.tensor([[0.0, 0.0, 1.0, 0.0, -1.0]], dtype=F64)
    assert gaussian_footprint(bad, torch.tensor([[0.0, 3.0]], dtype=F64)).item() == 0.0
    # broadcasting: records [T,1,K,5] x pixels [T,P,1,2] -> [T,P,K]
    recs = torch.rand(2, 1, 4, 5, dtype=F64)
    pixs = torch.rand(2, 7, 1, 2, dtype=F64)
    out = gaussian_footprint(recs, pixs)
    assert out.shape == (2, 7, 4)
    torch.testing.assert_close(out[1, 3, 2], gaussian_footprint(recs[1, 0, 2], pixs[1, 3, 0]))


def test_gaussian_footprint_gradcheck():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(2, 1, 3, 2, generator=g, dtype=F64) * 4
    conic = torch.tensor([0.6, 0.1, 0.4], dtype=F64).expand(2, 1, 3, 3) + 0.1 * torch.rand(2, 1, 3, 3, generator=g, dtype=F64)
    rec = torch.cat([u, conic], -1).requires_grad_()
    pix = (torch.rand(2, 5, 1, 2, generator=g, dtype=F64) * 4).requires_grad_()
    assert torch.autograd.gradcheck(gaussian_footprint, (rec, pix))


# --------------------------------------------------------------------------------------------------
# quaternion -> covariance


def test_quat_to_rotmat_known_and_orthonormal():
    s = math.sqrt(0.5)
    R = quat_to_rotmat(torch.tensor([s, 0.0, 0.0, s], dtype=F64) * 3.0)  # 90 deg about z, unnormalised
    torch.testing.assert_close(R, torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64))
    q = torch.randn(20, 4, dtype=F64)
    R = quat_to_rotmat(q)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=F64).expand(20, 3, 3))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(20, dtype=F64))
    # covariance = R diag(s^2) R^T
    sc = torch.rand(20, 3, dtype=F64) + 0.1
    torch.testing.assert_close(scales_quats_to_covars(sc, q), R @ torch.diag_embed(sc**2) @ R.transpose(-1, -2))


def test_scales_quats_to_covars_gradcheck():
    g = torch.Generator().manual_seed(1)
    sc = (torch.rand(4, 3, generator=g, dtype=F64) + 0.2).requires_grad_()
    q = torch.randn(4, 4, generator=g, dtype=F64).requires_grad_()
    assert torch.autograd.gradcheck(scales_quats_to_covars, (sc, q))


# --------------------------------------------------------------------------------------------------
# projection


def test_project_values_on_axis():
    W, H, f = 40, 30, 50.0
    viewmat, K = _camera(W, H, f)
    means = torch.tensor([[0.0, 0.0, 2.0], [0.4, -0.2, 4.0]], dtype=F64)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 2, dtype=F64)
    scales = torch.tensor([[0.1, 0.1, 0.1], [0.05, 0.2, 0.1]], dtype=F64)
    s = RasterSettings()
    p = project_gaussians(means, quats, scales, viewmat, K, W, H, s)
    torch.testing.assert_close(p.means2d[0], torch.tensor([20.0, 15.0], dtype=F64))
    torch.testing.assert_close(p.means2d[1], torch.tensor([f * 0.1 + 20, -f * 0.05 + 15], dtype=F64))
    torch.testing.assert_close(p.depths, torch.tensor([2.0, 4.0], dtype=F64))
    var = (f * 0.1 / 2.0) ** 2 + s.eps2d
    torch.testing.assert_close(p.cov2d[0], torch.tensor([var, 0.0, var], dtype=F64))
    torch.testing.assert_close(p.conics[0], torch.tensor([1 / var, 0.0, 1 / var], dtype=F64))
    # conic is the inverse of the dilated 2D covariance, for the off-axis one too
    c = p.cov2d[1]
    cov = torch.stack([torch.stack([c[0], c[1]]), torch.stack([c[1], c[2]])])
    a, b, cc = p.conics[1]
    torch.testing.assert_close(torch.stack([torch.stack([a, b]), torch.stack([b, cc])]) @ cov, torch.eye(2, dtype=F64))
    # radius / rect convention: r = ceil(3.33 sqrt(var)) without opacities; rect end exclusive, clipped
    r = math.ceil(3.33 * math.sqrt(var))
    assert p.radii[0].item() == r and p.radii.dtype == torch.int32
    assert p.rects[0].tolist() == [max(0, math.floor(20 - r)), max(0, math.floor(15 - r)), min(W, math.ceil(20 + r)), min(H, math.ceil(15 + r))]
    torch.testing.assert_close(p.compensation, torch.ones(2, dtype=F64))


def test_project_opacity_aware_extent_and_antialiasing():
    W, H = 64, 48
    viewmat, K = _camera(W, H)
    means = torch.tensor([[0.0, 0.0, 3.0]] * 3, dtype=F64)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 3, dtype=F64)
    scales = torch.full((3, 3), 0.05, dtype=F64)
    opac = torch.tensor([0.9, 0.02, 0.003], dtype=F64)  # the last is below alpha_min -> culled
    p = project_gaussians(means, quats, scales, viewmat, K, W, H, RasterSettings(), opacities=opac)
    sd = p.cov2d[0, 0].sqrt().item()
    for i in range(2):
        e = min(3.33, math.sqrt(2 * math.log(opac[i].item() * 255.0)))
        assert p.radii[i].item() == math.ceil(e * sd)
    assert p.radii[1] < p.radii[0] and p.radii[2].item() == 0 and p.rects[2].tolist() == [0, 0, 0, 0]
    pa = project_gaussians(means, quats, scales, viewmat, K, W, H, RasterSettings(antialiased=True), opacities=opac)
    c = pa.cov2d[0]
    det_blur = (c[0] * c[2] - c[1] ** 2).item()
    det_orig = ((c[0] - 0.3) * (c[2] - 0.3) - c[1] ** 2).item()
    assert pa.compensation[0].item() == pytest.approx(math.sqrt(det_orig / det_blur), rel=1e-12)
    assert 0 < pa.compensation[0].item() < 1


def test_project_clamped_jacobian():
    """A Gaussian far outside the frustum laterally uses the clamped t~x in J (not in means2d)."""
    W, H, f = 40, 30, 40.0
    viewmat, K = _camera(W, H, f)
    tz, tx = 2.0, 1.5  # tx/tz = 0.75 > lim_x_pos = 0.5 + 0.3 * 0.5 = 0.65 (still overlaps the image)
    means = torch.tensor([[tx, 0.0, tz]], dtype=F64)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=F64)
    scales = torch.tensor([[0.3, 0.2, 0.5]], dtype=F64)
    p = project_gaussians(means, quats, scales, viewmat, K, W, H, RasterSettings())
    txc = tz * ((W - W / 2) / f + 0.3 * 0.5 * W / f)
    J = torch.tensor([[f / tz, 0, -f * txc / tz**2], [0, f / tz, 0]], dtype=F64)
    cov = J @ torch.diag(scales[0] ** 2) @ J.T
    torch.testing.assert_close(p.cov2d[0], torch.stack([cov[0, 0] + 0.3, cov[0, 1], cov[1, 1] + 0.3]))
    assert p.radii[0] > 0 and p.means2d[0, 0].item() == pytest.approx(f * tx / tz + W / 2)  # unclamped


def test_projection_gradcheck():
    W, H = 24, 18
    viewmat, K = _camera(W, H, 20.0)
    viewmat = viewmat.clone()
    ang = 0.2
    viewmat[:3, :3] = torch.tensor([[math.cos(ang), 0, math.sin(ang)], [0, 1, 0], [-math.sin(ang), 0, math.cos(ang)]], dtype=F64)
    viewmat[:3, 3] = torch.tensor([0.1, -0.2, 0.3], dtype=F64)
    # includes a laterally clamped Gaussian (x/z ~ 1.2) that is big enough to reach the image
    means = torch.tensor([[0.1, 0.2, 2.0], [-0.3, 0.1, 3.0], [3.0, 0.0, 2.2]], dtype=F64, requires_grad=True)
    quats = torch.tensor([[0.9, 0.1, -0.2, 0.3], [0.5, 0.5, 0.1, -0.4], [1.0, 0.2, 0.3, 0.1]], dtype=F64, requires_grad=True)
    scales = torch.tensor([[0.1, 0.2, 0.05], [0.3, 0.1, 0.2], [1.0, 0.8, 0.5]], dtype=F64, requires_grad=True)

    def fn(m, q, s):
        p = project_gaussians(m, q, s, viewmat, K, W, H, RasterSettings(antialiased=True))
        return p.means2d, p.conics, p.depths, p.compensation

    assert (project_gaussians(means, quats, scales, viewmat, K, W, H).radii > 0).all()
    assert torch.autograd.gradcheck(fn, (means, quats, scales))


def test_near_far_and_offimage_culling():
    W, H = 16, 12
    viewmat, K = _camera(W, H)
    means = torch.tensor([[0.0, 0.0, 0.005], [0.0, 0.0, 2.0], [0.0, 0.0, -1.0], [50.0, 0.0, 2.0], [0.0, 0.0, 20.0]], dtype=F64, requires_grad=True)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 5, dtype=F64)
    scales = torch.full((5, 3), 0.05, dtype=F64, requires_grad=True)
    s = RasterSettings(near=0.01, far=10.0)
    p = project_gaussians(means, quats, scales, viewmat, K, W, H, s)
    assert p.radii.tolist()[0] == 0 and p.radii[1] > 0 and p.radii[2] == 0 and p.radii[3] == 0 and p.radii[4] == 0
    assert p.rects[0].tolist() == [0, 0, 0, 0]
    # with the near plane closer, the first one is kept
    p2 = project_gaussians(means, quats, scales, viewmat, K, W, H, RasterSettings(near=0.001))
    assert p2.radii[0] > 0
    # culled entries never produce NaN values or gradients
    out = render_gaussians(
        means, quats, scales, torch.full((5,), 0.8, dtype=F64), torch.rand(5, 3, dtype=F64), viewmat, K, W, H,
        settings=s, background=torch.tensor([0.2, 0.3, 0.4], dtype=F64), backend="reference",
    )  # fmt: skip
    (out.image.sum() + out.alpha.sum()).backward()
    assert torch.isfinite(means.grad).all() and torch.isfinite(scales.grad).all()
    assert means.grad[0].abs().sum() == 0 and means.grad[1].abs().sum() > 0


def test_near_plane_culling_render():
    """A Gaussian in front of the near plane renders nothing: image is the background everywhere."""
    W, H = 8, 6
    viewmat, K = _camera(W, H)
    bg = torch.tensor([0.1, 0.7, 0.3], dtype=F64)
    args = (torch.tensor([[0.0, 0.0, 0.05]], dtype=F64), torch.tensor([[1.0, 0, 0, 0]], dtype=F64),
            torch.full((1, 3), 0.01, dtype=F64), torch.tensor([0.9], dtype=F64), torch.tensor([[1.0, 0.0, 0.0]], dtype=F64),
            viewmat, K, W, H)  # fmt: skip
    culled = render_gaussians(*args, background=bg, settings=RasterSettings(near=0.1), backend="reference")
    torch.testing.assert_close(culled.image, bg.expand(H, W, 3))
    assert culled.alpha.abs().max() == 0 and culled.meta["radii"][0] == 0
    kept = render_gaussians(*args, background=bg, settings=RasterSettings(near=0.01), backend="reference")
    assert kept.alpha.max() > 0.5


# --------------------------------------------------------------------------------------------------
# spherical harmonics


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_eval_sh_gradcheck(degree):
    g = torch.Generator().manual_seed(degree)
    coeffs = torch.randn(3, 16, 3, generator=g, dtype=F64, requires_grad=True)
    dirs = torch.randn(3, 3, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c, d: eval_sh(degree, c, d), (coeffs, dirs))


def test_sh_basis_orthonormal_and_extra_bands_ignored():
    """Monte-Carlo-free check on a Fibonacci sphere: the 16 real SH are orthonormal (catches a wrong constant/sign)."""
    n = 40000
    i = torch.arange(n, dtype=F64) + 0.5
    zc = 1 - 2 * i / n
    phi = math.pi * (1 + math.sqrt(5)) * i
    r = (1 - zc * zc).sqrt()
    dirs = torch.stack([r * torch.cos(phi), r * torch.sin(phi), zc], -1)
    Y = sh_basis(3, dirs)
    gram = Y.T @ Y * (4 * math.pi / n)
    torch.testing.assert_close(gram, torch.eye(16, dtype=F64), atol=2e-3, rtol=0)
    # l=1 sign convention: -C1*y, C1*z, -C1*x
    torch.testing.assert_close(sh_basis(1, torch.tensor([[1.0, 0, 0]], dtype=F64))[0, 1:], torch.tensor([0.0, 0.0, -0.4886025119029199], dtype=F64))
    coeffs = torch.randn(5, 16, 3, dtype=F64)
    d = torch.randn(5, 3, dtype=F64)
    torch.testing.assert_close(eval_sh(1, coeffs, d), eval_sh(1, coeffs[:, :4], d))
    torch.testing.assert_close(eval_sh(0, coeffs, d), SH_C0 * coeffs[:, 0])
    torch.testing.assert_close(sh_to_rgb(rgb_to_sh(torch.tensor([0.2, 0.9], dtype=F64))), torch.tensor([0.2, 0.9], dtype=F64))


def _real_sh_reference(l, m, d):
    """Independent real SH from associated Legendre recurrences (Condon-Shortley phase, 3DGS sign convention)."""
    x, y, z = d
    am = abs(m)
    # P_am^am, then upward in l
    pmm = (-1) ** am * math.prod(range(1, 2 * am, 2)) * (1 - z * z) ** (am / 2)
    if l == am:
        p = pmm
    else:
        p_prev, p = pmm, z * (2 * am + 1) * pmm
        for ll in range(am + 2, l + 1):
            p_prev, p = p, ((2 * ll - 1) * z * p - (ll + am - 1) * p_prev) / (ll - am)
    k = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - am) / math.factorial(l + am))
    phi = math.atan2(y, x)
    if m == 0:
        return k * p
    return math.sqrt(2) * k * p * (math.sin(am * phi) if m < 0 else math.cos(am * phi))


def test_sh_basis_matches_legendre_definition():
    """Every constant and sign of bands 0-3 against a recurrence-based definition, m = -l..l order."""
    dirs = torch.randn(6, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    Y = sh_basis(3, dirs * 2.5)  # unnormalised input is normalised inside
    for i, d in enumerate(dirs.tolist()):
        ref = [_real_sh_reference(l, m, d) for l in range(4) for m in range(-l, l + 1)]
        torch.testing.assert_close(Y[i], torch.tensor(ref, dtype=F64), rtol=1e-12, atol=1e-12)


def test_sh_view_direction_uses_camera_centre():
    """Moving scene and camera together leaves an SH (degree 3) render unchanged; colours use mean - centre."""
    W, H = 16, 12
    means, quats, scales, opac, _ = _random_scene(20, W, H, 11)
    sh = torch.randn(20, 16, 3, generator=torch.Generator().manual_seed(2), dtype=F64) * 0.3
    viewmat, K = _camera(W, H)
    ang = 0.3
    viewmat[:3, :3] = torch.tensor([[1, 0, 0], [0, math.cos(ang), -math.sin(ang)], [0, math.sin(ang), math.cos(ang)]], dtype=F64)
    viewmat[:3, 3] = torch.tensor([0.2, -0.1, 0.4], dtype=F64)
    shift = torch.tensor([3.0, -2.0, 5.0], dtype=F64)
    moved = viewmat.clone()
    moved[:3, 3] = viewmat[:3, 3] - viewmat[:3, :3] @ shift  # viewmat @ translate(-shift)
    a = render_gaussians(means, quats, scales, opac, sh, viewmat, K, W, H, sh_degree=3, backend="reference")
    b = render_gaussians(means + shift, quats, scales, opac, sh, moved, K, W, H, sh_degree=3, backend="reference")
    assert a.alpha.max() > 0.5
    torch.testing.assert_close(b.image, a.image)
    centre = torch.linalg.inv(viewmat)[:3, 3]
    torch.testing.assert_close(a.meta["colors"], torch.clamp_min(eval_sh(3, sh, means - centre) + 0.5, 0))


def test_sh_degree0_render_colour():
    """sh_degree=0 renders exactly the colour C0*k + 0.5 (and clamps negatives at 0)."""
    W, H = 8, 6
    viewmat, K = _camera(W, H)
    means = torch.tensor([[0.0, 0.0, 2.0], [0.3, 0.0, 3.0]], dtype=F64)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=F64)
    scales = torch.full((2, 3), 0.1, dtype=F64)
    opac = torch.tensor([0.6, 0.8], dtype=F64)
    k = torch.tensor([[[0.5, -0.3, -4.0]], [[1.0, 0.2, 0.0]]], dtype=F64)  # -4 -> C0*(-4)+0.5 < 0 -> clamped to 0
    sh_out = render_gaussians(means, quats, scales, opac, k, viewmat, K, W, H, sh_degree=0, backend="reference")
    expected_cols = torch.clamp_min(SH_C0 * k[:, 0] + 0.5, 0)
    rgb_out = render_gaussians(means, quats, scales, opac, expected_cols, viewmat, K, W, H, backend="reference")
    torch.testing.assert_close(sh_out.meta["colors"], expected_cols)
    torch.testing.assert_close(sh_out.image, rgb_out.image)
    assert sh_out.meta["colors"][0, 2] == 0


# --------------------------------------------------------------------------------------------------
# compositor


def _composite_inputs(seed=0, n=4, width=6, height=5):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 2, generator=g, dtype=F64) * torch.tensor([width, height], dtype=F64)
    conic = torch.tensor([0.04, 0.005, 0.05], dtype=F64) + 0.02 * torch.rand(n, 3, generator=g, dtype=F64)
    records = torch.cat([u, conic], -1)
    opac = torch.rand(n, generator=g, dtype=F64) * 0.5 + 0.3
    colors = torch.rand(n, 3, generator=g, dtype=F64)
    depths = torch.arange(n, dtype=F64) * 0.7 + 1.0
    depths = depths[torch.randperm(n, generator=g)]
    bg = torch.rand(3, generator=g, dtype=F64)
    return records, opac, colors, depths, bg


@pytest.mark.parametrize("mode", ["dense", "tiled"])
def test_composite_gradcheck(mode):
    W, H = 6, 5
    records, opac, colors, depths, bg = _composite_inputs(0, 4, W, H)
    rects = _box_rects(4, W, H)
    s = RasterSettings()
    # The compositor is piecewise smooth: alpha_min (skip), alpha_max (clamp) and t_min (stop) are hard
    # switches, so finite differences across one of them are meaningless. The scene is chosen (wide
    # footprints, opacities 0.3-0.8, four layers) so that every alpha is far from alpha_min/alpha_max
    # and T never approaches t_min; assert that margin so the test cannot pass by accident.
    _assert_away_from_switches(records, opac, W, H, s)

    def fn(rec, o, c, d, b):
        r = composite(gaussian_footprint, rec, o, c, d, rects, W, H, b, s, render_depth=True, mode=mode, **kw)
        return r.image, r.alpha, r.depth

    kw = {"bin_size": 4} if mode == "tiled" else {}

    inputs = tuple(t.clone().requires_grad_() for t in (records, opac, colors, depths, bg))
    assert torch.autograd.gradcheck(fn, inputs)


def _pointwise_only(records, pixels):
    """The Gaussian footprint without its ``grid`` fast path (exercises the generic pass-1 branch)."""
    return gaussian_footprint(records, pixels)


@pytest.mark.parametrize(
    "seed,bin_size,chunk_elements,fp",
    [(0, None, 1 << 23, "grid"), (1, 16, 1 << 23, "grid"), (2, 4, 300, "grid"), (3, 8, 1, "grid"), (4, 16, 5000, "pointwise")],
)
def test_dense_equals_tiled_random_scene(seed, bin_size, chunk_elements, fp):
    W, H = 37, 29
    means, quats, scales, opac, colors = _random_scene(150, W, H, seed)
    opac[::7] = 0.998  # some samples hit the alpha_max clamp
    viewmat, K = _camera(W, H)
    s = RasterSettings()
    footprint = gaussian_footprint if fp == "grid" else _pointwise_only
    proj = project_gaussians(means, quats, scales, viewmat, K, W, H, s, opacities=opac)
    records = torch.cat([proj.means2d, proj.conics], -1)
    bg = torch.tensor([0.3, 0.1, 0.9], dtype=F64)
    cot = torch.randn(H, W, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)
    results = []
    for mode in ("dense", "tiled"):
        ins = [t.clone().requires_grad_() for t in (records, opac, colors, proj.depths, bg)]
        kw = dict(chunk_elements=chunk_elements, bin_size=bin_size) if mode == "tiled" else {}
        r = composite(footprint, *ins[:4], proj.rects, W, H, ins[4], s, render_depth=True, mode=mode, **kw)
        grads = torch.autograd.grad((r.image * cot).sum() + r.alpha.sum() + 0.1 * r.depth.sum(), ins)
        results.append((r, grads))
    (rd, gd), (rt, gt) = results
    assert rd.n_contrib.max() > 3 and (rd.alpha > 0.9).any()  # overlapping layers, some saturated
    for name in ("image", "alpha", "depth"):
        torch.testing.assert_close(getattr(rt, name), getattr(rd, name), rtol=1e-9, atol=1e-9)
    for a, b in zip(gt, gd):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(rt.max_weight, rd.max_weight, rtol=1e-9, atol=1e-12)
    assert torch.equal(rt.contrib_count, rd.contrib_count) and torch.equal(rt.n_contrib, rd.n_contrib)


def test_dense_equals_tiled_float32_with_stops():
    """Float32, many opaque layers (the stop rule fires in most pixels): modes agree to ~1e-6."""
    W, H = 40, 30
    means, quats, scales, opac, colors = _random_scene(400, W, H, 7, dtype=torch.float32, scale_log=-2.0)
    opac = torch.full_like(opac, 0.97)
    viewmat, K = _camera(W, H, dtype=torch.float32)
    out = [render_gaussians_reference(means, quats, scales, opac, colors, viewmat, K, W, H, mode=m, render_depth=True) for m in ("dense", "tiled")]
    assert (out[0].alpha > 1 - 2e-3).float().mean() > 0.3  # saturated pixels exist
    for name in ("image", "alpha"):
        torch.testing.assert_close(getattr(out[1], name), getattr(out[0], name), rtol=0, atol=2e-6)
    torch.testing.assert_close(out[1].depth, out[0].depth, rtol=2e-6, atol=2e-5)


def test_tiled_respects_rects_not_tiles():
    """A primitive only reaches pixels inside its rect, even inside a tile it touches."""
    rec = torch.tensor([[4.0, 4.0, 0.01, 0.0, 0.01]], dtype=F64)  # very wide footprint
    kw = dict(background=None, settings=RasterSettings(tile_size=16))
    for mode in ("dense", "tiled"):
        r = composite(gaussian_footprint, rec, torch.tensor([0.5], dtype=F64), torch.ones(1, 1, dtype=F64), torch.ones(1, dtype=F64),
                      torch.tensor([[2, 3, 6, 5]], dtype=torch.int32), 10, 8, mode=mode, **kw)  # fmt: skip
        covered = torch.zeros(8, 10, dtype=torch.bool)
        covered[3:5, 2:6] = True
        assert (r.alpha[..., 0][covered] > 0.4).all() and (r.alpha[..., 0][~covered] == 0).all()


# --------------------------------------------------------------------------------------------------
# analytic scenes through the whole pipeline


def _single(opacity, color, z=2.0, scale=0.05, W=9, H=7):
    viewmat, K = _camera(W, H)
    K = K.clone()
    K[0, 2], K[1, 2] = 4.5, 3.5  # principal point at the centre of pixel (4, 3)
    return (torch.tensor([[0.0, 0.0, z]], dtype=F64), torch.tensor([[1.0, 0, 0, 0]], dtype=F64), torch.full((1, 3), scale, dtype=F64),
            torch.tensor([opacity], dtype=F64), torch.tensor([color], dtype=F64), viewmat, K, W, H)  # fmt: skip


@pytest.mark.parametrize("mode", ["dense", "tiled"])
@pytest.mark.parametrize("opacity", [0.7, 0.995])
def test_single_gaussian_centre_pixel(opacity, mode):
    bg = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    out = render_gaussians_reference(*_single(opacity, [1.0, 0.5, 0.0]), background=bg, mode=mode)
    a = min(0.99, opacity)  # alpha_max clamp
    assert out.alpha[3, 4, 0].item() == pytest.approx(a, abs=1e-12)
    torch.testing.assert_close(out.image[3, 4], torch.tensor([a, 0.5 * a, 1 - a], dtype=F64))
    assert out.alpha[3, 3, 0] < a and out.alpha[0, 0, 0] < out.alpha[3, 3, 0]  # falls off away from the centre


def test_antialiased_compensation_scales_opacity():
    args = _single(0.8, [1.0, 1.0, 1.0], scale=0.1)  # ~0.45 px: the 0.3 px^2 dilation matters
    out = render_gaussians(*args, settings=RasterSettings(antialiased=True), backend="reference")
    comp = out.meta["compensation"][0].item()
    assert 0.05 < comp < 0.9
    assert out.meta["opacities"][0].item() == pytest.approx(0.8 * comp)
    assert out.alpha[3, 4, 0].item() == pytest.approx(0.8 * comp)
    plain = render_gaussians(*args, backend="reference")
    assert plain.alpha[3, 4, 0].item() == pytest.approx(0.8)


def test_transmittance_stop_rule():
    """Ten stacked layers of alpha 0.95: T = 1, .05, .0025, 1.25e-4, then 6.25e-6 <= t_min -> stop before the 4th."""
    n = 10
    rec = torch.tensor([[2.0, 2.0, 0.0, 0.0, 0.0]] * n, dtype=F64)  # flat conic: w = 1 everywhere
    opac = torch.full((n,), 0.95, dtype=F64, requires_grad=True)
    colors = torch.eye(n, dtype=F64).requires_grad_()  # one channel per layer -> per-layer contribution visible
    depths = torch.arange(n, dtype=F64) + 1.0
    bg = torch.full((n,), 0.5, dtype=F64)
    for mode in ("dense", "tiled"):
        r = composite(gaussian_footprint, rec, opac, colors, depths, _box_rects(n, 4, 4), 4, 4, bg, RasterSettings(), mode=mode)
        px = r.image[1, 1]
        expect = torch.tensor([0.95, 0.95 * 0.05, 0.95 * 0.0025] + [0.0] * 7, dtype=F64) + 0.5 * 1.25e-4
        torch.testing.assert_close(px, expect, rtol=1e-12, atol=1e-15)
        t_end = 1 - r.alpha[1, 1, 0].item()
        assert t_end == pytest.approx(1.25e-4, rel=1e-9) and t_end >= 1e-4
        assert r.n_contrib[1, 1].item() == 3 and r.contrib_count.tolist() == [16, 16, 16] + [0] * 7
        go, gc = torch.autograd.grad(r.image.sum(), [opac, colors])
        assert (gc[3:] == 0).all() and (go[3:] == 0).all() and (go[:3] != 0).all()


def test_depth_order_and_ties():
    W, H = 9, 7
    viewmat, K = _camera(W, H)
    K = K.clone()
    K[0, 2], K[1, 2] = 4.5, 3.5
    # far blue has the lower index, near red must still win at the centre
    means = torch.tensor([[0.0, 0.0, 4.0], [0.0, 0.0, 2.0]], dtype=F64)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=F64)
    scales = torch.tensor([[0.1] * 3, [0.05] * 3], dtype=F64)
    colors = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=F64)
    out = render_gaussians(means, quats, scales, torch.tensor([0.99, 0.9], dtype=F64), colors, viewmat, K, W, H, render_depth=True, backend="reference")
    c = out.image[3, 4]
    assert c[0].item() == pytest.approx(0.9) and c[2].item() == pytest.approx(0.99 * 0.1)
    assert out.depth[3, 4, 0].item() == pytest.approx(0.9 * 2.0 + 0.099 * 4.0)
    # red 0.99 (T -> 0.01), green 0.95 (T -> 5e-4), then blue 0.9 would bring T to 5e-5 <= t_min: stop before it
    means3 = torch.cat([means, torch.tensor([[0.0, 0.0, 3.0]], dtype=F64)])
    colors3 = torch.cat([colors, torch.tensor([[0.0, 1.0, 0.0]], dtype=F64)])
    out = render_gaussians(means3, quats[[0, 0, 0]], scales[[0, 1, 1]], torch.tensor([0.9, 0.99, 0.95], dtype=F64), colors3, viewmat, K, W, H, backend="reference")
    assert out.image[3, 4].tolist() == pytest.approx([0.99, 0.0095, 0.0], abs=1e-12) and out.meta["n_contrib"][3, 4] == 2
    # equal depths: the lower index composites first
    rec = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0]] * 2, dtype=F64)
    for mode in ("dense", "tiled"):
        for order in ([0, 1], [1, 0]):
            col = colors[[1, 0]][order]  # index 0 gets red first, then blue
            r = composite(gaussian_footprint, rec, torch.tensor([0.5, 0.5], dtype=F64), col, torch.ones(2, dtype=F64), _box_rects(2, 2, 2), 2, 2, mode=mode)
            torch.testing.assert_close(r.image[0, 0], 0.5 * col[0] + 0.25 * col[1])


def test_background_only_where_nothing_covers():
    W, H = 32, 24
    viewmat, K = _camera(W, H)
    bg = torch.tensor([0.25, 0.5, 0.75], dtype=F64)
    # a small Gaussian near the top-left corner
    z = 3.0
    x, y = (3.5 - W / 2) * z / K[0, 0].item(), (3.5 - H / 2) * z / K[1, 1].item()
    out = render_gaussians(torch.tensor([[x, y, z]], dtype=F64), torch.tensor([[1.0, 0, 0, 0]], dtype=F64), torch.full((1, 3), 0.02, dtype=F64),
                           torch.tensor([0.9], dtype=F64), torch.tensor([[1.0, 0.0, 0.0]], dtype=F64), viewmat, K, W, H, background=bg, backend="reference")  # fmt: skip
    x0, y0, x1, y1 = out.meta["rects"][0].tolist()
    assert x1 < W // 2 and y1 < H // 2
    uncovered = torch.ones(H, W, dtype=torch.bool)
    uncovered[y0:y1, x0:x1] = False
    assert (out.image[uncovered] == bg).all() and (out.alpha[uncovered] == 0).all()
    assert out.alpha[3, 3, 0] > 0.8 and out.image[3, 3, 0] > 0.8


def test_render_gaussians_gradcheck():
    """End to end (projection, SH degree 1, compositor) on 3 wide Gaussians over an 8x6 image."""
    W, H = 8, 6
    viewmat, K = _camera(W, H, 8.0)
    means = torch.tensor([[0.1, 0.05, 2.0], [-0.2, 0.1, 2.5], [0.3, -0.1, 3.0]], dtype=F64, requires_grad=True)
    quats = torch.tensor([[0.9, 0.1, -0.2, 0.3], [0.5, 0.5, 0.1, -0.4], [1.0, 0.2, 0.3, 0.1]], dtype=F64, requires_grad=True)
    scales = torch.tensor([[0.6, 0.8, 0.5], [0.9, 0.6, 0.7], [1.0, 0.8, 1.2]], dtype=F64, requires_grad=True)
    opac = torch.tensor([0.6, 0.5, 0.7], dtype=F64, requires_grad=True)
    sh = (torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(0), dtype=F64) * 0.3).requires_grad_()
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=F64, requires_grad=True)
    s = RasterSettings()

    def fn(m, q, sc, o, c, b):
        out = render_gaussians(m, q, sc, o, c, viewmat, K, W, H, sh_degree=1, background=b, settings=s, render_depth=True, backend="reference")
        return out.image, out.alpha, out.depth

    # margins from the hard switches (see test_composite_gradcheck)
    out = render_gaussians(means, quats, scales, opac, sh, viewmat, K, W, H, sh_degree=1, settings=s, backend="reference")
    assert (out.meta["rects"] == torch.tensor([0, 0, W, H], dtype=torch.int32)).all()
    assert (out.meta["colors"] > 0.05).all()  # away from the colour clamp
    _assert_away_from_switches(torch.cat([out.meta["means2d"], out.meta["conics"]], -1), out.meta["opacities"], W, H, s)
    assert torch.autograd.gradcheck(fn, (means, quats, scales, opac, sh, bg))


def test_means2d_retain_grad_and_meta():
    W, H = 20, 16
    means, quats, scales, opac, colors = _random_scene(30, W, H, 3)
    viewmat, K = _camera(W, H)
    means.requires_grad_()
    out = render_gaussians(means, quats, scales, opac, colors, viewmat, K, W, H, backend="auto")
    assert isinstance(out, RenderOutput) and out.meta["backend"] == "reference"
    m2d = out.meta["means2d"]
    m2d.retain_grad()
    out.image.sum().backward()
    vis = out.meta["contrib_count"] > 0
    assert m2d.grad is not None and m2d.grad.shape == (30, 2)
    assert (m2d.grad[vis].abs().sum(-1) > 0).all() and (m2d.grad[~vis] == 0).all()
    for key in ("radii", "depths", "conics", "opacities", "colors", "rects", "max_weight", "width", "height"):
        assert key in out.meta
    assert out.meta["radii"].dtype == torch.int32 and out.meta["rects"].shape == (30, 4)
    assert ((out.meta["max_weight"] > 0) == vis).all() and (out.meta["max_weight"] <= 0.99).all()
    assert out.image.shape == (H, W, 3) and out.alpha.shape == (H, W, 1) and out.depth is None


def test_intersect_tiles_order_and_offsets():
    # 3 primitives on a 20x10 image, tile 8 -> 3x2 tiles
    rects = torch.tensor([[0, 0, 9, 4], [7, 2, 8, 3], [0, 0, 0, 0], [15, 8, 20, 10]], dtype=torch.int32)
    depths = torch.tensor([2.0, 1.0, 0.5, 2.0])
    isx = intersect_tiles(rects, depths, 20, 10, 8)
    assert (isx.tiles_x, isx.tiles_y) == (3, 2)
    assert rects_to_tile_rects(rects, 8).tolist() == [[0, 0, 2, 1], [0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 3, 2]]
    assert isx.tile_ids.tolist() == [0, 0, 1, 4, 5]
    assert isx.prim_ids.tolist() == [1, 0, 0, 3, 3]  # tile 0: depth 1.0 before 2.0
    assert isx.offsets.tolist() == [0, 2, 3, 3, 3, 4, 5]
    # equal depths tie by index
    isx2 = intersect_tiles(torch.tensor([[0, 0, 4, 4]] * 3, dtype=torch.int32), torch.tensor([1.0, 1.0, 0.5]), 8, 8, 8)
    assert isx2.prim_ids.tolist() == [2, 0, 1]
    prim, valid = tile_lists(isx, torch.tensor([0, 4, 2]), 2)
    assert prim.tolist() == [[1, 0], [3, 0], [0, 0]] and valid.tolist() == [[True, True], [True, False], [False, False]]
    px, py = tile_pixels(torch.tensor([4]), 3, 8)
    assert (px[0, 0].item(), py[0, 0].item(), px[0, -1].item(), py[0, -1].item()) == (8, 8, 15, 15)
    chunks = plan_tile_chunks(torch.tensor([5, 0, 3, 4, 10, 0]), 2, 40)
    assert [(c.tolist(), k) for c, k in chunks] == [([4], 10), ([0, 3], 5), ([2], 3)]


def test_import_is_cheap_and_never_touches_cuda():
    code = "import sys, recon.rasterizers as r; r.render_gaussians; print('recon.rasterizers.cuda' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
