"""ObjectDetectionTask: the torchgeo subclass, its model card, layer decay, and bad checkpoints."""

from __future__ import annotations

import pytest
import torch
from torchgeo.trainers import ObjectDetectionTask as TorchGeoObjectDetectionTask

from vitp_geo.models.detection.rcnn import DetectionModel
from vitp_geo.tasks import load_inference_model, save_tiny_checkpoint
from vitp_geo.tasks.backbone import build_backbone
from vitp_geo.tasks.detection import ObjectDetectionTask


def _task(**kw: object) -> ObjectDetectionTask:
    args: dict[str, object] = dict(
        num_classes=2,
        class_names=["car", "ship"],
        box_type="obb",
        fpn_channels=32,
        representation=64,
        anchor_sizes=[16, 32, 64, 128, 256],
        drop_path_rate=0.0,
    )
    args.update(kw)
    return ObjectDetectionTask(**args)  # type: ignore[arg-type]


def test_is_a_torchgeo_detection_task_with_its_own_hparams() -> None:
    task = _task()
    assert isinstance(task, TorchGeoObjectDetectionTask)
    assert isinstance(task.model, DetectionModel)
    assert task.hparams["box_type"] == "obb" and task.hparams["num_classes"] == 2
    assert "trainable_layers" not in task.hparams  # torchgeo's own defaults are not recorded
    with pytest.raises(ValueError, match="rbox"):
        _task(box_type="rbox")
    with pytest.raises(ValueError, match="class_names"):
        _task(class_names=["car"])


def test_layer_decay_and_freezing_reach_the_backbone() -> None:
    task = _task(layer_decay=0.5, lr=1.0)
    groups = task.configure_optimizers()["optimizer"].param_groups  # type: ignore[index]
    by_param = {id(p): g["lr"] for g in groups for p in g["params"]}
    depth = len(task.backbone.blocks)
    assert by_param[id(task.backbone.patch_embed.proj.weight)] == pytest.approx(0.5 ** (depth + 1))
    assert by_param[id(task.backbone.blocks[depth - 1].mlp.fc1.weight)] == pytest.approx(0.5)
    assert by_param[id(task.model.roi_heads.head.fc6.weight)] == pytest.approx(1.0)  # detector: full lr
    frozen = _task(freeze_blocks=2)
    assert not any(p.requires_grad for p in frozen.backbone.blocks[1].parameters())
    assert all(p.requires_grad for p in frozen.backbone.blocks[2].parameters())
    assert all(p.requires_grad for p in frozen.model.rpn.parameters())


@pytest.mark.parametrize("box_type", ["hbb", "obb"])
def test_checkpoint_card_and_rebuild(tmp_path, box_type: str) -> None:  # noqa: ANN001
    path = save_tiny_checkpoint(
        tmp_path / "det.ckpt", task="detection", num_classes=2, class_names=["car", "ship"], box_type=box_type
    )
    model, card = load_inference_model(path)
    assert card.task == "detection" and card.class_names == ["car", "ship"]
    assert len(card.class_colors) == 2 and (0, 0, 0) not in card.class_colors  # no background entry
    assert card.tile_size == 112 and card.bands == [1, 2, 3]
    assert card.arch["kind"] == "detection" and card.arch["box_type"] == box_type
    ref = ObjectDetectionTask.load_from_checkpoint(path, map_location="cpu").model.eval()
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        a, b = model(x), ref(x)
    assert isinstance(a, list) and isinstance(b, list)
    assert a[0]["boxes"].shape[1] == (4 if box_type == "hbb" else 5)
    torch.testing.assert_close(a[0]["boxes"], b[0]["boxes"])  # the card rebuilds the same model


def test_segmentation_checkpoint_is_refused_as_a_backbone_and_the_reverse(tmp_path) -> None:  # noqa: ANN001
    seg = save_tiny_checkpoint(tmp_path / "seg.ckpt", task="segmentation")
    with pytest.raises(ValueError, match=r"seg\.ckpt is a fine-tuned segmentation checkpoint"):
        _task(backbone_weights=str(seg))
    det = save_tiny_checkpoint(tmp_path / "det.ckpt", task="detection", num_classes=1)
    with pytest.raises(ValueError, match=r"det\.ckpt is a fine-tuned detection checkpoint"):
        build_backbone("vitp_tiny_patch14_112", weights=det)
