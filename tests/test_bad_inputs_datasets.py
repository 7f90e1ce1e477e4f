"""Bad user input at the loader level: every case raises InputError naming the file and the problem.

(The CLI-level versions live in test_cli_bad_inputs.py; here we check the library contract that
the CLI relies on: one exception type, the offending path in the message, a plain-words reason.)"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recon.datasets.cameras import Camera
from recon.datasets.colmap import load_colmap
from recon.datasets.folder import scan_folder
from recon.datasets.images import load_view
from recon.datasets.llff import load_llff
from recon.datasets.loader import detect_format, load_scene
from recon.datasets.nerf import load_nerf, read_ply_points
from recon.errors import InputError

W, H = 32, 24


def _png(path: Path, w: int = W, h: int = H, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (w, h), 128).save(path)
    return path


def _camera(path: Path, w: int = W, h: int = H, mask: Path | None = None) -> Camera:
    return Camera(name=path.name, width=w, height=h, fx=30.0, fy=30.0, cx=w / 2, cy=h / 2, c2w=np.eye(4),
                  image_path=path, mask_path=mask)  # fmt: skip


def _raises(fn, *needles: str) -> InputError:
    with pytest.raises(InputError) as info:
        fn()
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert "\n" not in msg  # the CLI prints it as one line
    return info.value


def _transforms(root: Path, frames, **top) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "transforms.json"
    path.write_text(json.dumps({"fl_x": 30.0, "w": W, "h": H, **top, "frames": frames}))
    return path


def _frame(name: str, c2w=None) -> dict:
    return {"file_path": name, "transform_matrix": (np.eye(4) if c2w is None else c2w).tolist()}


# --- images ------------------------------------------------------------------------------------
def test_missing_image(tmp_path: Path):
    _raises(lambda: load_view(_camera(tmp_path / "gone.jpg"), 1), "gone.jpg", "image file not found")


def test_corrupt_image(tmp_path: Path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg " * 20)
    _raises(lambda: load_view(_camera(bad), 1), "broken.jpg", "cannot read image")


def test_truncated_image(tmp_path: Path):
    good = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    _raises(lambda: load_view(_camera(cut), 1), "cut.jpg", "cannot read image")


def test_image_size_disagrees_with_intrinsics(tmp_path: Path):
    img = _png(tmp_path / "odd.png", 30, 24)
    err = _raises(lambda: load_view(_camera(img), 1), "odd.png", "30x24", "32x24", "disagrees")
    assert err.path == str(img)


def test_mask_size_disagrees_with_image(tmp_path: Path):
    img = _png(tmp_path / "a.png")
    mask = _png(tmp_path / "a_mask.png", 20, 20, mode="L")
    _raises(lambda: load_view(_camera(img, mask=mask), 1), "a_mask.png", "20x20")


def test_corrupt_mask(tmp_path: Path):
    img = _png(tmp_path / "a.png")
    mask = tmp_path / "m.png"
    mask.write_bytes(b"garbage")
    _raises(lambda: load_view(_camera(img, mask=mask), 1), "m.png", "cannot read mask")


# --- transforms.json ---------------------------------------------------------------------------
def test_transforms_without_frames(tmp_path: Path):
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 30.0}))
    _raises(lambda: load_nerf(tmp_path), "transforms.json", '"frames"')
    _raises(lambda: load_scene(tmp_path), "transforms.json", '"frames"')


def test_transforms_not_json(tmp_path: Path):
    (tmp_path / "transforms.json").write_text("{ 'frames': [ oops")
    _raises(lambda: load_scene(tmp_path), "transforms.json", "cannot read JSON")


def test_transforms_nan_pose(tmp_path: Path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    bad = np.eye(4)
    bad[0, 3] = float("nan")
    _transforms(tmp_path, [_frame("a.png"), _frame("b.png", bad)])
    _raises(lambda: load_nerf(tmp_path), "transforms.json", "frame 1 has a non-finite transform_matrix")


def test_transforms_non_rigid_pose(tmp_path: Path):
    _png(tmp_path / "a.png")
    _transforms(tmp_path, [_frame("a.png", np.diag([2.0, 2.0, 2.0, 1.0]))])
    _raises(lambda: load_nerf(tmp_path), "transforms.json", "frame 0", "not a rigid transform")


def test_transforms_missing_intrinsics(tmp_path: Path):
    _png(tmp_path / "a.png")
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps({"frames": [_frame("a.png")]}))
    _raises(lambda: load_nerf(path), "transforms.json", "frame 0", "missing focal length")


def test_transforms_unsupported_camera_model(tmp_path: Path):
    _png(tmp_path / "a.png")
    _transforms(tmp_path, [_frame("a.png")], camera_model="EQUIRECTANGULAR")
    _raises(lambda: load_nerf(tmp_path), "transforms.json", "EQUIRECTANGULAR", "not supported")


def test_transforms_all_images_missing(tmp_path: Path):
    _transforms(tmp_path, [_frame("images/a.jpg"), _frame("images/b.jpg")])
    with pytest.warns(UserWarning, match="2 of 2 frames"):
        _raises(lambda: load_nerf(tmp_path), "transforms.json", "none of the 2 frames has an image file")


def test_transforms_missing_mask(tmp_path: Path):
    _png(tmp_path / "a.png")
    _transforms(tmp_path, [{**_frame("a.png"), "mask_path": "masks/a.png"}])
    _raises(lambda: load_nerf(tmp_path), "transforms.json", "masks/a.png", "not found")


def test_bad_ply(tmp_path: Path):
    (tmp_path / "points.ply").write_bytes(b"not a ply at all")
    _raises(lambda: read_ply_points(tmp_path / "points.ply"), "points.ply", "not a PLY file")
    _png(tmp_path / "a.png")
    _transforms(tmp_path, [_frame("a.png")], ply_file_path="missing.ply")
    _raises(lambda: load_nerf(tmp_path), "transforms.json", "missing.ply", "not found")


# --- COLMAP ------------------------------------------------------------------------------------
def _cameras_bin(model_id: int, params: list[float]) -> bytes:
    return struct.pack("<Q", 1) + struct.pack("<iiQQ", 1, model_id, W, H) + struct.pack(f"<{len(params)}d", *params)


def _images_bin(names: list[str]) -> bytes:
    out = struct.pack("<Q", len(names))
    for i, name in enumerate(names):
        out += struct.pack("<i7di", i + 1, 1.0, 0, 0, 0, 0, 0, 0, 1) + name.encode() + b"\x00" + struct.pack("<Q", 0)
    return out


def _colmap(root: Path, model_id: int = 1, params=(30.0, 30.0, 16.0, 12.0), names=("a.png",)) -> Path:
    model = root / "sparse" / "0"
    model.mkdir(parents=True)
    (model / "cameras.bin").write_bytes(_cameras_bin(model_id, list(params)))
    (model / "images.bin").write_bytes(_images_bin(list(names)))
    (model / "points3D.bin").write_bytes(struct.pack("<Q", 0))
    for n in names:
        _png(root / "images" / n)
    return model


def test_colmap_sanity_of_the_helper(tmp_path: Path):
    """The helper model is valid: each failure below comes from the one thing changed."""
    scene = load_colmap(_colmap(tmp_path).parent.parent)
    assert len(scene.cameras) == 1 and scene.points is None


def test_colmap_no_registered_images(tmp_path: Path):
    _colmap(tmp_path, names=())
    _raises(lambda: load_colmap(tmp_path), "images.bin", "no registered images")
    _raises(lambda: load_scene(tmp_path), "images.bin", "no registered images")


def test_colmap_unsupported_camera_model(tmp_path: Path):
    _colmap(tmp_path / "thin", model_id=10, params=[30.0] * 12)  # THIN_PRISM_FISHEYE
    _raises(lambda: load_colmap(tmp_path / "thin"), "cameras.bin", "THIN_PRISM_FISHEYE", "not support")
    _colmap(tmp_path / "madeup", model_id=99, params=[30.0] * 4)
    _raises(lambda: load_colmap(tmp_path / "madeup"), "cameras.bin", "unknown camera model id 99")


def test_colmap_text_unsupported_camera_model(tmp_path: Path):
    model = tmp_path / "sparse"
    model.mkdir()
    (model / "cameras.txt").write_text("# comment\n1 FOV 32 24 30 30 16 12 0.1\n")
    (model / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n\n")
    (model / "points3D.txt").write_text("")
    _raises(lambda: load_colmap(tmp_path), "cameras.txt", "FOV", "not support")


def test_colmap_truncated_file(tmp_path: Path):
    model = _colmap(tmp_path, names=("a.png", "b.png"))
    data = (model / "images.bin").read_bytes()
    (model / "images.bin").write_bytes(data[:-10])
    _raises(lambda: load_colmap(tmp_path), "images.bin", "truncated")


def test_colmap_registered_image_missing(tmp_path: Path):
    _colmap(tmp_path, names=("a.png", "b.png", "c.png"))
    (tmp_path / "images" / "b.png").unlink()
    _raises(lambda: load_scene(tmp_path), "b.png", "image file not found", "1 of 3")


def test_scene_load_reports_the_first_bad_image_by_name(tmp_path: Path):
    """load_scene reads every header up front, so the error names the first bad view by name."""
    for name in ("a.png", "b.png", "c.png"):
        _png(tmp_path / name, 20, 20) if name != "a.png" else _png(tmp_path / name)
    _transforms(tmp_path, [_frame("c.png"), _frame("b.png"), _frame("a.png")])
    _raises(lambda: load_scene(tmp_path), "b.png", "20x20", "disagrees")
    load_nerf(tmp_path)  # the loader itself does not decode images; load_view would report it


def test_colmap_images_not_found(tmp_path: Path):
    model = _colmap(tmp_path)
    (tmp_path / "images" / "a.png").unlink()
    _raises(lambda: load_colmap(model), "cannot find the model's images", "a.png")


# --- LLFF, folders, paths ----------------------------------------------------------------------
def test_llff_pose_count_mismatch(tmp_path: Path):
    rows = np.zeros((3, 17))
    rows[:, :15] = np.concatenate([np.eye(3), np.zeros((3, 1)), [[H], [W], [30.0]]], axis=1).reshape(-1)
    np.save(tmp_path / "poses_bounds.npy", rows)
    for i in range(2):
        _png(tmp_path / "images" / f"{i}.png")
    _raises(lambda: load_llff(tmp_path), "poses_bounds.npy", "3 poses", "images/ has 2")


def test_folder_without_images(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("no photos here")
    _raises(lambda: load_scene(tmp_path), str(tmp_path), "no images found (looked for .jpg, .jpeg, .png)")
    _raises(lambda: scan_folder(tmp_path), "no images found (looked for .jpg, .jpeg, .png)")


def test_nonexistent_path(tmp_path: Path):
    _raises(lambda: load_scene(tmp_path / "nowhere"), "nowhere", "no such file or folder")
    _raises(lambda: detect_format(str(tmp_path / "nowhere.json")), "nowhere.json", "no such file or folder")


def test_unrecognised_file(tmp_path: Path):
    (tmp_path / "scene.obj").write_text("v 0 0 0\n")
    _raises(lambda: load_scene(tmp_path / "scene.obj"), "scene.obj", "not a scene file")
