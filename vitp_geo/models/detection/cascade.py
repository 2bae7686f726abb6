"""Cascade R-CNN's second stage (Cai & Vasconcelos, CVPR 2018) for horizontal boxes.

Three box heads in sequence, each trained on the boxes the previous one regressed, with a
stricter IoU for a positive at each stage (0.5, 0.6, 0.7), tighter box-coder standard deviations
((0.1, 0.1, 0.2, 0.2), then halved, then a third), and stage loss weights (1, 0.5, 0.25): the
settings of the paper and of the reference's DIOR / SARDet-100K detectors. Each stage is a
two-FC head (torchvision's ``TwoMLPHead``) with a (K + 1)-way classifier and a class-agnostic
box regressor. At test time the proposals go through the three stages; a detection's class
scores are the mean of the three stages' softmax scores and its box is the last stage's.

Built from torchvision parts (``MultiScaleRoIAlign``, ``Matcher``,
``BalancedPositiveNegativeSampler``, ``BoxCoder``, ``batched_nms``); the call and the outputs are
those of torchvision's ``RoIHeads`` so ``DetectionModel`` swaps one for the other.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign, box_iou
from torchvision.ops import boxes as box_ops

# Cai & Vasconcelos (and mmdetection's cascade_rcnn_r50_fpn): per-stage IoU for a positive,
# regression-target standard deviations, and loss weights.
STAGE_IOUS: tuple[float, ...] = (0.5, 0.6, 0.7)
STAGE_STDS: tuple[tuple[float, float, float, float], ...] = (
    (0.1, 0.1, 0.2, 0.2),
    (0.05, 0.05, 0.1, 0.1),
    (0.033, 0.033, 0.067, 0.067),
)
STAGE_WEIGHTS: tuple[float, ...] = (1.0, 0.5, 0.25)


class CascadeStage(nn.Module):
    """RoI features → two FC layers → class logits (K + 1) and class-agnostic box deltas (4)."""

    def __init__(self, in_features: int, representation: int, num_classes_bg: int) -> None:
        super().__init__()
        self.box_head = TwoMLPHead(in_features, representation)
        self.cls_score = nn.Linear(representation, num_classes_bg)
        self.bbox_pred = nn.Linear(representation, 4)
        # mmdetection's initialisation of the two predictors (normal, std 0.01 and 0.001).
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.box_head(x)
        return self.cls_score(h), self.bbox_pred(h)


class CascadeRoIHeads(nn.Module):
    """Three-stage cascade of box heads (module doc); a drop-in for torchvision's ``RoIHeads``.

    Args:
        fpn_channels: width of the FPN maps.
        featmap_names: the FPN maps RoIs are pooled from.
        num_classes: object classes K (labels 1..K inside, 0 is background).
        representation: width of each stage's FC layers.
        batch_size_per_image: RoIs sampled per image at each stage.
        positive_fraction: share of positives among them.
        score_thresh: lowest score kept.
        nms_thresh: class-wise NMS IoU.
        detections_per_img: most detections per image.
        stage_ious, stage_stds, stage_weights: per-stage settings (defaults: the paper's).
    """

    def __init__(
        self,
        fpn_channels: int,
        featmap_names: list[str],
        num_classes: int,
        *,
        representation: int = 1024,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        stage_ious: tuple[float, ...] = STAGE_IOUS,
        stage_stds: tuple[tuple[float, float, float, float], ...] = STAGE_STDS,
        stage_weights: tuple[float, ...] = STAGE_WEIGHTS,
    ) -> None:
        super().__init__()
        if not len(stage_ious) == len(stage_stds) == len(stage_weights) >= 1:
            raise ValueError(
                f"one IoU, std and weight per stage: got {len(stage_ious)}, {len(stage_stds)}, {len(stage_weights)}"
            )
        for iou in stage_ious:
            if not 0.0 < iou < 1.0:
                raise ValueError(f"stage IoU thresholds must be in (0, 1), got {list(stage_ious)}")
        self.num_classes = num_classes
        self.pool = MultiScaleRoIAlign(featmap_names=featmap_names, output_size=7, sampling_ratio=2)
        self.stages = nn.ModuleList(
            CascadeStage(fpn_channels * 7 * 7, representation, num_classes + 1) for _ in stage_ious
        )
        self.coders = [BoxCoder(tuple(1.0 / s for s in std)) for std in stage_stds]
        self.matchers = [Matcher(iou, iou, allow_low_quality_matches=False) for iou in stage_ious]
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.stage_ious = tuple(stage_ious)
        self.stage_weights = tuple(stage_weights)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    # ------------------------------------------------------------------ training
    def assign(
        self, stage: int, proposals: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], Tensor, Tensor, list[Tensor]]:
        """Add the ground truth to each image's proposals, match at the stage's IoU and sample.

        Returns:
            ``(rois, labels, box_targets, is_gt)``: sampled RoIs per image, their labels (0 =
            background) and encoded regression targets (concatenated over images), and which
            sampled RoIs are ground-truth boxes (not passed on to the next stage).
        """
        rois_out: list[Tensor] = []
        labels_out: list[Tensor] = []
        targets_out: list[Tensor] = []
        is_gt_out: list[Tensor] = []
        for props, tgt in zip(proposals, targets, strict=True):
            gt = tgt["boxes"].to(props.dtype)
            cand = torch.cat([props, gt])
            is_gt = torch.cat(
                [props.new_zeros(len(props), dtype=torch.bool), gt.new_ones(len(gt), dtype=torch.bool)]
            )
            if len(gt) == 0:
                matched = torch.zeros(len(cand), dtype=torch.long, device=cand.device)
                labels = torch.zeros(len(cand), dtype=torch.long, device=cand.device)
                gt_for = torch.zeros_like(cand)
            else:
                matched = self.matchers[stage](box_iou(gt, cand))
                labels = tgt["labels"][matched.clamp(min=0)].long()
                labels[matched < 0] = 0
                gt_for = gt[matched.clamp(min=0)]
            pos, neg = self.sampler([labels])
            keep = torch.where(pos[0] | neg[0])[0]
            rois_out.append(cand[keep])
            labels_out.append(labels[keep])
            targets_out.append(self.coders[stage].encode_single(gt_for[keep], cand[keep]))
            is_gt_out.append(is_gt[keep])
        return rois_out, torch.cat(labels_out), torch.cat(targets_out), is_gt_out

    @staticmethod
    def stage_loss(
        logits: Tensor, deltas: Tensor, labels: Tensor, box_targets: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Cross-entropy over K + 1 classes and smooth-L1 (β = 1) on the positives' deltas, both
        averaged over the sampled RoIs (mmdetection's ``avg_factor``)."""
        loss_cls = F.cross_entropy(logits, labels)
        pos = labels > 0
        loss_box = F.smooth_l1_loss(deltas[pos], box_targets[pos], beta=1.0, reduction="sum") / max(
            labels.numel(), 1
        )
        return loss_cls, loss_box

    # ------------------------------------------------------------------ both
    def _run_stage(
        self, stage: int, features: dict[str, Tensor], rois: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        pooled = self.pool(features, rois, image_shapes)
        return self.stages[stage](pooled.flatten(start_dim=1))

    def _refine(
        self, stage: int, deltas: Tensor, rois: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[Tensor]:
        """Decode a stage's deltas on its RoIs and clip to each image (no gradient flows through)."""
        counts = [len(r) for r in rois]
        boxes = self.coders[stage].decode_single(deltas.detach(), torch.cat(rois))
        return [
            box_ops.clip_boxes_to_image(b, shape)
            for b, shape in zip(boxes.split(counts), image_shapes, strict=True)
        ]

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Losses (training, with targets whose labels are 1..K) or detections (eval).

        Returns ``(detections, losses)`` as torchvision's ``RoIHeads``: in training the loss dict
        holds ``loss_classifier`` and ``loss_box_reg``, each the stage-weighted sum over stages.
        """
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            total_cls = total_box = None
            rois = [p.detach() for p in proposals]
            for s in range(len(self.stages)):
                sampled, labels, box_targets, is_gt = self.assign(s, rois, targets)
                logits, deltas = self._run_stage(s, features, sampled, image_shapes)
                loss_cls, loss_box = self.stage_loss(logits, deltas, labels, box_targets)
                w = self.stage_weights[s]
                total_cls = w * loss_cls if total_cls is None else total_cls + w * loss_cls
                total_box = w * loss_box if total_box is None else total_box + w * loss_box
                if s + 1 < len(self.stages):
                    refined = self._refine(s, deltas, sampled, image_shapes)
                    rois = [r[~g] for r, g in zip(refined, is_gt, strict=True)]
            assert total_cls is not None and total_box is not None
            return [], {"loss_classifier": total_cls, "loss_box_reg": total_box}
        return self.detect(features, proposals, image_shapes), {}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def detect(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Run the proposals through every stage; mean of the stages' scores, last stage's boxes."""
        rois = proposals
        score_sum: Tensor | None = None
        boxes: list[Tensor] = []
        for s in range(len(self.stages)):
            logits, deltas = self._run_stage(s, features, rois, image_shapes)
            probs = F.softmax(logits, dim=-1)
            score_sum = probs if score_sum is None else score_sum + probs
            rois = boxes = self._refine(s, deltas, rois, image_shapes)
        assert score_sum is not None
        scores = (score_sum / len(self.stages)).split([len(b) for b in boxes])
        return [self._postprocess(b, sc) for b, sc in zip(boxes, scores, strict=True)]

    def _postprocess(self, boxes: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """Class-wise: score threshold, tiny boxes out, NMS, the best ``detections_per_img``."""
        k = scores.shape[1] - 1
        labels = torch.arange(1, k + 1, device=scores.device).expand(len(boxes), k).reshape(-1)
        flat_boxes = boxes[:, None, :].expand(len(boxes), k, 4).reshape(-1, 4)
        flat_scores = scores[:, 1:].reshape(-1)
        keep = torch.where(flat_scores > self.score_thresh)[0]
        flat_boxes, flat_scores, labels = flat_boxes[keep], flat_scores[keep], labels[keep]
        keep = box_ops.remove_small_boxes(flat_boxes, min_size=1e-2)
        flat_boxes, flat_scores, labels = flat_boxes[keep], flat_scores[keep], labels[keep]
        keep = box_ops.batched_nms(flat_boxes, flat_scores, labels, self.nms_thresh)[
            : self.detections_per_img
        ]
        return {"boxes": flat_boxes[keep], "scores": flat_scores[keep], "labels": labels[keep]}
