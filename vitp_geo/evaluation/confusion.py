"""Scores from a confusion matrix: per-class IoU / F1 / precision / recall, mIoU, mF1, accuracy.

The one place mIoU is computed: the dense tasks' validation (``vitp_geo.tasks.metrics``, which
accumulates the matrix with torchmetrics) and the ridge probe (``vitp_geo.evaluation.probe``) read
their scores here. Rows are the reference class, columns the prediction; a class absent from both
has NaN scores and is left out of the means (mmsegmentation's convention).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["confusion_counts", "scores_from_confusion"]


def confusion_counts(pred: Tensor, target: Tensor, n_classes: int) -> Tensor:
    """(K, K) counts of (reference, predicted) labels; ``pred`` and ``target`` hold ids in [0, K)."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have as many labels, got {pred.numel()} and {target.numel()}")
    return torch.bincount(target * n_classes + pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


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
