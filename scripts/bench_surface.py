"""Benchmark of the ``surface`` method: time to a clean mesh, Chamfer, normal consistency, held-out PSNR.

Usage::

    python scripts/bench_surface.py bunny --out OUT [--steps N] [extra recon-train options...]
    python scripts/bench_surface.py data:<path> --out OUT [...]      # any recon dataset (DTU, LLFF, ...)

``bunny``: renders a multi-view dataset of ``$RECON_DATA/meshes/bunny.obj`` (ray casting on the
device; Lambert shading with a position-dependent albedo, white background, alpha = coverage),
trains ``recon-train --method surface`` on it and compares the exported mesh with the scan
(Chamfer as % of the scan's bounding-box diagonal; NeuS2's anchor is ~5 min per DTU scene on an
RTX 3090, the goal here is <= 2 min on an H100 at Chamfer <= 0.5 %). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    verts, faces = [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            verts.append([float(x) for x in parts[1:4]])
        elif parts[0] == "f":
            idx = [int(p.split("/")[0]) for p in parts[1:]]
            for k in range(1, len(idx) - 1):
                faces.append([idx[0], idx[k], idx[k + 1]])
    f = np.asarray(faces, dtype=np.int64)
    f = np.where(f > 0, f - 1, f + len(verts))
    return np.asarray(verts, dtype=np.float64), f


def cast(origins: torch.Tensor, dirs: torch.Tensor, tri: torch.Tensor, chunk: int = 2048):
    """Nearest ray/triangle hit (Moller-Trumbore): t [R] (inf = miss), face index [R]."""
    v0, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    ts, ids = [], []
    for o, d in zip(origins.split(chunk), dirs.split(chunk)):
        p = torch.cross(d[:, None, :].expand(-1, len(tri), -1), e2[None].expand(len(d), -1, -1), dim=-1)
        det = (e1[None] * p).sum(-1)
        inv = 1.0 / torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        s = o[:, None, :] - v0[None]
        u = (s * p).sum(-1) * inv
        q = torch.cross(s, e1[None].expand_as(s), dim=-1)
        v = (d[:, None, :] * q).sum(-1) * inv
        t = (e2[None] * q).sum(-1) * inv
        ok = (det.abs() > 1e-12) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-6)
        t = torch.where(ok, t, torch.full_like(t, float("inf")))
        tmin, idx = t.min(-1)
        ts.append(tmin)
        ids.append(idx)
    return torch.cat(ts), torch.cat(ids)


def make_bunny_dataset(obj: Path, out: Path, *, n_views: int = 64, size: int = 256, device: str = "cuda") -> dict:
    from PIL import Image

    verts, faces = read_obj(obj)
    lo, hi = verts.min(0), verts.max(0)
    center = 0.5 * (lo + hi)
    radius = 0.5 * np.linalg.norm(hi - lo)
    tri = torch.tensor(verts[faces], dtype=torch.float32, device=device)
    fn = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    fn = fn / fn.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    fov = math.radians(40.0)
    f = 0.5 * size / math.tan(fov / 2)
    dist = radius / math.sin(fov / 2) * 1.1
    (out / "images").mkdir(parents=True, exist_ok=True)
    light = torch.tensor([0.3, 0.8, 0.5], device=device)
    light = light / light.norm()
    frames = []
    golden = math.pi * (3 - math.sqrt(5))
    for i in range(n_views):
        y = 1 - 2 * (i + 0.5) / n_views  # fibonacci sphere (scan is y-up)
        r = math.sqrt(1 - y * y)
        eye = center + dist * np.array([r * math.cos(golden * i), y, r * math.sin(golden * i)])
        z = center - eye
        z /= np.linalg.norm(z)
        up = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.95 else np.array([1.0, 0.0, 0.0])
        x = np.cross(z, up)
        x /= np.linalg.norm(x)
        yv = np.cross(z, x)
        c2w = np.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, yv, z, eye
        js, is_ = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
        d_cam = np.stack([(js - size / 2) / f, (is_ - size / 2) / f, np.ones_like(js)], -1).reshape(-1, 3)
        d = d_cam @ c2w[:3, :3].T
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        dt = torch.tensor(d, dtype=torch.float32, device=device)
        ot = torch.tensor(eye, dtype=torch.float32, device=device).expand_as(dt).contiguous()
        t, idx = cast(ot, dt, tri)
        hit = torch.isfinite(t)
        n = fn[idx]
        n = torch.where(((n * dt).sum(-1, keepdim=True) > 0), -n, n)
        p = ot + dt * torch.where(hit, t, torch.zeros_like(t))[:, None]
        q = (p - torch.tensor(center, dtype=torch.float32, device=device)) / float(radius)
        albedo = 0.55 + 0.35 * torch.stack([torch.sin(6 * q[:, 0]), torch.sin(6 * q[:, 1] + 2), torch.cos(6 * q[:, 2])], -1)
        shade = 0.35 + 0.65 * (n * light).sum(-1, keepdim=True).clamp_min(0)
        rgb = torch.where(hit[:, None], albedo * shade, torch.ones_like(albedo))
        rgba = torch.cat([rgb, hit[:, None].float()], -1).reshape(size, size, 4)
        img = (rgba.clamp(0, 1) * 255 + 0.5).byte().cpu().numpy()
        name = f"r_{i:03d}"
        Image.fromarray(img, "RGBA").save(out / "images" / f"{name}.png")
        frames.append({"file_path": f"images/{name}.png", "transform_matrix": (c2w @ GL_TO_CV).tolist()})
    meta = {"camera_model": "OPENCV", "fl_x": f, "fl_y": f, "cx": size / 2, "cy": size / 2, "w": size, "h": size,
            "aabb": [(center - 0.625 * (hi - lo).max()).tolist(), (center + 0.625 * (hi - lo).max()).tolist()],
            "frames": frames}
    (out / "transforms.json").write_text(json.dumps(meta))
    return {"center": center.tolist(), "radius": float(radius)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--name", default=None)
    args, extra = ap.parse_known_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    gt = None
    if args.data == "bunny":
        obj = Path(os.environ["RECON_DATA"]) / "meshes" / "bunny.obj"
        data_dir = out / "bunny_data"
        t0 = time.time()
        make_bunny_dataset(obj, data_dir)
        print(f"bunny dataset rendered in {time.time() - t0:.1f} s", flush=True)
        data = str(data_dir)
        gt = read_obj(obj)
    else:
        data = args.data.removeprefix("data:")
    name = args.name or Path(data).name
    run = out / f"run_{name}"
    cmd = [sys.executable, "-c", "from recon.cli.train import entrypoint; entrypoint()", "--data", data, "--method", "surface", "--steps", str(args.steps),
           "--output", str(run), "--fresh", "--no-progress", "--eval-every", str(args.steps), *extra]
    print(" ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - t0
    summary = json.loads((run / "summary.json").read_text())
    result = {"data": name, "steps": args.steps, "train_seconds": summary["train_seconds"], "wall_seconds": round(wall, 1),
              "eval": summary["eval"], "exports": summary["exports"]}
    if gt is not None:
        from recon.eval.geometry import evaluate_mesh

        mesh = read_mesh_ply(Path(summary["exports"]["ply"]))
        m = evaluate_mesh(mesh, gt, n_samples=200_000)
        result["geometry"] = m.to_dict()
    print("RESULT " + json.dumps(result), flush=True)
    (out / f"result_{name}.json").write_text(json.dumps(result, indent=2))


def read_mesh_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the binary PLY written by recon.surfaces.mesh_io (float xyz [+ uchar rgb], int faces)."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    nv = int(next(h for h in header if h.startswith("element vertex")).split()[-1])
    nf = int(next(h for h in header if h.startswith("element face")).split()[-1])
    has_rgb = any(h.endswith(" red") for h in header)
    vdt = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")] + ([("r", "u1"), ("g", "u1"), ("b", "u1")] if has_rgb else [])
    v = np.frombuffer(data, dtype=vdt, count=nv, offset=end)
    f = np.frombuffer(data, dtype=[("n", "u1"), ("i", "<i4", (3,))], count=nf, offset=end + v.nbytes)
    return np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float64), f["i"].astype(np.int64)


if __name__ == "__main__":
    main()
