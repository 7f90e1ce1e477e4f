"""Where recon keeps derived files (downscaled images, SfM results, the demo scene)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    """``$RECON_CACHE`` if set, else ``$XDG_CACHE_HOME/recon`` or ``~/.cache/recon``."""
    env = os.environ.get("RECON_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "recon"


def is_writable_dir(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def derived_dir(source_dir: Path, name: str) -> Path:
    """A folder for files derived from ``source_dir`` (e.g. ``images_4``, ``sfm``).

    Beside the source when that folder is writable (so users find it next to their photos), else
    under the cache, keyed by the source's absolute path (read-only datasets such as $RECON_DATA)."""
    source_dir = Path(source_dir).resolve()
    if is_writable_dir(source_dir) and not os.environ.get("RECON_CACHE"):
        return source_dir / name
    key = hashlib.sha1(str(source_dir).encode()).hexdigest()[:12]
    return cache_root() / "derived" / f"{source_dir.name}-{key}" / name
