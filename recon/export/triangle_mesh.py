"""Triangle scenes -> :class:`recon.export.mesh.TriangleMesh` -> GLB (the shared glTF writer).

- :class:`~recon.scenes.triangles.OpaqueTriangleScene` (Triangle Splatting+): its vertex table and faces
  as they are (so the GLB has exactly the scene's faces), vertex colours = the SH DC term
  (``SH_C0 * sh0 + 0.5``, the colour averaged over all view directions), clamped to 0..1.
- :class:`~recon.scenes.triangles.TriangleScene` (a soup): three own vertices per triangle, colour of
  the DC term per triangle, opacity in the alpha channel (COLOR_0 as RGBA).

The GLB is Y-up, in metres (world units × ``scale``), rotated by the scene's up vector; see
:func:`recon.export.gltf.write_mesh_glb`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from recon.export.mesh import TriangleMesh
from recon.rasterizers.reference.sh import SH_C0

__all__ = ["scene_to_mesh", "write_scene_glb"]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


@torch.no_grad()
def scene_to_mesh(scene: Any) -> TriangleMesh:
    """The triangle mesh of a triangle scene (module docstring)."""
    from recon.scenes.triangles import SIGMA_OFFSET, OpaqueTriangleScene, TriangleScene  # noqa: F401

    rgb = np.clip(_np(scene.params["sh0"][:, 0] * SH_C0 + 0.5), 0.0, 1.0)
    if isinstance(scene, OpaqueTriangleScene):
        return TriangleMesh(vertices=_np(scene.params["vertices"]), faces=scene.faces.cpu().numpy().astype(np.int32),
                            vertex_colors=rgb.astype(np.float32))  # fmt: skip
    if isinstance(scene, TriangleScene):
        verts = _np(scene.params["vertices"]).reshape(-1, 3)
        n = scene.num_primitives
        alpha = _np(torch.sigmoid(scene.params["opacities"]))
        rgba = np.concatenate([rgb, alpha[:, None]], axis=1)
        return TriangleMesh(vertices=verts, faces=np.arange(3 * n, dtype=np.int32).reshape(n, 3),
                            vertex_colors=np.repeat(rgba, 3, axis=0).astype(np.float32))  # fmt: skip
    raise TypeError(f"not a triangle scene: {type(scene).__name__}")


def write_scene_glb(scene: Any, path: str | Path, *, target: str = "gltf", scale: float = 1.0) -> Path:
    """Write the scene's mesh as a GLB (atomically), up = the scene's ``up`` vector. Double-sided: the
    trained faces (from a Delaunay tetrahedralisation) have no consistent winding."""
    from recon.export.gltf import write_mesh_glb

    mesh = scene_to_mesh(scene)
    extras = {"method": "opaque-triangles" if mesh.vertex_colors.shape[1] == 3 else "triangles", "faces": int(mesh.faces.shape[0])}
    return write_mesh_glb(mesh, path, target=target, up=getattr(scene, "up", (0.0, 0.0, 1.0)), scale=scale,
                          name="recon_triangles", extras=extras, double_sided=True)  # fmt: skip
