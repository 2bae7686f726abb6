"""ObjectDetectionTask: the torchgeo subclass, its model card, layer decay, and bad checkpoints."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import save_tiny_checkpoint
from torchgeo.trainers import ObjectDetectionTask as TorchGeoObjectDetectionTask

from vitp_geo.models.detection.cascade import CascadeRoIHeads
from vitp_geo.models.detection.oriented_rpn import OrientedRegionProposalNetwork
from vitp_geo.models.detection.rcnn import DetectionModel
from vitp_geo.tasks import load_inference_model
from vitp_geo.tasks.args import BackboneArgs, OptimArgs
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
        backbone=BackboneArgs(drop_path_rate=0.0),
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
    task = _task(optim=OptimArgs(layer_decay=0.5, lr=1.0))
    groups = task.configure_optimizers()["optimizer"].param_groups  # type: ignore[index]
    by_param = {id(p): g["lr"] for g in groups for p in g["params"]}
    depth = len(task.backbone.blocks)
    assert by_param[id(task.backbone.patch_embed.proj.weight)] == pytest.approx(0.5 ** (depth + 1))
    assert by_param[id(task.backbone.blocks[depth - 1].mlp.fc1.weight)] == pytest.approx(0.5)
    assert by_param[id(task.model.roi_heads.head.fc6.weight)] == pytest.approx(1.0)  # detector: full lr
    frozen = _task(backbone=BackboneArgs(drop_path_rate=0.0, freeze_blocks=2))
    assert not any(p.requires_grad for p in frozen.backbone.blocks[1].parameters())
    assert all(p.requires_grad for p in frozen.backbone.blocks[2].parameters())
    assert all(p.requires_grad for p in frozen.model.rpn.parameters())


@pytest.mark.parametrize(
    ("box_type", "roi_head", "rpn"),
    [
        ("hbb", "standard", "horizontal"),
        ("hbb", "cascade", "horizontal"),
        ("obb", "standard", "horizontal"),
        ("obb", "standard", "oriented"),
    ],
)
def test_checkpoint_card_and_rebuild(tmp_path, box_type: str, roi_head: str, rpn: str) -> None:  # noqa: ANN001
    path = save_tiny_checkpoint(
        tmp_path / "det.ckpt",
        task="detection",
        num_classes=2,
        class_names=["car", "ship"],
        box_type=box_type,
        roi_head=roi_head,
        rpn=rpn,
    )
    model, card = load_inference_model(path)
    assert card.task == "detection" and card.class_names == ["car", "ship"]
    assert len(card.class_colors) == 2 and (0, 0, 0) not in card.class_colors  # no background entry
    assert card.tile_size == 112 and card.bands == [1, 2, 3]
    assert card.arch["kind"] == "detection" and card.arch["box_type"] == box_type
    assert card.arch["detector"].get("roi_head", "standard") == roi_head
    assert isinstance(model.roi_heads, CascadeRoIHeads) == (roi_head == "cascade")  # type: ignore[union-attr]
    assert isinstance(model.rpn, OrientedRegionProposalNetwork) == (rpn == "oriented")  # type: ignore[union-attr]
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
        _task(backbone=BackboneArgs(weights=str(seg)))
    det = save_tiny_checkpoint(tmp_path / "det.ckpt", task="detection", num_classes=1)
    with pytest.raises(ValueError, match=r"det\.ckpt is a fine-tuned detection checkpoint"):
        build_backbone("vitp_tiny_patch14_112", weights=det)


def test_detection_scores_obb_and_hbb() -> None:
    from vitp_geo.geometry.obb import obb_to_poly
    from vitp_geo.models.detection.rcnn import BoxType
    from vitp_geo.tasks.detection import detection_scores

    gt = torch.tensor([[30.0, 30, 20, 8, 0.6], [70, 60, 16, 10, -0.3]])
    far = gt.clone()
    far[:, 0] += 50
    entry = {
        "gt_boxes": gt,
        "gt_labels": torch.tensor([0, 1]),
        "gt_polys": obb_to_poly(gt),
        "pred_labels": torch.tensor([0, 1]),
        "scores": torch.tensor([0.9, 0.8]),
    }
    perfect = detection_scores([{**entry, "pred_boxes": gt}], BoxType.OBB, ["a", "b"])
    assert perfect == {"map50": pytest.approx(1.0), "map50_hbb": pytest.approx(1.0)}
    missed = detection_scores([{**entry, "pred_boxes": far}], BoxType.OBB, ["a", "b"])
    assert missed == {"map50": 0.0, "map50_hbb": 0.0}
    # the mirror image of a diagonal box: the same horizontal envelope, a poor oriented overlap
    mirrored = gt.clone()
    mirrored[:, 4] = -mirrored[:, 4]
    diag = {**entry, "gt_boxes": gt.clone(), "pred_boxes": mirrored}
    diag["gt_boxes"][:, 4] = 0.785
    diag["pred_boxes"][:, 4] = -0.785
    diag["gt_polys"] = obb_to_poly(diag["gt_boxes"])
    both = detection_scores([diag], BoxType.OBB, ["a", "b"])
    assert both == {"map50": 0.0, "map50_hbb": pytest.approx(1.0)}
    # difficult objects that are missed do not count
    half = {**entry, "pred_boxes": gt[:1], "pred_labels": torch.tensor([0]), "scores": torch.tensor([0.9])}
    assert detection_scores([half], BoxType.OBB, ["a", "b"])["map50"] == pytest.approx(0.5)
    half["difficult"] = torch.tensor([False, True])
    assert detection_scores([half], BoxType.OBB, ["a", "b"])["map50"] == pytest.approx(1.0)


def test_cli_refuses_a_finetuned_checkpoint_as_backbone_before_writing(tmp_path, capsys) -> None:  # noqa: ANN001
    from vitp_geo.cli.main import main

    seg = save_tiny_checkpoint(tmp_path / "seg.ckpt", task="segmentation")
    out = tmp_path / "run"
    assert main(["finetune", "detection", "--backbone", str(seg), "--output", str(out)]) == 2
    assert "seg.ckpt is a fine-tuned segmentation checkpoint" in capsys.readouterr().err
    assert not out.exists()
    det = save_tiny_checkpoint(tmp_path / "det.ckpt", task="detection", num_classes=1)
    assert main(["finetune", "segmentation", "--backbone", str(det), "--output", str(out)]) == 2
    assert "det.ckpt is a fine-tuned detection checkpoint" in capsys.readouterr().err
