"""Axis conventions of splat files, and the exact change of frame for Gaussian parameters.

recon's Gaussians live in the dataset's world as trained (the frame of the cameras, OpenCV style).
Splat files label that frame ``RDF`` (x right, y down, z forward), as the 3DGS PLY does. Other formats
store other frames: SPZ's default is ``RUB`` (three.js / OpenGL), glTF is Y-up right-handed.

A frame name is three letters giving the direction of its +x, +y and +z axes: R/L (right/left),
U/D (up/down), F/B (front/back), e.g. ``RDF``, ``RUB``, ``LUF``, ``RFU`` (the 16 names SPZ knows, and
the other valid permutations). :func:`frame_change` gives the orthogonal matrix ``A`` with
``p_to = A @ p_from``; :func:`transform_gaussians` applies any orthogonal ``A`` (rotations and
reflections), a uniform scale and a translation to raw Gaussian parameters:

- means: ``s A mu + t``;
- rotations: ``R' = B R`` with the proper rotation ``B = det(A) A`` (the covariance becomes
  ``A Sigma A^T``); for axis flips (diagonal ``A``) the equivalent ``B R B^T``, quaternion
  ``(w, v) -> (w, B v)``, as other tools write it;
- log scales: ``+ log s``;
- SH: the colour seen along direction ``d`` in the new frame equals the old colour along
  ``A^T d``; each band l transforms by a (2l+1)x(2l+1) matrix found by least squares on a fixed
  spherical point set (exact up to float rounding because every band is closed under rotations and
  reflections). The DC term is unchanged.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch

_AXIS_DIRECTIONS = {
    # expressed in the canonical RUB frame (x right, y up, z back)
    "R": (1.0, 0.0, 0.0),
    "L": (-1.0, 0.0, 0.0),
    "U": (0.0, 1.0, 0.0),
    "D": (0.0, -1.0, 0.0),
    "B": (0.0, 0.0, 1.0),
    "F": (0.0, 0.0, -1.0),
}

# recon's world as splat files label it (same as the 3DGS PLY convention).
RECON_FRAME = "RDF"


def frame_matrix(name: str) -> np.ndarray:
    """Columns = the frame's +x, +y, +z axes expressed in RUB (maps frame coordinates to RUB)."""
    name = name.upper()
    if len(name) != 3 or any(c not in _AXIS_DIRECTIONS for c in name):
        raise ValueError(f"unknown axis convention {name!r}: expected three of R/L, U/D, F/B such as 'RDF'")
    m = np.array([_AXIS_DIRECTIONS[c] for c in name], dtype=np.float64).T
    if abs(abs(np.linalg.det(m)) - 1.0) > 1e-9:
        raise ValueError(f"axis convention {name!r} repeats an axis")
    return m


def frame_change(src: str, dst: str) -> np.ndarray:
    """``A`` with ``p_dst = A @ p_src`` for coordinates of the same point in two named frames."""
    return frame_matrix(dst).T @ frame_matrix(src)


def fibonacci_sphere(n: int = 128) -> np.ndarray:
    """``n`` well spread unit vectors (deterministic)."""
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(np.maximum(0.0, 1.0 - z * z))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


def sh_band_matrices(A: np.ndarray, degree: int) -> list[np.ndarray]:
    """Per band l = 1..degree the matrix ``X_l`` with ``c'_l = X_l @ c_l`` (coefficients of band l)
    for the frame change ``d_new = A d_old``. Uses recon's SH basis (``sh_basis``)."""
    from recon.rasterizers.reference.sh import sh_basis

    if degree <= 0:
        return []
    A = np.asarray(A, dtype=np.float64).reshape(3, 3)
    dirs = fibonacci_sphere(128)
    basis_new = sh_basis(degree, torch.from_numpy(dirs)).numpy()  # Y(d)
    basis_old = sh_basis(degree, torch.from_numpy(dirs @ A)).numpy()  # Y(A^T d); rows d^T A = (A^T d)^T
    out = []
    for band in range(1, degree + 1):
        lo, hi = band * band, (band + 1) * (band + 1)
        # Y_j(A^T d) = sum_k Y_k(d) x[k, j], so f'(d) = sum_j c_j Y_j(A^T d) has c'_k = sum_j x[k, j] c_j
        x, *_ = np.linalg.lstsq(basis_new[:, lo:hi], basis_old[:, lo:hi], rcond=None)
        out.append(x)
    return out


def _sh_transform(shN: np.ndarray, A: np.ndarray) -> np.ndarray:
    n_rest = shN.shape[1]
    degree = math.isqrt(n_rest + 1) - 1
    if degree == 0:
        return shN
    mats = sh_band_matrices(A, degree)
    out = np.empty_like(shN)
    for band, x in zip(range(1, degree + 1), mats):
        lo, hi = band * band - 1, (band + 1) * (band + 1) - 1  # shN has no DC row
        # c'[n, k, ch] = sum_j X[k, j] c[n, j, ch]
        out[:, lo:hi] = np.einsum("kj,njc->nkc", x, shN[:, lo:hi])
    return out


def matrix_to_quaternion(r: np.ndarray) -> np.ndarray:
    """(w, x, y, z) of a proper rotation matrix (Shepperd's method: divide by the largest term)."""
    r = np.asarray(r, np.float64)
    tr = np.trace(r)
    cands = np.array([1 + tr, 1 + 2 * r[0, 0] - tr, 1 + 2 * r[1, 1] - tr, 1 + 2 * r[2, 2] - tr])
    i = int(np.argmax(cands))
    s = 2.0 * math.sqrt(max(cands[i], 1e-300))
    if i == 0:
        q = [s / 4, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    elif i == 1:
        q = [(r[2, 1] - r[1, 2]) / s, s / 4, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
    elif i == 2:
        q = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, s / 4, (r[1, 2] + r[2, 1]) / s]
    else:
        q = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, s / 4]
    q = np.asarray(q)
    return q if q[0] >= 0 else -q


def _rotate_quaternions(q: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Quaternions (w, x, y, z) [N, 4] of the Gaussians' rotations after the frame change ``A``.

    The covariance becomes ``A R S^2 R^T A^T``. With ``B = det(A) A`` (a proper rotation) that is
    ``(B R) S^2 (B R)^T``, so ``q' = q_B * q``. When ``A`` is diagonal (axis flips) we use the
    equivalent ``B R B^T`` instead, ``q' = (w, B v)``: the same covariance (``B^T S^2 B = S^2``), and the
    quaternion other tools produce when they flip axes (SPZ flips quaternion components)."""
    B = np.sign(np.linalg.det(A)) * A
    if np.allclose(B, np.diag(np.diag(B))):
        return np.concatenate([q[:, :1], q[:, 1:] @ B.T], axis=1)
    w1, v1 = (lambda qb: (qb[0], qb[1:]))(matrix_to_quaternion(B))
    w2, v2 = q[:, :1], q[:, 1:]
    w = w1 * w2 - v2 @ v1[:, None]
    v = w1 * v2 + w2 * v1[None, :] + np.cross(np.broadcast_to(v1, v2.shape), v2)
    return np.concatenate([w, v], axis=1)


def transform_gaussians(
    params: Mapping[str, torch.Tensor | np.ndarray],
    A: np.ndarray,
    *,
    translation: np.ndarray | None = None,
    scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Raw Gaussian parameters after ``p -> scale * A p + translation`` (A orthogonal; see module doc).
    Returns new float32 CPU tensors; ``opacities`` and ``sh0`` are copied unchanged."""
    A = np.asarray(A, dtype=np.float64).reshape(3, 3)
    if not np.allclose(A @ A.T, np.eye(3), atol=1e-6):
        raise ValueError("transform_gaussians needs an orthogonal matrix")
    if scale <= 0:
        raise ValueError("scale must be positive")

    def f64(name: str) -> np.ndarray:
        t = params[name]
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().numpy()
        return np.asarray(t, dtype=np.float64)

    means = f64("means") @ A.T * scale
    if translation is not None:
        means = means + np.asarray(translation, np.float64).reshape(1, 3)
    quats = _rotate_quaternions(f64("quats"), A)
    scales = f64("scales") + math.log(scale)
    shN = params.get("shN")
    shN = np.zeros((len(means), 0, 3)) if shN is None else f64("shN")
    shN = _sh_transform(shN, A)

    def t32(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    return {
        "means": t32(means),
        "quats": t32(quats),
        "scales": t32(scales),
        "opacities": t32(f64("opacities")),
        "sh0": t32(f64("sh0")),
        "shN": t32(shN),
    }


def convert_frame(params: Mapping[str, torch.Tensor | np.ndarray], src: str, dst: str) -> dict[str, torch.Tensor]:
    """Gaussians given in frame ``src`` re-expressed in frame ``dst`` (names as :func:`frame_matrix`)."""
    return transform_gaussians(params, frame_change(src, dst))
