"""run_sfm: photos without poses -> a COLMAP model (``sparse/0``) and ``report.json``,
with its result type and the report printout."""

from __future__ import annotations

import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from recon.datasets.folder import IMAGE_SUFFIXES, find_images
from recon.datasets.sfm.cache import (
    CACHE_VERSION, _check_output_dir, _commit, _digest, _file_signature, _read_cache,
)
from recon.datasets.sfm.colmap_steps import (
    _db_facts, _extract, _match, _mkdir, _model_stats, _pycolmap, _quiet_colmap,
)
from recon.datasets.sfm.gps import _exif_gps
from recon.datasets.sfm.inputs import (
    _auto_mask_dir, _check_camera_model, _collect_masks, _decide_single_camera, _exhaustive_pairs, _frame_order,
    _sequential_pairs, _write_colmap_masks, choose_matcher,
)
from recon.datasets.sfm.mapping import _failure_reasons, _map
from recon.datasets.sfm.progress import _Stages
from recon.errors import InputError
from recon.utils.paths import derived_dir


@dataclass
class SfmResult:
    """What :func:`run_sfm` produced. ``model_dir`` is the COLMAP binary model (``.../sparse/0``);
    ``report`` is the content of ``report.json`` beside it. ``os.fspath(result)`` is the model dir."""

    model_dir: Path
    report: dict
    registered: int
    total: int
    output_dir: Path | None = None  # the folder holding database.db, sparse/0, report.json
    cached: bool = False  # True when the result came from the cache without recomputing

    def __fspath__(self) -> str:  # so Path(run_sfm(...)) is the model folder
        return str(self.model_dir)


def run_sfm(
    image_dir: str | Path,
    *,
    output_dir: str | Path | None = None,
    mask_dir: str | Path | None | bool = None,
    matcher: str = "auto",
    camera_model: str = "auto",
    single_camera: str | bool = "auto",
    max_image_size: int = 1600,
    num_threads: int = -1,
    force: bool = False,
    progress: bool = True,
) -> SfmResult:
    """Structure from motion on the photos directly in ``image_dir`` (.jpg/.jpeg/.png).

    - ``output_dir``: where ``database.db``, ``sparse/0`` (the largest model, COLMAP binary) and
      ``report.json`` go; default ``derived_dir(image_dir, "sfm")``. Other files there are left alone.
    - ``mask_dir``: white = keep, black = ignore, same stem as the image (``X.png`` or COLMAP's
      ``X.jpg.png``). None looks for ``masks/`` (or ``masks_4/`` beside ``images_4/``) beside the
      photos; False uses no masks.
    - ``matcher``: ``"auto"`` (see :func:`choose_matcher`), ``"exhaustive"`` or ``"sequential"``.
    - ``camera_model``: ``"auto"`` (SIMPLE_RADIAL) or any COLMAP model name (``"OPENCV"``...).
    - ``single_camera``: ``"auto"`` shares one camera when every image has the same size and EXIF
      camera (video, one phone), else one camera per image; or True/False.
    - ``max_image_size``: long side the images are downscaled to for SIFT (keypoints are in
      full-resolution pixels). ``num_threads=-1`` uses every core.

    Mapping is incremental; when it registers fewer than 80 % of the images (or fewer than 3), or
    when the photos carry EXIF GPS and the model's camera centres disagree with it (after a
    similarity transform), global mapping runs too. The model that agrees with GPS, then the one
    registering more images, is kept (``report["mapper"]``, details in ``report["mappers"]``).
    Raises :class:`InputError` for a missing folder, fewer than 2 images, bad options, or when
    nothing registers at all (e.g. photos that do not overlap); a partial result is returned with
    the unregistered images and the reason for each in ``report["failed"]``.
    """
    pycolmap = _pycolmap()
    t_start = time.perf_counter()
    image_dir = Path(image_dir).expanduser()
    if not image_dir.exists():
        raise InputError(image_dir, "no such folder")
    if not image_dir.is_dir():
        raise InputError(image_dir, "not a folder of photos")
    image_dir = image_dir.resolve()
    paths = find_images(image_dir)
    if not paths:
        raise InputError(image_dir, f"no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    if len(paths) < 2:
        raise InputError(image_dir, f"SfM needs at least 2 overlapping photos, found 1 ({paths[0].name})")
    names = [p.name for p in paths]
    path_of = {p.name: p for p in paths}

    if mask_dir is False:
        mdir = None
    elif mask_dir is None or mask_dir is True:
        mdir = _auto_mask_dir(image_dir)
    else:
        mdir = Path(mask_dir).expanduser()
        if not mdir.is_dir():
            raise InputError(mdir, "mask folder not found")
    masks = _collect_masks(image_dir, names, mdir)
    if mask_dir not in (None, True, False) and not masks:
        raise InputError(mdir, f"no mask matches any photo (expected e.g. {Path(names[0]).stem}.png)")
    if not masks:
        mdir = None

    matcher_name, matcher_why = choose_matcher(image_dir, names, matcher)
    model_name = _check_camera_model(camera_model)
    single, single_why = _decide_single_camera(paths, single_camera)
    if int(max_image_size) < 64:
        raise InputError(None, f"max_image_size must be at least 64 pixels, not {max_image_size}")

    out = Path(output_dir).expanduser() if output_dir is not None else derived_dir(image_dir, "sfm")
    options = {
        "matcher": matcher_name,
        "camera_model": model_name,
        "single_camera": single,
        "max_image_size": int(max_image_size),
        "masks": str(mdir) if mdir else None,
    }
    key = _digest({
        "version": CACHE_VERSION,
        "pycolmap": pycolmap.__version__,
        "images": _file_signature(paths, image_dir),
        "masks": _file_signature(list(masks.values()), mdir) if mdir else [],
        "options": options,
    })

    console = None
    if not force:
        cached = _read_cache(out, key)
        if cached is not None:
            if progress:
                from rich.console import Console

                console = Console(stderr=True)
                console.print(f"[bold]SfM[/] {image_dir}: reusing the result in {out}", highlight=False)
                print_report(cached, console, cached=True)
            return _result_from_report(out, cached, image_dir, cached=True)
    _check_output_dir(out, force)

    out.mkdir(parents=True, exist_ok=True)
    work = out / f".tmp-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        with _quiet_colmap(), _Stages(progress, f"SfM on {len(names)} images in {image_dir}") as stages:
            console = stages.console
            db_path = work / "database.db"
            colmap_masks = _write_colmap_masks(masks, path_of, work / "masks") if masks else None
            _extract(
                db_path, image_dir, names, camera_model=model_name, single_camera=single,
                max_image_size=max_image_size, num_threads=num_threads, mask_dir=colmap_masks, stages=stages,
            )
            facts = _db_facts(db_path)
            with_features = [n for n in names if facts["keypoints"].get(n, 0) > 0]
            pairs = (_exhaustive_pairs if matcher_name == "exhaustive" else _sequential_pairs)(with_features)
            order = with_features if matcher_name == "exhaustive" else _frame_order(with_features)
            _match(db_path, pairs, order, work, num_threads=num_threads, stages=stages, note=f"{matcher_name} pairs")
            facts = _db_facts(db_path)
            best, attempts, mapper = _map(db_path, image_dir, work, len(names), num_threads, stages,
                                          gps=_exif_gps(paths))

            report = {
                "version": CACHE_VERSION,
                "cache_key": key,
                "image_dir": str(image_dir),
                "total": len(names),
                "registered": 0,
                "mapper": mapper,
                "mappers": attempts,
                "matcher": matcher_name,
                "matcher_reason": matcher_why,
                "num_pairs": len(pairs),
                "num_verified_pairs": sum(1 for v in facts["inliers"].values() if v > 0),
                "camera_model": model_name,
                "single_camera": single,
                "single_camera_reason": single_why,
                "max_image_size": int(max_image_size),
                "masks": str(mdir) if mdir else None,
                "num_masks": len(masks),
                "num_points": 0,
                "num_cameras": 0,
                "mean_reprojection_error": None,
                "mean_track_length": None,
                "mean_observations_per_image": None,
                "failed": [],
                "timings": {},
                "pycolmap_version": pycolmap.__version__,
            }
            if best is not None:
                report.update(_model_stats(best))
                best.write(str(_mkdir(work / "sparse" / "0")))
            report["failed"] = _failure_reasons(names, best, facts, attempts)
            report["timings"] = {k: round(v, 3) for k, v in stages.times.items()}
            report["timings"]["total"] = round(time.perf_counter() - t_start, 3)
        _commit(work, out, report, ("database.db", "sparse"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if progress:
        print_report(report, console)
    return _result_from_report(out, report, image_dir, cached=False)


def _result_from_report(out: Path, report: dict, image_dir: Path, cached: bool) -> SfmResult:
    if report.get("registered", 0) == 0:
        raise InputError(image_dir, _nothing_registered(report))
    return SfmResult(
        model_dir=out / "sparse" / "0", report=report, registered=int(report["registered"]),
        total=int(report["total"]), output_dir=out, cached=cached,
    )


def _nothing_registered(report: dict) -> str:
    total = report.get("total", 0)
    no_feat = sum(1 for f in report.get("failed", []) if "no features" in f["reason"])
    best = 0
    for f in report.get("failed", []):
        m = re.search(r"\((\d+) inlier", f["reason"])
        if m:
            best = max(best, int(m.group(1)))
    why = (
        f"SfM registered none of the {total} photos"
        f" ({report.get('num_verified_pairs', 0)} of {report.get('num_pairs', 0)} image pairs verified,"
        f" best pair {best} inlier matches"
        + (f", {no_feat} photos without features" if no_feat else "")
        + "); the photos must show the same scene from overlapping viewpoints"
    )
    return why


def print_report(report: dict, console=None, cached: bool = False) -> None:
    """A short rich table: registered/total, mapper, points, error, timings, failed images."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(stderr=True)
    reg, total = report.get("registered", 0), report.get("total", 0)
    colour = "green" if reg == total else ("yellow" if reg else "red")
    table = Table(title="SfM report" + (" (cached)" if cached else ""), show_header=False, title_justify="left", box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("registered", f"[{colour}]{reg}/{total}[/]")
    mappers = report.get("mappers", {})
    tried = ", ".join(f"{k} {v.get('registered', 0)}/{total}" for k, v in mappers.items())
    table.add_row("mapper", f"{report.get('mapper')}  ({tried})" if tried else str(report.get("mapper")))
    checks = [f"{k} {v['gps']['median_residual_m']:.1f} m " + ("[green]ok[/]" if v["gps"]["consistent"] else "[red]off[/]")
              for k, v in mappers.items() if v.get("gps")]
    if checks:
        table.add_row("GPS check", ", ".join(checks) + " (median camera-to-GPS distance)")
    table.add_row("matcher", f"{report.get('matcher')} ({report.get('num_verified_pairs', 0)}/"
                  f"{report.get('num_pairs', 0)} pairs verified)")
    table.add_row("cameras", f"{report.get('num_cameras', 0)} {report.get('camera_model', '')}")
    if report.get("num_masks"):
        table.add_row("masks", f"{report['num_masks']} from {report.get('masks')}")
    table.add_row("points", f"{report.get('num_points', 0):,}")
    err = report.get("mean_reprojection_error")
    table.add_row("reproj. error", "-" if err is None else f"{err:.3f} px")
    tl = report.get("mean_track_length")
    table.add_row("track length", "-" if tl is None else f"{tl:.2f}")
    t = report.get("timings", {})
    table.add_row("time", " / ".join(f"{k} {v:.1f}s" for k, v in t.items()))
    console.print(table)
    failed = report.get("failed", [])
    for f in failed[:10]:
        console.print(f"  [yellow]{f['image']}[/]: {f['reason']}", highlight=False)
    if len(failed) > 10:
        console.print(f"  ... and {len(failed) - 10} more (see report.json)", highlight=False)
