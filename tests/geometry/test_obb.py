"""Oriented-box ops against shapely, the DOTA annotation convention and the polygon NMS."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import torch
from shapely.geometry import Polygon

from vitp_geo.geometry.obb import (
    _rotated_nms,
    batched_rotated_nms,
    hbb_to_obb,
    is_convex_quad,
    normalize_obb,
    obb_to_hbb,
    obb_to_poly,
    poly_to_obb,
    quad_iou,
    quad_iou_aligned,
    rotated_iou,
    rotated_iou_aligned,
    rotated_nms,
)
from vitp_geo.tiling.window_detections import nms_polygons


def random_obbs(n: int, seed: int, span: float = 60.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 2, generator=g, dtype=dtype) * span
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 30 + 2
    a = (torch.rand(n, 1, generator=g, dtype=dtype) - 0.5) * 4 * math.pi  # any angle, any side order
    return torch.cat([c, wh, a], 1)


def polygons(boxes: torch.Tensor) -> list[Polygon]:
    return [Polygon(p.reshape(4, 2).tolist()) for p in obb_to_poly(boxes.double())]


def shapely_iou(pa: list[Polygon], pb: list[Polygon]) -> np.ndarray:
    return np.array([[x.intersection(y).area / x.union(y).area for y in pb] for x in pa])


def test_normalize_gives_le90_and_the_same_rectangle() -> None:
    b = random_obbs(200, 0)
    n = normalize_obb(b)
    assert (n[:, 2] >= n[:, 3]).all()
    assert ((n[:, 4] >= -math.pi / 2) & (n[:, 4] < math.pi / 2)).all()
    for p, q in zip(polygons(b), polygons(n), strict=True):
        assert p.symmetric_difference(q).area < 1e-9 * p.area
    # the w/h swap plus a quarter turn, and any number of half turns, are the same box
    cx, cy, w, h, a = b.unbind(-1)
    for k in (-2, -1, 1, 3):
        same = torch.stack([cx, cy, h, w, a + math.pi / 2 + k * math.pi], -1)
        torch.testing.assert_close(normalize_obb(same), n, atol=1e-9, rtol=0)


def test_polygon_obb_round_trip() -> None:
    b = normalize_obb(random_obbs(200, 1))
    b = b[(b[:, 2] - b[:, 3]) > 0.5]  # not squares (two valid representations)
    poly = obb_to_poly(b)
    torch.testing.assert_close(poly_to_obb(poly), b, atol=1e-9, rtol=0)
    # any starting corner and either winding: still the same box
    pts = poly.reshape(-1, 4, 2)
    for shifted in (pts.roll(1, 1), pts.flip(1), pts.roll(2, 1).flip(1)):
        torch.testing.assert_close(poly_to_obb(shifted.reshape(-1, 8)), b, atol=1e-9, rtol=0)


def test_corner_order_at_angle_zero_is_clockwise_from_top_left() -> None:
    poly = obb_to_poly(torch.tensor([[10.0, 20.0, 8.0, 4.0, 0.0]]))
    assert poly.tolist() == [[6.0, 18.0, 14.0, 18.0, 14.0, 22.0, 6.0, 22.0]]
    # a small positive angle turns the w side from +x towards +y (clockwise on screen)
    p = obb_to_poly(torch.tensor([[0.0, 0.0, 2.0, 0.0, 0.1]]))[0]
    assert p[2] > 0 and p[3] > 0  # the second corner (c + u) moved down the image


# Real lines from DOTA-v1.0 train/labelTxt/P0000.txt (after "imagesource:GoogleEarth", "gsd:...").
PLANE = "2753 2408 2861 2385 2888 2468 2805 2502 plane 0"
VEHICLE = "3185 4158 3195 4161 3175 4204 3164 4199 large-vehicle 0"


def _line_poly(line: str) -> torch.Tensor:
    return torch.tensor([[float(v) for v in line.split()[:8]]], dtype=torch.float64)


@pytest.mark.parametrize("line", [PLANE, VEHICLE])
def test_dota_line_gives_the_minimum_area_rectangle(line: str) -> None:
    poly = _line_poly(line)
    obb = poly_to_obb(poly)[0]
    ours = Polygon(obb_to_poly(obb[None])[0].reshape(4, 2).tolist())
    quad = Polygon(poly[0].reshape(4, 2).tolist())
    ref = shapely.oriented_envelope(quad)  # shapely's minimum rotated rectangle
    assert abs(ours.area - ref.area) < 1e-6 * ref.area
    assert ours.symmetric_difference(ref).area < 1e-6 * ref.area
    assert ours.buffer(1e-6).contains(quad)


def test_dota_vehicle_line_swaps_sides_and_wraps_the_angle() -> None:
    # The first edge (3185,4158)->(3195,4161) is the short one (10.4 px); the long side runs along
    # (3195,4161)->(3175,4204), direction atan2(43, -20) = 2.006 rad, outside [-pi/2, pi/2): the box
    # must come back with w = the long side and the angle wrapped by pi to -1.136 rad.
    cx, cy, w, h, a = poly_to_obb(_line_poly(VEHICLE))[0].tolist()
    assert 44 < w < 50 and 9 < h < 13
    assert abs(a - (math.atan2(43, -20) - math.pi)) < 0.05
    assert abs(cx - (3185 + 3195 + 3175 + 3164) / 4) < 1.5 and abs(cy - (4158 + 4161 + 4204 + 4199) / 4) < 1.5
    # the plane's smallest rectangle is flush with its second, short edge (27, 83): the long side w
    # is perpendicular to it, at atan2(83, 27) - pi/2 = -0.3145 rad
    _, _, w, h, a = poly_to_obb(_line_poly(PLANE))[0].tolist()
    assert w > h and abs(a - (math.atan2(83, 27) - math.pi / 2)) < 1e-9


def test_hbb_obb_conversions() -> None:
    hbb = torch.tensor([[0.0, 0.0, 10.0, 4.0], [5.0, 5.0, 7.0, 15.0]], dtype=torch.float64)
    obb = hbb_to_obb(hbb)
    torch.testing.assert_close(obb[0], torch.tensor([5.0, 2.0, 10.0, 4.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(
        obb[1], torch.tensor([6.0, 10.0, 10.0, 2.0, -math.pi / 2], dtype=torch.float64)
    )
    torch.testing.assert_close(obb_to_hbb(obb), hbb)
    b = random_obbs(50, 2)
    bounds = torch.tensor([p.bounds for p in polygons(b)], dtype=torch.float64)
    torch.testing.assert_close(obb_to_hbb(b), bounds)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rotated_iou_matches_shapely(dtype: torch.dtype) -> None:
    a, b = random_obbs(120, 3, dtype=dtype), random_obbs(90, 4, dtype=dtype)
    b = torch.cat([b, a[:10], a[10:20] + torch.tensor([0.5, 0, 0, 0, 0], dtype=dtype)])  # equal, shifted
    ref = shapely_iou(polygons(a), polygons(b))
    assert 0.2 < (ref > 0).mean() < 0.9  # a mix of overlapping and disjoint pairs
    iou = rotated_iou(a, b)
    assert iou.dtype == dtype
    np.testing.assert_allclose(iou.double().numpy(), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.diag(iou[:10, 90:100].double().numpy()), 1.0, atol=1e-5)


def test_rotated_iou_far_from_the_origin_and_contained_boxes() -> None:
    a = random_obbs(40, 5, dtype=torch.float32)
    a[:, :2] += 5000.0  # DOTA-size coordinates: float32 must keep its precision
    inner = a.clone()
    inner[:, 2:4] *= 0.5  # same centre and angle, half the sides: IoU 1/4
    b = torch.cat([a + torch.tensor([3.0, -2.0, 0, 0, 0.2]), inner])
    ref = shapely_iou(polygons(a), polygons(b))
    np.testing.assert_allclose(rotated_iou(a, b).double().numpy(), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(rotated_iou_aligned(a, inner).double().numpy(), 0.25, atol=1e-5)


def test_quad_iou_matches_shapely_on_convex_quadrilaterals() -> None:
    # DOTA-like annotations: rectangles with every corner moved a little, in either winding
    g = torch.Generator().manual_seed(16)
    a = obb_to_poly(random_obbs(80, 17)) + torch.randn(80, 8, generator=g, dtype=torch.float64)
    b = obb_to_poly(random_obbs(70, 18)) + torch.randn(70, 8, generator=g, dtype=torch.float64)
    b[::2] = b[::2].reshape(-1, 4, 2).flip(1).reshape(-1, 8)
    convex_a, convex_b = is_convex_quad(a), is_convex_quad(b)
    assert convex_a.float().mean() > 0.8
    a, b = a[convex_a], b[convex_b]
    pa = [Polygon(p.reshape(4, 2).tolist()) for p in a]
    pb = [Polygon(p.reshape(4, 2).tolist()) for p in b]
    np.testing.assert_allclose(quad_iou(a, b).numpy(), shapely_iou(pa, pb), atol=1e-9, rtol=0)


def test_touching_vertices_in_every_direction() -> None:
    # a diamond inscribed in a square: its corners lie on the square's edges, straight up, down,
    # left and right of the centre (the vertex sort must tell left from right)
    s = 10 / math.sqrt(2)
    diamond = obb_to_poly(torch.tensor([[5.0, 5.0, 10.0, 10.0, math.pi / 4]], dtype=torch.float64))
    square = torch.tensor([[5 - s, 5 - s, 5 + s, 5 - s, 5 + s, 5 + s, 5 - s, 5 + s]], dtype=torch.float64)
    assert float(quad_iou(diamond, square)) == pytest.approx(0.5, abs=1e-12)
    assert float(quad_iou(square, diamond)) == pytest.approx(0.5, abs=1e-12)
    both = torch.tensor(
        [[5.0, 5.0, 10.0, 10.0, math.pi / 4], [5.0, 5.0, 2 * s, 2 * s, 0.0]], dtype=torch.float64
    )
    assert float(rotated_iou(both[:1], both[1:])) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_iou_with_shared_and_touching_edges(dtype: torch.dtype) -> None:
    """Collinear edges are where clipping goes wrong: integer boxes on a small grid (shared edges,
    identical and touching boxes), the same boxes as angle -pi/2 oriented boxes, and rotated boxes
    slid along their own axis (partly overlapping, sharing two edges, or touching end to end)."""
    g = torch.Generator().manual_seed(21)
    n = 3000

    def grid_boxes() -> torch.Tensor:
        xy = torch.randint(0, 6, (n, 2), generator=g).double()
        return torch.cat([xy, xy + torch.randint(1, 5, (n, 2), generator=g).double()], 1)

    def hpoly(h: torch.Tensor) -> torch.Tensor:
        x1, y1, x2, y2 = h.unbind(1)
        return torch.stack([x1, y1, x2, y1, x2, y2, x1, y2], 1)

    def ref(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
        out = []
        for x, y in zip(a.double().tolist(), b.double().tolist(), strict=True):
            px, py = Polygon(np.reshape(x, (4, 2))), Polygon(np.reshape(y, (4, 2)))
            inter = px.intersection(py).area
            out.append(inter / (px.area + py.area - inter))
        return np.asarray(out)

    tol = 1e-5 if dtype == torch.float32 else 1e-12
    h1, h2 = grid_boxes(), grid_boxes()
    r = ref(hpoly(h1), hpoly(h2))
    assert (r == 0).mean() > 0.1 and (r == 1).any()
    np.testing.assert_allclose(
        quad_iou_aligned(hpoly(h1).to(dtype), hpoly(h2).to(dtype)).double(), r, atol=tol
    )
    o1, o2 = hbb_to_obb(h1.to(dtype)), hbb_to_obb(h2.to(dtype))
    np.testing.assert_allclose(rotated_iou_aligned(o1, o2).double(), r, atol=tol)
    b = random_obbs(n, 22)
    k = torch.randint(0, 5, (n, 1), generator=g).double() / 4  # slide by 0, 1/4, ..., 1 of w
    slide = torch.cat(
        [torch.cos(b[:, 4:]) * b[:, 2:3] * k, torch.sin(b[:, 4:]) * b[:, 2:3] * k, torch.zeros(n, 3)], 1
    )
    r = ref(obb_to_poly(b), obb_to_poly(b + slide))
    assert (r == 0).sum() > 100  # touching end to end
    np.testing.assert_allclose(
        rotated_iou_aligned(b.to(dtype), (b + slide).to(dtype)).double(), r, atol=10 * tol
    )


def test_is_convex_quad() -> None:
    quads = torch.tensor(
        [
            [0, 0, 4, 0, 4, 3, 0, 3],  # rectangle
            [0, 0, 0, 3, 4, 3, 4, 0],  # same, other winding
            [0, 0, 4, 0, 1, 1, 0, 4],  # dart (one reflex corner)
            [0, 0, 4, 3, 4, 0, 0, 3],  # bow-tie (self-intersecting)
            [0, 0, 2, 0, 4, 0, 2, 3],  # a triangle with a corner on an edge: convex
        ],
        dtype=torch.float64,
    )
    assert is_convex_quad(quads).tolist() == [True, True, False, False, True]


def test_aligned_equals_the_diagonal_and_chunking_changes_nothing() -> None:
    a, b = random_obbs(300, 6), random_obbs(300, 7)
    full = rotated_iou(a, b)
    torch.testing.assert_close(rotated_iou_aligned(a, b), torch.diagonal(full))
    torch.testing.assert_close(rotated_iou_aligned(a, b, max_pairs=7), torch.diagonal(full))
    torch.testing.assert_close(rotated_iou(a, b, max_pairs=50), full)


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        rotated_iou(torch.zeros(3, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="same number"):
        rotated_iou_aligned(torch.zeros(3, 5), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="iou_threshold"):
        rotated_nms(torch.zeros(1, 5), torch.zeros(1), 1.5)


def test_gradcheck_rotated_iou_aligned() -> None:
    a = torch.tensor([[10.0, 10.0, 12.0, 6.0, 0.3], [0.0, 0.0, 8.0, 8.0, 0.1]], dtype=torch.float64)
    b = torch.tensor([[13.0, 11.0, 9.0, 7.0, -0.4], [3.0, 1.0, 6.0, 10.0, 0.7]], dtype=torch.float64)
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: rotated_iou_aligned(x, y), (a, b), eps=1e-6, atol=1e-5)
    # and a non-zero gradient that points the right way: moving b onto a raises the IoU
    iou = rotated_iou_aligned(a[:1], b[:1])
    (g,) = torch.autograd.grad(iou.sum(), b)
    assert g[0, 0] < 0  # b's centre is right of a's: moving it left increases the overlap


@pytest.mark.parametrize("finish_pairs", [0, 1 << 30])  # all in waves / all in one batch
@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.5, 0.7])
def test_rotated_nms_keeps_the_same_indices_as_the_polygon_nms(threshold: float, finish_pairs: int) -> None:
    base = random_obbs(100, 8, span=300.0, dtype=torch.float32)
    g = torch.Generator().manual_seed(9)
    jitter = torch.cat(  # 4 noisy copies of each box: IoUs spread over (0, 1)
        [
            torch.randn(400, 2, generator=g) * 2,
            1 + torch.randn(400, 2, generator=g) * 0.15,
            torch.randn(400, 1, generator=g) * 0.2,
        ],
        1,
    )
    b = base.repeat(4, 1) * torch.cat([torch.ones(400, 2), jitter[:, 2:4], torch.ones(400, 1)], 1)
    b = b + torch.cat([jitter[:, :2], torch.zeros(400, 2), jitter[:, 4:]], 1)
    scores = torch.rand(400, generator=g)
    keep = _rotated_nms(b, scores, threshold, finish_pairs)
    ref = nms_polygons(polygons(b), scores.tolist(), threshold)
    assert rotated_nms(b, scores, threshold).tolist() == ref
    assert 20 < len(ref) < 390  # suppression actually happened
    assert keep.tolist() == ref


def test_rotated_nms_on_a_long_chain_and_with_large_boxes() -> None:
    # a chain: each box overlaps the next and scores lower, so each decision waits for the one before
    n = 300
    chain = torch.stack(
        [
            torch.arange(n) * 6.0,
            torch.zeros(n),
            torch.full((n,), 10.0),
            torch.full((n,), 5.0),
            torch.full((n,), 0.1),
        ],
        1,
    )
    scores = torch.linspace(1, 0, n)
    ref = nms_polygons(polygons(chain), scores.tolist(), 0.2)  # neighbours' IoU: 20 / 80 = 0.25
    assert rotated_nms(chain, scores, 0.2).tolist() == ref and len(ref) == n // 2
    assert _rotated_nms(chain, scores, 0.2, 0).tolist() == ref  # waves, then the long-chain batch
    # a few boxes much larger than the rest (outside the grid cell) among many small ones
    b = random_obbs(500, 19, span=400.0)
    big = torch.tensor(
        [[200.0, 200.0, 300.0, 250.0, 0.3], [100.0, 300.0, 180.0, 60.0, -0.2]], dtype=torch.float64
    )
    b = torch.cat([b, big])
    s = torch.rand(502, generator=torch.Generator().manual_seed(20))
    s[-2:] = 1.0  # the large boxes first: they suppress what they cover
    ref = nms_polygons(polygons(b), s.tolist(), 0.05)
    assert rotated_nms(b, s, 0.05).tolist() == ref and len(ref) < 450
    assert _rotated_nms(b, s, 0.05, 0).tolist() == ref


def test_batched_rotated_nms_never_suppresses_across_classes() -> None:
    b = random_obbs(300, 10, span=120.0)
    g = torch.Generator().manual_seed(11)
    scores, labels = torch.rand(300, generator=g), torch.randint(0, 3, (300,), generator=g) * 7
    keep = batched_rotated_nms(b, scores, labels, 0.3)
    polys = polygons(b)
    expected: list[int] = []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c)[:, 0].tolist()
        expected += [
            idx[k] for k in nms_polygons([polys[i] for i in idx], [float(scores[i]) for i in idx], 0.3)
        ]
    assert sorted(keep.tolist()) == sorted(expected)
    assert keep.tolist() == sorted(expected, key=lambda i: -float(scores[i]))  # by descending score
    # two identical boxes of different classes both survive
    twin = torch.tensor([[5.0, 5.0, 4.0, 2.0, 0.0]] * 2)
    assert len(batched_rotated_nms(twin, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.1)) == 2
    assert rotated_nms(twin, torch.tensor([0.9, 0.8]), 0.1).tolist() == [0]


def test_empty_inputs() -> None:
    e = torch.zeros(0, 5)
    assert rotated_iou(e, random_obbs(3, 0).float()).shape == (0, 3)
    assert rotated_nms(e, torch.zeros(0), 0.5).numel() == 0
    assert batched_rotated_nms(e, torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).numel() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    a, b = random_obbs(500, 12, span=100.0), random_obbs(400, 13, span=100.0)
    torch.testing.assert_close(rotated_iou(a.cuda(), b.cuda()).cpu(), rotated_iou(a, b))
    s = torch.rand(500, generator=torch.Generator().manual_seed(14))
    assert rotated_nms(a.cuda(), s.cuda(), 0.3).cpu().tolist() == rotated_nms(a, s, 0.3).tolist()


def test_scene_merger_nms_equals_polygon_nms_in_map_coordinates() -> None:
    """The merger suppresses on oriented boxes in scene pixels; with a sheared, rotated transform
    that must still be the decision polygon IoU makes in map coordinates."""
    from affine import Affine

    from vitp_geo.tiling.window_detections import DetectionMerger

    t = Affine(0.5, 0.2, 1000.0, 0.1, -0.6, 5000.0)
    m = DetectionMerger(t, 400, 400, iou_threshold=0.3)
    g = torch.Generator().manual_seed(15)
    for r, c in [(0, 0), (0, 150), (150, 0), (150, 150)]:
        n = 40
        xy = 20 + torch.rand(n, 2, generator=g) * 160
        wh = torch.rand(n, 2, generator=g) * 25 + 5
        obb = torch.cat([xy, wh, torch.rand(n, 1, generator=g) * 3], 1).numpy()
        hbb = np.concatenate([xy - wh / 2, xy + wh / 2], 1)[:10]
        boxes = [obb[:10], hbb]  # oriented and horizontal boxes, both accepted
        for bx in boxes:
            k = len(bx)
            m.add(
                r,
                c,
                250,
                250,
                bx,
                torch.rand(k, generator=g).numpy(),
                torch.randint(0, 2, (k,), generator=g).numpy(),
            )
    labels = np.asarray(m.labels)
    expected: list[int] = []
    for cls in (0, 1):
        idx = np.nonzero(labels == cls)[0]
        kept = nms_polygons([m.polygons[i] for i in idx], [m.scores[i] for i in idx], 0.3)
        expected += [int(idx[k]) for k in kept]
    assert len(m.polygons) == 80 and len(expected) < 75
    assert m.merged().source.tolist() == sorted(expected)  # no box here touches an inner window edge


def test_box_geometry_and_its_users_import_no_model_stack():
    """Geometry, DOTA evaluation and the DOTA splitter need torch and NumPy only (no timm/torchvision)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import vitp_geo.geometry.obb, vitp_geo.evaluation.detection_map, vitp_geo.tiling.dota_split\n"
        "print(sorted(m for m in ('timm', 'torchvision', 'lightning', 'torchgeo', 'vitp_geo.models')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
