"""Faster R-CNN (hbb) and Rotated Faster R-CNN (obb) on the ViT pyramid: training and inference contracts."""

from __future__ import annotations

import pytest
import torch

from vitp_geo.geometry.obb import obb_to_hbb
from vitp_geo.models.detection.rcnn import BoxType, DetectionModel
from vitp_geo.tasks.backbone import build_backbone
from vitp_geo.tasks.models import build_neck


def _model(
    box_type: str,
    num_classes: int = 2,
    roi_head: str = "standard",
    rpn: str = "horizontal",
    reg_class_agnostic: bool = False,
) -> DetectionModel:
    torch.manual_seed(0)
    vit = build_backbone("vitp_tiny_patch14_112", img_size=112)
    return DetectionModel(
        build_neck(vit, "sfp", None),
        num_classes,
        box_type,
        fpn_channels=32,
        anchor_sizes=(16, 32, 64, 128, 256),
        representation=64,
        rpn_pre_nms_top_n=(300, 200),
        rpn_post_nms_top_n=(150, 100),
        box_batch_size_per_image=64,
        roi_head=roi_head,
        rpn=rpn,
        reg_class_agnostic=reg_class_agnostic,
    )


def _targets() -> list[dict[str, torch.Tensor]]:
    obb = torch.tensor([[30.0, 40, 24, 12, 0.3], [70, 70, 30, 14, -0.7]])
    empty = {"boxes": torch.zeros(0, 4), "obb": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long)}
    return [{"boxes": obb_to_hbb(obb), "obb": obb, "labels": torch.tensor([0, 1])}, empty]


@pytest.mark.parametrize("box_type", ["hbb", "obb"])
def test_losses_with_an_empty_image_reach_the_backbone(box_type: str) -> None:
    model = _model(box_type).train()
    x = torch.randn(2, 3, 112, 112)
    losses = model(x, _targets())
    assert isinstance(losses, dict)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"] > 0  # positives from the image with objects
    sum(losses.values()).backward()
    grad = model.backbone.blocks[0].attn.qkv.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_only_empty_images_train() -> None:
    model = _model("obb").train()
    t = _targets()[1]
    losses = model(torch.randn(1, 3, 112, 112), [t])
    assert isinstance(losses, dict)
    assert losses["loss_box_reg"] == 0 and losses["loss_classifier"] > 0


@pytest.mark.parametrize(("box_type", "width"), [("hbb", 4), ("obb", 5)])
def test_inference_outputs(box_type: str, width: int) -> None:
    model = _model(box_type, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 100, 90))  # not a multiple of 32: padded inside
    assert isinstance(out, list) and len(out) == 2
    for d in out:
        assert d["boxes"].shape[1] == width
        assert d["scores"].shape == d["labels"].shape == (d["boxes"].shape[0],)
        assert ((d["labels"] >= 0) & (d["labels"] < 3)).all()  # 0-based object classes
        assert (d["scores"] > 0.05).all()
    if box_type == "obb":  # normalised le90 boxes
        b = torch.cat([d["boxes"] for d in out])
        assert (
            (b[:, 2] >= b[:, 3]).all() and (b[:, 4] >= -torch.pi / 2).all() and (b[:, 4] < torch.pi / 2).all()
        )


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="box_type|'rbox'"):
        BoxType("rbox")
    model = _model("obb").train()
    with pytest.raises(ValueError, match="obb"):
        model(
            torch.randn(1, 3, 112, 112),
            [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}],
        )
    with pytest.raises(ValueError, match="targets"):
        model(torch.randn(1, 3, 112, 112))


def test_assignment_by_rotated_iou_or_by_envelopes() -> None:
    """A 2:1 box at 45° overlaps its own horizontal envelope by 4/9 < 0.5: rotated-IoU matching
    leaves it without positive RoIs, envelope matching does not."""
    from vitp_geo.geometry.obb import normalize_obb, obb_to_poly
    from vitp_geo.models.detection.oriented_heads import OrientedRoIHeads, hbb_rois

    gt = torch.tensor([[50.0, 50, 40, 20, torch.pi / 4]])
    proposals = [obb_to_hbb(gt)]
    targets = [{"obb": gt, "labels": torch.tensor([1])}]
    positives = {}
    for mode in ("obb", "hbb"):
        heads = OrientedRoIHeads(16, (4, 8, 16, 32), 1, assign_iou=mode)
        _, labels, deltas = heads._sample(proposals, targets)
        positives[mode] = int((labels > 0).sum())
        if positives[mode]:  # the regression target turns the envelope into the box
            envelope = hbb_rois(proposals[0])
            decoded = heads.coder.decode(deltas[labels > 0][:1], envelope)
            torch.testing.assert_close(
                obb_to_poly(normalize_obb(decoded)), obb_to_poly(gt), atol=1e-3, rtol=0
            )
    assert positives == {"obb": 0, "hbb": 2}  # the proposal and the added ground-truth envelope
