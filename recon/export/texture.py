"""Bake a base-colour texture for a UV-unwrapped mesh from posed images.

1. Texel -> surface: each texel centre of the atlas is located in UV space (a ray cast against the
   UV triangles laid flat, open3d RaycastingScene), giving its face and barycentrics, hence its 3D
   point p and face normal n.
2. Visibility: every image's own depth map of the *mesh* (rays through the pixel centres) is
   compared with p's depth; p counts for a view when it projects inside the image, faces the camera
   (cos > ``min_cos``) and lies within ``depth_tolerance`` of the rendered depth.
3. Blend: colours are sampled bilinearly and averaged with weights cos^2 / z^2 (frontal and close
   views see the surface at the finest resolution).
4. Fill: texels no view saw (and the gutter between charts) take the colour of the nearest baked
   texel, so mipmaps and bilinear filtering do not bleed background into the charts.

Texel (row i, column j) has UV ((j + 0.5) / W, (i + 0.5) / H), glTF's convention (v down).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

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


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample [H, W, C] at continuous pixel coordinates (pixel centres at +0.5), clamped to the edge."""
    h, w = image.shape[:2]
    x = np.clip(x - 0.5, 0, w - 1)
    y = np.clip(y - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
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
    p, n = points[inside], normals[inside]
    if depth_tolerance is None:
        e = mesh.vertices[mesh.faces[:, [1, 2, 0]]] - mesh.vertices[mesh.faces]
        depth_tolerance = 2.0 * float(np.linalg.norm(e, axis=-1).mean())
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3c.Tensor(mesh.vertices), o3c.Tensor(mesh.faces.astype(np.uint32)))
    acc = np.zeros((len(p), 3))
    wsum = np.zeros(len(p))
    for camera, image in track(progress, views, "texture bake", len(views)):
        image = np.asarray(image, dtype=np.float32)[..., :3]
        c2w = np.asarray(camera.c2w, dtype=np.float64)
        pc = (p - c2w[:3, 3]) @ c2w[:3, :3]  # camera coordinates
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = camera.fx * pc[:, 0] / z + camera.cx
            y = camera.fy * pc[:, 1] / z + camera.cy
        to_cam = c2w[:3, 3] - p
        dist = np.linalg.norm(to_cam, axis=1)
        cos = np.einsum("ij,ij->i", n, to_cam) / np.maximum(dist, 1e-12)
        ok = (z > 1e-6) & (x >= 0) & (x < camera.width) & (y >= 0) & (y < camera.height) & (cos > min_cos)
        if not ok.any():
            continue
        zbuf = mesh_depth(scene, camera)
        idx = np.flatnonzero(ok)
        col = np.clip(x[idx].astype(np.int64), 0, camera.width - 1)
        row = np.clip(y[idx].astype(np.int64), 0, camera.height - 1)
        visible = np.abs(zbuf[row, col] - z[idx]) <= depth_tolerance
        idx = idx[visible]
        w = cos[idx] ** 2 / np.maximum(z[idx], 1e-6) ** 2
        acc[idx] += w[:, None] * _bilinear(image, x[idx], y[idx])
        wsum[idx] += w
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
