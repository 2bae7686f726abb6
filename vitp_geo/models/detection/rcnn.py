"""Two-stage detectors on the ViT feature pyramid: Faster, Mask and Cascade R-CNN (horizontal), Rotated Faster and Oriented R-CNN.

``DetectionModel`` = ``neck`` (the backbone's pyramid: ``SimpleFeaturePyramid`` or
``ViTAdapter``, four maps at strides 4–32) → ``fpn`` (torchvision ``FeaturePyramidNetwork``
to a common width plus a stride-64 max-pool level) → torchvision ``RegionProposalNetwork``
(horizontal anchors) → second stage:

* ``hbb``: torchvision ``RoIHeads`` with ``MultiScaleRoIAlign`` (Faster R-CNN), or with
  ``roi_head="cascade"`` the three-stage ``CascadeRoIHeads`` (Cascade R-CNN), or with
  ``roi_head="mask"`` torchvision's ``RoIHeads`` with the mask branch of ``mask_head``
  (Mask R-CNN: instance masks besides the boxes);
* ``obb``: ``OrientedRoIHeads`` (rotated RoI align, oriented box coder, rotated IoU
  assignment, class-wise rotated NMS), trained from the horizontal RPN proposals (Rotated
  Faster R-CNN), or with ``rpn="oriented"`` from the oriented proposals of Oriented R-CNN's
  midpoint-offset RPN (``oriented_rpn``; RPN NMS 0.8 on the proposals' envelopes).

Images are used as given (torchgeo's no-op transform: no resizing; inputs already normalised);
they are zero-padded to a multiple of 32. Labels in and out are 0-based object classes
(the background class torchvision wants is added inside).

Training: ``model(images, targets)`` with targets per image ``boxes`` (N, 4) ``x1, y1, x2, y2``
and ``labels`` (N,), plus ``obb`` (N, 5) ``cx, cy, w, h, angle`` (radians) for ``obb`` and
``masks`` (N, H, W) uint8 for Mask R-CNN — returns the loss dict. Inference: ``model(images)`` →
per image ``boxes`` ((N, 4) or (N, 5)), ``scores``, ``labels``, and for Mask R-CNN ``masks``
(N, H, W) bool on the image's own (unpadded) grid.
"""

from __future__ import annotations

from collections import OrderedDict
from enum import StrEnum

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from vitp_geo.models.detection.cascade import CascadeRoIHeads
from vitp_geo.models.detection.mask_head import mask_branch, paste_masks
from vitp_geo.models.detection.oriented_heads import OrientedRoIHeads
from vitp_geo.models.detection.oriented_rpn import OrientedRegionProposalNetwork

LEVELS = ("0", "1", "2", "3")  # FPN maps at strides 4, 8, 16, 32; "pool" is stride 64
STRIDES = (4, 8, 16, 32)
RPNS = ("horizontal", "oriented")  # torchvision's RPN, or Oriented R-CNN's midpoint-offset RPN (obb)
ROI_HEADS = ("standard", "cascade", "mask")  # hbb second stage: Faster, Cascade or Mask R-CNN's


class BoxType(StrEnum):
    """Horizontal (``x1, y1, x2, y2``) or oriented (``cx, cy, w, h, angle``) boxes."""

    HBB = "hbb"
    OBB = "obb"


class DetectionModel(nn.Module):
    """Neck → FPN → RPN → RoI heads (module doc).

    Args:
        neck: module mapping (B, C, H, W) to four maps at strides 4, 8, 16, 32 with
            ``out_channels`` attribute (the ViT lives at ``neck.backbone``).
        num_classes: object classes K (no background).
        box_type: ``hbb`` or ``obb``.
        fpn_channels: FPN width.
        anchor_sizes: one anchor size (pixels) per level (5 levels, strides 4–64).
        aspect_ratios: anchor aspect ratios.
        rpn_pre_nms_top_n, rpn_post_nms_top_n: proposals kept per image before / after RPN NMS
            (train, test).
        rpn_batch_size_per_image: anchors sampled per image for the RPN loss.
        box_batch_size_per_image: RoIs sampled per image for the second stage.
        representation: width of the box head's FC layers.
        score_thresh: minimum score of a detection.
        nms_thresh: final NMS IoU (0.5 horizontal as torchvision, 0.1 rotated as the paper).
        detections_per_img: most detections per image.
        assign_iou: obb only: match RoIs by rotated IoU (``obb``) or envelope IoU (``hbb``);
            see ``OrientedRoIHeads``.
        roi_head: hbb only: ``standard`` (Faster R-CNN's one box head), ``cascade`` (Cascade
            R-CNN's three, ``models.detection.cascade``) or ``mask`` (Faster R-CNN's head plus
            Mask R-CNN's mask branch, ``models.detection.mask_head``).
        rpn: ``horizontal`` (torchvision's RPN) or, obb only, ``oriented`` (Oriented R-CNN).
        rpn_nms_thresh: RPN NMS IoU (None: 0.7 horizontal as torchvision, 0.8 oriented as the
            paper).
        reg_class_agnostic: obb only: one set of box deltas for all classes, with smooth-L1 β = 1
            (mmrotate's Oriented R-CNN head, the reference's setting), instead of per-class deltas
            with β = 1/9.
    """

    def __init__(
        self,
        neck: nn.Module,
        num_classes: int,
        box_type: BoxType | str = BoxType.HBB,
        fpn_channels: int = 256,
        anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
        aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
        rpn_pre_nms_top_n: tuple[int, int] = (2000, 1000),
        rpn_post_nms_top_n: tuple[int, int] = (2000, 1000),
        rpn_batch_size_per_image: int = 256,
        box_batch_size_per_image: int = 512,
        representation: int = 1024,
        score_thresh: float = 0.05,
        nms_thresh: float | None = None,
        detections_per_img: int = 100,
        assign_iou: str = "obb",
        roi_head: str = "standard",
        rpn: str = "horizontal",
        rpn_nms_thresh: float | None = None,
        reg_class_agnostic: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if len(anchor_sizes) != len(LEVELS) + 1:
            raise ValueError(f"anchor_sizes needs one size per level (5), got {list(anchor_sizes)}")
        self.box_type = BoxType(box_type)
        if roi_head not in ROI_HEADS:
            raise ValueError(f"roi_head must be one of {', '.join(ROI_HEADS)}, got {roi_head!r}")
        if roi_head != "standard" and self.box_type != BoxType.HBB:
            raise ValueError(f"roi_head {roi_head!r} is for horizontal boxes (box_type hbb)")
        self.roi_head = roi_head
        if rpn not in RPNS:
            raise ValueError(f"rpn must be one of {', '.join(RPNS)}, got {rpn!r}")
        if rpn == "oriented" and self.box_type != BoxType.OBB:
            raise ValueError("rpn 'oriented' (Oriented R-CNN) is for oriented boxes (box_type obb)")
        self.rpn_kind = rpn
        if reg_class_agnostic and self.box_type != BoxType.OBB:
            raise ValueError("reg_class_agnostic is an option of the oriented head (box_type obb)")
        self.num_classes = num_classes
        self.neck = neck
        in_widths = [int(c) for c in neck.out_channels]  # type: ignore[union-attr]
        self.fpn = FeaturePyramidNetwork(in_widths, fpn_channels, extra_blocks=LastLevelMaxPool())
        # torchgeo's no-op transform (images arrive normalised); imported here: torchgeo.trainers
        # pulls in Lightning, which inference of the other model kinds does not need.
        from torchgeo.trainers.utils import GeneralizedRCNNTransformNoOp

        self.transform = GeneralizedRCNNTransformNoOp()
        anchors = AnchorGenerator(
            sizes=tuple((s,) for s in anchor_sizes), aspect_ratios=(tuple(aspect_ratios),) * len(anchor_sizes)
        )
        self.rpn: RegionProposalNetwork | OrientedRegionProposalNetwork
        if rpn == "oriented":
            self.rpn = OrientedRegionProposalNetwork(
                anchors,
                fpn_channels,
                batch_size_per_image=rpn_batch_size_per_image,
                pre_nms_top_n=dict(training=rpn_pre_nms_top_n[0], testing=rpn_pre_nms_top_n[1]),
                post_nms_top_n=dict(training=rpn_post_nms_top_n[0], testing=rpn_post_nms_top_n[1]),
                nms_thresh=0.8 if rpn_nms_thresh is None else rpn_nms_thresh,
            )
        else:
            self.rpn = RegionProposalNetwork(
                anchors,
                RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
                fg_iou_thresh=0.7,
                bg_iou_thresh=0.3,
                batch_size_per_image=rpn_batch_size_per_image,
                positive_fraction=0.5,
                pre_nms_top_n=dict(training=rpn_pre_nms_top_n[0], testing=rpn_pre_nms_top_n[1]),
                post_nms_top_n=dict(training=rpn_post_nms_top_n[0], testing=rpn_post_nms_top_n[1]),
                nms_thresh=0.7 if rpn_nms_thresh is None else rpn_nms_thresh,
            )
        self.roi_heads: RoIHeads | OrientedRoIHeads | CascadeRoIHeads
        if roi_head == "cascade":
            self.roi_heads = CascadeRoIHeads(
                fpn_channels,
                list(LEVELS),
                num_classes,
                representation=representation,
                batch_size_per_image=box_batch_size_per_image,
                score_thresh=score_thresh,
                nms_thresh=0.5 if nms_thresh is None else nms_thresh,
                detections_per_img=detections_per_img,
            )
        elif self.box_type == BoxType.HBB:
            pool = MultiScaleRoIAlign(featmap_names=list(LEVELS), output_size=7, sampling_ratio=2)
            self.roi_heads = RoIHeads(
                pool,
                TwoMLPHead(fpn_channels * 7 * 7, representation),
                FastRCNNPredictor(representation, num_classes + 1),
                fg_iou_thresh=0.5,
                bg_iou_thresh=0.5,
                batch_size_per_image=box_batch_size_per_image,
                positive_fraction=0.25,
                bbox_reg_weights=None,
                score_thresh=score_thresh,
                nms_thresh=0.5 if nms_thresh is None else nms_thresh,
                detections_per_img=detections_per_img,
                **(mask_branch(fpn_channels, LEVELS, num_classes) if roi_head == "mask" else {}),
            )
        else:
            self.roi_heads = OrientedRoIHeads(
                fpn_channels,
                STRIDES,
                num_classes,
                representation=representation,
                batch_size_per_image=box_batch_size_per_image,
                score_thresh=score_thresh,
                nms_thresh=0.1 if nms_thresh is None else nms_thresh,
                detections_per_img=detections_per_img,
                assign_iou=assign_iou,
                class_agnostic=reg_class_agnostic,
                reg_beta=1.0 if reg_class_agnostic else 1 / 9,
            )

    @property
    def backbone(self) -> nn.Module:
        """The ViT inside the neck."""
        return self.neck.backbone  # type: ignore[return-value]

    def features(self, images: Tensor) -> OrderedDict[str, Tensor]:
        """FPN maps ``"0"``–``"3"`` (strides 4–32) and ``"pool"`` (64) of (B, C, H, W) images."""
        return self.fpn(OrderedDict(zip(LEVELS, self.neck(images), strict=True)))

    def forward(
        self, images: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (training mode, with targets) or detections (module doc).

        Args:
            images: (B, C, H, W) normalised images.
            targets: per image ``boxes`` (N, 4), ``labels`` (N,) 0-based, ``obb`` (N, 5) for obb.
        """
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        shifted = None
        if targets is not None:
            shifted = []
            for t in targets:
                s = {"boxes": t["boxes"].float(), "labels": t["labels"].long() + 1}
                if self.box_type == BoxType.OBB:
                    if "obb" not in t:
                        raise ValueError("oriented detection needs 'obb' (N, 5) targets")
                    s["obb"] = t["obb"].float()
                if self.roi_head == "mask":
                    if "masks" not in t:
                        raise ValueError("Mask R-CNN needs 'masks' (N, H, W) targets")
                    s["masks"] = t["masks"]
                shifted.append(s)
        image_list, shifted = self.transform(list(images), shifted)
        feats = self.features(image_list.tensors)
        proposals, rpn_losses = self.rpn(image_list, feats, shifted if self.training else None)
        if self.box_type == BoxType.HBB:
            dets, roi_losses = self.roi_heads(
                feats, proposals, image_list.image_sizes, shifted if self.training else None
            )
        else:
            level_feats = [feats[k] for k in LEVELS]
            dets, roi_losses = self.roi_heads(level_feats, proposals, shifted if self.training else None)
        if self.training:
            return {**rpn_losses, **roi_losses}
        out = [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - 1} for d in dets]
        if self.roi_head == "mask":
            for o, d, size in zip(out, dets, image_list.image_sizes, strict=True):
                o["masks"] = paste_masks(d["masks"], d["boxes"], (int(size[0]), int(size[1])))
        return out


def targets_from_batch(batch: dict[str, object], box_type: BoxType | str) -> list[dict[str, Tensor]]:
    """Per-image model targets from a collated detection batch (lists of per-image tensors).

    ``bbox_xyxy`` / ``label`` lists (and ``bbox_xyxyxyxy`` for obb, converted to ``cx, cy, w, h,
    angle`` by ``obb.poly_to_obb``); a batch's per-image ``mask`` (N, H, W) instance masks become
    ``masks``.
    """
    from vitp_geo.geometry.obb import poly_to_obb

    boxes = batch["bbox_xyxy"]
    labels = batch["label"]
    if not isinstance(boxes, list | tuple) or not isinstance(labels, list | tuple):
        raise ValueError("detection batches hold per-image lists under 'bbox_xyxy' and 'label'")
    out: list[dict[str, Tensor]] = []
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        t = {
            "boxes": torch.as_tensor(b).float().reshape(-1, 4),
            "labels": torch.as_tensor(lab).long().reshape(-1),
        }
        if BoxType(box_type) == BoxType.OBB:
            polys = batch.get("bbox_xyxyxyxy") if isinstance(batch, dict) else None
            if not isinstance(polys, list | tuple):
                raise ValueError("oriented detection batches need per-image 'bbox_xyxyxyxy' (N, 8)")
            t["obb"] = poly_to_obb(torch.as_tensor(polys[i]).float().reshape(-1, 8))
        masks = batch.get("mask") if isinstance(batch, dict) else None
        if isinstance(masks, list | tuple):
            t["masks"] = torch.as_tensor(masks[i]).to(torch.uint8)
        out.append(t)
    return out
