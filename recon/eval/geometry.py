"""Geometry metrics of a reconstructed surface against a ground-truth mesh.

Both surfaces are sampled uniformly by area (with the face normal of each sample); distances are
nearest-neighbour distances between the two point sets (scipy KD-trees):

- accuracy = mean distance predicted -> ground truth; completeness = mean distance ground truth -> predicted;
- Chamfer = (accuracy + completeness) / 2 (the symmetric mean, as DTU reports it), also as a percentage
  of the ground truth's bounding-box diagonal so numbers compare across scales;
- normal consistency = mean |n_a . n_b| over nearest neighbours, both directions averaged (orientation
  free: meshes from different extractors may wind differently);
- precision / recall / F-score at a distance threshold (default 1% of the GT diagonal).

Sampling noise: with n samples on area A the NN distance of a perfect reconstruction is about
0.5 * sqrt(A / n), so compare methods at the same ``n_samples``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from recon.errors import InputError


@dataclass
class GeometryMetrics:
    chamfer: float
    chamfer_pct_diag: float
    accuracy: float
    completeness: float
    normal_consistency: float
    precision: float
    recall: float
    fscore: float
    threshold: float
    gt_diagonal: float
    n_samples: int

    def to_dict(self) -> dict:
        return asdict(self)


def load_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(vertices [V,3] float64, faces [F,3] int64) of a mesh file trimesh reads (obj, ply, stl, glb, ...)."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "mesh file not found")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"cannot read mesh: {exc}") from exc
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise InputError(path, "contains no triangles")
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)


def _as_arrays(mesh) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(mesh, (str, Path)):
        return load_mesh(mesh)
    if isinstance(mesh, tuple):
        v, f = mesh
    else:  # TriangleMesh or trimesh.Trimesh
        v, f = mesh.vertices, mesh.faces
    v, f = np.asarray(v, dtype=np.float64), np.asarray(f, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise ValueError("a mesh needs vertices [V,3] and at least one face [F,3]")
    return v, f


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniformly by area on the triangles, with their (unit) face normals."""
    rng = np.random.default_rng(seed)
    tri = vertices[faces]  # [F, 3, 3]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area2 = np.linalg.norm(cross, axis=-1)
    if not area2.sum() > 0:
        raise ValueError("mesh has zero surface area")
    face = rng.choice(len(faces), size=n, p=area2 / area2.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[face]
    pts = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    normals = cross[face] / np.maximum(area2[face], 1e-30)[:, None]
    return pts, normals


def compare_point_sets(
    pred: np.ndarray,
    gt: np.ndarray,
    pred_normals: np.ndarray | None = None,
    gt_normals: np.ndarray | None = None,
    threshold: float | None = None,
    gt_diagonal: float | None = None,
) -> GeometryMetrics:
    """Metrics between two point sets (normals optional: normal consistency is NaN without them)."""
    from scipy.spatial import cKDTree

    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if len(pred) == 0 or len(gt) == 0:
        raise ValueError("both point sets must be non-empty")
    diag = float(gt_diagonal) if gt_diagonal is not None else float(np.linalg.norm(gt.max(0) - gt.min(0)))
    thr = float(threshold) if threshold is not None else 0.01 * diag
    d_pred, i_pred = cKDTree(gt).query(pred, workers=-1)  # predicted -> GT
    d_gt, i_gt = cKDTree(pred).query(gt, workers=-1)  # GT -> predicted
    acc, comp = float(d_pred.mean()), float(d_gt.mean())
    nc = float("nan")
    if pred_normals is not None and gt_normals is not None:
        pn = pred_normals / np.maximum(np.linalg.norm(pred_normals, axis=-1, keepdims=True), 1e-30)
        gn = gt_normals / np.maximum(np.linalg.norm(gt_normals, axis=-1, keepdims=True), 1e-30)
        a = np.abs((pn * gn[i_pred]).sum(-1)).mean()
        b = np.abs((gn * pn[i_gt]).sum(-1)).mean()
        nc = float((a + b) / 2)
    precision = float((d_pred < thr).mean())
    recall = float((d_gt < thr).mean())
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    chamfer = (acc + comp) / 2
    return GeometryMetrics(chamfer=chamfer, chamfer_pct_diag=100.0 * chamfer / diag if diag > 0 else float("nan"),
                           accuracy=acc, completeness=comp, normal_consistency=nc, precision=precision, recall=recall,
                           fscore=f, threshold=thr, gt_diagonal=diag, n_samples=len(pred))  # fmt: skip


def evaluate_mesh(pred, gt, *, n_samples: int = 100_000, threshold: float | None = None, seed: int = 0) -> GeometryMetrics:
    """Compare mesh ``pred`` against mesh ``gt``: each a path, a ``(vertices, faces)`` tuple, a
    ``recon.export.mesh.TriangleMesh`` or a ``trimesh.Trimesh``. Both are sampled with ``n_samples`` points."""
    pv, pf = _as_arrays(pred)
    gv, gf = _as_arrays(gt)
    p_pts, p_n = sample_surface(pv, pf, n_samples, seed=seed)
    g_pts, g_n = sample_surface(gv, gf, n_samples, seed=seed + 1)
    diag = float(np.linalg.norm(gv.max(0) - gv.min(0)))
    return compare_point_sets(p_pts, g_pts, p_n, g_n, threshold=threshold, gt_diagonal=diag)
