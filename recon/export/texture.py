"""Bake a base-colour texture for a UV-unwrapped mesh from posed images.

1. Texel -> surface: each texel centre of the atlas is located in UV space (a ray cast against the
   UV triangles laid flat, open3d RaycastingScene), giving its face and barycentrics, hence its 3D
   point p and face normal n.
2. Visibility: every image's own depth map of the *mesh* (rays through the pixel centres) is
   compared with p's depth; p counts for a view when it projects inside the image, faces the camera
   (cos > ``min_cos``) and lies within ``depth_tolerance`` of the rendered depth. Faces seen from
   behind or lying outside the picture are culled per face first (:func:`faces_in_view`, exact), so
   the per-texel tests (float32 torch, all cores) run on the remaining texels only.
3. Blend: colours are sampled bilinearly and averaged with weights cos^2 / z^2 (frontal and close
   views see the surface at the finest resolution).
4. Fill: texels no view saw (and the gutter between charts) take the colour of the nearest baked
   texel, so mipmaps and bilinear filtering do not bleed background into the charts.

Texel (row i, column j) has UV ((j + 0.5) / W, (i + 0.5) / H), glTF's convention (v down).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from recon.export.mesh import TriangleMesh
from recon.export.tsdf import track


def texel_surface(mesh: TriangleMesh, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(face index [S, S] (-1 = no face), points [S, S, 3], unit face normals [S, S, 3]) per texel."""
    import open3d as o3d
    import open3d.core as o3c

    if mesh.uvs is None:
        raise ValueError("the mesh has no UVs (unwrap it first)")
    flat = np.concatenate([mesh.uvs, np.zeros((mesh.num_vertices, 1), np.float32)], axis=1)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3c.Tensor(flat.astype(np.float32)), o3c.Tensor(mesh.faces.astype(np.uint32)))
    jj, ii = np.meshgrid((np.arange(size) + 0.5) / size, (np.arange(size) + 0.5) / size)
    rays = np.zeros((size, size, 6), np.float32)
    rays[..., 0], rays[..., 1], rays[..., 2], rays[..., 5] = jj, ii, 1.0, -1.0
    hit = scene.cast_rays(o3c.Tensor(rays))
    face = hit["primitive_ids"].numpy().astype(np.int64)
    face[face == np.iinfo(np.uint32).max] = -1
    face[~np.isfinite(hit["t_hit"].numpy())] = -1
    bary = hit["primitive_uvs"].numpy()  # weights of the face's 2nd and 3rd vertex
    ok = face >= 0
    f = mesh.faces[np.where(ok, face, 0)]
    v = mesh.vertices.astype(np.float64)
    w1, w2 = bary[..., 0:1], bary[..., 1:2]
    points = v[f[..., 0]] * (1 - w1 - w2) + v[f[..., 1]] * w1 + v[f[..., 2]] * w2
    fn = mesh.face_normals()
    fn = fn / np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-30)
    normals = fn[np.where(ok, face, 0)]
    return face, points, normals


def mesh_depth(scene: Any, camera: Any) -> np.ndarray:
    """z-depth [H, W] of the mesh in ``camera`` (inf where no surface), pixel centres at +0.5."""
    import open3d.core as o3c

    h, w = int(camera.height), int(camera.width)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    c2w = np.asarray(camera.c2w, dtype=np.float64)
    d_cam = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones_like(u)], -1)
    d_world = d_cam @ c2w[:3, :3].T  # camera z component 1: t_hit is the z-depth
    rays = np.concatenate([np.broadcast_to(c2w[:3, 3], d_world.shape), d_world], -1).astype(np.float32)
    return scene.cast_rays(o3c.Tensor(rays))["t_hit"].numpy()


def faces_in_view(vertices: np.ndarray, faces: np.ndarray, unit_normals: np.ndarray, camera: Any) -> np.ndarray:
    """bool [F]: faces that may have a point seen by ``camera`` (image rectangle, in front of it) with
    their front side. Conservative, so the per-texel tests run only on these faces' texels:

    - facing: n . (c - p) is the same for every point p of a flat face, so its sign is exact;
    - frustum: "left of the image" (fx X + cx Z < 0 for camera coordinates X, Z > 0), and likewise for
      the other three sides, are half-spaces, so a face whose three corners lie in front of the
      camera and beyond one side lies beyond it entirely."""
    c2w = np.asarray(camera.c2w, dtype=np.float64)
    centre = c2w[:3, 3]
    v = vertices.astype(np.float64)
    facing = np.einsum("ij,ij->i", unit_normals, centre - v[faces[:, 0]]) > 0
    corners = ((v - centre) @ c2w[:3, :3])[faces]  # [F, 3 corners, xyz] in camera coordinates
    x, y, z = corners[..., 0], corners[..., 1], corners[..., 2]
    ahead = z > 1e-6
    left = camera.fx * x + camera.cx * z < 0
    right = camera.fx * x + (camera.cx - camera.width) * z >= 0
    above = camera.fy * y + camera.cy * z < 0
    below = camera.fy * y + (camera.cy - camera.height) * z >= 0
    outside = ahead.all(1) & (left.all(1) | right.all(1) | above.all(1) | below.all(1))
    return facing & ahead.any(1) & ~outside


def _bilinear(image: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sample [H, W, C] at continuous pixel coordinates (pixel centres at +0.5), clamped to the edge."""
    h, w = image.shape[:2]
    x = (x - 0.5).clamp(0, w - 1)
    y = (y - 0.5).clamp(0, h - 1)
    x0, y0 = x.floor().long(), y.floor().long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    flat = image.reshape(h * w, -1)  # index_select on rows is much faster than 2-D fancy indexing

    def at(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        return flat.index_select(0, row * w + col)

    top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
    return top * (1 - fy) + bottom * fy


def bake_texture(
    mesh: TriangleMesh,
    views: Sequence[tuple[Any, np.ndarray]],
    *,
    size: int = 2048,
    min_cos: float = 0.1,
    depth_tolerance: float | None = None,
    progress: Any = None,
) -> TriangleMesh:
    """``mesh`` (with UVs) plus a ``size`` x ``size`` texture baked from ``views`` = (camera, image
    [H, W, 3] float 0..1 display values) pairs. ``depth_tolerance`` defaults to twice the mean edge
    length of the mesh. Raises ValueError when no view sees any texel."""
    import open3d as o3d
    import open3d.core as o3c

    if size < 4:
        raise ValueError(f"texture size must be >= 4, got {size}")
    if not views:
        raise ValueError("need at least one view to bake a texture")
    face, points, normals = texel_surface(mesh, size)
    inside = face >= 0
    p, n, texel_face = points[inside], normals[inside], face[inside]
    unit_normals = mesh.face_normals()
    unit_normals /= np.maximum(np.linalg.norm(unit_normals, axis=1, keepdims=True), 1e-30)
    if depth_tolerance is None:
        e = mesh.vertices[mesh.faces[:, [1, 2, 0]]] - mesh.vertices[mesh.faces]
        depth_tolerance = 2.0 * float(np.linalg.norm(e, axis=-1).mean())
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3c.Tensor(mesh.vertices), o3c.Tensor(mesh.faces.astype(np.uint32)))
    # The per-texel work (millions of texels times every view) runs in float32 torch ops, which use
    # every core; the accumulators stay float64.
    points_t = torch.from_numpy(p.astype(np.float32))
    normals_t = torch.from_numpy(n.astype(np.float32))
    acc = torch.zeros((len(p), 3), dtype=torch.float64)
    wsum = torch.zeros(len(p), dtype=torch.float64)
    for camera, image in track(progress, views, "texture bake", len(views)):
        image_t = torch.from_numpy(np.ascontiguousarray(np.asarray(image, dtype=np.float32)[..., :3]))
        c2w = torch.from_numpy(np.asarray(camera.c2w, dtype=np.float32))
        # Most texels of a view lie on faces turned away or outside the picture: test per face
        # first (cheap, exact for those two), then per texel on the rest only.
        in_view = faces_in_view(mesh.vertices, mesh.faces, unit_normals, camera)[texel_face]
        candidates = torch.from_numpy(np.flatnonzero(in_view))
        to_cam = c2w[:3, 3] - points_t[candidates]
        pc = -(to_cam @ c2w[:3, :3])  # camera coordinates
        z = pc[:, 2]
        x = camera.fx * pc[:, 0] / z + camera.cx
        y = camera.fy * pc[:, 1] / z + camera.cy
        cos = (normals_t[candidates] * to_cam).sum(1) / to_cam.norm(dim=1).clamp_min(1e-12)
        ok = (z > 1e-6) & (x >= 0) & (x < camera.width) & (y >= 0) & (y < camera.height) & (cos > min_cos)
        local = ok.nonzero().squeeze(1)
        if not len(local):
            continue
        zbuf = torch.from_numpy(mesh_depth(scene, camera))
        col = x[local].long().clamp(0, camera.width - 1)
        row = y[local].long().clamp(0, camera.height - 1)
        local = local[(zbuf[row, col] - z[local]).abs() <= depth_tolerance]
        idx = candidates[local]
        w = (cos[local] ** 2 / z[local].clamp_min(1e-6) ** 2).double()
        acc.index_add_(0, idx, w[:, None] * _bilinear(image_t, x[local], y[local]).double())
        wsum.index_add_(0, idx, w)
    acc, wsum = acc.numpy(), wsum.numpy()
    seen = wsum > 0
    if not seen.any():
        raise ValueError("no view sees the mesh; cannot bake a texture")
    texture = np.zeros((size, size, 3), np.float64)
    baked = np.zeros((size, size), bool)
    rows, cols = np.nonzero(inside)
    texture[rows[seen], cols[seen]] = acc[seen] / wsum[seen, None]
    baked[rows[seen], cols[seen]] = True
    from scipy.ndimage import distance_transform_edt

    _, (ni, nj) = distance_transform_edt(~baked, return_indices=True)
    texture = texture[ni, nj]
    texture_u8 = np.round(np.clip(texture, 0.0, 1.0) * 255.0).astype(np.uint8)
    return mesh.replace(texture=texture_u8)
