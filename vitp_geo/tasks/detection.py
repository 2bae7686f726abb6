"""Object detection on a ViTP backbone, horizontal or oriented boxes: a torchgeo task.

Batches are torchgeo's detection batches: ``image`` (B, C, H, W) float and per-image lists
``bbox_xyxy`` (N_i, 4), ``label`` (N_i,), plus ``bbox_xyxyxyxy`` (N_i, 8) (four corners) for
oriented boxes — what ``vitp_geo.datamodules.detection`` and torchgeo's ``VHR10`` / ``DOTA`` datamodules
(through ``vitp_geo.datamodules.detection``'s wrappers) give. Images with no objects are fine (empty
lists train the RPN and the classifier on background only).

The model is ``vitp_geo.models.detection.rcnn.DetectionModel`` built through the one dense-model
path (``tasks.models.assemble`` with ``kind: detection``); layer-wise lr decay, freezing, the lr
schedule and the model card come from ``DenseTask``. Validation logs ``val_map50`` — VOC07
11-point AP at IoU 0.5 on the task's box type (polygon IoU for ``obb``) — and, for ``obb``,
``val_map50_hbb`` on the boxes' horizontal envelopes, and for Mask R-CNN (``roi_head: mask``)
``val_segm_map`` — COCO mask AP@[.5:.95] (``segm``), the number the paper reports for SSDD;
predicted and ground-truth masks are kept as RLE until the epoch end. The checkpoint monitor is
``val_map50``.
Under DDP the ranks' predictions and ground truth are gathered first, so AP is that of the whole
validation split on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor
from torchgeo.trainers import BaseTask
from torchgeo.trainers import ObjectDetectionTask as TorchGeoObjectDetectionTask

from vitp_geo.evaluation.detection_map import masks_to_rle
from vitp_geo.geometry.obb import obb_to_hbb, obb_to_poly
from vitp_geo.models.attention import training_attention, vit_tokens
from vitp_geo.models.detection.rcnn import BoxType, targets_from_batch
from vitp_geo.tasks.args import BackboneArgs, InputArgs, OptimArgs
from vitp_geo.tasks.base import DEFAULT_COLORS, DenseTask, check_class_lists
from vitp_geo.tasks.optim import lr_factor, step_milestones


class ObjectDetectionTask(DenseTask, TorchGeoObjectDetectionTask):
    """Faster, Cascade or Mask R-CNN (``hbb``), Rotated Faster or Oriented R-CNN (``obb``) on a ViT pyramid.

    Args:
        backbone: as for :class:`~vitp_geo.tasks.SegmentationTask` (``neck`` ``sfp`` or ``adapter``).
        num_classes: object classes K (no background class; labels are 0..K-1).
        class_names, class_colors: for the model card (K entries).
        box_type: ``hbb`` (horizontal boxes) or ``obb`` (oriented boxes); the values of ``BoxType``.
        fpn_channels: FPN width (256 in the paper's configs).
        fpn: ``fpn`` (torchvision's FPN) or ``simple_fpn`` (the reference's LayerNorm SimpleFPN,
            ``models.simple_fpn``: DIOR, DIOR-R, DOTA-v2.0, RSAR, SARDet-100K).
        anchor_sizes: one anchor size per pyramid level (strides 4, 8, 16, 32, 64).
        aspect_ratios: anchor aspect ratios.
        rpn_pre_nms_top_n, rpn_post_nms_top_n: RPN proposals kept (train, test).
        rpn_batch_size_per_image, box_batch_size_per_image: anchors / RoIs sampled per image.
        representation: box-head FC width.
        score_thresh, nms_thresh, detections_per_img: inference filtering (``nms_thresh`` None:
            0.5 for hbb, 0.1 rotated NMS for obb as in the paper).
        assign_iou: obb only: RoI ↔ ground-truth matching by rotated IoU (``obb``, mmrotate's
            rule) or by IoU of the horizontal envelopes (``hbb``).
        roi_head: hbb only: ``standard`` (Faster R-CNN), ``cascade`` (Cascade R-CNN: three box
            heads at IoU 0.5 / 0.6 / 0.7, the paper's DIOR and SARDet-100K detector) or ``mask``
            (Mask R-CNN, the paper's SSDD model; batches need per-image ``mask`` (N, H, W)).
        rpn: ``horizontal`` (torchvision's RPN) or, obb only, ``oriented`` (Oriented R-CNN's
            midpoint-offset RPN: the paper's DIOR-R, DOTA-v2.0 and RSAR detector).
        rpn_nms_thresh: RPN NMS IoU (None: 0.7 horizontal, 0.8 oriented).
        reg_class_agnostic: obb only: class-agnostic box deltas with smooth-L1 β 1 (the
            reference's Oriented R-CNN head) instead of per-class deltas with β 1/9.
        optim, inputs: as for segmentation; ``optim.schedule`` may also be ``step`` (the
            reference's detection schedule, with ``lr_steps``, ``lr_gamma``, ``warmup_ratio``).
    """

    KIND = "detection"
    monitor = "val_map50"
    mode = "max"
    STEP_SCHEDULE = True

    def __init__(
        self,
        backbone: BackboneArgs | None = None,
        num_classes: int = 1,
        class_names: list[str] | None = None,
        class_colors: list[list[int]] | None = None,
        box_type: Literal["hbb", "obb"] = "hbb",
        fpn_channels: int = 256,
        fpn: Literal["fpn", "simple_fpn"] = "fpn",
        anchor_sizes: list[int] | None = None,
        aspect_ratios: list[float] | None = None,
        rpn_pre_nms_top_n: list[int] | None = None,
        rpn_post_nms_top_n: list[int] | None = None,
        rpn_batch_size_per_image: int = 256,
        box_batch_size_per_image: int = 512,
        representation: int = 1024,
        score_thresh: float = 0.05,
        nms_thresh: float | None = None,
        detections_per_img: int = 100,
        assign_iou: Literal["obb", "hbb"] = "obb",
        roi_head: Literal["standard", "cascade", "mask"] = "standard",
        rpn: Literal["horizontal", "oriented"] = "horizontal",
        rpn_nms_thresh: float | None = None,
        reg_class_agnostic: bool = False,
        optim: OptimArgs | None = None,
        inputs: InputArgs | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (object classes, no background), got {num_classes}")
        check_class_lists(num_classes, class_names, class_colors)
        BoxType(box_type)  # a clear error for anything but hbb / obb
        if roi_head != "standard" and box_type != "hbb":
            raise ValueError(f"roi_head {roi_head!r} is for horizontal boxes (box_type hbb)")
        backbone, optim, inputs = self.grouped(backbone, optim, inputs)  # type: ignore[assignment]  # recorded as dicts
        if optim["lr_steps"] is not None:  # type: ignore[index]
            step_milestones(optim["lr_steps"], 1)  # type: ignore[index]  # checks the epochs
        if rpn == "oriented" and box_type != "obb":
            raise ValueError("rpn 'oriented' (Oriented R-CNN) is for oriented boxes (box_type obb)")
        # BaseTask.__init__ directly: torchgeo's ObjectDetectionTask.__init__ would record its own
        # defaults (model="faster-rcnn", backbone="resnet50", ...) among the hyper-parameters.
        # Lightning collects init arguments from frames holding a ``__class__`` cell; naming it creates one.
        __class__  # type: ignore[name-defined]  # noqa: B018
        BaseTask.__init__(self)

    # ------------------------------------------------------------------ configure_*
    def model_fields(self) -> dict[str, Any]:
        """Backbone → neck → FPN → RPN → RoI heads (built by ``DenseTask.configure_models``)."""
        hp = self.hp
        detector: dict[str, Any] = dict(
            rpn_batch_size_per_image=hp["rpn_batch_size_per_image"],
            box_batch_size_per_image=hp["box_batch_size_per_image"],
            representation=hp["representation"],
            score_thresh=hp["score_thresh"],
            nms_thresh=hp["nms_thresh"],
            detections_per_img=hp["detections_per_img"],
            assign_iou=hp["assign_iou"],
        )
        # cards of earlier models have none of these keys: written only when not the default
        if hp.get("roi_head", "standard") != "standard":
            detector["roi_head"] = hp["roi_head"]
        if hp.get("rpn", "horizontal") != "horizontal":
            detector["rpn"] = hp["rpn"]
        if hp.get("rpn_nms_thresh") is not None:
            detector["rpn_nms_thresh"] = hp["rpn_nms_thresh"]
        if hp.get("reg_class_agnostic", False):
            detector["reg_class_agnostic"] = True
        for key in ("aspect_ratios", "rpn_pre_nms_top_n", "rpn_post_nms_top_n"):
            if hp[key] is not None:
                detector[key] = list(hp[key])
        fields: dict[str, Any] = {"fpn": hp["fpn"]} if hp.get("fpn", "fpn") != "fpn" else {}
        return dict(
            **fields,
            kind="detection",
            box_type=str(BoxType(hp["box_type"])),
            neck=hp["neck"],
            out_indices=hp["out_indices"],
            num_classes=hp["num_classes"],
            in_channels=hp["in_channels"],
            fpn_channels=hp["fpn_channels"],
            anchor_sizes=list(hp["anchor_sizes"] or (32, 64, 128, 256, 512)),
            detector=detector,
        )

    def lr_lambda(self, total: int) -> Callable[[int], float]:
        """``DenseTask``'s schedules, plus ``step`` with ``lr_steps`` in epochs (one epoch is the
        trainer's optimiser steps per epoch) and the ``warmup_ratio`` warm-up."""
        hp = self.hp
        warmup, schedule, ratio = int(hp["warmup_steps"]), str(hp["schedule"]), hp.get("warmup_ratio")
        milestones: list[int] = []
        if schedule == "step":
            trainer = self._trainer
            batches = getattr(trainer, "num_training_batches", None) if trainer is not None else None
            accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
            if not isinstance(batches, int | float) or not math.isfinite(batches) or batches < 1:
                raise ValueError("schedule 'step' counts epochs: the trainer's batches per epoch are unknown")
            milestones = step_milestones(hp["lr_steps"], max(1, math.ceil(int(batches) / accumulate)))
        gamma = float(hp.get("lr_gamma", 0.1))
        lr_factor(0, total, warmup, schedule)  # validates the schedule name early
        return lambda step: lr_factor(
            step, total, warmup, schedule, milestones=milestones, gamma=gamma, warmup_ratio=ratio
        )

    def configure_losses(self) -> None:
        """The detector computes its own losses (RPN objectness / box, classifier, box regression)."""

    def configure_metrics(self) -> None:
        """Predictions and ground truth are gathered per epoch; AP is computed at the epoch end."""
        self._eval_store: dict[str, list[dict[str, Tensor]]] = {"val": [], "test": []}

    # ------------------------------------------------------------------ properties
    @property
    def box_type(self) -> BoxType:
        return BoxType(self.hp["box_type"])

    # ------------------------------------------------------------------ steps
    def forward(
        self, x: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: the loss dict; eval: per image ``boxes`` ((N, 4) or (N, 5)), ``scores``, ``labels``."""
        return self.model(x, targets)

    def training_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        x = batch["image"].float()
        # the math kernel under CPU bf16 for short sequences, as DenseTask's step (models.attention)
        with training_attention(vit_tokens(self.backbone, x.shape[-2:])):
            losses = self.model(x, targets_from_batch(batch, self.box_type))
        assert isinstance(losses, dict)
        loss: Tensor = sum(losses.values())  # type: ignore[assignment]
        b = x.shape[0]
        self.log_dict({f"train_{k}": v for k, v in losses.items()}, batch_size=b)
        self.log("train_loss", loss, batch_size=b, prog_bar=True, on_epoch=True, on_step=True)
        return loss

    def _eval_step(self, batch: Any, stage: str) -> None:
        x = batch["image"].float()
        targets = targets_from_batch(batch, self.box_type)
        preds = self.model(x)
        assert isinstance(preds, list)
        difficult = batch.get("difficult")
        for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
            entry = {
                "pred_boxes": p["boxes"].detach().cpu(),
                "scores": p["scores"].detach().cpu(),
                "pred_labels": p["labels"].detach().cpu(),
                "gt_boxes": (t["obb"] if self.box_type == BoxType.OBB else t["boxes"]).cpu(),
                "gt_labels": t["labels"].cpu(),
            }
            if self.box_type == BoxType.OBB:  # AP on the annotated quadrilaterals themselves
                entry["gt_polys"] = torch.as_tensor(batch["bbox_xyxyxyxy"][i]).float().reshape(-1, 8).cpu()
            if difficult is not None:
                entry["difficult"] = torch.as_tensor(difficult[i]).bool().reshape(-1).cpu()
            if "masks" in p:  # Mask R-CNN: RLE, so a whole split's masks fit in memory
                entry["pred_rles"] = masks_to_rle(p["masks"])
                entry["gt_rles"] = masks_to_rle(t["masks"])
            self._eval_store[stage].append(entry)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test")

    def predict_step(  # type: ignore[override]
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> list[dict[str, Tensor]]:
        """Per-image detections (``boxes``, ``scores``, ``labels``)."""
        preds = self.model(batch["image"].float())
        assert isinstance(preds, list)
        return preds

    def on_train_epoch_end(self) -> None:
        pass

    def _log_map(self, stage: str) -> None:
        """AP over the whole split: under DDP every rank's images first (``gather_eval_store``),
        so each rank computes and logs the same value (hence no ``sync_dist``)."""
        store = gather_eval_store(self._eval_store[stage])  # a collective: every rank calls it
        self._eval_store[stage].clear()
        if not store:
            return
        scores = detection_scores(store, self.box_type, self.class_names)
        self.log_dict({f"{stage}_{k}": v for k, v in scores.items()}, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_map("val")

    def on_test_epoch_end(self) -> None:
        self._log_map("test")

    # ------------------------------------------------------------------ the model card
    def model_card(self) -> Any:
        """As for segmentation, with object-class colours (no black background entry by default)."""
        if self.hp.get("class_colors") is None:
            palette = DEFAULT_COLORS[1:]
            self.hparams["class_colors"] = [list(palette[i % len(palette)]) for i in range(self.num_classes)]
        return super().model_card()


def gather_eval_store(store: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """Every rank's per-image entries (predictions and ground truth, CPU tensors), rank by rank,
    when ``torch.distributed`` is initialised with more than one process; else ``store`` itself.

    AP is not a mean over images, so per-rank values cannot be averaged: the entries are gathered
    (``all_gather_object``) and AP computed once on the whole split.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(store)
    parts: list[list[dict[str, Tensor]] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(store))
    return [entry for part in parts for entry in (part or [])]


def detection_scores(
    store: list[dict[str, Any]], box_type: BoxType, class_names: list[str]
) -> dict[str, float]:
    """``map50`` (VOC07 AP50 on the task's boxes); for obb ``map50_hbb`` on horizontal envelopes;
    for Mask R-CNN entries (``pred_rles`` / ``gt_rles``) ``segm_map``, COCO mask AP (``mask_ap``).

    The evaluator is ``vitp_geo.evaluation.detection_map.evaluate_voc`` (DOTA devkit rules: polygon
    IoU strictly above 0.5, 11-point AP; ``difficult`` objects neither count nor hurt; oriented
    ground truth is the annotated quadrilaterals, ``gt_polys``). A split without any object has
    no AP: 0 is logged.

    Args:
        store: per image ``pred_boxes``, ``scores``, ``pred_labels``, ``gt_boxes``, ``gt_labels``.
        box_type: what ``pred_boxes`` / ``gt_boxes`` hold ((N, 4) or (N, 5)).
        class_names: the K class names.
    """
    from vitp_geo.evaluation.detection_map import evaluate_voc

    def run(oriented: bool) -> float:
        gt: dict[str, dict[str, Tensor]] = {}
        pred: dict[str, dict[str, Tensor]] = {}
        for i, s in enumerate(store):
            pb, gb = s["pred_boxes"], s["gt_boxes"]
            if oriented:
                polys = s["gt_polys"] if "gt_polys" in s else obb_to_poly(gb.reshape(-1, 5))
                gt[str(i)] = {"bbox_xyxyxyxy": polys, "label": s["gt_labels"]}
                pred[str(i)] = {
                    "bbox_xyxyxyxy": obb_to_poly(pb.reshape(-1, 5)),
                    "label": s["pred_labels"],
                    "score": s["scores"],
                }
                continue
            if box_type == BoxType.OBB:  # oriented → horizontal envelopes
                pb, gb = obb_to_hbb(pb.reshape(-1, 5)), obb_to_hbb(gb.reshape(-1, 5))
            gt[str(i)] = {"bbox_xyxy": gb.reshape(-1, 4), "label": s["gt_labels"]}
            if "difficult" in s:
                gt[str(i)]["difficult"] = s["difficult"]
            pred[str(i)] = {"bbox_xyxy": pb.reshape(-1, 4), "label": s["pred_labels"], "score": s["scores"]}
        if oriented:
            for i, s in enumerate(store):
                if "difficult" in s:
                    gt[str(i)]["difficult"] = s["difficult"]
        result = evaluate_voc(gt, pred, class_names, metric="voc07", iou_threshold=0.5)
        return 0.0 if result.mean_ap is None else float(result.mean_ap)

    if box_type == BoxType.OBB:
        return {"map50": run(True), "map50_hbb": run(False)}
    scores = {"map50": run(False)}
    if store and all("pred_rles" in s for s in store):
        scores["segm_map"] = mask_ap(store, class_names)
    return scores


def mask_ap(store: list[dict[str, Any]], class_names: list[str]) -> float:
    """COCO mask AP@[.5:.95] (``evaluate_coco`` with ``iou_type="segm"``) of entries holding
    ``pred_rles`` / ``gt_rles`` besides the boxes; 0 for a split without any object."""
    from vitp_geo.evaluation.detection_map import evaluate_coco

    gt = {
        str(i): {"bbox_xyxy": s["gt_boxes"], "label": s["gt_labels"], "segmentation": s["gt_rles"]}
        for i, s in enumerate(store)
    }
    pred = {
        str(i): {
            "bbox_xyxy": s["pred_boxes"],
            "label": s["pred_labels"],
            "score": s["scores"],
            "segmentation": s["pred_rles"],
        }
        for i, s in enumerate(store)
    }
    result = evaluate_coco(gt, pred, class_names, iou_type="segm")
    return 0.0 if result.mean_ap is None else float(result.mean_ap)


def predict_task_results(
    task: ObjectDetectionTask, dataloader: Any, progress: bool = False
) -> dict[str, dict[str, Tensor]]:
    """Detections over ``dataloader`` keyed by image id, as ``write_task_results`` takes them.

    Each value holds ``bbox_xyxyxyxy`` (N, 8) corners (oriented boxes through ``obb_to_poly``,
    horizontal ones as their four corners), ``label`` (N,) and ``score`` (N,).

    Raises:
        ValueError: the batches carry no ``image_id`` (``DetectionFilesDataModule`` provides them).
    """
    from tqdm import tqdm

    out: dict[str, dict[str, Tensor]] = {}
    task.eval()
    with torch.inference_mode():
        for batch in tqdm(dataloader, desc="predict", disable=not progress, dynamic_ncols=True):
            ids = batch.get("image_id")
            if ids is None:
                raise ValueError("the test split's samples have no image_id: Task1 files need image names")
            preds = task.model(batch["image"].float().to(task.device))
            for image_id, p in zip(ids, preds, strict=True):
                boxes = p["boxes"].detach().float().cpu()
                if boxes.shape[-1] == 5:
                    corners = obb_to_poly(boxes).reshape(-1, 8)
                else:
                    x1, y1, x2, y2 = boxes.reshape(-1, 4).unbind(1)
                    corners = torch.stack([x1, y1, x2, y1, x2, y2, x1, y2], 1)
                out[str(image_id)] = {
                    "bbox_xyxyxyxy": corners,
                    "label": p["labels"].detach().cpu().long(),
                    "score": p["scores"].detach().cpu().float(),
                }
    return out
