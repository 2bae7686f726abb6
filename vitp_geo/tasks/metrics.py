"""Dense-prediction scores from a torchmetrics confusion matrix.

The matrix (rows = reference class, columns = predicted class; ``ignore_index`` pixels left
out) is accumulated by ``torchmetrics.classification.MulticlassConfusionMatrix`` — which also
synchronises it across processes — and every score is derived from it by :func:`vitp_geo.evaluation.confusion.scores_from_confusion`
(the one place mIoU is computed; the ridge probe's mIoU uses it too):

* per class: IoU = TP / (TP + FP + FN), F1 = 2·TP / (2·TP + FP + FN), precision = TP / (TP + FP),
  recall = TP / (TP + FN); NaN where the denominator is 0 (class absent from reference and
  prediction);
* mean IoU / mean F1: the mean over classes that are not NaN (mmsegmentation's convention);
* overall accuracy: trace / total.

For change detection the change class is class 1 of a two-class matrix.
"""

from __future__ import annotations

from torchmetrics.classification import MulticlassConfusionMatrix

from vitp_geo.evaluation.confusion import scores_from_confusion

__all__ = ["confusion_metric", "scores_from_confusion"]


def confusion_metric(num_classes: int, ignore_index: int | None) -> MulticlassConfusionMatrix:
    """The accumulator: (K, K) counts of (reference, predicted) pixels."""
    return MulticlassConfusionMatrix(num_classes=num_classes, ignore_index=ignore_index)
