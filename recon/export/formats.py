"""One entry point for Gaussian splat files: :func:`read_splats` and :func:`write_splats`.

Formats (name: extensions; what is lossy):

- ``ply``: ``.ply``, the standard 3DGS PLY (:mod:`recon.export.ply`); exact float32.
- ``compressed_ply``: ``.compressed.ply``, SuperSplat's chunked 32-bit packing
  (:mod:`recon.export.compressed_ply`); quantised, reordered (Morton order).
- ``spz``: ``.spz``, Niantic SPZ v4 (:mod:`recon.export.spz`; reads v1-4); quantised.
- ``splat``: ``.splat``, antimatter15 (:mod:`recon.export.splat`); float positions/scales, 8-bit
  colour/opacity/rotation, no SH above degree 0, reordered by size x opacity.
- ``gltf``: ``.glb`` (write) / ``.glb`` or ``.gltf`` (read), ``KHR_gaussian_splatting``
  (:mod:`recon.export.gltf_splats`); float32, axes converted to glTF's Y-up.

Reading detects the format from the file's first bytes (PLY header, ``NGSP`` / gzip magic, ``glTF``
magic or JSON), falling back to the extension only for the headerless ``.splat``. Every reader returns
recon's raw Gaussian parameters in recon's world (``means``, ``quats`` wxyz, log ``scales``, logit
``opacities``, ``sh0`` [N,1,3], ``shN`` [N,K-1,3]; float32, CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np
import torch

from recon.errors import InputError

SplatFormat = Literal["ply", "compressed_ply", "spz", "splat", "gltf"]
FORMATS: tuple[str, ...] = ("ply", "compressed_ply", "spz", "splat", "gltf")
SUFFIX = {"ply": ".ply", "compressed_ply": ".compressed.ply", "spz": ".spz", "splat": ".splat", "gltf": ".glb"}


def format_from_name(path: str | Path) -> str | None:
    """The format a file name asks for (``.compressed.ply`` before ``.ply``), or None."""
    name = Path(path).name.lower()
    if name.endswith(".compressed.ply"):
        return "compressed_ply"
    for fmt, suffix in (("ply", ".ply"), ("spz", ".spz"), ("splat", ".splat"), ("gltf", ".glb"), ("gltf", ".gltf")):
        if name.endswith(suffix):
            return fmt
    return None


def detect_format(path: str | Path) -> str:
    """The format of an existing file, from its content (``.splat`` by name: it has no header)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, expected a splat file") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    if head.startswith(b"ply") and head[3:4] in (b"\n", b"\r"):
        from recon.export.compressed_ply import is_compressed_ply

        return "compressed_ply" if is_compressed_ply(path) else "ply"
    if head.startswith(b"NGSP") or head.startswith(b"\x1f\x8b"):
        return "spz"
    if head.startswith(b"glTF") or head.lstrip()[:1] == b"{":
        return "gltf"
    if format_from_name(path) == "splat":
        return "splat"
    raise InputError(path, "unknown splat file format (expected PLY, compressed PLY, SPZ, .splat or glTF)")


def _readers() -> dict[str, Callable[[Path], dict[str, torch.Tensor]]]:
    from recon.export.compressed_ply import read_compressed_ply
    from recon.export.gltf_splats import read_gltf_splats
    from recon.export.ply import read_ply
    from recon.export.splat import read_splat
    from recon.export.spz import read_spz

    return {"ply": read_ply, "compressed_ply": read_compressed_ply, "spz": read_spz, "splat": read_splat, "gltf": read_gltf_splats}


def read_splats(path: str | Path) -> dict[str, torch.Tensor]:
    """Gaussians from any supported splat file, as recon's raw parameters in recon's world."""
    path = Path(path)
    params = _readers()[detect_format(path)](path)
    n = params["means"].shape[0]
    if n == 0:
        raise InputError(path, "the file holds no Gaussians")
    if not all(torch.isfinite(t).all() for t in params.values()):
        raise InputError(path, "the file holds non-finite Gaussian parameters")
    return params


def write_splats(
    params: Mapping[str, torch.Tensor | np.ndarray],
    path: str | Path,
    format: SplatFormat | None = None,
    **options: Any,
) -> Path:
    """Write Gaussians (recon's raw parameters, recon's world) in ``format`` (None: from the file
    name). ``options`` go to the format's writer (e.g. ``up=`` / ``scale=`` for glTF,
    ``fractional_bits=`` for SPZ, ``sort=`` for compressed PLY and .splat, ``comments=`` for PLY)."""
    path = Path(path)
    fmt = format or format_from_name(path)
    if fmt is None:
        raise InputError(path, f"cannot tell the splat format from the name; use one of {', '.join(SUFFIX.values())}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown splat format {fmt!r}; expected one of {FORMATS}")
    if fmt == "ply":
        from recon.export.ply import write_ply

        write_ply(path, params, **options)
    elif fmt == "compressed_ply":
        from recon.export.compressed_ply import write_compressed_ply

        write_compressed_ply(path, params, **options)
    elif fmt == "spz":
        from recon.export.spz import write_spz

        write_spz(path, params, **options)
    elif fmt == "splat":
        from recon.export.splat import write_splat

        write_splat(path, params, **options)
    else:
        if path.suffix.lower() == ".gltf":
            raise InputError(path, "glTF splats are written as binary .glb; use a .glb file name")
        from recon.export.gltf_splats import write_gltf_splats

        write_gltf_splats(path, params, **options)
    return path
