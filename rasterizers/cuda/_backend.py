"""Loading the recon CUDA core: JIT compile on first use (cached), or ahead of time via ``build.py``.

Rules:
- importing ``recon`` or ``recon.rasterizers.cuda`` never compiles; only :func:`load` does;
- a machine without a CUDA device never compiles: :func:`is_available` returns False without trying;
- the build lives in ``$RECON_CUDA_BUILD_DIR`` if set, else ``$RECON_CACHE/torch_extensions/<tag>``, else
  ``~/.cache/recon/torch_extensions/<tag>``, with ``<tag>`` = torch + CUDA versions; the extension name
  carries a hash of the sources and flags, so an edited checkout never loads a stale binary;
- ``TORCH_CUDA_ARCH_LIST`` is respected (default: the present GPU's compute capability only) and so is
  ``MAX_JOBS`` (ninja's parallelism; default: all cores).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

CSRC = Path(__file__).resolve().parent / "csrc"
# Separate translation units so ninja builds them in parallel.
SOURCES = ("ext.cpp", "project_gaussian.cu", "sh.cu", "intersect.cu", "raster_fwd.cu", "raster_bwd.cu")
CUDA_FLAGS = ("-O3", "--use_fast_math", "--expt-relaxed-constexpr", "-std=c++17", "-diag-suppress=3306")
CXX_FLAGS = ("-O3", "-std=c++17")
PROGRESS_LINE = "compiling recon CUDA core (first use, ~60 s)…"

_lock = threading.Lock()
_module: ModuleType | None = None
_error: str | None = None


def cuda_device_present() -> bool:
    """True when torch sees a CUDA device. Never raises, never compiles."""
    try:
        import torch

        return bool(torch.version.cuda) and torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def version_tag() -> str:
    import torch

    cuda = torch.version.cuda or "cpu"
    return f"torch{torch.__version__.split('+')[0]}-cu{cuda.replace('.', '')}-py{sys.version_info.major}{sys.version_info.minor}"


def build_root() -> Path:
    explicit = os.environ.get("RECON_CUDA_BUILD_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("RECON_CACHE")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache" / "recon"
    return base / "torch_extensions" / version_tag()


def arch_list() -> str | None:
    """The CUDA architectures to build for: ``$TORCH_CUDA_ARCH_LIST`` or the present GPU's, None if unknown."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return env
    if cuda_device_present():
        import torch

        archs = sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(archs)
    return None


def source_hash() -> str:
    h = hashlib.sha1()
    for path in sorted(CSRC.iterdir()):
        if path.suffix in (".cu", ".cuh", ".h", ".cpp"):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    h.update(repr((CUDA_FLAGS, CXX_FLAGS, arch_list())).encode())
    return h.hexdigest()[:12]


def extension_name() -> str:
    return f"recon_cuda_{source_hash()}"


def build_dir() -> Path:
    return build_root() / extension_name()


def is_built() -> bool:
    """Whether a compiled binary for the current sources, flags and toolchain is in the cache."""
    d = build_dir()
    name = extension_name()
    return d.is_dir() and (any(d.glob(f"{name}*.so")) or any(d.glob(f"{name}*.pyd")))


def load(verbose: bool = False, quiet: bool = False) -> ModuleType:
    """The compiled extension, building it first if needed (one progress line on stderr)."""
    global _module, _error
    if _module is not None:
        return _module
    with _lock:
        if _module is not None:
            return _module
        import torch
        from torch.utils import cpp_extension

        if not torch.version.cuda:
            raise RuntimeError(f"this torch build ({torch.__version__}) has no CUDA support; use the CPU path")
        if cpp_extension.CUDA_HOME is None:
            raise RuntimeError("nvcc / CUDA_HOME not found: install the CUDA toolkit (matching torch's CUDA) or use the CPU path")
        archs = arch_list()
        if archs is None:
            raise RuntimeError("no CUDA device to target: set TORCH_CUDA_ARCH_LIST (e.g. '9.0') to build ahead of time")
        name = extension_name()
        bdir = build_dir()
        bdir.mkdir(parents=True, exist_ok=True)
        fresh = not is_built()
        if fresh and not quiet:
            print(PROGRESS_LINE, file=sys.stderr, flush=True)
        old_arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        t0 = time.time()
        try:
            _module = cpp_extension.load(
                name=name,
                sources=[str(CSRC / s) for s in SOURCES],
                extra_cflags=list(CXX_FLAGS),
                extra_cuda_cflags=list(CUDA_FLAGS),
                extra_include_paths=[str(CSRC)],
                build_directory=str(bdir),
                verbose=verbose,
            )
        except Exception as exc:
            _error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if old_arch is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = old_arch
        if fresh and not quiet:
            print(f"recon CUDA core ready ({time.time() - t0:.0f} s, cached in {bdir})", file=sys.stderr, flush=True)
        return _module


def is_available() -> bool:
    """True when the CUDA core can be used: a CUDA device is present and the extension loads (building it
    on first call). False without trying anything when there is no CUDA device."""
    global _error
    if not cuda_device_present():
        return False
    if _module is not None:
        return True
    if _error is not None:
        return False
    try:
        load()
        return True
    except Exception as exc:  # noqa: BLE001
        _error = f"{type(exc).__name__}: {exc}"
        return False


def unavailable_reason() -> str | None:
    if not cuda_device_present():
        return "no CUDA device"
    return _error


def loaded() -> bool:
    return _module is not None
