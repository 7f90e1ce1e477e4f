"""One output folder per run: ``config.yml``, ``checkpoints/``, ``eval/``, ``export/``.

The folder is created only after the data has been loaded and validated, so bad input never leaves
a half-made run behind. Re-running the same command resumes from ``checkpoints/latest.pt``;
``--fresh`` replaces what an earlier run left (only recon's own sub-folders are removed).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from recon.errors import InputError

OWNED = ("checkpoints", "eval", "export", "config.yml", "summary.json")


def scene_name(data: str) -> str:
    if data == "demo":
        return "demo"
    p = Path(data).expanduser()
    if p.is_file():
        p = p.parent
    name = p.resolve().name or "scene"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def resolve_run_dir(cfg) -> Path:
    if cfg.output is not None:
        return Path(cfg.output).expanduser()
    return Path("outputs") / scene_name(cfg.data)


def checkpoint_to_resume(run_dir: Path, cfg) -> Path | None:
    """The checkpoint a re-run continues from, or None for a fresh start."""
    latest = run_dir / "checkpoints" / "latest.pt"
    if cfg.fresh or not latest.is_file():
        return None
    saved = run_dir / "config.yml"
    if saved.is_file():
        try:
            old = yaml.safe_load(saved.read_text()) or {}
        except yaml.YAMLError:
            old = {}
        if old.get("data") not in (None, cfg.data) or old.get("method") not in (None, cfg.method):
            raise InputError(
                run_dir,
                f"holds a run of method {old.get('method')!r} on {old.get('data')!r}; "
                "pass --output for a new run folder or --fresh to replace it",
            )
    return latest


def create(run_dir: Path, fresh: bool) -> None:
    if fresh and run_dir.exists():
        for name in OWNED:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    for sub in ("checkpoints", "eval", "export"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
