"""SuperSplat / PlayCanvas compressed PLY: reader and writer.

Layout (from the MIT-licensed PlayCanvas engine / splat-transform sources; this is our own code):
a binary little-endian PLY with

- ``element chunk`` (one per 256 splats, in file order) of float properties ``min_x min_y min_z
  max_x max_y max_z min_scale_x .. max_scale_z`` and, optionally, ``min_r min_g min_b max_r max_g
  max_b`` (colour = ``0.5 + SH_C0 * f_dc``; without them the colour bytes are the colour itself);
- ``element vertex`` of four ``uint`` properties:
  ``packed_position`` and ``packed_scale``: x in bits 21-31 (11 bits), y in 11-20 (10 bits), z in
  0-10 (11 bits), each an unorm interpolating between the chunk's min and max (log scales);
  ``packed_rotation``: bits 30-31 the index of the largest-magnitude component of the unit
  quaternion in PLY order (w, x, y, z), which is made positive and dropped; the three others in
  order, 10-bit unorms each ``(v / 1023 - 0.5) * sqrt(2)`` (bits 20-29, 10-19, 0-9);
  ``packed_color``: R, G, B in bits 24-31, 16-23, 8-15 (unorm between the chunk's colour min and
  max) and opacity after the sigmoid in bits 0-7;
- optionally ``element sh`` with ``uchar f_rest_0..`` (9, 24 or 45 values, the 3DGS channel-major
  order) decoding as ``(n - 0.5) * 8`` with ``n = 0`` for 0, ``1`` for 255, ``(b + 0.5) / 256``
  otherwise.

The frame is the 3DGS PLY's (recon's ``RDF``); nothing is converted. The writer sorts the splats in
Morton order of their positions first (so each chunk of 256 is spatially compact, as SuperSplat
does): :func:`morton_order` gives that permutation. Opacity bytes of 0 or 255 decode to a finite
logit (alpha clamped half a step inside (0, 1)).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from recon.errors import InputError
from recon.export.ply import COORDINATE_COMMENT
from recon.utils.atomic import atomic_path
from recon.utils.ply import read_ply_header

CHUNK_SIZE = 256
SH_C0 = 0.28209479177387814
CHUNK_PROPS = [
    "min_x", "min_y", "min_z", "max_x", "max_y", "max_z",
    "min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z",
]
COLOR_PROPS = ["min_r", "min_g", "min_b", "max_r", "max_g", "max_b"]
VERTEX_PROPS = ["packed_position", "packed_rotation", "packed_scale", "packed_color"]


def is_compressed_ply(path: str | Path) -> bool:
    """True when the PLY header has the compressed layout (``chunk`` + packed ``vertex``)."""
    try:
        header = read_ply_header(path)
    except (InputError, OSError):
        return False
    names = {e["name"]: e["properties"] for e in header["elements"]}
    return "chunk" in names and "vertex" in names and set(VERTEX_PROPS) <= set(names["vertex"])


# --------------------------------------------------------------------------------------------------
# bit packing helpers (vectorised)
# --------------------------------------------------------------------------------------------------


def _unorm(value: np.ndarray, shift: int, bits: int) -> np.ndarray:
    mask = (1 << bits) - 1
    return ((value >> np.uint32(shift)) & np.uint32(mask)).astype(np.float64) / mask


def _pack_unorm(t: np.ndarray, bits: int) -> np.ndarray:
    mask = (1 << bits) - 1
    return np.clip(np.floor(t * mask + 0.5), 0, mask).astype(np.uint32)


def _normalize(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    span = hi - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(span < 1e-5, 0.0, (x - lo) / np.where(span == 0, 1.0, span))
    return np.clip(t, 0.0, 1.0)


def unpack_rotation(packed: np.ndarray) -> np.ndarray:
    """``packed_rotation`` -> unit quaternions [N, 4] in PLY order (w, x, y, z)."""
    norm = math.sqrt(2.0)
    a = (_unorm(packed, 20, 10) - 0.5) * norm
    b = (_unorm(packed, 10, 10) - 0.5) * norm
    c = (_unorm(packed, 0, 10) - 0.5) * norm
    m = np.sqrt(np.maximum(0.0, 1.0 - (a * a + b * b + c * c)))
    which = (packed >> np.uint32(30)).astype(np.int64)
    out = np.empty((len(packed), 4), np.float64)
    # the three stored components fill the slots other than ``which``, in order
    order = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
    rows = np.arange(len(packed))
    slots = order[which]
    out[rows, which] = m
    out[rows, slots[:, 0]] = a
    out[rows, slots[:, 1]] = b
    out[rows, slots[:, 2]] = c
    return out


def pack_rotation(q_wxyz: np.ndarray) -> np.ndarray:
    q = q_wxyz / np.linalg.norm(q_wxyz, axis=1, keepdims=True).clip(1e-30)
    rows = np.arange(len(q))
    largest = np.argmax(np.abs(q), axis=1)
    q = np.where((q[rows, largest] < 0)[:, None], -q, q)
    result = largest.astype(np.uint32)
    for i in range(4):
        v = _pack_unorm(q[:, i] * (math.sqrt(2.0) * 0.5) + 0.5, 10)
        result = np.where(largest != i, (result << np.uint32(10)) | v, result)
    return result


def _pack_111011(t: np.ndarray) -> np.ndarray:
    return (_pack_unorm(t[:, 0], 11) << np.uint32(21)) | (_pack_unorm(t[:, 1], 10) << np.uint32(11)) | _pack_unorm(t[:, 2], 11)


def _unpack_111011(v: np.ndarray) -> np.ndarray:
    return np.stack([_unorm(v, 21, 11), _unorm(v, 11, 10), _unorm(v, 0, 11)], axis=-1)


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


def _read_elements(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """All elements of a binary little-endian PLY with scalar properties, as {element: {prop: array}}."""
    from recon.utils.ply import _parse_header  # one PLY header parser for the project

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    fmt, elements, offset = _parse_header(path, data)
    if fmt != "binary_little_endian":
        raise InputError(path, f"compressed PLY must be binary_little_endian, got {fmt}")
    out: dict[str, dict[str, np.ndarray]] = {}
    for e in elements:
        if e.has_list:
            raise InputError(path, f"unexpected list property in element {e.name!r} of a compressed PLY")
        dtype = np.dtype([(name, "<" + kind) for name, kind in e.props])
        need = e.count * dtype.itemsize
        if offset + need > len(data):
            raise InputError(path, f"truncated: element {e.name!r} needs {need} bytes, {max(0, len(data) - offset)} left")
        table = np.frombuffer(data, dtype=dtype, count=e.count, offset=offset)
        out[e.name] = {name: table[name] for name, _ in e.props}
        offset += need
    return out


def read_compressed_ply(path: str | Path) -> dict[str, torch.Tensor]:
    """Decode a SuperSplat compressed PLY into recon's raw Gaussian parameters (float32, CPU)."""
    path = Path(path)
    el = _read_elements(path)
    if "chunk" not in el or "vertex" not in el:
        raise InputError(path, "not a compressed PLY (needs 'chunk' and 'vertex' elements)")
    chunk, vertex = el["chunk"], el["vertex"]
    for name in CHUNK_PROPS:
        if name not in chunk:
            raise InputError(path, f"compressed PLY chunk element lacks property {name}")
    for name in VERTEX_PROPS:
        if name not in vertex or vertex[name].dtype != np.dtype("<u4"):
            raise InputError(path, f"compressed PLY vertex element needs uint property {name}")
    n = len(vertex["packed_position"])
    n_chunks = len(chunk["min_x"])
    if n_chunks != math.ceil(n / CHUNK_SIZE):
        raise InputError(path, f"{n_chunks} chunks do not match {n} splats ({CHUNK_SIZE} per chunk)")
    ci = np.arange(n) // CHUNK_SIZE

    def lerp(prefix_lo: str, prefix_hi: str, axes: tuple[str, str, str], t: np.ndarray) -> np.ndarray:
        lo = np.stack([chunk[f"{prefix_lo}{a}"][ci] for a in axes], axis=-1).astype(np.float64)
        hi = np.stack([chunk[f"{prefix_hi}{a}"][ci] for a in axes], axis=-1).astype(np.float64)
        return lo * (1.0 - t) + hi * t

    means = lerp("min_", "max_", ("x", "y", "z"), _unpack_111011(vertex["packed_position"]))
    scales = lerp("min_scale_", "max_scale_", ("x", "y", "z"), _unpack_111011(vertex["packed_scale"]))
    quats = unpack_rotation(vertex["packed_rotation"])
    pc = vertex["packed_color"]
    crgb = np.stack([_unorm(pc, 24, 8), _unorm(pc, 16, 8), _unorm(pc, 8, 8)], axis=-1)
    if all(p in chunk for p in COLOR_PROPS):
        crgb = lerp("min_", "max_", ("r", "g", "b"), crgb)
    sh0 = ((crgb - 0.5) / SH_C0).reshape(n, 1, 3)
    alpha = np.clip(_unorm(pc, 0, 8), 0.5 / 255.0, 1.0 - 0.5 / 255.0)
    opacities = np.log(alpha / (1.0 - alpha))

    shN = np.zeros((n, 0, 3))
    if "sh" in el:
        sh = el["sh"]
        names = [f"f_rest_{i}" for i in range(len(sh))]
        if len(sh) not in (9, 24, 45) or any(nm not in sh for nm in names):
            raise InputError(path, f"compressed PLY sh element has {len(sh)} properties, expected f_rest_0.. (9, 24 or 45)")
        raw = np.stack([sh[nm] for nm in names], axis=-1).astype(np.float64)
        if len(raw) != n:
            raise InputError(path, f"sh element has {len(raw)} rows for {n} splats")
        t = np.where(raw == 0, 0.0, np.where(raw == 255, 1.0, (raw + 0.5) / 256.0))
        rest = (t - 0.5) * 8.0
        k = len(names) // 3
        shN = rest.reshape(n, 3, k).transpose(0, 2, 1)  # channel-major -> [N, K-1, 3]

    def t32(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    return {
        "means": t32(means), "quats": t32(quats), "scales": t32(scales),
        "opacities": t32(opacities), "sh0": t32(sh0), "shN": t32(shN),
    }


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------


def _spread_bits_10(v: np.ndarray) -> np.ndarray:
    """Insert two zero bits between the 10 low bits of ``v`` (for a 30-bit Morton code)."""
    v = v.astype(np.uint64) & np.uint64(0x3FF)
    v = (v | (v << np.uint64(16))) & np.uint64(0x030000FF)
    v = (v | (v << np.uint64(8))) & np.uint64(0x0300F00F)
    v = (v | (v << np.uint64(4))) & np.uint64(0x030C30C3)
    v = (v | (v << np.uint64(2))) & np.uint64(0x09249249)
    return v


def morton_order(means: np.ndarray | torch.Tensor) -> np.ndarray:
    """The permutation that sorts points by a 30-bit Morton code over their bounding box (stable)."""
    m = means.detach().cpu().numpy() if isinstance(means, torch.Tensor) else np.asarray(means)
    m = m.astype(np.float64).reshape(-1, 3)
    if len(m) == 0:
        return np.zeros(0, np.int64)
    lo, hi = m.min(axis=0), m.max(axis=0)
    cell = np.floor(_normalize(m, lo, hi) * 1023.0 + 0.5).astype(np.uint64)
    code = (_spread_bits_10(cell[:, 0]) << np.uint64(2)) | (_spread_bits_10(cell[:, 1]) << np.uint64(1)) | _spread_bits_10(cell[:, 2])
    return np.argsort(code, kind="stable")


def write_compressed_ply(path: str | Path, params: Mapping[str, torch.Tensor | np.ndarray], *, sort: bool = True) -> None:
    """Write Gaussians as a SuperSplat compressed PLY, atomically (lossy; see the module doc).

    With ``sort`` (default) the splats are stored in :func:`morton_order`; SH above degree 3 is not
    representable (the format stores 9, 24 or 45 ``f_rest`` bytes)."""

    def f64(name: str) -> np.ndarray:
        t = params[name]
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().numpy()
        return np.asarray(t, dtype=np.float64)

    means = f64("means").reshape(-1, 3)
    n = len(means)
    if n == 0:
        raise ValueError("cannot write an empty compressed PLY")
    order = morton_order(means) if sort else np.arange(n)
    means = means[order]
    scales = f64("scales").reshape(n, 3)[order]
    quats = f64("quats").reshape(n, 4)[order]
    opac = f64("opacities").reshape(n)[order]
    color = f64("sh0").reshape(n, 3)[order] * SH_C0 + 0.5
    shN = params.get("shN")
    shN = np.zeros((n, 0, 3)) if shN is None else f64("shN").reshape(n, -1, 3)[order]
    k = shN.shape[1]
    if k not in (0, 3, 8, 15):
        raise ValueError(f"compressed PLY stores SH degree 0-3; got {k} rest coefficients per channel")

    n_chunks = math.ceil(n / CHUNK_SIZE)
    pad = n_chunks * CHUNK_SIZE - n

    def chunked(a: np.ndarray) -> np.ndarray:  # pad by repeating the last splat, as SuperSplat does
        if pad:
            a = np.concatenate([a, np.repeat(a[-1:], pad, axis=0)], axis=0)
        return a.reshape(n_chunks, CHUNK_SIZE, *a.shape[1:])

    cm, cs, cc = chunked(means), chunked(scales), chunked(color)
    pmin, pmax = cm.min(axis=1), cm.max(axis=1)
    smin, smax = np.clip(cs.min(axis=1), -20, 20), np.clip(cs.max(axis=1), -20, 20)
    cmin, cmax = cc.min(axis=1), cc.max(axis=1)
    ci = np.arange(n) // CHUNK_SIZE

    packed_position = _pack_111011(_normalize(means, pmin[ci], pmax[ci]))
    packed_scale = _pack_111011(_normalize(scales, smin[ci], smax[ci]))
    packed_rotation = pack_rotation(quats)
    crgb = _normalize(color, cmin[ci], cmax[ci])
    alpha = 1.0 / (1.0 + np.exp(-opac))
    packed_color = (
        (_pack_unorm(crgb[:, 0], 8) << np.uint32(24)) | (_pack_unorm(crgb[:, 1], 8) << np.uint32(16))
        | (_pack_unorm(crgb[:, 2], 8) << np.uint32(8)) | _pack_unorm(alpha, 8)
    )

    chunk_table = np.concatenate([pmin, pmax, smin, smax, cmin, cmax], axis=1).astype("<f4")
    vertex_table = np.stack([packed_position, packed_rotation, packed_scale, packed_color], axis=1).astype("<u4")
    lines = [
        "ply", "format binary_little_endian 1.0", "comment generated by recon (SuperSplat compressed PLY layout)",
        f"comment {COORDINATE_COMMENT}", f"element chunk {n_chunks}",
    ]
    lines += [f"property float {p}" for p in CHUNK_PROPS + COLOR_PROPS]
    lines.append(f"element vertex {n}")
    lines += [f"property uint {p}" for p in VERTEX_PROPS]
    body = [chunk_table.tobytes(), vertex_table.tobytes()]
    if k:
        rest = shN.transpose(0, 2, 1).reshape(n, 3 * k)  # channel-major
        sh_bytes = np.clip(np.trunc((rest / 8.0 + 0.5) * 256.0), 0, 255).astype(np.uint8)
        lines.append(f"element sh {n}")
        lines += [f"property uchar f_rest_{i}" for i in range(3 * k)]
        body.append(sh_bytes.tobytes())
    lines.append("end_header")
    header = ("\n".join(lines) + "\n").encode("ascii")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(header)
            for b in body:
                f.write(b)
