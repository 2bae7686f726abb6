"""Detection mAP as papers report it: VOC07 / VOC12 AP on polygon IoU (DOTA devkit rules) and COCO.

Inputs are torchgeo-style samples keyed by image id (the file stem):

* ground truth: ``bbox_xyxyxyxy`` (N, 8) corners or ``bbox_xyxy`` (N, 4), ``label`` (N,) int,
  optional ``difficult`` (N,) bool;
* predictions: the same box keys, ``label`` (N,) and ``score`` (N,).

VOC AP (``voc07``, ``voc12``) follows ``dota_evaluation_task1.py`` of the DOTA devkit, class by
class:

* every box is a polygon (horizontal boxes become axis-aligned rectangles, so both box types go
  through the same code); IoU is exact polygon IoU (``quad_iou`` for convex quadrilaterals, shapely
  for the rare non-convex annotation);
* detections are visited by descending score (stable: ties keep their input order); each takes
  the ground-truth object of its image with the highest IoU; it is a true positive when that IoU
  is **strictly greater** than the threshold and the object is not yet matched, a false positive
  otherwise (also when its best object was already taken);
* a detection whose best object is ``difficult`` is neither, and difficult objects do not count
  in the number of positives (recall);
* ``voc07`` is the 11-point interpolated AP (thresholds ``np.arange(0, 1.1, 0.1)`` as in the
  devkit), ``voc12`` the area under the monotone precision envelope (all points);
* a class without positives has no AP (``None``) and is left out of the mean.

COCO mAP@[.5:.95] (``coco``) is torchmetrics' ``MeanAveragePrecision`` with the pycocotools
backend on axis-aligned boxes (polygons are reduced to their bounds); difficult flags are ignored,
as COCO has none. With ``iou_type="segm"`` it is the mask AP instead (COCO ``segm``, Mask
R-CNN's): samples then carry ``segmentation``, one pycocotools RLE dict per object (``masks_to_rle``
makes them from (N, H, W) masks; ``io.annotations.coco`` reads them from files).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from shapely.geometry import Polygon
from shapely.validation import make_valid
from torch import Tensor

from vitp_geo.geometry.obb import is_convex_quad, quad_iou

__all__ = [
    "APMetric",
    "ClassAP",
    "DetectionMetrics",
    "VOCMeanAP",
    "evaluate_coco",
    "evaluate_detections",
    "evaluate_voc",
    "masks_to_rle",
    "polygon_iou",
    "sample_polygons",
    "voc_ap",
]

log = logging.getLogger(__name__)

Sample = Mapping[str, Tensor]


class APMetric(StrEnum):
    """Which average precision."""

    VOC07 = "voc07"  # PASCAL VOC 2007 11-point interpolated AP (DOTA, DIOR-R, RSAR papers)
    VOC12 = "voc12"  # all-point AP (area under the precision envelope)
    COCO = "coco"  # mean AP over IoU 0.50:0.05:0.95, 101-point (DIOR, SARDet-100K, SSDD papers)


@dataclass(frozen=True)
class ClassAP:
    """One class's result: AP, final recall, and counts (positives exclude difficult objects)."""

    ap: float | None
    recall: float | None
    num_gt: int
    num_pred: int


@dataclass(frozen=True)
class DetectionMetrics:
    """mAP over the classes that have positives, with the per-class results."""

    metric: APMetric
    iou_threshold: float | None  # None for COCO (averaged over thresholds)
    mean_ap: float | None
    per_class: dict[str, ClassAP]
    iou_type: str = "bbox"  # COCO only: ``segm`` for mask AP

    def to_dict(self) -> dict[str, Any]:
        """``{"mAP", "metric", "iou_threshold", "per_class": {name: {"ap", "recall", "num_gt", "num_pred"}}}``."""
        return {
            "mAP": self.mean_ap,
            "metric": str(self.metric),
            "iou_threshold": self.iou_threshold,
            **({"iou_type": self.iou_type} if self.iou_type != "bbox" else {}),
            "per_class": {
                k: {"ap": v.ap, "recall": v.recall, "num_gt": v.num_gt, "num_pred": v.num_pred}
                for k, v in self.per_class.items()
            },
        }

    def table(self) -> str:
        """A plain-text per-class table with the mean on the last line."""
        width = max([5, *(len(k) for k in self.per_class)])

        def fmt(v: float | None) -> str:
            return "     -" if v is None else f"{100 * v:6.2f}"

        lines = [f"{'class':<{width}}  {'AP':>6}  {'recall':>6}  {'gts':>6}  {'dets':>6}"]
        for k, v in self.per_class.items():
            lines.append(f"{k:<{width}}  {fmt(v.ap)}  {fmt(v.recall)}  {v.num_gt:>6}  {v.num_pred:>6}")
        thr = "" if self.iou_threshold is None else f"@{self.iou_threshold:g}"
        kind = f" {self.iou_type}" if self.iou_type != "bbox" else ""
        lines.append(f"{'mAP':<{width}}  {fmt(self.mean_ap)}  ({self.metric}{kind}{thr})")
        return "\n".join(lines)


def voc_ap(recall: np.ndarray, precision: np.ndarray, metric: APMetric | str) -> float:
    """AP from the cumulative recall / precision of a ranked list.

    Args:
        recall: (K,) non-decreasing recall after each detection.
        precision: (K,) precision after each detection.
        metric: ``voc07`` (11-point) or ``voc12`` (all points).

    Returns:
        AP in [0, 1].
    """
    metric = APMetric(metric)
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if metric is APMetric.VOC07:
        total = 0.0
        for t in np.arange(0.0, 1.1, 0.1):  # the devkit's thresholds, float quirks included
            reached = recall >= t
            total += precision[reached].max() if reached.any() else 0.0
        return float(total / 11.0)
    if metric is APMetric.VOC12:
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[0.0], precision, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
        step = np.nonzero(mrec[1:] != mrec[:-1])[0]
        return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))
    raise ValueError(f"voc_ap computes voc07 or voc12, got {metric}")


def sample_polygons(sample: Sample, where: str = "sample") -> np.ndarray:
    """The boxes of a sample as (N, 8) float64 polygons (axis-aligned ones from ``bbox_xyxy``)."""
    if "bbox_xyxyxyxy" in sample:
        p = torch.as_tensor(sample["bbox_xyxyxyxy"]).double().reshape(-1, 8)
        return p.numpy()
    if "bbox_xyxy" in sample:
        b = torch.as_tensor(sample["bbox_xyxy"]).double().reshape(-1, 4).numpy()
        x1, y1, x2, y2 = b.T
        return np.stack([x1, y1, x2, y1, x2, y2, x1, y2], 1)
    raise ValueError(f"{where} has neither 'bbox_xyxyxyxy' nor 'bbox_xyxy' (keys: {sorted(sample)})")


def _sample_hbb(sample: Sample, where: str) -> np.ndarray:
    if "bbox_xyxy" in sample and "bbox_xyxyxyxy" not in sample:
        return torch.as_tensor(sample["bbox_xyxy"]).double().reshape(-1, 4).numpy()
    p = sample_polygons(sample, where).reshape(-1, 4, 2)
    return np.concatenate([p.min(1), p.max(1)], 1)


def polygon_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact IoU of quadrilaterals (N, 8) x (M, 8) → (N, M) float64.

    Convex ones go through the tensor ``quad_iou``; pairs involving a non-convex or
    self-intersecting polygon are computed with shapely (on its repaired geometry).
    """
    ta, tb = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    iou = quad_iou(ta, tb).numpy()
    ca, cb = is_convex_quad(ta).numpy(), is_convex_quad(tb).numpy()
    if ca.all() and cb.all():
        return iou
    shapes_a = [_shape(p) for p in a]
    shapes_b = [_shape(p) for p in b]
    for i, j in zip(*np.nonzero(~ca[:, None] | ~cb[None, :]), strict=True):
        inter = shapes_a[i].intersection(shapes_b[j]).area
        union = shapes_a[i].area + shapes_b[j].area - inter
        iou[i, j] = inter / union if union > 0 else 0.0
    return iou


def _shape(p: np.ndarray) -> Any:
    poly = Polygon(np.asarray(p, np.float64).reshape(4, 2))
    return poly if poly.is_valid else make_valid(poly)


def _labels(sample: Sample, n: int, where: str) -> np.ndarray:
    if "label" not in sample:
        raise ValueError(f"{where} has no 'label'")
    lab = torch.as_tensor(sample["label"]).reshape(-1).numpy().astype(np.int64)
    if len(lab) != n:
        raise ValueError(f"{where} has {n} boxes but {len(lab)} labels")
    return lab


def _check_images(gt: Mapping[str, Sample], pred: Mapping[str, Sample]) -> None:
    extra = sorted(set(pred) - set(gt))
    if extra:
        raise ValueError(
            f"predictions for {len(extra)} image(s) without ground truth, e.g. {extra[:3]} "
            f"(ground truth has {len(gt)} images, e.g. {sorted(gt)[:3]})"
        )


def evaluate_voc(
    gt: Mapping[str, Sample],
    pred: Mapping[str, Sample],
    class_names: Sequence[str],
    *,
    metric: APMetric | str = APMetric.VOC07,
    iou_threshold: float = 0.5,
) -> DetectionMetrics:
    """VOC07 / VOC12 AP per class on polygon IoU, with the DOTA devkit's matching rules.

    Args:
        gt: image id → ground-truth sample (see the module docstring).
        pred: image id → prediction sample (``score`` needed); images may be missing (no
            detections) but not unknown.
        class_names: names of the class ids ``0 .. C-1``.
        metric: ``voc07`` or ``voc12``.
        iou_threshold: a match needs IoU strictly above this.

    Returns:
        The per-class AP and their mean over classes with positives.
    """
    metric = APMetric(metric)
    if metric is APMetric.COCO:
        raise ValueError("evaluate_voc computes voc07 or voc12; use evaluate_coco for coco")
    if not 0 <= iou_threshold < 1:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    _check_images(gt, pred)
    n_cls = len(class_names)
    # per class: ground truth per image, and the detections as (score, image, iou row)
    gts: list[dict[str, tuple[np.ndarray, np.ndarray]]] = [{} for _ in range(n_cls)]
    npos = np.zeros(n_cls, np.int64)
    for img, s in gt.items():
        polys = sample_polygons(s, f"ground truth of {img}")
        lab = _labels(s, len(polys), f"ground truth of {img}")
        diff = torch.as_tensor(s.get("difficult", torch.zeros(len(polys), dtype=torch.bool))).numpy()
        diff = diff.reshape(-1).astype(bool)
        _check_range(lab, n_cls, f"ground truth of {img}")
        for c in np.unique(lab):
            m = lab == c
            gts[c][img] = (polys[m], diff[m])
            npos[c] += int((~diff[m]).sum())
    scores: list[list[np.ndarray]] = [[] for _ in range(n_cls)]
    best_iou: list[list[np.ndarray]] = [[] for _ in range(n_cls)]
    best_difficult: list[list[np.ndarray]] = [[] for _ in range(n_cls)]
    best_key: list[list[np.ndarray]] = [[] for _ in range(n_cls)]  # (image number, object) pairs
    for k, (img, s) in enumerate(pred.items()):
        polys = sample_polygons(s, f"predictions for {img}")
        lab = _labels(s, len(polys), f"predictions for {img}")
        _check_range(lab, n_cls, f"predictions for {img}")
        if "score" not in s:
            raise ValueError(f"predictions for {img} have no 'score'")
        sc = torch.as_tensor(s["score"]).double().reshape(-1).numpy()
        for c in np.unique(lab):
            m = lab == c
            scores[c].append(sc[m])
            if img in gts[c]:
                g_polys, g_diff = gts[c][img]
                iou = polygon_iou(polys[m], g_polys)  # (D, G)
                j = iou.argmax(1)
                best_iou[c].append(iou[np.arange(len(j)), j])
                best_difficult[c].append(g_diff[j])
                best_key[c].append(np.stack([np.full(len(j), k), j], 1))
            else:
                d = int(m.sum())
                best_iou[c].append(np.zeros(d))
                best_difficult[c].append(np.zeros(d, bool))
                best_key[c].append(np.zeros((d, 2), np.int64))
    per_class: dict[str, ClassAP] = {}
    for c, name in enumerate(class_names):
        n_pred = int(sum(len(x) for x in scores[c]))
        if npos[c] == 0:
            per_class[name] = ClassAP(None, None, 0, n_pred)
            continue
        if n_pred == 0:
            per_class[name] = ClassAP(0.0, 0.0, int(npos[c]), 0)
            continue
        sc = np.concatenate(scores[c])
        order = np.argsort(-sc, kind="stable")
        ov = np.concatenate(best_iou[c])[order]
        dif = np.concatenate(best_difficult[c])[order]
        key = np.concatenate(best_key[c])[order]
        tp, fp = _match(ov, dif, key, iou_threshold)
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        rec = ctp / npos[c]
        prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        per_class[name] = ClassAP(voc_ap(rec, prec, metric), float(rec[-1]), int(npos[c]), n_pred)
    return DetectionMetrics(metric, iou_threshold, _mean(per_class), per_class)


def _match(ov: np.ndarray, dif: np.ndarray, key: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray]:
    """True / false positives of ranked detections from their best IoU and best object."""
    tp = np.zeros(len(ov))
    fp = np.zeros(len(ov))
    taken: set[tuple[int, int]] = set()
    for d in range(len(ov)):
        if ov[d] > thr:  # strictly above
            if dif[d]:
                continue  # best object is difficult: neither true nor false positive
            k = (int(key[d, 0]), int(key[d, 1]))
            if k in taken:
                fp[d] = 1  # a duplicate of an object already found
            else:
                taken.add(k)
                tp[d] = 1
        else:
            fp[d] = 1
    return tp, fp


def _check_range(lab: np.ndarray, n_cls: int, where: str) -> None:
    bad = lab[(lab < 0) | (lab >= n_cls)]
    if len(bad):
        raise ValueError(f"{where}: label {int(bad[0])} outside the {n_cls} classes")


def _mean(per_class: Mapping[str, ClassAP]) -> float | None:
    aps = [v.ap for v in per_class.values() if v.ap is not None]
    return float(np.mean(aps)) if aps else None


def masks_to_rle(masks: Tensor) -> list[dict[str, Any]]:
    """(N, H, W) binary masks → N compressed RLE dicts (pycocotools), the form ``segmentation`` takes."""
    from pycocotools import mask as mask_utils

    m = torch.as_tensor(masks).detach().cpu().to(torch.uint8).numpy()
    if m.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got {m.shape}")
    return [dict(r) for r in mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0)))] if len(m) else []


def _sample_masks(sample: Mapping[str, Any], n: int, where: str) -> Tensor:
    """The ``segmentation`` RLEs of a sample as (N, H, W) bool masks (one per box)."""
    from pycocotools import mask as mask_utils

    rles = sample.get("segmentation")
    if rles is None:
        raise ValueError(f"{where} has no 'segmentation' (mask AP needs one RLE per object)")
    if len(rles) != n:
        raise ValueError(f"{where}: {len(rles)} segmentations for {n} boxes")
    if n == 0:
        return torch.zeros((0, 1, 1), dtype=torch.bool)
    return torch.from_numpy(mask_utils.decode(list(rles)).transpose(2, 0, 1).astype(bool))


def evaluate_coco(
    gt: Mapping[str, Sample],
    pred: Mapping[str, Sample],
    class_names: Sequence[str],
    *,
    max_detections: int = 100,
    iou_type: str = "bbox",
) -> DetectionMetrics:
    """COCO mAP@[.5:.95] via torchmetrics (pycocotools backend), with per-class AP and recall.

    Args:
        gt: image id → ground-truth sample.
        pred: image id → prediction sample (``score`` needed).
        class_names: names of the class ids ``0 .. C-1``.
        max_detections: detections per image considered (COCO's ``maxDets``).
        iou_type: ``bbox`` (box AP) or ``segm`` (mask AP on the samples' ``segmentation``).

    Returns:
        mAP@[.5:.95] and per class AP@[.5:.95] and recall (AR at ``max_detections``).
    """
    from torchmetrics.detection import MeanAveragePrecision

    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    _check_images(gt, pred)
    n_cls = len(class_names)
    segm = iou_type == "segm"
    metric = MeanAveragePrecision(
        box_format="xyxy",
        iou_type=iou_type,  # type: ignore[arg-type]
        class_metrics=True,
        backend="pycocotools",
        max_detection_thresholds=[1, 10, max_detections],
    )
    num_gt = np.zeros(n_cls, np.int64)
    num_pred = np.zeros(n_cls, np.int64)

    def region(s: Sample, boxes: np.ndarray, where: str) -> dict[str, Tensor]:
        if segm:  # one image at a time: torchmetrics keeps masks as RLE, decoded masks stay small
            return {"masks": _sample_masks(s, len(boxes), where)}
        return {"boxes": torch.as_tensor(boxes).float()}

    for img, s in gt.items():
        boxes = _sample_hbb(s, f"ground truth of {img}")
        lab = _labels(s, len(boxes), f"ground truth of {img}")
        _check_range(lab, n_cls, f"ground truth of {img}")
        num_gt += np.bincount(lab, minlength=n_cls)
        target = {**region(s, boxes, f"ground truth of {img}"), "labels": torch.as_tensor(lab)}
        p = pred.get(img)
        if p is None:
            empty = torch.zeros((0, 1, 1), dtype=torch.bool) if segm else torch.zeros(0, 4)
            none = {"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
            metric.update([{"masks" if segm else "boxes": empty, **none}], [target])
            continue
        pb = _sample_hbb(p, f"predictions for {img}")
        pl = _labels(p, len(pb), f"predictions for {img}")
        _check_range(pl, n_cls, f"predictions for {img}")
        if "score" not in p:
            raise ValueError(f"predictions for {img} have no 'score'")
        num_pred += np.bincount(pl, minlength=n_cls)
        ps = torch.as_tensor(p["score"]).float().reshape(-1)
        found = {**region(p, pb, f"predictions for {img}"), "scores": ps, "labels": torch.as_tensor(pl)}
        metric.update([found], [target])
    res = metric.compute()
    classes = res["classes"].reshape(-1).tolist()
    ap_c = res["map_per_class"].reshape(-1).tolist()
    ar_c = res[f"mar_{max_detections}_per_class"].reshape(-1).tolist()
    per_class: dict[str, ClassAP] = {}
    for c, name in enumerate(class_names):
        if num_gt[c] == 0 or c not in classes:
            per_class[name] = ClassAP(None, None, int(num_gt[c]), int(num_pred[c]))
            continue
        k = classes.index(c)
        per_class[name] = ClassAP(float(ap_c[k]), float(ar_c[k]), int(num_gt[c]), int(num_pred[c]))
    mean = float(res["map"]) if any(v.ap is not None for v in per_class.values()) else None
    return DetectionMetrics(APMetric.COCO, None, mean, per_class, iou_type)


def evaluate_detections(
    gt: Mapping[str, Sample],
    pred: Mapping[str, Sample],
    class_names: Sequence[str],
    metric: APMetric | str,
    *,
    iou_threshold: float = 0.5,
) -> DetectionMetrics:
    """``evaluate_voc`` or ``evaluate_coco``, by ``metric`` (``iou_threshold`` is for VOC only)."""
    metric = APMetric(metric)
    if metric is APMetric.COCO:
        return evaluate_coco(gt, pred, class_names)
    return evaluate_voc(gt, pred, class_names, metric=metric, iou_threshold=iou_threshold)


def _as_sample(d: Mapping[str, Tensor], where: str) -> dict[str, Tensor]:
    """torchvision-style (``boxes`` (N, 4 | 5 | 8), ``labels``, ``scores``) or sample-style dict → sample keys."""
    from vitp_geo.geometry.obb import obb_to_poly

    out: dict[str, Tensor] = {}
    if "bbox_xyxyxyxy" in d or "bbox_xyxy" in d:
        out["bbox_xyxyxyxy"] = torch.as_tensor(sample_polygons(d, where))
    elif "boxes" in d:
        b = torch.as_tensor(d["boxes"]).detach().double()
        if b.ndim != 2 or b.shape[1] not in (4, 5, 8):
            raise ValueError(f"{where}: boxes must be (N, 4), (N, 5) or (N, 8), got {tuple(b.shape)}")
        if b.shape[1] == 5:
            b = obb_to_poly(b)
        out["bbox_xyxyxyxy"] = torch.as_tensor(
            sample_polygons({"bbox_xyxy": b} if b.shape[1] == 4 else {"bbox_xyxyxyxy": b})
        )
    else:
        raise ValueError(f"{where} has no boxes ('boxes', 'bbox_xyxy' or 'bbox_xyxyxyxy'; keys: {sorted(d)})")
    n = len(out["bbox_xyxyxyxy"])
    lab = d.get("label", d.get("labels"))
    if lab is None:
        raise ValueError(f"{where} has no 'label' / 'labels'")
    out["label"] = torch.as_tensor(lab).detach().reshape(-1).long().cpu()
    sc = d.get("score", d.get("scores"))
    out["score"] = torch.ones(n) if sc is None else torch.as_tensor(sc).detach().reshape(-1).double().cpu()
    dif = d.get("difficult")
    out["difficult"] = (
        torch.zeros(n, dtype=torch.bool) if dif is None else torch.as_tensor(dif).reshape(-1).bool().cpu()
    )
    return out


class VOCMeanAP:
    """Accumulate detections and ground truth image by image; ``compute()`` runs ``evaluate_voc``.

    For validation loops: ``update(preds, targets)`` takes lists (one dict per image) in
    torchvision style (``boxes`` (N, 4) ``xyxy``, (N, 5) oriented or (N, 8) corners, ``labels``,
    ``scores``; targets may carry ``difficult``) or sample style (``bbox_xyxy`` /
    ``bbox_xyxyxyxy``, ``label``, ``score``). Everything is kept on the CPU. In distributed runs,
    evaluate on one rank (or gather the inputs first).

    Args:
        class_names: names of the class ids.
        metric: ``voc07`` or ``voc12``.
        iou_threshold: VOC match threshold.
    """

    def __init__(
        self, class_names: Sequence[str], metric: APMetric | str = APMetric.VOC07, iou_threshold: float = 0.5
    ) -> None:
        self.class_names = list(class_names)
        self.metric = APMetric(metric)
        self.iou_threshold = iou_threshold
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._gt: dict[str, dict[str, Tensor]] = {}
        self._pred: dict[str, dict[str, Tensor]] = {}

    def update(self, preds: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Tensor]]) -> None:
        """Add one batch: ``preds[k]`` are the detections on the image whose ground truth is ``targets[k]``."""
        if len(preds) != len(targets):
            raise ValueError(f"got {len(preds)} predictions for {len(targets)} targets")
        for p, t in zip(preds, targets, strict=True):
            key = str(len(self._gt))
            self._gt[key] = _as_sample(t, f"target {key}")
            self._pred[key] = _as_sample(p, f"prediction {key}")

    def compute(self) -> DetectionMetrics:
        """The metrics over everything added since the last ``reset``."""
        return evaluate_voc(
            self._gt, self._pred, self.class_names, metric=self.metric, iou_threshold=self.iou_threshold
        )
