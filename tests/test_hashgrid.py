"""The pure-PyTorch hash encoding (recon.rasterizers.hashgrid, reference backend) against hand computations."""

import math

import pytest
import torch

from recon.rasterizers.hashgrid import (
    HashGridConfig,
    HashGridEncoding,
    hash_grid_encode,
    init_table,
    level_layout,
    table_rows,
)


def _python_hash(i0: int, i1: int, i2: int, size: int) -> int:
    """CoherentPrime hash with explicit uint32 wraparound, written independently of the reference."""
    h = (i0 * 1) & 0xFFFFFFFF
    h ^= (i1 * 2654435761) & 0xFFFFFFFF
    h ^= (i2 * 805459861) & 0xFFFFFFFF
    return h % size


def test_default_layout_follows_tcnn_conventions():
    lay = level_layout(HashGridConfig())
    # s_l = 16 * b^l - 1 with b = (2048/16)^(1/15): R_0 = 16, R_15 = 2048
    assert lay.resolutions[0] == 16 and lay.resolutions[-1] == 2048
    assert lay.scales[0] == 15.0
    # dense coarse levels use R^3 rows (rounded to 8), the rest the full 2^19 table
    assert lay.sizes[0] == 16**3 and lay.dense[0]
    assert lay.sizes[1] == (23**3 + 7) // 8 * 8 and lay.dense[1]
    assert sum(lay.dense) == 5
    assert all(s == 2**19 for s, d in zip(lay.sizes, lay.dense) if not d)
    assert lay.offsets[1] == 4096 and lay.total_rows == sum(lay.sizes)


def test_dense_level_reproduces_a_linear_table_exactly():
    # one level, s = 3, R = 4: dense, row = i0 + 4 i1 + 16 i2. A table equal to its row index is a
    # linear function of the corner, which trilinear interpolation reproduces: p0 + 4 p1 + 16 p2.
    cfg = HashGridConfig(n_levels=1, n_features=2, base_resolution=4, log2_table_size=10)
    lay = level_layout(cfg)
    assert lay.dense == (True,) and lay.sizes == (64,)
    table = torch.zeros(64, 2, dtype=torch.float64)
    table[:, 0] = torch.arange(64, dtype=torch.float64)
    table[:, 1] = 7.0
    x = torch.tensor([[0.5, 0.25, 0.75], [0.1, 0.6, 0.3]], dtype=torch.float64)
    y = hash_grid_encode(x, table, cfg, backend="reference")
    p = x * 3 + 0.5  # (2.0, 1.25, 2.75) and (0.8, 2.3, 1.4)
    expected = p[:, 0] + 4 * p[:, 1] + 16 * p[:, 2]
    assert torch.allclose(y[:, 0], expected, atol=1e-9)
    assert float(expected[0]) == pytest.approx(2 + 5 + 44)
    assert torch.allclose(y[:, 1], torch.full((2,), 7.0, dtype=torch.float64))


def test_hashed_level_matches_scalar_hand_computation():
    cfg = HashGridConfig(n_levels=1, n_features=2, base_resolution=64, log2_table_size=10)
    lay = level_layout(cfg)
    assert lay.dense == (False,) and lay.sizes == (1024,) and lay.scales == (63.0,)
    g = torch.Generator().manual_seed(1)
    table = torch.randn(1024, 2, generator=g, dtype=torch.float64)
    pts = [(0.123, 0.456, 0.789), (0.9, 0.01, 0.5), (0.33, 0.33, 0.99)]
    y = hash_grid_encode(torch.tensor(pts, dtype=torch.float64), table, cfg, backend="reference")
    for n, pt in enumerate(pts):
        pos = [63.0 * c + 0.5 for c in pt]
        cell = [math.floor(v) for v in pos]
        frac = [v - c for v, c in zip(pos, cell)]
        acc = [0.0, 0.0]
        for corner in range(8):
            bits = [(corner >> k) & 1 for k in range(3)]
            w = 1.0
            for k in range(3):
                w *= frac[k] if bits[k] else 1.0 - frac[k]
            row = _python_hash(cell[0] + bits[0], cell[1] + bits[1], cell[2] + bits[2], 1024)
            acc[0] += w * float(table[row, 0])
            acc[1] += w * float(table[row, 1])
        assert float(y[n, 0]) == pytest.approx(acc[0], abs=1e-10)
        assert float(y[n, 1]) == pytest.approx(acc[1], abs=1e-10)


def test_smoothstep_weights_on_a_dense_level():
    # R = 4 dense level, table = i0 (varies along x only): output = cell + smoothstep(frac).
    cfg = HashGridConfig(n_levels=1, n_features=1, base_resolution=4, log2_table_size=10, interpolation="smoothstep")
    table = (torch.arange(64, dtype=torch.float64) % 4)[:, None]
    x = torch.tensor([[0.25, 0.5, 0.5]], dtype=torch.float64)  # p0 = 1.25: cell 1, frac 0.25
    y = hash_grid_encode(x, table, cfg, backend="reference")
    assert float(y[0, 0]) == pytest.approx(1 + 0.25**2 * (3 - 2 * 0.25))
    lin = hash_grid_encode(x, table, HashGridConfig(n_levels=1, n_features=1, base_resolution=4, log2_table_size=10), backend="reference")
    assert float(lin[0, 0]) == pytest.approx(1.25)


def test_levels_are_concatenated_level_major():
    cfg = HashGridConfig(n_levels=3, n_features=2, base_resolution=4, per_level_scale=2.0, log2_table_size=8)
    lay = level_layout(cfg)
    x = torch.rand(10, 3, dtype=torch.float64)
    table = torch.zeros(table_rows(cfg), 2, dtype=torch.float64)
    table[lay.offsets[1] : lay.offsets[2]] = 1.0  # only level 1 is non-zero: a partition of unity gives 1
    y = hash_grid_encode(x, table, cfg, backend="reference")
    assert torch.allclose(y[:, 2:4], torch.ones(10, 2, dtype=torch.float64))
    assert torch.count_nonzero(y[:, :2]) == 0 and torch.count_nonzero(y[:, 4:]) == 0


@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
def test_gradcheck_table_and_x_float64(interpolation):
    cfg = HashGridConfig(n_levels=3, n_features=2, base_resolution=3, per_level_scale=2.5, log2_table_size=9,
                         interpolation=interpolation)  # fmt: skip
    assert level_layout(cfg).dense == (True, True, False)
    g = torch.Generator().manual_seed(0)
    table = torch.randn(table_rows(cfg), 2, generator=g, dtype=torch.float64, requires_grad=True)
    x = (torch.rand(6, 3, generator=g, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    fn = lambda xx, tt: hash_grid_encode(xx, tt, cfg, backend="reference")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, table), eps=1e-6, atol=1e-6, fast_mode=True)


def test_level_mask_zeroes_output_and_gradient():
    cfg = HashGridConfig(n_levels=4, n_features=2, base_resolution=4, log2_table_size=8)
    lay = level_layout(cfg)
    table = init_table(cfg, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    x = torch.rand(50, 3)
    y = hash_grid_encode(x, table, cfg, backend="reference", level_mask=2)
    assert torch.count_nonzero(y[:, 4:]) == 0 and torch.count_nonzero(y[:, :4]) > 0
    y.sum().backward()
    assert torch.count_nonzero(table.grad[lay.offsets[2] :]) == 0
    assert torch.count_nonzero(table.grad[: lay.offsets[2]]) > 0
    full = hash_grid_encode(x, table, cfg, backend="reference")
    assert torch.equal(y[:, :4], full[:, :4])
    same = hash_grid_encode(x, table, cfg, backend="reference", level_mask=[True, True, False, False])
    assert torch.equal(same, y)
    with pytest.raises(ValueError, match="level_mask"):
        hash_grid_encode(x, table, cfg, backend="reference", level_mask=[True, False])


def test_table_gradient_is_the_sum_of_interpolation_weights():
    # d(sum of outputs)/d(table row) = sum of that row's corner weights; weights of a point sum to 1.
    cfg = HashGridConfig(n_levels=2, n_features=1, base_resolution=5, log2_table_size=6)
    table = torch.zeros(table_rows(cfg), 1, dtype=torch.float64, requires_grad=True)
    x = torch.rand(37, 3, dtype=torch.float64)
    hash_grid_encode(x, table, cfg, backend="reference").sum().backward()
    assert float(table.grad.sum()) == pytest.approx(37 * 2)
    assert (table.grad >= 0).all()


def test_inputs_are_clamped_to_the_unit_cube():
    cfg = HashGridConfig(n_levels=2, n_features=2, base_resolution=4, log2_table_size=8)
    table = init_table(cfg, generator=torch.Generator().manual_seed(3))
    x = torch.tensor([[-0.2, 0.5, 1.3], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    y = hash_grid_encode(x, table, cfg, backend="reference")
    assert torch.equal(y[0], hash_grid_encode(x[:1].clamp(0, 1), table, cfg, backend="reference")[0])
    assert torch.isfinite(y).all()


def test_half_table_accumulates_in_float32():
    cfg = HashGridConfig(n_levels=3, n_features=2, base_resolution=4, log2_table_size=8, dtype="float16")
    table = init_table(cfg, generator=torch.Generator().manual_seed(0))
    assert table.dtype == torch.float16
    x = torch.rand(20, 3)
    y = hash_grid_encode(x, table, cfg, backend="reference")
    assert y.dtype == torch.float32
    assert torch.allclose(y, hash_grid_encode(x, table.float(), cfg, backend="reference"), atol=1e-9)


def test_module_init_forward_and_coarse_to_fine():
    enc = HashGridEncoding(HashGridConfig(n_levels=4, n_features=2, base_resolution=4, log2_table_size=8), seed=0)
    assert enc.output_dim == 8 and enc.table.shape == (table_rows(enc.cfg), 2)
    assert float(enc.table.abs().max()) <= 1e-4 and float(enc.table.abs().max()) > 0
    x = torch.rand(30, 3)
    enc.set_active_levels(1)
    y = enc(x)
    assert y.shape == (30, 8) and torch.count_nonzero(y[:, 2:]) == 0
    assert enc.finest_active_resolution() == level_layout(enc.cfg).resolutions[0]
    enc.set_active_levels(99)
    assert torch.count_nonzero(enc(x)[:, 6:]) > 0


def test_bad_arguments_are_rejected():
    cfg = HashGridConfig(n_levels=2, n_features=2, base_resolution=4, log2_table_size=8)
    with pytest.raises(ValueError, match="table must be"):
        hash_grid_encode(torch.rand(3, 3), torch.zeros(5, 2), cfg, backend="reference")
    with pytest.raises(ValueError, match="cuda"):
        hash_grid_encode(torch.rand(3, 3), init_table(cfg), cfg, backend="cuda")
    with pytest.raises(ValueError, match="n_features"):
        HashGridConfig(n_features=3)


@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
def test_vectorized_twin_matches_the_reference(interpolation):
    from recon.rasterizers.reference.hashgrid import VectorizedHashGrid

    cfg = HashGridConfig(n_levels=6, n_features=2, base_resolution=4, finest_resolution=300, log2_table_size=12,
                         interpolation=interpolation)  # fmt: skip
    g = torch.Generator().manual_seed(2)
    table = torch.randn(table_rows(cfg), 2, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.rand(500, 3, generator=g, dtype=torch.float64, requires_grad=True)
    cot = torch.randn(500, cfg.output_dim, generator=g, dtype=torch.float64)
    for mask in (None, 3):
        a = hash_grid_encode(x, table, cfg, backend="reference", level_mask=mask)
        b = VectorizedHashGrid(cfg)(x, table, level_mask=mask)
        assert torch.allclose(a, b, atol=1e-12)
        ga = torch.autograd.grad((a * cot).sum(), (x, table))
        gb = torch.autograd.grad((b * cot).sum(), (x, table))
        assert torch.allclose(ga[0], gb[0], atol=1e-9) and torch.allclose(ga[1], gb[1], atol=1e-12)


def test_kernel_level_masks_are_built_once_per_device():
    from recon.rasterizers.hashgrid import _active_bytes

    cfg = HashGridConfig(n_levels=4, n_features=2, base_resolution=4, log2_table_size=8)
    assert _active_bytes(cfg, None, "cpu").numel() == 0 and _active_bytes(cfg, 4, "cpu").numel() == 0
    two = _active_bytes(cfg, 2, "cpu")
    assert two.tolist() == [1, 1, 0, 0] and _active_bytes(cfg, 2, "cpu") is two  # cached, no new copy
    assert _active_bytes(cfg, [True, False, True, False], "cpu").tolist() == [1, 0, 1, 0]
    assert _active_bytes(cfg, torch.tensor([False, True, True, True]), "cpu").tolist() == [0, 1, 1, 1]
    with pytest.raises(ValueError, match="level_mask"):
        _active_bytes(cfg, [True], "cpu")
