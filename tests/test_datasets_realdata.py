"""Loaders on real captures from $RECON_DATA (skipped when unset).

The strong check is geometric: SIFT matches between neighbouring real photos, triangulated with
*our* cameras (poses, intrinsics, distortion), must reproject to about a pixel. Any convention
mistake (OpenGL vs OpenCV axes, LLFF column order, quaternion order, focal rescaling, half-pixel
shifts, distortion direction) moves the rays and breaks this; each test also shows that a
deliberately wrong convention fails the same criterion, so the check is known to bite.
"""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import dataset
from recon.datasets.cameras import Camera
from recon.datasets.colmap import load_colmap
from recon.datasets.images import cached_image_path, load_view
from recon.datasets.loader import detect_format, load_scene

pytestmark = pytest.mark.realdata

GOOD_MEDIAN_PX = 1.5  # at full resolution
SURVIVOR_PX = 2.0  # a triangulated point "survives" when its mean reprojection error is below this
MIN_SURVIVORS = 100


# =============================================================================================
# features, matches, triangulation
# =============================================================================================
def _extractor():
    import pycolmap

    opts = pycolmap.FeatureExtractionOptions()
    opts.max_image_size = 4096  # we downscale ourselves
    opts.num_threads = 2
    opts.sift.max_num_features = 4000
    if hasattr(pycolmap, "FeatureExtractor"):  # pycolmap >= 3.13
        ext = pycolmap.FeatureExtractor.create(opts, pycolmap.Device.cpu)

        def run(gray: np.ndarray):
            kps, desc = ext.extract_from_uint8_array(np.ascontiguousarray(gray))
            return np.array([(k.x, k.y) for k in kps], np.float64).reshape(-1, 2), np.asarray(desc.data, np.float32)

        return run
    sift = pycolmap.Sift(opts, pycolmap.Device.cpu)  # pragma: no cover - older pycolmap

    def run_old(gray: np.ndarray):  # pragma: no cover
        kp, desc = sift.extract(np.ascontiguousarray(gray.astype(np.float32) / 255.0))
        return np.asarray(kp[:, :2], np.float64), np.asarray(desc, np.float32)

    return run_old


def sift_features(extract, gray: np.ndarray, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (COLMAP pixel convention: centre of the top-left pixel at 0.5) and unit descriptors,
    optionally only where ``keep`` (a bool image) is true."""
    xy, desc = extract(gray)
    desc = desc / (np.linalg.norm(desc, axis=1, keepdims=True) + 1e-12)
    if keep is not None:
        ij = np.clip(np.floor(xy).astype(int), 0, [keep.shape[1] - 1, keep.shape[0] - 1])
        sel = keep[ij[:, 1], ij[:, 0]]
        xy, desc = xy[sel], desc[sel]
    return xy, desc


def mutual_matches(d1: np.ndarray, d2: np.ndarray, ratio: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours passing Lowe's ratio test."""
    sim = d1 @ d2.T
    nn12, nn21 = sim.argmax(1), sim.argmax(0)
    top2 = np.sort(sim, axis=1)[:, -2:]
    dist = np.sqrt(np.maximum(2.0 - 2.0 * top2, 0.0))  # unit vectors: |a-b|^2 = 2 - 2 a.b
    ok = (nn21[nn12] == np.arange(len(d1))) & (dist[:, 1] < ratio * dist[:, 0])
    i = np.nonzero(ok)[0]
    return i, nn12[i]


def tracks_from_reference(feats: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(N, V, 2) observations of the reference view's keypoints in every view (NaN = unmatched),
    kept when seen in at least 3 views."""
    ref_xy, ref_d = feats[0]
    obs = np.full((len(ref_xy), len(feats), 2), np.nan)
    obs[:, 0] = ref_xy
    for v in range(1, len(feats)):
        i, j = mutual_matches(ref_d, feats[v][1])
        obs[i, v] = feats[v][0][j]
    return obs[(~np.isnan(obs[:, :, 0])).sum(1) >= 3]


def triangulate_errors(cams: list[Camera], obs: np.ndarray) -> np.ndarray:
    """Linear (DLT) triangulation of every track from our cameras, keypoints undistorted with our
    Distortion; returns each point's mean reprojection error in pixels (inf when behind a camera)."""
    n, V = obs.shape[:2]
    seen = ~np.isnan(obs[:, :, 0])
    A = np.zeros((n, 2 * V, 4))
    for v, cam in enumerate(cams):
        uv = np.where(seen[:, v, None], obs[:, v], [cam.cx, cam.cy])
        xy = np.stack([(uv[:, 0] - cam.cx) / cam.fx, (uv[:, 1] - cam.cy) / cam.fy], axis=-1)
        if cam.distortion is not None:
            xy = cam.distortion.undistort(xy)
        P = cam.w2c[:3]
        A[:, 2 * v] = (xy[:, :1] * P[2] - P[0]) * seen[:, v, None]
        A[:, 2 * v + 1] = (xy[:, 1:] * P[2] - P[1]) * seen[:, v, None]
    X = np.linalg.svd(A)[2][:, -1]
    X = X[:, :3] / X[:, 3:]
    err = np.zeros(n)
    behind = np.zeros(n, bool)
    for v, cam in enumerate(cams):
        uv, z = cam.project(X)
        e = np.linalg.norm(uv - obs[:, v], axis=1)
        err += np.where(seen[:, v], e, 0.0)
        behind |= seen[:, v] & ~(z > 0)
    err /= seen.sum(1)
    return np.where(behind | ~np.isfinite(err), np.inf, err)


@dataclasses.dataclass
class TriResult:
    tracks: int
    median_px: float  # full-resolution pixels
    survivors: int

    def good(self) -> bool:
        return self.median_px <= GOOD_MEDIAN_PX and self.survivors > MIN_SURVIVORS


def evaluate(cams: list[Camera], obs: np.ndarray, scale: float) -> TriResult:
    err = triangulate_errors(cams, obs) * scale
    return TriResult(len(err), float(np.median(err)), int((err < SURVIVOR_PX).sum()))


def nearest_views(cams: list[Camera], ref: int, k: int) -> list[int]:
    centers = np.stack([c.center for c in cams])
    return [int(i) for i in np.argsort(np.linalg.norm(centers - centers[ref], axis=1))[:k]]


def gray_at(cam: Camera, size: tuple[int, int]) -> np.ndarray:
    with Image.open(cam.image_path) as im:
        return np.asarray(im.convert("L").resize(size, Image.Resampling.BOX))


# =============================================================================================
# fox: transforms.json, OpenGL axes, OPENCV distortion
# =============================================================================================
def test_fox_loads_with_readme_values(recon_data: Path):
    root = dataset(recon_data, "fox")
    assert detect_format(root) == "nerf"
    scene = load_scene(root)
    assert scene.source == "nerf" and len(scene.cameras) == 67
    cam = scene.cameras[0]
    assert cam.name == "images/0001.jpg"
    assert (cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy) == (1080, 1920, 1375.52, 1374.49, 554.558, 965.268)
    assert cam.distortion.model == "OPENCV"
    assert cam.distortion.params == {"k1": 0.0578421, "k2": -0.0805099, "p1": -0.000980296, "p2": 0.00015575}
    assert scene.extras["aabb_scale"] == 4
    # README: every camera looks at the middle of the scene near the origin, 3.8-6.4 units away, so
    # the origin is in front of each camera and well inside its image (in OpenGL axes it would be behind)
    for c in scene.cameras:
        uv, z = c.project(np.zeros((1, 3)))
        assert 3.5 < z[0] < 6.5 and abs(uv[0, 0] - c.cx) < 0.25 * c.width and abs(uv[0, 1] - c.cy) < 0.25 * c.height
    train, test = scene.split()
    assert test == list(range(0, 67, 8)) and len(train) == 67 - 9


def test_fox_triangulation(recon_data: Path):
    scene = load_scene(dataset(recon_data, "fox"))
    ds = 2
    idx = nearest_views(scene.cameras, 0, 4)
    cams = [scene.cameras[i].scaled(ds) for i in idx]
    size = (cams[0].width, cams[0].height)
    extract = _extractor()
    obs = tracks_from_reference([sift_features(extract, gray_at(scene.cameras[i], size)) for i in idx])

    right = evaluate(cams, obs, ds)
    assert right.good(), right
    # Same matches, cameras left in the file's OpenGL axes: the check must fail.
    wrong = evaluate([dataclasses.replace(c, c2w=c.c2w @ np.diag([1.0, -1.0, -1.0, 1.0])) for c in cams], obs, ds)
    assert not wrong.good() and wrong.median_px > 3.0 and wrong.survivors < right.survivors / 4, (right, wrong)


def test_fox_undistorted_views_are_pinhole_consistent(recon_data: Path):
    """End to end through recon.datasets.images: features found on the *undistorted* downscaled
    images triangulate with the pinhole View cameras (no distortion left to model)."""
    scene = load_scene(dataset(recon_data, "fox"))
    ds = 2
    idx = nearest_views(scene.cameras, 0, 4)
    views = [load_view(scene.cameras[i], ds) for i in idx]
    assert all(v.camera.distortion is None and v.mask is not None for v in views)
    extract = _extractor()
    feats = []
    for v in views:
        gray = np.round(v.image.numpy() @ np.array([0.299, 0.587, 0.114], np.float32) * 255).astype(np.uint8)
        keep = v.mask.numpy()[..., 0] > 0.5
        keep[:2], keep[-2:], keep[:, :2], keep[:, -2:] = False, False, False, False
        feats.append(sift_features(extract, gray, keep))
    result = evaluate([v.camera for v in views], tracks_from_reference(feats), ds)
    assert result.good(), result
    # the downscaled copies went to the cache ($RECON_CACHE), never into $RECON_DATA
    cache = cached_image_path(scene.cameras[idx[0]].image_path, ds)
    assert cache.is_file() and recon_data.resolve() not in cache.resolve().parents


def test_fox_missing_image_is_skipped(recon_data: Path, tmp_path: Path):
    """README: delete one image in a temporary copy; the loader skips that frame with a warning."""
    root = dataset(recon_data, "fox")
    shutil.copy(root / "transforms.json", tmp_path / "transforms.json")
    (tmp_path / "images").mkdir()
    for img in sorted((root / "images").iterdir())[1:]:  # 0001.jpg left out
        (tmp_path / "images" / img.name).symlink_to(img)
    with pytest.warns(UserWarning, match="1 of 67 frames have no image file"):
        scene = load_scene(tmp_path)
    assert len(scene.cameras) == 66 and scene.cameras[0].name == "images/0002.jpg"


# =============================================================================================
# ethiopian_head: LLFF + masks
# =============================================================================================
def test_ethiopian_head_llff_and_masks(recon_data: Path):
    root = dataset(recon_data, "ethiopian_head")
    assert detect_format(root) == "llff"
    scene = load_scene(root)
    assert scene.source == "llff" and len(scene.cameras) == 66
    cam = scene.cameras[0]
    assert cam.name == "DSC_0007.jpg" and cam.image_path.parent.name == "images_4"
    assert (cam.width, cam.height, cam.cx, cam.cy) == (1000, 1000, 500.0, 500.0)
    assert cam.fx == pytest.approx(7543.57464 / 4, abs=1e-3) and cam.fy == cam.fx
    assert all(c.mask_path is not None and c.mask_path.stem == Path(c.name).stem for c in scene.cameras)
    assert "DSC_0066.jpg" not in [c.name for c in scene.cameras]
    view = load_view(cam, 2)
    with Image.open(cam.mask_path) as m:
        fraction = (np.asarray(m) >= 128).mean()
    assert view.mask.shape == (500, 500, 1)
    assert abs(float(view.mask.mean()) - fraction) < 0.01 and 0.05 < fraction < 0.95


def test_ethiopian_head_triangulation(recon_data: Path):
    scene = load_scene(dataset(recon_data, "ethiopian_head"))
    # images_4 is already 1/4 of the 4000 px originals, so features run on the files as they are.
    idx = nearest_views(scene.cameras, 0, 4)
    cams = [scene.cameras[i] for i in idx]
    extract = _extractor()
    feats = []
    for c in cams:
        with Image.open(c.mask_path) as m:
            keep = np.asarray(m.convert("L")) >= 128  # the object turns; the background does not
        feats.append(sift_features(extract, gray_at(c, (c.width, c.height)), keep))
    obs = tracks_from_reference(feats)
    right = evaluate(cams, obs, 1.0)
    assert right.good(), right
    # Same matches, LLFF's raw [down, right, back] columns taken as if they were OpenCV axes.
    pb = np.load(scene.extras["poses_bounds_path"])[:, :15].reshape(-1, 3, 5)
    raw = []
    for c, i in zip(cams, idx):
        c2w = np.eye(4)
        c2w[:3, :4] = pb[i, :, :4]
        raw.append(dataclasses.replace(c, c2w=c2w))
    wrong = evaluate(raw, obs, 1.0)
    assert not wrong.good() and wrong.median_px > 3.0 and wrong.survivors < right.survivors / 4, (right, wrong)


# =============================================================================================
# davis_lady_running: binary COLMAP written by pycolmap 4 (rigs.bin, frames.bin)
# =============================================================================================
def _observation_errors(scene, cams_by_id: dict[int, Camera]) -> np.ndarray:
    xyz = scene.extras["colmap_points_xyz"]
    kp = scene.extras["colmap_keypoints"]
    errs = []
    by_image: dict[int, list[tuple[int, int]]] = {}
    for p, track in enumerate(scene.extras["colmap_tracks"]):
        for image_id, idx in track:
            by_image.setdefault(int(image_id), []).append((p, int(idx)))
    for image_id, pairs in by_image.items():
        pts, idxs = np.array(pairs).T
        uv, _ = cams_by_id[image_id].project(xyz[pts])
        errs.append(np.linalg.norm(uv - kp[image_id][idxs], axis=1))
    return np.concatenate(errs)


def test_davis_colmap_reprojection(recon_data: Path):
    import pycolmap

    model = dataset(recon_data, "davis_lady_running") / "colmap_sparse" / "0"
    assert (model / "rigs.bin").is_file() and (model / "frames.bin").is_file()
    assert detect_format(model) == "colmap"
    scene = load_scene(model)
    assert len(scene.cameras) == 51 and scene.cameras[0].name == "00014.jpg" and scene.cameras[-1].name == "00064.jpg"
    assert scene.cameras[0].image_path.parent == (recon_data / "davis_lady_running").resolve()
    cam = scene.cameras[0]
    assert (cam.width, cam.height, cam.cx, cam.cy) == (854, 480, 427.0, 240.0)
    assert cam.fx == pytest.approx(667.46, abs=0.01) and cam.distortion.model == "SIMPLE_RADIAL"
    assert cam.distortion.params["k1"] == pytest.approx(-0.0394, abs=1e-4)
    assert scene.points.shape == (5768, 3) and scene.point_colors.shape == (5768, 3)

    rec = pycolmap.Reconstruction(str(model))
    for c in scene.cameras:
        np.testing.assert_allclose(c.w2c[:3], rec.images[c.extras["colmap_image_id"]].cam_from_world().matrix(), atol=1e-9)

    cams_by_id = {c.extras["colmap_image_id"]: c for c in scene.cameras}
    errs = _observation_errors(scene, cams_by_id)
    assert len(errs) == 54859
    assert errs.mean() < 1.0, errs.mean()
    # a quaternion read as (x, y, z, w) instead of (w, x, y, z) would be R^T for a real rotation only
    # approximately; the inverse pose is a convention error of the same kind: it must fail clearly.
    swapped = {i: dataclasses.replace(c, c2w=np.linalg.inv(c.c2w)) for i, c in cams_by_id.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad = _observation_errors(scene, swapped)
    assert not np.nanmean(bad) < 10.0


def test_davis_image_loads_at_colmap_size(recon_data: Path):
    scene = load_colmap(dataset(recon_data, "davis_lady_running") / "colmap_sparse" / "0")
    view = load_view(scene.cameras[0], 2)
    assert view.image.shape == (240, 427, 3) and view.camera.distortion is None
    assert view.mask is None  # barrel distortion (k < 0): every output pixel has a source
