"""The antimatter15 ``.splat`` format: writer, and a reader for round trips and imports.

A headerless array of 32-byte little-endian records, one per Gaussian:

    position  3 x float32        (the 3DGS PLY frame, recon's ``RDF``; nothing is converted)
    scale     3 x float32        linear standard deviations (``exp`` of recon's log scales)
    colour    4 x uint8          R, G, B = 255 * (0.5 + SH_C0 * f_dc) clamped; A = 255 * sigmoid(opacity)
    rotation  4 x uint8          the unit quaternion (w, x, y, z) as ``round(128 * q + 128)`` clamped

There is no SH above degree 0 and no room for metadata (the axis convention cannot be stated in the
file). Writers sort the records by ``volume x opacity``, largest first, so viewers that stream the
file show the big splats first; :func:`splat_order` gives that permutation. Reading decodes the
bytes back (rotation ``(b - 128) / 128`` renormalised; alpha clamped half a step inside (0, 1) so
the logit stays finite).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from recon.errors import InputError
from recon.utils.atomic import atomic_path

SH_C0 = 0.28209479177387814
RECORD = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)])
assert RECORD.itemsize == 32


def _f64(params: Mapping[str, torch.Tensor | np.ndarray], name: str) -> np.ndarray:
    t = params[name]
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=np.float64)


def splat_order(params: Mapping[str, torch.Tensor | np.ndarray]) -> np.ndarray:
    """Record order of :func:`write_splat`: descending ``exp(sum log scales) * sigmoid(opacity)`` (stable)."""
    log_volume = _f64(params, "scales").reshape(-1, 3).sum(axis=1)
    opac = _f64(params, "opacities").reshape(-1)
    key = log_volume - np.logaddexp(0.0, -opac)  # log(volume * sigmoid(opacity))
    return np.argsort(-key, kind="stable")


def encode_splat(params: Mapping[str, torch.Tensor | np.ndarray], *, sort: bool = True) -> bytes:
    """The ``.splat`` bytes of Gaussians given as recon's raw parameters (SH above degree 0 dropped)."""
    means = _f64(params, "means").reshape(-1, 3)
    n = len(means)
    order = splat_order(params) if sort else np.arange(n)
    rec = np.zeros(n, dtype=RECORD)
    rec["position"] = means[order]
    rec["scale"] = np.exp(_f64(params, "scales").reshape(n, 3)[order])
    rgb = 0.5 + SH_C0 * _f64(params, "sh0").reshape(n, 3)[order]
    alpha = 1.0 / (1.0 + np.exp(-_f64(params, "opacities").reshape(n)[order]))
    rec["rgba"] = np.clip(np.round(np.concatenate([rgb, alpha[:, None]], axis=1) * 255.0), 0, 255)
    q = _f64(params, "quats").reshape(n, 4)[order]
    q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-30)
    rec["rotation"] = np.clip(np.round(q * 128.0 + 128.0), 0, 255)
    return rec.tobytes()


def write_splat(path: str | Path, params: Mapping[str, torch.Tensor | np.ndarray], *, sort: bool = True) -> None:
    """Write Gaussians as an antimatter15 ``.splat`` file, atomically."""
    data = encode_splat(params, sort=sort)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_splat(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.splat`` file into recon's raw parameters (SH degree 0, float32, CPU)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    if len(data) == 0 or len(data) % RECORD.itemsize:
        raise InputError(path, f"a .splat file is a whole number of 32-byte records; this one has {len(data)} bytes")
    rec = np.frombuffer(data, dtype=RECORD)
    n = len(rec)
    scale = rec["scale"].astype(np.float64)
    if not np.isfinite(rec["position"]).all() or not (np.isfinite(scale).all() and (scale > 0).all()):
        raise InputError(path, "not a .splat file (non-finite positions or non-positive scales)")
    rgba = rec["rgba"].astype(np.float64) / 255.0
    alpha = np.clip(rgba[:, 3], 0.5 / 255.0, 1.0 - 0.5 / 255.0)
    q = (rec["rotation"].astype(np.float64) - 128.0) / 128.0
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), np.array([1.0, 0.0, 0.0, 0.0]))

    def t32(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    return {
        "means": t32(rec["position"]),
        "quats": t32(q),
        "scales": t32(np.log(scale)),
        "opacities": t32(np.log(alpha / (1.0 - alpha))),
        "sh0": t32(((rgba[:, :3] - 0.5) / SH_C0).reshape(n, 1, 3)),
        "shN": torch.zeros(n, 0, 3),
    }
