"""Run the third-party programs that check recon's exports, in subprocesses, and return summaries.

- :func:`validate_glb`: the Khronos glTF-Validator (npm ``gltf-validator`` in tests/js) on GLB files.
- :func:`blender_import`: Blender as a Python module (PyPI ``bpy``) imports a GLB headless and reports
  its meshes, materials, textures and world-space bounds. bpy pins numpy<2 while recon uses numpy 2,
  so bpy lives in its own folder (``scripts/install_test_clients.sh`` puts it in
  ``.venv/clients/bpy``; ``$RECON_BPY_PATH`` overrides) and runs only in a child interpreter.
Both skip a test when the client is missing and fail it in CI (``require_client``).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from conftest import JS_CLIENTS, node_module, require_client

REPO = pathlib.Path(__file__).resolve().parent.parent
BPY_PATH = pathlib.Path(os.environ.get("RECON_BPY_PATH", REPO / ".venv" / "clients" / "bpy"))
_MARK = "RECON_BLENDER_SUMMARY "


def validate_glb(*paths: os.PathLike) -> list[dict]:
    """One gltf-validator report summary per file: numErrors, numWarnings, numInfos, messages, info."""
    node_module("gltf-validator")
    proc = subprocess.run(
        ["node", str(JS_CLIENTS / "validate_gltf.js"), *map(str, paths)], capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(f"validate_gltf.js failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


_BLENDER_SCRIPT = r"""
import json, sys
import bpy
from mathutils import Vector
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath=sys.argv[-1])
meshes = []
for ob in bpy.context.scene.objects:
    if ob.type != "MESH":
        continue
    me = ob.data
    corners = [ob.matrix_world @ v.co for v in me.vertices]
    lo = [min(c[i] for c in corners) for i in range(3)]
    hi = [max(c[i] for c in corners) for i in range(3)]
    mats = []
    for mat in me.materials:
        images = []
        if mat and mat.use_nodes:
            for node in mat.node_tree.nodes:
                if node.type == "TEX_IMAGE" and node.image is not None:
                    images.append({"name": node.image.name, "size": list(node.image.size)})
        mats.append({"name": mat.name if mat else None, "images": images})
    uv = None
    if me.uv_layers:
        data = me.uv_layers[0].data
        us = [d.uv[0] for d in data]; vs = [d.uv[1] for d in data]
        uv = {"name": me.uv_layers[0].name, "min": [min(us), min(vs)], "max": [max(us), max(vs)]}
    meshes.append({
        "name": ob.name, "vertices": len(me.vertices), "faces": len(me.polygons),
        "triangles": sum(len(p.vertices) - 2 for p in me.polygons),
        "bounds_min": lo, "bounds_max": hi, "dimensions": [h - l for l, h in zip(lo, hi)],
        "materials": mats, "color_attributes": [a.name for a in me.color_attributes], "uv": uv,
        "first_vertex_world": list(corners[0]) if corners else None,
    })
print("RECON_BLENDER_SUMMARY " + json.dumps({"blender": bpy.app.version_string, "meshes": meshes}))
"""


def bpy_available() -> bool:
    return (BPY_PATH / "bpy").is_dir()


def blender_import(path: os.PathLike) -> dict:
    """Import ``path`` into an empty Blender scene (headless) and summarise what arrived."""
    require_client(bpy_available(), f"bpy (Blender as a Python module) in {BPY_PATH}")
    env = dict(os.environ, PYTHONPATH=str(BPY_PATH))
    proc = subprocess.run(
        [sys.executable, "-c", _BLENDER_SCRIPT, str(path)], capture_output=True, text=True, timeout=600, env=env
    )
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    raise RuntimeError(f"Blender import failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
