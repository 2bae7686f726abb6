"""Mask R-CNN (``roi_head="mask"``): the mask branch trains from (N, H, W) targets and pastes
binary masks back into each image's own grid."""

from __future__ import annotations

import pytest
import torch

from vitp_geo.models.detection.mask_head import paste_masks
from vitp_geo.models.detection.rcnn import targets_from_batch

from .test_detectors import _model


def test_pasted_masks_cover_their_box_as_hand_computed() -> None:
    """A box (10, 20)–(30, 40): an all-ones 28 × 28 map fills columns 10..29 of rows 20..39; its
    left half alone fills columns 10..19; the 0.5 threshold decides."""
    box = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    full = paste_masks(torch.ones(1, 1, 28, 28), box, (60, 50))
    want = torch.zeros(1, 60, 50, dtype=torch.bool)
    want[0, 20:40, 10:30] = True
    assert full.dtype == torch.bool and torch.equal(full, want)
    half = torch.zeros(1, 1, 28, 28)
    half[..., :14] = 1.0
    want[0, :, 20:30] = False
    assert torch.equal(paste_masks(half, box, (60, 50)), want)
    assert not paste_masks(torch.full((1, 1, 28, 28), 0.49), box, (60, 50)).any()
    assert paste_masks(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (60, 50)).shape == (0, 60, 50)


def _batch() -> dict:
    masks = torch.zeros(2, 112, 100, dtype=torch.uint8)
    masks[0, 34:46, 18:42] = 1
    masks[1, 60:80, 55:85] = 1
    masks[1, 60:70, 55:65] = 0  # not a box: the mask target is the mask, not its box
    return {
        "bbox_xyxy": [torch.tensor([[18.0, 34, 42, 46], [55, 60, 85, 80]]), torch.zeros(0, 4)],
        "label": [torch.tensor([0, 1]), torch.zeros(0, dtype=torch.long)],
        "mask": [masks, torch.zeros(0, 112, 100, dtype=torch.uint8)],
    }


def test_mask_loss_reaches_the_backbone_and_inference_gives_image_masks() -> None:
    model = _model("hbb", roi_head="mask").train()
    assert model.roi_heads.has_mask()
    losses = model(torch.randn(2, 3, 112, 100), targets_from_batch(_batch(), "hbb"))
    assert isinstance(losses, dict) and losses["loss_mask"] > 0
    losses["loss_mask"].backward()
    grad = model.backbone.blocks[0].attn.qkv.weight.grad
    assert grad is not None and grad.abs().sum() > 0  # the mask loss alone trains the backbone
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 112, 100))  # padded to 128 inside: masks on the image's 112 × 100
    assert isinstance(out, list)
    assert out[0]["masks"].shape == (len(out[0]["boxes"]), 112, 100) and out[0]["masks"].dtype == torch.bool


def test_mask_rcnn_needs_mask_targets_and_horizontal_boxes() -> None:
    model = _model("hbb", roi_head="mask").train()
    batch = _batch()
    del batch["mask"]
    with pytest.raises(ValueError, match="Mask R-CNN needs 'masks'"):
        model(torch.randn(2, 3, 112, 100), targets_from_batch(batch, "hbb"))
    with pytest.raises(ValueError, match="roi_head 'mask' is for horizontal boxes"):
        _model("obb", roi_head="mask")
