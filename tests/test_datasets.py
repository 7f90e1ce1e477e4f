"""Loaders on synthetic scenes made here: COLMAP (bin/txt, pycolmap-4 layout), transforms.json,
LLFF, plain folders, auto-detection, and image loading (downscale cache, undistortion, masks).

Known values are written to disk in each format and must come back unchanged. Where a formula is
involved (COLMAP camera models, quaternions) pycolmap is the independent oracle, so a consistent
mistake in our writer and reader cannot hide."""

from __future__ import annotations

import json
import os
import struct
import sys
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from recon.datasets.cameras import Camera, Distortion
from recon.datasets.colmap import load_colmap
from recon.datasets.folder import find_images, scan_folder
from recon.datasets.images import View, cached_image_path, load_view, load_views
from recon.datasets.llff import load_llff
from recon.datasets.loader import detect_format, load_scene
from recon.datasets.nerf import load_nerf, read_ply_points
from recon.errors import InputError
from recon.utils.paths import derived_dir

FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


# =============================================================================================
# synthetic geometry
# =============================================================================================
def look_at(center, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV c2w (x right, y down, z forward) at ``center`` looking at ``target``, z-up world."""
    center, target, up = (np.asarray(v, np.float64) for v in (center, target, up))
    z = target - center
    z /= np.linalg.norm(z)
    x = np.cross(-up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, y, z], axis=1)
    c2w[:3, 3] = center
    return c2w


def ring_poses(n: int, radius: float = 5.0, height: float = 1.0) -> list[np.ndarray]:
    return [look_at((radius * np.cos(a), radius * np.sin(a), height)) for a in np.linspace(0, 2 * np.pi, n, endpoint=False)]


def save_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def noise_image(w: int, h: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# =============================================================================================
# a COLMAP model writer (the format, written out by hand)
# =============================================================================================
MODEL_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "RADIAL": 3, "OPENCV": 4,
             "OPENCV_FISHEYE": 5, "FULL_OPENCV": 6, "THIN_PRISM_FISHEYE": 10}  # fmt: skip

MODEL_PARAMS = {
    "SIMPLE_PINHOLE": [40.0, 32.3, 23.8],
    "PINHOLE": [40.0, 41.0, 32.3, 23.8],
    "SIMPLE_RADIAL": [40.0, 32.3, 23.8, -0.05],
    "RADIAL": [40.0, 32.3, 23.8, -0.05, 0.01],
    "OPENCV": [40.0, 41.0, 32.3, 23.8, -0.05, 0.01, 0.001, -0.002],
    "OPENCV_FISHEYE": [40.0, 41.0, 32.3, 23.8, 0.02, -0.01, 0.003, -0.001],
    "FULL_OPENCV": [40.0, 41.0, 32.3, 23.8, -0.05, 0.01, 0.001, -0.002, 0.003, 0.02, -0.01, 0.004],
}
W, H = 64, 48


@dataclass
class SynthModel:
    cameras: dict[int, tuple[str, int, int, list[float]]]
    images: list[dict]  # image_id, name, camera_id, c2w, xys (M, 2), pids (M,)
    xyz: np.ndarray
    rgb: np.ndarray
    tracks: list[list[tuple[int, int]]] = field(default_factory=list)


def quat_wxyz(R: np.ndarray) -> np.ndarray:
    x, y, z, w = Rotation.from_matrix(R).as_quat()
    return np.array([w, x, y, z])


def make_model(model: str = "OPENCV", n_images: int = 4, n_points: int = 30, seed: int = 0) -> SynthModel:
    """Images on a ring around random points; keypoints projected with pycolmap's camera model
    (independent of recon's Distortion). Odd keypoints belong to points, even ones to none."""
    import pycolmap

    rng = np.random.default_rng(seed)
    params = MODEL_PARAMS[model]
    pc = pycolmap.Camera(model=model, width=W, height=H, params=params)
    xyz = rng.uniform(-1, 1, (n_points, 3))
    rgb = rng.integers(0, 256, (n_points, 3)).astype(np.uint8)
    images = []
    tracks: list[list[tuple[int, int]]] = [[] for _ in range(n_points)]
    # ids deliberately out of name order, names not sorted by id
    ids = [7, 3, 11, 5, 2, 9, 4, 8][:n_images]
    for k, (image_id, c2w) in enumerate(zip(ids, ring_poses(n_images))):
        w2c = np.linalg.inv(c2w)
        cam_pts = xyz @ w2c[:3, :3].T + w2c[:3, 3]
        proj = np.asarray(pc.img_from_cam(cam_pts), np.float64)
        xys = np.zeros((2 * n_points, 2))
        pids = np.full(2 * n_points, -1, np.int64)
        xys[0::2] = rng.uniform(0, W, (n_points, 2))
        xys[1::2] = proj
        pids[1::2] = np.arange(n_points) + 100
        for i in range(n_points):
            tracks[i].append((image_id, 2 * i + 1))
        images.append(dict(image_id=image_id, name=f"view_{n_images - 1 - k:03d}.png", camera_id=1, c2w=c2w, xys=xys, pids=pids))
    return SynthModel({1: (model, W, H, params)}, images, xyz, rgb, tracks)


def write_model_bin(folder: Path, m: SynthModel, model_id: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    out = struct.pack("<Q", len(m.cameras))
    for cid, (model, w, h, params) in m.cameras.items():
        out += struct.pack("<iiQQ", cid, MODEL_IDS[model] if model_id is None else model_id, w, h)
        out += struct.pack(f"<{len(params)}d", *params)
    (folder / "cameras.bin").write_bytes(out)
    out = struct.pack("<Q", len(m.images))
    for im in m.images:
        w2c = np.linalg.inv(im["c2w"])
        out += struct.pack("<i", im["image_id"]) + struct.pack("<4d", *quat_wxyz(w2c[:3, :3])) + struct.pack("<3d", *w2c[:3, 3])
        out += struct.pack("<i", im["camera_id"]) + im["name"].encode() + b"\x00" + struct.pack("<Q", len(im["xys"]))
        for (x, y), pid in zip(im["xys"], im["pids"]):
            out += struct.pack("<ddq", x, y, pid)
    (folder / "images.bin").write_bytes(out)
    out = struct.pack("<Q", len(m.xyz))
    for i, (p, c, track) in enumerate(zip(m.xyz, m.rgb, m.tracks)):
        out += struct.pack("<Q3d3Bd", 100 + i, *p, *c, 0.5) + struct.pack("<Q", len(track))
        out += b"".join(struct.pack("<ii", a, b) for a, b in track)
    (folder / "points3D.bin").write_bytes(out)
    return folder


def write_model_txt(folder: Path, m: SynthModel) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    lines += [f"{cid} {model} {w} {h} " + " ".join(repr(float(p)) for p in params) for cid, (model, w, h, params) in m.cameras.items()]
    (folder / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = ["# Image list with two lines of data per image:", f"# Number of images: {len(m.images)}"]
    for im in m.images:
        w2c = np.linalg.inv(im["c2w"])
        vals = [*quat_wxyz(w2c[:3, :3]), *w2c[:3, 3]]
        lines.append(f"{im['image_id']} " + " ".join(repr(float(v)) for v in vals) + f" {im['camera_id']} {im['name']}")
        lines.append(" ".join(f"{x!r} {y!r} {int(p)}" for (x, y), p in zip(im["xys"].tolist(), im["pids"])))
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    lines = ["# 3D point list with one line of data per point:"]
    for i, (p, c, track) in enumerate(zip(m.xyz, m.rgb, m.tracks)):
        lines.append(
            f"{100 + i} " + " ".join(repr(float(v)) for v in p) + " " + " ".join(str(int(v)) for v in c) + " 0.5 "
            + " ".join(f"{a} {b}" for a, b in track)
        )  # fmt: skip
    (folder / "points3D.txt").write_text("\n".join(lines) + "\n")
    return folder


def write_images_for(m: SynthModel, image_dir: Path, w: int = W, h: int = H) -> None:
    for k, im in enumerate(m.images):
        save_png(image_dir / im["name"], noise_image(w, h, k))


def check_against_model(scene, m: SynthModel) -> None:
    """Poses, intrinsics, points and observations of a loaded scene equal the synthetic model,
    and every observed keypoint is reproduced by projecting its point through our camera."""
    by_name = {im["name"]: im for im in m.images}
    assert [c.name for c in scene.cameras] == sorted(by_name)
    for cam in scene.cameras:
        im = by_name[cam.name]
        np.testing.assert_allclose(cam.c2w, im["c2w"], atol=1e-9)
        assert (cam.width, cam.height) == (W, H)
        assert cam.extras["colmap_image_id"] == im["image_id"]
    np.testing.assert_allclose(scene.extras["colmap_points_xyz"], m.xyz, atol=1e-12)
    np.testing.assert_array_equal(scene.point_colors, m.rgb)
    assert scene.points.dtype == np.float32 and scene.points.shape == (len(m.xyz), 3)
    np.testing.assert_array_equal(scene.extras["colmap_point_ids"], np.arange(len(m.xyz)) + 100)
    cams = {c.extras["colmap_image_id"]: c for c in scene.cameras}
    kp = scene.extras["colmap_keypoints"]
    n_obs = 0
    for i, track in enumerate(scene.extras["colmap_tracks"]):
        assert [tuple(t) for t in track.tolist()] == m.tracks[i]
        for image_id, idx in track:
            uv, z = cams[int(image_id)].project(scene.extras["colmap_points_xyz"][i : i + 1])
            assert z[0] > 0
            np.testing.assert_allclose(uv[0], kp[int(image_id)][idx], atol=1e-6)
            n_obs += 1
    assert n_obs == len(m.xyz) * len(m.images)


# =============================================================================================
# COLMAP
# =============================================================================================
@pytest.mark.parametrize("model", list(MODEL_PARAMS))
def test_colmap_binary_every_supported_model(tmp_path: Path, model: str):
    m = make_model(model)
    write_model_bin(tmp_path / "sparse" / "0", m)
    write_images_for(m, tmp_path / "images")
    scene = load_colmap(tmp_path)
    assert scene.source == "colmap"
    check_against_model(scene, m)
    cam = scene.cameras[0]
    p = MODEL_PARAMS[model]
    if model.startswith("SIMPLE") or model == "RADIAL":
        assert (cam.fx, cam.fy, cam.cx, cam.cy) == (p[0], p[0], p[1], p[2])
    else:
        assert (cam.fx, cam.fy, cam.cx, cam.cy) == tuple(p[:4])
    if model in ("SIMPLE_PINHOLE", "PINHOLE"):
        assert cam.distortion is None
    else:
        expected = "OPENCV_FISHEYE" if model == "OPENCV_FISHEYE" else model
        assert cam.distortion.model == expected


@pytest.mark.parametrize("model", ["OPENCV", "SIMPLE_RADIAL"])
def test_colmap_text_equals_binary(tmp_path: Path, model: str):
    m = make_model(model, seed=3)
    write_images_for(m, tmp_path / "images")
    write_model_txt(tmp_path / "sparse" / "0", m)
    scene_txt = load_colmap(tmp_path)
    check_against_model(scene_txt, m)
    write_model_bin(tmp_path / "bin" / "sparse" / "0", m)
    scene_bin = load_colmap(tmp_path / "bin", image_dir=tmp_path / "images")
    for a, b in zip(scene_txt.cameras, scene_bin.cameras):
        np.testing.assert_allclose(a.c2w, b.c2w, atol=1e-12)
        assert a.distortion == b.distortion and (a.fx, a.cx) == (b.fx, b.cx)


@pytest.mark.parametrize("layout", ["sparse/0", "sparse", "model_only", "colmap/sparse/0"])
def test_colmap_layouts(tmp_path: Path, layout: str):
    m = make_model("PINHOLE")
    if layout == "model_only":  # model folder handed over directly, images two levels up
        model_dir = tmp_path / "recon_out" / "0"
        write_images_for(m, tmp_path)
        write_model_bin(model_dir, m)
        scene = load_colmap(model_dir)
        assert scene.cameras[0].image_path.parent == tmp_path.resolve()
    else:
        write_images_for(m, tmp_path / "images")
        write_model_bin(tmp_path / layout, m)
        scene = load_colmap(tmp_path)
        assert detect_format(tmp_path) == "colmap"
        assert scene.cameras[0].image_path.parent.name == "images"
    check_against_model(scene, m)


def test_colmap_matches_pycolmap_and_reads_pycolmap4_layout(tmp_path: Path):
    """pycolmap reads our hand-written model identically, and what pycolmap 4 writes (with
    rigs.bin / frames.bin, binary and text) loads back to the same cameras."""
    import pycolmap

    m = make_model("OPENCV", n_images=5, seed=1)
    write_images_for(m, tmp_path / "images")
    write_model_bin(tmp_path / "sparse" / "0", m)
    rec = pycolmap.Reconstruction(str(tmp_path / "sparse" / "0"))
    ours = load_colmap(tmp_path)
    for cam in ours.cameras:
        ref = rec.images[cam.extras["colmap_image_id"]]
        assert ref.name == cam.name
        np.testing.assert_allclose(cam.w2c[:3], ref.cam_from_world().matrix(), atol=1e-9)
    for sub, write in (("pc4_bin", rec.write_binary), ("pc4_txt", rec.write_text)):
        out = tmp_path / sub / "sparse" / "0"
        out.mkdir(parents=True)
        write(str(out))
        if sub == "pc4_bin":
            assert (out / "rigs.bin").is_file() and (out / "frames.bin").is_file()
        again = load_colmap(tmp_path / sub, image_dir=tmp_path / "images")
        check_against_model(again, m)


def test_colmap_masks_found_by_either_naming(tmp_path: Path):
    m = make_model("PINHOLE")
    write_model_bin(tmp_path / "sparse" / "0", m)
    write_images_for(m, tmp_path / "images")
    names = sorted(im["name"] for im in m.images)
    save_png(tmp_path / "masks" / f"{names[0]}.png", np.full((H, W), 255, np.uint8))  # COLMAP naming
    save_png(tmp_path / "masks" / f"{Path(names[2]).stem}.png", np.full((H, W), 255, np.uint8))  # same stem
    scene = load_scene(tmp_path)
    assert scene.cameras[0].mask_path.name == f"{names[0]}.png"
    assert scene.cameras[2].mask_path.name == f"{Path(names[2]).stem}.png"
    assert scene.cameras[1].mask_path is None and scene.cameras[3].mask_path is None


# =============================================================================================
# transforms.json
# =============================================================================================
def write_transforms(root: Path, c2ws_cv: list[np.ndarray], *, meta: dict | None = None, frame_extra=None,
                     names=None, w: int = W, h: int = H, ext: str = ".png", write_images: bool = True) -> Path:  # fmt: skip
    """A transforms.json with OpenGL poses converted from the given OpenCV ones, plus images."""
    frames = []
    for i, c2w in enumerate(c2ws_cv):
        name = names[i] if names else f"images/frame_{i:03d}"
        if write_images:
            save_png(root / f"{name}.png", noise_image(w, h, i)) if ext == "" else save_png(root / f"{name}{ext}", noise_image(w, h, i))
        frame = {"file_path": name + ext, "transform_matrix": (c2w @ FLIP).tolist()}
        if frame_extra:
            frame.update(frame_extra(i))
        frames.append(frame)
    body = {"fl_x": 40.0, "fl_y": 41.0, "cx": 32.3, "cy": 23.8, "w": w, "h": h} if meta is None else dict(meta)
    body["frames"] = frames
    path = root / "transforms.json"
    path.write_text(json.dumps(body, indent=1))
    return path


def test_nerf_opengl_to_opencv(tmp_path: Path):
    poses = ring_poses(5)
    write_transforms(tmp_path, poses)
    scene = load_nerf(tmp_path)
    assert scene.source == "nerf" and len(scene.cameras) == 5
    for cam, c2w in zip(scene.cameras, poses):
        np.testing.assert_allclose(cam.c2w, c2w, atol=1e-12)
        # the cameras look at the origin: it must be in front of them and near the principal point
        uv, z = cam.project(np.zeros((1, 3)))
        assert z[0] > 0
        np.testing.assert_allclose(uv[0], [cam.cx, cam.cy], atol=1e-9)
    # The raw file holds OpenGL axes: its +z column points *away* from the origin.
    raw = json.loads((tmp_path / "transforms.json").read_text())["frames"][0]["transform_matrix"]
    assert np.dot(np.array(raw)[:3, 2], -np.array(raw)[:3, 3]) < 0
    cam = scene.cameras[0]
    assert (cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height) == (40.0, 41.0, 32.3, 23.8, W, H)
    assert cam.distortion is None


def test_nerf_distortion_models(tmp_path: Path):
    base = {"fl_x": 40.0, "fl_y": 41.0, "cx": 32.3, "cy": 23.8, "w": W, "h": H}
    cases = [
        ({"k1": 0.1, "k2": -0.02, "p1": 0.001, "p2": 0.002}, "OPENCV", {"k1": 0.1, "k2": -0.02, "p1": 0.001, "p2": 0.002}),
        ({"k1": 0.1, "k3": 0.01}, "FULL_OPENCV", {"k1": 0.1, "k3": 0.01, "k2": 0.0, "k4": 0.0}),
        ({"camera_model": "OPENCV_FISHEYE", "k1": 0.05, "k2": 0.01, "k3": -0.002, "k4": 0.001}, "OPENCV_FISHEYE",
         {"k1": 0.05, "k2": 0.01, "k3": -0.002, "k4": 0.001}),
        ({"is_fisheye": True, "k1": 0.05}, "OPENCV_FISHEYE", {"k1": 0.05}),
    ]  # fmt: skip
    for i, (extra, model, params) in enumerate(cases):
        root = tmp_path / str(i)
        write_transforms(root, ring_poses(2), meta={**base, **extra})
        dist = load_nerf(root).cameras[0].distortion
        assert dist is not None and dist.model == model
        for k, v in params.items():
            assert dist.params[k] == v


def test_nerf_camera_angle_only_and_extensionless_paths(tmp_path: Path):
    """NeRF-synthetic style: only camera_angle_x, size from the image, file_path without extension."""
    angle = 0.7
    write_transforms(tmp_path, ring_poses(3), meta={"camera_angle_x": angle}, w=80, h=60, ext="")
    scene = load_nerf(tmp_path / "transforms.json")
    cam = scene.cameras[0]
    assert (cam.width, cam.height) == (80, 60)
    assert cam.fx == pytest.approx(0.5 * 80 / np.tan(0.5 * angle)) and cam.fy == cam.fx
    assert (cam.cx, cam.cy) == (40.0, 30.0)
    assert cam.image_path.suffix == ".png" and cam.name.endswith(".png")


def test_nerf_per_frame_intrinsics_masks_time_and_skipped_frames(tmp_path: Path):
    def extra(i):
        out = {"fl_x": 40.0 + (i % 2), "time": 10.0 + 2 * i}
        if i == 1:
            save_png(tmp_path / "masks" / "m1.png", np.full((H, W), 255, np.uint8))
            out["mask_path"] = "masks/m1.png"
        return out

    path = write_transforms(tmp_path, ring_poses(4), meta={"fl_y": 41.0, "cx": 32.3, "cy": 23.8, "w": W, "h": H}, frame_extra=extra)
    (tmp_path / "images" / "frame_002.png").unlink()
    with pytest.warns(UserWarning, match=r"1 of 4 frames have no image file") as rec:
        scene = load_nerf(path)
    assert len(rec) == 1
    assert [c.name for c in scene.cameras] == ["images/frame_000.png", "images/frame_001.png", "images/frame_003.png"]
    assert [c.fx for c in scene.cameras] == [40.0, 41.0, 41.0]
    assert [c.camera_id for c in scene.cameras] == [0, 1, 1]
    assert scene.cameras[1].mask_path == tmp_path / "masks" / "m1.png" and scene.cameras[0].mask_path is None
    assert scene.extras["time_range"] == (10.0, 16.0)
    assert [c.time for c in scene.cameras] == pytest.approx([0.0, 1 / 3, 1.0])
    assert scene.extras["frames_skipped"] == 1


def _ply_bytes(xyz: np.ndarray, rgb: np.ndarray, fmt: str) -> bytes:
    header = (
        f"ply\nformat {fmt} 1.0\ncomment made by a test\nelement vertex {len(xyz)}\n"
        "property double x\nproperty double y\nproperty double z\nproperty float nx\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nelement face 0\n"
        "property list uchar int vertex_indices\nend_header\n"
    )
    if fmt == "ascii":
        body = "".join(f"{a!r} {b!r} {c!r} 0 {r} {g} {bb}\n" for (a, b, c), (r, g, bb) in zip(xyz.tolist(), rgb.tolist()))
        return header.encode() + body.encode()
    order = "<" if fmt == "binary_little_endian" else ">"
    dt = np.dtype([("x", order + "f8"), ("y", order + "f8"), ("z", order + "f8"), ("nx", order + "f4"),
                   ("r", "u1"), ("g", "u1"), ("b", "u1")])  # fmt: skip
    arr = np.zeros(len(xyz), dt)
    arr["x"], arr["y"], arr["z"] = xyz.T
    arr["r"], arr["g"], arr["b"] = rgb.T
    return header.encode() + arr.tobytes()


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_ply_points_and_nerfstudio_ply_file_path(tmp_path: Path, fmt: str):
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(50, 3))
    rgb = rng.integers(0, 256, (50, 3)).astype(np.uint8)
    (tmp_path / "sparse_pc.ply").write_bytes(_ply_bytes(xyz, rgb, fmt))
    pts, cols = read_ply_points(tmp_path / "sparse_pc.ply")
    np.testing.assert_allclose(pts, xyz.astype(np.float32))
    np.testing.assert_array_equal(cols, rgb)
    meta = {"fl_x": 40.0, "w": W, "h": H, "ply_file_path": "sparse_pc.ply", "camera_model": "OPENCV"}
    write_transforms(tmp_path, ring_poses(2), meta=meta)
    scene = load_nerf(tmp_path)
    np.testing.assert_array_equal(scene.points, pts)
    np.testing.assert_array_equal(scene.point_colors, rgb)


# =============================================================================================
# LLFF
# =============================================================================================
def write_llff(root: Path, c2ws: list[np.ndarray], hwf=(96.0, 128.0, 100.0), folders=("images_2",), n_images=None) -> Path:
    """poses_bounds.npy written straight from the README recipe: rotation columns [down, right, back]."""
    rows = []
    for c2w in c2ws:
        P = np.zeros((3, 5))
        P[:, 0] = c2w[:3, 1]  # down
        P[:, 1] = c2w[:3, 0]  # right
        P[:, 2] = -c2w[:3, 2]  # back
        P[:, 3] = c2w[:3, 3]
        P[:, 4] = hwf
        rows.append(np.concatenate([P.reshape(-1), [2.0, 8.0]]))
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "poses_bounds.npy", np.array(rows))
    for folder in folders:
        n = folder.rsplit("_", 1)[-1] if "_" in folder else "1"
        f = int(n)
        for i in range(len(c2ws) if n_images is None else n_images):
            save_png(root / folder / f"IMG_{i:03d}.png", noise_image(int(hwf[1]) // f, int(hwf[0]) // f, i))
    return root


def test_llff_axes_and_rescaled_focal(tmp_path: Path):
    poses = ring_poses(6)
    write_llff(tmp_path, poses, hwf=(96.0, 128.0, 100.0), folders=("images_2",))
    scene = load_llff(tmp_path)
    assert scene.source == "llff" and len(scene.cameras) == 6
    for cam, c2w in zip(scene.cameras, poses):
        np.testing.assert_allclose(cam.c2w, c2w, atol=1e-12)
        assert (cam.width, cam.height) == (64, 48)
        assert (cam.fx, cam.fy, cam.cx, cam.cy) == (50.0, 50.0, 32.0, 24.0)
        uv, z = cam.project(np.zeros((1, 3)))
        assert z[0] > 0 and np.allclose(uv[0], [32.0, 24.0])
        np.testing.assert_array_equal(cam.extras["bounds"], [2.0, 8.0])
    assert detect_format(tmp_path) == "llff" and detect_format(tmp_path / "poses_bounds.npy") == "llff"


def test_llff_folder_choice_and_masks(tmp_path: Path):
    poses = ring_poses(4)
    # images/ has the wrong count, images_2 the right one -> images_2 (+ masks_2 over masks)
    write_llff(tmp_path, poses, folders=("images",), n_images=3)
    write_llff(tmp_path, poses, folders=("images_2",))
    for i in range(4):
        save_png(tmp_path / "masks_2" / f"IMG_{i:03d}.png", np.full((48, 64), 255, np.uint8))
        save_png(tmp_path / "masks" / f"IMG_{i:03d}.png", np.full((96, 128), 255, np.uint8))
    scene = load_llff(tmp_path)
    assert scene.cameras[0].image_path.parent.name == "images_2"
    assert scene.cameras[0].mask_path.parent.name == "masks_2"
    # when the full-resolution folder matches too, it wins (recon downscales by itself)
    save_png(tmp_path / "images" / "IMG_003.png", noise_image(128, 96, 3))
    scene = load_llff(tmp_path)
    cam = scene.cameras[0]
    assert cam.image_path.parent.name == "images" and cam.mask_path.parent.name == "masks"
    assert (cam.width, cam.fx, cam.cx) == (128, 100.0, 64.0)


# =============================================================================================
# split rule, folders, detection
# =============================================================================================
def test_split_holds_out_every_eighth_by_name(tmp_path: Path):
    names = [f"images/v{i:02d}" for i in range(17)]
    order = np.random.default_rng(0).permutation(17)  # frames listed in shuffled order
    poses = ring_poses(17)
    write_transforms(tmp_path, [poses[i] for i in order], names=[names[i] for i in order])
    scene = load_scene(tmp_path)
    assert [c.name for c in scene.cameras] == [n + ".png" for n in names]
    train, test = scene.split()
    assert test == [0, 8, 16]
    assert train == [i for i in range(17) if i not in (0, 8, 16)]
    np.testing.assert_allclose(scene.cameras[8].c2w, poses[8])


def test_find_images(tmp_path: Path):
    for name in ["b.JPG", "a.png", "c.jpeg", "d.Jpg", "notes.txt", ".hidden.jpg", "e.gif"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.jpg").write_bytes(b"x")
    assert [p.name for p in find_images(tmp_path)] == ["a.png", "b.JPG", "c.jpeg", "d.Jpg"]
    assert find_images(tmp_path / "missing") == []


def test_detect_format(tmp_path: Path):
    write_transforms(tmp_path / "nerf", ring_poses(2))
    m = make_model("PINHOLE")
    write_model_bin(tmp_path / "col" / "sparse" / "0", m)
    write_images_for(m, tmp_path / "col" / "images")
    save_png(tmp_path / "photos" / "a.jpg", noise_image(8, 8, 0))
    save_png(tmp_path / "nested" / "images" / "a.png", noise_image(8, 8, 0))
    assert detect_format("demo") == "demo"
    assert detect_format(tmp_path / "nerf") == "nerf"
    assert detect_format(tmp_path / "nerf" / "transforms.json") == "nerf"
    assert detect_format(tmp_path / "col") == "colmap"
    assert detect_format(tmp_path / "col" / "sparse" / "0" / "cameras.bin") == "colmap"
    assert detect_format(tmp_path / "photos") == "folder"
    assert detect_format(tmp_path / "nested") == "folder"
    assert load_scene(tmp_path / "col" / "sparse" / "0" / "cameras.bin").source == "colmap"
    with pytest.raises(InputError, match="no such file or folder"):
        detect_format(tmp_path / "nope")


def test_plain_folder_runs_sfm_lazily(tmp_path: Path, monkeypatch):
    """A photo folder goes through recon.datasets.sfm.run_sfm (faked here) and its COLMAP model."""
    m = make_model("SIMPLE_RADIAL")
    write_images_for(m, tmp_path / "shoot" / "images")
    (tmp_path / "shoot" / "masks").mkdir()
    calls = []

    def run_sfm(image_dir, *, mask_dir=None, **kw):
        calls.append((Path(image_dir), mask_dir))
        return write_model_bin(tmp_path / "sfm_out" / "sparse" / "0", m)

    monkeypatch.setitem(sys.modules, "recon.datasets.sfm", types.SimpleNamespace(run_sfm=run_sfm))
    assert scan_folder(tmp_path / "shoot").image_dir == tmp_path / "shoot" / "images"
    scene = load_scene(tmp_path / "shoot")
    assert calls == [(tmp_path / "shoot" / "images", tmp_path / "shoot" / "masks")]
    assert scene.source == "folder" and len(scene.cameras) == len(m.images)
    assert all(c.image_path.parent == tmp_path / "shoot" / "images" for c in scene.cameras)
    check_against_model(scene, m)


def test_demo_goes_through_the_nerf_loader(tmp_path: Path, monkeypatch):
    write_transforms(tmp_path / "demo_scene", ring_poses(3))
    fake = types.SimpleNamespace(demo_scene_path=lambda *a, **k: tmp_path / "demo_scene")
    monkeypatch.setitem(sys.modules, "recon.datasets.demo", fake)
    scene = load_scene("demo")
    assert scene.source == "demo" and len(scene.cameras) == 3


# =============================================================================================
# images: decode, downscale cache, masks, undistortion
# =============================================================================================
def pinhole(path: Path | None, w: int, h: int, f: float = 50.0, dist: Distortion | None = None, mask: Path | None = None) -> Camera:
    return Camera(name=path.name if path else "x", width=w, height=h, fx=f, fy=f, cx=w / 2, cy=h / 2,
                  c2w=np.eye(4), distortion=dist, image_path=path, mask_path=mask)  # fmt: skip


def test_load_view_full_resolution(tmp_path: Path):
    arr = noise_image(W, H, 0)
    cam = pinhole(save_png(tmp_path / "a.png", arr), W, H)
    view = load_view(cam, 1)
    assert isinstance(view, View) and view.mask is None and view.alpha is None
    assert view.image.dtype == torch.float32 and view.image.shape == (H, W, 3)
    np.testing.assert_allclose(view.image.numpy(), arr / 255.0, atol=1e-7)
    assert view.camera.distortion is None and (view.camera.fx, view.camera.width) == (cam.fx, W)


def test_downscale_box_filter_and_cache_reuse(tmp_path: Path, monkeypatch):
    arr = noise_image(W, H, 1)
    src = save_png(tmp_path / "photos" / "a.png", arr)
    cam = pinhole(src, W, H)
    saves = []
    real_save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", lambda self, fp, *a, **k: (saves.append(fp), real_save(self, fp, *a, **k))[1])

    view = load_view(cam, 2)
    block_mean = arr.reshape(H // 2, 2, W // 2, 2, 3).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_allclose(view.image.numpy() * 255.0, block_mean, atol=0.5 + 1e-4)  # PIL rounds to uint8
    assert (view.camera.width, view.camera.height) == (W // 2, H // 2)
    assert (view.camera.fx, view.camera.cx) == (cam.fx / 2, cam.cx / 2)
    cache = cached_image_path(src, 2)
    assert cache == derived_dir(src.parent, "images_2") / "a.png" and cache.is_file()
    assert len(saves) == 1

    again = load_view(cam, 2)  # reused: no new save
    assert len(saves) == 1
    torch.testing.assert_close(again.image, view.image)

    later = cache.stat().st_mtime + 10  # the source changes after the cache was made -> rebuilt
    os.utime(src, (later, later))
    load_view(cam, 2)
    assert len(saves) == 2


def test_jpeg_source_cache_is_lossless_and_first_load_equals_later_loads(tmp_path: Path):
    """The first load (fresh downscale) and later loads (from the cache) must see the same pixels."""
    yy, xx = np.mgrid[0:H, 0:W]
    arr = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).astype(np.uint8)
    src = tmp_path / "a.jpg"
    Image.fromarray(arr).save(src, quality=98, subsampling=0)
    first = load_view(pinhole(src, W, H), 2)
    cache = cached_image_path(src, 2)
    assert cache.name == "a.jpg.png" and cache.is_file()
    second = load_view(pinhole(src, W, H), 2)
    assert torch.equal(first.image, second.image)
    decoded = np.asarray(Image.open(src).convert("RGB"), dtype=np.float64)
    expected = np.round(decoded.reshape(H // 2, 2, W // 2, 2, 3).mean(axis=(1, 3))) / 255.0
    assert np.abs(first.image.numpy() - expected).max() < 1e-6


def test_image_smaller_by_exact_factor_is_accepted(tmp_path: Path):
    """Intrinsics for 128x96 and a 64x48 file (an LLFF-style pre-downscaled folder)."""
    src = save_png(tmp_path / "a.png", noise_image(64, 48, 0))
    view = load_view(pinhole(src, 128, 96, f=100.0), 1)
    assert (view.camera.width, view.camera.height, view.camera.fx, view.camera.cx) == (64, 48, 50.0, 32.0)
    view = load_view(pinhole(src, 128, 96, f=100.0), 2)
    assert (view.camera.width, view.camera.fx) == (32, 25.0) and view.image.shape == (24, 32, 3)


def test_rgba_grayscale_and_16bit(tmp_path: Path):
    rgba = noise_image(W, H, 2)
    alpha = np.zeros((H, W), np.uint8)
    alpha[:, W // 2 :] = 255
    alpha[:, W // 2 - 1] = 100
    src = save_png(tmp_path / "rgba.png", np.dstack([rgba, alpha]))
    view = load_view(pinhole(src, W, H), 1)
    np.testing.assert_allclose(view.alpha.numpy()[..., 0], alpha / 255.0, atol=1e-7)
    np.testing.assert_array_equal(view.mask.numpy()[..., 0], (alpha >= 128).astype(np.float32))
    np.testing.assert_allclose(view.image.numpy()[:, W // 2 :], rgba[:, W // 2 :] / 255.0, atol=1e-7)

    gray = np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)
    view = load_view(pinhole(save_png(tmp_path / "gray.png", gray), W, H), 1)
    assert view.image.shape == (H, W, 3) and view.mask is None
    for c in range(3):
        np.testing.assert_allclose(view.image.numpy()[..., c], gray / 255.0, atol=1e-7)

    g16 = (np.arange(W * H).reshape(H, W) * 21).astype(np.uint16)
    path16 = tmp_path / "g16.png"
    Image.fromarray(g16).save(path16)
    assert Image.open(path16).mode.startswith("I")
    view = load_view(pinhole(path16, W, H), 1)
    np.testing.assert_allclose(view.image.numpy()[..., 0], g16 / 65535.0, atol=0.5 / 255 + 1e-6)


def test_user_mask_threshold_and_downscale(tmp_path: Path):
    src = save_png(tmp_path / "a.png", noise_image(W, H, 0))
    mask = np.zeros((H, W), np.uint8)
    mask[:, :16] = 127
    mask[:, 16:32] = 128
    mask[:, 32:] = 255
    mpath = save_png(tmp_path / "a_mask.png", mask)
    view = load_view(pinhole(src, W, H, mask=mpath), 1)
    np.testing.assert_array_equal(view.mask.numpy()[..., 0], (mask >= 128).astype(np.float32))
    view = load_view(pinhole(src, W, H, mask=mpath), 2)  # box-averaged to 32x24, then thresholded
    assert view.mask.shape == (24, 32, 1)
    assert view.mask[:, :8].sum() == 0 and view.mask[:, 8:].min() == 1


def _ramp_image(w: int, h: int, cell: int = 1) -> np.ndarray:
    """R = column index, G = row index (in ``cell``-pixel blocks): a linear function of the pixel
    centre that bilinear sampling reproduces exactly."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx // cell, yy // cell, np.full_like(xx, 77)], axis=-1).astype(np.uint8)


def _expected_undistorted(cam: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source pixel of every output pixel centre via Distortion.distort, the resulting ramp values,
    and whether the source lies inside the image."""
    u = np.arange(cam.width) + 0.5
    v = np.arange(cam.height) + 0.5
    uu, vv = np.meshgrid(u, v)
    xy = np.stack([(uu - cam.cx) / cam.fx, (vv - cam.cy) / cam.fy], axis=-1)
    d = cam.distortion.distort(xy)
    su, sv = d[..., 0] * cam.fx + cam.cx, d[..., 1] * cam.fy + cam.cy
    inside = (su >= 0) & (su <= cam.width) & (sv >= 0) & (sv <= cam.height)
    r = np.clip(su - 0.5, 0, cam.width - 1) / 255.0
    g = np.clip(sv - 0.5, 0, cam.height - 1) / 255.0
    return np.stack([r, g], axis=-1), inside, np.stack([su, sv], axis=-1)


@pytest.mark.parametrize(
    "dist",
    [
        Distortion("OPENCV", {"k1": 0.15, "k2": 0.0, "p1": 0.002, "p2": -0.001}),
        Distortion("OPENCV_FISHEYE", {"k1": 0.05, "k2": 0.01, "k3": 0.0, "k4": 0.0}),
        Distortion("FULL_OPENCV", {"k1": -0.2, "k2": 0.05, "k3": 0.01, "k4": 0.1}),
    ],
    ids=lambda d: d.model,
)
def test_undistortion_samples_distort_source(tmp_path: Path, dist: Distortion):
    w, h = 256, 192
    src = save_png(tmp_path / "ramp.png", _ramp_image(w, h))
    cam = pinhole(src, w, h, f=200.0, dist=dist)
    view = load_view(cam, 1)
    assert view.camera.distortion is None and (view.camera.fx, view.camera.cx) == (200.0, 128.0)
    expected, inside, source = _expected_undistorted(cam)
    got = view.image.numpy()
    if inside.all():
        assert view.mask is None
    else:
        np.testing.assert_array_equal(view.mask.numpy()[..., 0], inside.astype(np.float32))
        assert np.all(got[~inside] == 0)
    np.testing.assert_allclose(got[inside][:, :2], expected[inside], atol=2e-4)
    np.testing.assert_allclose(got[inside][:, 2], 77 / 255.0, atol=1e-6)
    # one pixel spelled out: output (200, 30) shows the ramp at its distorted source position
    assert got[30, 200, 0] == pytest.approx((source[30, 200, 0] - 0.5) / 255.0, abs=2e-4)
    assert got[30, 200, 1] == pytest.approx((source[30, 200, 1] - 0.5) / 255.0, abs=2e-4)
    if dist.model == "OPENCV":  # pincushion: the corners come from outside the photo
        assert not inside[0, 0] and view.mask[0, 0, 0] == 0 and view.mask[h // 2, w // 2, 0] == 1


def test_undistortion_happens_at_the_downscaled_size(tmp_path: Path):
    """A 512x384 distorted photo loaded at 1/2 equals undistorting the 256x192 box-downscaled copy
    with the half-size camera."""
    dist = Distortion("OPENCV", {"k1": 0.15, "k2": 0.0, "p1": 0.002, "p2": -0.001})
    src = save_png(tmp_path / "big.png", _ramp_image(512, 384, cell=2))  # 2x2 blocks: box-downscale is exact
    view = load_view(pinhole(src, 512, 384, f=400.0, dist=dist), 2)
    assert (view.camera.width, view.camera.height, view.camera.fx) == (256, 192, 200.0)
    expected, inside, _ = _expected_undistorted(pinhole(None, 256, 192, f=200.0, dist=dist))
    np.testing.assert_allclose(view.image.numpy()[inside][:, :2], expected[inside], atol=2e-4)
    np.testing.assert_array_equal(view.mask.numpy()[..., 0], inside.astype(np.float32))


def test_undistortion_undistorts_the_user_mask(tmp_path: Path):
    dist = Distortion("SIMPLE_RADIAL", {"k1": -0.1})
    w, h = 128, 96
    src = save_png(tmp_path / "a.png", noise_image(w, h, 0))
    mask = np.zeros((h, w), np.uint8)
    mask[:, w // 2 + 20 :] = 255  # keep the right part only
    cam = pinhole(src, w, h, f=100.0, dist=dist, mask=save_png(tmp_path / "m.png", mask))
    view = load_view(cam, 1)
    _, inside, source = _expected_undistorted(cam)
    far = np.abs(source[..., 0] - (w // 2 + 20)) > 1.0  # away from the mask edge
    expected = ((source[..., 0] >= w // 2 + 20) & inside).astype(np.float32)
    np.testing.assert_array_equal(view.mask.numpy()[..., 0][far], expected[far])


def test_load_views_in_order_without_tty(tmp_path: Path, capsys):
    cams = [pinhole(save_png(tmp_path / f"{i}.png", noise_image(W, H, i)), W, H) for i in range(5)]
    from recon.datasets.scene import SceneData

    scene = SceneData(root=tmp_path, source="folder", cameras=cams)
    views = load_views(scene, [4, 0, 2], downscale=2, progress=True)
    assert [v.camera.name for v in views] == ["4.png", "0.png", "2.png"]
    for v, i in zip(views, [4, 0, 2]):
        ref = load_view(cams[i], 2)
        torch.testing.assert_close(v.image, ref.image)
    assert len(load_views(scene, None, downscale=1, progress=False)) == 5
    capsys.readouterr()  # rich wrote to a non-TTY stderr without raising


def test_no_warning_when_everything_is_present(tmp_path: Path):
    write_transforms(tmp_path, ring_poses(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_scene(tmp_path)
