"""Triangle splats: CUDA core vs the PyTorch reference (projection, whole images, gradients). GPU only."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.cuda

if not torch.cuda.is_available():  # pragma: no cover - CPU machines deselect the marker anyway
    pytest.skip("needs a CUDA device", allow_module_level=True)

from recon.rasterizers.reference.triangle import TriangleSettings, project_triangles  # noqa: E402
from recon.rasterizers.triangles import (  # noqa: E402
    project_triangles_cuda,
    render_triangles_cuda,
    render_triangles_reference,
)
from recon.rasterizers.types import RasterSettings  # noqa: E402

DEV = "cuda"


def _camera(width, height, f, yaw=0.0):
    c, s = torch.cos(torch.tensor(yaw)), torch.sin(torch.tensor(yaw))
    vm = torch.eye(4)
    vm[0, 0], vm[0, 2], vm[2, 0], vm[2, 2] = c, s, -s, c
    vm[2, 3] = 0.3
    K = torch.tensor([[f, 0, width / 2 + 0.3], [0, f * 1.02, height / 2 - 0.7], [0, 0, 1]])
    return vm.to(DEV), K.to(DEV)


def _scene(n, seed, size=0.25, sigma_range=(0.3, 2.5)):
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([3.0, 2.2, 2.0]) + torch.tensor([0.0, 0.0, 4.0])
    verts = centres[:, None, :] + (torch.rand(n, 3, 3, generator=g) - 0.5) * 2 * size
    opac = 0.2 + 0.75 * torch.rand(n, generator=g)
    sig = sigma_range[0] + (sigma_range[1] - sigma_range[0]) * torch.rand(n, generator=g)
    sh = torch.randn(n, 4, 3, generator=g) * 0.3
    vcol = torch.rand(n, 3, 3, generator=g)
    return [t.to(DEV) for t in (verts, opac, sig, sh, vcol)]


TRI = TriangleSettings(min_inradius=0.5, min_extent=1.0)
CASES = [(64, 48, 60.0, 0.0), (97, 71, 80.0, 0.25)]  # two sizes (one not a tile multiple), two cameras


@pytest.mark.parametrize("stopgrad", [True, False])
@pytest.mark.parametrize("bary", [False, True])
def test_projection_matches_reference(stopgrad, bary):
    verts, opac, sig, *_ = _scene(300, 0)
    tri = TriangleSettings(min_inradius=0.5, min_extent=1.0, stopgrad_inradius=stopgrad)
    cams = [_camera(64, 48, 60.0, 0.0), _camera(64, 48, 60.0, 0.3)]
    vm = torch.stack([c[0] for c in cams])
    K = torch.stack([c[1] for c in cams])
    v1 = verts.clone().requires_grad_(True)
    s1 = sig.clone().requires_grad_(True)
    out = project_triangles_cuda(v1, opac, s1, vm, K, 64, 48, RasterSettings(), tri, barycentric=bary)
    g = torch.Generator(device=DEV).manual_seed(0)
    cot_r = torch.randn(out.records.shape, generator=g, device=DEV)
    cot_d = torch.randn(out.depths.shape, generator=g, device=DEV)
    ((out.records * cot_r).sum() + (out.depths * cot_d).sum()).backward()
    v2 = verts.clone().requires_grad_(True)
    s2 = sig.clone().requires_grad_(True)
    loss = 0.0
    for i in range(2):
        ref = project_triangles(v2, opac, s2, vm[i], K[i], 64, 48, RasterSettings(), tri, barycentric=bary)
        valid = ref.valid
        assert torch.equal(valid, out.inradii[i] > 0)
        assert int(valid.sum()) > 50
        torch.testing.assert_close(out.records[i][valid], ref.records[valid].detach(), rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(out.depths[i], ref.depths.detach(), rtol=1e-5, atol=1e-5)
        assert (out.rects[i] - ref.rects).abs().max() <= 1
        loss = loss + (ref.records * cot_r[i]).sum() + (ref.depths * cot_d[i]).sum()
    loss.backward()
    torch.testing.assert_close(v1.grad, v2.grad, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-4, atol=1e-4)


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bary", [False, True])
def test_render_matches_reference_images_and_gradients(case, bary):
    w, h, f, yaw = case
    verts, opac, sig, sh, vcol = _scene(400, 1, size=0.4)
    vm, K = _camera(w, h, f, yaw)
    bg = torch.tensor([0.1, 0.2, 0.3], device=DEV)
    colors = vcol if bary else sh
    degree = None if bary else 1
    results = []
    for fn in (render_triangles_cuda, render_triangles_reference):
        leaves = [t.clone().requires_grad_(True) for t in (verts, opac, sig, colors)]
        out = fn(*leaves, vm, K, w, h, sh_degree=degree, background=bg, triangle_settings=TRI, render_depth=True)
        g = torch.Generator(device=DEV).manual_seed(2)
        cot = torch.randn(out.image.shape, generator=g, device=DEV)
        loss = (out.image * cot).sum() + 0.5 * out.alpha.sum() + 0.01 * out.depth.sum()
        loss.backward()
        results.append((out, [t.grad for t in leaves]))
    (oc, gc), (orf, gr) = results
    diff = (oc.image - orf.image).abs().detach()
    assert float((diff > 1e-3).float().mean()) < 0.01  # edge pixels may flip across alpha_min
    assert float(diff.median()) < 1e-5
    assert float((oc.alpha - orf.alpha).abs().mean()) < 1e-3
    assert float((oc.depth - orf.depth).abs().mean()) < 1e-2
    assert int((orf.alpha > 0.1).sum()) > 0.1 * w * h
    for name, a, b in zip(("vertices", "opacities", "sigmas", "colors"), gc, gr):
        assert a is not None and b is not None, name
        assert _rel(a, b) < 3e-2, (name, _rel(a, b))
    mw_c, mw_r = oc.meta["max_weight"], orf.meta["max_weight"]
    assert float((mw_c - mw_r).abs().max()) < 2e-2


def test_max_weight_and_batched_cameras():
    verts, opac, sig, sh, _ = _scene(200, 3)
    vm0, K0 = _camera(64, 48, 60.0, 0.0)
    vm1, K1 = _camera(64, 48, 60.0, 0.2)
    batched = render_triangles_cuda(verts, opac, sig, sh, torch.stack([vm0, vm1]), torch.stack([K0, K1]), 64, 48,
                                    sh_degree=1, triangle_settings=TRI)  # fmt: skip
    for i, (vm, K) in enumerate(((vm0, K0), (vm1, K1))):
        single = render_triangles_cuda(verts, opac, sig, sh, vm, K, 64, 48, sh_degree=1, triangle_settings=TRI)
        torch.testing.assert_close(batched.image[i], single.image, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batched.meta["max_weight"][i], single.meta["max_weight"], rtol=1e-5, atol=1e-6)
    assert float(batched.meta["max_weight"].max()) > 0.5


def test_opaque_mode_hard_edges_match_reference():
    """sigma -> 0 and opacity ~1 (the end state of Triangle Splatting+): CUDA and reference agree."""
    verts, opac, _, _, vcol = _scene(150, 4, size=0.4)
    sig = torch.full_like(opac, 1e-4)
    opac = torch.full_like(opac, 0.995)
    vm, K = _camera(80, 60, 70.0, 0.1)
    a = render_triangles_cuda(verts, opac, sig, vcol, vm, K, 80, 60, triangle_settings=TRI)
    b = render_triangles_reference(verts, opac, sig, vcol, vm, K, 80, 60, triangle_settings=TRI)
    diff = (a.image - b.image).abs()
    assert float((diff > 1e-2).float().mean()) < 0.01
    assert float(b.alpha.mean()) > 0.2
