"""Triangulation with known poses: a scene with cameras (poses + intrinsics) but no points
-> sparse points, with the cameras held fixed (what 3DGS-style training initialises from)."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

# Import order: Pillow is imported here at module level, pycolmap only lazily through
# colmap_steps._pycolmap(). Once pycolmap 4.2.1 is loaded, Pillow's PNG *encoder* can abort the
# process (zlib symbol clash; PNG reading is fine): never write PNGs with Pillow in this package.
from PIL import Image

from recon.datasets.sfm.cache import CACHE_VERSION, _commit, _digest, _file_signature, _read_points_cache
from recon.datasets.sfm.colmap_steps import _extract, _match, _mkdir, _model_stats, _pycolmap, _quiet_colmap
from recon.datasets.sfm.inputs import (
    EXHAUSTIVE_MAX_IMAGES, MATCHERS, _exhaustive_pairs, _sequential_pairs, _write_colmap_masks,
)
from recon.datasets.sfm.progress import _Stages
from recon.errors import InputError
from recon.utils.paths import derived_dir


def camera_to_pycolmap(cam, camera_id: int, width: int | None = None, height: int | None = None):
    """Our :class:`~recon.datasets.cameras.Camera` as a pycolmap camera (intrinsics rescaled to an
    image of ``width`` x ``height`` when given). Pinhole -> PINHOLE; SIMPLE_RADIAL / RADIAL keep
    their model when fx == fy, else become OPENCV; OPENCV, FULL_OPENCV, OPENCV_FISHEYE map 1:1."""
    pycolmap = _pycolmap()
    w = int(width or cam.width)
    h = int(height or cam.height)
    sx, sy = w / cam.width, h / cam.height
    fx, fy, cx, cy = cam.fx * sx, cam.fy * sy, cam.cx * sx, cam.cy * sy
    d = cam.distortion
    p = (lambda k: float(d.params.get(k, 0.0))) if d is not None else (lambda k: 0.0)
    same_f = abs(fx - fy) <= 1e-6 * max(abs(fx), 1.0)
    if d is None:
        model, params = "PINHOLE", [fx, fy, cx, cy]
    elif d.model == "SIMPLE_RADIAL" and same_f:
        model, params = "SIMPLE_RADIAL", [fx, cx, cy, p("k1")]
    elif d.model == "RADIAL" and same_f:
        model, params = "RADIAL", [fx, cx, cy, p("k1"), p("k2")]
    elif d.model in ("SIMPLE_RADIAL", "RADIAL", "OPENCV"):
        model, params = "OPENCV", [fx, fy, cx, cy, p("k1"), p("k2"), p("p1"), p("p2")]
    elif d.model == "FULL_OPENCV":
        model, params = "FULL_OPENCV", [fx, fy, cx, cy] + [p(k) for k in ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")]
    elif d.model == "OPENCV_FISHEYE":
        model, params = "OPENCV_FISHEYE", [fx, fy, cx, cy] + [p(k) for k in ("k1", "k2", "k3", "k4")]
    else:  # pragma: no cover - Distortion validates its model
        raise ValueError(f"unsupported distortion model {d.model!r}")
    pcam = pycolmap.Camera(
        camera_id=int(camera_id), model=model, width=w, height=h, params=np.asarray(params, dtype=np.float64)
    )
    try:
        pcam.has_prior_focal_length = True
    except Exception:  # pragma: no cover
        pass
    return pcam


def _known_pairs(cams: Sequence, names: Sequence[str], matcher: str, k: int = 20) -> tuple[list[tuple[str, str]], str]:
    """Pairs to match when poses are known: every pair for small sets, else each view with its
    ``k`` nearest views (camera centre distance, weighted by viewing-direction agreement)."""
    n = len(names)
    if matcher == "exhaustive" or (matcher == "auto" and n <= EXHAUSTIVE_MAX_IMAGES):
        return _exhaustive_pairs(names), "exhaustive"
    if matcher == "sequential":
        return _sequential_pairs(names), "sequential"
    centers = np.stack([c.center for c in cams])
    dirs = np.stack([c.c2w[:3, 2] for c in cams])
    dist = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
    cosang = np.clip(dirs @ dirs.T, -1, 1)
    score = dist / (np.median(dist[dist > 0]) + 1e-12) + 2.0 * (1 - cosang)
    np.fill_diagonal(score, np.inf)
    pairs: set[tuple[int, int]] = set()
    for i in range(n):
        for j in np.argsort(score[i])[: min(k, n - 1)]:
            pairs.add((min(i, int(j)), max(i, int(j))))
    return [(names[i], names[j]) for i, j in sorted(pairs)], f"{k} nearest views"


def triangulate_known_poses(
    scene,
    *,
    max_image_size: int = 1600,
    matcher: str = "auto",
    output_dir: str | Path | None = None,
    num_threads: int = -1,
    force: bool = False,
    progress: bool = True,
    return_report: bool = False,
):
    """Sparse points for a scene whose cameras are known (poses + intrinsics, incl. distortion).

    SIFT features (masks honoured), matching (every pair up to 100 views, else the nearest views by
    pose), then COLMAP's point triangulation with cameras and poses held fixed. Returns
    ``(points (N, 3) float32, colors (N, 3) uint8)``; with ``return_report=True`` also the report
    dict. When nothing can be triangulated (e.g. noise images) the arrays are empty, not an error.
    Cached in ``derived_dir(<image folder>, "sfm_points")`` (or ``output_dir``): ``points.npz``,
    ``sparse/0`` (the triangulated COLMAP model) and ``report.json``.
    """
    pycolmap = _pycolmap()
    t_start = time.perf_counter()
    cams = list(scene.cameras)
    if not cams:
        raise InputError(getattr(scene, "root", None), "the scene has no cameras to triangulate from")
    paths = []
    for c in cams:
        if c.image_path is None:
            raise InputError(getattr(scene, "root", None), f"view {c.name!r} has no image file")
        p = Path(c.image_path).expanduser().resolve()
        if not p.is_file():
            raise InputError(p, "image not found")
        paths.append(p)
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    names = [p.relative_to(root).as_posix() for p in paths]
    if len(set(names)) != len(names):
        raise InputError(root, "two views use the same image file")
    if matcher not in MATCHERS:
        raise InputError(None, f"unknown matcher {matcher!r} (choose one of {', '.join(MATCHERS)})")

    sizes = []
    for p in paths:
        try:
            with Image.open(p) as im:
                sizes.append(im.size)
        except OSError as err:
            raise InputError(p, f"cannot read image ({err})") from err
    masks = {n: Path(c.mask_path) for n, c in zip(names, cams) if c.mask_path is not None and Path(c.mask_path).is_file()}
    path_of = dict(zip(names, paths))

    cam_sig = [
        [c.fx, c.fy, c.cx, c.cy, c.width, c.height, None if c.distortion is None else c.distortion.to_dict(),
         np.round(c.c2w, 9).tolist()]
        for c in cams
    ]
    key = _digest({
        "version": CACHE_VERSION,
        "kind": "triangulate_known_poses",
        "pycolmap": pycolmap.__version__,
        "images": _file_signature(paths, root),
        "masks": _file_signature(list(masks.values()), Path("/")),
        "cameras": cam_sig,
        "max_image_size": int(max_image_size),
        "matcher": matcher,
    })
    out = Path(output_dir).expanduser() if output_dir is not None else derived_dir(root, "sfm_points")
    if not force:
        report = _read_points_cache(out, key)
        if report is not None:
            data = np.load(out / "points.npz")
            pts, cols = data["points"].astype(np.float32), data["colors"].astype(np.uint8)
            if progress:
                from rich.console import Console

                Console(stderr=True).print(
                    f"[bold]SfM points[/]: reusing {len(pts):,} triangulated points from {out}", highlight=False
                )
            return (pts, cols, report) if return_report else (pts, cols)

    out.mkdir(parents=True, exist_ok=True)
    work = out / f".tmp-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        with _quiet_colmap(), _Stages(progress, f"Triangulating points for {len(cams)} posed views in {root}") as stages:
            db_path = work / "database.db"
            colmap_masks = _write_colmap_masks(masks, path_of, work / "masks") if masks else None
            _extract(
                db_path, root, names, camera_model="PINHOLE", single_camera=False, max_image_size=max_image_size,
                num_threads=num_threads, mask_dir=colmap_masks, stages=stages,
            )
            # Put the known intrinsics into the database (so verification uses calibrated geometry)
            # and build the posed reconstruction with the database's ids.
            db = pycolmap.Database.open(str(db_path))
            rec = pycolmap.Reconstruction()
            try:
                by_name = {im.name: im for im in db.read_all_images()}
                for n, c, (w, h) in zip(names, cams, sizes):
                    im = by_name.get(n)
                    if im is None:  # unreadable for COLMAP: no features, nothing to add
                        continue
                    pcam = camera_to_pycolmap(c, im.camera_id, w, h)
                    db.update_camera(pcam)
                    rec.add_camera_with_trivial_rig(pcam)
                    w2c = c.w2c
                    image = pycolmap.Image(name=n, camera_id=im.camera_id, image_id=im.image_id)
                    rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(w2c[:3, :4]))
            finally:
                db.close()
            with_features = [n for n in names if n in by_name]
            pairs, how = _known_pairs([c for c, n in zip(cams, names) if n in by_name], with_features, matcher)
            _match(db_path, pairs, with_features, work, num_threads=num_threads, stages=stages, note=how)
            with stages.stage("triangulate", total=None):
                opts = pycolmap.IncrementalPipelineOptions()
                opts.num_threads = int(num_threads)
                try:
                    tri = pycolmap.triangulate_points(
                        rec, str(db_path), str(root), str(_mkdir(work / "tri")), clear_points=True, options=opts,
                        refine_intrinsics=False,
                    )
                except Exception as err:
                    tri, tri_error = None, str(err).strip()[-300:]
                else:
                    tri_error = None
            if tri is None or tri.num_points3D() == 0:
                pts = np.zeros((0, 3), np.float32)
                cols = np.zeros((0, 3), np.uint8)
                stats = {"num_points": 0, "mean_reprojection_error": None, "mean_track_length": None}
            else:
                ids = sorted(tri.points3D.keys()) if hasattr(tri.points3D, "keys") else list(tri.point3D_ids())
                pts = np.array([tri.points3D[i].xyz for i in ids], dtype=np.float32).reshape(-1, 3)
                cols = np.array([tri.points3D[i].color for i in ids], dtype=np.uint8).reshape(-1, 3)
                stats = _model_stats(tri)
                tri.write(str(_mkdir(work / "sparse" / "0")))
            np.savez(work / "points.npz", points=pts, colors=cols)
            report = {
                "version": CACHE_VERSION,
                "cache_key": key,
                "image_dir": str(root),
                "total": len(names),
                "with_features": len(with_features),
                "matcher": how,
                "num_pairs": len(pairs),
                "max_image_size": int(max_image_size),
                "num_masks": len(masks),
                "error": tri_error,
                **{k: stats.get(k) for k in ("num_points", "mean_reprojection_error", "mean_track_length")},
                "timings": {k: round(v, 3) for k, v in stages.times.items()},
                "pycolmap_version": pycolmap.__version__,
            }
            report["timings"]["total"] = round(time.perf_counter() - t_start, 3)
        _commit(work, out, report, ("points.npz", "sparse"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if stages.console is not None:
        err = report["mean_reprojection_error"]
        stages.console.print(
            f"[bold]SfM points[/]: {len(pts):,} points"
            + ("" if err is None else f", {err:.2f} px, track length {report['mean_track_length']:.2f}")
            + f" in {report['timings']['total']:.1f} s -> {out}",
            highlight=False,
        )
    return (pts, cols, report) if return_report else (pts, cols)
