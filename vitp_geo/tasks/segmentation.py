"""Semantic segmentation on a ViTP backbone: a torchgeo task (``BaseTask`` subclass).

Batches are torchgeo's: ``{"image": (B, C, H, W) float, "mask": (B, H, W) or (B, 1, H, W) int}``,
so torchgeo datamodules (``LoveDADataModule``, ``PotsdamDataModule``, ...) and ours drive it
unchanged, and LightningCLI configs name it as
``class_path: vitp_geo.tasks.SegmentationTask``.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from vitp_geo.tasks.args import BackboneArgs, InputArgs, OptimArgs
from vitp_geo.tasks.base import DenseTask, check_class_lists
from vitp_geo.tasks.metrics import scores_from_confusion


class SegmentationTask(DenseTask):
    """UperNet (or UNet-style) segmentation on a ViT pyramid.

    Args:
        backbone: the ViT, its pyramid (``neck``, ``out_indices``) and freezing
            (:class:`~vitp_geo.tasks.args.BackboneArgs`; None: its defaults).
        num_classes: output classes K.
        class_names, class_colors: for the model card (infer's legend and QGIS style).
        head: ``upernet`` or ``unet``.
        head_channels: decoder width.
        loss: ``ce``, ``dice``, ``focal`` or ``ce+dice``.
        class_weights: per-class loss weights (ce / focal).
        ignore_index: label value excluded from loss and metrics.
        optim: AdamW, layer-wise lr decay and the schedule (``poly`` / ``cosine`` / ``constant``)
            (:class:`~vitp_geo.tasks.args.OptimArgs`).
        inputs: bands, normalisation and render rule for the model card
            (:class:`~vitp_geo.tasks.args.InputArgs`).
    """

    KIND = "segmentation"
    monitor = "val_mIoU"
    mode = "max"

    def __init__(
        self,
        backbone: BackboneArgs | None = None,
        num_classes: int = 5,
        class_names: list[str] | None = None,
        class_colors: list[list[int]] | None = None,
        head: Literal["upernet", "unet"] = "upernet",
        head_channels: int = 128,
        loss: Literal["ce", "dice", "focal", "ce+dice"] = "ce",
        class_weights: list[float] | None = None,
        ignore_index: int | None = None,
        optim: OptimArgs | None = None,
        inputs: InputArgs | None = None,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        check_class_lists(num_classes, class_names, class_colors)
        backbone, optim, inputs = self.grouped(backbone, optim, inputs)  # type: ignore[assignment]  # recorded as dicts
        super().__init__()

    def model_fields(self) -> dict[str, Any]:
        hp = self.hp
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
        ignore = self.hp["ignore_index"]
        s = scores_from_confusion(cm, exclude=ignore)
        out = {"mIoU": float(s["miou"]), "mF1": float(s["mf1"]), "OA": float(s["oa"])}
        for i, name in enumerate(self.class_names):
            if ignore == i:
                continue
            out[f"IoU_{name}"] = float(s["iou"][i])
            out[f"F1_{name}"] = float(s["f1"][i])
        return out
