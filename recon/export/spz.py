"""Niantic SPZ: compressed Gaussian splats (reader for versions 1-4, writer for version 4).

Byte layout (from the MIT-licensed format description of nianticlabs/spz; this is our own code):

- Version 4: a 32-byte little-endian header ``magic "NGSP" u32, version u32, numPoints u32,
  shDegree u8, fractionalBits u8, flags u8 (0x1 antialiased, 0x2 extension records follow the
  header), numStreams u8, tocByteOffset u32, 12 reserved bytes``; optional extension records
  ``[u32 type][u32 length][payload]`` up to ``tocByteOffset``; a table of contents of ``numStreams``
  pairs ``(compressed u64, uncompressed u64)``; then one ZSTD frame per non-empty attribute stream in
  the order positions, alphas, colours, scales, rotations, SH.
- Versions 1-3: the whole file is one gzip stream holding a 16-byte header (magic, version,
  numPoints, shDegree, fractionalBits, flags, reserved) and the same attribute streams back to back.

Attribute encodings (per point):

- positions: 3 x 24-bit signed fixed point with ``fractionalBits`` fraction bits (version 1: 3 x float16);
- alphas: ``round(255 * sigmoid(opacity))``;
- colours: ``round(255 * (0.15 * f_dc + 0.5))`` (a wider range than the 0.282 SH constant);
- scales: ``round((log_scale + 10) * 16)``;
- rotations, versions 3+: "smallest three" in a little-endian u32: the top 2 bits are the index of
  the largest-magnitude component of the unit quaternion (order x, y, z, w), made positive, then the
  three other components in order, 10 bits each: a sign bit and 9 bits of ``|q_i| / sqrt(1/2)``;
  version 2: ``x, y, z`` of the quaternion with ``w >= 0`` as ``round(127.5 * q + 127.5)``;
- SH (degree 1-4): coefficient-major, channel inner (``[k][rgb]``) as ``round(128 * c) + 128``; the
  writer quantises degree 1 to 5 bits and higher degrees to 4 bits (the reference defaults).

Axes: SPZ stores ``RUB`` (x right, y up, z back; three.js) unless the file carries the
``SPZ_ADOBE_coordinate_system`` extension (type 0xADBE0003, payload u32 frame id). recon's world is
``RDF`` (the 3DGS PLY frame), so both directions convert positions, rotations and SH exactly
(:mod:`recon.export.axes`). The frame is the format's documented default, so the writer adds no
extension record (readers without extension support would warn about it).

Opacities of 0 or 255 decode to a finite logit (alpha clamped to half a step inside (0, 1)).
recon renders SH up to degree 3: a degree-4 file loads with its degree-4 band dropped.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from recon.errors import InputError
from recon.export.axes import RECON_FRAME, convert_frame
from recon.utils.atomic import atomic_path

MAGIC = b"NGSP"
LATEST_VERSION = 4
HEADER_V4 = struct.Struct("<4sIIBBBBI12x")  # 32 bytes
HEADER_LEGACY = struct.Struct("<4sIIBBBB")  # 16 bytes
FLAG_ANTIALIASED = 0x1
FLAG_EXTENSIONS = 0x2
COLOR_SCALE = 0.15
SQRT1_2 = math.sqrt(0.5)
SPZ_FRAME = "RUB"
EXT_COORDINATE_SYSTEM = 0xADBE0003
# SPZ's CoordinateSystem enum (0 = unspecified -> the RUB default).
_FRAME_IDS = {
    1: "LDB", 2: "RDB", 3: "LUB", 4: "RUB", 5: "LDF", 6: "RDF", 7: "LUF", 8: "RUF",
    9: "LFD", 10: "RFD", 11: "LFU", 12: "RFU", 13: "LBD", 14: "RBD", 15: "LBU", 16: "RBU",
}
_SH_DIMS = {0: 0, 1: 3, 2: 8, 3: 15, 4: 24}
MAX_RENDER_DEGREE = 3


def _zstd():
    try:
        import zstandard
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise ImportError("SPZ version 4 needs the zstandard package (pip install zstandard)") from exc
    return zstandard


# --------------------------------------------------------------------------------------------------
# quantisation helpers (vectorised; each decode is the exact inverse of its encode up to rounding)
# --------------------------------------------------------------------------------------------------


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _logit_of_u8(a: np.ndarray) -> np.ndarray:
    alpha = np.clip(a.astype(np.float64) / 255.0, 0.5 / 255.0, 1.0 - 0.5 / 255.0)
    return np.log(alpha / (1.0 - alpha))


def pack_smallest_three(q_xyzw: np.ndarray) -> np.ndarray:
    """Unit quaternions [N, 4] (x, y, z, w) -> [N, 4] bytes (little-endian u32, SPZ v3+)."""
    q = q_xyzw / np.linalg.norm(q_xyzw, axis=1, keepdims=True).clip(1e-30)
    n = len(q)
    largest = np.argmax(np.abs(q), axis=1)
    negate = q[np.arange(n), largest] < 0
    comp = largest.astype(np.uint32)
    for i in range(4):
        keep = largest != i
        negbit = ((q[:, i] < 0) ^ negate).astype(np.uint32)
        mag = np.floor(511.0 * np.abs(q[:, i]) / SQRT1_2 + 0.5).astype(np.uint32).clip(0, 511)
        comp = np.where(keep, (comp << np.uint32(10)) | (negbit << np.uint32(9)) | mag, comp)
    return comp.astype("<u4").view(np.uint8).reshape(n, 4)


def unpack_smallest_three(raw: np.ndarray) -> np.ndarray:
    """[N, 4] bytes -> unit quaternions [N, 4] (x, y, z, w)."""
    comp = np.ascontiguousarray(raw, dtype=np.uint8).view("<u4").reshape(-1).astype(np.uint32)
    n = len(comp)
    largest = comp >> np.uint32(30)
    q = np.zeros((n, 4), np.float64)
    for i in (3, 2, 1, 0):
        take = largest != i
        mag = (comp & np.uint32(511)).astype(np.float64)
        neg = ((comp >> np.uint32(9)) & np.uint32(1)).astype(bool)
        val = SQRT1_2 * mag / 511.0
        q[:, i] = np.where(take, np.where(neg, -val, val), 0.0)
        comp = np.where(take, comp >> np.uint32(10), comp)
    rest = (q * q).sum(axis=1)
    q[np.arange(n), largest] = np.sqrt(np.maximum(0.0, 1.0 - rest))
    return q


def _quantize_sh(x: np.ndarray, bits: int) -> np.ndarray:
    bucket = 1 << (8 - bits)
    q = np.round(x * 128.0).astype(np.int64) + 128
    q = (q + bucket // 2) // bucket * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, expected an .spz file") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None


def read_spz_header(path: str | Path) -> dict:
    """Header fields of an SPZ file: version, num_points, sh_degree, fractional_bits, antialiased,
    num_streams (v4), frame (the stored axis convention)."""
    return _decode(Path(path), header_only=True)


def _parse_extensions(path: Path, block: bytes) -> str:
    frame = SPZ_FRAME
    off = 0
    while off + 8 <= len(block):
        ext_type, length = struct.unpack_from("<II", block, off)
        payload = block[off + 8 : off + 8 + length]
        if len(payload) != length:
            raise InputError(path, "truncated SPZ extension record")
        if ext_type == EXT_COORDINATE_SYSTEM and length >= 4:
            value = struct.unpack_from("<I", payload)[0]
            if value not in _FRAME_IDS and value != 0:
                raise InputError(path, f"unknown SPZ coordinate system id {value}")
            frame = _FRAME_IDS.get(value, SPZ_FRAME)
        off += 8 + length
    return frame


def _decode(path: Path, header_only: bool = False) -> dict:
    data = _read_bytes(path)
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise InputError(path, f"corrupt gzip stream in SPZ file ({exc})") from None
        if len(data) < HEADER_LEGACY.size:
            raise InputError(path, "SPZ header truncated")
        magic, version, n, degree, frac, flags, _reserved = HEADER_LEGACY.unpack_from(data)
        if magic != MAGIC:
            raise InputError(path, "not an SPZ file (bad magic after gzip)")
        if not 1 <= version <= 3:
            raise InputError(path, f"unsupported SPZ version {version} in a gzip stream (expected 1-3)")
        num_streams = None
        body_offset = HEADER_LEGACY.size
        frame = SPZ_FRAME
    elif data[:4] == MAGIC:
        if len(data) < HEADER_V4.size:
            raise InputError(path, "SPZ header truncated")
        magic, version, n, degree, frac, flags, num_streams, toc = HEADER_V4.unpack_from(data)
        if version != 4:
            raise InputError(path, f"unsupported SPZ version {version} (this reader knows 1-4)")
        if toc < HEADER_V4.size or toc + 16 * num_streams > len(data):
            raise InputError(path, "SPZ table of contents lies outside the file")
        frame = _parse_extensions(path, data[HEADER_V4.size : toc]) if flags & FLAG_EXTENSIONS else SPZ_FRAME
    else:
        raise InputError(path, "not an SPZ file (no NGSP magic and not gzip)")
    if degree not in _SH_DIMS:
        raise InputError(path, f"SPZ SH degree {degree} is out of range 0-4")
    header = {
        "version": int(version), "num_points": int(n), "sh_degree": int(degree), "fractional_bits": int(frac),
        "antialiased": bool(flags & FLAG_ANTIALIASED), "num_streams": num_streams, "frame": frame,
    }
    if header_only:
        return header

    dim = _SH_DIMS[degree]
    sizes = [
        n * (6 if version == 1 else 9),  # positions
        n,  # alphas
        3 * n,  # colours
        3 * n,  # scales
        n * (4 if version >= 3 else 3),  # rotations
        n * dim * 3,  # SH
    ]
    if version == 4:
        nonempty = [s for s in sizes if s > 0]
        if num_streams != len(nonempty):
            raise InputError(path, f"SPZ has {num_streams} streams, expected {len(nonempty)} for {n} points of SH degree {degree}")
        toc_entries = [struct.unpack_from("<QQ", data, toc + 16 * i) for i in range(num_streams)]
        offset = toc + 16 * num_streams
        dctx = _zstd().ZstdDecompressor()
        chunks = []
        for (csize, usize), expected in zip(toc_entries, nonempty):
            if usize != expected:
                raise InputError(path, f"SPZ stream holds {usize} bytes, expected {expected}")
            if offset + csize > len(data):
                raise InputError(path, "truncated: an SPZ stream extends past the end of the file")
            try:
                chunk = dctx.decompress(data[offset : offset + csize], max_output_size=usize)
            except Exception as exc:  # zstandard.ZstdError
                raise InputError(path, f"corrupt ZSTD stream in SPZ file ({exc})") from None
            if len(chunk) != usize:
                raise InputError(path, "corrupt ZSTD stream in SPZ file (wrong size)")
            chunks.append(chunk)
            offset += csize
        it = iter(chunks)
        streams = [next(it) if s > 0 else b"" for s in sizes]
    else:
        if len(data) < body_offset + sum(sizes):
            raise InputError(path, f"truncated: SPZ body holds {len(data) - body_offset} bytes, expected {sum(sizes)}")
        streams, off = [], body_offset
        for s in sizes:
            streams.append(data[off : off + s])
            off += s
    header["streams"] = [np.frombuffer(s, dtype=np.uint8) for s in streams]
    return header


def _unpack(header: dict) -> dict[str, np.ndarray]:
    """Packed streams -> float64 arrays in the file's own frame (rotations as x, y, z, w)."""
    n, version, frac = header["num_points"], header["version"], header["fractional_bits"]
    pos, alpha, col, scl, rot, sh = header["streams"]
    if version == 1:
        means = pos.view("<f2").reshape(n, 3).astype(np.float64)
    else:
        b = pos.reshape(n, 3, 3).astype(np.int32)
        fixed = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
        fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
        means = fixed.astype(np.float64) / float(1 << frac)
    opacities = _logit_of_u8(alpha)
    sh0 = (col.reshape(n, 3).astype(np.float64) / 255.0 - 0.5) / COLOR_SCALE
    scales = scl.reshape(n, 3).astype(np.float64) / 16.0 - 10.0
    if version >= 3:
        q_xyzw = unpack_smallest_three(rot.reshape(n, 4))
    else:
        xyz = rot.reshape(n, 3).astype(np.float64) / 127.5 - 1.0
        w = np.sqrt(np.maximum(0.0, 1.0 - (xyz * xyz).sum(axis=1, keepdims=True)))
        q_xyzw = np.concatenate([xyz, w], axis=1)
    dim = _SH_DIMS[header["sh_degree"]]
    shN = (sh.reshape(n, dim, 3).astype(np.float64) - 128.0) / 128.0
    return {"means": means, "q_xyzw": q_xyzw, "scales": scales, "opacities": opacities, "sh0": sh0, "shN": shN}


def read_spz(path: str | Path, *, frame: str = RECON_FRAME) -> dict[str, torch.Tensor]:
    """Read an SPZ file (versions 1-4) into recon's raw Gaussian parameters, converted from the
    file's axis convention to ``frame`` (default: recon's ``RDF``)."""
    path = Path(path)
    header = _decode(path)
    u = _unpack(header)
    n = header["num_points"]
    shN = u["shN"]
    if header["sh_degree"] > MAX_RENDER_DEGREE:
        shN = shN[:, : _SH_DIMS[MAX_RENDER_DEGREE]]
    q = u["q_xyzw"]
    params = {
        "means": u["means"],
        "quats": np.concatenate([q[:, 3:4], q[:, :3]], axis=1),
        "scales": u["scales"],
        "opacities": u["opacities"],
        "sh0": u["sh0"].reshape(n, 1, 3),
        "shN": shN,
    }
    return convert_frame(params, header["frame"], frame)


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------


def _np(t: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=np.float64)


def encode_spz(
    params: Mapping[str, torch.Tensor | np.ndarray],
    *,
    frame: str = RECON_FRAME,
    fractional_bits: int | None = None,
    sh1_bits: int = 5,
    sh_rest_bits: int = 4,
    antialiased: bool = False,
    compression_level: int = 12,
) -> bytes:
    """SPZ version 4 bytes for Gaussians given in ``frame`` (stored as SPZ's default ``RUB``).

    ``fractional_bits``: fixed-point fraction bits of the positions; None picks 12 (about 0.25 mm
    at metre scale, the reference choice) or fewer when the scene does not fit in 24 bits."""
    if not (1 <= sh1_bits <= 8 and 1 <= sh_rest_bits <= 8):
        raise ValueError("SH quantisation bits must be in 1..8")
    p = convert_frame(params, frame, SPZ_FRAME)
    means = _np(p["means"]).reshape(-1, 3)
    n = len(means)
    if n == 0:
        raise ValueError("cannot write an empty SPZ file (the format requires at least one point)")
    shN = _np(p["shN"]).reshape(n, -1, 3)
    degree = math.isqrt(shN.shape[1] + 1) - 1
    if (degree + 1) ** 2 - 1 != shN.shape[1] or degree > 4:
        raise ValueError(f"shN has {shN.shape[1]} coefficients per channel; SPZ stores SH degree 0-4")

    extent = float(np.abs(means).max()) if np.isfinite(means).all() else math.inf
    if not math.isfinite(extent):
        raise ValueError("Gaussian means must be finite to be written as SPZ")
    if fractional_bits is None:
        fractional_bits = 12
        while fractional_bits > 0 and extent * (1 << fractional_bits) > (1 << 23) - 1:
            fractional_bits -= 1
    if extent * (1 << fractional_bits) > (1 << 23) - 1:
        raise ValueError(f"positions up to {extent:g} do not fit SPZ's 24-bit fixed point with {fractional_bits} fraction bits")
    fixed = np.round(means * (1 << fractional_bits)).astype(np.int64) & 0xFFFFFF
    positions = np.stack([(fixed >> s) & 0xFF for s in (0, 8, 16)], axis=-1).astype(np.uint8).reshape(-1)

    opac = _np(p["opacities"]).reshape(n)
    alphas = _u8(255.0 / (1.0 + np.exp(-opac)))
    colors = _u8(_np(p["sh0"]).reshape(n, 3) * (COLOR_SCALE * 255.0) + 127.5).reshape(-1)
    scales = _u8((_np(p["scales"]).reshape(n, 3) + 10.0) * 16.0).reshape(-1)
    q = _np(p["quats"]).reshape(n, 4)
    rotations = pack_smallest_three(np.concatenate([q[:, 1:], q[:, :1]], axis=1)).reshape(-1)
    if degree > 0:
        sh = np.empty(shN.shape, np.uint8)
        sh[:, :3] = _quantize_sh(shN[:, :3], sh1_bits)
        sh[:, 3:] = _quantize_sh(shN[:, 3:], sh_rest_bits)
        sh = sh.reshape(-1)
    else:
        sh = np.zeros(0, np.uint8)

    cctx = _zstd().ZstdCompressor(level=compression_level)
    streams = [s.tobytes() for s in (positions, alphas, colors, scales, rotations, sh) if s.size > 0]
    chunks = [cctx.compress(s) for s in streams]
    header = HEADER_V4.pack(
        MAGIC, LATEST_VERSION, n, degree, fractional_bits, FLAG_ANTIALIASED if antialiased else 0,
        len(chunks), HEADER_V4.size,
    )
    toc = b"".join(struct.pack("<QQ", len(c), len(s)) for c, s in zip(chunks, streams))
    return header + toc + b"".join(chunks)


def write_spz(path: str | Path, params: Mapping[str, torch.Tensor | np.ndarray], **options) -> None:
    """Write Gaussians (recon's raw parameters, recon's frame) as SPZ version 4, atomically.
    Options as :func:`encode_spz`."""
    data = encode_spz(params, **options)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
