"""EWA projection of 3D Gaussians to screen-space records (pure PyTorch, differentiable by autograd).

Formulas: ``shared/notes/rasterizers.md`` a.3 (clean-room; the clamped-Jacobian limits and the
opacity-aware extent follow gsplat, Apache-2.0).

Conventions (the CUDA projection kernel must match them):

- ``viewmat`` is world-to-camera (OpenCV axes: x right, y down, z forward); ``K`` is a pinhole
  ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.
- ``means2d = (fx tx/tz + cx, fy ty/tz + cy)`` with the *unclamped* camera coordinates; the Jacobian
  uses lateral coordinates clamped to ``tz * clip(t/tz, -lim_neg, lim_pos)`` with
  ``lim_pos_x = (W - cx)/fx + 0.3 * W/(2 fx)``, ``lim_neg_x = cx/fx + 0.3 * W/(2 fx)`` (same for y).
- ``cov2d = J W Sigma W^T J^T + eps2d I`` (dilated); ``conics`` = inverse of ``cov2d`` stored ``(a, b, c)``.
- ``compensation = sqrt(max(0, det(cov2d - eps2d I) / det(cov2d)))`` when ``settings.antialiased``,
  else 1.
- Culling (``radii == 0``, empty ``rects``): camera depth outside the open interval
  ``(near, far)``; ``det(cov2d) <= 0``; ``opacity * compensation < alpha_min`` (only when opacities
  are given); rectangle entirely off the image.
- Extent ``e = min(3.33, sqrt(2 ln(o * compensation / alpha_min)))`` when ``opacities`` are given
  (gsplat's opacity-aware bound; with ``o <= 1`` it guarantees ``o w < alpha_min`` outside the
  rectangle), else ``3.33``. Radii ``r_x = ceil(e sqrt(cov2d_xx))``, ``r_y = ceil(e sqrt(cov2d_yy))``;
  ``radii = max(r_x, r_y)``.
- ``rects = (x0, y0, x1, y1)`` in pixels, end exclusive: ``x0 = floor(u_x - r_x)``,
  ``x1 = ceil(u_x + r_x)`` clipped to ``[0, W]`` (y likewise). A primitive may only contribute to
  pixels inside its rect (see ``composite``). The tiles touched are
  ``[x0 // ts, ceil(x1 / ts))``, identical to gsplat's ``floor((u-r)/ts) .. ceil((u+r)/ts)``.

Culled entries keep finite values (zeros) in every float output, so gradients never carry NaNs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..types import RasterSettings

__all__ = [
    "GaussianProjection",
    "quat_to_rotmat",
    "scales_quats_to_covars",
    "project_gaussians",
    "world_to_camera",
    "camera_center",
]


class GaussianProjection(NamedTuple):
    """Output of :func:`project_gaussians` (every field indexed like the input Gaussians)."""

    means2d: torch.Tensor  # [N, 2] float, pixel coordinates of the projected mean
    conics: torch.Tensor  # [N, 3] float, (a, b, c) of inverse(cov2d)
    depths: torch.Tensor  # [N] float, camera z (sort key)
    radii: torch.Tensor  # [N] int32, max(r_x, r_y); 0 = culled
    rects: torch.Tensor  # [N, 4] int32, (x0, y0, x1, y1) pixel bbox, end exclusive, clipped to the image
    compensation: torch.Tensor  # [N] float, antialiasing opacity factor (1 when off)
    cov2d: torch.Tensor  # [N, 3] float, (xx, xy, yy) of the dilated 2D covariance


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] from quaternions [..., 4] in (w, x, y, z) order, normalised inside."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def scales_quats_to_covars(scales: torch.Tensor, quats: torch.Tensor) -> torch.Tensor:
    """3D covariances [..., 3, 3] = (R S)(R S)^T from linear scales [..., 3] and quaternions [..., 4] (wxyz)."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def world_to_camera(points: torch.Tensor, viewmat: torch.Tensor) -> torch.Tensor:
    """Points [..., 3] in world coordinates to camera coordinates with a world-to-camera 4x4."""
    return points @ viewmat[:3, :3].transpose(0, 1) + viewmat[:3, 3]


def camera_center(viewmat: torch.Tensor) -> torch.Tensor:
    """Camera centre [3] in world coordinates: ``-R^T t`` for ``viewmat = [R | t]``."""
    return -(viewmat[:3, :3].transpose(0, 1) @ viewmat[:3, 3])


def project_gaussians(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    settings: RasterSettings = RasterSettings(),
    opacities: torch.Tensor | None = None,
) -> GaussianProjection:
    """Project Gaussians (means [N,3], quats [N,4] wxyz, linear scales [N,3]) into one pinhole camera.

    ``opacities`` [N] (post-activation) is optional; when given, the extent is opacity-aware and
    Gaussians with ``o * compensation < alpha_min`` are culled (this is what :func:`render_gaussians`
    does). Differentiable by autograd w.r.t. means, quats, scales, viewmat and K for
    ``means2d``/``conics``/``depths``/``cov2d``/``compensation``; ``radii`` and ``rects`` are integer.
    """
    dtype = means.dtype
    t = world_to_camera(means, viewmat.to(dtype))  # [N, 3]
    tx, ty, tz = t.unbind(-1)
    valid = (tz > settings.near) & (tz < settings.far)
    # Double-where: culled entries compute with a safe depth, so neither values nor grads are NaN.
    tz_s = torch.where(valid, tz, torch.ones_like(tz))

    K = K.to(dtype)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    rz = 1.0 / tz_s
    u = fx * tx * rz + cx
    v = fy * ty * rz + cy

    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    txc = tz_s * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, tx * rz))
    tyc = tz_s * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, ty * rz))

    zeros = torch.zeros_like(tz)
    J = torch.stack(
        [fx * rz, zeros, -fx * txc * rz * rz, zeros, fy * rz, -fy * tyc * rz * rz], dim=-1
    ).reshape(-1, 2, 3)
    covar = scales_quats_to_covars(scales, quats)  # [N, 3, 3]
    W = viewmat[:3, :3].to(dtype)
    covar_c = W @ covar @ W.transpose(0, 1)
    cov = J @ covar_c @ J.transpose(-1, -2)  # [N, 2, 2]
    sxx, sxy, syy = cov[:, 0, 0], 0.5 * (cov[:, 0, 1] + cov[:, 1, 0]), cov[:, 1, 1]
    det_orig = sxx * syy - sxy * sxy
    sxx = sxx + settings.eps2d
    syy = syy + settings.eps2d
    det = sxx * syy - sxy * sxy
    valid = valid & (det > 0)
    det_s = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([syy / det_s, -sxy / det_s, sxx / det_s], dim=-1)
    if settings.antialiased:
        ratio = torch.where(valid, det_orig / det_s, torch.ones_like(det_s))
        ratio_s = torch.where(ratio > 0, ratio, torch.ones_like(ratio))
        compensation = torch.where(ratio > 0, ratio_s.sqrt(), torch.zeros_like(ratio))
    else:
        compensation = torch.ones_like(tz)

    with torch.no_grad():
        if opacities is not None:
            o = opacities.detach().to(dtype) * compensation.detach()
            valid = valid & (o >= settings.alpha_min)
            o_s = torch.where(valid, o, torch.ones_like(o))
            extent = torch.clamp(2.0 * torch.log(o_s / settings.alpha_min), min=0.0).sqrt().clamp(max=3.33)
        else:
            extent = torch.full_like(tz, 3.33)
        sxx_s = torch.where(valid, sxx.detach(), torch.zeros_like(sxx)).clamp(min=0)
        syy_s = torch.where(valid, syy.detach(), torch.zeros_like(syy)).clamp(min=0)
        rx = torch.ceil(extent * sxx_s.sqrt())
        ry = torch.ceil(extent * syy_s.sqrt())
        valid = valid & ((rx > 0) | (ry > 0))
        ud, vd = u.detach(), v.detach()
        x0 = torch.floor(ud - rx).clamp(0, width)
        x1 = torch.ceil(ud + rx).clamp(0, width)
        y0 = torch.floor(vd - ry).clamp(0, height)
        y1 = torch.ceil(vd + ry).clamp(0, height)
        valid = valid & (x1 > x0) & (y1 > y0)
        radii = torch.where(valid, torch.maximum(rx, ry), torch.zeros_like(rx)).to(torch.int32)
        rects = torch.stack([x0, y0, x1, y1], dim=-1)
        rects = torch.where(valid[:, None], rects, torch.zeros_like(rects)).to(torch.int32)

    keep = valid[:, None]
    means2d = torch.where(keep, torch.stack([u, v], dim=-1), torch.zeros(1, dtype=dtype, device=means.device))
    conics = torch.where(keep, conics, torch.zeros(1, dtype=dtype, device=means.device))
    depths = torch.where(valid, tz, torch.zeros_like(tz))
    cov2d = torch.where(keep, torch.stack([sxx, sxy, syy], dim=-1), torch.zeros(1, dtype=dtype, device=means.device))
    compensation = torch.where(valid, compensation, torch.zeros_like(compensation))
    return GaussianProjection(means2d, conics, depths, radii, rects, compensation, cov2d)

