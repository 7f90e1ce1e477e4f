"""One output folder per run: ``config.yml``, ``cameras.json``, ``checkpoints/``, ``eval/``, ``export/``.

The folder is created only after the data has been loaded and validated, so bad input never leaves
a half-made run behind. Re-running the same command resumes from ``checkpoints/latest.pt``;
``--fresh`` replaces what an earlier run left (only recon's own sub-folders are removed).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml

from recon.errors import InputError

OWNED = ("checkpoints", "eval", "export", "config.yml", "cameras.json", "summary.json")
CAMERAS_FILE = "cameras.json"


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


def write_cameras(run_dir: Path, cameras: list) -> None:
    """Record every view of the run's data (pose, intrinsics, image path) in ``cameras.json``, so a
    viewer can draw the training cameras without the data folder (moved, deleted, or raw photos that
    would need SfM again)."""
    from recon.utils.atomic import write_text_atomic

    doc = {"version": 1, "cameras": [c.to_dict() for c in cameras]}
    write_text_atomic(Path(run_dir) / CAMERAS_FILE, json.dumps(doc) + "\n")


def read_cameras(run_dir: Path) -> list | None:
    """The cameras :func:`write_cameras` recorded (``recon.datasets.cameras.Camera``), or None when the
    run has no record (runs from before it existed); InputError when the record is unreadable."""
    from recon.datasets.cameras import Camera, Distortion

    path = Path(run_dir) / CAMERAS_FILE
    if not path.is_file():
        return None
    try:
        cameras = []
        for d in json.loads(path.read_text())["cameras"]:
            dist = d.get("distortion")
            cameras.append(Camera(
                name=d["name"], width=d["width"], height=d["height"], fx=d["fx"], fy=d["fy"], cx=d["cx"], cy=d["cy"],
                c2w=d["c2w"], distortion=None if dist is None else Distortion(dist["model"], dict(dist["params"])),
                image_path=None if d.get("image_path") is None else Path(d["image_path"]),
                mask_path=None if d.get("mask_path") is None else Path(d["mask_path"]),
                time=d.get("time"), camera_id=int(d.get("camera_id", 0)),
            ))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"unreadable camera record ({type(exc).__name__}: {exc})") from None
    return cameras
