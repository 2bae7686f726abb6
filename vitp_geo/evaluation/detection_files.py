"""Score detection files on disk: ground truth in a dataset's own format, predictions from anyone.

This is what ``vitp-geo evaluate detection`` runs (the CLI only parses arguments).

Ground truth (``gt``) by ``format``:

* ``dota``: a ``labelTxt`` folder (or the split folder holding ``labelTxt/``);
* ``dior`` / ``dior-r``: a DIOR root (``Annotations/Horizontal Bounding Boxes``,
  ``Annotations/Oriented Bounding Boxes``, ``ImageSets/Main``) or a folder of XML files;
* ``coco``: an ``instances_*.json`` file, or a folder holding exactly one (also under
  ``annotations/``).

Predictions (``pred``): a folder of DOTA Task1 files ``Task1_<class>.txt`` (``image score x1 y1
... x4 y4``, any format) or Task2 files ``Task2_<class>.txt`` (``image score xmin ymin xmax
ymax``); for ``coco`` also a COCO results JSON (a list of ``image_id, category_id, bbox, score``
with the ground truth's ids), or a folder holding exactly one ``*.json``. Image names are file
stems (``P0003``, ``00001``, ``000001``).

Mask AP (``iou_type="segm"``, ``--iou-type segm``): ``coco`` only, ground truth with
``segmentation`` polygons or RLEs and a results JSON whose every detection has a
``segmentation`` (RLE, as pycocotools encodes it, or polygons) on its image's grid.

Classes default to the format's full list (``dota``: DOTA-v2.0's 18, a superset of v1.0 / v1.5:
classes without ground truth have no AP and are left out of the mean, so v1.0 data gets its
15-class mAP; ``dior``: DIOR's 20; ``coco``: the file's categories).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path

from torch import Tensor

from vitp_geo.evaluation.detection import APMetric, DetectionMetrics, evaluate_coco, evaluate_detections
from vitp_geo.io.annotations import (
    DIOR_CLASSES,
    DOTA_CLASSES,
    DOTA_V2_CLASSES,
    coco_classes,
    dior_split_ids,
    read_coco,
    read_coco_results,
    read_dota_labels,
    read_task_results,
    read_xml_folder,
)
from vitp_geo.io.annotations.voc import DIOR_HBB_DIR, DIOR_OBB_DIR
from vitp_geo.io.atomic import atomic_output
from vitp_geo.io.strict_json import json_safe

__all__ = ["CLASS_PRESETS", "GroundTruthFormat", "evaluate_files", "resolve_classes", "write_metrics"]

log = logging.getLogger(__name__)

Samples = dict[str, dict[str, Tensor]]


class GroundTruthFormat(StrEnum):
    """On-disk layout of the ground truth."""

    DOTA = "dota"
    DIOR = "dior"
    DIOR_R = "dior-r"
    COCO = "coco"


CLASS_PRESETS: dict[str, tuple[str, ...]] = {
    **{f"dota{v}": c for v, c in DOTA_CLASSES.items()},
    "dior": DIOR_CLASSES,
}


def resolve_classes(classes: Sequence[str] | None, fmt: GroundTruthFormat, gt: Path) -> list[str]:
    """The class list: given names, one preset name (``dota1.0``, ``dota1.5``, ``dota2.0``, ``dior``)
    or the format's default."""
    if classes:
        if len(classes) == 1 and classes[0] in CLASS_PRESETS:
            return list(CLASS_PRESETS[classes[0]])
        return list(classes)
    if fmt is GroundTruthFormat.DOTA:
        return list(DOTA_V2_CLASSES)
    if fmt in (GroundTruthFormat.DIOR, GroundTruthFormat.DIOR_R):
        return list(DIOR_CLASSES)
    return coco_classes(_coco_gt_file(gt))


def _one(folder: Path, pattern: str, what: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{folder} must hold exactly one {what} ({pattern}), found {len(found)}"
            + (f": {[p.name for p in found]}" if found else "")
            + "; pass the file itself"
        )
    return found[0]


def _coco_gt_file(gt: Path) -> Path:
    if gt.is_file():
        return gt
    if not gt.is_dir():
        raise FileNotFoundError(f"COCO ground truth not found: {gt}")
    if (gt / "annotations").is_dir():
        gt = gt / "annotations"
    return _one(gt, "*.json", "COCO ground-truth file")


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"image list not found: {path}")
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_ground_truth(
    gt: Path,
    fmt: GroundTruthFormat,
    classes: Sequence[str],
    image_ids: Sequence[str] | None,
    masks: bool = False,
) -> Samples:
    """Read the ground truth of ``format`` (see the module docstring), restricted to ``image_ids``
    (``masks``: COCO segmentations too)."""
    if fmt is GroundTruthFormat.DOTA:
        return read_dota_labels(gt, classes, image_ids)
    if fmt in (GroundTruthFormat.DIOR, GroundTruthFormat.DIOR_R):
        oriented = fmt is GroundTruthFormat.DIOR_R
        sub = gt / (DIOR_OBB_DIR if oriented else DIOR_HBB_DIR)
        return read_xml_folder(sub if sub.is_dir() else gt, classes, oriented, image_ids)
    samples = read_coco(_coco_gt_file(gt), classes, masks=masks)
    if image_ids is None:
        return samples
    missing = [i for i in image_ids if i not in samples]
    if missing:
        raise ValueError(
            f"{len(missing)} listed image(s) are not in the COCO ground truth, e.g. {missing[:3]}"
        )
    return {i: samples[i] for i in image_ids}


def load_predictions(
    pred: Path, gt: Path, fmt: GroundTruthFormat, classes: Sequence[str], masks: bool = False
) -> Samples:
    """Read Task1/Task2 result files, or (``coco``) a COCO results JSON (``masks``: with segmentations)."""
    if not masks and pred.is_dir() and (any(pred.glob("Task1_*.txt")) or any(pred.glob("Task2_*.txt"))):
        return read_task_results(pred, classes)
    if fmt is GroundTruthFormat.COCO:
        res = (
            pred if pred.is_file() else (_one(pred, "*.json", "COCO results file") if pred.is_dir() else pred)
        )
        if not res.exists():
            raise FileNotFoundError(f"predictions not found: {pred}")
        return read_coco_results(res, _coco_gt_file(gt), classes, masks=masks)
    if not pred.exists():
        raise FileNotFoundError(f"predictions not found: {pred}")
    raise FileNotFoundError(f"no Task1_<class>.txt or Task2_<class>.txt files in {pred}")


def evaluate_files(
    gt: str | Path,
    pred: str | Path,
    fmt: GroundTruthFormat | str,
    metric: APMetric | str,
    *,
    iou_threshold: float = 0.5,
    classes: Sequence[str] | None = None,
    image_list: str | Path | None = None,
    split: str | None = None,
    iou_type: str = "bbox",
) -> DetectionMetrics:
    """Read ground truth and predictions from disk and compute the metric.

    Args:
        gt: ground truth (see the module docstring).
        pred: predictions (see the module docstring).
        fmt: ``dota``, ``dior``, ``dior-r`` or ``coco``.
        metric: ``voc07``, ``voc12`` or ``coco``.
        iou_threshold: VOC match threshold (a match needs IoU strictly above it).
        classes: class names or one preset name; default the format's list.
        image_list: a file of image ids (one per line, like ``ImageSets/Main/test.txt``) to score.
        split: a DIOR split name (``ImageSets/Main/<split>.txt`` under ``gt``).
        iou_type: ``bbox`` or ``segm`` (COCO mask AP; ``coco`` format and metric only).

    Returns:
        The metrics. With an image list or split, predictions for other images are dropped (and
        logged); without, a prediction for an image without ground truth is an error.
    """
    gt, pred = Path(gt), Path(pred)
    fmt = GroundTruthFormat(fmt)
    metric = APMetric(metric)
    if not gt.exists():
        raise FileNotFoundError(f"ground truth not found: {gt}")
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    masks = iou_type == "segm"
    if masks and (fmt is not GroundTruthFormat.COCO or metric is not APMetric.COCO):
        raise ValueError("mask AP (--iou-type segm) needs --format coco and --metric coco")
    if image_list is not None and split is not None:
        raise ValueError("give an image list or a split, not both")
    ids: list[str] | None = None
    if image_list is not None:
        ids = _read_ids(Path(image_list))
    elif split is not None:
        if fmt not in (GroundTruthFormat.DIOR, GroundTruthFormat.DIOR_R):
            raise ValueError(f"--split reads DIOR's ImageSets/Main/<split>.txt; for {fmt} use an image list")
        ids = dior_split_ids(gt, split)
    names = resolve_classes(classes, fmt, gt)
    truth = load_ground_truth(gt, fmt, names, ids, masks=masks)
    preds = load_predictions(pred, gt, fmt, names, masks=masks)
    if ids is not None:
        outside = [k for k in preds if k not in truth]
        if outside:
            log.warning(
                "dropped predictions for %d image(s) outside the image list, e.g. %s",
                len(outside),
                outside[:3],
            )
            preds = {k: v for k, v in preds.items() if k in truth}
    if masks:
        return evaluate_coco(truth, preds, names, iou_type="segm")
    return evaluate_detections(truth, preds, names, metric, iou_threshold=iou_threshold)


def write_metrics(
    path: str | Path, metrics: DetectionMetrics, extra: Mapping[str, object] | None = None
) -> Path:
    """Write ``metrics.to_dict()`` (plus ``extra`` keys) as strict JSON, atomically."""
    path = Path(path)
    data = {**metrics.to_dict(), **(extra or {})}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(json_safe(data), indent=2) + "\n", encoding="utf-8")
    return path
