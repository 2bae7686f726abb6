"""The tasks' shared argument groups (``vitp_geo.tasks.args``): a config or a call in the flat
spelling of before is refused naming the grouped key, and a model saved with flat
hyper-parameters still loads (``vitp-geo infer`` and ``Task.load_from_checkpoint``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from config_runs import refused_finetune
from tiny_checkpoints import save_tiny_checkpoint

from vitp_geo.cli.main import main
from vitp_geo.io.raster import write_geotiff
from vitp_geo.synthetic.scene import generate_scene
from vitp_geo.tasks.args import BackboneArgs, OptimArgs, flat_hparams
from vitp_geo.tasks.detection import ObjectDetectionTask
from vitp_geo.tasks.loading import load_inference_model
from vitp_geo.tasks.segmentation import SegmentationTask


@pytest.mark.parametrize(
    ("line", "new"),
    [
        ("lr: 0.001", "model.init_args.optim.lr"),
        ("backbone: vitp_tiny_patch14_112", "model.init_args.backbone.name"),
        ("backbone_weights: null", "model.init_args.backbone.weights"),
        ("freeze_backbone: true", "model.init_args.backbone.freeze"),
        ("img_size: 112", "model.init_args.backbone.img_size"),
        ("bands: [1, 2, 3]", "model.init_args.inputs.bands"),
    ],
)
def test_a_flat_config_key_is_refused_with_its_grouped_spelling(
    tmp_path, capsys, line: str, new: str
) -> None:  # noqa: ANN001
    old = tmp_path / "old.yaml"
    old.write_text(
        "model:\n  class_path: vitp_geo.tasks.SegmentationTask\n  init_args:\n"
        f"    num_classes: 5\n    {line}\n"
        "data:\n  class_path: vitp_geo.datamodules.geotiff.GeoTiffSegmentationDataModule\n"
        f"  init_args:\n    images: {tmp_path}\n"
    )
    key = line.split(":")[0]
    assert refused_finetune(old, tmp_path / "o", capsys) == [
        f"vitp-geo finetune: error: {old}: model.init_args.{key} is the old spelling: the task settings "
        f"are grouped; use {new}"
    ]


def test_a_flat_backbone_name_in_python_names_the_dataclass() -> None:
    with pytest.raises(TypeError, match=r"backbone=BackboneArgs\(name='vitp_tiny_patch14_112'\)"):
        SegmentationTask(backbone="vitp_tiny_patch14_112")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"optim has no field 'learning_rate'"):
        SegmentationTask(optim={"learning_rate": 1.0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"optim.schedule 'step' is for detection, not segmentation"):
        SegmentationTask(optim=OptimArgs(schedule="step", lr_steps=[8, 11]))


# What the tasks recorded before the groups (every argument flat, in __init__'s order), for the
# model save_tiny_checkpoint builds: vitp_tiny_patch14_112, 112 px, 32-wide UperNet, 5 classes.
OLD_SEGMENTATION_HPARAMS: dict[str, Any] = dict(
    backbone="vitp_tiny_patch14_112",
    backbone_weights=None,
    img_size=112,
    in_channels=3,
    rgb_channels=None,
    num_classes=5,
    class_names=None,
    class_colors=None,
    neck="sfp",
    out_indices=None,
    head="upernet",
    head_channels=32,
    loss="ce",
    class_weights=None,
    ignore_index=None,
    lr=3e-4,
    weight_decay=0.01,
    layer_decay=0.8,
    warmup_steps=7,
    schedule="cosine",
    drop_path_rate=0.0,
    freeze_backbone=False,
    freeze_blocks=1,
    bands=[3, 2, 1],
    mean=[120.0, 110.0, 100.0],
    std=[50.0, 45.0, 40.0],
    render=None,
)


def _old_layout(new: Path, old: Path, hparams: dict[str, Any]) -> Path:
    ckpt = torch.load(new, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"] = dict(hparams)
    torch.save(ckpt, old)
    return old


def test_a_checkpoint_with_flat_hparams_still_loads_and_infers(tmp_path: Path) -> None:
    new = save_tiny_checkpoint(
        tmp_path / "new.ckpt", bands=(3, 2, 1), mean=[120.0, 110.0, 100.0], std=[50.0, 45.0, 40.0]
    )
    old = _old_layout(new, tmp_path / "old.ckpt", OLD_SEGMENTATION_HPARAMS)
    # Lightning's own loader: the flat hyper-parameters are regrouped, none of them dropped
    task = SegmentationTask.load_from_checkpoint(old, map_location="cpu").eval()
    assert {k: task.hp[k] for k in OLD_SEGMENTATION_HPARAMS} == OLD_SEGMENTATION_HPARAMS
    assert task.hparams["optim"]["lr"] == 3e-4 and task.hparams["backbone"]["freeze_blocks"] == 1
    assert task.hparams["inputs"]["bands"] == [3, 2, 1]
    model, card = load_inference_model(old)
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(task(x), model(x))
    assert card.bands == [3, 2, 1]
    # and vitp-geo infer: the same prediction as from the checkpoint written now
    scene = tmp_path / "scene.tif"
    s = generate_scene(3, 112)
    write_geotiff(scene, s.image, s.transform, s.crs)
    for ckpt in (new, old):
        out = tmp_path / ckpt.stem / "pred.tif"
        assert main(["infer", str(scene), "--checkpoint", str(ckpt), "--out", str(out), "--no-progress"]) == 0
    assert (tmp_path / "new" / "pred.tif").read_bytes() == (tmp_path / "old" / "pred.tif").read_bytes()


def test_a_detection_checkpoint_with_flat_hparams_keeps_its_step_schedule(tmp_path: Path) -> None:
    new = save_tiny_checkpoint(tmp_path / "new.ckpt", task="detection", num_classes=2)
    saved = torch.load(new, map_location="cpu", weights_only=True)["hyper_parameters"]
    flat = flat_hparams(saved) | dict(schedule="step", lr_steps=[8, 11], lr_gamma=0.5, warmup_ratio=1 / 3)
    assert "backbone_weights" in flat and "lr_steps" in flat and "optim" not in flat
    old = _old_layout(new, tmp_path / "old.ckpt", flat)
    task = ObjectDetectionTask.load_from_checkpoint(old, map_location="cpu")
    assert task.hparams["optim"] == dict(
        OptimArgs(schedule="step", lr_steps=[8, 11], lr_gamma=0.5, warmup_ratio=1 / 3).__dict__
    )
    assert (
        task.hparams["backbone"]
        == saved["backbone"]
        == dict(BackboneArgs(img_size=112, drop_path_rate=0.0).__dict__)
    )
