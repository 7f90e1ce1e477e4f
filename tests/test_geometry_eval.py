"""Geometry metrics (recon.eval.geometry) on analytic shapes with known answers."""

import numpy as np
import pytest
import trimesh

from recon.errors import InputError
from recon.eval.geometry import compare_point_sets, evaluate_mesh, load_mesh, sample_surface


def _sphere(radius: float, subdivisions: int = 5):
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return np.asarray(m.vertices), np.asarray(m.faces)


def test_sphere_samples_lie_on_the_sphere_with_radial_normals():
    v, f = _sphere(2.0)
    pts, n = sample_surface(v, f, 5000, seed=0)
    r = np.linalg.norm(pts, axis=-1)
    assert r.max() <= 2.0 + 1e-9 and r.min() > 2.0 * 0.999  # chords of a fine icosphere
    radial = pts / r[:, None]
    assert np.abs((radial * n).sum(-1)).min() > 0.99


def test_concentric_spheres_have_the_radius_difference_as_chamfer():
    # every point of one concentric sphere is |r1 - r2| from the other: Chamfer = 0.1 (plus sampling
    # noise of order 0.5 * sqrt(area / n) ~ 0.005 here, added in quadrature: ~1e-4)
    pred, gt = _sphere(1.0), _sphere(1.1)
    m = evaluate_mesh(pred, gt, n_samples=100_000, seed=0)
    assert m.chamfer == pytest.approx(0.1, rel=0.02)
    assert m.accuracy == pytest.approx(0.1, rel=0.02) and m.completeness == pytest.approx(0.1, rel=0.02)
    diag = 2.2 * np.sqrt(3)  # bounding box of the GT sphere
    assert m.gt_diagonal == pytest.approx(diag, rel=1e-3)
    assert m.chamfer_pct_diag == pytest.approx(100 * 0.1 / diag, rel=0.02)
    assert m.normal_consistency > 0.995
    # the default threshold (1% of the diagonal = 0.038) is below the 0.1 gap: nothing matches
    assert m.fscore == 0.0
    loose = evaluate_mesh(pred, gt, n_samples=20_000, threshold=0.15)
    assert loose.fscore == 1.0 and loose.precision == 1.0 and loose.recall == 1.0


def test_identical_meshes_score_near_zero_and_full_fscore():
    s = _sphere(1.0)
    m = evaluate_mesh(s, s, n_samples=50_000)
    assert m.chamfer < 0.01 and m.fscore > 0.99 and m.normal_consistency > 0.98


def test_missing_half_lowers_completeness_not_accuracy():
    v, f = _sphere(1.0)
    keep = v[f].mean(axis=1)[:, 2] > 0  # upper hemisphere only
    m = evaluate_mesh((v, f[keep]), (v, f), n_samples=50_000)
    assert m.accuracy < 0.01
    assert m.completeness > 0.2  # the lower half is ~0.3-1.4 away from the upper rim on average
    assert m.recall == pytest.approx(0.5, abs=0.05) and m.precision > 0.99


def test_perpendicular_normals_give_zero_consistency():
    pts = np.random.default_rng(0).random((100, 3))
    m = compare_point_sets(pts, pts, np.tile([1.0, 0, 0], (100, 1)), np.tile([0, 1.0, 0], (100, 1)))
    assert m.normal_consistency == pytest.approx(0.0) and m.chamfer == 0.0


def test_load_mesh_round_trip_and_errors(tmp_path):
    v, f = _sphere(1.0, subdivisions=2)
    path = tmp_path / "s.ply"
    trimesh.Trimesh(v, f, process=False).export(path)
    lv, lf = load_mesh(path)
    assert lv.shape == v.shape and lf.shape == f.shape
    assert np.allclose(lv, v, atol=1e-6)
    assert evaluate_mesh(path, (v, f), n_samples=5000).chamfer < 0.04  # sampling noise ~0.5 sqrt(area / n) = 0.025
    with pytest.raises(InputError, match="not found"):
        load_mesh(tmp_path / "missing.obj")
    bad = tmp_path / "bad.obj"
    bad.write_text("this is not a mesh\n")
    with pytest.raises(InputError, match="bad.obj"):
        load_mesh(bad)
