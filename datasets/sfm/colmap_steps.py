"""pycolmap steps shared by :func:`~recon.datasets.sfm.run_sfm` and
:func:`~recon.datasets.sfm.triangulate_known_poses`: the lazy pycolmap import, quiet logging,
threads/device, cancellable calls (Ctrl-C), feature extraction, pair matching, database facts and
model statistics."""

from __future__ import annotations

import contextlib
import math
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from recon.datasets.sfm.progress import _Stages


def _pycolmap():
    try:
        import pycolmap
    except ImportError as err:  # a broken install, not bad input
        raise RuntimeError(f"SfM needs pycolmap (pip install pycolmap): {err}") from err
    return pycolmap


@contextlib.contextmanager
def _quiet_colmap(enabled: bool = True) -> Iterator[None]:
    """COLMAP logs every step through glog on stderr; keep the terminal for our own progress.
    ``RECON_SFM_VERBOSE=1`` keeps COLMAP's log."""
    pycolmap = _pycolmap()
    if not enabled or os.environ.get("RECON_SFM_VERBOSE"):
        yield
        return
    try:
        old = pycolmap.logging.minloglevel
        pycolmap.logging.minloglevel = 3  # FATAL only; failures reach us as return values/exceptions
    except Exception:  # pragma: no cover - logging API differs
        yield
        return
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def _threads(num_threads: int) -> int:
    return int(num_threads) if num_threads and num_threads > 0 else (os.cpu_count() or 1)


def _device():
    pycolmap = _pycolmap()
    return pycolmap.Device.auto if getattr(pycolmap, "has_cuda", False) else pycolmap.Device.cpu


def _run_cancellable(fn):
    """Run the blocking pycolmap call ``fn(token)`` in a worker thread (pycolmap releases the GIL),
    so Ctrl-C reaches Python at once and cancels the call through COLMAP's CancellationToken
    (where the call takes one). Exceptions of the call are re-raised here."""
    pycolmap = _pycolmap()
    try:
        token = pycolmap.CancellationToken()
    except Exception:  # pragma: no cover - API differs
        token = None
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(token)
        except BaseException as err:  # noqa: BLE001 - handed to the calling thread
            box["error"] = err

    th = threading.Thread(target=target, name="recon-sfm", daemon=True)
    th.start()
    try:
        while th.is_alive():
            th.join(0.2)
    except KeyboardInterrupt:
        if token is not None:
            token.cancel()
            th.join(30)
        raise
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _extract(
    db_path: Path,
    image_dir: Path,
    names: Sequence[str],
    *,
    camera_model: str,
    single_camera: bool,
    max_image_size: int,
    num_threads: int,
    mask_dir: Path | None,
    stages: _Stages,
) -> None:
    """SIFT features of ``names`` into the database (one shared camera, or one per image).

    pycolmap has no progress callback, so the images go in a few calls and the line moves per
    call. COLMAP extracts the images of one call in parallel: a call gets at least 3 images per
    thread (smaller calls leave cores idle), and there are at most 20 calls."""
    pycolmap = _pycolmap()
    eopts = pycolmap.FeatureExtractionOptions()
    eopts.max_image_size = int(max_image_size)
    eopts.num_threads = int(num_threads)
    n_chunks = max(1, min(20, len(names) // (3 * _threads(num_threads))))
    bounds = np.linspace(0, len(names), n_chunks + 1).round().astype(int)
    mode = pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.PER_IMAGE
    camera_id = None
    with stages.stage("extract", total=len(names)) as st:
        for i, j in zip(bounds[:-1], bounds[1:]):
            ropts = pycolmap.ImageReaderOptions()
            ropts.camera_model = camera_model
            if mask_dir is not None:
                ropts.mask_path = str(mask_dir)
            if single_camera and camera_id is not None:
                ropts.existing_camera_id = camera_id  # later calls join the first call's camera
            chunk = list(names[i:j])
            _run_cancellable(
                lambda tok: pycolmap.extract_features(
                    str(db_path), str(image_dir), image_names=chunk, camera_mode=mode, reader_options=ropts,
                    extraction_options=eopts, device=_device(), cancellation_token=tok,
                )
            )
            if single_camera and camera_id is None:
                db = pycolmap.Database.open(str(db_path))
                try:
                    cams = db.read_all_cameras()
                    camera_id = cams[0].camera_id if cams else None
                finally:
                    db.close()
            st.advance(int(j - i))


def _pair_chunks(pairs: list[tuple[str, str]], order: Sequence[str]) -> list[list[tuple[str, str]]]:
    """Split pairs into calls that each touch few images.

    Each call loads the features of every image it touches (~0.1 s per image on a CPU), so pairs
    are grouped by blocks of the image order: exhaustive pairs become block x block tiles, the
    near-diagonal pairs of sequential matching become windows, and what is left (the far pairs of
    quadratic overlap, small tiles) goes into one last call. Loads stay within ~10 % of one call."""
    n = len(order)
    block = max(10, math.ceil(n / 6))
    index = {name: i for i, name in enumerate(order)}
    tiles: dict[tuple[int, int], list[tuple[str, str]]] = {}
    for a, b in pairs:
        i, j = sorted((index[a], index[b]))
        tiles.setdefault((i // block, j // block), []).append((a, b))
    chunks, rest = [], []
    for key in sorted(tiles):
        if len(tiles[key]) >= block * 2:
            chunks.append(tiles[key])
        else:
            rest.extend(tiles[key])
    if rest:
        chunks.append(rest)
    return chunks


def _match(
    db_path: Path,
    pairs: list[tuple[str, str]],
    order: Sequence[str],
    work: Path,
    *,
    num_threads: int,
    stages: _Stages,
    note: str = "",
) -> None:
    """Match and geometrically verify image pairs, in a few calls so the line moves (with ETA)."""
    pycolmap = _pycolmap()
    mopts = pycolmap.FeatureMatchingOptions()
    mopts.num_threads = int(num_threads)
    with stages.stage("match", total=len(pairs), note=note) as st:
        if not pairs:
            return
        if any(" " in a or " " in b for a, b in pairs):  # the pair file is space separated
            _run_cancellable(
                lambda tok: pycolmap.match_exhaustive(
                    str(db_path), matching_options=mopts, device=_device(), cancellation_token=tok
                )
            )
            return
        pair_file = work / "pairs.txt"
        for chunk in _pair_chunks(pairs, order):
            pair_file.write_text("".join(f"{a} {b}\n" for a, b in chunk))
            popts = pycolmap.ImportedPairingOptions()
            popts.match_list_path = str(pair_file)
            _run_cancellable(
                lambda tok: pycolmap.match_image_pairs(
                    str(db_path), matching_options=mopts, pairing_options=popts, device=_device(),
                    cancellation_token=tok,
                )
            )
            st.advance(len(chunk))


def _db_facts(db_path: Path) -> dict:
    """What the database knows per image: id, camera, keypoints; verified inliers per pair."""
    pycolmap = _pycolmap()
    db = pycolmap.Database.open(str(db_path))
    try:
        images = {im.name: im for im in db.read_all_images()}
        keypoints = {name: db.num_keypoints_for_image(im.image_id) for name, im in images.items()}
        pair_ids, counts = db.read_two_view_geometry_num_inliers()
        inliers: dict[tuple[int, int], int] = {}
        for pid, cnt in zip(pair_ids, counts):
            a, b = pycolmap.pair_id_to_image_pair(pid)
            inliers[(int(a), int(b))] = int(cnt)
        ids = {name: int(im.image_id) for name, im in images.items()}
        cameras = {name: int(im.camera_id) for name, im in images.items()}
    finally:
        db.close()
    return {"ids": ids, "cameras": cameras, "keypoints": keypoints, "inliers": inliers}


def _model_stats(rec) -> dict:
    n_points = int(rec.num_points3D())
    return {
        "registered": int(rec.num_reg_images()),
        "num_points": n_points,
        "num_cameras": int(rec.num_cameras()),
        "mean_reprojection_error": float(rec.compute_mean_reprojection_error()) if n_points else None,
        "mean_track_length": float(rec.compute_mean_track_length()) if n_points else None,
        "mean_observations_per_image": float(rec.compute_mean_observations_per_reg_image()) if n_points else None,
    }


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p
