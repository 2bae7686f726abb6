"""Oriented R-CNN: the midpoint-offset coder, oriented proposals, and a detector that learns them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vitp_geo.geometry.obb import normalize_obb, obb_to_hbb, obb_to_poly, rotated_iou
from vitp_geo.models.detection.oriented_rpn import MidpointOffsetCoder

from .test_detectors import _model


def _same_rectangles(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal as rectangles: same centre, same sides, same orientation modulo the le90 ambiguity."""
    torch.testing.assert_close(rotated_iou(a, b).diagonal(), torch.ones(len(a)), atol=1e-3, rtol=0)


def test_coder_round_trip_over_angles_and_shapes() -> None:
    g = torch.Generator().manual_seed(0)
    n = 200
    boxes = torch.stack(
        [
            torch.rand(n, generator=g) * 200,
            torch.rand(n, generator=g) * 200,
            4 + torch.rand(n, generator=g) * 80,
            4 + torch.rand(n, generator=g) * 40,
            (torch.rand(n, generator=g) - 0.5) * math.pi,
        ],
        dim=1,
    )
    # exact ties: axis-aligned boxes (two top-most vertices) and 45° squares
    boxes = torch.cat([boxes, torch.tensor([[50.0, 50, 40, 20, 0.0], [50, 50, 30, 30, math.pi / 4]])])
    boxes = normalize_obb(boxes)
    env = obb_to_hbb(boxes)
    size = (env[:, 2:] - env[:, :2]).repeat(1, 2)
    anchors = env + (torch.rand(len(boxes), 4, generator=g) - 0.5) * 0.4 * size  # near each box
    coder = MidpointOffsetCoder()
    deltas = coder.encode(boxes, anchors)
    _same_rectangles(coder.decode(deltas, anchors), boxes)


def test_axis_aligned_box_encodes_offsets_of_one_half() -> None:
    box = torch.tensor([[50.0, 50.0, 40.0, 20.0, 0.0]])
    anchor = torch.tensor([[30.0, 40.0, 70.0, 60.0]])  # its own envelope
    deltas = MidpointOffsetCoder().encode(box, anchor) / torch.tensor([1.0, 1, 1, 1, 2, 2])
    torch.testing.assert_close(deltas, torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.5, 0.5]]))


def test_midpoint_offsets_give_the_tilted_vertices() -> None:
    box = torch.tensor([[60.0, 40.0, 40.0, 12.0, 0.5]])
    coder = MidpointOffsetCoder()
    anchor = obb_to_hbb(box)
    poly = coder.decode_polygons(coder.encode(box, anchor), anchor)[0]
    corners = obb_to_poly(box).reshape(4, 2)
    # every vertex of the parallelogram is a corner of the box
    assert torch.cdist(poly, corners).min(dim=1).values.max() < 1e-3


def _tilted_scene() -> tuple[torch.Tensor, torch.Tensor]:
    gt = torch.tensor([[35.0, 40, 40, 12, 0.5], [75, 75, 44, 14, -0.6]])
    img = Image.new("L", (112, 112), 0)
    draw = ImageDraw.Draw(img)
    for p in obb_to_poly(gt):
        draw.polygon([(float(p[i]), float(p[i + 1])) for i in range(0, 8, 2)], fill=255)
    x = torch.tensor(np.array(img), dtype=torch.float32)[None].expand(3, -1, -1)[None] / 127.5 - 1
    return x, gt


@pytest.mark.slow
def test_oriented_rcnn_learns_oriented_proposals_a_horizontal_rpn_cannot_give() -> None:
    """Overfit one image with two tilted bars: the RPN's best proposals must be the bars themselves.

    A horizontal proposal of a 40 × 12 bar tilted 0.5 rad overlaps it by IoU 0.40 at best, so
    rotated IoU > 0.8 is reachable only with oriented proposals.
    """
    x, gt = _tilted_scene()
    envelope_iou = rotated_iou(gt, torch.cat([_hbb_as_obb(obb_to_hbb(gt))])).diagonal()
    assert (envelope_iou < 0.5).all()
    model = _model("obb", num_classes=1, rpn="oriented")
    targets = [{"boxes": obb_to_hbb(gt), "obb": gt, "labels": torch.tensor([0, 0])}]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    model.train()
    for _ in range(100):
        losses = model(x, targets)
        assert isinstance(losses, dict)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        images, _ = model.transform(list(x), None)
        proposals, _ = model.rpn(images, model.features(images.tensors))
        dets = model(x)
    assert proposals[0].shape[1] == 5
    best = rotated_iou(gt, proposals[0][:10]).max(dim=1).values  # among the 10 best-scored
    assert (best > 0.8).all(), best
    assert isinstance(dets, list)
    assert (rotated_iou(gt, dets[0]["boxes"][:2]).max(dim=1).values > 0.8).all()


def _hbb_as_obb(hbb: torch.Tensor) -> torch.Tensor:
    cx, cy = (hbb[:, 0] + hbb[:, 2]) / 2, (hbb[:, 1] + hbb[:, 3]) / 2
    return torch.stack([cx, cy, hbb[:, 2] - hbb[:, 0], hbb[:, 3] - hbb[:, 1], torch.zeros_like(cx)], 1)


def test_oriented_rpn_trains_with_an_empty_image_and_is_refused_for_hbb() -> None:
    model = _model("obb", rpn="oriented").train()
    obb = torch.tensor([[30.0, 40, 24, 12, 0.3]])
    empty = {"boxes": torch.zeros(0, 4), "obb": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long)}
    losses = model(
        torch.randn(2, 3, 112, 112),
        [{"boxes": obb_to_hbb(obb), "obb": obb, "labels": torch.tensor([1])}, empty],
    )
    assert isinstance(losses, dict)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert losses["loss_rpn_box_reg"] > 0 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.rpn.head.bbox_pred.weight.grad.abs().sum() > 0  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="rpn 'oriented' \\(Oriented R-CNN\\) is for oriented boxes"):
        _model("hbb", rpn="oriented")


def test_class_agnostic_oriented_head_shares_one_set_of_deltas() -> None:
    model = _model("obb", num_classes=3, rpn="oriented")
    agnostic = _model("obb", num_classes=3, rpn="oriented", reg_class_agnostic=True)
    assert model.roi_heads.head.bbox_pred.out_features == 15  # type: ignore[union-attr]
    assert agnostic.roi_heads.head.bbox_pred.out_features == 5  # type: ignore[union-attr]
    assert agnostic.roi_heads.reg_beta == 1.0  # type: ignore[union-attr]
    feats = torch.randn(4, 32, 7, 7)
    _, deltas = agnostic.roi_heads.head(feats)  # type: ignore[union-attr,operator]
    assert deltas.shape == (4, 3, 5)
    torch.testing.assert_close(deltas[:, 0], deltas[:, 2])  # the same deltas for every class
    obb = torch.tensor([[30.0, 40, 24, 12, 0.3]])
    losses = agnostic.train()(
        torch.randn(1, 3, 112, 112), [{"boxes": obb_to_hbb(obb), "obb": obb, "labels": torch.tensor([2])}]
    )
    assert isinstance(losses, dict) and torch.isfinite(losses["loss_box_reg"])
    with pytest.raises(ValueError, match="reg_class_agnostic is an option of the oriented head"):
        _model("hbb", num_classes=3, reg_class_agnostic=True)
