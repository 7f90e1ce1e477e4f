"""Structure from motion in-process (pycolmap): photos -> cameras, poses and sparse points.

Two entry points:

- :func:`run_sfm` -- photos without poses. SIFT features (CPU), exhaustive matching for small
  unordered sets and sequential matching for video frames, incremental mapping with a fall-back to
  global mapping (GLOMAP) when the incremental model registers too few images or disagrees with
  the photos' EXIF GPS. Writes a standard COLMAP binary model (``sparse/0``) that
  :func:`recon.datasets.colmap.load_colmap` reads.
- :func:`triangulate_known_poses` -- a scene with poses but no points (transforms.json, LLFF):
  features + matches, then triangulation with the poses and intrinsics held fixed. This is what
  3DGS-style training initialises from.

Both cache their results in :func:`recon.utils.paths.derived_dir` (``sfm`` / ``sfm_points``),
keyed on the images (names, sizes, mtimes), the masks and the options; ``force=True`` recomputes.
A cache folder is valid only when its ``report.json`` carries the current key, and the report is
written last (atomically) after everything else was built in a temporary folder and renamed into
place, so an interrupted run never leaves a cache that looks complete.

Masks (white = keep, black = ignore, same stem as the image, ``.png``) are thresholded at 128 and
written under COLMAP's naming (``X.jpg`` -> ``X.jpg.png``) into a temporary folder.

Modules (the names above are re-exported here; the underscored helpers live in):

- :mod:`.pipeline` -- :func:`run_sfm`, :class:`SfmResult`, :func:`print_report`.
- :mod:`.known_poses` -- :func:`triangulate_known_poses`, :func:`camera_to_pycolmap`.
- :mod:`.inputs` -- matcher choice, frame-name detection, pair lists, single camera from EXIF,
  camera-model check, masks.
- :mod:`.colmap_steps` -- the lazy pycolmap import, quiet logging, cancellable calls, feature
  extraction, matching, database facts, model statistics.
- :mod:`.mapping` -- incremental mapping with the global fall-back, failure reasons.
- :mod:`.gps` -- EXIF GPS and the check of a model against it.
- :mod:`.cache` -- cache keys, reading and committing result folders.
- :mod:`.progress` -- the rich progress lines.

Import order: Pillow is imported when this package is (``inputs``, ``gps``, ``known_poses``);
pycolmap only lazily, on first use (``colmap_steps._pycolmap``). Once pycolmap 4.2.1 is loaded,
Pillow's PNG *encoder* can abort the process (zlib symbol clash; PNG reading is fine), so PNGs
written here go through COLMAP's own writer (``inputs._write_colmap_masks``).
"""

from __future__ import annotations

# Public constants (tests and callers read them as recon.datasets.sfm.X) are re-exported too.
from recon.datasets.sfm.cache import CACHE_VERSION, REPORT_NAME  # noqa: F401
from recon.datasets.sfm.gps import GPS_MIN_EXTENT_M, GPS_MIN_IMAGES, GPS_TOLERANCE_FRACTION, GPS_TOLERANCE_M  # noqa: F401
from recon.datasets.sfm.inputs import EXHAUSTIVE_MAX_IMAGES, MATCHERS, SEQUENTIAL_OVERLAP, VIDEO_MARKER  # noqa: F401
from recon.datasets.sfm.inputs import choose_matcher, looks_like_frames
from recon.datasets.sfm.known_poses import camera_to_pycolmap, triangulate_known_poses
from recon.datasets.sfm.mapping import FALLBACK_FRACTION  # noqa: F401
from recon.datasets.sfm.pipeline import SfmResult, print_report, run_sfm

__all__ = [
    "SfmResult",
    "run_sfm",
    "triangulate_known_poses",
    "choose_matcher",
    "looks_like_frames",
    "print_report",
    "camera_to_pycolmap",
    "CACHE_VERSION",
]
