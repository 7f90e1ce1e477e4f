"""The DTU (IDR / MonoSDF cameras.npz) loader: a synthetic scan with known cameras, and the real scan 24."""

import numpy as np
import pytest
from PIL import Image

from recon.datasets.cameras import look_at_c2w
from recon.datasets.dtu_monosdf import decompose_projection, load_dtu_monosdf, to_dtu_world
from recon.datasets.loader import detect_format, load_scene
from recon.errors import InputError

from conftest import dataset

K_FULL = np.array([[2890.0, 0.0, 810.0], [0.0, 2880.0, 610.0], [0.0, 0.0, 1.0]])
SCALE_MAT = np.array([[200.0, 0, 0, 40.0], [0, 200.0, 0, -20.0], [0, 0, 200.0, 600.0], [0, 0, 0, 1]])


def _write_scan(root, n=3, size=(48, 48), masks=False):
    """A MonoSDF-style folder whose world_mats come from known cameras in DTU millimetres."""
    root.mkdir(parents=True, exist_ok=True)
    mats, c2ws = {}, []
    for i in range(n):
        eye_norm = 2.7 * np.array([np.cos(i), np.sin(i), 0.6])
        c2w_norm = look_at_c2w(eye_norm, (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))
        c2ws.append(c2w_norm)
        # the same camera in DTU world: x_dtu = S x_norm, so w2c_dtu = w2c_norm @ S^-1 (with a scale)
        w2c_dtu = np.linalg.inv(c2w_norm) @ np.linalg.inv(SCALE_MAT)
        P = K_FULL @ w2c_dtu[:3]
        P = P / P[2, :3].dot(P[2, :3]) ** 0.5 * 7.0  # any overall positive scale of the projection
        world = np.eye(4)
        world[:3] = P
        mats[f"world_mat_{i}"] = world
        mats[f"scale_mat_{i}"] = SCALE_MAT
        Image.fromarray(np.full((size[1], size[0], 3), 100, np.uint8)).save(root / f"{i:06d}_rgb.png")
        if masks:
            Image.fromarray(np.full((size[1], size[0]), 255, np.uint8)).save(root / f"{i:06d}_mask.png")
    np.savez(root / "cameras.npz", **mats)
    return c2ws


def test_decompose_projection_recovers_k_r_t():
    R = look_at_c2w((1.0, 2.0, 3.0), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))[:3, :3].T
    t = np.array([0.1, -0.2, 3.0])
    P = -2.5 * K_FULL @ np.concatenate([R, t[:, None]], 1)  # negative overall scale
    K, R2, t2 = decompose_projection(P)
    assert np.allclose(K, K_FULL) and np.allclose(R2, R) and np.allclose(t2, t)
    assert np.linalg.det(R2) > 0


def test_square_monosdf_crop_and_normalised_poses(tmp_path):
    c2ws = _write_scan(tmp_path / "scan", size=(48, 48), masks=True)
    assert detect_format(tmp_path / "scan") == "dtu" and detect_format(tmp_path / "scan" / "cameras.npz") == "dtu"
    scene = load_scene(tmp_path / "scan")
    assert scene.source == "dtu" and len(scene.cameras) == 3
    s = 48 / 1200
    for cam, c2w in zip(scene.cameras, c2ws):
        assert np.allclose(cam.c2w, c2w, atol=1e-8)
        assert cam.fx == pytest.approx(2890 * s) and cam.fy == pytest.approx(2880 * s)
        assert cam.cx == pytest.approx((810 - 200) * s) and cam.cy == pytest.approx(610 * s)
        assert cam.mask_path is not None
    assert np.allclose(scene.extras["scale_mat"], SCALE_MAT)
    pts = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert np.allclose(to_dtu_world(pts, scene), [[40.0, -20.0, 600.0], [240.0, -20.0, 600.0]])


def test_full_resolution_frame_is_not_cropped(tmp_path):
    c2ws = _write_scan(tmp_path / "scan", n=2, size=(160, 120))
    scene = load_dtu_monosdf(tmp_path / "scan")
    cam = scene.cameras[0]
    assert cam.fx == pytest.approx(289.0) and cam.cx == pytest.approx(81.0) and cam.cy == pytest.approx(61.0)
    assert np.allclose(cam.c2w, c2ws[0], atol=1e-8) and cam.mask_path is None


def test_bad_folders(tmp_path):
    _write_scan(tmp_path / "scan", n=2, size=(50, 30))
    with pytest.raises(InputError, match="50x30"):
        load_dtu_monosdf(tmp_path / "scan")
    _write_scan(tmp_path / "scan2", n=2)
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(tmp_path / "scan2" / "000005_rgb.png")
    with pytest.raises(InputError, match="world_mat_5"):
        load_dtu_monosdf(tmp_path / "scan2")
    (tmp_path / "scan3").mkdir()
    (tmp_path / "scan3" / "cameras.npz").write_bytes(b"not an npz")
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(tmp_path / "scan3" / "000000_rgb.png")
    with pytest.raises(InputError, match="cameras.npz"):
        load_dtu_monosdf(tmp_path / "scan3")


@pytest.mark.realdata
def test_dtu_scan24(recon_data):
    root = dataset(recon_data, "dtu_scan24_monosdf")
    scene = load_scene(root)
    assert scene.source == "dtu" and len(scene.cameras) == 49
    cam = scene.cameras[0]
    # shared/data/README.md: fx 925.55, fy 922.62, cx 199.43, cy 198.10 at 384x384
    assert (cam.width, cam.height) == (384, 384)
    assert cam.fx == pytest.approx(925.55, abs=0.01) and cam.fy == pytest.approx(922.62, abs=0.01)
    assert cam.cx == pytest.approx(199.43, abs=0.01) and cam.cy == pytest.approx(198.10, abs=0.01)
    for c in scene.cameras:
        assert 2.5 < np.linalg.norm(c.center) < 3.0  # ~2.72 from the object's centre
        uvw = c.K @ c.w2c[:3, 3]  # the origin of the normalised space
        assert uvw[2] > 0  # in front of every camera, projecting near the image centre (<= ~11 px here)
        assert np.hypot(uvw[0] / uvw[2] - 192, uvw[1] / uvw[2] - 192) < 20
    assert np.allclose(np.diag(scene.extras["scale_mat"])[:3], 223.3332, atol=1e-3)
    train, test = scene.split()
    assert len(test) == 7 and len(train) == 42
