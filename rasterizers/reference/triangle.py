"""Triangle splats (Triangle Splatting, and its opaque mode of Triangle Splatting+) in pure PyTorch.

Formulas: ``shared/notes/rasterizers.md`` a.5 and a.6, restated here (clean-room; nothing copied).

**Projection** (:func:`project_triangles`; one pinhole camera, autograd-differentiable, float64-capable).
A triangle is three world vertices ``V_0, V_1, V_2``. Camera coordinates ``t_j = W V_j + b``, pixels
``a_j = (fx t_jx / t_jz + cx, fy t_jy / t_jz + cy)``, sort depth = mean of the ``t_jz``. Edge ``i`` runs
``a_i -> a_{i+1}`` (indices mod 3) with direction ``d_i``; its unit normal and offset are
``n_i = s (d_iy, -d_ix) / |d_i|``, ``e_i = -n_i . a_i`` with ``s = sign((a_1 - a_0) x (a_2 - a_0))`` so
that the incentre is inside (``L_i(p) = n_i . p + e_i < 0`` inside). With ``A = |(a_1-a_0) x (a_2-a_0)|``
(twice the area) and perimeter ``P``, the inradius is ``r = A / P`` and ``L_i(incentre) = -r``.

Record (``RECORD_SIZE`` = 11 floats, 14 with barycentric colour)::

    [n0x, n0y, e0, n1x, n1y, e1, n2x, n2y, e2, inv_phi_s = -1/r, sigma, (q0, q1, q2)]

``q_i = 1 / L_i(a_{i+2}) = -|d_i| / A`` (one over minus the height onto edge ``i``), so the screen-space
barycentric weight of vertex ``i+2`` is ``L_i(p) q_i``.

**Footprint** (:class:`TriangleFootprint`): ``phi(p) = max_i L_i(p)`` (the exact 2D signed distance
inside), ``u = phi(p) * inv_phi_s`` (1 at the incentre, 0 on the boundary), ``w = u^sigma`` where
``u > 0``, else exactly 0. Small sigma -> a solid, hard-edged triangle; large sigma -> peaked.

**Barycentric colour** (:class:`TriangleBaryFootprint`, TS+): the colour of a pixel is
``sum_v b_v(p) c_v`` with ``b = (L_1 q_1, L_2 q_2, L_0 q_0)`` (screen-space, not perspective-correct);
:meth:`TriangleBaryFootprint.color_weights` is the compositor's per-pixel colour hook.

**stopgrad_inradius** (:class:`TriangleSettings`): the published Triangle Splatting code treats the
normaliser ``phi_s`` as a constant; ``True`` (the default) reproduces that, ``False`` differentiates
``inv_phi_s = -P / A`` with respect to the vertices too.

**Bound**: ``o w >= alpha_min`` only where ``u >= k = (alpha_min / o)^(1/sigma)``, i.e. inside the
triangle shrunk about its incentre by the factor ``1 - k``; the rect is that shrunk triangle's pixel
AABB (pixel ``x`` is sampled at ``x + pixel_offset``): ``x0 = floor(min_x - offset)``,
``x1 = floor(max_x - offset) + 1``, clipped to the image. Outside it nothing reaches ``alpha_min``, so
the CUDA compositor may evaluate whole tiles.

**Culling** (rect emptied, record zeros; all thresholds configurable in :class:`TriangleSettings`): a
vertex outside ``(near, far)``; degenerate (zero area); inradius below ``min_inradius`` px; extent (max
distance of a vertex from the projected centroid) below ``min_extent`` or above ``max_extent`` px;
seen edge-on (``|cos|`` between the camera-space normal and the view ray to the centroid below
``min_cos``); ``o < alpha_min``; rect off the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..types import RasterSettings
from .projection import world_to_camera

__all__ = [
    "TriangleSettings",
    "TriangleProjection",
    "TriangleFootprint",
    "TriangleBaryFootprint",
    "triangle_footprint",
    "triangle_bary_footprint",
    "project_triangles",
    "triangle_bound_rects",
    "TRIANGLE_RECORD_SIZE",
    "TRIANGLE_BARY_RECORD_SIZE",
]

TRIANGLE_RECORD_SIZE = 11
TRIANGLE_BARY_RECORD_SIZE = 14
# Guards divisions of culled / degenerate entries (their values are replaced, but gradients must stay finite).
_TINY = 1e-12


@dataclass(frozen=True)
class TriangleSettings:
    """Culling thresholds of the triangle projection (pixels) and the inradius gradient switch.

    Defaults follow the published Triangle Splatting rasterizer (notes a.5) except ``max_extent``
    (0 = off: an opaque mesh seen from close by must not lose its large triangles)."""

    min_inradius: float = 1.0
    min_extent: float = 1.0
    max_extent: float = 0.0
    min_cos: float = 1e-3
    stopgrad_inradius: bool = True


class TriangleProjection(NamedTuple):
    records: torch.Tensor  # [N, R] (R = 11, or 14 with barycentric colour); zeros where culled
    depths: torch.Tensor  # [N] mean camera z of the vertices (0 = culled)
    rects: torch.Tensor  # [N, 4] int32 (x0, y0, x1, y1), end exclusive; empty = culled
    verts2d: torch.Tensor  # [N, 3, 2] projected vertices (zeros where culled)
    extents: torch.Tensor  # [N] max vertex distance from the projected centroid, px (0 = culled); no grad
    inradii: torch.Tensor  # [N] inradius in px (0 = culled); no grad
    valid: torch.Tensor  # [N] bool


def _edge_values(records: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """L_i(p) [..., 3] for the three edge lines of the records."""
    px = pixels[..., 0:1]
    py = pixels[..., 1:2]
    n = records[..., 0:9].reshape(*records.shape[:-1], 3, 3)
    return n[..., 0] * px + n[..., 1] * py + n[..., 2]


def _window(records: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    u = phi * records[..., 9]
    inside = u > 0
    # the clamp keeps log finite in the unused branch, so gradients there are exactly 0
    w = torch.exp(records[..., 10] * torch.log(u.clamp_min(_TINY)))
    return torch.where(inside, w, torch.zeros((), dtype=w.dtype, device=w.device))


class TriangleFootprint:
    """``w = max(0, phi(p) / phi_s)^sigma`` with ``phi = max_i L_i(p)`` (module docstring).

    ``records`` ``[..., >= 11]``, ``pixels`` ``[..., 2]``, broadcasting; returns ``w`` ``[...]``."""

    record_size = TRIANGLE_RECORD_SIZE

    def __call__(self, records: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        return _window(records, _edge_values(records, pixels).amax(dim=-1))

    def grid(self, records: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """On the pixel grid ``xs x ys`` -> ``[..., Y, X]`` (separable edge values)."""
        n = records[..., 0:9].reshape(*records.shape[:-1], 3, 3)
        phi = None
        for i in range(3):
            li = (n[..., i, 0:1] * xs)[..., None, :] + (n[..., i, 1:2] * ys + n[..., i, 2:3])[..., :, None]
            phi = li if phi is None else torch.maximum(phi, li)
        return _window(records[..., None, None, :], phi)

    def __repr__(self) -> str:
        return "triangle_footprint"


class TriangleBaryFootprint(TriangleFootprint):
    """The triangle window plus the per-pixel colour hook (screen-space barycentric weights)."""

    record_size = TRIANGLE_BARY_RECORD_SIZE
    color_vertices = 3

    def color_weights(self, records: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Barycentric weights ``[..., 3]`` of vertices 0, 1, 2 at ``pixels`` (sum to 1)."""
        lv = _edge_values(records, pixels)
        q = records[..., 11:14]
        b = lv * q  # weight of vertex (i + 2) % 3 for edge i
        return torch.stack([b[..., 1], b[..., 2], b[..., 0]], dim=-1)

    def __repr__(self) -> str:
        return "triangle_bary_footprint"


triangle_footprint = TriangleFootprint()
triangle_bary_footprint = TriangleBaryFootprint()


def triangle_bound_rects(
    verts2d: torch.Tensor, records: torch.Tensor, opacities: torch.Tensor, width: int, height: int,
    settings: RasterSettings,
) -> torch.Tensor:  # fmt: skip
    """Pixel rects [N, 4] (float, unclipped validity left to the caller) of the shrunk triangles."""
    with torch.no_grad():
        a = verts2d.detach()
        lens = (a.roll(-1, dims=1) - a).norm(dim=-1)  # |d_i|, edge i = a_i -> a_{i+1}
        per = lens.sum(-1, keepdim=True).clamp_min(_TINY)
        # incentre weights: vertex j is weighted by the length of the edge opposite to it (edge j+1)
        inc = (lens.roll(-1, dims=1)[..., None] * a).sum(1) / per
        o = opacities.detach().to(a.dtype).clamp_min(_TINY)
        sigma = records[:, 10].detach().clamp_min(_TINY)
        k = torch.exp(torch.log((settings.alpha_min / o).clamp(max=1.0)) / sigma)
        shrunk = inc[:, None, :] + (1.0 - k)[:, None, None] * (a - inc[:, None, :])
        off = settings.pixel_offset
        lo = torch.floor(shrunk.amin(1) - off)
        hi = torch.floor(shrunk.amax(1) - off) + 1.0
        x0 = lo[:, 0].clamp(0, width)
        y0 = lo[:, 1].clamp(0, height)
        x1 = hi[:, 0].clamp(0, width)
        y1 = hi[:, 1].clamp(0, height)
        return torch.stack([x0, y0, x1, y1], dim=-1)


def project_triangles(
    vertices: torch.Tensor,
    opacities: torch.Tensor,
    sigmas: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    settings: RasterSettings = RasterSettings(),
    triangle_settings: TriangleSettings = TriangleSettings(),
    *,
    barycentric: bool = False,
) -> TriangleProjection:
    """Project triangles (vertices [N, 3, 3], opacities [N] in [0, 1], sigmas [N] > 0) into one camera.

    Differentiable by autograd w.r.t. vertices (records, depths, verts2d) and sigmas (records[:, 10]).
    See the module docstring for the record layout, culling and the bound."""
    dtype = vertices.dtype
    dev = vertices.device
    n = vertices.shape[0]
    t = world_to_camera(vertices, viewmat.to(dtype))  # [N, 3, 3]
    z = t[..., 2]
    valid = ((z > settings.near) & (z < settings.far)).all(dim=-1)
    z_s = torch.where(valid[:, None], z, torch.ones_like(z))
    K = K.to(dtype)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    a = torch.stack([fx * t[..., 0] / z_s + cx, fy * t[..., 1] / z_s + cy], dim=-1)  # [N, 3, 2]

    d = a.roll(-1, dims=1) - a  # d_i = a_{i+1} - a_i
    cross = d[:, 0, 0] * (a[:, 2, 1] - a[:, 0, 1]) - d[:, 0, 1] * (a[:, 2, 0] - a[:, 0, 0])
    with torch.no_grad():
        s = torch.where(cross >= 0, 1.0, -1.0).to(dtype)
    area2 = cross * s  # |cross| = twice the area
    len2 = (d * d).sum(-1)
    valid = valid & (area2 > _TINY) & (len2 > _TINY).all(-1)
    lens = torch.sqrt(torch.where(valid[:, None], len2, torch.ones_like(len2)))
    area2_s = torch.where(valid, area2, torch.ones_like(area2))
    per = lens.sum(-1)
    m = torch.stack([d[..., 1], -d[..., 0]], dim=-1)  # [N, 3, 2]
    nrm = s[:, None, None] * m / lens[..., None]
    e = -(nrm * a).sum(-1)  # [N, 3]
    inv_phi_s = -per / area2_s
    if triangle_settings.stopgrad_inradius:
        inv_phi_s = inv_phi_s.detach()
    q = -lens / area2_s[:, None]

    with torch.no_grad():
        inradius = area2.detach() / per.detach().clamp_min(_TINY)
        centroid2d = a.detach().mean(1)
        extent = (a.detach() - centroid2d[:, None]).norm(dim=-1).amax(-1)
        valid = valid & (inradius >= triangle_settings.min_inradius)
        valid = valid & (extent >= triangle_settings.min_extent)
        if triangle_settings.max_extent > 0:
            valid = valid & (extent <= triangle_settings.max_extent)
        tn = torch.linalg.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0], dim=-1).detach()
        tc = t.detach().mean(1)
        cos = (tn * tc).sum(-1).abs() / (tn.norm(dim=-1) * tc.norm(dim=-1)).clamp_min(_TINY)
        valid = valid & (cos >= triangle_settings.min_cos)
        valid = valid & (opacities.detach().to(dtype) >= settings.alpha_min)

    parts = [torch.cat([nrm, e[..., None]], dim=-1).reshape(n, 9), inv_phi_s[:, None], sigmas.to(dtype)[:, None]]
    if barycentric:
        parts.append(q)
    records = torch.cat(parts, dim=-1)
    with torch.no_grad():
        rects = triangle_bound_rects(a, records, opacities, width, height, settings)
        valid = valid & ((rects[:, 2] > rects[:, 0]) & (rects[:, 3] > rects[:, 1]))
        rects = torch.where(valid[:, None], rects, torch.zeros_like(rects)).to(torch.int32)
    zero = torch.zeros((), dtype=dtype, device=dev)
    records = torch.where(valid[:, None], records, zero)
    depths = torch.where(valid, z.mean(-1), zero)
    verts2d = torch.where(valid[:, None, None], a, zero)
    return TriangleProjection(
        records, depths, rects, verts2d, torch.where(valid, extent, zero), torch.where(valid, inradius, zero), valid
    )
