"""EXIF GPS as a check on an SfM model: GPS positions in local metres, a similarity
alignment (Umeyama) of the camera centres onto them, and the verdict whether they agree."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

# Import order: Pillow is imported here at module level, pycolmap only lazily through
# colmap_steps._pycolmap(). Once pycolmap 4.2.1 is loaded, Pillow's PNG *encoder* can abort the
# process (zlib symbol clash; PNG reading is fine): never write PNGs with Pillow in this package.
from PIL import Image


def _exif_gps(paths: Sequence[Path]) -> dict[str, np.ndarray]:
    """Image name -> GPS position in local metres (east, north, up) from EXIF, for the images
    that have one. Equirectangular around the mean position: plenty for checking a model."""
    raw = {}
    for p in paths:
        try:
            with Image.open(p) as im:
                g = im.getexif().get_ifd(0x8825)
            if not g or 2 not in g or 4 not in g:
                continue

            def deg(v) -> float:
                return float(v[0]) + float(v[1]) / 60 + float(v[2]) / 3600

            lat = deg(g[2]) * (-1 if str(g.get(1, "N")).upper().startswith("S") else 1)
            lon = deg(g[4]) * (-1 if str(g.get(3, "E")).upper().startswith("W") else 1)
            alt = float(g.get(6, 0.0)) * (-1 if g.get(5, 0) in (1, b"\x01") else 1)
            if math.isfinite(lat) and math.isfinite(lon) and (lat, lon) != (0.0, 0.0):
                raw[p.name] = (lat, lon, alt if math.isfinite(alt) else 0.0)
        except Exception:  # missing or broken EXIF: no GPS for this image
            continue
    if not raw:
        return {}
    lat0 = np.mean([v[0] for v in raw.values()])
    lon0 = np.mean([v[1] for v in raw.values()])
    r = 6_371_000.0
    return {
        n: np.array([math.radians(lon - lon0) * r * math.cos(math.radians(lat0)), math.radians(lat - lat0) * r, alt])
        for n, (lat, lon, alt) in raw.items()
    }


def _umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising |s R src + t - dst|^2."""
    ms, md = src.mean(0), dst.mean(0)
    xs, xd = src - ms, dst - md
    u, sv, vt = np.linalg.svd(xd.T @ xs / len(src))
    d = np.eye(3)
    if np.linalg.det(u @ vt) < 0:
        d[2, 2] = -1
    rot = u @ d @ vt
    var = xs.var(0).sum()
    scale = float(np.trace(np.diag(sv) @ d) / var) if var > 0 else 1.0
    return scale, rot, md - scale * rot @ ms


# A model "agrees with GPS" when, after the best similarity transform, its camera centres are
# within max(GPS_TOLERANCE_M, GPS_TOLERANCE_FRACTION * extent) of the GPS positions (median).
GPS_MIN_IMAGES = 5
GPS_MIN_EXTENT_M = 30.0
# (Phone GPS is good to ~5-10 m. On opensfm_lund a right model sits at 4 m, wrong incremental
# models at 15-35 m over a 180 m walk.)
GPS_TOLERANCE_M = 10.0
GPS_TOLERANCE_FRACTION = 0.05


def _gps_check(rec, gps: dict[str, np.ndarray]) -> dict | None:
    """Compare a model's camera centres with EXIF GPS; None when GPS cannot judge it (too few
    images with GPS, or they span less than GPS_MIN_EXTENT_M: GPS noise is ~5-10 m)."""
    if rec is None or not gps:
        return None
    names, centres, pos = [], [], []
    for iid in rec.reg_image_ids():
        im = rec.image(iid)
        if im.name in gps:
            names.append(im.name)
            centres.append(np.asarray(im.projection_center(), dtype=np.float64))
            pos.append(gps[im.name])
    if len(names) < GPS_MIN_IMAGES:
        return None
    c, g = np.stack(centres), np.stack(pos)
    extent = float(np.linalg.norm(g[:, :2].max(0) - g[:, :2].min(0)))
    if extent < GPS_MIN_EXTENT_M:
        return None
    s, rot, t = _umeyama(c, g)
    res = np.linalg.norm((s * c @ rot.T + t - g)[:, :2], axis=1)  # horizontal: GPS altitude is poor
    tol = max(GPS_TOLERANCE_M, GPS_TOLERANCE_FRACTION * extent)
    med = float(np.median(res))
    return {"images": len(names), "extent_m": round(extent, 1), "median_residual_m": round(med, 2),
            "max_residual_m": round(float(res.max()), 2), "tolerance_m": round(tol, 1), "consistent": med <= tol}
