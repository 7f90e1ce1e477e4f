"""Mapping: incremental, with a fall-back to global mapping (GLOMAP) when too few images
register or the model disagrees with EXIF GPS; and why each unregistered image failed."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recon.datasets.sfm.colmap_steps import _mkdir, _pycolmap, _run_cancellable
from recon.datasets.sfm.gps import _gps_check
from recon.datasets.sfm.progress import _Stages

# Incremental mapping "registered too few" when below this fraction of the images (or below 3):
# then global mapping is tried too (also when the model disagrees with EXIF GPS, see _gps_check).
FALLBACK_FRACTION = 0.8


def _map(db_path: Path, image_dir: Path, work: Path, total: int, num_threads: int, stages: _Stages,
         gps: dict[str, np.ndarray] | None = None):
    """Incremental mapping, then global mapping too when incremental registered fewer than
    FALLBACK_FRACTION of the images (or fewer than 3), or when its model disagrees with the
    photos' EXIF GPS. Keeps the model that agrees with GPS, then the one registering more images
    (incremental on a tie). Returns (reconstruction or None, attempts for the report, mapper)."""
    pycolmap = _pycolmap()
    attempts: dict[str, dict] = {}
    models: dict[str, Any] = {}
    need = max(3, math.ceil(FALLBACK_FRACTION * total)) if total >= 3 else total

    def largest(recs: dict):
        recs = [r for r in (recs or {}).values() if r.num_reg_images() > 0]
        return max(recs, key=lambda r: (r.num_reg_images(), r.num_points3D()), default=None), len(recs)

    def record(name: str, fn, t0: float) -> None:
        try:
            rec, n_models = largest(fn())
            attempts[name] = {"registered": 0 if rec is None else int(rec.num_reg_images()), "num_models": n_models}
            models[name] = rec
            check = _gps_check(rec, gps or {})
            if check is not None:
                attempts[name]["gps"] = check
        except Exception as err:  # a failed mapper is a result, not a crash
            msg = str(err).strip().splitlines()
            attempts[name] = {"registered": 0, "num_models": 0, "error": msg[-1][-300:] if msg else type(err).__name__}
            models[name] = None
        attempts[name]["seconds"] = round(time.perf_counter() - t0, 3)

    with stages.stage("map", total=total, note="incremental") as st:
        opts = pycolmap.IncrementalPipelineOptions()
        opts.num_threads = int(num_threads)
        # small sets: keep models of a few images (COLMAP's default discards models under 10)
        opts.min_model_size = int(min(opts.min_model_size, max(2, min(3, total))))
        count = {"n": 0}

        def on_init() -> None:
            count["n"] = 2
            st.set(completed=min(2, total))

        def on_next() -> None:
            count["n"] += 1
            st.set(completed=min(count["n"], total))

        inc_dir = str(_mkdir(work / "incremental"))
        record("incremental", lambda: _run_cancellable(
            lambda tok: pycolmap.incremental_mapping(
                str(db_path), str(image_dir), inc_dir, opts,
                initial_image_pair_callback=on_init, next_image_callback=on_next, cancellation_token=tok,
            )
        ), time.perf_counter())
        got = attempts["incremental"]["registered"]
        gps_bad = attempts["incremental"].get("gps", {}).get("consistent") is False
        st.set(completed=got, note=f"incremental: {got}/{total}" + (" [red]disagrees with GPS[/]" if gps_bad else ""))

    if got < need or gps_bad:
        with stages.stage("map", total=None, note="global mapping (GLOMAP)") as st:
            gopts = pycolmap.GlobalPipelineOptions()
            gopts.num_threads = int(num_threads)
            glob_dir = str(_mkdir(work / "global"))
            record("global", lambda: _run_cancellable(
                lambda tok: pycolmap.global_mapping(str(db_path), str(image_dir), glob_dir, gopts)
            ), time.perf_counter())
            g = attempts["global"]
            st.set(note=f"global: {g['registered']}/{total}"
                   + (" [red]disagrees with GPS[/]" if g.get("gps", {}).get("consistent") is False else ""))

    def rank(name: str):
        gps_ok = attempts[name].get("gps", {}).get("consistent")
        return (1 if gps_ok is None else 2 * int(gps_ok), attempts[name]["registered"], name == "incremental")

    candidates = [n for n in models if models[n] is not None]
    if not candidates:
        return None, attempts, None
    mapper = max(candidates, key=rank)
    return models[mapper], attempts, mapper


def _failure_reasons(names: Sequence[str], rec, facts: dict, attempts: dict) -> list[dict]:
    """Why each unregistered image failed, from the database's keypoint and inlier counts."""
    registered_names = set()
    if rec is not None:
        registered_names = {rec.image(i).name for i in rec.reg_image_ids()}
    reg_ids = {facts["ids"][n] for n in registered_names if n in facts["ids"]}
    failed = []
    for name in names:
        if name in registered_names:
            continue
        if name not in facts["ids"]:
            failed.append({"image": name, "reason": "could not be read (no features)"})
            continue
        if facts["keypoints"].get(name, 0) == 0:
            failed.append({"image": name, "reason": "no features"})
            continue
        iid = facts["ids"][name]
        with_reg, best_any = 0, 0
        for (a, b), cnt in facts["inliers"].items():
            if iid in (a, b):
                best_any = max(best_any, cnt)
                other = b if a == iid else a
                if other in reg_ids:
                    with_reg = max(with_reg, cnt)
        n = with_reg if reg_ids else best_any
        if n < 100:  # registration needs ~30 inliers of a 2D-3D pose; below ~100 matches that is rare
            reason = f"not registered: too few matches ({n} inlier matches)"
        else:
            reason = f"not registered: pose estimation failed ({n} inlier matches with a registered image)" \
                if reg_ids else f"not registered: no model could be built ({n} inlier matches)"
        failed.append({"image": name, "reason": reason})
    return failed
