"""Benchmark recon's CUDA Gaussian rasterizer against gsplat 1.5.3 (same as ``recon-bench raster``).

    python scripts/bench_raster.py --scenes garden 1M 3M --variants default rect64 --out outputs/bench

Prints a markdown table (device-timed medians, peak memory, ratios against gsplat measured in the same
process). Not a test; see docs/benchmarks.md for the protocol and the last recorded table.
"""

from __future__ import annotations

import sys

from recon.cli.bench import main

if __name__ == "__main__":
    sys.exit(main(["raster", *sys.argv[1:]]))
