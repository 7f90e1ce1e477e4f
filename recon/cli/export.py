"""``recon-export``: write a trained scene in formats other tools load.

``recon-export ply RUN`` writes the standard 3DGS PLY (f_dc_*, f_rest_*, opacity, scale_*, rot_*)
that common splat viewers open. ``recon-export splats RUN|FILE --format spz|splat|gltf|compressed_ply|ply``
writes the other splat formats (:mod:`recon.export.formats`), from a run or by converting a splat file
trained elsewhere. ``recon-export mesh RUN`` writes a textured triangle mesh (GLB) by TSDF fusion of the
scene's rendered depth (:mod:`recon.export.tsdf`, :mod:`recon.export.texture`). ``recon-export html RUN``
writes one self-contained HTML viewer file that opens offline (:mod:`recon.export.html`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro
from rich.console import Console

from recon.cli.common import run_cli


@dataclass
class PlyExport:
    """Export Gaussians as a 3DGS PLY file."""

    run: tyro.conf.Positional[Path]
    """Run folder or checkpoint file."""
    output: Path | None = None
    """Output .ply path. Default: <run>/export/point_cloud.ply."""
    checkpoint: Literal["best", "latest"] = "latest"


def export_ply(cfg: PlyExport) -> int:
    from recon.cli.runs import load_run, run_dir_of

    scene, _, _, ckpt_path = load_run(cfg.run, cfg.checkpoint, "cpu")
    run_dir = run_dir_of(ckpt_path)
    out = cfg.output or (run_dir / "export" / "point_cloud.ply")
    scene.export(out)
    Console().print(f"wrote {out} ({scene.num_primitives:,} Gaussians)", highlight=False)
    return 0


@dataclass
class SplatsExport:
    """Export Gaussians as SPZ, .splat, glTF (KHR_gaussian_splatting), SuperSplat compressed PLY or 3DGS
    PLY, from a run or by converting a splat file (.ply, .compressed.ply, .spz, .splat, .glb, .gltf)."""

    source: tyro.conf.Positional[Path]
    """Run folder, checkpoint file, or a splat file to convert."""
    format: Literal["spz", "splat", "gltf", "compressed_ply", "ply"] = "spz"
    output: Path | None = None
    """Output path. Default: <run>/export/point_cloud.<ext>, or next to a converted file."""
    checkpoint: Literal["best", "latest"] = "latest"
    up: tuple[float, float, float] | None = None
    """glTF only: the world's up direction (rotated to glTF's +Y). Default: estimated from the run's
    cameras; (0, -1, 0), the 3DGS PLY convention, for converted files or when the cameras are gone."""
    scale: float = 1.0
    """glTF only: metres per world unit."""


def _is_splat_file(path: Path) -> bool:
    from recon.export.formats import format_from_name

    return path.is_file() and format_from_name(path) is not None


def _run_up_vector(cfg) -> tuple[float, float, float] | None:
    """Up from the run's training cameras (None when its data cannot be loaded any more)."""
    from recon.datasets.loader import load_scene
    from recon.errors import InputError
    from recon.export.gltf import scene_up_vector

    try:
        return tuple(float(x) for x in scene_up_vector(load_scene(cfg.data, check_images=False)))
    except (InputError, OSError, ValueError):
        return None


def export_splats(cfg: SplatsExport) -> int:
    from recon.export.formats import SUFFIX, read_splats, write_splats
    from recon.export.gltf_splats import DEFAULT_UP

    console = Console()
    up = cfg.up
    if _is_splat_file(cfg.source):
        params = read_splats(cfg.source)
        base = cfg.source.name.removesuffix(".compressed.ply")
        out = cfg.output or cfg.source.with_name(Path(base).stem + SUFFIX[cfg.format])
        if out.resolve() == cfg.source.resolve():
            from recon.errors import InputError

            raise InputError(out, "output would overwrite the input file; pass --output")
    else:
        from recon.cli.runs import load_run, run_dir_of

        scene, run_cfg, _, ckpt_path = load_run(cfg.source, cfg.checkpoint, "cpu")
        if not hasattr(scene, "params") or "sh0" not in scene.params:
            from recon.errors import InputError

            raise InputError(ckpt_path, "this run's scene is not Gaussian splats; splat formats need 3D Gaussians")
        params = {k: v.detach() for k, v in scene.params.items()}
        out = cfg.output or (run_dir_of(ckpt_path) / "export" / ("point_cloud" + SUFFIX[cfg.format]))
        if cfg.format == "gltf" and up is None:
            up = _run_up_vector(run_cfg)
            if up is None:
                console.print("note: the run's cameras could not be loaded; glTF up = (0, -1, 0)", highlight=False)
    options = {}
    if cfg.format == "gltf":
        options = {"up": up if up is not None else DEFAULT_UP, "scale": cfg.scale}
    write_splats(params, out, cfg.format, **options)
    console.print(f"wrote {out} ({params['means'].shape[0]:,} Gaussians, {cfg.format})", highlight=False)
    return 0


@dataclass
class MeshExport:
    """Export a triangle mesh (GLB): TSDF fusion of the scene's rendered depth from the training
    cameras, clean-up, decimation, UV unwrap and a texture baked from the training images."""

    run: tyro.conf.Positional[Path]
    """Run folder or checkpoint file."""
    output: Annotated[Path | None, tyro.conf.arg(aliases=("-o",))] = None
    """Output .glb path. Default: <run>/export/mesh.glb."""
    checkpoint: Literal["best", "latest"] = "latest"
    target: Literal["gltf", "blender", "godot", "unity", "unreal"] = "gltf"
    """Importer the file is meant for. Every one reads standard glTF (Y-up, metres) and converts
    itself, so this is recorded in the file and changes nothing else (docs/mesh_export.md)."""
    faces: int = 200_000
    """Face budget after decimation."""
    texture_size: int = 2048
    """Edge of the square baked base-colour texture, in texels."""
    vertex_colors: bool = False
    """Write vertex colours (COLOR_0) instead of a UV atlas and a baked texture."""
    mesh_resolution: int = 512
    """TSDF voxels across the depth range (voxel = 2 x camera rig radius / this)."""
    voxel_size: float | None = None
    """TSDF voxel edge in world units (overrides --mesh-resolution)."""
    up: tuple[float, float, float] | None = None
    """The world's up direction (rotated to glTF's +Y). Default: estimated from the cameras."""
    scale: float = 1.0
    """Metres per world unit."""
    data: str | None = None
    """Override the dataset path stored in the run (e.g. the data moved)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"


def export_mesh(cfg: MeshExport) -> int:
    import dataclasses

    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn

    from recon.errors import InputError

    if cfg.faces < 1:
        raise InputError(None, f"--faces must be >= 1 (got {cfg.faces})")
    if not cfg.vertex_colors and cfg.texture_size < 4:
        raise InputError(None, f"--texture-size must be >= 4 (got {cfg.texture_size})")
    if cfg.mesh_resolution < 8:
        raise InputError(None, f"--mesh-resolution must be >= 8 (got {cfg.mesh_resolution})")
    if cfg.voxel_size is not None and not cfg.voxel_size > 0:
        raise InputError(None, f"--voxel-size must be positive (got {cfg.voxel_size})")
    if not cfg.scale > 0:
        raise InputError(None, f"--scale must be positive (got {cfg.scale})")
    if cfg.up is not None and not np.linalg.norm(cfg.up) > 0:
        raise InputError(None, "--up must be a non-zero vector")

    from recon.cli.runs import load_run, run_dir_of
    from recon.export.gltf import scene_up_vector
    from recon.training.trainer import prepare_data

    console = Console()
    scene, train_cfg, _, ckpt_path = load_run(cfg.run, cfg.checkpoint, "cpu")
    if cfg.data is not None:
        train_cfg = dataclasses.replace(train_cfg, data=cfg.data)
    device = dataclasses.replace(train_cfg, device=cfg.device).resolved_device()
    if device != "cpu":
        scene = scene.to(device)
    out = cfg.output or (run_dir_of(ckpt_path) / "export" / "mesh.glb")
    _check_output_file(out, ".glb")  # before minutes of work, not after
    data = prepare_data(dataclasses.replace(train_cfg, progress=True), device)
    views = data.train_views or data.test_views
    cameras = [v.camera for v in views]
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # The stages raise ValueError for scenes they cannot mesh (nothing opaque, no view sees the
    # surface, cameras with no common up): a problem of this run, reported as one line naming it.
    try:
        up = cfg.up if cfg.up is not None else scene_up_vector(cameras)
        mesh = _mesh_pipeline(cfg, scene, views, data.background, up, ckpt_path, train_cfg, out, console, columns)
    except ValueError as exc:
        raise InputError(ckpt_path, f"cannot export a mesh of this scene: {exc}") from None
    except OSError as exc:  # the output folder vanished or filled up while we worked (nothing written)
        raise InputError(out, f"cannot write the mesh ({exc.strerror or exc})") from None
    kind = f"{cfg.texture_size}x{cfg.texture_size} texture" if not cfg.vertex_colors else "vertex colours"
    console.print(f"wrote {out} ({mesh.num_vertices:,} vertices, {mesh.num_faces:,} faces, {kind}, target {cfg.target})",
                  highlight=False)
    return 0


def _check_output_file(out: Path, suffix: str) -> None:
    """Fail early when ``out`` cannot be written: another suffix, a folder in its place, or a parent
    folder that cannot be created (a file in the way, no permission)."""
    import os

    from recon.errors import InputError

    if out.suffix.lower() != suffix:
        raise InputError(out, f"the output must be a {suffix} file")
    if out.is_dir():
        raise InputError(out, "is a folder; give the path of the file to write")
    ancestor = out.parent
    while not ancestor.exists() and ancestor.parent != ancestor:  # the folders the writer would create
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(out, f"cannot create the output folder: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(out, f"cannot write into {ancestor} (permission denied)")


def _mesh_pipeline(cfg: MeshExport, scene, views, background, up, ckpt_path, train_cfg, out, console, columns):
    """Render + fuse, clean, decimate, unwrap + bake (or vertex colours), write: each a progress stage,
    and one line with the seconds each took at the end."""
    import time

    from rich.progress import Progress

    from recon.export.gltf import write_mesh_glb
    from recon.export.mesh import clean_mesh, decimate, unwrap_uvs
    from recon.export.texture import bake_texture
    from recon.export.tsdf import TsdfConfig, mesh_from_scene

    cameras = [v.camera for v in views]
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with Progress(*columns, console=console, transient=False) as progress:

        def timed(name, fn, *args, **kw):
            t0 = time.perf_counter()
            result = fn(*args, **kw)
            timings[name] = time.perf_counter() - t0
            return result

        def stage(name, description, fn, *args, **kw):
            task = progress.add_task(description, total=1)
            result = timed(name, fn, *args, **kw)
            progress.update(task, completed=1)
            return result

        tsdf = TsdfConfig(voxel_size=cfg.voxel_size, mesh_resolution=cfg.mesh_resolution)
        raw = mesh_from_scene(scene, cameras, tsdf, background=background, progress=progress, timings=timings)
        mesh = stage("clean", "clean (largest component, small holes)", clean_mesh, raw)
        mesh = stage("decimate", f"decimate to {cfg.faces:,} faces", decimate, mesh, cfg.faces)
        if not cfg.vertex_colors:
            mesh = stage("unwrap", f"UV unwrap (xatlas, {mesh.num_faces:,} faces)", unwrap_uvs, mesh,
                         resolution=cfg.texture_size)
            images = [(v.camera, v.image.detach().float().cpu().numpy()) for v in views]
            mesh = timed("bake", bake_texture, mesh, images, size=cfg.texture_size, progress=progress)
            mesh = mesh.replace(vertex_colors=None)
        extras = {"source_checkpoint": str(ckpt_path), "method": getattr(train_cfg, "method", None)}
        stage("write", "write GLB", write_mesh_glb, mesh, out, target=cfg.target, up=up, scale=cfg.scale, extras=extras)
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
    console.print(f"stage times: {parts} (total {time.perf_counter() - start:.1f} s)", highlight=False, soft_wrap=True)
    return mesh


@dataclass
class HtmlExport:
    """Export one self-contained HTML file that shows the scene in a browser, offline (no server,
    nothing fetched): splats and/or GLB meshes, starting at the first held-out camera."""

    source: tyro.conf.Positional[Path]
    """Run folder, checkpoint file, splat file (.ply .spz .splat .compressed.ply, glTF splats) or mesh .glb."""
    output: Annotated[Path | None, tyro.conf.arg(aliases=("-o",))] = None
    """Output .html path. Default: <run>/export/scene.html, or next to the input file."""
    max_splats: int = 1_000_000
    """Keep at most this many Gaussians (the ones covering the most of the picture)."""
    sh_degree: int | None = None
    """Highest SH degree to embed (default: the scene's; 0 makes the file about half as large)."""
    mesh: tuple[Path, ...] = ()
    """More GLB meshes (recon-export mesh) to show with the scene."""
    background: tuple[float, float, float] | None = None
    """Background colour in 0..1. Default: the run's (white for the demo); black for files, white for meshes."""
    up: tuple[float, float, float] | None = None
    """World up for orbiting and the start view. Default: from the run's cameras; -y (COLMAP habit)
    for splat files; the GLB's own up for meshes."""
    checkpoint: Literal["best", "latest"] = "latest"


def export_html(cfg: HtmlExport) -> int:
    from recon.export.html import export_html as write_page

    out, info = write_page(cfg.source, cfg.output, checkpoint=cfg.checkpoint, meshes=cfg.mesh,
                           max_splats=cfg.max_splats, sh_degree=cfg.sh_degree, background=cfg.background, up=cfg.up)
    console = Console()
    for note in info["notes"]:
        console.print(f"note: {note}", highlight=False)
    what = [f"{info['splats']:,} of {info['splats_total']:,} Gaussians, SH degree {info['sh_degree']}"] if info["splats"] else []
    what += [f"{info['meshes']} mesh(es)"] if info["meshes"] else []
    console.print(f"wrote {out} ({info['bytes'] / 1e6:.1f} MB: {', '.join(what)}; {info['cameras']} camera(s))",
                  highlight=False)
    return 0


def main() -> int:
    cmd = tyro.extras.subcommand_cli_from_dict(
        {"ply": PlyExport, "splats": SplatsExport, "mesh": MeshExport, "html": HtmlExport}
    )
    if isinstance(cmd, HtmlExport):
        return export_html(cmd)
    if isinstance(cmd, PlyExport):
        return export_ply(cmd)
    if isinstance(cmd, SplatsExport):
        return export_splats(cmd)
    if isinstance(cmd, MeshExport):
        return export_mesh(cmd)
    raise AssertionError(f"unhandled export command {cmd!r}")


def entrypoint() -> None:
    run_cli(main)


if __name__ == "__main__":
    entrypoint()
