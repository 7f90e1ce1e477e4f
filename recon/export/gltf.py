"""glTF 2.0 binary (GLB) writing: a small low-level builder and the mesh writer every method uses.

- :class:`GltfBuilder`: accessors (with the min/max glTF requires), buffer views, PNG images,
  samplers, textures, materials, meshes, nodes, scenes, extensionsUsed/Required and ``asset.extras``;
  :meth:`GltfBuilder.to_glb_bytes` and an atomic :meth:`GltfBuilder.write`.
- :func:`write_mesh_glb`: a :class:`~recon.export.mesh.TriangleMesh` as one node, one mesh, one
  PBR metallic-roughness material (a baked base-colour texture when the mesh has one, else vertex
  colours ``COLOR_0``), with normals. glTF is right-handed, +Y up, metres.
- :func:`scene_up_vector`: the world's up direction estimated from the cameras.

Conventions. recon's world is whatever frame the cameras were solved in (OpenCV cameras: x right,
y down, z forward); "up" is a property of that world, given as ``up``. The writer rotates the world
by the smallest rotation taking ``up`` to +Y, multiplies by ``scale`` (metres per world unit) and
bakes both into the vertex positions and normals; the 4x4 ``world_to_gltf`` matrix and the rest
of the convention are written into ``asset.extras.recon``. For the default ``up = +Z`` the rotation
is the usual Z-up -> Y-up one, ``(x, y, z) -> (x, z, -y)``, the inverse of what Blender's importer
applies, so a Z-up world comes back into Blender with its own coordinates.

Targets. Every importer we target reads standard glTF (Y-up, metres, right-handed) and converts to
its own convention itself: Blender's importer to Z-up; Unity (glTFast) to its left-handed Y-up frame;
Unreal (Interchange) to Z-up centimetres (x100); Godot uses glTF's frame unchanged. Pre-converting in
the file would make those importers convert twice, so ``target`` never changes geometry, units,
winding or the material: it is recorded in ``asset.extras.recon`` and everything else in the file
(geometry, buffers, material) is byte-identical across targets. (Engines light imported materials; captured colour already contains
the lighting, hence metallic 0, roughness 1, or ``unlit=True`` for ``KHR_materials_unlit``.)
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from recon.export.mesh import TriangleMesh
from recon.utils.atomic import write_bytes_atomic

GLB_MAGIC = 0x46546C67  # "glTF"
CHUNK_JSON = 0x4E4F534A  # "JSON"
CHUNK_BIN = 0x004E4942  # "BIN\0"

ARRAY_BUFFER = 34962
ELEMENT_ARRAY_BUFFER = 34963

# glTF sampler constants
NEAREST, LINEAR = 9728, 9729
LINEAR_MIPMAP_LINEAR = 9987
CLAMP_TO_EDGE, MIRRORED_REPEAT, REPEAT = 33071, 33648, 10497

_COMPONENT_TYPES = {
    np.dtype(np.int8): 5120,
    np.dtype(np.uint8): 5121,
    np.dtype(np.int16): 5122,
    np.dtype(np.uint16): 5123,
    np.dtype(np.uint32): 5125,
    np.dtype(np.float32): 5126,
}
_TYPES = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4", 9: "MAT3", 16: "MAT4"}

TARGETS = ("gltf", "blender", "godot", "unity", "unreal")

# What each target's importer does with a standard glTF file (written into asset.extras for humans).
TARGET_NOTES = {
    "gltf": "standard glTF 2.0: right-handed, +Y up, metres",
    "blender": "Blender's glTF importer converts +Y up to Blender's +Z up (x, y, z) -> (x, -z, y); metres kept",
    "godot": "Godot uses glTF's right-handed +Y-up frame and metres unchanged",
    "unity": "Unity (glTFast) converts to its left-handed +Y-up frame by mirroring x; metres kept",
    "unreal": "Unreal (Interchange) converts to +Z up and centimetres (x100) on import",
}


def _pad4(data: bytes, fill: bytes = b"\x00") -> bytes:
    return data + fill * ((-len(data)) % 4)


class GltfBuilder:
    """Assemble one glTF 2.0 asset with a single binary buffer, then write it as GLB.

    Every ``add_*`` returns the new object's index. Typical use::

        b = GltfBuilder(extras={"recon": {...}})
        pos = b.add_accessor(vertices, target=ARRAY_BUFFER, bounds=True)
        idx = b.add_accessor(faces.reshape(-1).astype(np.uint32), target=ELEMENT_ARRAY_BUFFER)
        mat = b.add_material({"pbrMetallicRoughness": {"metallicFactor": 0.0}})
        mesh = b.add_mesh([{"attributes": {"POSITION": pos}, "indices": idx, "material": mat}])
        b.add_scene([b.add_node({"mesh": mesh})])
        b.write("out.glb")
    """

    def __init__(self, *, generator: str = "recon", extras: dict | None = None) -> None:
        asset: dict[str, Any] = {"version": "2.0", "generator": generator}
        if extras:
            asset["extras"] = extras
        self.gltf: dict[str, Any] = {"asset": asset}
        self._bin = bytearray()
        self._used: list[str] = []
        self._required: list[str] = []

    # --- plumbing ---------------------------------------------------------------------------
    def _append(self, key: str, obj: dict) -> int:
        items = self.gltf.setdefault(key, [])
        items.append(obj)
        return len(items) - 1

    def use_extension(self, name: str, *, required: bool = False) -> None:
        """List ``name`` in extensionsUsed (and extensionsRequired when ``required``)."""
        if name not in self._used:
            self._used.append(name)
        if required and name not in self._required:
            self._required.append(name)

    def set_asset_extras(self, extras: dict) -> None:
        self.gltf["asset"]["extras"] = extras

    # --- binary data --------------------------------------------------------------------------
    def add_buffer_view(self, data: bytes, *, target: int | None = None, byte_stride: int | None = None) -> int:
        """Append raw bytes (4-byte aligned) to the binary chunk as a new bufferView."""
        offset = len(self._bin)
        self._bin += _pad4(bytes(data))
        view: dict[str, Any] = {"buffer": 0, "byteOffset": offset, "byteLength": len(data)}
        if byte_stride is not None:
            view["byteStride"] = int(byte_stride)
        if target is not None:
            view["target"] = int(target)
        return self._append("bufferViews", view)

    def add_accessor(
        self,
        array: np.ndarray,
        *,
        target: int | None = None,
        normalized: bool = False,
        bounds: bool = False,
        name: str | None = None,
    ) -> int:
        """A tightly packed accessor over a new bufferView holding ``array``.

        ``array`` is [N] (SCALAR) or [N, k] with k in 2, 3, 4 (VECk) or 9, 16 (MATk); its dtype is one
        of glTF's component types (int8/uint8/int16/uint16/uint32/float32). ``bounds=True`` writes
        min/max (required for POSITION). Vertex attributes (``target=ARRAY_BUFFER``) must be a
        multiple of 4 bytes per element, as glTF requires."""
        a = np.ascontiguousarray(array)
        if a.dtype not in _COMPONENT_TYPES:
            raise ValueError(f"glTF has no component type for {a.dtype}")
        if a.ndim == 1:
            width = 1
        elif a.ndim == 2 and a.shape[1] in _TYPES:
            width = a.shape[1]
        else:
            raise ValueError(f"accessor data must be [N] or [N, 2|3|4|9|16], got {a.shape}")
        if len(a) == 0:
            raise ValueError("glTF accessors must have at least one element")
        if target == ARRAY_BUFFER and (a.itemsize * width) % 4:
            raise ValueError(f"vertex attribute elements must be a multiple of 4 bytes, got {a.itemsize * width}")
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise ValueError("accessor data contain NaN or infinity")
        view = self.add_buffer_view(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes(), target=target)
        acc: dict[str, Any] = {
            "bufferView": view,
            "componentType": _COMPONENT_TYPES[a.dtype],
            "count": int(len(a)),
            "type": _TYPES[width],
        }
        if normalized:
            acc["normalized"] = True
        if bounds:
            flat = a.reshape(len(a), width)
            cast = float if a.dtype.kind == "f" else int
            acc["min"] = [cast(x) for x in flat.min(0)]
            acc["max"] = [cast(x) for x in flat.max(0)]
        if name:
            acc["name"] = name
        return self._append("accessors", acc)

    # --- images and materials -------------------------------------------------------------------
    def add_image_png(self, image: np.ndarray | bytes, *, name: str | None = None) -> int:
        """Embed an image as PNG: ``uint8`` [H, W, 3|4] pixels (row 0 = top), or ready PNG bytes."""
        if isinstance(image, (bytes, bytearray)):
            png = bytes(image)
            if not png.startswith(b"\x89PNG\r\n\x1a\n"):
                raise ValueError("image bytes are not a PNG")
        else:
            from PIL import Image

            pixels = np.asarray(image)
            if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
                raise ValueError(f"image must be uint8 [H, W, 3|4], got {pixels.dtype} {pixels.shape}")
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG", optimize=False, compress_level=6)
            png = buf.getvalue()
        img: dict[str, Any] = {"bufferView": self.add_buffer_view(png), "mimeType": "image/png"}
        if name:
            img["name"] = name
        return self._append("images", img)

    def add_sampler(
        self,
        *,
        mag_filter: int = LINEAR,
        min_filter: int = LINEAR_MIPMAP_LINEAR,
        wrap_s: int = CLAMP_TO_EDGE,
        wrap_t: int = CLAMP_TO_EDGE,
    ) -> int:
        sampler = {"magFilter": mag_filter, "minFilter": min_filter, "wrapS": wrap_s, "wrapT": wrap_t}
        return self._append("samplers", sampler)

    def add_texture(self, image: int, sampler: int | None = None, *, name: str | None = None) -> int:
        tex: dict[str, Any] = {"source": int(image)}
        if sampler is not None:
            tex["sampler"] = int(sampler)
        if name:
            tex["name"] = name
        return self._append("textures", tex)

    def add_material(self, material: dict) -> int:
        return self._append("materials", dict(material))

    # --- scene graph ----------------------------------------------------------------------------
    def add_mesh(self, primitives: Sequence[dict], *, name: str | None = None) -> int:
        mesh: dict[str, Any] = {"primitives": [dict(p) for p in primitives]}
        if name:
            mesh["name"] = name
        return self._append("meshes", mesh)

    def add_node(self, node: dict) -> int:
        return self._append("nodes", dict(node))

    def add_scene(self, nodes: Iterable[int], *, name: str | None = None, default: bool = True) -> int:
        scene: dict[str, Any] = {"nodes": [int(n) for n in nodes]}
        if name:
            scene["name"] = name
        index = self._append("scenes", scene)
        if default:
            self.gltf["scene"] = index
        return index

    # --- output ---------------------------------------------------------------------------------
    def to_json(self) -> dict:
        doc = dict(self.gltf)
        if self._bin:
            doc["buffers"] = [{"byteLength": len(self._bin)}]
        if self._used:
            doc["extensionsUsed"] = list(self._used)
        if self._required:
            doc["extensionsRequired"] = list(self._required)
        return doc

    def to_glb_bytes(self) -> bytes:
        """The GLB container: 12-byte header, JSON chunk (space padded), BIN chunk (zero padded)."""
        js = _pad4(json.dumps(self.to_json(), separators=(",", ":"), allow_nan=False).encode("utf-8"), b" ")
        chunks = struct.pack("<II", len(js), CHUNK_JSON) + js
        if self._bin:
            binary = _pad4(bytes(self._bin))
            chunks += struct.pack("<II", len(binary), CHUNK_BIN) + binary
        return struct.pack("<III", GLB_MAGIC, 2, 12 + len(chunks)) + chunks

    def write(self, path: str | Path) -> Path:
        """Write the GLB atomically (a complete file or none)."""
        path = Path(path)
        write_bytes_atomic(path, self.to_glb_bytes())
        return path


def read_glb(data: bytes) -> tuple[dict, bytes]:
    """Split a GLB into (JSON document, BIN chunk bytes); raises ValueError on a malformed container."""
    if len(data) < 20:
        raise ValueError("not a GLB: too short")
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != 2 or length != len(data):
        raise ValueError("not a GLB 2.0 file (bad header)")
    jlen, jtype = struct.unpack_from("<II", data, 12)
    if jtype != CHUNK_JSON:
        raise ValueError("GLB: first chunk is not JSON")
    doc = json.loads(data[20 : 20 + jlen].decode("utf-8"))
    rest = 20 + jlen
    binary = b""
    if rest + 8 <= len(data):
        blen, btype = struct.unpack_from("<II", data, rest)
        if btype != CHUNK_BIN:
            raise ValueError("GLB: second chunk is not BIN")
        binary = data[rest + 8 : rest + 8 + blen]
    return doc, binary


# --- coordinate conventions ---------------------------------------------------------------------------
def rotation_to_y_up(up: Sequence[float] | np.ndarray) -> np.ndarray:
    """The smallest rotation (3x3, float64) taking the unit vector along ``up`` to +Y."""
    u = np.asarray(up, dtype=np.float64).reshape(3)
    norm = np.linalg.norm(u)
    if not np.isfinite(norm) or norm < 1e-12:
        raise ValueError(f"up vector must be finite and non-zero, got {u.tolist()}")
    u = u / norm
    y = np.array([0.0, 1.0, 0.0])
    c = float(u @ y)
    if c < -1.0 + 1e-12:  # up = -Y: half turn about X (any axis orthogonal to Y works)
        return np.diag([1.0, -1.0, -1.0])
    v = np.cross(u, y)
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)  # Rodrigues, the rotation in the (u, y) plane


def world_to_gltf_matrix(up: Sequence[float] | np.ndarray = (0.0, 0.0, 1.0), scale: float = 1.0) -> np.ndarray:
    """4x4 transform from recon world coordinates to glTF coordinates: ``scale * R(up -> +Y)``."""
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive number, got {scale}")
    m = np.eye(4)
    m[:3, :3] = float(scale) * rotation_to_y_up(up)
    return m


def scene_up_vector(scene_data_or_cameras: Any) -> np.ndarray:
    """World up estimated from the cameras. Accepts a SceneData or a sequence of cameras / 4x4 c2w
    matrices. (OpenCV cameras: x right, y down the image, z forward, in world coordinates.)

    Photographers hold cameras level (no roll), so every camera's right axis is horizontal: when the
    right axes point in enough different directions (the capture goes around something), up is the
    direction most nearly perpendicular to all of them (the smallest eigenvector of their second
    moment). That is exact for level cameras however they are pitched or spread; the plain mean of
    the image-up axes (-y) is tilted towards wherever the views are denser (a capture that covers
    one side more, or a held-out split). When the right axes are nearly parallel (a forward-facing
    capture) their normal is ill-defined and the mean image-up is used. The sign makes image-up plus
    backward (-y - z, both leaning up for cameras held level or tilted down) point up, which also
    holds for rigs that look straight down."""
    cams = getattr(scene_data_or_cameras, "cameras", scene_data_or_cameras)
    c2ws = np.array([np.asarray(getattr(c, "c2w", c), dtype=np.float64).reshape(4, 4) for c in cams])
    if not len(c2ws):
        raise ValueError("need at least one camera to estimate the up direction")
    right, down, forward = c2ws[:, :3, 0], c2ws[:, :3, 1], c2ws[:, :3, 2]
    right = right / np.maximum(np.linalg.norm(right, axis=1, keepdims=True), 1e-12)
    moments, axes = np.linalg.eigh(right.T @ right / len(right))  # ascending
    # moments[1] ~ mean sin^2 of the right axes' spread about their main direction: 0.05 is about
    # +-22 degrees of yaw, where roll noise of a degree or two still tilts the normal only slightly.
    if moments[1] >= 0.05:
        up = axes[:, 0]
        lean = float(up @ -(down + forward).mean(0))
        if abs(lean) > 1e-9:
            return up if lean > 0 else -up
    up = -down.mean(0)
    norm = np.linalg.norm(up)
    if norm < 1e-6:
        raise ValueError("cameras' up directions cancel out; pass the up vector explicitly")
    return up / norm


# --- the mesh writer ----------------------------------------------------------------------------------
def mesh_to_builder(
    mesh: TriangleMesh,
    *,
    target: str = "gltf",
    up: Sequence[float] | np.ndarray = (0.0, 0.0, 1.0),
    scale: float = 1.0,
    name: str = "recon_mesh",
    unlit: bool = False,
    extras: dict | None = None,
    double_sided: bool = False,
) -> GltfBuilder:
    """The :class:`GltfBuilder` :func:`write_mesh_glb` writes (add more to it before writing)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if mesh.num_faces == 0:
        raise ValueError("the mesh has no faces; nothing to export")
    m = world_to_gltf_matrix(up, scale)
    rot = m[:3, :3] / float(scale)
    positions = (mesh.vertices.astype(np.float64) @ m[:3, :3].T).astype(np.float32)
    normals = mesh.with_normals().normals.astype(np.float64) @ rot.T
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    recon_extras = {
        "convention": "glTF 2.0: right-handed, +Y up, metres; positions = world_to_gltf @ recon world (baked into vertices)",
        "source_frame": "recon world (the cameras' frame; OpenCV cameras: x right, y down, z forward)",
        "world_up": [float(x) for x in np.asarray(up, dtype=np.float64) / np.linalg.norm(up)],
        "metres_per_world_unit": float(scale),
        "world_to_gltf": [[float(x) for x in row] for row in m],
        "target": target,
        "target_note": TARGET_NOTES[target],
    }
    if extras:
        recon_extras.update(extras)
    b = GltfBuilder(extras={"recon": recon_extras})

    attributes = {
        "POSITION": b.add_accessor(positions, target=ARRAY_BUFFER, bounds=True),
        "NORMAL": b.add_accessor(normals.astype(np.float32), target=ARRAY_BUFFER),
    }
    pbr: dict[str, Any] = {"metallicFactor": 0.0, "roughnessFactor": 1.0}
    material: dict[str, Any] = {"name": f"{name}_material", "pbrMetallicRoughness": pbr, "doubleSided": bool(double_sided)}
    if mesh.texture is not None:
        attributes["TEXCOORD_0"] = b.add_accessor(mesh.uvs, target=ARRAY_BUFFER)
        image = b.add_image_png(mesh.texture, name=f"{name}_basecolor")
        texture = b.add_texture(image, b.add_sampler(), name=f"{name}_basecolor")
        pbr["baseColorTexture"] = {"index": texture, "texCoord": 0}
    else:
        if mesh.uvs is not None:
            attributes["TEXCOORD_0"] = b.add_accessor(mesh.uvs, target=ARRAY_BUFFER)
        if mesh.vertex_colors is not None:
            attributes["COLOR_0"] = b.add_accessor(mesh.vertex_colors, target=ARRAY_BUFFER)
    if mesh.vertex_colors is not None and mesh.vertex_colors.shape[1] == 4 and mesh.texture is None:
        material["alphaMode"] = "BLEND"
    if unlit:
        b.use_extension("KHR_materials_unlit")
        material["extensions"] = {"KHR_materials_unlit": {}}
    mat = b.add_material(material)
    indices = b.add_accessor(mesh.faces.reshape(-1).astype(np.uint32), target=ELEMENT_ARRAY_BUFFER)
    mesh_index = b.add_mesh([{"attributes": attributes, "indices": indices, "material": mat, "mode": 4}], name=name)
    b.add_scene([b.add_node({"mesh": mesh_index, "name": name})], name="recon")
    return b


def write_mesh_glb(
    mesh: TriangleMesh,
    path: str | Path,
    *,
    target: str = "gltf",
    up: Sequence[float] | np.ndarray = (0.0, 0.0, 1.0),
    scale: float = 1.0,
    name: str = "recon_mesh",
    unlit: bool = False,
    extras: dict | None = None,
    double_sided: bool = False,
) -> Path:
    """Write ``mesh`` as a GLB file (atomically): Y-up, right-handed, metres.

    - ``up``: the recon world's up direction (:func:`scene_up_vector`); rotated to +Y.
    - ``scale``: metres per world unit (SfM worlds have arbitrary scale; 1.0 keeps the numbers).
    - ``target``: one of :data:`TARGETS`; recorded only (see the module docstring: every importer
      converts standard glTF itself, so the geometry is the same for all of them).
    - ``unlit``: mark the material ``KHR_materials_unlit`` (captured colour already has lighting).
    - ``extras``: more keys for ``asset.extras.recon`` (e.g. the method and checkpoint).
    - ``double_sided``: draw both sides (for meshes whose face winding is not consistently outward,
      such as trained triangle sets; engines cull back faces of single-sided materials).
    """
    builder = mesh_to_builder(
        mesh, target=target, up=up, scale=scale, name=name, unlit=unlit, extras=extras, double_sided=double_sided
    )
    return builder.write(path)
