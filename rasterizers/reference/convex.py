"""3D smooth convexes (3D Convex Splatting): projection and footprint in pure PyTorch.

Formulas: ``shared/notes/rasterizers.md`` a.4 (clean-room, restated there from the paper). A convex is
``K <= 8`` free 3D points, a smoothness ``delta > 0``, a sharpness ``sigma > 0``, an opacity and a colour.

Projection (one camera, :func:`project_convexes`):

- every point ``P_k`` -> camera ``t_k = W P_k + b`` -> pixel ``pi_k = (fx x/z + cx, fy y/z + cy)``;
- the centroid ``c3 = mean_k P_k`` gives the depth ``zeta = z(c3)`` (sort key) and the 2D centre
  ``c = pi(c3)`` (inside the 2D hull, since perspective projection maps the 3D hull onto it);
- the 2D convex hull of ``{pi_k}`` (gift wrapping from the lowest-x point, counter-clockwise in the
  ``(x, y)`` coordinate sense, collinear points dropped): ``M`` vertices ``h_j``. Culled when ``M < 3``,
  when any point is not in front of the near plane, when ``zeta >= far`` or when ``o <= alpha_min``;
- edge lines with *unnormalised* outward normals ``n_j = (h_{j+1,y} - h_{j,y}, h_{j,x} - h_{j+1,x})``
  (``|n_j|`` = edge length), ``e_j = -n_j . h_j``, ``L_j(p) = n_j . p + e_j`` (< 0 inside);
- depth scaling ``s = s(zeta)``: ``"linear"`` (``s = zeta``, the 3DCS code, default), ``"sqrt"`` (the
  paper's ablation favourite) or ``"none"`` (``s = 1``).

Footprint: ``A_j(p) = s delta L_j(p)``, ``phi(p) = logsumexp_j A_j(p)``,
``w(p) = sigmoid(-s sigma phi(p))``.

Record (:data:`CONVEX_RECORD_SIZE` = 28 floats, the same layout as the CUDA policy
``footprint_convex.cuh``): ``[c_x, c_y, (a_x, a_y, b)_j for j < 8, M, beta]`` with
``a_j = s delta n_j``, ``b_j = s delta L_j(c)`` and ``beta = s sigma``, so that
``A_j(p) = a_j . (p - c) + b_j`` (coordinates relative to the centre keep float32 accurate far from the
image origin). Edges ``j >= M`` are zero and ignored. ``A_j`` does not depend on ``c`` in total (``b_j``
absorbs it), so the renderer treats ``c`` as a constant when differentiating ``b_j`` and hands the
record's ``c`` slot out as ``means2d``: its gradient is then the screen-space *translation* gradient of
the hull (the sum of the hull vertices' pixel gradients) — what densification statistics read — while the
world gradients are exact. Interior (non-hull) points get no footprint gradient.

Screen-space bound (exact and conservative): ``logsumexp >= max``, so ``alpha < alpha_min`` wherever
``max_j L_j(p) > kappa = ln(o / alpha_min - 1) / (s^2 sigma delta)``. That region's complement is the hull
with edge ``j`` pushed out by ``kappa / |n_j|`` pixels, a convex polygon; its axis-aligned box (computed
from the pairwise intersections of the pushed lines that satisfy every constraint, in float64) gives the
pixel rect. For ``kappa < 0`` the hull's own box is used (still conservative).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..types import RasterSettings

__all__ = [
    "CONVEX_MAX_POINTS",
    "CONVEX_RECORD_SIZE",
    "DEPTH_LAWS",
    "ConvexFootprint",
    "ConvexProjection",
    "convex_footprint",
    "convex_hull_2d",
    "depth_scale",
    "hull_edges",
    "project_convexes",
    "support_rects",
]

CONVEX_MAX_POINTS = 8
CONVEX_RECORD_SIZE = 2 + 3 * CONVEX_MAX_POINTS + 2
DEPTH_LAWS = {"linear": 0, "sqrt": 1, "none": 2}
_COUNT = 2 + 3 * CONVEX_MAX_POINTS  # record slot of M
_BETA = _COUNT + 1  # record slot of beta


def depth_scale(zeta: torch.Tensor, law: str) -> torch.Tensor:
    """The footprint's depth factor ``s(zeta)``: ``zeta`` (linear), ``sqrt(zeta)`` or 1 (none)."""
    if law == "linear":
        return zeta
    if law == "sqrt":
        return torch.sqrt(zeta)
    if law == "none":
        return torch.ones_like(zeta)
    raise ValueError(f"depth law must be one of {sorted(DEPTH_LAWS)}, got {law!r}")


# ------------------------------------------------------------------------------------------------
# footprint
# ------------------------------------------------------------------------------------------------
def _edge_fields(records: torch.Tensor):
    edges = records[..., 2:_COUNT].unflatten(-1, (CONVEX_MAX_POINTS, 3))  # [..., 8, 3]
    valid = torch.arange(CONVEX_MAX_POINTS, device=records.device) < records[..., _COUNT : _COUNT + 1]
    return edges, valid


def _convex_eval(records: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    edges, valid = _edge_fields(records)
    d = pixels - records[..., 0:2]  # [..., 2]
    a = edges[..., 0] * d[..., 0:1] + edges[..., 1] * d[..., 1:2] + edges[..., 2]  # [..., 8]
    a = torch.where(valid, a, torch.full((), -math.inf, dtype=a.dtype, device=a.device))
    phi = torch.logsumexp(a, dim=-1)
    return torch.sigmoid(-records[..., _BETA] * phi)


def _convex_grid(records: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Separable evaluation on the pixel grid ``xs x ys``: records [..., R], xs [..., X], ys [..., Y]."""
    edges, valid = _edge_fields(records)
    dx = xs[..., None, :] - records[..., 0:1, None]  # [..., 1, X]
    dy = ys[..., None, :] - records[..., 1:2, None]  # [..., 1, Y]
    ax = edges[..., 0:1] * dx + edges[..., 2:3]  # [..., 8, X]
    ay = edges[..., 1:2] * dy  # [..., 8, Y]
    a = ax[..., None, :] + ay[..., :, None]  # [..., 8, Y, X]
    a.masked_fill_(~valid[..., None, None], -math.inf)
    phi = torch.logsumexp(a, dim=-3)
    return torch.sigmoid(-records[..., _BETA, None, None] * phi)


class ConvexFootprint:
    """Smooth convex indicator ``w = sigmoid(-beta logsumexp_j(a_j . (p - c) + b_j))`` over ``M`` edges.

    ``records`` ``[..., 28]`` (layout in the module docstring), ``pixels`` ``[..., 2]`` (broadcasting, the
    :class:`~recon.rasterizers.reference.footprints.Footprint` protocol). Differentiable w.r.t. every
    record entry except the count ``M``.
    """

    record_size = CONVEX_RECORD_SIZE

    def __call__(self, records: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        return _convex_eval(records, pixels)

    def grid(self, records: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        return _convex_grid(records, xs, ys)

    def __repr__(self) -> str:
        return "convex_footprint"


convex_footprint = ConvexFootprint()


# ------------------------------------------------------------------------------------------------
# 2D convex hull (gift wrapping, batched; no gradient: it only selects indices)
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def convex_hull_2d(points2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hull of ``points2d [B, K, 2]`` (K <= 8) -> ``(order [B, K] int64, count [B] int64)``.

    ``order[b, :count[b]]`` are the hull vertices' point indices, counter-clockwise in the ``(x, y)``
    sense (every point lies left of or on each edge), starting at the lowest-x (then lowest-y) point;
    collinear boundary points and duplicates are dropped; the rest of ``order`` repeats the start.
    ``count < 3`` means degenerate (all points on a line or coincident). The CUDA projection uses the
    same algorithm (same tie rules), so both pick the same vertices.
    """
    b, k, _ = points2d.shape
    if k > CONVEX_MAX_POINTS or k < 1:
        raise ValueError(f"convexes need 1..{CONVEX_MAX_POINTS} points, got {k}")
    p = points2d
    rows = torch.arange(b, device=p.device)
    # lowest x, ties by lowest y, ties by index
    by_y = torch.sort(p[..., 1], dim=1, stable=True).indices
    by_x = torch.sort(torch.gather(p[..., 0], 1, by_y), dim=1, stable=True).indices
    start = torch.gather(by_y, 1, by_x)[:, 0]
    order = start[:, None].repeat(1, k)
    count = torch.ones(b, dtype=torch.int64, device=p.device)
    closed = torch.zeros(b, dtype=torch.bool, device=p.device)
    cur = start
    for step in range(k):
        pc = p[rows, cur]  # [B, 2]
        q = (cur + 1) % k
        for r in range(k):
            dq = p[rows, q] - pc
            dr = p[:, r] - pc
            cross = dq[:, 0] * dr[:, 1] - dq[:, 1] * dr[:, 0]
            lq = dq.square().sum(-1)
            lr = dr.square().sum(-1)
            better = (lr > 0) & ((lq == 0) | (cross < 0) | ((cross == 0) & (lr > lq)))
            q = torch.where(better, torch.full_like(q, r), q)
        back_home = (p[rows, q] == p[rows, start]).all(-1)
        newly = ~closed & back_home
        closed = closed | newly
        active = ~closed
        if step + 1 < k:
            order[:, step + 1] = torch.where(active, q, order[:, step + 1])
        count = count + active.long()
        cur = torch.where(active, q, cur)
    # not closed after K steps (numerically inconsistent turns): treat as degenerate
    count = torch.where(closed, count, torch.zeros_like(count))
    return order, count


def hull_edges(hull: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges of hull vertices ``hull [B, 8, 2]`` (the first ``count`` valid) -> ``n [B, 8, 2]``, ``e [B, 8]``.

    Edge ``j`` goes from vertex ``j`` to ``(j + 1) mod count``; invalid edges are zero. Differentiable.
    """
    m = hull.shape[1]
    j = torch.arange(m, device=hull.device)
    nxt = torch.where(j[None] + 1 < count[:, None], j[None] + 1, torch.zeros_like(j[None])).expand(hull.shape[0], m)
    a = hull
    bb = torch.gather(hull, 1, nxt[..., None].expand(-1, -1, 2))
    n = torch.stack([bb[..., 1] - a[..., 1], a[..., 0] - bb[..., 0]], dim=-1)
    e = bb[..., 0] * a[..., 1] - a[..., 0] * bb[..., 1]
    valid = (j[None] < count[:, None])
    return n * valid[..., None], e * valid


@torch.no_grad()
def support_rects(
    n: torch.Tensor, e: torch.Tensor, count: torch.Tensor, hull: torch.Tensor, kappa: torch.Tensor,
    width: int, height: int, pixel_offset: float,
) -> torch.Tensor:  # fmt: skip
    """Pixel rects [B, 4] int32 (x0, y0, x1, y1; end exclusive, clipped) of ``{p: max_j L_j(p) <= kappa}``.

    Float64 throughout. Pixel ``x`` is in the rect when its sample ``x + pixel_offset`` lies in the region's
    box (rounded outwards). Rows with ``count < 3`` get empty rects.
    """
    n, e, hull, kappa = n.double(), e.double(), hull.double(), kappa.double().clamp_min(0.0)
    b, m = e.shape
    valid_e = torch.arange(m, device=e.device)[None] < count[:, None]  # [B, 8]
    rhs = kappa[:, None] - e  # n . p = kappa - e on the pushed line
    # all pairs (j, k): solve [n_j; n_k] p = [rhs_j; rhs_k]
    nj, nk = n[:, :, None, :], n[:, None, :, :]
    det = nj[..., 0] * nk[..., 1] - nj[..., 1] * nk[..., 0]  # [B, 8, 8]
    ok = valid_e[:, :, None] & valid_e[:, None, :] & (det.abs() > 1e-12 * (nj.norm(dim=-1) * nk.norm(dim=-1)))
    det_s = torch.where(ok, det, torch.ones_like(det))
    rj, rk = rhs[:, :, None], rhs[:, None, :]
    px = (rj * nk[..., 1] - rk * nj[..., 1]) / det_s
    py = (nj[..., 0] * rk - nk[..., 0] * rj) / det_s
    pts = torch.stack([px, py], -1).reshape(b, m * m, 2)
    # feasibility: every valid constraint holds (relative tolerance for the float64 solve)
    lv = torch.einsum("bpc,bjc->bpj", pts, n) + e[:, None, :]  # [B, 64, 8]
    scale = kappa[:, None, None].abs() + n.norm(dim=-1)[:, None, :] * pts.abs().sum(-1, keepdim=True) + e.abs()[:, None, :]
    feas = ((lv <= kappa[:, None, None] + 1e-9 * scale) | ~valid_e[:, None, :]).all(-1) & ok.reshape(b, m * m)
    inf = torch.tensor(math.inf, dtype=torch.float64, device=e.device)
    # the hull's vertices are inside the region (kappa >= 0): include them, so a row always has a box
    hv = torch.arange(m, device=e.device)[None] < count[:, None]
    xs = torch.cat([torch.where(feas, pts[..., 0], inf), torch.where(hv, hull[..., 0], inf)], 1)
    ys = torch.cat([torch.where(feas, pts[..., 1], inf), torch.where(hv, hull[..., 1], inf)], 1)
    xmin, ymin = xs.min(1).values, ys.min(1).values
    xmax = torch.where(torch.isinf(xs), -inf, xs).max(1).values
    ymax = torch.where(torch.isinf(ys), -inf, ys).max(1).values
    x0 = torch.floor(xmin - pixel_offset).clamp(0, width)
    x1 = (torch.floor(xmax - pixel_offset) + 1).clamp(0, width)
    y0 = torch.floor(ymin - pixel_offset).clamp(0, height)
    y1 = (torch.floor(ymax - pixel_offset) + 1).clamp(0, height)
    rect = torch.stack([x0, y0, x1, y1], -1)
    good = (count >= 3) & (x1 > x0) & (y1 > y0)
    return torch.where(good[:, None], rect, torch.zeros_like(rect)).to(torch.int32)


# ------------------------------------------------------------------------------------------------
# projection
# ------------------------------------------------------------------------------------------------
class ConvexProjection(NamedTuple):
    records: torch.Tensor  # [N, 28] differentiable (means2d in slots 0:2, see the module docstring)
    depths: torch.Tensor  # [N] zeta (0 = culled), differentiable
    radii: torch.Tensor  # [N] int32, half the larger side of the rect (0 = culled)
    rects: torch.Tensor  # [N, 4] int32 pixel rect (x0, y0, x1, y1), end exclusive
    means2d: torch.Tensor  # [N, 2] the record centres as their own tensor (translation gradient)
    points2d: torch.Tensor  # [N, K, 2] every projected point, differentiable
    hull: torch.Tensor  # [N, K] int64 hull vertex indices (first `counts`), no grad
    counts: torch.Tensor  # [N] int64 hull vertex count (0 = culled)


def project_convexes(
    points: torch.Tensor,
    deltas: torch.Tensor,
    sigmas: torch.Tensor,
    opacities: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    settings: RasterSettings = RasterSettings(),
    *,
    depth_law: str = "linear",
) -> ConvexProjection:
    """Project convexes (``points [N, K, 3]``, activated ``deltas``, ``sigmas``, ``opacities`` [N]) into one
    pinhole camera (``viewmat`` world-to-camera 4x4, ``K`` 3x3). See the module docstring.

    ``means2d`` is a fresh leaf tensor (requires grad when ``points`` does) equal to the 2D centres; its
    ``.grad`` after backward is the hull's screen-space translation gradient. Gradients flow to points,
    deltas and sigmas; culled convexes get none.
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be [N, K, 3], got {tuple(points.shape)}")
    n, k, _ = points.shape
    if not 3 <= k <= CONVEX_MAX_POINTS:
        raise ValueError(f"convexes need 3..{CONVEX_MAX_POINTS} points each, got {k}")
    dtype, dev = points.dtype, points.device
    vm = viewmat.to(dtype)
    K = K.to(dtype)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    t = points @ vm[:3, :3].T + vm[:3, 3]  # [N, K, 3]
    c3 = points.mean(1) @ vm[:3, :3].T + vm[:3, 3]  # [N, 3]
    zeta = c3[:, 2]
    valid = (t[..., 2] > settings.near).all(-1) & (zeta < settings.far)
    valid = valid & (opacities.detach() > settings.alpha_min)
    # double-where: culled entries compute with safe depths so neither values nor grads are NaN
    tz = torch.where(valid[:, None], t[..., 2], torch.ones_like(t[..., 2]))
    pix = torch.stack([fx * t[..., 0] / tz + cx, fy * t[..., 1] / tz + cy], -1)  # [N, K, 2]
    zs = torch.where(valid, zeta, torch.ones_like(zeta))
    centre = torch.stack([fx * c3[:, 0] / zs + cx, fy * c3[:, 1] / zs + cy], -1).detach()

    order, count = convex_hull_2d(pix.detach())
    count = torch.where(valid, count, torch.zeros_like(count))
    valid = valid & (count >= 3)
    hull_idx = torch.cat([order, order[:, :1].expand(n, CONVEX_MAX_POINTS - k)], 1) if k < CONVEX_MAX_POINTS else order
    hull = torch.gather(pix, 1, hull_idx[..., None].expand(-1, -1, 2))  # [N, 8, 2]
    nrm, e = hull_edges(hull, count)
    s = depth_scale(zs, depth_law)
    g = s * deltas
    beta = s * sigmas
    a = nrm * g[:, None, None]
    # L_j(c) = n_j . (c - h_j): relative coordinates, c treated as a constant (see the docstring)
    b = (nrm * (centre[:, None, :] - hull)).sum(-1) * g[:, None]
    b = b * (torch.arange(CONVEX_MAX_POINTS, device=dev)[None] < count[:, None])

    with torch.no_grad():
        o = opacities.detach().to(torch.float64)
        ratio = torch.where(valid, o / settings.alpha_min - 1.0, torch.ones_like(o))
        denom = (s.detach() ** 2 * sigmas.detach() * deltas.detach()).double()
        kappa = torch.where(valid, torch.log(ratio.clamp_min(1e-300)) / denom.clamp_min(1e-300), torch.zeros_like(o))
        rects = support_rects(nrm.detach(), e.detach(), count, hull.detach(), kappa, width, height, settings.pixel_offset)
        valid = valid & (rects[:, 2] > rects[:, 0]) & (rects[:, 3] > rects[:, 1])
        rects = torch.where(valid[:, None], rects, torch.zeros_like(rects))
        half = torch.maximum(rects[:, 2] - rects[:, 0], rects[:, 3] - rects[:, 1])
        radii = torch.where(valid, (half + 1) // 2, torch.zeros_like(half)).to(torch.int32)
        count = torch.where(valid, count, torch.zeros_like(count))

    means2d = torch.where(valid[:, None], centre, torch.zeros_like(centre))
    means2d = means2d.clone().requires_grad_(points.requires_grad)
    keep = valid[:, None]
    zero = torch.zeros((), dtype=dtype, device=dev)
    rec_edges = torch.cat([a, b[..., None]], -1).reshape(n, 3 * CONVEX_MAX_POINTS)
    records = torch.cat(
        [means2d, torch.where(keep, rec_edges, zero), count.to(dtype)[:, None], torch.where(valid, beta, zero)[:, None]], -1
    )
    depths = torch.where(valid, zeta, zero)
    return ConvexProjection(records, depths, radii, rects, means2d, pix, order, count)
