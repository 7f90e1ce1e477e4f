"""Triangle meshes every surface method exports: one container and the clean-up steps between a raw
extracted surface (TSDF, marching cubes, opaque triangles) and a file a game engine loads.

- :class:`TriangleMesh`: vertices in recon world coordinates, faces, optional per-vertex colours,
  normals, UVs and one base-colour texture. Validated on construction.
- :func:`clean_mesh`: drop degenerate and duplicate faces, keep the largest connected components,
  fill small holes, drop unreferenced vertices.
- :func:`decimate`: quadric edge-collapse decimation to a face budget (open3d), colours kept.
- :func:`unwrap_uvs`: a UV atlas (xatlas, fed in spatial chunks with bounded charts); seam vertices
  are duplicated.

UV convention (the same as glTF): ``u`` runs left to right, ``v`` top to bottom of the image, i.e.
texel row ``floor(v * H)`` of ``texture`` (row 0 is the top row of the image).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass
class TriangleMesh:
    """An indexed triangle mesh.

    - ``vertices`` [V, 3] float32, recon world coordinates (the frame the cameras live in);
    - ``faces`` [F, 3] int32, counter-clockwise seen from the front (outside);
    - ``vertex_colors`` [V, 3] or [V, 4] float32 in 0..1 (linear RGB(A) as captured; glTF reads
      COLOR_0 as linear), optional;
    - ``normals`` [V, 3] float32 unit vectors, optional (:meth:`with_normals` computes them);
    - ``uvs`` [V, 2] float32 (glTF convention, see the module docstring), optional;
    - ``texture`` [H, W, 3] uint8 sRGB base colour, optional; needs ``uvs``.
    """

    vertices: np.ndarray
    faces: np.ndarray
    vertex_colors: np.ndarray | None = None
    normals: np.ndarray | None = None
    uvs: np.ndarray | None = None
    texture: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float32)
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"vertices must be [V, 3], got {self.vertices.shape}")
        if not np.all(np.isfinite(self.vertices)):
            raise ValueError("vertices contain NaN or infinity")
        faces = np.asarray(self.faces)
        if faces.size == 0:
            faces = faces.reshape(0, 3)
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise ValueError(f"faces must be [F, 3], got {faces.shape}")
        if not np.issubdtype(faces.dtype, np.integer):
            raise ValueError(f"faces must be integer indices, got {faces.dtype}")
        if faces.size and (faces.min() < 0 or faces.max() >= len(self.vertices)):
            raise ValueError(f"face indices must lie in [0, {len(self.vertices)}), got [{faces.min()}, {faces.max()}]")
        self.faces = np.ascontiguousarray(faces, dtype=np.int32)
        n = len(self.vertices)
        if self.vertex_colors is not None:
            c = np.ascontiguousarray(self.vertex_colors, dtype=np.float32)
            if c.shape not in ((n, 3), (n, 4)):
                raise ValueError(f"vertex_colors must be [{n}, 3] or [{n}, 4], got {c.shape}")
            if not np.all(np.isfinite(c)) or (c.size and (c.min() < 0.0 or c.max() > 1.0)):
                raise ValueError("vertex_colors must be finite and within 0..1")
            self.vertex_colors = c
        if self.normals is not None:
            nr = np.ascontiguousarray(self.normals, dtype=np.float32)
            if nr.shape != (n, 3) or not np.all(np.isfinite(nr)):
                raise ValueError(f"normals must be finite [{n}, 3], got {nr.shape}")
            self.normals = nr
        if self.uvs is not None:
            uv = np.ascontiguousarray(self.uvs, dtype=np.float32)
            if uv.shape != (n, 2) or not np.all(np.isfinite(uv)):
                raise ValueError(f"uvs must be finite [{n}, 2], got {uv.shape}")
            self.uvs = uv
        if self.texture is not None:
            t = np.asarray(self.texture)
            if t.dtype != np.uint8 or t.ndim != 3 or t.shape[2] != 3 or t.shape[0] < 1 or t.shape[1] < 1:
                raise ValueError(f"texture must be uint8 [H, W, 3], got {t.dtype} {t.shape}")
            if self.uvs is None:
                raise ValueError("a texture needs uvs")
            self.texture = np.ascontiguousarray(t)

    # ---------------------------------------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        return len(self.vertices)

    @property
    def num_faces(self) -> int:
        return len(self.faces)

    def replace(self, **changes) -> "TriangleMesh":
        """A copy with some fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)

    def bounds(self) -> np.ndarray:
        """(2, 3): min corner, max corner of the vertices."""
        if not len(self.vertices):
            return np.zeros((2, 3), dtype=np.float32)
        return np.stack([self.vertices.min(0), self.vertices.max(0)])

    def face_normals(self) -> np.ndarray:
        """Unnormalised face normals [F, 3] (length = twice the area), float64."""
        v = self.vertices.astype(np.float64)
        a, b, c = v[self.faces[:, 0]], v[self.faces[:, 1]], v[self.faces[:, 2]]
        return np.cross(b - a, c - a)

    def vertex_normals(self) -> np.ndarray:
        """Area-weighted unit vertex normals [V, 3] float32; vertices without faces get +z."""
        fn = self.face_normals()
        acc = np.zeros((self.num_vertices, 3))
        for k in range(3):
            np.add.at(acc, self.faces[:, k], fn)
        length = np.linalg.norm(acc, axis=1, keepdims=True)
        out = np.where(length > 1e-20, acc / np.maximum(length, 1e-30), np.array([0.0, 0.0, 1.0]))
        return out.astype(np.float32)

    def with_normals(self) -> "TriangleMesh":
        """This mesh with ``normals`` filled in (unchanged when present)."""
        return self if self.normals is not None else self.replace(normals=self.vertex_normals())

    def submesh(self, face_mask: np.ndarray) -> "TriangleMesh":
        """The faces where ``face_mask`` is true, without the vertices they no longer use."""
        return _compact(self, self.faces[np.asarray(face_mask, dtype=bool)])


# --- per-vertex attribute plumbing --------------------------------------------------------------------
def _vertex_fields(mesh: TriangleMesh) -> dict[str, np.ndarray]:
    out = {"vertices": mesh.vertices}
    for name in ("vertex_colors", "normals", "uvs"):
        value = getattr(mesh, name)
        if value is not None:
            out[name] = value
    return out


def _compact(mesh: TriangleMesh, faces: np.ndarray) -> TriangleMesh:
    """``mesh`` with new ``faces`` (indices into the old vertices), unused vertices removed."""
    used = np.zeros(mesh.num_vertices, dtype=bool)
    used[faces.ravel()] = True
    remap = np.full(mesh.num_vertices, -1, dtype=np.int64)
    remap[used] = np.arange(int(used.sum()))
    fields = {k: v[used] for k, v in _vertex_fields(mesh).items()}
    return mesh.replace(faces=remap[faces].reshape(-1, 3), **fields)


def merge_duplicate_vertices(mesh: TriangleMesh) -> TriangleMesh:
    """Merge vertices whose position *and* every other attribute are bit-identical (seam vertices
    with different UVs stay apart)."""
    fields = _vertex_fields(mesh)
    if not mesh.num_vertices:
        return mesh
    rows = np.concatenate([v.reshape(len(v), -1).astype(np.float32) for v in fields.values()], axis=1)
    _, first, inverse = np.unique(rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel(),
                                  return_index=True, return_inverse=True)
    if len(first) == mesh.num_vertices:
        return mesh
    order = np.argsort(first)  # keep the original vertex order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    faces = rank[inverse.ravel()][mesh.faces]
    return mesh.replace(faces=faces, **{k: v[first[order]] for k, v in fields.items()})


# --- cleaning ---------------------------------------------------------------------------------------
def _drop_bad_faces(mesh: TriangleMesh, area_eps: float) -> TriangleMesh:
    f = mesh.faces
    if not len(f):
        return mesh
    distinct = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    area2 = np.linalg.norm(mesh.face_normals(), axis=1)
    keep = distinct & (area2 > area_eps)
    # Duplicate faces: the same three vertices in any order (also the back-facing twin).
    key = np.sort(f, axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    unique = np.zeros(len(f), dtype=bool)
    unique[first] = True
    return _compact(mesh, f[keep & unique])


def face_components(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """Connected-component label per face (faces sharing a vertex are connected)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(faces):
        return np.zeros(0, dtype=np.int64)
    f = faces.astype(np.int64)
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(num_vertices, num_vertices))
    _, vertex_label = connected_components(graph, directed=False)
    return vertex_label[f[:, 0]]


def _boundary_loops(faces: np.ndarray) -> list[list[int]]:
    """Closed loops of boundary half-edges (edges used by exactly one face), in face winding order.
    Loops through a vertex with more than one outgoing boundary edge are skipped (ambiguous)."""
    if not len(faces):
        return []
    he = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).astype(np.int64)
    key = np.sort(he, axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    boundary = he[counts[inverse.ravel()] == 1]
    if not len(boundary):
        return []
    outgoing: dict[int, list[int]] = {}
    for a, b in boundary.tolist():
        outgoing.setdefault(a, []).append(b)
    loops, seen = [], set()
    for start in outgoing:
        if start in seen or len(outgoing[start]) != 1:
            continue
        loop, v, ok = [start], outgoing[start][0], True
        while v != start:
            nxt = outgoing.get(v)
            if nxt is None or len(nxt) != 1 or v in seen or len(loop) > len(boundary):
                ok = False
                break
            loop.append(v)
            v = nxt[0]
        seen.update(loop)
        if ok and len(loop) >= 3:
            loops.append(loop)
    return loops


def fill_small_holes(mesh: TriangleMesh, max_edges: int) -> TriangleMesh:
    """Close every boundary loop of at most ``max_edges`` edges with a fan around a new centre
    vertex (attributes averaged over the loop); winding matches the surrounding faces."""
    if max_edges < 3:
        return mesh
    loops = [loop for loop in _boundary_loops(mesh.faces) if len(loop) <= max_edges]
    if not loops:
        return mesh
    fields = _vertex_fields(mesh)
    new_rows = {k: [] for k in fields}
    new_faces = []
    next_index = mesh.num_vertices
    for loop in loops:
        idx = np.asarray(loop)
        for k, v in fields.items():
            row = v[idx].mean(0)
            if k == "normals":
                row = row / max(float(np.linalg.norm(row)), 1e-12)
            new_rows[k].append(row)
        # Boundary half-edge a->b belongs to an existing face; the new face uses b->a.
        for a, b in zip(loop, loop[1:] + loop[:1]):
            new_faces.append((b, a, next_index))
        next_index += 1
    merged = {k: np.concatenate([v, np.asarray(new_rows[k], dtype=v.dtype)]) for k, v in fields.items()}
    faces = np.concatenate([mesh.faces, np.asarray(new_faces, dtype=np.int32)])
    return mesh.replace(faces=faces, **merged)


def clean_mesh(
    mesh: TriangleMesh,
    *,
    keep_largest: int | None = 1,
    min_component_fraction: float = 0.01,
    fill_holes_max_edges: int = 16,
    area_eps: float = 1e-14,
) -> TriangleMesh:
    """Clean an extracted surface.

    1. merge bit-identical vertices; drop faces with repeated vertices, (near) zero area
       (``|cross| <= area_eps``) and duplicates (same three vertices, either winding);
    2. keep the ``keep_largest`` connected components with the most faces (``None``: all), and of
       those only components with at least ``min_component_fraction`` of the faces (floaters);
    3. fill holes bounded by at most ``fill_holes_max_edges`` edges (0 disables);
    4. drop vertices no face uses.
    """
    if keep_largest is not None and keep_largest < 1:
        raise ValueError(f"keep_largest must be >= 1 or None, got {keep_largest}")
    if not 0.0 <= min_component_fraction <= 1.0:
        raise ValueError(f"min_component_fraction must be in [0, 1], got {min_component_fraction}")
    out = _drop_bad_faces(merge_duplicate_vertices(mesh), area_eps)
    if out.num_faces:
        label = face_components(out.faces, out.num_vertices)
        sizes = np.bincount(label)
        order = np.argsort(-sizes, kind="stable")
        if keep_largest is not None:
            order = order[:keep_largest]
        order = order[sizes[order] >= min_component_fraction * out.num_faces]
        out = out.submesh(np.isin(label, order))
    if fill_holes_max_edges:
        out = fill_small_holes(out, fill_holes_max_edges)
    if out.normals is not None:  # positions moved/added: recompute rather than keep stale normals
        out = out.replace(normals=None).with_normals()
    return out


# --- decimation -------------------------------------------------------------------------------------
def decimate(mesh: TriangleMesh, target_faces: int) -> TriangleMesh:
    """Quadric edge-collapse decimation (open3d) to at most about ``target_faces`` faces.

    Vertex colours are carried through open3d (RGB; an alpha channel is taken from the nearest
    original vertex). UVs would be torn apart by edge collapses, so a mesh with UVs is refused:
    decimate first, then :func:`unwrap_uvs`. Normals are recomputed."""
    target_faces = int(target_faces)
    if target_faces < 1:
        raise ValueError(f"target_faces must be >= 1, got {target_faces}")
    if mesh.uvs is not None:
        raise ValueError("decimate a mesh before unwrapping it (edge collapses break UVs)")
    if mesh.num_faces <= target_faces:
        return mesh.replace(normals=None).with_normals()
    import open3d as o3d

    o3 = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(mesh.vertices.astype(np.float64)),
        o3d.utility.Vector3iVector(mesh.faces.astype(np.int32)),
    )
    if mesh.vertex_colors is not None:
        o3.vertex_colors = o3d.utility.Vector3dVector(mesh.vertex_colors[:, :3].astype(np.float64))
    small = o3.simplify_quadric_decimation(target_number_of_triangles=target_faces)
    small.remove_unreferenced_vertices()
    vertices = np.asarray(small.vertices, dtype=np.float32)
    faces = np.asarray(small.triangles, dtype=np.int32)
    colors = None
    if mesh.vertex_colors is not None:
        colors = np.clip(np.asarray(small.vertex_colors, dtype=np.float32), 0.0, 1.0)
        if mesh.vertex_colors.shape[1] == 4:
            from scipy.spatial import cKDTree

            _, nearest = cKDTree(mesh.vertices).query(vertices)
            colors = np.concatenate([colors, mesh.vertex_colors[nearest, 3:4]], axis=1)
    out = TriangleMesh(vertices=vertices, faces=faces, vertex_colors=colors)
    return _drop_bad_faces(out, 0.0).with_normals()


# --- UV atlas ---------------------------------------------------------------------------------------
# Defaults measured on 50k-200k-face meshes (docs/mesh_export.md, "Defaults and what they cost"):
# xatlas' time grows much faster than linearly with the size of the mesh it is given and of the
# charts it grows, so one 200k-face mesh took about ten minutes. Handing it the mesh in spatial
# chunks and capping the chart area makes it seconds, packed into one atlas as before, with about
# the same share of the texture used.
UNWRAP_CHUNK_FACES = 20_000
UNWRAP_MAX_CHART_FACES = 1_000


def spatial_chunks(points: np.ndarray, max_size: int) -> list[np.ndarray]:
    """Split ``points`` [N, 3] into groups of at most ``max_size`` (index arrays, each sorted) by
    halving at the median of the longest extent, recursively: compact, nearly equal chunks."""
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    todo, done = [np.arange(len(points))], []
    while todo:
        group = todo.pop()
        if len(group) <= max_size:
            done.append(group)
            continue
        p = points[group]
        axis = int(np.argmax(p.max(0) - p.min(0)))
        order = group[np.argsort(p[:, axis], kind="stable")]
        half = len(order) // 2
        todo += [np.sort(order[:half]), np.sort(order[half:])]
    done.sort(key=lambda g: int(g[0]) if len(g) else -1)  # deterministic order
    return done


def unwrap_uvs(mesh: TriangleMesh, *, resolution: int = 1024, padding: int = 2,
               chunk_faces: int = UNWRAP_CHUNK_FACES, max_chart_faces: int | None = UNWRAP_MAX_CHART_FACES) -> TriangleMesh:
    """Charts and an atlas from xatlas. Vertices on chart seams are duplicated (each copy carries
    its chart's UV); colours and normals follow their vertex; faces keep their order. ``resolution``
    and ``padding`` (texels) size the packing so charts do not bleed into each other at that texture
    size.

    Speed (see the constants above): the mesh goes to xatlas in spatial chunks of at most
    ``chunk_faces`` faces (chunk borders become chart seams), and no chart grows beyond the area of
    about ``max_chart_faces`` average faces (``None``: unbounded, xatlas' default)."""
    if mesh.num_faces == 0:
        raise ValueError("cannot unwrap a mesh without faces")
    if chunk_faces < 1:
        raise ValueError(f"chunk_faces must be >= 1, got {chunk_faces}")
    if max_chart_faces is not None and max_chart_faces < 1:
        raise ValueError(f"max_chart_faces must be >= 1 or None, got {max_chart_faces}")
    import xatlas

    faces = mesh.faces.astype(np.int64)
    chunks = spatial_chunks(mesh.vertices[faces].mean(1), chunk_faces)
    atlas = xatlas.Atlas()
    chunk_vertices = []
    for group in chunks:
        used, local = np.unique(faces[group], return_inverse=True)
        chunk_vertices.append(used)
        atlas.add_mesh(mesh.vertices[used], local.reshape(-1, 3).astype(np.uint32))
    charts = xatlas.ChartOptions()
    if max_chart_faces is not None:
        mean_face_area = 0.5 * float(np.linalg.norm(mesh.face_normals(), axis=1).mean())
        charts.max_chart_area = max_chart_faces * mean_face_area
    pack = xatlas.PackOptions()
    pack.resolution = int(resolution)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(charts, pack)
    vmapping, out_faces, uvs, offset = [], np.empty_like(faces), [], 0
    for i, (group, used) in enumerate(zip(chunks, chunk_vertices)):
        chunk_map, chunk_faces_out, chunk_uvs = atlas[i]
        vmapping.append(used[np.asarray(chunk_map, dtype=np.int64)])
        out_faces[group] = np.asarray(chunk_faces_out, dtype=np.int64).reshape(-1, 3) + offset
        uvs.append(np.asarray(chunk_uvs, dtype=np.float32))
        offset += len(chunk_map)
    vmap = np.concatenate(vmapping)
    fields = {k: v[vmap] for k, v in _vertex_fields(mesh).items() if k != "uvs"}
    # xatlas' v grows with the atlas row index, i.e. downwards in an image: already glTF's convention.
    return mesh.replace(faces=out_faces.astype(np.int32), uvs=np.concatenate(uvs), texture=None, **fields)
