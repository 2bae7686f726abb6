"""Cascade R-CNN's second stage: per-stage assignment, refinement between stages, score averaging."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from vitp_geo.models.detection.cascade import STAGE_STDS, CascadeRoIHeads
from vitp_geo.models.detection.rcnn import DetectionModel
from vitp_geo.tasks.backbone import build_backbone
from vitp_geo.tasks.models import build_neck

from .test_detectors import _model

GT = torch.tensor([[10.0, 10.0, 50.0, 50.0]])  # 40 × 40


def _heads(**kw: object) -> CascadeRoIHeads:
    torch.manual_seed(0)
    return CascadeRoIHeads(4, ["0"], 2, representation=16, **kw)  # type: ignore[arg-type]


def _proposal_with_iou(iou: float) -> torch.Tensor:
    """A box inside GT, cut from the bottom so that its IoU with GT is ``iou``."""
    return torch.tensor([[10.0, 10.0, 50.0, 10.0 + 40.0 * iou]])


def test_each_stage_takes_positives_at_its_own_iou() -> None:
    heads = _heads()
    ious = (0.55, 0.65, 0.75, 0.2)
    props = torch.cat([_proposal_with_iou(i) for i in ious])
    torch.testing.assert_close(box_iou(GT, props)[0], torch.tensor(ious))
    targets = [{"boxes": GT, "labels": torch.tensor([2])}]
    positives = []
    for stage in range(3):
        rois, labels, box_targets, is_gt = heads.assign(stage, [props], targets)
        assert is_gt[0].sum() == 1  # the ground truth is added as a proposal, labelled positive
        pos_ious = sorted(
            round(float(box_iou(GT, r[None])[0, 0]), 2)
            for r, lab in zip(rois[0], labels, strict=True)
            if lab > 0
        )
        positives.append(pos_ious)
        assert set(labels.tolist()) <= {0, 2}
    assert positives == [[0.55, 0.65, 0.75, 1.0], [0.65, 0.75, 1.0], [0.75, 1.0]]


def test_regression_targets_use_each_stage_std() -> None:
    heads = _heads()
    prop = _proposal_with_iou(0.75)
    targets = [{"boxes": GT, "labels": torch.tensor([1])}]
    dh = []
    for stage in range(3):
        rois, labels, box_targets, is_gt = heads.assign(stage, [prop], targets)
        row = int(torch.where(~is_gt[0])[0][0])
        dh.append(float(box_targets[row, 3]))
    raw = math.log(40.0 / 30.0)  # log of the height ratio GT / proposal
    for stage in range(3):
        assert dh[stage] == pytest.approx(raw / STAGE_STDS[stage][3], rel=1e-4)


def test_inference_refines_through_every_stage_and_averages_the_scores() -> None:
    heads = _heads(score_thresh=0.0).eval()
    shifts = (2.0, -1.0, 3.0)  # pixels each stage moves a 40-px-wide box along x
    cls_bias = ((0.0, 2.0, 0.0), (0.0, 0.0, 2.0), (1.0, 1.0, 1.0))
    with torch.no_grad():
        for s, stage in enumerate(heads.stages):
            stage.cls_score.weight.zero_()
            stage.cls_score.bias.copy_(torch.tensor(cls_bias[s]))
            stage.bbox_pred.weight.zero_()
            # dx = shift / width, scaled by the stage's coder weight 1 / std
            stage.bbox_pred.bias.copy_(torch.tensor([shifts[s] / 40.0 / STAGE_STDS[s][0], 0.0, 0.0, 0.0]))
    feats = {"0": torch.randn(1, 4, 32, 32)}
    out = heads(feats, [GT.clone()], [(128, 128)])[0][0]
    expected_box = GT + torch.tensor([[sum(shifts), 0.0, sum(shifts), 0.0]])
    probs = torch.stack([torch.softmax(torch.tensor(b), 0) for b in cls_bias]).mean(0)
    assert out["boxes"].shape == (2, 4)  # one box per class (class-wise NMS keeps both)
    torch.testing.assert_close(out["boxes"], expected_box.expand(2, 4), atol=1e-3, rtol=0)
    by_label = dict(zip(out["labels"].tolist(), out["scores"].tolist(), strict=True))
    assert by_label[1] == pytest.approx(float(probs[1]), abs=1e-5)
    assert by_label[2] == pytest.approx(float(probs[2]), abs=1e-5)


def test_stage_weights_reach_every_stage_and_zero_weight_stops_one() -> None:
    x = torch.randn(2, 3, 112, 112)
    targets = [
        {"boxes": torch.tensor([[20.0, 30.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},  # background only
    ]
    model = _model("hbb", roi_head="cascade").train()
    losses = model(x, targets)
    assert isinstance(losses, dict)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    sum(losses.values()).backward()
    grads = [s.cls_score.weight.grad for s in model.roi_heads.stages]  # type: ignore[union-attr]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert model.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    # the same model with the third stage weighted 0: no gradient reaches that stage
    model.zero_grad()
    model.roi_heads.stage_weights = (1.0, 0.5, 0.0)  # type: ignore[union-attr]
    sum(model(x, targets).values()).backward()  # type: ignore[union-attr]
    g3 = model.roi_heads.stages[2].cls_score.weight.grad  # type: ignore[union-attr,index]
    assert g3 is None or g3.abs().sum() == 0
    assert model.roi_heads.stages[1].cls_score.weight.grad.abs().sum() > 0  # type: ignore[union-attr,index]


def test_cascade_is_refused_for_oriented_boxes_and_bad_stages() -> None:
    vit = build_backbone("vitp_tiny_patch14_112", img_size=112)
    with pytest.raises(ValueError, match="cascade' is for horizontal boxes"):
        DetectionModel(build_neck(vit, "sfp", None), 2, "obb", roi_head="cascade")
    with pytest.raises(ValueError, match="roi_head must be one of standard, cascade, mask, got 'cascad'"):
        DetectionModel(build_neck(vit, "sfp", None), 2, "hbb", roi_head="cascad")
    with pytest.raises(ValueError, match=r"stage IoU thresholds must be in \(0, 1\)"):
        CascadeRoIHeads(4, ["0"], 2, stage_ious=(0.5, 1.2, 0.7))
