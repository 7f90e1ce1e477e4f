"""Build the recon CUDA core ahead of time: ``python -m recon.rasterizers.cuda.build``.

``--check`` compiles every translation unit with nvcc without linking and without a GPU or a CUDA
build of torch (the headers of any torch wheel suffice): a fast way to catch compile errors on a
development machine before spending GPU time.

Respects ``TORCH_CUDA_ARCH_LIST`` (required when no GPU is present, e.g. ``9.0``), ``MAX_JOBS`` and
``RECON_CACHE`` / ``RECON_CUDA_BUILD_DIR``. Exit status 0 when the extension is built and importable.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def compile_check(arch: str = "90", jobs: int | None = None, only: list[str] | None = None) -> int:
    """nvcc -c every source (or those named in ``only``) into a scratch folder; 0 when all compile."""
    import torch.utils.cpp_extension as ce

    from . import _backend

    nvcc = os.path.join(ce.CUDA_HOME, "bin", "nvcc") if ce.CUDA_HOME else "nvcc"
    scratch = Path(tempfile.mkdtemp(prefix="recon-cuda-check-"))
    generated = _backend.write_footprint_list(scratch / "generated")
    # CPU wheels of torch ship the CUDA headers but not this one file, which CUDA builds generate.
    stub = scratch / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    includes = [*ce.include_paths(), str(_backend.CSRC), str(generated.parent), str(scratch / "stub"), sysconfig.get_paths()["include"]]
    sources = [s for s in _backend.SOURCES if s.endswith(".cu") and (not only or s in only)]

    def one(src: str) -> tuple[str, int, str]:
        cmd = [nvcc, "-c", "-O0", f"-arch=sm_{arch}", *_backend.CUDA_FLAGS[2:], "-DTORCH_EXTENSION_NAME=recon_check",
               *[f"-I{i}" for i in includes], str(_backend.CSRC / src), "-o", str(scratch / (src + ".o"))]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        errors = "\n".join(line for line in (proc.stdout + proc.stderr).splitlines() if "error" in line or proc.returncode)
        return src, proc.returncode, errors

    failed = 0
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        for src, rc, errors in pool.map(one, sources):
            print(f"{'ok  ' if rc == 0 else 'FAIL'} {src}")
            if rc:
                failed += 1
                print(errors, file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recon.rasterizers.cuda.build", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands")
    parser.add_argument("--print-dir", action="store_true", help="print the build directory and exit")
    parser.add_argument("--check", nargs="*", metavar="FILE", help="compile-check the .cu files (all, or those named) without a GPU")
    args = parser.parse_args(argv)
    if args.check is not None:
        return compile_check(only=args.check or None)
    from . import _backend

    if args.print_dir:
        print(_backend.build_dir())
        return 0
    t0 = time.time()
    try:
        _backend.load(verbose=args.verbose)
    except Exception as exc:  # noqa: BLE001
        print(f"error: building the recon CUDA core failed: {exc}", file=sys.stderr)
        print("run `recon-doctor` to check torch, nvcc and the driver", file=sys.stderr)
        return 1
    print(f"recon CUDA core built in {time.time() - t0:.1f} s: {_backend.build_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
