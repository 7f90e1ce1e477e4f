"""The CUDA hash-encoding kernels against the pure-PyTorch reference (GPU only)."""

import pytest
import torch

from recon.rasterizers.hashgrid import (
    HashGridConfig,
    HashGridEncoding,
    hash_grid_encode,
    hash_grid_encode_cuda,
    init_table,
    level_layout,
)

pytestmark = pytest.mark.cuda

CONFIGS = {
    "default": HashGridConfig(),
    "smoothstep": HashGridConfig(interpolation="smoothstep"),
    "L8_F4_T17": HashGridConfig(n_levels=8, n_features=4, log2_table_size=17, base_resolution=8, finest_resolution=512),
    "L5_F1_T14_smooth": HashGridConfig(n_levels=5, n_features=1, log2_table_size=14, base_resolution=4, per_level_scale=2.0,
                                       interpolation="smoothstep"),  # fmt: skip
    "L3_F8_T12": HashGridConfig(n_levels=3, n_features=8, log2_table_size=12, base_resolution=6, finest_resolution=96),
    "NeuS2_L14": HashGridConfig(n_levels=14, n_features=2, log2_table_size=19, base_resolution=16, finest_resolution=2048),
}


@pytest.fixture(scope="module")
def dev():
    from recon.rasterizers.cuda import _backend

    if not _backend.is_available():
        pytest.skip(f"recon CUDA core unavailable: {_backend.unavailable_reason()}")
    return torch.device("cuda")


def _inputs(cfg, dev, n=20000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g)
    x[:7] = torch.tensor([[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 1], [0.25, 0.75, 1.0], [-0.1, 0.3, 1.2], [0.999999, 1e-7, 0.5]])
    table = torch.randn(level_layout(cfg).total_rows, cfg.n_features, generator=g) * 0.1
    return x.to(dev), table.to(dev)


def _reference_fp64(x, table, cfg, cot, mask=None):
    """The float64 reference on the CPU (cells are chosen in float32 like the kernel)."""
    t64 = table.detach().cpu().double().requires_grad_(True)
    x32 = x.detach().cpu()
    y = hash_grid_encode(x32, t64, cfg, backend="reference", level_mask=mask)
    (y * cot.cpu().double()).sum().backward()
    return y.detach(), t64.grad


@pytest.mark.parametrize("pair_loads", [True, False])
@pytest.mark.parametrize("feature_major", [False, True])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_and_table_gradient_match_reference(dev, name, feature_major, pair_loads):
    cfg = CONFIGS[name]
    x, table = _inputs(cfg, dev)
    table = table.requires_grad_(True)
    y = hash_grid_encode_cuda(x, table, cfg, feature_major=feature_major, pair_loads=pair_loads)
    assert (y.stride(0) == 1) == feature_major
    assert y.shape == (x.shape[0], cfg.output_dim) and y.dtype == torch.float32
    cot = torch.randn_like(y)
    (y * cot).sum().backward()
    y_ref, g_ref = _reference_fp64(x, table, cfg, cot)
    assert torch.allclose(y.cpu().double(), y_ref, atol=2e-6, rtol=1e-5), (y.cpu().double() - y_ref).abs().max()
    assert torch.allclose(table.grad.cpu().double(), g_ref, atol=5e-5, rtol=1e-4), (table.grad.cpu().double() - g_ref).abs().max()


@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
def test_input_gradient_matches_reference(dev, interpolation):
    cfg = HashGridConfig(n_levels=6, n_features=2, log2_table_size=15, base_resolution=8, finest_resolution=256,
                         interpolation=interpolation)  # fmt: skip
    x, table = _inputs(cfg, dev, n=4000)
    x = x.clamp(0.001, 0.999).requires_grad_(True)
    y = hash_grid_encode(x, table, cfg, backend="cuda")
    cot = torch.randn_like(y)
    (y * cot).sum().backward()
    xr = x.detach().cpu().requires_grad_(True)
    yr = hash_grid_encode(xr, table.cpu().double(), cfg, backend="reference")
    (yr * cot.cpu().double()).sum().backward()
    assert torch.allclose(x.grad.cpu().double(), xr.grad.double(), atol=1e-3, rtol=1e-4), (x.grad.cpu() - xr.grad).abs().max()


def test_level_mask_zeroes_output_and_gradient(dev):
    cfg = HashGridConfig(n_levels=6, n_features=2, log2_table_size=14, base_resolution=8, finest_resolution=256)
    lay = level_layout(cfg)
    x, table = _inputs(cfg, dev, n=5000)
    table.requires_grad_(True)
    mask = [True, False, True, True, False, False]
    y = hash_grid_encode(x, table, cfg, backend="cuda", level_mask=mask)
    cot = torch.randn_like(y)
    (y * cot).sum().backward()
    y_ref, g_ref = _reference_fp64(x, table, cfg, cot, mask=mask)
    assert torch.count_nonzero(y[:, 2:4]) == 0 and torch.count_nonzero(y[:, 8:]) == 0
    assert torch.count_nonzero(table.grad[lay.offsets[1] : lay.offsets[2]]) == 0
    assert torch.count_nonzero(table.grad[lay.offsets[4] :]) == 0
    assert torch.allclose(y.cpu().double(), y_ref, atol=2e-6)
    assert torch.allclose(table.grad.cpu().double(), g_ref, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("pair_loads", [True, False])
def test_half_table(dev, pair_loads):
    cfg = HashGridConfig(dtype="float16")
    x, table = _inputs(cfg, dev)
    table = table.half().requires_grad_(True)
    y = hash_grid_encode_cuda(x, table, cfg, pair_loads=pair_loads)
    assert y.dtype == torch.float32
    cot = torch.randn_like(y)
    (y * cot).sum().backward()
    assert table.grad.dtype == torch.float16
    y_ref, g_ref = _reference_fp64(x, table.float(), cfg, cot)
    assert torch.allclose(y.cpu().double(), y_ref, atol=2e-6, rtol=1e-5)
    assert torch.allclose(table.grad.cpu().double(), g_ref, atol=2e-3, rtol=2e-3)


def test_module_auto_backend_and_empty_input(dev):
    enc = HashGridEncoding(seed=0, device=dev)
    assert enc.table.is_cuda
    x = torch.rand(1000, 3, device=dev)
    y = enc(x)
    assert torch.allclose(y.cpu().double(), hash_grid_encode(x.cpu(), enc.table.detach().cpu().double(), enc.cfg, backend="reference"), atol=1e-9)
    enc.set_active_levels(4)
    assert torch.count_nonzero(enc(x)[:, 8:]) == 0
    assert enc(torch.empty(0, 3, device=dev)).shape == (0, 32)
    init = init_table(enc.cfg, device=dev)
    assert float(init.abs().max()) <= 1e-4


def test_gradient_with_strided_cotangents(dev):
    # the backward reads any [N, L*F] layout: a column slice of a wider tensor, and a transposed one
    cfg = HashGridConfig(n_levels=4, n_features=2, log2_table_size=14, base_resolution=8, finest_resolution=128)
    x, table = _inputs(cfg, dev, n=3000)
    grads = []
    for make in ("contiguous", "slice", "transposed"):
        leaf = table.clone().requires_grad_(True)
        y = hash_grid_encode(x, leaf, cfg, backend="cuda")
        g = torch.Generator(device=dev).manual_seed(5)
        cot = torch.randn(x.shape[0], cfg.output_dim, generator=g, device=dev)
        if make == "slice":
            wide = torch.zeros(x.shape[0], cfg.output_dim + 3, device=dev)
            wide[:, 1 : 1 + cfg.output_dim] = cot
            cot = wide[:, 1 : 1 + cfg.output_dim]
        elif make == "transposed":
            cot = cot.t().contiguous().t()
        y.backward(cot)
        grads.append(leaf.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-5) and torch.allclose(grads[0], grads[2], atol=1e-5)


def test_unaligned_table_view(dev):
    # a table view starting 4 bytes into its storage cannot feed the vector loads; results and the
    # gradient (through the aligned copy) must not change
    cfg = HashGridConfig(n_levels=4, n_features=2, log2_table_size=12, base_resolution=8, finest_resolution=100)
    x, table = _inputs(cfg, dev, n=3000)
    flat = torch.cat([torch.zeros(1, device=dev), table.flatten()])
    shifted = flat[1:].view_as(table)
    assert shifted.data_ptr() % 16 != 0
    flat.requires_grad_(True)
    shifted = flat[1:].view_as(table)
    a = hash_grid_encode_cuda(x, shifted, cfg)
    b = hash_grid_encode_cuda(x, table, cfg)
    assert torch.equal(a, b)
    a.sum().backward()
    leaf = table.clone().requires_grad_(True)
    hash_grid_encode_cuda(x, leaf, cfg).sum().backward()
    assert flat.grad[0] == 0 and torch.allclose(flat.grad[1:].view_as(table), leaf.grad, atol=1e-5)
