"""The oriented second stage of Rotated Faster R-CNN and Oriented R-CNN → oriented boxes.

Proposals from the horizontal RPN (Rotated Faster R-CNN) become oriented RoIs at angle 0;
proposals from the oriented RPN (Oriented R-CNN, ``oriented_rpn``) are oriented RoIs already.
Training RoIs are matched to
the oriented ground truth by rotated IoU (``obb.rotated_iou``), sampled (torchvision's
balanced sampler), pooled with rotated RoI align and regressed with the oriented box coder.
At inference the class-specific deltas are decoded, low scores and tiny boxes dropped, and
class-wise rotated NMS (``obb.batched_rotated_nms``; 0.1 as in the paper) keeps the final boxes.

Labels inside this module count background as 0 (torchvision's rule); the detector wrapper
shifts user labels by one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import box_iou

from vitp_geo.geometry.obb import batched_rotated_nms, normalize_obb, obb_to_hbb, rotated_iou
from vitp_geo.models.detection.coder import OrientedBoxCoder
from vitp_geo.models.detection.roi_align_rotated import MultiScaleRotatedRoIAlign


def hbb_rois(boxes: Tensor) -> Tensor:
    """(N, 4) ``x1, y1, x2, y2`` → (N, 5) oriented RoIs at angle 0."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-3)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-3)
    return torch.stack([cx, cy, w, h, torch.zeros_like(cx)], dim=1)


class OrientedBoxHead(nn.Module):
    """Two shared FC layers, then class scores (K + 1) and deltas: class-specific (5 K) or, with
    ``class_agnostic``, one set for every class (5; mmrotate's ``reg_class_agnostic=True``)."""

    def __init__(
        self, in_channels: int, pool: int, representation: int, num_classes: int, class_agnostic: bool = False
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        self.fc6 = nn.Linear(in_channels * pool * pool, representation)
        self.fc7 = nn.Linear(representation, representation)
        self.cls_score = nn.Linear(representation, num_classes + 1)
        self.bbox_pred = nn.Linear(representation, 5 if class_agnostic else 5 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(R, C, p, p) pooled features → logits (R, K + 1), deltas (R, K, 5) (class-agnostic
        deltas repeated for every class)."""
        x = F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))
        deltas = self.bbox_pred(x).reshape(x.shape[0], -1, 5)
        if self.class_agnostic:
            deltas = deltas.expand(-1, self.num_classes, 5)
        return self.cls_score(x), deltas


class OrientedRoIHeads(nn.Module):
    """Second stage for oriented boxes (module doc).

    Args:
        in_channels: FPN width.
        strides: strides of the pyramid levels RoIs are pooled from (finest first).
        num_classes: object classes K (background excluded).
        pool_size, sampling_ratio: rotated RoI align settings.
        representation: width of the two FC layers.
        fg_iou, bg_iou: rotated-IoU thresholds for positive / negative RoIs.
        batch_size_per_image, positive_fraction: RoI sampling.
        score_thresh, nms_thresh, detections_per_img: inference filtering.
        min_size: boxes with a side below this (pixels) are dropped at inference.
        class_agnostic: one set of box deltas for all classes (mmrotate's Oriented R-CNN) instead
            of one per class.
        reg_beta: smooth-L1 β of the box loss (1/9 torchvision's; 1.0 mmrotate's Oriented R-CNN).
        assign_iou: ``obb``: RoIs are matched to ground truth by rotated IoU with the oriented
            boxes (mmrotate's Rotated Faster R-CNN); ``hbb``: by IoU with their horizontal
            envelopes (the horizontal RoI of a 45° square overlaps the square itself by only
            0.5, so ``obb`` leaves diagonal objects with few positive RoIs).
    """

    def __init__(
        self,
        in_channels: int,
        strides: tuple[int, ...],
        num_classes: int,
        pool_size: int = 7,
        sampling_ratio: int = 2,
        representation: int = 256,
        fg_iou: float = 0.5,
        bg_iou: float = 0.5,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.1,
        detections_per_img: int = 100,
        min_size: float = 1e-2,
        assign_iou: str = "obb",
        class_agnostic: bool = False,
        reg_beta: float = 1 / 9,
    ) -> None:
        super().__init__()
        self.pooler = MultiScaleRotatedRoIAlign(strides, pool_size, sampling_ratio)
        self.head = OrientedBoxHead(in_channels, pool_size, representation, num_classes, class_agnostic)
        self.reg_beta = reg_beta
        self.coder = OrientedBoxCoder()
        self.matcher = det_utils.Matcher(fg_iou, bg_iou, allow_low_quality_matches=False)
        self.sampler = det_utils.BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.num_classes = num_classes
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.min_size = min_size
        if assign_iou not in ("obb", "hbb"):
            raise ValueError(f"assign_iou must be 'obb' or 'hbb', got {assign_iou!r}")
        self.assign_iou = assign_iou

    # ------------------------------------------------------------------ training targets
    def _sample(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Sampled oriented RoIs per image, their labels (0 = background) and regression targets."""
        rois_out, labels_out, deltas_out = [], [], []
        for props, t in zip(proposals, targets, strict=True):
            gt, gt_labels = t["obb"], t["labels"]
            # the ground truth joins the proposals in their form (torchvision's rule), so training
            # RoIs look like the inference ones: oriented boxes for oriented proposals, else their
            # horizontal envelopes
            if props.shape[-1] == 5:
                rois = torch.cat([props, gt.to(props.dtype)])
            else:
                rois = hbb_rois(torch.cat([props, obb_to_hbb(gt)]) if gt.numel() else props)
            if gt.shape[0] == 0:
                labels = torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
                matched = torch.zeros_like(rois)
            else:
                if self.assign_iou == "obb":
                    iou = rotated_iou(gt, rois)  # (G, R)
                else:
                    iou = box_iou(obb_to_hbb(gt), obb_to_hbb(rois))
                idx = self.matcher(iou)
                labels = gt_labels[idx.clamp(min=0)].to(torch.int64)
                labels[idx == self.matcher.BELOW_LOW_THRESHOLD] = 0
                labels[idx == self.matcher.BETWEEN_THRESHOLDS] = -1
                matched = gt[idx.clamp(min=0)]
            pos, neg = self.sampler([labels])
            keep = torch.nonzero(pos[0] | neg[0]).squeeze(1)
            rois_out.append(rois[keep])
            labels_out.append(labels[keep])
            deltas_out.append(self.coder.encode(matched[keep], rois[keep]))
        return rois_out, torch.cat(labels_out), torch.cat(deltas_out)

    @staticmethod
    def _with_batch_index(rois: list[Tensor]) -> Tensor:
        idx = [torch.full((r.shape[0], 1), i, dtype=r.dtype, device=r.device) for i, r in enumerate(rois)]
        return torch.cat([torch.cat(idx), torch.cat(rois)], dim=1)  # (R, 6)

    def loss(self, logits: Tensor, deltas: Tensor, labels: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Cross-entropy over K + 1 classes; smooth-L1 on the true class's deltas of positive RoIs."""
        cls_loss = F.cross_entropy(logits, labels)
        pos = torch.nonzero(labels > 0).squeeze(1)
        pred = deltas[pos, labels[pos] - 1]  # (P, 5)
        reg = F.smooth_l1_loss(pred, targets[pos], beta=self.reg_beta, reduction="sum") / max(
            labels.numel(), 1
        )
        return {"loss_classifier": cls_loss, "loss_box_reg": reg}

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        features: list[Tensor],
        proposals: list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Losses (training, ``targets`` with ``obb`` (N, 5) and ``labels`` (N,), 1-based) or detections.

        Args:
            features: pyramid maps at ``strides``.
            proposals: per image (P, 4) horizontal or (P, 5) oriented proposals.
            targets: training targets.

        Returns:
            (detections, losses): per image ``boxes`` (N, 5), ``scores`` (N,), ``labels`` (N,)
            (1-based) at inference; the loss dict in training.
        """
        if self.training:
            if targets is None:
                raise ValueError("OrientedRoIHeads needs targets in training mode")
            rois, labels, reg_targets = self._sample(proposals, targets)
            logits, deltas = self.head(self.pooler(features, self._with_batch_index(rois)))
            return [], self.loss(logits, deltas, labels, reg_targets)
        rois = [p if p.shape[-1] == 5 else hbb_rois(p) for p in proposals]
        logits, deltas = self.head(self.pooler(features, self._with_batch_index(rois)))
        return self.postprocess(logits, deltas, rois), {}

    def postprocess(self, logits: Tensor, deltas: Tensor, rois: list[Tensor]) -> list[dict[str, Tensor]]:
        """Decode, threshold, class-wise rotated NMS, top ``detections_per_img`` per image."""
        k = self.num_classes
        scores_all = F.softmax(logits, -1)[:, 1:]  # (R, K)
        boxes_all = normalize_obb(self.coder.decode(deltas, torch.cat(rois)).reshape(-1, 5)).reshape(-1, k, 5)
        out = []
        for boxes, scores in zip(
            boxes_all.split([r.shape[0] for r in rois]),
            scores_all.split([r.shape[0] for r in rois]),
            strict=True,
        ):
            labels = torch.arange(1, k + 1, device=scores.device).expand_as(scores)
            boxes, scores, labels = boxes.reshape(-1, 5), scores.reshape(-1), labels.reshape(-1)
            keep = (
                (scores > self.score_thresh) & (boxes[:, 2] >= self.min_size) & (boxes[:, 3] >= self.min_size)
            )
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            kept = batched_rotated_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            out.append({"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]})
        return out
