"""Oriented box coder and rotated RoI align (pure tensor ops)."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import roi_align

from vitp_geo.geometry.obb import normalize_obb, obb_to_poly
from vitp_geo.models.detection.coder import OrientedBoxCoder
from vitp_geo.models.detection.roi_align_rotated import (
    MultiScaleRotatedRoIAlign,
    fpn_levels,
    roi_align_rotated,
)


def _random_obb(n: int, gen: torch.Generator) -> torch.Tensor:
    cxy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 200
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 60 + 2
    a = (torch.rand(n, 1, generator=gen, dtype=torch.float64) - 0.5) * 4 * math.pi  # any angle
    return torch.cat([cxy, wh, a], dim=1)


def _same_rectangles(a: torch.Tensor, b: torch.Tensor) -> None:
    """Same corner sets (order-free) → same rectangles."""
    pa = obb_to_poly(normalize_obb(a)).reshape(-1, 4, 2)
    pb = obb_to_poly(normalize_obb(b)).reshape(-1, 4, 2)
    d = torch.cdist(pa, pb)  # (N, 4, 4)
    assert d.min(dim=2).values.max() < 1e-6


def test_encode_decode_identity_any_angle() -> None:
    gen = torch.Generator().manual_seed(0)
    coder = OrientedBoxCoder()
    g, p = _random_obb(500, gen), _random_obb(500, gen)
    deltas = coder.encode(g, p)
    _same_rectangles(coder.decode(deltas, p), g)
    # the angle target is the nearest description of the rectangle: |dangle| <= 1/4 turn-unit
    assert deltas[:, 4].abs().max() <= coder.weights[4] / 4 + 1e-9


def test_encode_of_roi_itself_is_zero_and_half_turns_are_free() -> None:
    gen = torch.Generator().manual_seed(1)
    coder = OrientedBoxCoder()
    p = _random_obb(50, gen)
    assert coder.encode(p, p).abs().max() < 1e-9
    flipped = p.clone()
    flipped[:, 4] += math.pi  # the same rectangle
    assert coder.encode(flipped, p).abs().max() < 1e-9
    quarter = p.clone()
    quarter[:, 2], quarter[:, 3], quarter[:, 4] = p[:, 3], p[:, 2], p[:, 4] + math.pi / 2
    assert coder.encode(quarter, p).abs().max() < 1e-9  # w/h swap + quarter turn: also itself


def test_decode_class_specific_shape() -> None:
    coder = OrientedBoxCoder()
    p = torch.tensor([[10.0, 20.0, 8.0, 4.0, 0.3]])
    d = torch.zeros(1, 3, 5)
    d[0, 1, 0] = 10.0  # class 1: one RoI width along the RoI's own w axis
    out = coder.decode(d, p)
    assert out.shape == (1, 3, 5)
    assert torch.allclose(out[0, 0], p[0])
    assert torch.allclose(out[0, 1, :2], torch.tensor([10 + 8 * math.cos(0.3), 20 + 8 * math.sin(0.3)]))


@pytest.mark.parametrize("aligned", [True, False])
def test_angle_zero_equals_torchvision_roi_align(aligned: bool) -> None:
    gen = torch.Generator().manual_seed(2)
    feat = torch.randn(2, 3, 20, 24, generator=gen, dtype=torch.float64)
    b = torch.rand(40, 4, generator=gen, dtype=torch.float64) * torch.tensor([30.0, 25, 30, 25]) - 2
    x1, x2 = torch.minimum(b[:, 0], b[:, 2]), torch.maximum(b[:, 0], b[:, 2])
    y1, y2 = torch.minimum(b[:, 1], b[:, 3]), torch.maximum(b[:, 1], b[:, 3])
    bi = torch.randint(0, 2, (40,), generator=gen).double()
    ref = roi_align(feat, torch.stack([bi, x1, y1, x2, y2], 1), 5, 0.8, 2, aligned)
    rois = torch.stack([bi, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, torch.zeros(40).double()], 1)
    out = roi_align_rotated(feat, rois, 5, 0.8, 2, aligned, rotated_kernel=True)  # the tensor-op path
    torch.testing.assert_close(out, ref)


def test_rotated_bins_follow_the_box_convention() -> None:
    """On a linear feature map bilinear sampling is exact: every bin holds f(its centre)."""
    h = w = 64
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    feat = torch.stack([xs, ys])[None]  # channel 0 = x, channel 1 = y of the feature pixel
    box = torch.tensor([30.0, 28.0, 24.0, 10.0, 0.6], dtype=torch.float64)
    out = roi_align_rotated(feat, torch.cat([torch.zeros(1, dtype=torch.float64), box])[None], (2, 4), 1.0, 3)
    cx, cy, bw, bh, a = box.tolist()
    for i in range(2):
        for j in range(4):
            u, v = (j + 0.5) / 4 * bw - bw / 2, (i + 0.5) / 2 * bh - bh / 2
            x = cx + u * math.cos(a) - v * math.sin(a) - 0.5  # aligned: pixel centres at +0.5
            y = cy + u * math.sin(a) + v * math.cos(a) - 0.5
            assert out[0, 0, i, j].item() == pytest.approx(x, abs=1e-9)
            assert out[0, 1, i, j].item() == pytest.approx(y, abs=1e-9)
    # bin (0, 0) is nearest corner 0 of obb_to_poly, bin (0, 3) nearest corner 1
    corners = obb_to_poly(box[None]).reshape(4, 2) - 0.5
    first, last = out[0, :, 0, 0], out[0, :, 0, 3]
    assert torch.cdist(first[None], corners).argmin().item() == 0
    assert torch.cdist(last[None], corners).argmin().item() == 1


def test_gradcheck() -> None:
    gen = torch.Generator().manual_seed(3)
    feat = torch.randn(1, 2, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 3.1, 2.7, 3.3, 2.2, 0.4], [0, 4.2, 3.3, 2.5, 3.1, -1.1]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda f: roi_align_rotated(f, rois, 2, 1.0, 2, rotated_kernel=True), (feat,)
    )
    # and with respect to the box geometry (away from pixel boundaries the op is smooth)
    rois_g = rois.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r: roi_align_rotated(feat.detach(), r, 2, 1.0, 2), (rois_g,))


def test_multiscale_levels_and_empty() -> None:
    pooler = MultiScaleRotatedRoIAlign((4, 8, 16, 32), output_size=3)
    wh = torch.tensor([[10.0, 10.0], [112.0, 112.0], [224.0, 224.0], [2000.0, 900.0]])
    assert fpn_levels(wh, 2, 5).tolist() == [0, 1, 2, 3]  # floor(4 + log2(s / 224)), clamped
    feats = [torch.randn(2, 4, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    rois = torch.tensor([[1, 20.0, 20, 8, 8, 0.2], [0, 30.0, 30, 230, 230, 0.0]])
    out = pooler(feats, rois)
    assert out.shape == (2, 4, 3, 3)
    torch.testing.assert_close(out[0], roi_align_rotated(feats[0], rois[:1], 3, 1 / 4, 2)[0])
    torch.testing.assert_close(out[1], roi_align_rotated(feats[2], rois[1:], 3, 1 / 16, 2)[0])
    assert pooler(feats, torch.zeros(0, 6)).shape == (0, 4, 3, 3)
