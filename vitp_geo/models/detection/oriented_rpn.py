"""Oriented R-CNN's oriented region proposal network (Xie et al., ICCV 2021).

Anchors stay horizontal (torchvision's ``AnchorGenerator``), but each one regresses six numbers
that describe an oriented proposal by its **midpoint offsets**: the horizontal envelope of the
object (``dx, dy, dw, dh`` as in Faster R-CNN) plus ``dα, dβ``, where the top-most vertex of the
object lies ``Δα = dα · w`` right of the envelope's top-edge midpoint and the right-most vertex
``Δβ = dβ · h`` below its right-edge midpoint. The four vertices
``(x + Δα, y − h/2), (x + w/2, y + Δβ), (x − Δα, y + h/2), (x − w/2, y − Δβ)`` form a
parallelogram; its two adjacent edges give the oriented proposal (``cx, cy, w, h, angle``).

Training follows the paper and mmrotate's ``oriented_rpn`` settings: anchors matched to the
ground truth's horizontal envelopes (IoU ≥ 0.7 positive, < 0.3 negative, each ground truth's best
anchor positive), 256 anchors per image at half positives, binary cross-entropy on objectness and
smooth-L1 (β = 1/9) on the six deltas of positive anchors, target standard deviations
(1, 1, 1, 1, 0.5, 0.5). Proposals: the top ``pre_nms_top_n`` per level, NMS at 0.8 on their
horizontal envelopes per level, then the best ``post_nms_top_n`` per image.

The second stage (``OrientedRoIHeads``) pools these oriented proposals with rotated RoI align.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou
from torchvision.ops import boxes as box_ops

from vitp_geo.geometry.obb import normalize_obb, obb_to_hbb, obb_to_poly
from vitp_geo.models.detection.coder import DEFAULT_CLAMP

# Vertices closer than this (pixels) to the smallest y count as top-most (float noise only).
VERTEX_TIE = 1e-3


class MidpointOffsetCoder:
    """Encode oriented boxes against horizontal anchors as ``(dx, dy, dw, dh, dα, dβ)`` (module doc).

    Args:
        weights: divisors of the six deltas (``1 / std``; the paper's stds (1, 1, 1, 1, 0.5, 0.5)).
        clamp: upper bound on decoded ``dw`` / ``dh`` before ``exp``.
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float, float, float] = (1.0, 1.0, 1.0, 1.0, 2.0, 2.0),
        clamp: float = DEFAULT_CLAMP,
    ) -> None:
        if len(weights) != 6 or any(w <= 0 for w in weights):
            raise ValueError(f"weights must be six numbers > 0, got {weights}")
        self.weights = weights
        self.clamp = clamp

    def encode(self, targets: Tensor, anchors: Tensor) -> Tensor:
        """(N, 5) oriented targets against (N, 4) ``x1, y1, x2, y2`` anchors → (N, 6) weighted deltas.

        The right vertex is the one after the top vertex in the rectangle's clockwise order (so
        the two are always adjacent); a tie for the top (an axis-aligned box has two top-most
        vertices) takes the right-most of them, so an axis-aligned box encodes as
        ``dα = dβ = 0.5`` and decodes to itself.
        """
        poly = obb_to_poly(targets).reshape(-1, 4, 2)  # corners in clockwise order on screen
        xs, ys = poly[..., 0], poly[..., 1]
        hbb = obb_to_hbb(targets)
        gx, gy = (hbb[:, 0] + hbb[:, 2]) / 2, (hbb[:, 1] + hbb[:, 3]) / 2
        gw = (hbb[:, 2] - hbb[:, 0]).clamp(min=1e-6)
        gh = (hbb[:, 3] - hbb[:, 1]).clamp(min=1e-6)
        top = (ys - ys.min(dim=1, keepdim=True).values).abs() <= VERTEX_TIE
        i_top = torch.where(top, xs, torch.full_like(xs, -math.inf)).argmax(dim=1)
        rows = torch.arange(len(poly), device=poly.device)
        x_top = xs[rows, i_top]
        y_right = ys[rows, (i_top + 1) % 4]
        ax, ay = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
        aw = (anchors[:, 2] - anchors[:, 0]).clamp(min=1e-6)
        ah = (anchors[:, 3] - anchors[:, 1]).clamp(min=1e-6)
        d = torch.stack(
            [
                (gx - ax) / aw,
                (gy - ay) / ah,
                torch.log(gw / aw),
                torch.log(gh / ah),
                (x_top - gx) / gw,
                (y_right - gy) / gh,
            ],
            dim=1,
        )
        return d * d.new_tensor(self.weights)

    def decode_polygons(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """(N, 6) weighted deltas on (N, 4) anchors → (N, 4, 2) parallelogram vertices."""
        d = deltas / deltas.new_tensor(self.weights)
        ax, ay = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
        aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        x, y = ax + d[:, 0] * aw, ay + d[:, 1] * ah
        w = aw * torch.exp(d[:, 2].clamp(max=self.clamp))
        h = ah * torch.exp(d[:, 3].clamp(max=self.clamp))
        da, db = d[:, 4].clamp(-0.5, 0.5) * w, d[:, 5].clamp(-0.5, 0.5) * h
        xs = torch.stack([x + da, x + w / 2, x - da, x - w / 2], dim=1)
        ys = torch.stack([y - h / 2, y + db, y + h / 2, y - db], dim=1)
        return torch.stack([xs, ys], dim=-1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """(N, 6) weighted deltas on (N, 4) anchors → (N, 5) oriented boxes in ``le90``.

        The parallelogram becomes the rectangle with its centre, its two adjacent edge lengths and
        the direction of its first edge (exact when the deltas describe a rectangle).
        """
        p = self.decode_polygons(deltas, anchors)
        e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 1]
        centre = p.mean(dim=1)
        w = torch.linalg.vector_norm(e1, dim=1)
        h = torch.linalg.vector_norm(e2, dim=1)
        angle = torch.atan2(e1[:, 1], e1[:, 0])
        return normalize_obb(torch.stack([centre[:, 0], centre[:, 1], w, h, angle], dim=1))


class OrientedRPNHead(nn.Module):
    """3×3 conv + ReLU shared over levels, then objectness (A) and six deltas per anchor (6 A)."""

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 6, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)  # type: ignore[arg-type]  # Conv2d(bias=True) has one

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for f in feats:
            h = F.relu(self.conv(f))
            logits.append(self.cls_logits(h))
            deltas.append(self.bbox_pred(h))
        return logits, deltas


def _flatten(x: Tensor, width: int) -> Tensor:
    """(B, A·width, H, W) → (B, H·W·A, width), anchors in torchvision's order (position, then anchor)."""
    b, _, h, w = x.shape
    return x.view(b, -1, width, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, width)


class OrientedRegionProposalNetwork(nn.Module):
    """Oriented RPN (module doc): horizontal anchors in, oriented proposals (N, 5) out.

    Args:
        anchor_generator: torchvision's, one size per level.
        in_channels: FPN width.
        fg_iou_thresh, bg_iou_thresh: anchor ↔ ground-truth envelope IoU for positives / negatives.
        batch_size_per_image, positive_fraction: anchors sampled for the loss.
        pre_nms_top_n, post_nms_top_n: ``{"training": n, "testing": n}`` proposals kept per level
            before NMS / per image after.
        nms_thresh: IoU of the proposals' horizontal envelopes for NMS (per level).
        min_size: proposals with a side below this (pixels) are dropped.
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        in_channels: int,
        *,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n: dict[str, int] | None = None,
        post_nms_top_n: dict[str, int] | None = None,
        nms_thresh: float = 0.8,
        min_size: float = 1e-3,
    ) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = OrientedRPNHead(in_channels, anchor_generator.num_anchors_per_location()[0])
        self.coder = MidpointOffsetCoder()
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self._pre_nms_top_n = pre_nms_top_n or {"training": 2000, "testing": 2000}
        self._post_nms_top_n = post_nms_top_n or {"training": 2000, "testing": 2000}
        self.nms_thresh = nms_thresh
        self.min_size = min_size

    def _mode(self) -> str:
        return "training" if self.training else "testing"

    def _targets(self, anchors: list[Tensor], targets: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        """Per anchor: label (1 positive, 0 negative, −1 ignored) and six regression targets."""
        labels, deltas = [], []
        for a, t in zip(anchors, targets, strict=True):
            gt = t["obb"]
            if gt.numel() == 0:
                labels.append(torch.zeros(len(a), device=a.device))
                deltas.append(torch.zeros(len(a), 6, device=a.device))
                continue
            idx = self.matcher(box_iou(obb_to_hbb(gt), a))
            lab = (idx >= 0).to(torch.float32)
            lab[idx == Matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(lab)
            deltas.append(self.coder.encode(gt[idx.clamp(min=0)], a))
        return torch.stack(labels), torch.stack(deltas)

    def loss(
        self, objectness: Tensor, pred: Tensor, labels: Tensor, reg_targets: Tensor
    ) -> tuple[Tensor, Tensor]:
        """BCE on the sampled anchors' objectness; smooth-L1 (β = 1/9) on positives, both over the sample."""
        pos, neg = self.sampler(list(labels))
        pos_idx = torch.where(torch.cat(pos))[0]
        sampled = torch.where(torch.cat(pos) | torch.cat(neg))[0]
        obj = objectness.reshape(-1)
        loss_obj = F.binary_cross_entropy_with_logits(obj[sampled], labels.reshape(-1)[sampled])
        loss_box = F.smooth_l1_loss(
            pred.reshape(-1, 6)[pos_idx], reg_targets.reshape(-1, 6)[pos_idx], beta=1 / 9, reduction="sum"
        ) / max(sampled.numel(), 1)
        return loss_obj, loss_box

    def filter_proposals(
        self,
        anchors: list[Tensor],
        objectness: Tensor,
        pred: Tensor,
        level_sizes: list[int],
        image_sizes: list[tuple[int, int]],
    ) -> list[Tensor]:
        """Top-k per level, decode, drop tiny ones, NMS per level on the envelopes, top-k per image."""
        out = []
        pre_n, post_n = self._pre_nms_top_n[self._mode()], self._post_nms_top_n[self._mode()]
        for a, obj, d, size in zip(anchors, objectness.detach(), pred.detach(), image_sizes, strict=True):
            keep_idx, levels = [], []
            start = 0
            for lvl, n in enumerate(level_sizes):
                k = min(pre_n, n)
                top = obj[start : start + n].topk(k).indices + start
                keep_idx.append(top)
                levels.append(torch.full((k,), lvl, device=obj.device))
                start += n
            idx = torch.cat(keep_idx)
            lvl_ids = torch.cat(levels)
            boxes = self.coder.decode(d[idx], a[idx])
            scores = torch.sigmoid(obj[idx])
            hbb = obb_to_hbb(boxes)
            h, w = size
            hbb = box_ops.clip_boxes_to_image(hbb, (h, w))
            ok = (
                (boxes[:, 2] >= self.min_size)
                & (boxes[:, 3] >= self.min_size)
                & (hbb[:, 2] > hbb[:, 0])
                & (hbb[:, 3] > hbb[:, 1])
            )
            boxes, scores, hbb, lvl_ids = boxes[ok], scores[ok], hbb[ok], lvl_ids[ok]
            keep = box_ops.batched_nms(hbb, scores, lvl_ids, self.nms_thresh)[:post_n]
            out.append(boxes[keep])
        return out

    def forward(
        self, images: ImageList, features: dict[str, Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Oriented proposals per image (P, 5) and, in training, ``loss_objectness`` / ``loss_rpn_box_reg``."""
        feats = list(features.values())
        logits, deltas = self.head(feats)
        anchors = self.anchor_generator(images, feats)
        level_sizes = [int(x.shape[1] * x.shape[2] * x.shape[3]) for x in logits]
        objectness = torch.cat([_flatten(x, 1) for x in logits], dim=1).squeeze(-1)  # (B, N)
        pred = torch.cat([_flatten(x, 6) for x in deltas], dim=1)  # (B, N, 6)
        proposals = self.filter_proposals(anchors, objectness, pred, level_sizes, images.image_sizes)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            labels, reg_targets = self._targets(anchors, targets)
            loss_obj, loss_box = self.loss(objectness, pred, labels, reg_targets)
            losses = {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_box}
        return proposals, losses
