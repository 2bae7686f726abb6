"""The embedded medical fine-tuning run and its per-case Dice report.

``vitp-geo finetune segmentation --domain med`` with no ``--config`` writes seeded CT phantoms
(``vitp_geo.medical.phantoms``) in the MSD / nnU-Net layout and fine-tunes the tiny ViTP
backbone with a UperNet head on their axial slices through ``vitp_geo.datamodules.medical`` (the same
reading, reorientation, windowing and slicing as users' data). After training, and once before
it, the model segments every validation case slice by slice and the per-case Dice
(``vitp_geo.evaluation.dice``, nnU-Net's "ignore" rule for classes absent from a case) is printed
and written into ``finetune_summary.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn

from vitp_geo.medical.phantoms import CT_CLASSES, write_ct_dataset

# Colours for the card (QGIS / viewers): background black, then distinct organ colours.
CT_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (157, 108, 162),  # spleen
    (185, 102, 83),  # right kidney
    (185, 102, 83),  # left kidney
    (221, 130, 101),  # liver
    (255, 255, 0),  # liver lesion
)


def default_config(data_dir: Path, seed: int = 0) -> dict[str, Any]:
    """The embedded run: 6 CT phantoms (4 train, 2 validation cases), tiny ViT + UperNet, CPU.

    Budget: about a minute of training on 2 CPU cores (``max_epochs`` below); the phantoms are
    written into ``data_dir`` (reused when already there).
    """
    root = data_dir / "phantom_ct"
    if not (root / "dataset.json").is_file():
        write_ct_dataset(root, n_cases=6, seed=seed, shape=(112, 112, 24), overwrite=True)
    model = dict(
        backbone=dict(name="vitp_tiny_patch14_112", img_size=112, neck="sfp", drop_path_rate=0.0),
        head="upernet",
        head_channels=64,
        num_classes=len(CT_CLASSES),
        class_names=list(CT_CLASSES),
        class_colors=[list(c) for c in CT_COLORS],
        # Small organs (kidneys, lesions) cover < 1 % of the voxels: Dice loss keeps them learning.
        loss="ce+dice",
        optim=dict(lr=1e-3, weight_decay=0.05, layer_decay=0.9, warmup_steps=10, schedule="poly"),
    )
    data = dict(
        root=str(root),
        channel_rule="ct-windows",
        empty_fraction=0.2,
        sampling=dict(val_fraction=0.3, patch_size=112, batch_size=8, seed=seed),
    )
    return {
        "seed_everything": seed,
        "trainer": {"max_epochs": 12, "accelerator": "cpu", "log_every_n_steps": 4},
        "model": {"class_path": "vitp_geo.tasks.SegmentationTask", "init_args": model},
        "data": {"class_path": "vitp_geo.datamodules.medical.MedicalSliceDataModule", "init_args": data},
    }


def report_to_json(report: Any) -> dict[str, Any]:
    """A ``DiceReport`` as plain JSON (NaN → None): per case, per class, means, pooled mDice."""

    def num(v: float) -> float | None:
        return float(v) if math.isfinite(float(v)) else None

    names = [c.name for c in report.classes]
    return {
        "empty_rule": str(report.rule),
        "per_case": {
            case: {n: num(v) for n, v in zip(names, row, strict=True)}
            for case, row in zip(report.cases, report.per_case, strict=True)
        },
        "mean_per_class": {n: num(v) for n, v in zip(names, report.mean_per_class, strict=True)},
        "mean_dice": num(report.mean_dice),
        "pooled_mdice": num(report.pooled_mdice),
    }


def format_report(scores: dict[str, Any], title: str = "per-case Dice (validation cases)") -> str:
    """A table: one row per case, one column per class, then the mean over cases."""
    per_case: dict[str, dict[str, float | None]] = scores["per_case"]
    names = list(scores["mean_per_class"])
    width = max(8, *(len(n) for n in names))
    case_w = max(10, *(len(c) for c in per_case))

    def cell(v: float | None) -> str:
        return f"{'-' if v is None else f'{v:.3f}':>{width}}"

    lines = [f"{title}, empty ground truth: {scores['empty_rule']}"]
    lines.append(f"  {'case':<{case_w}} " + " ".join(f"{n:>{width}}" for n in names))
    for case, row in per_case.items():
        lines.append(f"  {case:<{case_w}} " + " ".join(cell(row[n]) for n in names))
    lines.append(f"  {'mean':<{case_w}} " + " ".join(cell(scores["mean_per_class"][n]) for n in names))
    md, pooled = scores["mean_dice"], scores["pooled_mdice"]
    lines.append(
        f"  mean Dice over classes {'-' if md is None else f'{md:.4f}'}; "
        f"pooled mDice (mmseg) {'-' if pooled is None else f'{pooled:.4f}'}"
    )
    return "\n".join(lines)


class CaseDice(Callback):
    """Per-case Dice of whole validation cases, scored by the task's network on the trainer's device.

    Active when the datamodule has a ``dice_report(predictor)`` method (the medical ones); a no-op
    otherwise. With ``score_start`` it scores the untrained model when fitting starts; it always
    scores after a ``trainer.validate`` run (``vitp_geo.tasks.run.fit`` validates the best
    checkpoint last), so ``final`` holds the best weights' report. Each rank scores on its own
    device (``pl_module.device``), never a hard-coded one.

    Attributes:
        start: the report before training (``report_to_json``), or None.
        final: the report after the last ``validate``, or None.
    """

    def __init__(self, score_start: bool = False) -> None:
        self.score_start = score_start
        self.start: dict[str, Any] | None = None
        self.final: dict[str, Any] | None = None

    @staticmethod
    def applies(trainer: Trainer) -> bool:
        """Whether the trainer's datamodule scores whole cases."""
        return callable(getattr(getattr(trainer, "datamodule", None), "dice_report", None))

    def _score(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        network: torch.nn.Module = pl_module.model  # type: ignore[assignment]
        device = pl_module.device
        was_training = network.training
        network.eval()
        try:
            datamodule: Any = getattr(trainer, "datamodule", None)
            report = datamodule.dice_report(lambda x: network(x.to(device)))
        finally:
            network.train(was_training)
        return report_to_json(report)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.score_start and self.applies(trainer):
            self.start = self._score(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and self.applies(trainer):
            self.final = self._score(trainer, pl_module)
