"""An ordinary mesh renderer for checking exported meshes: CPU ray casting (open3d ``RaycastingScene``),
first hit per pixel, vertex colours interpolated with the hit's barycentric coordinates (perspective
correct, as any z-buffer rasterizer does), background where no face is hit. No splatting, no
transparency: what a game engine would show of an opaque, unlit, vertex-coloured mesh.

:func:`load_glb_mesh` reads a GLB written by :func:`recon.export.gltf.write_mesh_glb` back into recon world
coordinates (trimesh; the inverse of the ``world_to_gltf`` matrix stated in ``asset.extras.recon``).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recon.errors import InputError
from recon.export.mesh import TriangleMesh

__all__ = ["render_mesh", "load_glb_mesh", "glb_psnr"]


def _open3d():
    try:
        import open3d as o3d
    except ImportError as exc:  # pragma: no cover - an install without open3d
        raise ImportError(f"the mesh renderer needs open3d (pip install open3d): {exc}") from exc
    return o3d


def render_mesh(mesh: TriangleMesh, camera: Any, background: Sequence[float] = (0.0, 0.0, 0.0), supersample: int = 1) -> np.ndarray:
    """Image [H, W, 3] float32 of ``mesh`` seen by ``camera`` (pinhole ``K``, world-to-camera ``w2c``,
    OpenCV axes, pixel ``(x, y)`` sampled at ``(x + 0.5, y + 0.5)``). ``supersample`` = s casts s x s rays
    per pixel on a regular grid and averages them (the SSAA an engine applies to hard mesh edges)."""
    o3d = _open3d()
    s = max(1, int(supersample))
    w, h = int(camera.width), int(camera.height)
    K = np.asarray(camera.K, dtype=np.float64)
    w2c = np.asarray(camera.w2c, dtype=np.float64)
    R, t = w2c[:3, :3], w2c[:3, 3]
    origin = -R.T @ t
    # sub-pixel centres (x + (i + 0.5) / s); the final reshape averages each s x s block
    xs, ys = np.meshgrid((np.arange(w * s) + 0.5) / s, (np.arange(h * s) + 0.5) / s)
    pix = np.stack([xs, ys, np.ones_like(xs)], -1).reshape(-1, 3)
    dirs = (pix @ np.linalg.inv(K).T) @ R  # camera rays -> world (R^T d, row form)
    rays = np.concatenate([np.broadcast_to(origin, dirs.shape), dirs], axis=1).astype(np.float32)
    scene = o3d.t.geometry.RaycastingScene()
    tm = o3d.t.geometry.TriangleMesh()
    tm.vertex.positions = o3d.core.Tensor(mesh.vertices.astype(np.float32))
    tm.triangle.indices = o3d.core.Tensor(mesh.faces.astype(np.uint32))
    scene.add_triangles(tm)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    ids = hit["primitive_ids"].numpy().astype(np.int64)
    uv = hit["primitive_uvs"].numpy().astype(np.float64)
    ok = np.isfinite(hit["t_hit"].numpy()) & (ids >= 0) & (ids < mesh.num_faces)
    img = np.tile(np.asarray(background, dtype=np.float32)[:3], (len(rays), 1))
    colors = mesh.vertex_colors[:, :3] if mesh.vertex_colors is not None else np.full((mesh.num_vertices, 3), 0.8, np.float32)
    f = mesh.faces[ids[ok]]
    u, v = uv[ok, 0:1], uv[ok, 1:2]  # point = (1 - u - v) V0 + u V1 + v V2
    img[ok] = ((1.0 - u - v) * colors[f[:, 0]] + u * colors[f[:, 1]] + v * colors[f[:, 2]]).astype(np.float32)
    img = np.clip(img.reshape(h, s, w, s, 3), 0.0, 1.0)
    return img.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def load_glb_mesh(path: str | Path) -> TriangleMesh:
    """A recon GLB back in recon world coordinates: positions, faces and COLOR_0 (via trimesh)."""
    import trimesh

    path = Path(path)
    data = path.read_bytes()
    if len(data) < 20 or data[:4] != b"glTF":
        raise InputError(path, "not a GLB file")
    (json_len,) = struct.unpack_from("<I", data, 12)
    doc = json.loads(data[20 : 20 + json_len])
    recon_extras = doc.get("asset", {}).get("extras", {}).get("recon", {})
    m = np.asarray(recon_extras.get("world_to_gltf", np.eye(4)), dtype=np.float64)
    loaded = trimesh.load(path, force="mesh", process=False)
    verts = np.asarray(loaded.vertices, dtype=np.float64)
    world = (verts - m[:3, 3]) @ np.linalg.inv(m[:3, :3]).T
    colors = _color0(doc, data)  # trimesh drops COLOR_0 when the primitive has a material: read it directly
    if colors is not None and len(colors) != len(verts):
        colors = None
    return TriangleMesh(vertices=world.astype(np.float32), faces=np.asarray(loaded.faces, dtype=np.int32), vertex_colors=colors)


def _color0(doc: dict, data: bytes) -> np.ndarray | None:
    """COLOR_0 of the first primitive as float32 [V, 3] (float, or normalised unsigned byte/short)."""
    from recon.export.gltf import read_glb

    _, binary = read_glb(data)
    try:
        acc = doc["accessors"][doc["meshes"][0]["primitives"][0]["attributes"]["COLOR_0"]]
    except (KeyError, IndexError):
        return None
    view = doc["bufferViews"][acc["bufferView"]]
    comps = {"VEC3": 3, "VEC4": 4}[acc["type"]]
    dtype = {5126: np.float32, 5121: np.uint8, 5123: np.uint16}[acc["componentType"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    arr = np.frombuffer(binary, dtype=dtype, count=acc["count"] * comps, offset=start).reshape(-1, comps)
    arr = arr.astype(np.float32)
    if dtype is not np.float32:
        arr /= float(np.iinfo(dtype).max)
    return arr[:, :3]


def glb_psnr(path: str | Path, views: Sequence[Any], background: Sequence[float] = (0.0, 0.0, 0.0), supersample: int = 1) -> dict[str, Any]:
    """Render the GLB from each view's camera and compare with its image (inside the view's mask, when
    it has one, as the splat evaluation does): ``{"psnr", "per_view", "faces"}``."""
    mesh = load_glb_mesh(path)
    import torch

    from recon.eval.metrics import psnr

    def as64(x: Any) -> torch.Tensor:
        return torch.as_tensor(x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x), dtype=torch.float64)

    values = []
    for view in views:
        img = torch.from_numpy(render_mesh(mesh, view.camera, background, supersample=supersample).astype(np.float64))
        mask = getattr(view, "mask", None)
        values.append(float(psnr(img, as64(view.image), None if mask is None else as64(mask))))
    return {"psnr": float(np.mean(values)), "per_view": values, "faces": int(mesh.num_faces)}
