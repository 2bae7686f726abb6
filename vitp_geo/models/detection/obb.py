"""Oriented boxes as tensor ops: conversions, rotated IoU and rotated NMS (CPU and CUDA).

The one oriented-box convention of vitp-geo
-------------------------------------------

An oriented box is ``(cx, cy, w, h, angle)`` in **pixels** and **radians**, in image axes
(x = column to the right, y = row downwards):

* ``(cx, cy)`` is the centre;
* ``w`` is the length of the side whose direction is ``(cos(angle), sin(angle))``, ``h`` the
  length of the other side (direction ``(-sin(angle), cos(angle))``);
* a positive angle turns the ``w`` side from +x towards +y, i.e. **clockwise on screen** (y points
  down). This is the same rotation matrix ``[[cos, -sin], [sin, cos]]`` as
  ``shapely.affinity.rotate(..., use_radians=True)`` applied to pixel coordinates.

Normalised boxes follow mmrotate's ``le90`` rule: ``w >= h`` (``w`` is the long side) and
``angle`` in ``[-pi/2, pi/2)``. ``normalize_obb`` brings any box there: when ``w < h`` it swaps the
sides and adds ``pi/2`` to the angle (the same rectangle), then wraps the angle by multiples of
``pi`` into ``[-pi/2, pi/2)`` (a rectangle is symmetric under a half turn). Squares keep the angle
they have after wrapping (both of their representations describe the same square).

Corner order (``obb_to_poly``): with ``u = w/2 (cos, sin)`` and ``v = h/2 (-sin, cos)`` the corners
are ``c - u - v, c + u - v, c + u + v, c - u + v``; at angle 0 that is top-left, top-right,
bottom-right, bottom-left, clockwise on screen like DOTA's annotations. Polygons are ``(N, 8)``
``x1, y1, ..., x4, y4``.

IoU (``rotated_iou`` for boxes, ``quad_iou`` for any convex quadrilaterals such as DOTA's
annotations) is computed by convex polygon clipping on tensors (the vertices of the intersection are the
corners of each box inside the other and the crossings of their edges; they are sorted by angle
and summed with the shoelace formula). It is differentiable with respect to the boxes wherever
the intersection's combinatorics do not change, and it is computed in chunks, only for pairs whose
axis-aligned bounds overlap, so tens of thousands of boxes fit in memory. NMS suppresses a box
whose IoU with a kept, higher-scoring box is **strictly greater** than the threshold
(torchvision's and the DOTA devkit's rule).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "batched_rotated_nms",
    "hbb_to_obb",
    "is_convex_quad",
    "normalize_obb",
    "obb_to_hbb",
    "obb_to_poly",
    "poly_to_obb",
    "quad_iou",
    "quad_iou_aligned",
    "rotated_iou",
    "rotated_iou_aligned",
    "rotated_nms",
]

_MAX_PAIRS = 1 << 17  # pairs per IoU chunk: ~200 MB of float32 intermediates at most
_TOL_EPS = 8  # slack of the inside / on-segment tests, in machine epsilons (relative to size)


def _check(boxes: Tensor, width: int, name: str) -> None:
    if boxes.ndim != 2 or boxes.shape[-1] != width:
        raise ValueError(f"{name} must have shape (N, {width}), got {tuple(boxes.shape)}")


def normalize_obb(boxes: Tensor) -> Tensor:
    """Bring oriented boxes into the ``le90`` convention (``w >= h``, angle in ``[-pi/2, pi/2)``).

    Args:
        boxes: (N, 5) ``cx, cy, w, h, angle`` with any angle and any side order.

    Returns:
        (N, 5) the same rectangles, normalised.
    """
    _check(boxes, 5, "boxes")
    cx, cy, w, h, a = boxes.unbind(-1)
    swap = w < h
    w2 = torch.where(swap, h, w)
    h2 = torch.where(swap, w, h)
    a = torch.where(swap, a + math.pi / 2, a)
    a = torch.remainder(a + math.pi / 2, math.pi) - math.pi / 2
    # remainder can return exactly pi for tiny negative inputs in float32; fold it back
    a = torch.where(a >= math.pi / 2, a - math.pi, a)
    return torch.stack([cx, cy, w2, h2, a], -1)


def obb_to_poly(boxes: Tensor) -> Tensor:
    """Corners of oriented boxes.

    Args:
        boxes: (N, 5) ``cx, cy, w, h, angle``.

    Returns:
        (N, 8) ``x1, y1, ..., x4, y4`` in the order ``c-u-v, c+u-v, c+u+v, c-u+v`` (see the module
        docstring; top-left, top-right, bottom-right, bottom-left at angle 0).
    """
    _check(boxes, 5, "boxes")
    return _corners(boxes).reshape(-1, 8)


def _corners(boxes: Tensor) -> Tensor:
    """(N, 5) → (N, 4, 2) corners in ``obb_to_poly`` order."""
    cx, cy, w, h, a = boxes.unbind(-1)
    cos, sin = torch.cos(a), torch.sin(a)
    ux, uy = w / 2 * cos, w / 2 * sin  # half of the w side
    vx, vy = -h / 2 * sin, h / 2 * cos  # half of the h side
    xs = torch.stack([cx - ux - vx, cx + ux - vx, cx + ux + vx, cx - ux + vx], -1)
    ys = torch.stack([cy - uy - vy, cy + uy - vy, cy + uy + vy, cy - uy + vy], -1)
    return torch.stack([xs, ys], -1)


def poly_to_obb(polys: Tensor) -> Tensor:
    """The minimum-area rectangle around each quadrilateral, as a normalised oriented box.

    The minimum-area rectangle of a point set has one side along an edge of its convex hull; with
    four points every hull edge joins two of them, so the six pairwise directions are tried and
    the smallest enclosing rectangle wins (the corner order of the input does not matter). A
    rectangle given as four corners comes back exactly.

    Args:
        polys: (N, 8) ``x1, y1, ..., x4, y4``.

    Returns:
        (N, 5) ``cx, cy, w, h, angle`` in the ``le90`` convention.
    """
    _check(polys, 8, "polys")
    pts = polys.reshape(-1, 4, 2)
    i, j = torch.triu_indices(4, 4, 1, device=polys.device)  # the 6 point pairs
    d = pts[:, j] - pts[:, i]  # (N, 6, 2)
    theta = torch.atan2(d[..., 1], d[..., 0])  # (N, 6) candidate directions of the w side
    u = torch.stack([torch.cos(theta), torch.sin(theta)], -1)  # (N, 6, 2)
    v = torch.stack([-u[..., 1], u[..., 0]], -1)
    pu = torch.einsum("nkc,npc->nkp", u, pts)  # (N, 6, 4) projections on u
    pv = torch.einsum("nkc,npc->nkp", v, pts)
    lo_u, hi_u = pu.min(-1).values, pu.max(-1).values
    lo_v, hi_v = pv.min(-1).values, pv.max(-1).values
    area = (hi_u - lo_u) * (hi_v - lo_v)
    k = area.argmin(-1, keepdim=True)  # (N, 1)

    def pick(t: Tensor) -> Tensor:
        return t.gather(-1, k).squeeze(-1)

    w, h = pick(hi_u - lo_u), pick(hi_v - lo_v)
    mu, mv = pick(hi_u + lo_u) / 2, pick(hi_v + lo_v) / 2
    a = pick(theta)
    cos, sin = torch.cos(a), torch.sin(a)
    cx = mu * cos - mv * sin
    cy = mu * sin + mv * cos
    return normalize_obb(torch.stack([cx, cy, w, h, a], -1))


def obb_to_hbb(boxes: Tensor) -> Tensor:
    """Axis-aligned bounds of oriented boxes.

    Args:
        boxes: (N, 5) ``cx, cy, w, h, angle``.

    Returns:
        (N, 4) ``x1, y1, x2, y2``.
    """
    _check(boxes, 5, "boxes")
    cx, cy, w, h, a = boxes.unbind(-1)
    cos, sin = torch.cos(a).abs(), torch.sin(a).abs()
    hx = w / 2 * cos + h / 2 * sin
    hy = w / 2 * sin + h / 2 * cos
    return torch.stack([cx - hx, cy - hy, cx + hx, cy + hy], -1)


def hbb_to_obb(boxes: Tensor) -> Tensor:
    """Axis-aligned boxes as normalised oriented boxes (angle 0, or ``-pi/2`` for tall boxes).

    Args:
        boxes: (N, 4) ``x1, y1, x2, y2``.

    Returns:
        (N, 5) ``cx, cy, w, h, angle`` in the ``le90`` convention.
    """
    _check(boxes, 4, "boxes")
    x1, y1, x2, y2 = boxes.unbind(-1)
    obb = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, torch.zeros_like(x1)], -1)
    return normalize_obb(obb)


def _intersection_area(pa: Tensor, pb: Tensor) -> Tensor:
    """Area of the intersection of two convex quadrilaterals per pair.

    Args:
        pa, pb: (P, 4, 2) corners of the first and second polygons, each in either winding.

    Returns:
        (P,) intersection areas.
    """
    # corners of one polygon inside the other
    in_b = _inside(pa, pb)  # (P, 4)
    in_a = _inside(pb, pa)
    # crossings of the 4 x 4 edge pairs: p + t r = q + s e
    p, r = pa, pa.roll(-1, 1) - pa  # (P, 4, 2)
    q, e = pb, pb.roll(-1, 1) - pb
    p, r = p[:, :, None], r[:, :, None]  # (P, 4, 1, 2)
    q, e = q[:, None], e[:, None]  # (P, 1, 4, 2)
    denom = r[..., 0] * e[..., 1] - r[..., 1] * e[..., 0]  # (P, 4, 4)
    qp = q - p
    parallel = denom.abs() <= 1e-12 * (r.norm(dim=-1) * e.norm(dim=-1)).clamp_min(1e-30)
    safe = torch.where(parallel, torch.ones_like(denom), denom)
    t = (qp[..., 0] * e[..., 1] - qp[..., 1] * e[..., 0]) / safe
    s = (qp[..., 0] * r[..., 1] - qp[..., 1] * r[..., 0]) / safe
    tol = _TOL_EPS * torch.finfo(pa.dtype).eps
    cross_ok = ~parallel & (t >= -tol) & (t <= 1 + tol) & (s >= -tol) & (s <= 1 + tol)
    cross = p + t[..., None] * r  # (P, 4, 4, 2)

    xs = torch.cat([pa[..., 0], pb[..., 0], cross[..., 0].flatten(1)], 1)  # (P, 24)
    ys = torch.cat([pa[..., 1], pb[..., 1], cross[..., 1].flatten(1)], 1)
    ok = torch.cat([in_b, in_a, cross_ok.flatten(1)], 1)  # (P, 24)
    xs = torch.where(ok, xs, torch.zeros_like(xs))
    ys = torch.where(ok, ys, torch.zeros_like(ys))
    n = ok.sum(1, keepdim=True).clamp_min(1)
    with torch.no_grad():  # the ordering is piecewise constant: no gradient through it
        # pseudo-angle around the mean of the vertices (a point inside the intersection),
        # monotonic in the true angle and cheaper than atan2
        dx = (xs - xs.sum(1, keepdim=True) / n).detach()
        dy = (ys - ys.sum(1, keepdim=True) / n).detach()
        ratio = dy / (dx.abs() + dy.abs()).clamp_min(torch.finfo(dx.dtype).tiny)
        key = torch.where(dx >= 0, ratio, torch.where(dy >= 0, 2 - ratio, -2 - ratio))  # in (-2, 2]
        key = torch.where(dx.abs() + dy.abs() > 0, key, torch.zeros_like(key))
        key = torch.where(ok, key, torch.full_like(key, 10.0))  # invalid points last
        order = key.argsort(1)
    xs, ys, ok = xs.gather(1, order), ys.gather(1, order), ok.gather(1, order)
    xs = torch.where(ok, xs, xs[:, :1])  # invalid → repeat the first vertex: zero area
    ys = torch.where(ok, ys, ys[:, :1])
    area = (xs * ys.roll(-1, 1) - xs.roll(-1, 1) * ys).sum(1).abs() / 2
    return torch.where(ok.sum(1) >= 3, area, torch.zeros_like(area))


def _signed_area(poly: Tensor) -> Tensor:
    """(P, 4, 2) → (P,) shoelace area, positive for corners clockwise on screen (y down)."""
    x, y = poly[..., 0], poly[..., 1]
    return (x * y.roll(-1, 1) - x.roll(-1, 1) * y).sum(1) / 2


def _inside(pts: Tensor, poly: Tensor) -> Tensor:
    """(P, K, 2) points inside (or on the border of) convex (P, 4, 2) polygons → (P, K) bool."""
    v = poly[:, None]  # (P, 1, 4, 2)
    e = poly.roll(-1, 1)[:, None] - v
    d = pts[:, :, None] - v  # (P, K, 4, 2)
    cross = e[..., 0] * d[..., 1] - e[..., 1] * d[..., 0]  # (P, K, 4), length x distance
    orient = torch.where(_signed_area(poly) >= 0, 1.0, -1.0).to(cross.dtype)[:, None, None]
    size = e.norm(dim=-1)  # (P, 1, 4)
    slack = _TOL_EPS * torch.finfo(pts.dtype).eps * size * size.sum(-1, keepdim=True)
    return (cross * orient >= -slack).all(-1)


def _quad_iou_chunk(pa: Tensor, pb: Tensor) -> Tensor:
    """IoU of (P, 4, 2) convex quadrilateral pairs, one chunk (no checks)."""
    # work relative to the first polygon's centre: float32 keeps its precision at large coordinates
    shift = pa.mean(1, keepdim=True)
    pa, pb = pa - shift, pb - shift
    inter = _intersection_area(pa, pb)
    union = _signed_area(pa).abs() + _signed_area(pb).abs() - inter
    return inter / union.clamp_min(torch.finfo(union.dtype).tiny)


def _float(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    dtype = torch.promote_types(a.dtype, b.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return a.to(dtype), b.to(dtype)


def quad_iou_aligned(a: Tensor, b: Tensor, *, max_pairs: int = _MAX_PAIRS) -> Tensor:
    """IoU of convex quadrilaterals pair by pair (``a[i]`` with ``b[i]``), any winding.

    Args:
        a: (N, 8) ``x1, y1, ..., x4, y4``, convex (see ``is_convex_quad``).
        b: (N, 8).
        max_pairs: pairs per chunk (bounds the memory of the intermediates).

    Returns:
        (N,) IoU in [0, 1]; 0 for polygons of zero area.
    """
    _check(a, 8, "a")
    _check(b, 8, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must have the same number of boxes, got {a.shape[0]} and {b.shape[0]}")
    a, b = _float(a, b)
    pa, pb = a.reshape(-1, 4, 2), b.reshape(-1, 4, 2)
    if a.shape[0] <= max_pairs:
        return _quad_iou_chunk(pa, pb)
    return torch.cat(
        [_quad_iou_chunk(pa[i : i + max_pairs], pb[i : i + max_pairs]) for i in range(0, len(pa), max_pairs)]
    )


def rotated_iou_aligned(a: Tensor, b: Tensor, *, max_pairs: int = _MAX_PAIRS) -> Tensor:
    """IoU of oriented boxes pair by pair (``a[i]`` with ``b[i]``).

    Differentiable with respect to both inputs (away from degenerate configurations).

    Args:
        a: (N, 5) ``cx, cy, w, h, angle``.
        b: (N, 5).
        max_pairs: pairs per chunk (bounds the memory of the intermediates).

    Returns:
        (N,) IoU in [0, 1]; 0 for boxes of zero area.
    """
    _check(a, 5, "a")
    _check(b, 5, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must have the same number of boxes, got {a.shape[0]} and {b.shape[0]}")
    a, b = _float(a, b)
    # corners relative to the first box's centre: float32 keeps its precision at large coordinates
    shift = torch.cat([a[:, :2], torch.zeros_like(a[:, 2:])], 1)
    a, b = a - shift, b - shift
    return quad_iou_aligned(obb_to_poly(a), obb_to_poly(b), max_pairs=max_pairs)


def is_convex_quad(polys: Tensor) -> Tensor:
    """Whether each quadrilateral is convex and not self-intersecting (collinear corners allowed).

    Args:
        polys: (N, 8).

    Returns:
        (N,) bool.
    """
    _check(polys, 8, "polys")
    p = polys.reshape(-1, 4, 2)
    e = p.roll(-1, 1) - p
    turn = e[..., 0] * e.roll(-1, 1)[..., 1] - e[..., 1] * e.roll(-1, 1)[..., 0]  # (N, 4)
    same_sign = (turn >= 0).all(1) | (turn <= 0).all(1)
    # a convex polygon winds once: its exterior angles sum to one full turn
    ang = torch.atan2(e[..., 1], e[..., 0])
    turning = torch.remainder(ang.roll(-1, 1) - ang + math.pi, 2 * math.pi) - math.pi
    return same_sign & ((turning.sum(1).abs() - 2 * math.pi).abs() < 1e-3)


def _overlapping_pairs(ha: Tensor, hb: Tensor, max_pairs: int) -> tuple[Tensor, Tensor]:
    """Index pairs ``(i, j)`` whose axis-aligned bounds (N, 4), (M, 4) intersect with positive area."""
    rows = max(1, max_pairs // max(1, hb.shape[0]))
    ii, jj = [], []
    for s in range(0, ha.shape[0], rows):
        c = ha[s : s + rows]
        w = torch.minimum(c[:, None, 2], hb[None, :, 2]) - torch.maximum(c[:, None, 0], hb[None, :, 0])
        h = torch.minimum(c[:, None, 3], hb[None, :, 3]) - torch.maximum(c[:, None, 1], hb[None, :, 1])
        i, j = torch.nonzero((w > 0) & (h > 0), as_tuple=True)
        ii.append(i + s)
        jj.append(j)
    if not ii:
        empty = torch.zeros(0, dtype=torch.long, device=ha.device)
        return empty, empty
    return torch.cat(ii), torch.cat(jj)


def _quad_bounds(polys: Tensor) -> Tensor:
    """(N, 8) → (N, 4) ``x1, y1, x2, y2``."""
    p = polys.reshape(-1, 4, 2)
    return torch.cat([p.amin(1), p.amax(1)], 1)


def quad_iou(a: Tensor, b: Tensor, *, max_pairs: int = _MAX_PAIRS) -> Tensor:
    """IoU of every convex quadrilateral in ``a`` with every one in ``b``.

    Only pairs whose axis-aligned bounds overlap are clipped (the others are 0), in chunks of at
    most ``max_pairs`` pairs. Differentiable like ``rotated_iou_aligned``.

    Args:
        a: (N, 8) ``x1, y1, ..., x4, y4``.
        b: (M, 8).
        max_pairs: pairs per chunk.

    Returns:
        (N, M) IoU.
    """
    _check(a, 8, "a")
    _check(b, 8, "b")
    a, b = _float(a, b)
    with torch.no_grad():
        i, j = _overlapping_pairs(_quad_bounds(a), _quad_bounds(b), max_pairs)
    out = a.new_zeros(a.shape[0], b.shape[0])
    if i.numel():
        out = out.index_put((i, j), quad_iou_aligned(a[i], b[j], max_pairs=max_pairs))
    return out


def rotated_iou(a: Tensor, b: Tensor, *, max_pairs: int = _MAX_PAIRS) -> Tensor:
    """IoU of every oriented box in ``a`` with every one in ``b``.

    Only pairs whose axis-aligned bounds overlap are clipped (the others are 0), in chunks of at
    most ``max_pairs`` pairs. Differentiable like ``rotated_iou_aligned``.

    Args:
        a: (N, 5) ``cx, cy, w, h, angle``.
        b: (M, 5).
        max_pairs: pairs per chunk.

    Returns:
        (N, M) IoU.
    """
    _check(a, 5, "a")
    _check(b, 5, "b")
    a, b = _float(a, b)
    with torch.no_grad():
        i, j = _overlapping_pairs(obb_to_hbb(a), obb_to_hbb(b), max_pairs)
    out = a.new_zeros(a.shape[0], b.shape[0])
    if i.numel():
        out = out.index_put((i, j), rotated_iou_aligned(a[i], b[j], max_pairs=max_pairs))
    return out


def rotated_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression on rotated IoU.

    Boxes are visited by descending score (ties by index); a box is dropped when its IoU with an
    already kept box is strictly greater than ``iou_threshold``.

    Args:
        boxes: (N, 5) ``cx, cy, w, h, angle``.
        scores: (N,).
        iou_threshold: in [0, 1].

    Returns:
        (K,) int64 indices of the kept boxes, by descending score (on ``boxes.device``).
    """
    _check(boxes, 5, "boxes")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must have shape ({boxes.shape[0]},), got {tuple(scores.shape)}")
    if not 0 <= iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    device = boxes.device
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    with torch.no_grad():
        boxes = boxes.detach().to(torch.promote_types(boxes.dtype, torch.float32))
        order = torch.sort(scores.detach(), descending=True, stable=True).indices
        sb = boxes[order]  # boxes in rank order
        # candidate pairs (r < s in rank) whose bounds overlap, then their exact IoU
        i, j = _overlapping_pairs_sweep(obb_to_hbb(sb))
        if i.numel():
            iou = rotated_iou_aligned(sb[i], sb[j])
            hit = iou > iou_threshold
            i, j = i[hit], j[hit]
        keep_rank = _greedy(n, i.cpu().numpy(), j.cpu().numpy())
    return order[torch.from_numpy(keep_rank).to(device)]


def _overlapping_pairs_sweep(hbb: Tensor, max_pairs: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """Pairs ``(r, s)``, ``r < s``, of (N, 4) bounds that intersect: sweep over x, then test y.

    Sorting by ``x1`` makes each box's x-overlapping partners one contiguous run, so the pairs are
    enumerated without an N x N matrix.
    """
    n = hbb.shape[0]
    x_order = torch.sort(hbb[:, 0], stable=True).indices
    hs = hbb[x_order]
    # box k (in x order) overlaps in x the boxes k+1 .. end[k]-1 (their x1 < its x2)
    end = torch.searchsorted(hs[:, 0].contiguous(), hs[:, 2].contiguous(), side="left")
    count = (end - torch.arange(n, device=hbb.device) - 1).clamp_min(0)
    ii, jj = [], []
    cum = torch.cumsum(count, 0)
    start = 0
    while start < n:  # chunks of at most ~max_pairs candidate pairs
        base = int(cum[start - 1]) if start else 0
        stop = int(torch.searchsorted(cum, torch.tensor(base + max_pairs, device=cum.device), side="right"))
        stop = max(stop, start + 1)
        c = count[start:stop]
        src = torch.repeat_interleave(torch.arange(start, stop, device=hbb.device), c)
        if src.numel():
            first = torch.cumsum(c, 0) - c  # position of each source's first pair
            offs = torch.arange(src.numel(), device=hbb.device) - torch.repeat_interleave(first, c)
            dst = src + 1 + offs
            a, b = hs[src], hs[dst]
            ok = (torch.minimum(a[:, 2], b[:, 2]) > torch.maximum(a[:, 0], b[:, 0])) & (
                torch.minimum(a[:, 3], b[:, 3]) > torch.maximum(a[:, 1], b[:, 1])
            )
            ii.append(x_order[src[ok]])
            jj.append(x_order[dst[ok]])
        start = stop
    if not ii:
        empty = torch.zeros(0, dtype=torch.long, device=hbb.device)
        return empty, empty
    i, j = torch.cat(ii), torch.cat(jj)
    return torch.minimum(i, j), torch.maximum(i, j)  # rank order: lower rank first


def _greedy(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Greedy suppression in rank order over the suppressing pairs ``(i, j)``, ``i < j``."""
    order = np.argsort(i, kind="stable")
    i, j = i[order], j[order]
    ptr = np.searchsorted(i, np.arange(n + 1))
    removed = np.zeros(n, bool)
    keep = []
    for r in range(n):
        if removed[r]:
            continue
        keep.append(r)
        lo, hi = ptr[r], ptr[r + 1]
        if hi > lo:
            removed[j[lo:hi]] = True
    return np.asarray(keep, np.int64)


def batched_rotated_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware rotated NMS: boxes of different labels never suppress each other.

    Args:
        boxes: (N, 5) ``cx, cy, w, h, angle``.
        scores: (N,).
        labels: (N,) integer class ids.
        iou_threshold: in [0, 1].

    Returns:
        (K,) int64 indices of the kept boxes, by descending score.
    """
    _check(boxes, 5, "boxes")
    if labels.shape != (boxes.shape[0],):
        raise ValueError(f"labels must have shape ({boxes.shape[0]},), got {tuple(labels.shape)}")
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    with torch.no_grad():
        b = boxes.detach().to(torch.promote_types(boxes.dtype, torch.float64))
        hbb = obb_to_hbb(b)
        # shift each class to its own region (torchvision's trick): no cross-class overlaps
        span = float((hbb[:, 2:].max() - hbb[:, :2].min()).item()) + 1.0
        lab = torch.unique(labels, return_inverse=True)[1].to(b.dtype)
        offset = lab * span
        b = torch.cat([b[:, :1] + offset[:, None], b[:, 1:]], 1)
    return rotated_nms(b, scores, iou_threshold)
