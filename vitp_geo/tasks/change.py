"""Binary change detection on a ViTP backbone: a torchgeo task (``BaseTask`` subclass).

Batches are torchgeo's change batches: ``{"image": (B, 2, C, H, W), "mask": (B, 1, H, W) or
(B, H, W)}`` with mask 1 = changed — ``vitp_geo.datamodules.torchgeo_benchmarks.LEVIRCDDataModule`` (LEVIR-CD
read by torchgeo's dataset) and ours drive it unchanged.
``(B, 2C, H, W)`` (before and after stacked on channels) is accepted too. The model is siamese:
one shared backbone + pyramid for both dates, per-level fusion (``diff`` = |after − before| or
``concat``), then a UperNet or UNet-style decoder. It predicts two logits per pixel (no change,
change); the scores are those of the change class.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from vitp_geo.tasks.args import BackboneArgs, InputArgs, OptimArgs
from vitp_geo.tasks.base import DenseTask
from vitp_geo.tasks.metrics import scores_from_confusion


class ChangeDetectionTask(DenseTask):
    """Siamese ViT change detection.

    Args:
        backbone: as for :class:`~vitp_geo.tasks.SegmentationTask`; ``in_channels`` counts one
            date's bands.
        class_names, class_colors: two entries (default ``unchanged``, ``changed``).
        fusion: ``diff`` or ``concat``.
        head, head_channels: as for segmentation (head ``upernet`` or ``unet``).
        loss: ``ce``, ``dice``, ``focal`` or ``ce+dice`` over the two classes.
        class_weights: weights of (no change, change) for ce / focal.
        ignore_index: mask value excluded from loss and metrics (e.g. 255).
        optim, inputs: as for segmentation.
        num_classes: 2 (the argument exists for configs that state it).
    """

    KIND = "change"
    monitor = "val_F1"
    mode = "max"

    def __init__(
        self,
        backbone: BackboneArgs | None = None,
        class_names: list[str] | None = None,
        class_colors: list[list[int]] | None = None,
        fusion: Literal["diff", "concat"] = "diff",
        head: Literal["upernet", "unet"] = "upernet",
        head_channels: int = 128,
        loss: Literal["ce", "dice", "focal", "ce+dice"] = "ce",
        class_weights: list[float] | None = None,
        ignore_index: int | None = None,
        optim: OptimArgs | None = None,
        inputs: InputArgs | None = None,
        num_classes: int = 2,
    ) -> None:
        if num_classes != 2:
            raise ValueError(f"change detection is binary: num_classes must be 2, got {num_classes}")
        for label, value in (("class_names", class_names), ("class_colors", class_colors)):
            if value is not None and len(value) != 2:
                raise ValueError(f"{label} must have 2 entries (no change, change), got {len(value)}")
        backbone, optim, inputs = self.grouped(backbone, optim, inputs)  # type: ignore[assignment]  # recorded as dicts
        super().__init__()

    @property
    def class_names(self) -> list[str]:
        names = self.hp.get("class_names")
        return list(names) if names is not None else ["unchanged", "changed"]

    def model_fields(self) -> dict[str, Any]:
        hp = self.hp
        return dict(
            kind="change",
            neck=hp["neck"],
            out_indices=hp["out_indices"],
            head=hp["head"],
            head_channels=hp["head_channels"],
            num_classes=2,
            in_channels=hp["in_channels"],
            fusion=hp["fusion"],
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, 2, C, H, W) or (B, 2C, H, W) → (B, 2, H, W) logits."""
        return self.model(x)

    def compute_scores(self, cm: Tensor) -> dict[str, float]:
        """``F1``, ``IoU``, ``precision``, ``recall`` of the change class, and ``OA``."""
        s = scores_from_confusion(cm)
        return {
            "F1": float(s["f1"][1]),
            "IoU": float(s["iou"][1]),
            "precision": float(s["precision"][1]),
            "recall": float(s["recall"][1]),
            "OA": float(s["oa"]),
        }
