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
annotations) is computed by convex polygon clipping on tensors: by Green's theorem the
intersection's area is a sum over its boundary, which is made of the part of each polygon's edges
inside the other (each edge clipped against the other's four half-planes), so no vertex list has
to be built or sorted. It is differentiable with respect to the boxes wherever
the intersection's combinatorics do not change, and it is computed in chunks, only for pairs whose
axis-aligned bounds overlap, so tens of thousands of boxes fit in memory. NMS suppresses a box
whose IoU with a kept, higher-scoring box is **strictly greater** than the threshold
(torchvision's and the DOTA devkit's rule).
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
_FINISH_PAIRS = 1 << 13  # rotated_nms: remaining candidate pairs below which one batch finishes
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

    Green's theorem over the boundary of the intersection: that boundary is, for each edge of one
    polygon, the part of it inside the other (one sub-segment ``[t0, t1]`` of the edge, clipped
    against the other's four half-planes), and a segment ``p + t d`` contributes
    ``(t1 - t0) cross(p, d) / 2``. Collinear overlapping edges belong to the boundary once: an edge
    of ``pa`` on an edge of ``pb`` with the same direction counts (from ``pa`` only), with opposite
    directions (polygons touching from outside) neither counts.

    Args:
        pa, pb: (P, 4, 2) corners of the first and second polygons, each in either winding.

    Returns:
        (P,) intersection areas.
    """
    pa, pb = _ccw(pa), _ccw(pb)
    return _boundary_inside(pa, pb, shared=True) + _boundary_inside(pb, pa, shared=False)


def _ccw(poly: Tensor) -> Tensor:
    """(P, 4, 2) with every polygon in the winding of positive ``_signed_area``."""
    flip = _signed_area(poly) < 0
    return torch.where(flip[:, None, None], poly.flip(1), poly)


def _boundary_inside(pa: Tensor, pb: Tensor, shared: bool) -> Tensor:
    """Sum of ``cross(p, d) (t1 - t0) / 2`` over the parts of ``pa``'s edges inside ``pb`` → (P,)."""
    ax, ay = pa[..., 0].contiguous(), pa[..., 1].contiguous()  # (P, 4) edge starts of pa
    bx, by = pb[..., 0].contiguous(), pb[..., 1].contiguous()
    dx, dy = ax.roll(-1, 1) - ax, ay.roll(-1, 1) - ay  # (P, 4) edge vectors of pa
    ex, ey = bx.roll(-1, 1) - bx, by.roll(-1, 1) - by
    # inside pb's k-th half-plane: cross(e_k, p + t d - v_k) = c0 + t c1 >= 0; axes (P, edge of pa, edge of pb)
    exk, eyk = ex[:, None, :], ey[:, None, :]
    c0 = exk * (ay[:, :, None] - by[:, None, :]) - eyk * (ax[:, :, None] - bx[:, None, :])
    c1 = exk * dy[:, :, None] - eyk * dx[:, :, None]
    eps = _TOL_EPS * torch.finfo(pa.dtype).eps
    len_e = torch.sqrt(ex * ex + ey * ey)[:, None, :]
    len_d = torch.sqrt(dx * dx + dy * dy)[:, :, None]
    scale = (
        ax.amax(1) - ax.amin(1) + ay.amax(1) - ay.amin(1) + bx.amax(1) - bx.amin(1) + by.amax(1) - by.amin(1)
    )
    flat = c1.abs() <= eps * len_e * len_d  # edge parallel to the half-plane's line
    on_line = c0.abs() <= (eps * scale)[:, None, None] * len_e
    ok_parallel = (c0 > 0) & ~on_line
    if shared:
        ok_parallel = ok_parallel | (on_line & ((exk * dx[:, :, None] + eyk * dy[:, :, None]) > 0))
    t = -c0 / torch.where(flat, torch.ones_like(c1), c1)
    lower = torch.where(~flat & (c1 > 0), t, -2.0).amax(-1).clamp_min(0.0)  # (P, 4)
    upper = torch.where(~flat & (c1 < 0), t, 2.0).amin(-1).clamp_max(1.0)
    feasible = (~flat | ok_parallel).all(-1)
    span = torch.where(feasible, (upper - lower).clamp_min(0.0), torch.zeros_like(upper))
    return (span * (ax * dy - ay * dx)).sum(-1) / 2


def _signed_area(poly: Tensor) -> Tensor:
    """(P, 4, 2) → (P,) shoelace area, positive for corners clockwise on screen (y down)."""
    x, y = poly[..., 0], poly[..., 1]
    return (x * y.roll(-1, 1) - x.roll(-1, 1) * y).sum(1) / 2


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


def _all_pairs(
    a: Tensor,
    b: Tensor,
    bounds: Callable[[Tensor], Tensor],
    aligned: Callable[..., Tensor],
    max_pairs: int,
) -> Tensor:
    """The one body of ``quad_iou`` / ``rotated_iou``: ``aligned`` IoU of the pairs whose
    ``bounds`` (axis-aligned ``x1, y1, x2, y2``) overlap, 0 elsewhere; (N, M)."""
    with torch.no_grad():
        i, j = _overlapping_pairs(bounds(a), bounds(b), max_pairs)
    out = a.new_zeros(a.shape[0], b.shape[0])
    if i.numel():
        out = out.index_put((i, j), aligned(a[i], b[j], max_pairs=max_pairs))
    return out


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
    return _all_pairs(*_float(a, b), _quad_bounds, quad_iou_aligned, max_pairs)


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
    return _all_pairs(*_float(a, b), obb_to_hbb, rotated_iou_aligned, max_pairs)


def rotated_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression on rotated IoU.

    Boxes are visited by descending score (ties by index); a box is dropped when its IoU with an
    already kept box is strictly greater than ``iou_threshold``.

    The greedy result is computed in vectorised waves: candidate pairs come from a grid over the
    axis-aligned bounds; a box is decided once every higher-scoring candidate neighbour is, and its
    IoU is computed only against the kept ones. So the work is about (kept boxes x neighbours), as
    in a sequential loop, without a Python step per box (long chains fall back to one batch).

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
    return _rotated_nms(boxes, scores, iou_threshold, _FINISH_PAIRS)


def _rotated_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, finish_pairs: int) -> Tensor:
    """``rotated_nms`` (checked inputs); waves until at most ``finish_pairs`` pairs remain."""
    device = boxes.device
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    with torch.no_grad():
        boxes = boxes.detach().to(torch.promote_types(boxes.dtype, torch.float32))
        order = torch.sort(scores.detach(), descending=True, stable=True).indices
        sb = boxes[order]  # boxes in rank order
        i, j = _candidate_pairs(obb_to_hbb(sb))  # rank pairs, i < j, bounds overlapping
        state = torch.zeros(n, dtype=torch.int8, device=device)  # 0 undecided, 1 kept, 2 dropped
        waves = 0
        while True:
            undecided = state == 0
            if not bool(undecided.any()):
                break
            blocked = torch.zeros(n, dtype=torch.bool, device=device)
            blocked[j[state[i] == 0]] = True
            ready = undecided & ~blocked
            waves += 1
            few_pairs = i.numel() <= finish_pairs  # the rest is cheaper in one batch than in waves
            long_chain = waves > 16 and int(ready.sum()) < max(64, int(undecided.sum()) // 64)
            if few_pairs or long_chain:
                _finish_greedy(sb, i, j, state, iou_threshold)
                break
            sel = (state[i] == 1) & ready[j]
            hit = torch.zeros(n, dtype=torch.bool, device=device)
            if bool(sel.any()):
                iou = rotated_iou_aligned(sb[i[sel]], sb[j[sel]])
                hit[j[sel][iou > iou_threshold]] = True
            state[ready & hit] = 2
            state[ready & ~hit] = 1
            live = (state[j] == 0) & (state[i] != 2)  # pairs that can still decide something
            i, j = i[live], j[live]
        keep_rank = torch.nonzero(state == 1)[:, 0]
    return order[keep_rank]


def _finish_greedy(sb: Tensor, i: Tensor, j: Tensor, state: Tensor, thr: float) -> None:
    """Decide the remaining boxes of ``state`` in place: all remaining pair IoUs, then a sequential pass."""
    iou = rotated_iou_aligned(sb[i], sb[j]) if i.numel() else sb.new_zeros(0)
    hit = iou > thr
    a, b = i[hit].cpu().numpy(), j[hit].cpu().numpy()
    st = state.cpu().numpy()
    removed = st == 2
    kept_src = st[a] == 1
    removed[b[kept_src]] = True  # suppressed by boxes kept in earlier waves
    a, b = a[~kept_src], b[~kept_src]
    order = np.argsort(a, kind="stable")
    a, b = a[order], b[order]
    ptr = np.searchsorted(a, np.arange(len(st) + 1))
    for r in np.nonzero(st == 0)[0]:
        if removed[r]:
            st[r] = 2
            continue
        st[r] = 1
        lo, hi = ptr[r], ptr[r + 1]
        if hi > lo:
            removed[b[lo:hi]] = True
    state.copy_(torch.from_numpy(st))


def _candidate_pairs(hbb: Tensor) -> tuple[Tensor, Tensor]:
    """Pairs ``(r, s)``, ``r < s``, of (N, 4) bounds that overlap with positive area, without an N x N matrix.

    Boxes go into a grid whose cell is the 99th percentile of the box extents: two boxes no larger
    than a cell overlap only if their centres' cells touch, so each box is tested against the 9
    cells around it. The few larger boxes are tested against all boxes.
    """
    n = hbb.shape[0]
    device = hbb.device
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if n < 2:
        return empty, empty
    ext = torch.maximum(hbb[:, 2] - hbb[:, 0], hbb[:, 3] - hbb[:, 1])
    k = max(1, min(n, math.ceil(0.99 * n)))
    cell = float(ext.kthvalue(k).values.clamp_min(1e-6))
    large = ext > cell
    ii, jj = [], []
    small = torch.nonzero(~large)[:, 0]
    if small.numel() > 1:
        hs = hbb[small]
        c = ((hs[:, :2] + hs[:, 2:]) / 2 / cell).floor().long()
        c = c - c.min(0).values + 1  # >= 1, so that neighbour offsets stay >= 0
        rows = int(c[:, 1].max()) + 2
        key = c[:, 0] * rows + c[:, 1]
        sorted_key, pos = torch.sort(key)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                target = key + dx * rows + dy
                lo = torch.searchsorted(sorted_key, target, side="left")
                cnt = torch.searchsorted(sorted_key, target, side="right") - lo
                src = torch.repeat_interleave(torch.arange(len(key), device=device), cnt)
                if src.numel() == 0:
                    continue
                first = torch.cumsum(cnt, 0) - cnt
                dst = pos[lo[src] + torch.arange(src.numel(), device=device) - first[src]]
                a, b = small[src], small[dst]
                ii.append(a[a < b])
                jj.append(b[a < b])
    big = torch.nonzero(large)[:, 0]
    if big.numel():
        bi, bj = _overlapping_pairs(hbb[big], hbb, max(_MAX_PAIRS, n))
        a, b = big[bi], bj
        ok = (a != b) & ~(large[b] & (b < a))  # large-large pairs once
        ii.append(torch.minimum(a[ok], b[ok]))
        jj.append(torch.maximum(a[ok], b[ok]))
    if not ii:
        return empty, empty
    i, j = torch.cat(ii), torch.cat(jj)
    x = torch.minimum(hbb[i, 2], hbb[j, 2]) > torch.maximum(hbb[i, 0], hbb[j, 0])
    y = torch.minimum(hbb[i, 3], hbb[j, 3]) > torch.maximum(hbb[i, 1], hbb[j, 1])
    return i[x & y], j[x & y]


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
