"""The result caches of SfM (``sfm`` and ``sfm_points`` folders): cache keys from file
signatures, reading a valid cache back, and committing a freshly built result with the report
written last, so an interrupted run never leaves a cache that looks complete."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from recon.errors import InputError
from recon.utils.atomic import write_text_atomic

# Bump when the layout or meaning of a cache folder changes (old caches are then recomputed).
CACHE_VERSION = 1
REPORT_NAME = "report.json"


def _file_signature(paths: Sequence[Path], root: Path) -> list[list]:
    out = []
    for p in paths:
        st = p.stat()
        out.append([p.relative_to(root).as_posix() if root in p.parents else str(p), st.st_size, st.st_mtime_ns])
    return out


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _read_cache(out: Path, key: str) -> dict | None:
    rp = out / REPORT_NAME
    if not rp.is_file():
        return None
    try:
        report = json.loads(rp.read_text())
    except (OSError, ValueError):
        return None
    if report.get("cache_key") != key:
        return None
    if report.get("registered", 0) > 0 and not (out / "sparse" / "0" / "images.bin").is_file():
        return None
    return report


def _read_points_cache(out: Path, key: str) -> dict | None:
    rp = out / REPORT_NAME
    if not rp.is_file() or not (out / "points.npz").is_file():
        return None
    try:
        report = json.loads(rp.read_text())
    except (OSError, ValueError):
        return None
    return report if report.get("cache_key") == key else None


def _check_output_dir(out: Path, force: bool) -> None:
    """Never overwrite a COLMAP project that recon did not make (unless forced)."""
    if force or not out.exists():
        return
    if not out.is_dir():
        raise InputError(out, "output exists and is not a folder")
    if (out / REPORT_NAME).is_file():
        return  # ours (stale): recompute in place
    theirs = [n for n in ("database.db", "sparse") if (out / n).exists()]
    if theirs:
        raise InputError(
            out, f"already holds {' and '.join(theirs)} that recon did not make; choose another output or use --force"
        )


def _commit(work: Path, out: Path, report: dict, entries: Sequence[str]) -> None:
    """Move the freshly built entries from ``work`` into ``out``; the report goes last.

    The old report is removed first, so a crash in between leaves a folder without a valid cache
    (recomputed next time) instead of a mixture of old and new files that looks valid."""
    (out / REPORT_NAME).unlink(missing_ok=True)
    for name in entries:
        src, dst = work / name, out / name
        if not src.exists():
            if dst.is_dir():
                shutil.rmtree(dst, ignore_errors=True)
            elif dst.exists():
                dst.unlink()
            continue
        if dst.is_dir() and not dst.is_symlink():
            trash = work / f".old-{name}"
            os.replace(dst, trash)
        os.replace(src, dst)
    write_text_atomic(out / REPORT_NAME, json.dumps(report, indent=2) + "\n")
