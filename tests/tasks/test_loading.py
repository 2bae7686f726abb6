"""Checkpoint → load_inference_model round trip, with a checkpoint written by a real Trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning import Trainer
from tiny_checkpoints import save_tiny_checkpoint
from vitp_geo.datamodules.geotiff import GeoTiffChangeDataModule, GeoTiffSegmentationDataModule
from vitp_geo.datamodules.sampling import SamplingArgs

from vitp_geo.io.model_card import CARD_KEY
from vitp_geo.tasks import ChangeDetectionTask, SegmentationTask, load_inference_model
from vitp_geo.tasks.args import BackboneArgs, InputArgs
from vitp_geo.tasks.loading import write_weights_checkpoint


def _train_one_step(task: torch.nn.Module, dm: object, root: Path) -> Path:
    trainer = Trainer(
        max_steps=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(task, datamodule=dm)  # type: ignore[arg-type]
    ckpts = sorted((root / "checkpoints").glob("*.ckpt"))
    assert ckpts, "Trainer wrote no checkpoint"
    return ckpts[-1]


@pytest.mark.slow
def test_segmentation_checkpoint_round_trip_gives_identical_logits(seg_folders, tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    dm = GeoTiffSegmentationDataModule(
        str(seg_folders.images), labels=str(seg_folders.labels), sampling=SamplingArgs(batch_size=2, length=2)
    )
    task = SegmentationTask(
        head_channels=16,
        num_classes=5,
        class_names=list("abcde"),
        backbone=BackboneArgs(drop_path_rate=0.0),
        inputs=InputArgs(bands=[3, 2, 1]),
    )
    ckpt = _train_one_step(task, dm, tmp_path)
    model, card = load_inference_model(ckpt)
    assert card.task == "segmentation" and card.class_names == list("abcde") and card.bands == [3, 2, 1]
    assert card.mean == pytest.approx([123.675, 116.28, 103.53])  # taken from the datamodule
    assert card.tile_size == 112
    task.eval()
    x = torch.randn(2, 3, 112, 140)
    with torch.no_grad():
        assert torch.equal(model(x), task(x))
    assert not model.training
    # the weights-only model.ckpt that `finetune` writes from it: no optimizer state, same model
    full = torch.load(ckpt, weights_only=True)
    assert full["optimizer_states"]  # what the Trainer wrote is resumable
    slim = write_weights_checkpoint(ckpt, tmp_path / "model.ckpt")
    kept = torch.load(slim, weights_only=True)
    assert not {"optimizer_states", "lr_schedulers", "loops", "callbacks"} & set(kept)
    assert kept[CARD_KEY] == full[CARD_KEY] and kept["hyper_parameters"] == full["hyper_parameters"]
    assert slim.stat().st_size < ckpt.stat().st_size
    slim_model, slim_card = load_inference_model(slim)
    assert slim_card == card
    with torch.no_grad():
        assert torch.equal(slim_model(x), task(x))
    reloaded = SegmentationTask.load_from_checkpoint(slim)
    assert reloaded.hparams["class_names"] == list("abcde")


@pytest.mark.slow
def test_change_checkpoint_round_trip_gives_identical_logits(change_folders, tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    dm = GeoTiffChangeDataModule(
        str(change_folders.images),
        str(change_folders.after),
        str(change_folders.labels),
        sampling=SamplingArgs(batch_size=2, length=2),
    )
    task = ChangeDetectionTask(
        head_channels=16,
        backbone=BackboneArgs(neck="adapter", drop_path_rate=0.0),
        head="unet",
        fusion="concat",
    )
    ckpt = _train_one_step(task, dm, tmp_path)
    model, card = load_inference_model(ckpt)
    assert card.task == "change" and card.class_names == ["unchanged", "changed"] and len(card.mean) == 3
    task.eval()
    x = torch.randn(1, 6, 112, 112)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 2, 112, 112)
        assert torch.equal(out, task(x))


def test_tiny_checkpoint_builder_is_seeded_and_loadable(tmp_path) -> None:  # noqa: ANN001
    a = save_tiny_checkpoint(
        tmp_path / "a.ckpt", num_classes=3, bands=[1, 2, 3, 4], mean=[1, 2, 3, 4], std=[5, 6, 7, 8]
    )
    b = save_tiny_checkpoint(
        tmp_path / "b.ckpt", num_classes=3, bands=[1, 2, 3, 4], mean=[1, 2, 3, 4], std=[5, 6, 7, 8]
    )
    ma, card = load_inference_model(a)
    mb, _ = load_inference_model(b)
    assert card.bands == [1, 2, 3, 4] and card.std == [5, 6, 7, 8] and len(card.class_names) == 3
    x = torch.randn(1, 4, 98, 126)
    with torch.no_grad():
        ya = ma(x)
        assert ya.shape == (1, 3, 98, 126)
        assert torch.equal(ya, mb(x))
    assert not list(tmp_path.glob("*.partial*"))


def test_loading_errors_name_the_file(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_inference_model(tmp_path / "missing.ckpt")
    bad = tmp_path / "garbage.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.ckpt"):
        load_inference_model(bad)
    no_card = tmp_path / "nocard.ckpt"
    torch.save({"state_dict": {}}, no_card)
    with pytest.raises(ValueError, match=CARD_KEY):
        load_inference_model(no_card)
    good = save_tiny_checkpoint(tmp_path / "good.ckpt")
    ckpt = torch.load(good, weights_only=True)
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if "head" not in k}
    torch.save(ckpt, tmp_path / "cut.ckpt")
    with pytest.raises(ValueError, match="cut.ckpt.*missing"):
        load_inference_model(tmp_path / "cut.ckpt")
