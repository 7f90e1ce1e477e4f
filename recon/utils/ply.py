"""A small PLY reader (no plyfile, which is GPL): header parsing and the ``vertex`` table.

Shared by the 3DGS PLY reader (``recon.export.ply``) and the point-cloud loaders (nerfstudio
``ply_file_path``). Accepts ``ascii``, ``binary_little_endian`` and ``binary_big_endian`` files with
scalar vertex properties of any standard PLY type; other elements may come before or after the
vertices (elements with list properties only after them in binary files). Anything wrong raises
:class:`recon.errors.InputError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.errors import InputError

# PLY scalar type names -> numpy dtype (without byte order).
_PLY_TYPES: dict[str, str] = {
    "char": "i1", "int8": "i1",
    "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4",
    "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}

_MAX_HEADER_BYTES = 1 << 20


class _Element:
    def __init__(self, name: str, count: int) -> None:
        self.name = name
        self.count = count
        self.props: list[tuple[str, str]] = []  # (name, numpy kind) for scalar properties
        self.has_list = False


def _parse_header(path: Path, data: bytes) -> tuple[str, list[_Element], int]:
    """Return (format, elements, offset of the body)."""
    if not data.startswith(b"ply") or data[3:4] not in (b"\n", b"\r"):
        raise InputError(path, "not a PLY file")
    end = -1
    for marker in (b"end_header\r\n", b"end_header\n"):
        idx = data.find(marker, 0, _MAX_HEADER_BYTES)
        if idx >= 0:
            end = idx + len(marker)
            break
    if end < 0:
        raise InputError(path, "not a PLY file (no end_header)")
    try:
        header = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise InputError(path, "not a PLY file (header is not ASCII)") from None

    fmt = None
    elements: list[_Element] = []
    for raw in header.splitlines()[1:]:
        tok = raw.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format":
            if len(tok) < 2 or tok[1] not in ("ascii", "binary_little_endian", "binary_big_endian"):
                raise InputError(path, f"unsupported PLY format line {raw.strip()!r}")
            fmt = tok[1]
        elif tok[0] == "element":
            if len(tok) != 3:
                raise InputError(path, f"malformed PLY header line {raw.strip()!r}")
            try:
                count = int(tok[2])
            except ValueError:
                raise InputError(path, f"malformed PLY header line {raw.strip()!r}") from None
            if count < 0:
                raise InputError(path, f"malformed PLY header line {raw.strip()!r}")
            elements.append(_Element(tok[1], count))
        elif tok[0] == "property":
            if not elements:
                raise InputError(path, "malformed PLY header (property before any element)")
            if len(tok) >= 2 and tok[1] == "list":
                if len(tok) != 5 or tok[2] not in _PLY_TYPES or tok[3] not in _PLY_TYPES:
                    raise InputError(path, f"malformed PLY header line {raw.strip()!r}")
                elements[-1].has_list = True
                elements[-1].props.append((tok[4], "list"))
            else:
                if len(tok) != 3 or tok[1] not in _PLY_TYPES:
                    raise InputError(path, f"unsupported PLY property line {raw.strip()!r}")
                elements[-1].props.append((tok[2], _PLY_TYPES[tok[1]]))
        elif tok[0] == "end_header":
            break
        else:
            raise InputError(path, f"malformed PLY header line {raw.strip()!r}")
    if fmt is None:
        raise InputError(path, "not a PLY file (no format line)")
    return fmt, elements, end


def read_ply_vertices(path: str | Path) -> dict[str, np.ndarray]:
    """The ``vertex`` element of a PLY file as {property name: array of the declared type}."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, expected a PLY file") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    fmt, elements, offset = _parse_header(path, data)

    vidx = next((i for i, e in enumerate(elements) if e.name == "vertex"), None)
    if vidx is None:
        raise InputError(path, "no vertex element in the PLY header")
    vertex = elements[vidx]
    if vertex.has_list:
        raise InputError(path, "the vertex element has list properties, which a Gaussian PLY never has")
    n = vertex.count
    names = [name for name, _ in vertex.props]
    if len(set(names)) != len(names):
        raise InputError(path, "duplicate property names in the vertex element")

    if fmt == "ascii":
        text = data[offset:].decode("ascii", errors="replace").splitlines()
        # one line per entry of every element before the vertex element
        skip = sum(e.count for e in elements[:vidx])
        nprop = len(vertex.props)
        tokens = " ".join(text[skip : skip + n]).split()
        if len(tokens) < n * nprop:
            raise InputError(path, f"truncated: expected {n} vertices, found {len(tokens) // max(nprop, 1)}")
        if len(tokens) != n * nprop:
            raise InputError(path, f"malformed ASCII vertex data: expected {nprop} values per vertex")
        try:
            values = np.array(tokens, dtype=np.float64)
        except ValueError:
            raise InputError(path, "malformed ASCII vertex data (not a number)") from None
        values = values.reshape(n, nprop)
        out = {}
        for j, (name, kind) in enumerate(vertex.props):
            out[name] = values[:, j].astype(np.dtype(kind))
        return out

    order = "<" if fmt == "binary_little_endian" else ">"
    for e in elements[:vidx]:
        if e.has_list:
            raise InputError(path, f"unsupported PLY: element {e.name!r} with list properties precedes the vertex element")
        offset += e.count * sum(np.dtype(order + k).itemsize for _, k in e.props)
    dtype = np.dtype([(name, order + kind) for name, kind in vertex.props])
    need = n * dtype.itemsize
    available = max(0, len(data) - offset)
    if available < need:
        got = available // dtype.itemsize if dtype.itemsize else 0
        raise InputError(path, f"truncated: expected {n} vertices, found {got}")
    table = np.frombuffer(data, dtype=dtype, count=n, offset=offset)
    return {name: table[name] for name, _ in vertex.props}


def read_ply_header(path: str | Path) -> dict:
    """The parsed header of any PLY: ``{"format", "comments", "elements": [{"name", "count", "properties"}]}``."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read(_MAX_HEADER_BYTES)
    fmt, elements, end = _parse_header(path, data)
    comments = [ln[len("comment ") :] for ln in data[:end].decode("ascii").splitlines() if ln.startswith("comment ")]
    return {
        "format": fmt,
        "comments": comments,
        "elements": [{"name": e.name, "count": e.count, "properties": [p for p, _ in e.props]} for e in elements],
    }
