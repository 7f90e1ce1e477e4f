"""Build the recon CUDA core ahead of time: ``python -m recon.rasterizers.cuda.build``.

Respects ``TORCH_CUDA_ARCH_LIST`` (required when no GPU is present, e.g. ``9.0``), ``MAX_JOBS`` and
``RECON_CACHE`` / ``RECON_CUDA_BUILD_DIR``. Exit status 0 when the extension is built and importable.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recon.rasterizers.cuda.build", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands")
    parser.add_argument("--print-dir", action="store_true", help="print the build directory and exit")
    args = parser.parse_args(argv)
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
