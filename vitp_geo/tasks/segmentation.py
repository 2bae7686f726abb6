"""Semantic segmentation on a ViTP backbone: a torchgeo task (``BaseTask`` subclass).

Batches are torchgeo's: ``{"image": (B, C, H, W) float, "mask": (B, H, W) or (B, 1, H, W) int}``,
so torchgeo datamodules (``LoveDADataModule``, ``PotsdamDataModule``, ...) and ours drive it
unchanged, and LightningCLI configs name it as
``class_path: vitp_geo.tasks.SegmentationTask``.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from vitp_geo.tasks.base import DenseTask, check_class_lists
from vitp_geo.tasks.metrics import scores_from_confusion


class SegmentationTask(DenseTask):
    """UperNet (or UNet-style) segmentation on a ViT pyramid.

    Args:
        backbone: timm ViT name (architecture when no ``backbone_weights`` is given).
        backbone_weights: ``backbone.safetensors`` from ``vitp-geo pretrain`` or a released
            ViTP / InternViT file; None = random init.
        img_size: training tile size (position embeddings resized to it; any size runs).
        in_channels: input channels; extra bands follow ``tasks.backbone``'s documented rule.
        rgb_channels: 0-based positions of R, G, B among the input channels.
        num_classes: output classes K.
        class_names, class_colors: for the model card (infer's legend and QGIS style).
        neck: ``sfp`` (simple feature pyramid), ``adapter`` (ViT-Adapter, global cross-attention) or
            ``deformable_adapter`` (ViT-Adapter with multi-scale deformable attention, the paper's).
        out_indices: four blocks the pyramid taps (default 1/3, 1/2, 2/3, last).
        head: ``upernet`` or ``unet``.
        head_channels: decoder width.
        loss: ``ce``, ``dice``, ``focal`` or ``ce+dice``.
        class_weights: per-class loss weights (ce / focal).
        ignore_index: label value excluded from loss and metrics.
        lr, weight_decay, layer_decay: AdamW settings and layer-wise lr decay.
        warmup_steps, schedule: linear warm-up, then ``poly`` / ``cosine`` / ``constant``.
        drop_path_rate: stochastic depth in the ViT.
        freeze_backbone: train only neck and head.
        freeze_blocks: freeze the patch embedding and the first N blocks.
        bands: 1-based raster bands the model reads, for the card (default 1..C).
        mean, std: per-channel normalisation in 0–255 units for the card (default: the
            datamodule's ``mean`` / ``std``, else torchgeo's 0 / 255).
        render: ``RenderRule`` fields for the card.
    """

    KIND = "segmentation"
    monitor = "val_mIoU"
    mode = "max"

    def __init__(
        self,
        backbone: str = "vitp_tiny_patch14_112",
        backbone_weights: str | None = None,
        img_size: int | None = None,
        in_channels: int = 3,
        rgb_channels: list[int] | None = None,
        num_classes: int = 5,
        class_names: list[str] | None = None,
        class_colors: list[list[int]] | None = None,
        neck: Literal["sfp", "adapter", "deformable_adapter"] = "sfp",
        out_indices: list[int] | None = None,
        head: Literal["upernet", "unet"] = "upernet",
        head_channels: int = 128,
        loss: Literal["ce", "dice", "focal", "ce+dice"] = "ce",
        class_weights: list[float] | None = None,
        ignore_index: int | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        layer_decay: float = 0.9,
        warmup_steps: int = 0,
        schedule: Literal["poly", "cosine", "constant"] = "poly",
        drop_path_rate: float = 0.1,
        freeze_backbone: bool = False,
        freeze_blocks: int = 0,
        bands: list[int] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        render: dict[str, Any] | None = None,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        check_class_lists(num_classes, class_names, class_colors)
        super().__init__()

    def model_fields(self) -> dict[str, Any]:
        hp = self.hparams
        return dict(
            kind="segmentation",
            neck=hp["neck"],
            out_indices=hp["out_indices"],
            head=hp["head"],
            head_channels=hp["head_channels"],
            num_classes=hp["num_classes"],
            in_channels=hp["in_channels"],
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, K, H, W) logits."""
        return self.model(x)

    def compute_scores(self, cm: Tensor) -> dict[str, float]:
        """``mIoU``, ``mF1``, ``OA`` and ``IoU_<class>`` / ``F1_<class>`` per class."""
        ignore = self.hparams["ignore_index"]
        s = scores_from_confusion(cm, exclude=ignore)
        out = {"mIoU": float(s["miou"]), "mF1": float(s["mf1"]), "OA": float(s["oa"])}
        for i, name in enumerate(self.class_names):
            if ignore == i:
                continue
            out[f"IoU_{name}"] = float(s["iou"][i])
            out[f"F1_{name}"] = float(s["f1"][i])
        return out
