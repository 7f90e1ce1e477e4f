"""Meshes from any rendered scene by TSDF fusion of its depth maps (open3d, CPU).

For each training camera the scene renders colour, accumulated opacity and accumulated depth
(``render(camera, render_depth=True)``); expected depth = depth / alpha where alpha >= ``min_alpha``
(elsewhere the pixel is left out). The depth maps are fused into a truncated signed distance volume
(open3d ``VoxelBlockGrid``, sparse, CPU) and marching cubes extracts the zero level set with colours.

Defaults follow the usual recipe for fused splat depth (2DGS-style): ``depth_trunc`` = twice the
radius of the camera rig, voxel = ``depth_trunc / mesh_resolution``, truncation = 4 voxels.
Pixel convention: recon puts the top-left pixel's centre at (0.5, 0.5), open3d at (0, 0), so the
principal point is shifted by half a pixel for open3d.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from recon.export.mesh import TriangleMesh


@dataclass
class TsdfConfig:
    """TSDF fusion settings (world units)."""

    voxel_size: float | None = None
    """Voxel edge. Default: depth_trunc / mesh_resolution."""
    mesh_resolution: int = 512
    """Voxels across the depth range when voxel_size is not given."""
    sdf_trunc_voxels: float = 4.0
    """Truncation distance of the signed distance, in voxels."""
    depth_trunc: float | None = None
    """Depths beyond this are ignored. Default: twice the radius of the camera rig."""
    min_alpha: float = 0.5
    """Pixels whose accumulated opacity is below this carry no depth."""


@dataclass
class RenderedView:
    """What one camera sees of the scene: colour [H, W, 3] float 0..1 (display values, as the
    training images), z-depth [H, W] float (0 = no surface) and accumulated opacity [H, W]."""

    camera: Any
    color: np.ndarray
    depth: np.ndarray
    alpha: np.ndarray


def rig_radius(cameras: Sequence[Any]) -> float:
    """Radius of the camera centres around their mean, times 1.1 (the 3DGS 'cameras extent')."""
    centers = np.stack([np.asarray(c.c2w, dtype=np.float64)[:3, 3] for c in cameras])
    radius = float(np.linalg.norm(centers - centers.mean(0), axis=1).max())
    return max(radius, 1e-6) * 1.1


def resolve_tsdf_params(cameras: Sequence[Any], cfg: TsdfConfig) -> tuple[float, float, float]:
    """(voxel size, sdf truncation, depth truncation) with the defaults filled in from the cameras."""
    if cfg.mesh_resolution < 8:
        raise ValueError(f"mesh_resolution must be >= 8, got {cfg.mesh_resolution}")
    depth_trunc = float(cfg.depth_trunc) if cfg.depth_trunc is not None else 2.0 * rig_radius(cameras)
    voxel = float(cfg.voxel_size) if cfg.voxel_size is not None else depth_trunc / cfg.mesh_resolution
    if not (voxel > 0 and depth_trunc > 0 and cfg.sdf_trunc_voxels > 0):
        raise ValueError(f"voxel size, truncation and depth_trunc must be positive (got {voxel}, {cfg.sdf_trunc_voxels}, {depth_trunc})")
    return voxel, cfg.sdf_trunc_voxels * voxel, depth_trunc


def track(progress: Any, items: Iterable, description: str, total: int | None = None) -> Iterator:
    """Iterate ``items`` under a task of a rich ``Progress`` (or plainly when ``progress`` is None)."""
    if progress is None:
        yield from items
        return
    task = progress.add_task(description, total=total)
    for item in items:
        yield item
        progress.advance(task)
    progress.update(task, completed=total if total is not None else progress.tasks[task].completed)


@torch.no_grad()
def render_view(scene: Any, camera: Any, *, background: Sequence[float] | torch.Tensor | None = None,
                min_alpha: float = 0.5) -> RenderedView:
    """Render colour, opacity and expected z-depth of one camera through ``scene.render``."""
    out = scene.render(camera, background=background, render_depth=True)
    if out.depth is None:
        raise ValueError(f"{type(scene).__name__}.render returned no depth (render_depth=True)")
    alpha = out.alpha[..., 0].detach().float().cpu().numpy()
    acc = out.depth[..., 0].detach().float().cpu().numpy()
    depth = np.where(alpha >= min_alpha, acc / np.maximum(alpha, 1e-6), 0.0).astype(np.float32)
    depth[~np.isfinite(depth)] = 0.0
    color = out.image.detach().float().clamp(0, 1).cpu().numpy()[..., :3]
    return RenderedView(camera=camera, color=color, depth=depth, alpha=alpha)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values (as in images) to linear (as glTF's COLOR_0 expects)."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def fuse_tsdf(views: Iterable[RenderedView], *, voxel_size: float, sdf_trunc: float, depth_trunc: float,
              progress: Any = None, total: int | None = None, min_weight: float = 1.0,
              description: str = "TSDF fusion", timings: dict[str, float] | None = None) -> TriangleMesh:
    """Integrate rendered views into a sparse TSDF volume (open3d ``VoxelBlockGrid`` on the CPU) and
    extract its surface with marching cubes. Vertex colours come out linear (glTF's COLOR_0).
    ``min_weight``: voxels seen by fewer views than this are not meshed. ``progress``: a rich
    ``Progress`` that gets one task for the fusion (``description``) and one for marching cubes.
    ``timings``: when given, receives the seconds spent in each of the two (keys ``description``
    and ``"marching cubes"``)."""
    import open3d as o3d
    import open3d.core as o3c

    start = time.perf_counter()
    cpu = o3c.Device("CPU:0")
    # (The legacy ScalableTSDFVolume of the open3d 0.20 wheels integrates nothing; the tensor
    # VoxelBlockGrid works.) 8^3-voxel blocks keep the sparse volume's memory proportional to the surface.
    volume = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"),
        attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
        attr_channels=((1), (1), (3)),
        voxel_size=float(voxel_size),
        block_resolution=8,
        block_count=20000,
        device=cpu,
    )
    trunc_mult = float(sdf_trunc) / float(voxel_size)
    count = seen = 0
    for view in track(progress, views, description, total):
        count += 1
        # A view of nothing opaque (sky, or past depth_trunc) touches no voxel block, which open3d
        # treats as an error: it adds nothing, so skip it.
        if not np.any((view.depth > 0) & (view.depth <= depth_trunc)):
            continue
        seen += 1
        cam = view.camera
        depth = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(view.depth, dtype=np.float32)))
        color = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(np.clip(view.color, 0, 1), dtype=np.float32)))
        # recon: top-left pixel centre at (0.5, 0.5); open3d: at (0, 0).
        K = o3c.Tensor(np.array([[cam.fx, 0.0, cam.cx - 0.5], [0.0, cam.fy, cam.cy - 0.5], [0.0, 0.0, 1.0]]))
        w2c = o3c.Tensor(np.linalg.inv(np.asarray(cam.c2w, dtype=np.float64)))
        blocks = volume.compute_unique_block_coordinates(depth, K, w2c, 1.0, float(depth_trunc), trunc_voxel_multiplier=trunc_mult)
        volume.integrate(blocks, depth, color, K, K, w2c, 1.0, float(depth_trunc), trunc_voxel_multiplier=trunc_mult)
    if count == 0:
        raise ValueError("no views to fuse")
    if seen == 0:
        raise ValueError(f"none of the {count} views has depth within {depth_trunc:.3g} world units: "
                         "nothing in the scene is opaque enough to carry a surface")
    fused = time.perf_counter()
    # Marching cubes over a fine volume takes as long as a good part of the fusion: its own stage.
    for _ in track(progress, range(1), "marching cubes", 1):
        o3 = volume.extract_triangle_mesh(weight_threshold=float(min_weight)).to_legacy()
    vertices = np.asarray(o3.vertices, dtype=np.float32)
    faces = np.asarray(o3.triangles, dtype=np.int32)
    if timings is not None:
        timings[description] = fused - start
        timings["marching cubes"] = time.perf_counter() - fused
    if len(faces) == 0:
        raise ValueError("TSDF fusion found no surface (do the renders have depth and opacity?)")
    colors = srgb_to_linear(np.asarray(o3.vertex_colors)) if o3.has_vertex_colors() else None
    # Faces come out counter-clockwise seen from the side the cameras observed (glTF's front).
    return TriangleMesh(vertices=vertices, faces=faces, vertex_colors=colors)


def mesh_from_scene(scene: Any, cameras: Sequence[Any], cfg: TsdfConfig | None = None, *,
                    background: Sequence[float] | torch.Tensor | None = None, progress: Any = None,
                    timings: dict[str, float] | None = None) -> TriangleMesh:
    """Render every camera, fuse, extract: the raw TSDF surface of ``scene`` (not yet cleaned).
    ``timings``: see :func:`fuse_tsdf` (the rendering counts into the fusion's time)."""
    cfg = cfg or TsdfConfig()
    if not cameras:
        raise ValueError("need at least one camera")
    voxel, trunc, depth_trunc = resolve_tsdf_params(cameras, cfg)
    views = (render_view(scene, cam, background=background, min_alpha=cfg.min_alpha) for cam in cameras)
    return fuse_tsdf(views, voxel_size=voxel, sdf_trunc=trunc, depth_trunc=depth_trunc, progress=progress,
                     total=len(cameras), description="render + TSDF fusion", timings=timings)
