"""Dense-prediction scores from a torchmetrics confusion matrix.

The matrix (rows = reference class, columns = predicted class; ``ignore_index`` pixels left
out) is accumulated by ``torchmetrics.classification.MulticlassConfusionMatrix`` — which also
synchronises it across processes — and every score is derived from it here:

* per class: IoU = TP / (TP + FP + FN), F1 = 2·TP / (2·TP + FP + FN), precision = TP / (TP + FP),
  recall = TP / (TP + FN); NaN where the denominator is 0 (class absent from reference and
  prediction);
* mean IoU / mean F1: the mean over classes that are not NaN (mmsegmentation's convention);
* overall accuracy: trace / total.

For change detection the change class is class 1 of a two-class matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix


def confusion_metric(num_classes: int, ignore_index: int | None) -> MulticlassConfusionMatrix:
    """The accumulator: (K, K) counts of (reference, predicted) pixels."""
    return MulticlassConfusionMatrix(num_classes=num_classes, ignore_index=ignore_index)


def _div(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / den.clamp(min=1e-12), torch.full_like(num, float("nan")))


def scores_from_confusion(cm: Tensor, exclude: int | None = None) -> dict[str, Tensor]:
    """Per-class and mean scores (module doc).

    Args:
        cm: (K, K) counts, rows = reference, columns = prediction.
        exclude: a class left out of the means (the ``ignore_index`` when it is a class id).

    Returns:
        ``iou``, ``f1``, ``precision``, ``recall`` (K,) and scalars ``miou``, ``mf1``, ``oa``.
    """
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got {tuple(cm.shape)}")
    cm = cm.double()
    tp = cm.diag()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    iou = _div(tp, tp + fp + fn)
    f1 = _div(2 * tp, 2 * tp + fp + fn)
    keep = torch.ones_like(tp, dtype=torch.bool)
    if exclude is not None and 0 <= exclude < len(tp):
        keep[exclude] = False
    return {
        "iou": iou,
        "f1": f1,
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
        "miou": iou[keep].nanmean(),
        "mf1": f1[keep].nanmean(),
        "oa": _div(tp.sum(), cm.sum()),
    }
