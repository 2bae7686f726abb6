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

from vitp_geo.tasks.base import DenseTask
from vitp_geo.tasks.metrics import scores_from_confusion


class ChangeDetectionTask(DenseTask):
    """Siamese ViT change detection.

    Args:
        backbone, backbone_weights, img_size, in_channels, rgb_channels: as for
            :class:`~vitp_geo.tasks.SegmentationTask`; ``in_channels`` counts one date's bands.
        class_names, class_colors: two entries (default ``unchanged``, ``changed``).
        fusion: ``diff`` or ``concat``.
        neck, out_indices, head, head_channels: as for segmentation (head ``upernet`` or ``unet``).
        loss: ``ce``, ``dice``, ``focal`` or ``ce+dice`` over the two classes.
        class_weights: weights of (no change, change) for ce / focal.
        ignore_index: mask value excluded from loss and metrics (e.g. 255).
        lr, weight_decay, layer_decay, warmup_steps, schedule, drop_path_rate,
            freeze_backbone, freeze_blocks, bands, mean, std, render: as for segmentation.
    """

    KIND = "change"
    monitor = "val_F1"
    mode = "max"

    def __init__(
        self,
        backbone: str = "vitp_tiny_patch14_112",
        backbone_weights: str | None = None,
        img_size: int | None = None,
        in_channels: int = 3,
        rgb_channels: list[int] | None = None,
        class_names: list[str] | None = None,
        class_colors: list[list[int]] | None = None,
        fusion: Literal["diff", "concat"] = "diff",
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
        num_classes: int = 2,
    ) -> None:
        if num_classes != 2:
            raise ValueError(f"change detection is binary: num_classes must be 2, got {num_classes}")
        for label, value in (("class_names", class_names), ("class_colors", class_colors)):
            if value is not None and len(value) != 2:
                raise ValueError(f"{label} must have 2 entries (no change, change), got {len(value)}")
        super().__init__()

    @property
    def class_names(self) -> list[str]:
        names = self.hparams.get("class_names")
        return list(names) if names is not None else ["unchanged", "changed"]

    def model_fields(self) -> dict[str, Any]:
        hp = self.hparams
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
