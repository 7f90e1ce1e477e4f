"""The built-in demo scene: a small procedural, textured scene that recon renders itself.

It is the embedded default dataset (``recon-train --data demo``) and the fixture of the fast tests, so
it is small, exact and quick to make:

- geometry (world units, z up): a ground disc (radius 1.5, checker pattern with a terracotta ring and
  a dark rim), a sphere with a rainbow longitude gradient and latitude stripes, a box turned 30 degrees
  about z with one colour per face, a dark border on every face and a dark dot on top, and an upright
  cylinder with six vertical stripes and an orange cap. Everything lies in
  ``[-1.5, 1.5] x [-1.5, 1.5] x [0, 0.85]`` (:data:`BOUNDS`);
- shading: diffuse only (no view dependence): albedo times (hemisphere ambient + a soft directional
  light with soft shadows, five light samples), baked into the pixels;
- background: plain white (:data:`BACKGROUND`), stated in ``transforms.json``;
- cameras: pinhole, square pixels, 50 degree horizontal field of view, on two rings of the upper
  hemisphere (elevations about 20 and 45 degrees, distances about 3.8 and 4) looking at :data:`LOOK_AT`. Views
  are numbered ring by ring in azimuth order and the second ring is offset by half a step, so every
  8th held-out view (``SceneData.split``) lies between two training views. ``seed`` only jitters the
  cameras slightly; the geometry never changes;
- pixels: exact analytic ray casting in numpy, ``supersample`` x ``supersample`` rays per pixel
  averaged (anti-aliased edges); depth is the z-depth (OpenCV camera z) of the single ray through the
  pixel centre, ``0`` where the ray hits nothing.

On disk (``make_demo_scene``) it is a nerfstudio / instant-ngp ``transforms.json`` folder, so the
demo goes through the real NeRF loader::

    transforms.json        OpenGL c2w per frame, global fl_x fl_y cx cy w h, plus a "recon_demo" block
    images/r_000.png ...   RGB, 8 bit, background composited (no alpha)
    depth/r_000.npy ...    float32 (h, w) z-depth, 0 = background

There is no ``points3D.ply``: the trainer initialises the demo at random inside ``recon_demo.bounds``
(the NeRF loader copies the ``recon_demo`` block into ``SceneData.extras["demo"]``).

Pixel convention as in :mod:`recon.datasets.cameras`: the top-left pixel covers ``[0, 1]^2``, its
centre is ``(0.5, 0.5)``. Bump :data:`VERSION` whenever anything that changes the files changes, so
cached copies are not reused.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recon.datasets.cameras import Camera, look_at_c2w
from recon.utils.paths import cache_root

VERSION = 1
DEFAULT_WIDTH = 160
DEFAULT_HEIGHT = 120
DEFAULT_VIEWS = 48
DEFAULT_SUPERSAMPLE = 2

BACKGROUND = (1.0, 1.0, 1.0)  # white
LOOK_AT = (0.0, 0.0, 0.25)
UP = (0.0, 0.0, 1.0)
HFOV_DEG = 50.0
RING_ELEVATIONS_DEG = (20.0, 45.0)
RING_DISTANCES = (3.8, 4.0)

# OpenGL <-> OpenCV camera axes (flip y and z); its own inverse.
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])

# --- geometry -----------------------------------------------------------------------------------
GROUND_RADIUS = 1.5
SPHERE_CENTER = np.array([0.55, -0.40, 0.40])
SPHERE_RADIUS = 0.40
BOX_CENTER = np.array([-0.50, -0.25, 0.30])
BOX_HALF = np.array([0.28, 0.28, 0.30])
BOX_YAW = math.radians(30.0)
CYL_AXIS_XY = np.array([0.05, 0.65])
CYL_RADIUS = 0.17
CYL_HEIGHT = 0.85

BOUNDS = np.array([[-GROUND_RADIUS, -GROUND_RADIUS, 0.0], [GROUND_RADIUS, GROUND_RADIUS, CYL_HEIGHT]])

GROUND, SPHERE, BOX, CYLINDER = 0, 1, 2, 3
OBJECT_NAMES = ("ground", "sphere", "box", "cylinder")
_MISS = -1
_EPS = 1e-9

_c, _s = math.cos(BOX_YAW), math.sin(BOX_YAW)
_BOX_R = np.array([[_c, -_s, 0.0], [_s, _c, 0.0], [0.0, 0.0, 1.0]])  # box local -> world

# Lighting: directional key light (soft: 5 samples on a small cone) + hemisphere ambient.
_KEY = np.array([0.45, -0.35, 0.82])
_KEY = _KEY / np.linalg.norm(_KEY)


def _light_samples(spread: float = 0.07) -> np.ndarray:
    a = np.cross(_KEY, [0.0, 0.0, 1.0])
    a /= np.linalg.norm(a)
    b = np.cross(_KEY, a)
    dirs = [_KEY] + [_KEY + spread * (math.cos(k * math.pi / 2) * a + math.sin(k * math.pi / 2) * b) for k in range(4)]
    return np.stack([d / np.linalg.norm(d) for d in dirs])


_LIGHTS = _light_samples()
_AMBIENT, _SKY, _DIFFUSE = 0.28, 0.12, 0.72


# --- ray intersection (rays: origins [N, 3] or [1, 3], directions [N, 3], any length) --------------
def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of [N, 3] / [1, 3] arrays (component sums: faster than einsum here)."""
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def _mul(v: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Row vectors [N, 3] times a 3x3 matrix (``v @ m``, without the slow small-matrix matmul)."""
    return v[:, 0:1] * m[0] + v[:, 1:2] * m[1] + v[:, 2:3] * m[2]


def _t_disc(o: np.ndarray, d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -o[:, 2] / d[:, 2]
        x = o[:, 0] + t * d[:, 0]
        y = o[:, 1] + t * d[:, 1]
        ok = (t > _EPS) & (x * x + y * y <= GROUND_RADIUS**2)
    return np.where(ok, t, np.inf)


def _t_sphere(o: np.ndarray, d: np.ndarray) -> np.ndarray:
    oc = o - SPHERE_CENTER
    a = _dot(d, d)
    b = _dot(oc, d)
    c = _dot(oc, oc) - SPHERE_RADIUS**2
    disc = b * b - a * c
    sq = np.sqrt(np.maximum(disc, 0.0))
    t0 = (-b - sq) / a
    t1 = (-b + sq) / a
    t = np.where(t0 > _EPS, t0, np.where(t1 > _EPS, t1, np.inf))
    return np.where(disc >= 0.0, t, np.inf)


def _t_box(o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Slab test in the box frame (nearest hit from outside, the exit point from inside)."""
    ol = _mul(o - BOX_CENTER, _BOX_R)  # R^T applied to row vectors
    dl = _mul(d, _BOX_R)
    dl[np.abs(dl) < 1e-15] = 1e-15
    inv = 1.0 / dl
    ta = (-BOX_HALF - ol) * inv
    tb = (BOX_HALF - ol) * inv
    tnear = np.minimum(ta, tb).max(axis=1)
    tfar = np.maximum(ta, tb).min(axis=1)
    hit = (tnear <= tfar) & (tfar > _EPS)
    t = np.where(tnear > _EPS, tnear, tfar)
    return np.where(hit, t, np.inf)


def _t_cylinder(o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Closed upright cylinder (side, top cap, bottom cap): nearest hit from outside."""
    ox = o[:, 0] - CYL_AXIS_XY[0]
    oy = o[:, 1] - CYL_AXIS_XY[1]
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - CYL_RADIUS**2
    disc = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        z0 = o[:, 2] + t0 * dz
        side = np.where((disc >= 0) & (a > 1e-18) & (t0 > _EPS) & (z0 >= 0) & (z0 <= CYL_HEIGHT), t0, np.inf)
        best = side
        for zc in (CYL_HEIGHT, 0.0):
            tc = (zc - o[:, 2]) / dz
            x = ox + tc * dx
            y = oy + tc * dy
            cap = np.where((tc > _EPS) & (x * x + y * y <= CYL_RADIUS**2), tc, np.inf)
            best = np.minimum(best, cap)
    return best


def _culled(fn, center: np.ndarray, radius: float):
    """``fn`` evaluated only on rays that pass through its bounding sphere (the rest miss)."""

    def wrapped(o: np.ndarray, d: np.ndarray) -> np.ndarray:
        o = np.broadcast_to(o, d.shape)
        oc = o - center
        b = _dot(oc, d)
        a = _dot(d, d)
        c = _dot(oc, oc) - radius**2
        near = (b * b - a * c >= 0) & ((b < 0) | (c < 0))  # line meets the sphere ahead of (or around) o
        t = np.full(len(d), np.inf)
        idx = np.flatnonzero(near)
        if len(idx):
            t[idx] = fn(o[idx], d[idx])
        return t

    return wrapped


_t_box_culled = _culled(_t_box, BOX_CENTER, float(np.linalg.norm(BOX_HALF)) * 1.001)
_t_cylinder_culled = _culled(
    _t_cylinder,
    np.array([CYL_AXIS_XY[0], CYL_AXIS_XY[1], CYL_HEIGHT / 2]),
    math.hypot(CYL_RADIUS, CYL_HEIGHT / 2) * 1.001,
)


def _occluded(o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Any hit on an object that can cast a shadow (the ground disc cannot)."""
    o = np.broadcast_to(o, d.shape)
    return np.isfinite(_t_sphere(o, d)) | np.isfinite(_t_box_culled(o, d)) | np.isfinite(_t_cylinder_culled(o, d))


# --- surface attributes -------------------------------------------------------------------------
def _hsv(h: np.ndarray, s: float, v: float) -> np.ndarray:
    h6 = (h % 1.0) * 6.0
    i = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    p = np.full_like(f, v * (1 - s))
    q = v * (1 - s * f)
    t = v * (1 - s * (1 - f))
    vv = np.full_like(f, v)
    r = np.choose(i, [vv, q, p, p, t, vv])
    g = np.choose(i, [t, vv, vv, q, p, p])
    b = np.choose(i, [p, p, t, vv, vv, q])
    return np.stack([r, g, b], axis=-1)


_BOX_FACE_COLORS = {  # (local axis, sign) -> albedo
    (0, 1): (0.85, 0.20, 0.20),
    (0, -1): (0.20, 0.68, 0.30),
    (1, 1): (0.22, 0.36, 0.85),
    (1, -1): (0.92, 0.80, 0.20),
    (2, 1): (0.95, 0.95, 0.95),
    (2, -1): (0.35, 0.35, 0.35),
}


def _normals_and_albedo(obj: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward normals and albedo (sRGB in [0, 1]) of surface points ``p`` on objects ``obj``."""
    n = np.zeros_like(p)
    alb = np.zeros_like(p)

    m = obj == GROUND
    if m.any():
        q = p[m]
        n[m] = (0.0, 0.0, 1.0)
        checker = (np.floor(q[:, 0] / 0.3) + np.floor(q[:, 1] / 0.3)) % 2 == 0
        c = np.where(checker[:, None], np.array([0.80, 0.74, 0.62]), np.array([0.45, 0.53, 0.65]))
        r = np.hypot(q[:, 0], q[:, 1])
        c[(r > 1.20) & (r < 1.34)] = (0.78, 0.36, 0.24)
        c[r > 1.44] = (0.25, 0.25, 0.28)
        alb[m] = c

    m = obj == SPHERE
    if m.any():
        q = (p[m] - SPHERE_CENTER) / SPHERE_RADIUS
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        n[m] = q
        lon = np.arctan2(q[:, 1], q[:, 0])
        lat = np.arcsin(np.clip(q[:, 2], -1.0, 1.0))
        c = _hsv(lon / (2 * math.pi), 0.65, 0.95)
        band = np.floor((lat + math.pi / 2) / (math.pi / 6)).astype(np.int64)
        c[band % 2 == 1] *= 0.55
        alb[m] = c

    m = obj == BOX
    if m.any():
        ql = (p[m] - BOX_CENTER) @ _BOX_R
        rel = np.abs(ql) / BOX_HALF
        axis = np.argmax(rel, axis=1)
        sign = np.sign(np.take_along_axis(ql, axis[:, None], 1)[:, 0]).astype(np.int64)
        sign[sign == 0] = 1
        nl = np.zeros_like(ql)
        nl[np.arange(len(ql)), axis] = sign
        n[m] = nl @ _BOX_R.T
        c = np.zeros_like(ql)
        for (ax, sg), col in _BOX_FACE_COLORS.items():
            c[(axis == ax) & (sign == sg)] = col
        # dark border on every face: distance to the face's edges, in world units
        edge = np.full(len(ql), np.inf)
        for k in range(3):
            on_other_axis = axis != k
            edge = np.where(on_other_axis, np.minimum(edge, BOX_HALF[k] - np.abs(ql[:, k])), edge)
        c[edge < 0.05] *= 0.45
        top = (axis == 2) & (sign == 1)
        dot = top & (ql[:, 0] ** 2 + ql[:, 1] ** 2 < 0.12**2)
        c[dot] = (0.18, 0.18, 0.24)
        alb[m] = c

    m = obj == CYLINDER
    if m.any():
        q = p[m]
        x = q[:, 0] - CYL_AXIS_XY[0]
        y = q[:, 1] - CYL_AXIS_XY[1]
        rad = np.hypot(x, y)
        cap_top = q[:, 2] >= CYL_HEIGHT - 1e-9
        cap_bot = q[:, 2] <= 1e-9
        side = ~(cap_top | cap_bot)
        nn = np.zeros_like(q)
        nn[:, 0] = np.where(side, x / np.maximum(rad, 1e-12), 0.0)
        nn[:, 1] = np.where(side, y / np.maximum(rad, 1e-12), 0.0)
        nn[:, 2] = np.where(side, 0.0, np.where(cap_top, 1.0, -1.0))
        n[m] = nn
        theta = np.arctan2(y, x)
        stripe = np.floor((theta + math.pi) / (2 * math.pi) * 6).astype(np.int64) % 2 == 0
        c = np.where(stripe[:, None], np.array([0.55, 0.30, 0.72]), np.array([0.95, 0.90, 0.75]))
        c[~side & cap_top] = (0.95, 0.55, 0.15)
        c[~side & ~cap_top] = (0.35, 0.35, 0.35)
        alb[m] = c
    return n, alb


def _shade(p: np.ndarray, n: np.ndarray, albedo: np.ndarray) -> np.ndarray:
    """Diffuse, view-independent: albedo * (ambient + sky * n_z + key light with soft shadows)."""
    origin = p + 1e-6 * n
    diffuse = np.zeros(len(p))
    for L in _LIGHTS:
        cos = n @ L
        lit = cos > 0
        vis = np.zeros(len(p))
        if lit.any():
            vis[lit] = ~_occluded(origin[lit], np.broadcast_to(L, (int(lit.sum()), 3)))
        diffuse += np.maximum(cos, 0.0) * vis
    diffuse /= len(_LIGHTS)
    light = _AMBIENT + _SKY * n[:, 2] + _DIFFUSE * diffuse
    return np.clip(albedo * light[:, None], 0.0, 1.0)


# --- the ground truth object --------------------------------------------------------------------
@dataclass(frozen=True)
class DemoGroundTruth:
    """Exact geometry and renderer of the demo scene (independent of image size and seed)."""

    bounds: np.ndarray  # (2, 3): min corner, max corner of all geometry
    background: tuple[float, float, float]
    look_at: np.ndarray  # (3,) the point every demo camera looks at

    # rays ------------------------------------------------------------------------------------
    def intersect(self, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First hit along rays ``origins + t * directions`` (t > 0, directions need not be unit).

        Returns ``(t [N], object id [N])`` with ``t = inf`` and id ``-1`` where the ray misses.
        Ids: 0 ground, 1 sphere, 2 box, 3 cylinder (:data:`OBJECT_NAMES`)."""
        d = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
        o = np.broadcast_to(np.asarray(origins, dtype=np.float64).reshape(-1, 3), d.shape)
        ts = np.stack([_t_disc(o, d), _t_sphere(o, d), _t_box_culled(o, d), _t_cylinder_culled(o, d)], axis=1)
        obj = np.argmin(ts, axis=1)
        t = ts[np.arange(len(d)), obj]
        return t, np.where(np.isfinite(t), obj, _MISS)

    def shade_rays(self, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Colour (float [N, 3], background where missed) and ray parameter t [N] of rays."""
        d = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
        o = np.broadcast_to(np.asarray(origins, dtype=np.float64).reshape(-1, 3), d.shape)
        t, obj = self.intersect(o, d)
        rgb = np.empty((len(d), 3))
        rgb[:] = self.background
        hit = obj != _MISS
        if hit.any():
            p = o[hit] + t[hit, None] * d[hit]
            n, alb = _normals_and_albedo(obj[hit], p)
            rgb[hit] = _shade(p, n, alb)
        return rgb, t

    # cameras ---------------------------------------------------------------------------------
    @staticmethod
    def _camera_rays(camera: Camera, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World origin (1, 3) and directions [N, 3] scaled so that their camera-z component is 1
        (the ray parameter t is then the OpenCV z-depth)."""
        xy = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy], axis=-1)
        if camera.distortion is not None:
            xy = camera.distortion.undistort(xy)
        R = camera.c2w[:3, :3]
        d = xy[:, 0:1] * R[:, 0] + xy[:, 1:2] * R[:, 1] + R[:, 2]
        return camera.c2w[None, :3, 3], d

    def depth(self, camera: Camera) -> np.ndarray:
        """z-depth (OpenCV camera z) of the ray through each pixel centre, float32 (h, w); 0 = miss."""
        w, h = camera.width, camera.height
        v, u = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
        o, d = self._camera_rays(camera, u.ravel(), v.ravel())
        t, _ = self.intersect(o, d)
        return np.where(np.isfinite(t), t, 0.0).reshape(h, w).astype(np.float32)

    def render(self, camera: Camera, supersample: int = DEFAULT_SUPERSAMPLE) -> np.ndarray:
        """RGB float32 (h, w, 3) in [0, 1]: the mean of ``supersample**2`` rays per pixel on a regular
        sub-pixel grid (offsets ``(k + 0.5) / supersample``)."""
        s = int(supersample)
        if s < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        w, h = camera.width, camera.height
        v, u = (np.mgrid[0 : h * s, 0 : w * s].astype(np.float64) + 0.5) / s
        o, d = self._camera_rays(camera, u.ravel(), v.ravel())
        rgb, _ = self.shade_rays(o, d)
        img = rgb.reshape(h, s, w, s, 3).mean(axis=(1, 3))
        return img.astype(np.float32)

    # surfaces --------------------------------------------------------------------------------
    def surface_areas(self) -> dict[str, float]:
        """Areas of the parts :meth:`sample_surface` draws from (hidden contact faces excluded)."""
        hx, hy, hz = BOX_HALF
        return {
            "ground": math.pi * GROUND_RADIUS**2 - 4 * hx * hy - math.pi * CYL_RADIUS**2,
            "sphere": 4 * math.pi * SPHERE_RADIUS**2,
            "box_sides": 2 * (2 * hx * 2 * hz) + 2 * (2 * hy * 2 * hz),
            "box_top": 4 * hx * hy,
            "cylinder_side": 2 * math.pi * CYL_RADIUS * CYL_HEIGHT,
            "cylinder_top": math.pi * CYL_RADIUS**2,
        }

    def sample_surface(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` points uniformly (by area) on the scene's true surfaces, with unit outward normals.

        Surfaces that touch the ground (box and cylinder bottoms, the ground under them) are left
        out: no camera can see them. Returns ``(points [n, 3], normals [n, 3])``, float64."""
        rng = np.random.default_rng(seed)
        areas = self.surface_areas()
        names = list(areas)
        counts = dict(zip(names, rng.multinomial(int(n), np.array(list(areas.values())) / sum(areas.values()))))
        pts, nrm = [], []

        def add(p: np.ndarray, q: np.ndarray) -> None:
            pts.append(p)
            nrm.append(np.broadcast_to(q, p.shape))

        # ground disc minus the box and cylinder footprints (rejection sampling)
        k = counts["ground"]
        got: list[np.ndarray] = []
        have = 0
        while have < k:
            m = 2 * (k - have) + 16
            r = GROUND_RADIUS * np.sqrt(rng.random(m))
            a = rng.random(m) * 2 * math.pi
            p = np.stack([r * np.cos(a), r * np.sin(a), np.zeros(m)], axis=1)
            inside_box = np.all(np.abs(((p - BOX_CENTER) @ _BOX_R)[:, :2]) < BOX_HALF[:2], axis=1)
            inside_cyl = np.hypot(p[:, 0] - CYL_AXIS_XY[0], p[:, 1] - CYL_AXIS_XY[1]) < CYL_RADIUS
            p = p[~inside_box & ~inside_cyl]
            got.append(p)
            have += len(p)
        add(np.concatenate(got)[:k] if k else np.zeros((0, 3)), np.array([0.0, 0.0, 1.0]))

        # sphere
        q = rng.normal(size=(counts["sphere"], 3))
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        add(SPHERE_CENTER + SPHERE_RADIUS * q, q)

        # box: four sides (by area) and the top, in the box frame, then rotated
        hx, hy, hz = BOX_HALF
        k = counts["box_sides"]
        face = rng.integers(0, 4, size=k)  # the four sides have equal area here (hx == hy) ...
        if not math.isclose(hx, hy):  # ... else pick them by area
            w = np.array([hy, hy, hx, hx])
            face = rng.choice(4, size=k, p=w / w.sum())
        s = rng.uniform(-1, 1, size=(k, 2))
        ql = np.zeros((k, 3))
        nl = np.zeros((k, 3))
        for f, (ax, sg) in enumerate([(0, 1), (0, -1), (1, 1), (1, -1)]):
            m = face == f
            other = 1 - ax
            ql[m, ax] = sg * BOX_HALF[ax]
            ql[m, other] = s[m, 0] * BOX_HALF[other]
            ql[m, 2] = s[m, 1] * hz
            nl[m, ax] = sg
        add(BOX_CENTER + ql @ _BOX_R.T, nl @ _BOX_R.T)
        k = counts["box_top"]
        ql = np.stack([rng.uniform(-hx, hx, k), rng.uniform(-hy, hy, k), np.full(k, hz)], axis=1)
        add(BOX_CENTER + ql @ _BOX_R.T, _BOX_R[:, 2])

        # cylinder side and top cap
        k = counts["cylinder_side"]
        a = rng.random(k) * 2 * math.pi
        radial = np.stack([np.cos(a), np.sin(a), np.zeros(k)], axis=1)
        base = np.array([CYL_AXIS_XY[0], CYL_AXIS_XY[1], 0.0])
        p = base + CYL_RADIUS * radial
        p[:, 2] = rng.random(k) * CYL_HEIGHT
        add(p, radial)
        k = counts["cylinder_top"]
        r = CYL_RADIUS * np.sqrt(rng.random(k))
        a = rng.random(k) * 2 * math.pi
        p = np.stack([CYL_AXIS_XY[0] + r * np.cos(a), CYL_AXIS_XY[1] + r * np.sin(a), np.full(k, CYL_HEIGHT)], axis=1)
        add(p, np.array([0.0, 0.0, 1.0]))

        points = np.concatenate(pts)
        normals = np.ascontiguousarray(np.concatenate(nrm))
        order = rng.permutation(len(points))  # mix the parts so any prefix is a fair subsample
        return points[order], normals[order]


@functools.lru_cache(maxsize=1)
def demo_ground_truth() -> DemoGroundTruth:
    """The demo scene's exact geometry: ``sample_surface``, ``bounds``, ``depth(camera)``, ``render(camera)``."""
    bounds, look_at = BOUNDS.copy(), np.array(LOOK_AT)
    bounds.flags.writeable = look_at.flags.writeable = False  # shared instance: read-only
    return DemoGroundTruth(bounds=bounds, background=BACKGROUND, look_at=look_at)


# --- cameras ------------------------------------------------------------------------------------
def demo_cameras(
    *, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT, n_views: int = DEFAULT_VIEWS, seed: int = 0
) -> list[Camera]:
    """The demo's cameras (OpenCV), named ``r_000`` ... in ring-then-azimuth order."""
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    fx = 0.5 * width / math.tan(math.radians(HFOV_DEG) / 2)
    fy = fx  # square pixels
    rng = np.random.default_rng(seed)
    rings = [n_views] if n_views < 8 else [n_views - n_views // 2, n_views // 2]
    target = np.array(LOOK_AT)
    cams: list[Camera] = []
    for ring, count in enumerate(rings):
        for j in range(count):
            az = 2 * math.pi * (j + 0.5 * ring) / count + math.radians(rng.uniform(-3.0, 3.0))
            el = math.radians(RING_ELEVATIONS_DEG[ring] + rng.uniform(-2.0, 2.0))
            dist = RING_DISTANCES[ring] * (1.0 + rng.uniform(-0.03, 0.03))
            eye = target + dist * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
            name = f"r_{len(cams):03d}"
            cams.append(
                Camera(name=name, width=width, height=height, fx=fx, fy=fy, cx=width / 2, cy=height / 2,
                       c2w=look_at_c2w(eye, target))
            )
    return cams


# --- writing the scene --------------------------------------------------------------------------
def _demo_block(seed: int, supersample: int) -> dict:
    return {
        "version": VERSION,
        "background": list(BACKGROUND),
        "bounds": BOUNDS.tolist(),
        "seed": int(seed),
        "look_at": list(LOOK_AT),
        "up": list(UP),
        "supersample": int(supersample),
        "depth": "depth/<name>.npy: float32 (h, w) OpenCV z-depth of the pixel-centre ray, 0 = background",
    }


def _write_scene(root: Path, width: int, height: int, n_views: int, seed: int, supersample: int) -> None:
    from PIL import Image

    gt = demo_ground_truth()
    cams = demo_cameras(width=width, height=height, n_views=n_views, seed=seed)
    (root / "images").mkdir(parents=True)
    (root / "depth").mkdir()
    frames = []
    for cam in cams:
        rgb = gt.render(cam, supersample)
        img = np.clip(np.round(rgb.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"{cam.name}.png")
        np.save(root / "depth" / f"{cam.name}.npy", gt.depth(cam))
        frames.append(
            {
                "file_path": f"images/{cam.name}.png",
                "depth_file_path": f"depth/{cam.name}.npy",
                "transform_matrix": (cam.c2w @ GL_TO_CV).tolist(),  # OpenCV -> OpenGL axes
            }
        )
    c = cams[0]
    meta = {
        "camera_model": "OPENCV",  # pinhole: no distortion coefficients
        "fl_x": c.fx,
        "fl_y": c.fy,
        "cx": c.cx,
        "cy": c.cy,
        "w": c.width,
        "h": c.height,
        "camera_angle_x": 2 * math.atan(c.width / (2 * c.fx)),
        "recon_demo": _demo_block(seed, supersample),
        "frames": frames,
    }
    (root / "transforms.json").write_text(json.dumps(meta, indent=2) + "\n")


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")) + [root]:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _render_to_temp(parent: Path, name: str, **kw) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent))
    try:
        _write_scene(tmp / "scene", **kw)
        _fsync_tree(tmp / "scene")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def make_demo_scene(
    out_dir: str | Path,
    *,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    n_views: int = DEFAULT_VIEWS,
    seed: int = 0,
    supersample: int = DEFAULT_SUPERSAMPLE,
) -> Path:
    """Render the demo scene into ``out_dir`` (a transforms.json folder) and return ``out_dir``.

    Atomic: everything is rendered into a hidden folder beside ``out_dir`` and renamed into place, so
    a killed run leaves either no scene or a complete one. An existing ``out_dir`` is replaced."""
    out_dir = Path(out_dir)
    kw = dict(width=int(width), height=int(height), n_views=int(n_views), seed=int(seed), supersample=int(supersample))
    tmp = _render_to_temp(out_dir.parent, out_dir.name, **kw)
    try:
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        if out_dir.exists() or out_dir.is_symlink():
            old = tmp / "old"
            os.replace(out_dir, old)
        os.replace(tmp / "scene", out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _is_complete(path: Path) -> bool:
    try:
        meta = json.loads((path / "transforms.json").read_text())
        return meta["recon_demo"]["version"] == VERSION
    except (OSError, ValueError, KeyError, TypeError):
        return False


def demo_scene_path(
    width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT, *, n_views: int = DEFAULT_VIEWS, seed: int = 0
) -> Path:
    """The demo scene folder ``cache_root()/demo/v{VERSION}-{w}x{h}``, rendered on first use.

    Non-default ``n_views`` / ``seed`` get their own folder (``...-n{n}-s{seed}``). Safe when several
    processes ask at once: each renders into its own temp folder and the first rename wins."""
    key = f"v{VERSION}-{int(width)}x{int(height)}"
    if n_views != DEFAULT_VIEWS or seed != 0:
        key += f"-n{int(n_views)}-s{int(seed)}"
    path = cache_root() / "demo" / key
    if _is_complete(path):
        return path

    from rich.console import Console

    console = Console(stderr=True)
    start = time.perf_counter()
    with console.status(f"Rendering the demo scene ({n_views} views, {width}x{height}) into {path} ..."):
        tmp = _render_to_temp(
            path.parent, key, width=int(width), height=int(height), n_views=int(n_views), seed=int(seed),
            supersample=DEFAULT_SUPERSAMPLE,
        )
        try:
            if path.exists() and not _is_complete(path):  # a stale or foreign folder: move it aside
                with contextlib.suppress(OSError):
                    os.replace(path, tmp / "old")
            try:
                os.rename(tmp / "scene", path)
            except OSError:
                if not _is_complete(path):  # someone else's complete copy wins; anything else is an error
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    console.print(f"demo scene: {n_views} views {width}x{height} in {time.perf_counter() - start:.1f} s -> {path}")
    return path


if __name__ == "__main__":  # python -m recon.datasets.demo [OUT_DIR]
    import sys

    if len(sys.argv) > 1:
        t0 = time.perf_counter()
        print(make_demo_scene(sys.argv[1]), f"({time.perf_counter() - t0:.2f} s)")
    else:
        print(demo_scene_path())
