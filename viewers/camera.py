"""Cameras between viser and recon: pure functions, no server needed.

viser reports a client's camera as ``wxyz`` (the rotation R in ``p_world = R p_camera + t``), the
``position`` t, a *vertical* field of view in radians and the canvas aspect ratio (width / height).
Its camera axes follow OpenCV (+X right, +Y down, +Z forward), the same axes as recon's ``c2w``, so
the pose carries over unchanged; only the intrinsics are rebuilt for the chosen render size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from recon.datasets.cameras import Camera


@dataclass(frozen=True)
class ViserPose:
    """A camera as viser describes it (what ``client.camera`` and ``add_camera_frustum`` take)."""

    wxyz: np.ndarray  # (4,) unit quaternion, camera-to-world rotation
    position: np.ndarray  # (3,) camera centre in world coordinates
    fov: float  # vertical field of view, radians
    aspect: float  # width / height


def quat_to_matrix(wxyz) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> 3x3 rotation matrix (normalised first)."""
    q = np.asarray(wxyz, dtype=np.float64)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n == 0.0:
        raise ValueError(f"not a rotation quaternion: {q}")
    w, x, y, z = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat(R) -> np.ndarray:
    """3x3 rotation matrix -> unit quaternion (w, x, y, z) with w >= 0 (Shepperd's branch choice,
    which stays accurate for rotations near 180 degrees)."""
    R = np.asarray(R, dtype=np.float64)
    trace = R[0, 0] + R[1, 1] + R[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * math.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * math.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def render_size(aspect: float, long_side: int) -> tuple[int, int]:
    """(width, height) of a frame with this aspect whose longer side is ``long_side`` pixels."""
    if not (aspect > 0 and math.isfinite(aspect)):
        raise ValueError(f"aspect must be a positive number, got {aspect}")
    long_side = max(1, int(long_side))
    if aspect >= 1.0:
        return long_side, max(1, int(round(long_side / aspect)))
    return max(1, int(round(long_side * aspect))), long_side


def camera_from_viser(wxyz, position, fov: float, aspect: float, width: int, height: int | None = None,
                      *, name: str = "viewer", time: float | None = None) -> Camera:
    """A recon pinhole :class:`Camera` for a viser camera, rendered ``width`` x ``height`` pixels
    (``height`` defaults to ``width / aspect``). Square pixels, principal point at the image centre,
    ``fy`` from the vertical field of view so the frame shows what the browser shows."""
    if not (0.0 < fov < math.pi):
        raise ValueError(f"vertical field of view must be in (0, pi) radians, got {fov}")
    width = int(width)
    height = int(height) if height is not None else max(1, int(round(width / aspect)))
    c2w = np.eye(4)
    c2w[:3, :3] = quat_to_matrix(wxyz)
    c2w[:3, 3] = np.asarray(position, dtype=np.float64).reshape(3)
    f = 0.5 * height / math.tan(0.5 * fov)
    return Camera(name=name, width=width, height=height, fx=f, fy=f, cx=0.5 * width, cy=0.5 * height, c2w=c2w, time=time)


def viser_pose_of(camera: Camera) -> ViserPose:
    """The viser description of a recon camera (pose, vertical FOV, aspect) — for frustums and for
    moving a browser's camera onto a training view."""
    return ViserPose(
        wxyz=matrix_to_quat(camera.c2w[:3, :3]),
        position=np.array(camera.c2w[:3, 3], dtype=np.float64),
        fov=2.0 * math.atan(0.5 * camera.height / camera.fy),
        aspect=camera.width / camera.height,
    )


def up_vector(cameras) -> np.ndarray | None:
    """The world's up direction as the cameras see it (:func:`recon.export.gltf.scene_up_vector`: the
    normalised mean of their image-up axes, OpenCV -y), or None when there are no cameras or their
    up axes cancel out."""
    from recon.export.gltf import scene_up_vector

    try:
        return scene_up_vector(list(cameras))
    except ValueError:
        return None


def focus_point(cameras) -> np.ndarray | None:
    """The point nearest (least squares) to every camera's optical axis: what a capture looks at.
    Falls back to the mean camera centre when the axes are (nearly) parallel."""
    if not cameras:
        return None
    A = np.zeros((3, 3))
    b = np.zeros(3)
    centres = []
    for cam in cameras:
        c2w = np.asarray(cam.c2w, dtype=np.float64)
        d = c2w[:3, 2] / np.linalg.norm(c2w[:3, 2])
        P = np.eye(3) - np.outer(d, d)  # projects onto the plane orthogonal to the axis
        A += P
        b += P @ c2w[:3, 3]
        centres.append(c2w[:3, 3])
    centre = np.mean(centres, axis=0)
    if np.linalg.cond(A) > 1e6:
        return centre
    return np.linalg.solve(A, b)
