"""A single self-contained HTML file that shows a scene in any WebGL2 browser, offline.

``recon-export html RUN`` writes one ``.html`` file: the viewer's JavaScript and shaders inline, the
scene embedded as one base64 blob, no external URL anywhere, so it opens from ``file://`` (mail it,
put it on a USB stick) with no server and no network.

Why our own small viewer (``html_viewer/viewer.js``, written for recon) instead of a bundled one:

- viser's static export (``scene.as_html()``) packs splats as 32 bytes with no spherical harmonics
  and draws them with its own three.js shader, so its picture differs from recon's by construction;
  npm viewers (Spark, SuperSplat) need a build step to inline into one file and bring 0.5-2 MB of
  code. Here the viewer is ~800 lines of plain JavaScript that renders with *recon's* conventions:
  the OpenCV pinhole camera of the dataset (same intrinsics, same pixel centres), the EWA projection
  with the same clamped Jacobian, 0.3 px^2 low-pass, opacity-aware 3.33-sigma extent, alpha
  1/255..0.99 and SH up to degree 3 (``shared/notes/rasterizers.md`` a.3). That is what lets a test
  demand that the browser's picture matches ``GaussianScene.render`` of the same camera.
- Splats are instanced screen-space quads, sorted back to front on the CPU (16-bit counting sort of
  camera depth, in a Web Worker made from the page's own code) whenever the view changes, blended with premultiplied "over" (equal to recon's
  front-to-back compositing up to its early stop at transmittance 1e-4).
- Meshes are recon's own GLB files (:mod:`recon.export.gltf`), embedded byte for byte and parsed in
  the page; the recon-world <- glTF transform comes from the file's ``asset.extras.recon.world_to_gltf``
  so meshes and splats share the cameras.

What is embedded (struct of arrays, each section 4-byte aligned, little-endian), per Gaussian:
``means`` float32 x3; ``log_scales`` float16 x3; ``quats`` float16 x4 (normalised wxyz);
``opacities`` float16 (after sigmoid); ``dc`` float16 x3 (``SH_C0 * sh0``, so colour = dc + 0.5 + the
higher bands); ``sh_rest`` int8 x (K-1) x 3 scaled by one file-wide ``sh_rest_scale`` (the 99.9th
percentile of |shN|, clipped beyond) — 34 bytes per Gaussian plus 9/24/45 bytes for SH degree 1/2/3.
Scenes above ``max_splats`` keep the Gaussians with the largest ``opacity x (two largest scales)``
(an estimate of how much of the picture each one covers).

The initial view is the scene's first held-out camera (or a camera in the URL:
``#cam=<url-encoded JSON {c2w: 4x4 OpenCV camera-to-world, fx, fy, cx, cy, width, height}>``); the
image is fitted into the window with its aspect ratio kept. ``n``/``p`` step through all the
dataset's cameras; drag orbits about the up direction (estimated from the cameras), shift/right drag
pans, the wheel zooms.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from recon.errors import InputError
from recon.utils.atomic import atomic_path

VIEWER_DIR = Path(__file__).resolve().parent / "html_viewer"
DEFAULT_MAX_SPLATS = 1_000_000
SH_C0 = 0.28209479177387814
EPS2D = 0.3  # recon.rasterizers.types.RasterSettings.eps2d: the viewer uses the same low-pass


@dataclass
class ViewerCamera:
    """An OpenCV pinhole camera as the page takes it (``c2w`` 4x4 camera-to-world, x right, y down, z forward)."""

    c2w: np.ndarray
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    name: str = ""

    @classmethod
    def from_camera(cls, camera: Any) -> "ViewerCamera":
        """From a :class:`recon.datasets.cameras.Camera` (or anything with the same fields)."""
        return cls(np.asarray(camera.c2w, dtype=np.float64).reshape(4, 4), float(camera.fx), float(camera.fy),
                   float(camera.cx), float(camera.cy), int(camera.width), int(camera.height), str(getattr(camera, "name", "")))

    def to_json(self) -> dict:
        return {
            "name": self.name, "c2w": [[float(x) for x in row] for row in np.asarray(self.c2w).reshape(4, 4)],
            "fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy, "width": self.width, "height": self.height,
        }

    def url_fragment(self) -> str:
        """``#cam=...`` that makes the page start at exactly this camera."""
        from urllib.parse import quote

        cam = self.to_json()
        cam.pop("name")
        return "#cam=" + quote(json.dumps(cam, separators=(",", ":")), safe="")


@dataclass
class _Blob:
    """Sections of the embedded binary: name -> (offset, length, dtype, shape)."""

    parts: list[bytes] = field(default_factory=list)
    sections: dict[str, dict] = field(default_factory=dict)
    size: int = 0

    def add(self, name: str, array: np.ndarray) -> None:
        a = np.ascontiguousarray(array)
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()  # the page reads little-endian
        self.sections[name] = {"offset": self.size, "length": len(data), "dtype": a.dtype.name, "shape": list(a.shape)}
        pad = (-len(data)) % 4  # typed-array views need aligned offsets
        self.parts.append(data + b"\0" * pad)
        self.size += len(data) + pad

    def base64(self) -> str:
        return base64.b64encode(b"".join(self.parts)).decode("ascii")


def _numpy(t: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().to("cpu", torch.float32).numpy()
    return np.asarray(t, dtype=np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


def select_gaussians(params: Mapping[str, Any], max_splats: int | None) -> np.ndarray:
    """Indices of the Gaussians to keep: all of them, or the ``max_splats`` with the largest
    ``sigmoid(opacity) * exp(two largest log-scales)`` (visible area x opacity), in their original order."""
    n = int(np.shape(params["means"])[0])
    if max_splats is None or n <= max_splats:
        return np.arange(n)
    if max_splats < 1:
        raise ValueError(f"max_splats must be >= 1, got {max_splats}")
    logs = np.sort(_numpy(params["scales"]).reshape(n, 3), axis=1)
    opacity = _sigmoid(_numpy(params["opacities"]).reshape(n))
    score = np.log(np.maximum(opacity, 1e-12)) + logs[:, 1] + logs[:, 2]
    keep = np.argpartition(-score, max_splats - 1)[:max_splats]
    return np.sort(keep)


def pack_gaussians(
    params: Mapping[str, Any], blob: _Blob, *, max_splats: int | None = DEFAULT_MAX_SPLATS, sh_degree: int | None = None
) -> tuple[dict, np.ndarray]:
    """Quantise recon's raw Gaussian parameters into ``blob``; returns the page's ``gaussians``
    metadata and the kept centres."""
    means = _numpy(params["means"]).reshape(-1, 3)
    n_all = len(means)
    shN = _numpy(params["shN"]).reshape(n_all, -1, 3) if "shN" in params else np.zeros((n_all, 0, 3), np.float32)
    degree_in = math.isqrt(shN.shape[1] + 1) - 1
    degree = degree_in if sh_degree is None else max(0, min(int(sh_degree), degree_in, 3))
    keep = select_gaussians(params, max_splats)
    n = len(keep)
    means = means[keep]
    quats = _numpy(params["quats"]).reshape(n_all, 4)[keep].astype(np.float64)
    quats /= np.maximum(np.linalg.norm(quats, axis=1, keepdims=True), 1e-12)
    log_scales = _numpy(params["scales"]).reshape(n_all, 3)[keep]
    opacity = _sigmoid(_numpy(params["opacities"]).reshape(n_all)[keep].astype(np.float64))
    dc = SH_C0 * _numpy(params["sh0"]).reshape(n_all, 3)[keep]
    finite = np.isfinite(means).all(1) & np.isfinite(log_scales).all(1) & np.isfinite(quats).all(1) & np.isfinite(opacity)
    if not finite.all():
        raise ValueError(f"{int((~finite).sum())} Gaussians have NaN or infinite parameters")
    blob.add("means", means.astype(np.float32))
    blob.add("log_scales", np.clip(log_scales, -60000, 60000).astype(np.float16))
    blob.add("quats", quats.astype(np.float16))
    blob.add("opacities", opacity.astype(np.float16))
    blob.add("dc", np.clip(dc, -60000, 60000).astype(np.float16))
    meta: dict[str, Any] = {"count": n, "total": n_all, "sh_degree": degree, "sh_rest_scale": 0.0}
    k = (degree + 1) ** 2 - 1
    if k > 0:
        rest = shN[keep, :k, :].reshape(n, k * 3)
        scale = float(np.quantile(np.abs(rest), 0.999)) if rest.size else 0.0
        scale = max(scale, float(np.abs(rest).max()) * 1e-3, 1e-8)
        q = np.clip(np.round(rest / scale * 127.0), -127, 127).astype(np.int8)
        blob.add("sh_rest", q)
        meta["sh_rest_scale"] = scale
    return meta, means


def _glb_model_matrix(glb: bytes, source: str) -> list[float]:
    """Column-major 4x4 recon world <- glTF for a recon GLB (identity for GLB files from elsewhere)."""
    from recon.export.gltf import read_glb

    try:
        doc, _ = read_glb(glb)
    except ValueError as exc:
        raise InputError(source, str(exc)) from None
    recon_extras = (doc.get("asset", {}).get("extras") or {}).get("recon") or {}
    world_to_gltf = recon_extras.get("world_to_gltf")
    m = np.eye(4) if world_to_gltf is None else np.linalg.inv(np.asarray(world_to_gltf, dtype=np.float64).reshape(4, 4))
    return [float(x) for x in m.T.reshape(-1)]


def _glb_positions(glb: bytes, model_col_major: Sequence[float]) -> np.ndarray:
    """World-space vertex positions of a GLB's triangle meshes (for bounds and default cameras)."""
    from recon.export.gltf import read_glb

    doc, binary = read_glb(glb)
    out = []
    for mesh in doc.get("meshes", []):
        for prim in mesh.get("primitives", []):
            acc = doc["accessors"][prim["attributes"]["POSITION"]]
            if acc.get("componentType") != 5126 or "bufferView" not in acc:
                continue
            view = doc["bufferViews"][acc["bufferView"]]
            stride = view.get("byteStride") or 12
            start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
            rows = start + np.arange(acc["count"])[:, None] * stride + np.arange(12)[None, :]
            pts = np.frombuffer(binary, dtype=np.uint8)[rows].view("<f4")
            out.append(np.array(pts, dtype=np.float64))
    if not out:
        return np.zeros((0, 3))
    pts = np.concatenate(out)
    m = np.asarray(model_col_major, dtype=np.float64).reshape(4, 4).T  # node transforms: recon writes none
    return pts @ m[:3, :3].T + m[:3, 3]


def _bounds(points: np.ndarray) -> dict:
    """Robust centre and radius (2nd..98th percentile box) of the scene content."""
    if len(points) == 0:
        return {"center": [0.0, 0.0, 0.0], "radius": 1.0}
    lo, hi = np.percentile(points, 2, axis=0), np.percentile(points, 98, axis=0)
    centre = (lo + hi) / 2
    radius = float(max(np.linalg.norm(hi - lo) / 2, 1e-6))
    return {"center": [float(x) for x in centre], "radius": radius}


def default_camera(bounds: dict, up: Sequence[float], width: int = 1280, height: int = 720) -> ViewerCamera:
    """A camera looking at the scene's centre from 2.5 radii away, 25 degrees above the horizon."""
    up = np.asarray(up, dtype=np.float64)
    up /= np.linalg.norm(up)
    centre = np.asarray(bounds["center"], dtype=np.float64)
    side = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    side /= np.linalg.norm(side)
    el = math.radians(25.0)
    eye = centre + 2.5 * bounds["radius"] * (math.cos(el) * side + math.sin(el) * up)
    forward = centre - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)  # OpenCV axes: right x down = forward, down ~ -up
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    f = 0.5 * width / math.tan(math.radians(50.0) / 2)
    return ViewerCamera(c2w, f, f, width / 2, height / 2, width, height, "default")


def _up_from_cameras(cameras: Sequence[ViewerCamera]) -> np.ndarray | None:
    if not cameras:
        return None
    up = -np.mean([np.asarray(c.c2w)[:3, 1] for c in cameras], axis=0)
    n = np.linalg.norm(up)
    return up / n if n > 1e-6 else None


def build_page(
    *,
    gaussians: Mapping[str, Any] | None = None,
    meshes: Sequence[bytes] = (),
    cameras: Sequence[Any] = (),
    initial_camera: int = 0,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    up: Sequence[float] | None = None,
    title: str = "recon scene",
    max_splats: int | None = DEFAULT_MAX_SPLATS,
    sh_degree: int | None = None,
    mesh_names: Sequence[str] = (),
) -> tuple[str, dict]:
    """The HTML page (a string) and the metadata embedded in it.

    - ``gaussians``: recon's raw Gaussian parameters (``GaussianScene.params`` or what
      :func:`recon.export.formats.read_splats` returns), or None;
    - ``meshes``: GLB files (bytes), e.g. written by :func:`recon.export.gltf.write_mesh_glb`;
    - ``cameras``: dataset cameras (:class:`recon.datasets.cameras.Camera` or :class:`ViewerCamera`),
      ``initial_camera`` the index to start at; without cameras one is placed around the content;
    - ``up``: world up for orbiting (default: from the cameras; else -y, the OpenCV/COLMAP habit).
    """
    if gaussians is None and not meshes:
        raise ValueError("nothing to show: pass Gaussians and/or meshes")
    blob = _Blob()
    meta: dict[str, Any] = {"format": "recon-html-viewer/1", "eps2d": EPS2D,
                            "background": [float(x) for x in background][:3]}
    content: list[np.ndarray] = []
    if gaussians is not None:
        meta["gaussians"], kept_means = pack_gaussians(gaussians, blob, max_splats=max_splats, sh_degree=sh_degree)
        content.append(kept_means.astype(np.float64))
    meta["meshes"] = []
    for i, glb in enumerate(meshes):
        name = mesh_names[i] if i < len(mesh_names) else f"mesh {i}"
        model = _glb_model_matrix(glb, name)
        blob.add(f"mesh{i}", np.frombuffer(bytes(glb), dtype=np.uint8))
        meta["meshes"].append({"section": f"mesh{i}", "model": model, "name": name})
        content.append(_glb_positions(glb, model))
    points = np.concatenate(content) if content else np.zeros((0, 3))
    meta["bounds"] = _bounds(points)
    cams = [c if isinstance(c, ViewerCamera) else ViewerCamera.from_camera(c) for c in cameras]
    if up is None:
        up_vec = _up_from_cameras(cams)
        if up_vec is None:
            # recon GLBs are Y-up with a world transform we undo; splat worlds follow OpenCV/COLMAP (-y up)
            up_vec = np.array([0.0, -1.0, 0.0]) if gaussians is not None or not meshes else np.asarray(
                np.asarray(meta["meshes"][0]["model"]).reshape(4, 4).T[:3, :3] @ [0.0, 1.0, 0.0])
    else:
        up_vec = np.asarray(up, dtype=np.float64)
    up_vec = up_vec / np.linalg.norm(up_vec)
    meta["up"] = [float(x) for x in up_vec]
    if not cams:
        cams = [default_camera(meta["bounds"], up_vec)]
        initial_camera = 0
    if not 0 <= initial_camera < len(cams):
        raise ValueError(f"initial_camera {initial_camera} out of range (0..{len(cams) - 1})")
    meta["cameras"] = [c.to_json() for c in cams]
    meta["initial_camera"] = int(initial_camera)
    meta["sections"] = blob.sections
    summary = []
    if gaussians is not None:
        summary.append(f"{meta['gaussians']['count']:,} splats")
    if meshes:
        summary.append(f"{len(meshes)} mesh{'es' if len(meshes) > 1 else ''}")
    page = _fill_template(
        title=title, summary=" + ".join(summary), background=meta["background"], meta=meta, data=blob.base64(),
    )
    return page, meta


def build_html(**kwargs: Any) -> str:
    """The complete HTML page as a string (the keyword arguments of :func:`build_page`)."""
    return build_page(**kwargs)[0]


def _fill_template(*, title: str, summary: str, background: Sequence[float], meta: dict, data: str) -> str:
    import html as html_escape

    template = (VIEWER_DIR / "template.html").read_text(encoding="utf-8")
    js = (VIEWER_DIR / "viewer.js").read_text(encoding="utf-8")
    # JSON inside <script>: "</" would end the element early.
    meta_json = json.dumps(meta, separators=(",", ":")).replace("</", "<\\/")
    if "</script" in js.lower():
        raise AssertionError("viewer.js must not contain a closing script tag")
    bg = "rgb({}, {}, {})".format(*(int(round(min(max(c, 0.0), 1.0) * 255)) for c in background))
    values = {
        "@@RECON_TITLE@@": html_escape.escape(title), "@@RECON_BACKGROUND@@": bg,
        "@@RECON_SUMMARY@@": html_escape.escape(summary), "@@RECON_META@@": meta_json,
        "@@RECON_DATA@@": data, "@@RECON_VIEWER_JS@@": js,
    }
    # One pass over the template, so no inserted text is ever searched for markers.
    import re

    return re.sub("|".join(re.escape(k) for k in values), lambda m: values[m.group(0)], template)


def write_html_text(path: str | Path, text: str) -> Path:
    """Write a page atomically (a complete file or none), UTF-8."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_html(path: str | Path, **kwargs: Any) -> Path:
    """:func:`build_html` (same keyword arguments) written to ``path`` atomically (a complete file or none). Returns ``path``."""
    return write_html_text(path, build_html(**kwargs))


def _is_mesh_glb(path: Path) -> bool:
    """A .glb/.gltf holding triangle meshes rather than KHR_gaussian_splatting points."""
    if path.suffix.lower() not in (".glb", ".gltf") or not path.is_file():
        return False
    from recon.export.gltf import read_glb

    data = path.read_bytes()
    try:
        doc, _ = read_glb(data) if data[:4] == b"glTF" else (json.loads(data), b"")
    except (ValueError, UnicodeDecodeError):
        return False
    return "KHR_gaussian_splatting" not in doc.get("extensionsUsed", [])


def _read_mesh_glb(path: Path) -> bytes:
    from recon.export.gltf import read_glb

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    try:
        read_glb(data)
    except ValueError as exc:
        raise InputError(path, f"{exc} (the viewer embeds binary .glb meshes)") from None
    return data


def _run_cameras(run_cfg: Any) -> tuple[list, int, tuple | None, str | None]:
    """(cameras, index of the first held-out one, the dataset's background, note) of a run; no
    cameras when the data cannot be loaded any more (moved or deleted): the page then places its own."""
    from recon.datasets.loader import load_scene

    try:
        data = load_scene(run_cfg.data, check_images=False)
    except (InputError, OSError, ValueError) as exc:
        return [], 0, None, f"the run's dataset could not be loaded ({exc}); the page starts from a default view"
    _, test = data.split(run_cfg.holdout_every)
    background = data.extras.get("demo", {}).get("background")  # as recon.training.trainer.prepare_data
    return list(data.cameras), (test[0] if test else 0), background, None


def export_html(
    source: str | Path,
    output: str | Path | None = None,
    *,
    checkpoint: str = "latest",
    meshes: Sequence[str | Path] = (),
    max_splats: int | None = DEFAULT_MAX_SPLATS,
    sh_degree: int | None = None,
    background: Sequence[float] | None = None,
    up: Sequence[float] | None = None,
    title: str | None = None,
) -> tuple[Path, dict]:
    """What ``recon-export html`` does: the viewer page of a run (Gaussians, its dataset's cameras,
    starting at the first held-out view, the run's background), of a splat file (.ply, .spz,
    .splat, .compressed.ply, glTF splats) or of a mesh .glb; ``meshes`` adds more GLB meshes.
    Returns (output path, summary). Bad input raises :class:`InputError` before anything is written."""
    source = Path(source).expanduser()
    if max_splats is not None and max_splats < 1:
        raise InputError(None, f"--max-splats must be at least 1, got {max_splats}")
    if output is not None and Path(output).suffix.lower() not in (".html", ".htm"):
        raise InputError(output, "the output file must end in .html")
    mesh_paths = [Path(m).expanduser() for m in meshes]
    gaussians = None
    cameras: list = []
    initial = 0
    notes: list[str] = []
    default_background: Sequence[float] = (0.0, 0.0, 0.0)
    if _is_mesh_glb(source):
        mesh_paths.insert(0, source)
        out = Path(output) if output else source.with_suffix(".html")
        default_background = (1.0, 1.0, 1.0)
    elif source.is_file() and source.suffix.lower() != ".pt":
        from recon.export.formats import read_splats

        gaussians = read_splats(source)
        base = source.name.removesuffix(".compressed.ply")
        out = Path(output) if output else source.with_name(Path(base).stem + ".html")
    else:
        from recon.cli.runs import load_run, run_dir_of

        scene, run_cfg, _, ckpt_path = load_run(source, checkpoint, "cpu")
        params = getattr(scene, "params", {})
        if "sh0" in params and "means" in params:
            gaussians = {k: v.detach() for k, v in params.items()}
        elif not mesh_paths:
            raise InputError(ckpt_path, "this run's scene is not Gaussian splats; export a mesh first "
                             "(recon-export mesh) and pass it with --mesh")
        cameras, initial, data_background, note = _run_cameras(run_cfg)
        if note:
            notes.append(note)
        if run_cfg.background is not None:  # the background the run was trained and evaluated with
            default_background = tuple(run_cfg.background)
        elif data_background is not None:
            default_background = tuple(data_background)
        out = Path(output) if output else run_dir_of(ckpt_path) / "export" / "scene.html"
        title = title or f"recon: {Path(str(run_cfg.data)).name} ({getattr(run_cfg, 'method', 'gaussians')})"
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError(out, "the output file must end in .html")
    glbs = [_read_mesh_glb(p) for p in mesh_paths]
    bg = tuple(float(x) for x in (background if background is not None else default_background))
    if up is not None and not (len(up) == 3 and np.all(np.isfinite(up)) and np.linalg.norm(up) > 1e-9):
        raise InputError(None, f"--up must be a non-zero direction (three numbers), got {list(up)}")
    if len(bg) != 3 or not all(0.0 <= x <= 1.0 for x in bg):
        raise InputError(None, f"--background must be three numbers in 0..1, got {list(bg)}")
    try:
        text, meta = build_page(
            gaussians=gaussians, meshes=glbs, mesh_names=[p.name for p in mesh_paths], cameras=cameras,
            initial_camera=initial, background=bg, title=title or f"recon: {source.name}",
            max_splats=max_splats, sh_degree=sh_degree, up=up,
        )
    except ValueError as exc:
        raise InputError(source, str(exc)) from None
    write_html_text(out, text)
    g = meta.get("gaussians") or {}
    summary = {
        "splats": int(g.get("count", 0)), "splats_total": int(g.get("total", 0)), "sh_degree": g.get("sh_degree"),
        "meshes": len(glbs), "cameras": len(meta["cameras"]), "bytes": len(text.encode("utf-8")), "notes": notes,
    }
    return out, summary


__all__ = ["ViewerCamera", "build_page", "build_html", "write_html", "export_html", "pack_gaussians", "select_gaussians", "default_camera", "DEFAULT_MAX_SPLATS"]
