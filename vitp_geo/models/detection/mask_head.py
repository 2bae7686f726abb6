"""Mask R-CNN's mask branch on the FPN, from torchvision parts, and its post-processing.

The reference's SSDD model (mmdet ``FCNMaskHead``): RoIAlign to 14 × 14 on the four FPN levels
(strides 4–32), four 3 × 3 convolutions of 256 channels, a 2 × 2 transposed convolution to
28 × 28 and one mask logit map per class; binary cross-entropy on the matched class's map against
the ground-truth mask cropped to the RoI (``mask_size=28``); at test time the map of the
predicted class, pasted into its box and thresholded at 0.5 (``mask_thr_binary``).

torchvision's ``RoIHeads`` runs this when given ``mask_roi_pool`` / ``mask_head`` /
``mask_predictor`` (``maskrcnn_loss`` for training, ``maskrcnn_inference`` for the class map);
``paste_masks`` puts the 28 × 28 probabilities back into the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import MultiScaleRoIAlign

MASK_THRESHOLD = 0.5  # mmdet's mask_thr_binary in the reference's test config


def mask_branch(
    in_channels: int, levels: Sequence[str], num_classes: int, width: int = 256
) -> dict[str, nn.Module]:
    """The keyword arguments of torchvision's ``RoIHeads`` that turn it into Mask R-CNN's.

    Args:
        in_channels: FPN width.
        levels: the FPN maps RoIs are pooled from (strides 4–32).
        num_classes: object classes K (the predictor has K + 1 maps, background first).
        width: channels of the four convolutions and the transposed convolution.
    """
    return dict(
        mask_roi_pool=MultiScaleRoIAlign(featmap_names=list(levels), output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(in_channels, [width] * 4, 1),
        mask_predictor=MaskRCNNPredictor(width, width, num_classes + 1),
    )


def paste_masks(
    probs: Tensor, boxes: Tensor, size: tuple[int, int], threshold: float = MASK_THRESHOLD
) -> Tensor:
    """Binary image masks (N, H, W) bool from per-box mask probabilities (N, 1, M, M).

    Args:
        probs: the predicted class's mask probabilities, one M × M map per box.
        boxes: (N, 4) ``x1, y1, x2, y2`` in pixels of the image.
        size: the image's (H, W).
        threshold: a pixel is in the mask when its probability is at least this.
    """
    h, w = size
    if probs.shape[0] == 0:
        return torch.zeros((0, h, w), dtype=torch.bool, device=probs.device)
    return paste_masks_in_image(probs, boxes, (h, w))[:, 0] >= threshold
