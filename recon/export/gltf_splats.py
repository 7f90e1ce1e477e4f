"""Gaussian splats in glTF 2.0 with ``KHR_gaussian_splatting``: writer (GLB) and reader (GLB / .gltf).

What is written (one node, one mesh, one ``POINTS`` primitive, via the shared
:class:`recon.export.gltf.GltfBuilder`), following the extension text:

- ``POSITION`` (float VEC3, with min/max);
- ``KHR_gaussian_splatting:ROTATION``: unit quaternion, glTF order (x, y, z, w), float VEC4;
- ``KHR_gaussian_splatting:SCALE``: *linear* standard deviations (``exp`` of recon's log scales);
- ``KHR_gaussian_splatting:OPACITY``: opacity after the sigmoid, in [0, 1];
- ``KHR_gaussian_splatting:SH_DEGREE_l_COEF_n`` (float VEC3, RGB): the DC term ``l = 0`` and, per
  band, the coefficients from m = -l to m = l, which is recon's order inside a band;
- ``COLOR_0`` fallback for viewers without the extension: the clamped DC colour ``0.5 + SH_C0 f_dc``
  decoded from sRGB to linear (glTF vertex colours are linear), alpha = opacity;
- extension object ``{"kernel": "ellipse", "colorSpace": "srgb_rec709_display", "projection":
  "perspective", "sortingMethod": "cameraDistance"}``; ``extensionsUsed`` lists the extension.

Axes: glTF is right-handed, +Y up, metres. Like the mesh writer, the recon world is rotated by the
smallest rotation taking ``up`` to +Y and multiplied by ``scale`` (metres per world unit); positions,
rotations, scales and SH are transformed exactly (:mod:`recon.export.axes`) and baked into the data
(the extension recommends splats stored in glTF's frame). The default ``up = (0, -1, 0)`` is the
3DGS PLY convention (``RDF``, y down), i.e. a half turn about X. ``asset.extras.recon`` holds the
4x4 ``world_to_gltf`` matrix, so :func:`read_gltf_splats` returns recon's own world for files recon
wrote; for other files it applies the node transforms and then the inverse of the default (glTF frame
-> ``RDF``).
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from recon.errors import InputError
from recon.export.axes import transform_gaussians
from recon.export.gltf import ARRAY_BUFFER, GltfBuilder, read_glb, world_to_gltf_matrix

EXTENSION = "KHR_gaussian_splatting"
PREFIX = EXTENSION + ":"
SH_C0 = 0.28209479177387814
DEFAULT_UP = (0.0, -1.0, 0.0)
POINTS = 0


def _f64(params: Mapping[str, Any], name: str) -> np.ndarray:
    t = params[name]
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=np.float64)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def sh_attribute_names(degree: int) -> list[str]:
    """Attribute semantics of SH coefficient k = 0 .. (degree+1)^2 - 1, in recon's coefficient order."""
    return [f"{PREFIX}SH_DEGREE_{l}_COEF_{n}" for l in range(degree + 1) for n in range(2 * l + 1)]


def gltf_splats_builder(
    params: Mapping[str, torch.Tensor | np.ndarray],
    *,
    up: Sequence[float] | np.ndarray = DEFAULT_UP,
    scale: float = 1.0,
    name: str = "recon_splats",
    extras: dict | None = None,
) -> GltfBuilder:
    """A :class:`GltfBuilder` holding the splats (see the module docstring)."""
    world_to_gltf = world_to_gltf_matrix(up, scale)
    g = transform_gaussians(params, world_to_gltf[:3, :3] / scale, scale=scale)
    means = g["means"].numpy()
    n = len(means)
    if n == 0:
        raise ValueError("cannot write glTF splats with no Gaussians (accessors need at least one element)")
    shN = g["shN"].numpy().reshape(n, -1, 3)
    degree = math.isqrt(shN.shape[1] + 1) - 1
    if degree > 3:
        raise ValueError("KHR_gaussian_splatting stores SH up to degree 3")
    q = g["quats"].numpy().astype(np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-30)
    q_xyzw = np.concatenate([q[:, 1:], q[:, :1]], axis=1).astype(np.float32)
    lin_scale = np.exp(g["scales"].numpy().astype(np.float64)).astype(np.float32)
    opacity = (1.0 / (1.0 + np.exp(-g["opacities"].numpy().astype(np.float64)))).astype(np.float32)
    sh = np.concatenate([g["sh0"].numpy().reshape(n, 1, 3), shN], axis=1).astype(np.float32)
    rgb = srgb_to_linear(0.5 + SH_C0 * sh[:, 0].astype(np.float64))
    color = np.concatenate([rgb, opacity[:, None]], axis=1).astype(np.float32)

    info = {
        "kind": "gaussian_splats",
        "world_to_gltf": world_to_gltf.tolist(),
        "up": [float(x) for x in np.asarray(up, np.float64).reshape(3)],
        "metres_per_world_unit": float(scale),
        "sh_degree": int(degree),
        "convention": (
            "glTF frame (right-handed, +Y up) = world_to_gltf @ recon world; recon world = the training "
            "cameras' frame (OpenCV cameras: x right, y down, z forward); SH in the KHR_gaussian_splatting order"
        ),
    }
    if extras:
        info.update(extras)
    b = GltfBuilder(extras={"recon": info})
    b.use_extension(EXTENSION)
    attributes = {
        "POSITION": b.add_accessor(means.astype(np.float32), target=ARRAY_BUFFER, bounds=True),
        "COLOR_0": b.add_accessor(color, target=ARRAY_BUFFER),
        PREFIX + "ROTATION": b.add_accessor(q_xyzw, target=ARRAY_BUFFER),
        PREFIX + "SCALE": b.add_accessor(lin_scale, target=ARRAY_BUFFER),
        PREFIX + "OPACITY": b.add_accessor(opacity, target=ARRAY_BUFFER),
    }
    for k, semantic in enumerate(sh_attribute_names(degree)):
        attributes[semantic] = b.add_accessor(np.ascontiguousarray(sh[:, k]), target=ARRAY_BUFFER)
    primitive = {
        "attributes": attributes,
        "mode": POINTS,
        "extensions": {
            EXTENSION: {
                "kernel": "ellipse",
                "colorSpace": "srgb_rec709_display",
                "projection": "perspective",
                "sortingMethod": "cameraDistance",
            }
        },
    }
    mesh = b.add_mesh([primitive], name=name)
    b.add_scene([b.add_node({"mesh": mesh, "name": name})], name="recon")
    return b


def write_gltf_splats(
    path: str | Path,
    params: Mapping[str, torch.Tensor | np.ndarray],
    *,
    up: Sequence[float] | np.ndarray = DEFAULT_UP,
    scale: float = 1.0,
    extras: dict | None = None,
) -> Path:
    """Write Gaussians (recon's raw parameters) as a GLB with ``KHR_gaussian_splatting``, atomically."""
    return gltf_splats_builder(params, up=up, scale=scale, extras=extras).write(path)


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------

_COMPONENTS = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


def _load_document(path: Path) -> tuple[dict, list[bytes]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    glb_bin = b""
    if data[:4] == b"glTF":
        try:
            doc, glb_bin = read_glb(data)
        except (ValueError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(path, f"malformed GLB ({exc})") from None
    else:
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(path, f"not a glTF file ({exc})") from None
    buffers = []
    for i, buf in enumerate(doc.get("buffers", [])):
        uri = buf.get("uri")
        if uri is None:
            if i != 0 or not glb_bin:
                raise InputError(path, f"buffer {i} has no uri and there is no GLB binary chunk")
            buffers.append(glb_bin)
        elif uri.startswith("data:"):
            try:
                buffers.append(base64.b64decode(uri.split(",", 1)[1]))
            except (IndexError, ValueError):
                raise InputError(path, f"buffer {i} has a malformed data URI") from None
        else:
            try:
                buffers.append((path.parent / uri).read_bytes())
            except OSError:
                raise InputError(path, f"buffer {i} refers to {uri!r}, which cannot be read") from None
    return doc, buffers


def _accessor(path: Path, doc: dict, buffers: list[bytes], index: int) -> np.ndarray:
    """An accessor as float64 [count, width] (normalized integers mapped as glTF specifies)."""
    try:
        acc = doc["accessors"][index]
        if "sparse" in acc:
            raise InputError(path, f"accessor {index} is sparse, which is not supported for splats")
        dtype = np.dtype(_COMPONENTS[acc["componentType"]]).newbyteorder("<")
        width = _WIDTH[acc["type"]]
        count = int(acc["count"])
        view = doc["bufferViews"][acc["bufferView"]]
        buf = buffers[view["buffer"]]
    except (KeyError, IndexError, TypeError) as exc:
        raise InputError(path, f"malformed accessor {index} ({exc!r})") from None
    start = int(view.get("byteOffset", 0)) + int(acc.get("byteOffset", 0))
    elem = dtype.itemsize * width
    stride = int(view.get("byteStride", elem) or elem)
    need = start + stride * (count - 1) + elem if count else start
    if need > len(buf) or need > int(view.get("byteOffset", 0)) + int(view["byteLength"]):
        raise InputError(path, f"accessor {index} reads past the end of its buffer view")
    raw = np.ndarray((count, width), dtype=dtype, buffer=buf, offset=start, strides=(stride, dtype.itemsize))
    out = raw.astype(np.float64)
    if acc.get("normalized"):
        if dtype.kind == "u":
            out /= float(np.iinfo(dtype).max)
        else:
            out = np.maximum(out / float(np.iinfo(dtype).max), -1.0)
    return out


def _node_matrix(node: dict) -> np.ndarray:
    if "matrix" in node:
        return np.asarray(node["matrix"], np.float64).reshape(4, 4).T  # column-major in glTF
    m = np.eye(4)
    x, y, z, w = node.get("rotation", (0.0, 0.0, 0.0, 1.0))
    r = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])
    m[:3, :3] = r * np.asarray(node.get("scale", (1.0, 1.0, 1.0)), np.float64)[None, :]
    m[:3, 3] = node.get("translation", (0.0, 0.0, 0.0))
    return m


def _splat_primitives(doc: dict) -> list[tuple[dict, np.ndarray]]:
    """(primitive, global node matrix) for every splat primitive reachable from the scene(s)."""
    nodes = doc.get("nodes", [])
    scenes = doc.get("scenes", [])
    if scenes:
        roots = scenes[doc.get("scene", 0)].get("nodes", [])
    else:
        children = {c for n in nodes for c in n.get("children", [])}
        roots = [i for i in range(len(nodes)) if i not in children]
    found = []
    stack = [(int(r), np.eye(4)) for r in roots]
    while stack:
        idx, parent = stack.pop()
        node = nodes[idx]
        m = parent @ _node_matrix(node)
        if "mesh" in node:
            for prim in doc["meshes"][node["mesh"]].get("primitives", []):
                if EXTENSION in prim.get("extensions", {}):
                    found.append((prim, m))
        stack.extend((int(c), m) for c in node.get("children", []))
    return found


def read_gltf_splats(path: str | Path) -> dict[str, torch.Tensor]:
    """Read every ``KHR_gaussian_splatting`` primitive of a glTF/GLB into recon's raw parameters
    (node transforms applied; converted to recon's world as described in the module docstring)."""
    path = Path(path)
    doc, buffers = _load_document(path)
    prims = _splat_primitives(doc)
    if not prims:
        raise InputError(path, f"no mesh primitive with the {EXTENSION} extension")
    parts = []
    for prim, m in prims:
        attrs = prim.get("attributes", {})
        for need in ("POSITION", PREFIX + "ROTATION", PREFIX + "SCALE", PREFIX + "OPACITY", PREFIX + "SH_DEGREE_0_COEF_0"):
            if need not in attrs:
                raise InputError(path, f"splat primitive lacks the {need} attribute")
        degree = 0
        while all(s in attrs for s in sh_attribute_names(degree + 1)) and degree < 3:
            degree += 1
        get = lambda sem: _accessor(path, doc, buffers, attrs[sem])  # noqa: E731
        means = get("POSITION")
        n = len(means)
        q = get(PREFIX + "ROTATION")
        scales = get(PREFIX + "SCALE")
        opac = get(PREFIX + "OPACITY").reshape(-1)
        sh = np.stack([get(s) for s in sh_attribute_names(degree)], axis=1)
        if not (len(q) == len(scales) == len(opac) == len(sh) == n):
            raise InputError(path, "splat attributes have different counts")
        if (scales < 0).any() or (opac < 0).any() or (opac > 1).any():
            raise InputError(path, "splat scales must be >= 0 and opacities within [0, 1]")
        alpha = np.clip(opac, 1e-6, 1.0 - 1e-6)
        local = {
            "means": means, "quats": np.concatenate([q[:, 3:], q[:, :3]], axis=1),
            "scales": np.log(np.maximum(scales, 1e-30)), "opacities": np.log(alpha / (1.0 - alpha)),
            "sh0": sh[:, :1], "shN": sh[:, 1:],
        }
        lin = m[:3, :3]
        col = np.linalg.norm(lin, axis=0)
        if not np.allclose(col, col[0], rtol=1e-5) or col[0] <= 0:
            raise InputError(path, "splat node transforms with non-uniform scale are not supported")
        parts.append(transform_gaussians(local, lin / col[0], translation=m[:3, 3], scale=float(col[0])))
    k_min = min(p["shN"].shape[1] for p in parts)  # primitives of different SH degrees: keep the common bands
    merged = {k: torch.cat([p[k][:, :k_min] if k == "shN" else p[k] for p in parts]) for k in parts[0]}

    recon_info = doc.get("asset", {}).get("extras", {}).get("recon", {})
    world_to_gltf = recon_info.get("world_to_gltf") if isinstance(recon_info, dict) else None
    if world_to_gltf is not None:
        w2g = np.asarray(world_to_gltf, np.float64).reshape(4, 4)
        s = float(np.linalg.norm(w2g[:3, 0]))
        rot = w2g[:3, :3] / s
        # p_world = rot^T (p_gltf - t) / s
        translation = -(rot.T @ w2g[:3, 3]) / s
        return transform_gaussians(merged, rot.T, translation=translation, scale=1.0 / s)
    default = world_to_gltf_matrix(DEFAULT_UP)[:3, :3]
    return transform_gaussians(merged, default.T)
