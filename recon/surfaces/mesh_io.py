"""Write a triangle mesh as binary PLY (numpy only; readable by open3d, trimesh, MeshLab, Blender)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.utils.atomic import atomic_path


def write_mesh_ply(path: str | Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None) -> Path:
    """``vertices [V, 3]``, ``faces [F, 3]``, optional ``colors [V, 3|4]`` in 0..1 (stored as uchar RGB)."""
    path = Path(path)
    v = np.asarray(vertices, dtype="<f4").reshape(-1, 3)
    f = np.asarray(faces, dtype="<i4").reshape(-1, 3)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vert = np.empty(len(v), dtype=fields)
    vert["x"], vert["y"], vert["z"] = v[:, 0], v[:, 1], v[:, 2]
    if colors is not None:
        c = np.clip(np.round(np.asarray(colors)[:, :3] * 255.0), 0, 255).astype(np.uint8)
        vert["red"], vert["green"], vert["blue"] = c[:, 0], c[:, 1], c[:, 2]
    face = np.empty(len(f), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    face["n"] = 3
    face["i"] = f
    props = "".join(f"property {'float' if t == '<f4' else 'uchar'} {n}\n" for n, t in fields)
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment written by recon\n"
        f"element vertex {len(v)}\n{props}element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(header.encode("ascii"))
            fh.write(vert.tobytes())
            fh.write(face.tobytes())
    return path
