"""A multi-view dataset rendered from a triangle mesh, with the mesh as exact ground truth.

``render_mesh_dataset(mesh_path, out_dir)`` writes a nerf-style ``transforms.json`` folder that recon's
NeRF loader reads, so a surface method can be trained on it and its extracted mesh compared against the
true surface (``recon.eval.geometry.evaluate_mesh`` with :func:`ground_truth_mesh_path`):

- the mesh is normalised: bounding-box centre to the origin, scaled so its farthest vertex is at radius
  1 (the dataset's world frame; the source frame is ``x_src = x / scale + center``);
- cameras (pinhole, square pixels) on a sphere of radius ``distance`` around the origin, Fibonacci-spread
  directions with latitude limited to +-``max_latitude_deg`` about the ``up`` axis, looking at the
  origin; every 8th view is the held-out split (``SceneData.split``);
- pixels by our own CPU rasteriser: exact pixel-sample rays against the triangles (screen-space
  barycentrics with perspective-correct depth), ``supersample`` x ``supersample`` samples per pixel
  (odd, so the pixel-centre ray is one of them);
- shading: Lambertian, albedo a smooth procedural colour field of the position (texture for
  multi-view matching), one directional light plus ambient, smooth vertex normals, two-sided;
- on disk: ``images/r_000.png`` RGBA (straight alpha = coverage), ``masks/r_000.png`` (white where
  alpha >= 0.5), ``depth/r_000.npy`` float32 OpenCV z-depth of the pixel-centre ray (0 = background),
  ``gt_mesh.ply`` (the normalised mesh), and a ``recon_ground_truth`` block in transforms.json.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from recon.datasets.cameras import Camera, look_at_c2w
from recon.errors import InputError

OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])
GROUND_TRUTH_KEY = "recon_ground_truth"
VERSION = 1


@dataclass(frozen=True)
class SyntheticMeshConfig:
    width: int = 200
    height: int = 200
    n_views: int = 48
    fov_deg: float = 40.0
    """Horizontal field of view."""
    distance: float = 3.2
    """Camera distance from the origin (the object fits in the unit sphere)."""
    max_latitude_deg: float = 70.0
    up: tuple[float, float, float] = (0.0, 1.0, 0.0)
    """The world's up axis (the Stanford bunny's is +y)."""
    supersample: int = 3
    light_dir: tuple[float, float, float] = (0.4, 1.0, 0.6)
    """Direction towards the light (normalised on use)."""
    ambient: float = 0.3
    seed: int = 0


def load_mesh_arrays(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    from recon.eval.geometry import load_mesh

    return load_mesh(path)


def normalize_vertices(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(normalised vertices, center, scale): bounding-box centre to 0, farthest vertex at radius 1."""
    center = (vertices.min(0) + vertices.max(0)) / 2
    radius = float(np.linalg.norm(vertices - center, axis=1).max())
    if not radius > 0:
        raise ValueError("mesh has no extent")
    return (vertices - center) / radius, center, 1.0 / radius


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (unit; zero-area neighbourhoods give +z)."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 * area
    vn = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return np.where(norm > 0, vn / np.maximum(norm, 1e-30), np.array([0.0, 0.0, 1.0]))


def sphere_cameras(cfg: SyntheticMeshConfig) -> list[Camera]:
    """``n_views`` cameras on a sphere of radius ``distance`` looking at the origin."""
    up = np.asarray(cfg.up, dtype=np.float64)
    up /= np.linalg.norm(up)
    # an orthonormal frame around ``up`` for the azimuth
    a = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    e1 = np.cross(up, a)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    golden = math.pi * (3.0 - math.sqrt(5.0))
    rng = np.random.default_rng(cfg.seed)
    phase = rng.uniform(0, 2 * math.pi)
    s_max = math.sin(math.radians(cfg.max_latitude_deg))
    fx = 0.5 * cfg.width / math.tan(math.radians(cfg.fov_deg) / 2)
    cams = []
    for i in range(cfg.n_views):
        s = s_max * (1 - 2 * (i + 0.5) / cfg.n_views)  # sin(latitude), evenly spaced: equal-area bands
        c = math.sqrt(1 - s * s)
        az = phase + golden * i
        d = s * up + c * (math.cos(az) * e1 + math.sin(az) * e2)
        c2w = look_at_c2w(cfg.distance * d, np.zeros(3), up)
        cams.append(Camera(name=f"r_{i:03d}", width=cfg.width, height=cfg.height, fx=fx, fy=fx,
                           cx=cfg.width / 2, cy=cfg.height / 2, c2w=c2w))  # fmt: skip
    return cams


@dataclass
class Hits:
    """Per sample (super-resolution grid, row-major): nearest triangle (-1 = miss), z-depth,
    perspective-correct barycentrics."""

    face: np.ndarray  # [Hs*Ws] int64
    depth: np.ndarray  # [Hs*Ws] float64 (OpenCV z), 0 where missed
    bary: np.ndarray  # [Hs*Ws, 3]
    shape: tuple[int, int]


def rasterize(vertices: np.ndarray, faces: np.ndarray, camera: Camera, supersample: int = 1, near: float = 1e-4) -> Hits:
    """Cast the rays of the ``supersample``^2 sub-pixel samples of every pixel against the triangles.

    Sample (row r, col c) of the super-resolution grid sits at pixel coordinates ((c + 0.5) / ss,
    (r + 0.5) / ss) (top-left pixel covers [0, 1]^2). Exact: a sample is inside a triangle iff its
    ray crosses it, and the depth is the ray's z at the crossing (1/z interpolated in screen space).
    Triangles with a vertex behind ``near`` are skipped (cameras look at the object from outside)."""
    ss = int(supersample)
    W, H = camera.width * ss, camera.height * ss
    w2c = camera.w2c
    pc = vertices @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[:, 2]
    # vertex positions in super-grid units: sample (r, c) is at (c + 0.5, r + 0.5)
    u = (camera.fx * pc[:, 0] / np.where(z > near, z, 1.0) + camera.cx) * ss
    v = (camera.fy * pc[:, 1] / np.where(z > near, z, 1.0) + camera.cy) * ss
    tri_ok = (z[faces] > near).all(axis=1)
    fu, fv, fz = u[faces], v[faces], z[faces]  # [F, 3]
    area = (fu[:, 1] - fu[:, 0]) * (fv[:, 2] - fv[:, 0]) - (fu[:, 2] - fu[:, 0]) * (fv[:, 1] - fv[:, 0])
    c0 = np.ceil(fu.min(1) - 0.5).clip(0, W)
    c1 = np.floor(fu.max(1) - 0.5).clip(-1, W - 1)
    r0 = np.ceil(fv.min(1) - 0.5).clip(0, H)
    r1 = np.floor(fv.max(1) - 0.5).clip(-1, H - 1)
    bw, bh = (c1 - c0 + 1).astype(np.int64), (r1 - r0 + 1).astype(np.int64)
    live = tri_ok & (np.abs(area) > 1e-12) & (bw > 0) & (bh > 0)
    ids = np.nonzero(live)[0]
    size = np.maximum(bw[ids], bh[ids])
    pix_l, z_l, tri_l, bary_l = [], [], [], []
    # bucket triangles by bounding-box size so each bucket is one vectorised pass over k x k candidates
    edges = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 1 << 30]
    lo = 0
    for hi in edges:
        sel = ids[(size > lo) & (size <= hi)]
        lo = hi
        if len(sel) == 0:
            continue
        k = int(min(hi, size[np.isin(ids, sel)].max()))
        # process in chunks to bound memory (chunk * k * k candidates)
        chunk = max(1, 2_000_000 // (k * k))
        oc, orow = np.meshgrid(np.arange(k), np.arange(k), indexing="xy")
        oc, orow = oc.ravel(), orow.ravel()
        for s in range(0, len(sel), chunk):
            t = sel[s : s + chunk]
            col = c0[t, None].astype(np.int64) + oc[None]
            row = r0[t, None].astype(np.int64) + orow[None]
            inside_box = (col <= c1[t, None]) & (row <= r1[t, None])
            px, py = col + 0.5, row + 0.5
            ua, va = fu[t, 0:1], fv[t, 0:1]
            ub, vb = fu[t, 1:2], fv[t, 1:2]
            uc, vc = fu[t, 2:3], fv[t, 2:3]
            ar = area[t, None]
            l0 = ((ub - px) * (vc - py) - (uc - px) * (vb - py)) / ar
            l1 = ((uc - px) * (va - py) - (ua - px) * (vc - py)) / ar
            l2 = 1.0 - l0 - l1
            inside = inside_box & (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
            if not inside.any():
                continue
            tz = fz[t]
            inv = l0 / tz[:, 0:1] + l1 / tz[:, 1:2] + l2 / tz[:, 2:3]
            rr, cc = np.nonzero(inside)
            zz = 1.0 / inv[rr, cc]
            tri = t[rr]
            b = np.stack([l0[rr, cc] / tz[rr, 0], l1[rr, cc] / tz[rr, 1], l2[rr, cc] / tz[rr, 2]], axis=-1) * zz[:, None]
            pix_l.append(row[rr, cc] * W + col[rr, cc])
            z_l.append(zz)
            tri_l.append(tri)
            bary_l.append(b)
    face = np.full(H * W, -1, dtype=np.int64)
    depth = np.zeros(H * W)
    bary = np.zeros((H * W, 3))
    if pix_l:
        pix, zs, tri, b = np.concatenate(pix_l), np.concatenate(z_l), np.concatenate(tri_l), np.concatenate(bary_l)
        order = np.lexsort((zs, pix))  # by pixel, nearest first
        pix, zs, tri, b = pix[order], zs[order], tri[order], b[order]
        first = np.ones(len(pix), dtype=bool)
        first[1:] = pix[1:] != pix[:-1]
        face[pix[first]] = tri[first]
        depth[pix[first]] = zs[first]
        bary[pix[first]] = b[first]
    return Hits(face=face, depth=depth, bary=bary, shape=(H, W))


def albedo_field(p: np.ndarray) -> np.ndarray:
    """A smooth procedural colour of the (normalised) position: [N, 3] in 0.15..0.95."""
    f = 7.0
    r = 0.55 + 0.4 * np.sin(f * p[:, 0] + 1.0) * np.cos(0.5 * f * p[:, 2])
    g = 0.55 + 0.4 * np.sin(f * p[:, 1] + 2.0) * np.cos(0.5 * f * p[:, 0])
    b = 0.55 + 0.4 * np.sin(f * p[:, 2] + 3.0) * np.cos(0.5 * f * p[:, 1])
    return np.clip(np.stack([r, g, b], axis=-1), 0.0, 1.0)


def render_view(vertices, faces, normals, camera: Camera, cfg: SyntheticMeshConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb [H,W,3] straight colour, alpha [H,W] coverage, depth [H,W] z of the pixel-centre ray)."""
    ss = int(cfg.supersample)
    hits = rasterize(vertices, faces, camera, ss)
    Hs, Ws = hits.shape
    hit = hits.face >= 0
    col = np.zeros((Hs * Ws, 3))
    if hit.any():
        f = faces[hits.face[hit]]  # [n, 3]
        b = hits.bary[hit]
        p = (vertices[f] * b[..., None]).sum(1)
        n = (normals[f] * b[..., None]).sum(1)
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        view = camera.center[None] - p
        n = np.where(((n * view).sum(1) < 0)[:, None], -n, n)  # two-sided: face the camera
        light = np.asarray(cfg.light_dir, dtype=np.float64)
        light /= np.linalg.norm(light)
        shade = cfg.ambient + (1 - cfg.ambient) * np.clip(n @ light, 0, None)
        col[hit] = albedo_field(p) * shade[:, None]
    h, w = camera.height, camera.width
    premult = (col * hit[:, None]).reshape(h, ss, w, ss, 3).mean(axis=(1, 3))
    alpha = hit.reshape(h, ss, w, ss).mean(axis=(1, 3))
    rgb = np.where(alpha[..., None] > 0, premult / np.maximum(alpha[..., None], 1e-12), 0.0)
    c = ss // 2
    depth = hits.depth.reshape(h, ss, w, ss)[:, c, :, c]
    return np.clip(rgb, 0, 1), alpha, depth


def render_mesh_dataset(mesh_path: str | Path, out_dir: str | Path, cfg: SyntheticMeshConfig | None = None,
                        *, progress: bool = False) -> Path:  # fmt: skip
    """Render ``mesh_path`` into the dataset folder ``out_dir`` (see the module docstring); atomic: a
    hidden folder beside ``out_dir`` is renamed into place, replacing an existing ``out_dir``."""
    cfg = cfg or SyntheticMeshConfig()
    if cfg.supersample < 1 or cfg.supersample % 2 == 0:
        raise ValueError(f"supersample must be odd (the pixel-centre ray is a sample), got {cfg.supersample}")
    mesh_path = Path(mesh_path)
    src_v, faces = load_mesh_arrays(mesh_path)
    try:
        verts, center, scale = normalize_vertices(src_v)
    except ValueError as exc:
        raise InputError(mesh_path, str(exc)) from exc
    normals = vertex_normals(verts, faces)
    cams = sphere_cameras(cfg)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        root = tmp / "scene"
        for sub in ("images", "masks", "depth"):
            (root / sub).mkdir(parents=True)
        _write_views(root, verts, faces, normals, cams, cfg, progress)
        import trimesh

        trimesh.Trimesh(verts, faces, process=False).export(root / "gt_mesh.ply")
        c = cams[0]
        meta = {
            "camera_model": "OPENCV",
            "fl_x": c.fx, "fl_y": c.fy, "cx": c.cx, "cy": c.cy, "w": c.width, "h": c.height,
            "aabb": [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]],
            GROUND_TRUTH_KEY: {
                "version": VERSION,
                "mesh": "gt_mesh.ply",
                "source_mesh": str(mesh_path.resolve()),
                "source_from_world": {"center": center.tolist(), "scale": scale,
                                      "formula": "x_source = x_world / scale + center"},  # fmt: skip
                "render": asdict(cfg),
                "depth": "depth/<name>.npy: float32 (h, w) OpenCV z-depth of the pixel-centre ray, 0 = background",
                "images": "RGBA, straight alpha = pixel coverage; masks/<name>.png white where alpha >= 0.5",
            },
            "frames": [
                {"file_path": f"images/{cam.name}.png", "mask_path": f"masks/{cam.name}.png",
                 "depth_file_path": f"depth/{cam.name}.npy", "transform_matrix": (cam.c2w @ OPENCV_TO_OPENGL).tolist()}
                for cam in cams
            ],
        }  # fmt: skip
        (root / "transforms.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        if out_dir.exists() or out_dir.is_symlink():
            os.replace(out_dir, tmp / "old")
        os.replace(root, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _write_views(root: Path, verts, faces, normals, cams: list[Camera], cfg: SyntheticMeshConfig, progress: bool) -> None:
    from PIL import Image

    it = cams
    if progress:
        from rich.progress import track

        it = track(cams, description="rendering views")
    for cam in it:
        rgb, alpha, depth = render_view(verts, faces, normals, cam, cfg)
        rgba = np.concatenate([rgb, alpha[..., None]], axis=-1)
        Image.fromarray(np.clip(np.round(rgba * 255), 0, 255).astype(np.uint8), mode="RGBA").save(root / "images" / f"{cam.name}.png")
        Image.fromarray(((alpha >= 0.5) * 255).astype(np.uint8)).save(root / "masks" / f"{cam.name}.png")
        np.save(root / "depth" / f"{cam.name}.npy", depth.astype(np.float32))


def ground_truth_mesh_path(scene) -> Path | None:
    """The ground-truth mesh of a dataset written by :func:`render_mesh_dataset` (a ``SceneData`` from
    the NeRF loader, or the dataset folder), in the dataset's world frame; None for other datasets."""
    from recon.datasets.scene import SceneData

    if isinstance(scene, SceneData):
        json_path = scene.extras.get("transforms_path")
        if json_path is None:
            return None
    else:
        p = Path(scene)
        json_path = p / "transforms.json" if p.is_dir() else p
    try:
        meta = json.loads(Path(json_path).read_text())
    except (OSError, ValueError):
        return None
    block = meta.get(GROUND_TRUTH_KEY) if isinstance(meta, dict) else None
    if not isinstance(block, dict) or "mesh" not in block:
        return None
    path = Path(json_path).parent / str(block["mesh"])
    if not path.is_file():
        raise InputError(json_path, f"{GROUND_TRUTH_KEY}.mesh {block['mesh']!r} not found")
    return path
