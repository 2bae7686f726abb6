"""torchgeo drives our tasks, and torchgeo's own tasks accept our registered backbone names."""

from __future__ import annotations

import pytest
import torch
from lightning import Trainer
from torchgeo.datamodules import GeoDataModule
from torchgeo.trainers import BaseTask
from torchgeo.trainers import ChangeDetectionTask as TorchGeoChangeTask
from vitp_geo.datamodules.geotiff import GeoTiffSegmentationDataModule
from vitp_geo.datamodules.sampling import SamplingArgs

from vitp_geo.tasks import ChangeDetectionTask, SegmentationTask
from vitp_geo.tasks.args import BackboneArgs, OptimArgs


@pytest.mark.slow
def test_torchgeo_datamodule_trains_our_task_and_loss_drops(seg_folders, tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    dm = GeoTiffSegmentationDataModule(
        str(seg_folders.images),
        labels=str(seg_folders.labels),
        sampling=SamplingArgs(batch_size=4, length=4),
        flips=False,
    )
    assert isinstance(dm, GeoDataModule)
    task = SegmentationTask(
        head_channels=16,
        optim=OptimArgs(lr=2e-3, warmup_steps=0, schedule="constant"),
        backbone=BackboneArgs(drop_path_rate=0.0),
    )
    assert isinstance(task, BaseTask)
    trainer = Trainer(
        max_epochs=6,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )
    losses: list[float] = []

    orig = task.training_step

    def step(batch, batch_idx, dataloader_idx=0):  # noqa: ANN001, ANN202
        loss = orig(batch, batch_idx)
        losses.append(float(loss.detach()))
        return loss

    task.training_step = step  # type: ignore[method-assign]
    trainer.fit(task, datamodule=dm)
    assert len(losses) == 6
    assert sum(losses[-2:]) < sum(losses[:2])  # it learns on torchgeo batches
    for key in ("val_mIoU", "val_OA", "val_IoU_class_1"):
        assert key in trainer.callback_metrics


def test_torchgeo_changevit_accepts_the_vitp_backbone_name() -> None:
    task = TorchGeoChangeTask(model="changevit", backbone="vitp_tiny_patch14_112", in_channels=3)
    assert task.model.encoder.embed_dim == 192 and len(task.model.encoder.blocks) == 4
    assert task(torch.rand(1, 2, 3, 112, 112)).shape == (1, 1, 112, 112)


def test_change_task_takes_both_torchgeo_and_stacked_layouts() -> None:
    task = ChangeDetectionTask(head_channels=16).eval()
    pair = torch.rand(2, 2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(task(pair), task(pair.flatten(1, 2)))
        swapped = task(torch.stack([pair[:, 1], pair[:, 0]], 1))
        torch.testing.assert_close(swapped, task(pair))  # |after - before| fusion is symmetric
    with pytest.raises(ValueError, match="expected 6 channels"):
        task(torch.rand(1, 4, 112, 112))
