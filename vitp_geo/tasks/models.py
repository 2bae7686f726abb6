"""Whole dense models: backbone → neck (pyramid) → head, plain and siamese.

``arch`` — the JSON-able dict stored in the checkpoint's ``ModelCard.arch`` — says how to
rebuild a model without the original backbone file::

    {"kind": "segmentation" | "change" | "detection",
     "backbone": {"arch": ..., "model_kwargs": {...}},  # models.vit.describe_vit (backbone.json's schema)
     "neck": "sfp" | "adapter" | "deformable_adapter", "out_indices": [i0, i1, i2, i3],
     "neck_options": {...},                             # optional: DeformableViTAdapter arguments
     "head": "upernet" | "unet", "head_channels": 128,
     "num_classes": K, "in_channels": C,
     "fusion": "diff" | "concat",                       # change only
     "box_type": "hbb" | "obb", "fpn_channels": 256,    # detection only (no head / head_channels;
     "anchor_sizes": [...], "detector": {...},          #   see models.detection.rcnn.DetectionModel)
     "fpn": "fpn" | "simple_fpn"}                       # detection only, optional (default fpn)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from vitp_geo.models.adapter import ViTAdapter
from vitp_geo.models.deformable_adapter import DeformableViTAdapter
from vitp_geo.models.detection.rcnn import DetectionModel
from vitp_geo.models.heads import build_head
from vitp_geo.models.pyramid import SimpleFeaturePyramid
from vitp_geo.models.simple_fpn import SimpleFPN
from vitp_geo.tasks.backbone import describe_backbone, rebuild_backbone

NECKS = ("sfp", "adapter", "deformable_adapter")
# The pyramid between the neck and a detector's RPN: torchvision's FPN (lateral + top-down) or the
# reference detectors' LayerNorm SimpleFPN (models.simple_fpn).
FPNS = ("fpn", "simple_fpn")


def build_neck(
    vit: VisionTransformer,
    neck: str,
    out_indices: list[int] | None,
    options: dict[str, Any] | None = None,
) -> SimpleFeaturePyramid | ViTAdapter | DeformableViTAdapter:
    """``sfp`` (simple feature pyramid, default), ``adapter`` (ViT-Adapter with global
    cross-attention) or ``deformable_adapter`` (ViT-Adapter with multi-scale deformable attention,
    the paper's; ``options`` are its keyword arguments, e.g. the reference layout's
    ``{"norm": "layer", "attn_norm_eps": 1e-5}``)."""
    if options and neck != "deformable_adapter":
        raise ValueError(f"neck_options are for the deformable_adapter neck, got neck {neck!r}")
    if neck == "sfp":
        return SimpleFeaturePyramid(vit, out_indices)
    if neck == "adapter":
        return ViTAdapter(vit)
    if neck == "deformable_adapter":
        return DeformableViTAdapter(vit, **dict(options or {}))
    raise ValueError(f"neck must be one of {', '.join(NECKS)}, got {neck!r}")


class SegmentationModel(nn.Module):
    """(B, C, H, W) normalised images → (B, K, H, W) class logits."""

    def __init__(self, neck: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.neck = neck
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.neck(x))  # (B, K, H/4, W/4)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class SiameseChangeModel(nn.Module):
    """Before/after stacked on channels (B, 2C, H, W) → (B, K, H, W) change logits (K = 2).

    One shared neck (backbone + pyramid) sees both dates; per level the features are fused by
    absolute difference ``|f_after − f_before|`` (``diff``) or concatenation (``concat``),
    then one head decodes them.
    """

    def __init__(self, neck: nn.Module, head: nn.Module, fusion: str, in_channels: int) -> None:
        super().__init__()
        if fusion not in ("diff", "concat"):
            raise ValueError(f"fusion must be 'diff' or 'concat', got {fusion!r}")
        self.neck = neck
        self.head = head
        self.fusion = fusion
        self.in_channels = in_channels

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 5:  # (B, 2, C, H, W) as torchgeo change datasets give it
            x = x.flatten(1, 2)
        b, c2, h, w = x.shape
        if c2 != 2 * self.in_channels:
            raise ValueError(f"expected {2 * self.in_channels} channels (before + after), got {c2}")
        pair = torch.cat([x[:, : self.in_channels], x[:, self.in_channels :]], dim=0)  # (2B, C, H, W)
        feats = self.neck(pair)
        if self.fusion == "diff":
            fused = [(f[b:] - f[:b]).abs() for f in feats]
        else:
            fused = [torch.cat([f[:b], f[b:]], dim=1) for f in feats]
        logits = self.head(fused)
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)


DenseModel = SegmentationModel | SiameseChangeModel | DetectionModel


def assemble(vit: VisionTransformer, arch: dict[str, Any]) -> DenseModel:
    """Wrap a backbone into the model ``arch`` describes (the backbone entry of ``arch`` is not used)."""
    kind = arch.get("kind")
    neck = build_neck(vit, str(arch.get("neck", "sfp")), arch.get("out_indices"), arch.get("neck_options"))
    if kind == "detection":
        fpn = str(arch.get("fpn", "fpn"))
        if fpn not in FPNS:
            raise ValueError(f"fpn must be one of {', '.join(FPNS)}, got {fpn!r}")
        detector = DetectionModel(
            neck,
            int(arch["num_classes"]),
            str(arch.get("box_type", "hbb")),
            fpn_channels=int(arch.get("fpn_channels", 256)),
            anchor_sizes=tuple(int(a) for a in arch.get("anchor_sizes", (32, 64, 128, 256, 512))),
            **dict(arch.get("detector") or {}),
        )
        if fpn == "simple_fpn":  # the same interface as torchvision's FPN (OrderedDict in and out)
            widths = [int(c) for c in neck.out_channels]
            detector.fpn = SimpleFPN(widths, int(arch.get("fpn_channels", 256)))  # type: ignore[assignment]
        return detector
    widths = list(neck.out_channels)
    if kind == "change" and arch.get("fusion", "diff") == "concat":
        widths = [2 * w for w in widths]
    head = build_head(
        str(arch.get("head", "upernet")),
        widths,
        int(arch["num_classes"]),
        int(arch.get("head_channels", 128)),
    )
    if kind == "segmentation":
        return SegmentationModel(neck, head)
    if kind == "change":
        return SiameseChangeModel(neck, head, str(arch.get("fusion", "diff")), int(arch["in_channels"]))
    raise ValueError(f"arch kind must be 'segmentation', 'change' or 'detection', got {kind!r}")


def arch_for(vit: VisionTransformer, model: DenseModel, **fields: Any) -> dict[str, Any]:
    """The ``arch`` dict of a model built by :func:`assemble` (``fields``: kind, neck, head, ...)."""
    arch: dict[str, Any] = dict(fields)
    arch["backbone"] = describe_backbone(vit)
    if isinstance(model.neck, SimpleFeaturePyramid):
        arch["out_indices"] = list(model.neck.out_indices)
    return arch


def rebuild_model(arch: dict[str, Any]) -> DenseModel:
    """An untrained model with the layout of ``arch`` (load the checkpoint's weights into it)."""
    if "backbone" not in arch:
        raise ValueError(f"arch has no 'backbone' entry: {sorted(arch)}")
    return assemble(rebuild_backbone(arch["backbone"]), arch)
