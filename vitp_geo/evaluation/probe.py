"""Patch-level linear probes: how much of a segmentation a frozen feature map already holds.

A probe fits one linear map from per-patch features to the patch's class (the majority class of
its pixels) by closed-form ridge regression on one-hot targets, so it has no optimiser, no
learning-rate and no seed of its own: the same features give the same probe. ``probe_miou`` reads
it out as mean IoU over classes on held-out patches. Used to check that the generated world is
not solvable from raw pixels (``raw_patch_features``) and to compare pretrained backbones
(``benchmarks/pretrain_gain.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from vitp_geo.evaluation.confusion import confusion_counts, scores_from_confusion

__all__ = ["fit_ridge_probe", "patch_labels", "predict_probe", "probe_miou", "raw_patch_features", "miou"]


def patch_labels(masks: np.ndarray, patch: int, n_classes: int) -> np.ndarray:
    """Majority class of each ``patch`` x ``patch`` cell.

    Args:
        masks: (N, H, W) integer class ids in ``[0, n_classes)``; H and W multiples of ``patch``.
        patch: cell side in pixels.
        n_classes: number of classes.

    Returns:
        (N, H/patch * W/patch) int64, row-major cells.
    """
    n, h, w = masks.shape
    if h % patch or w % patch:
        raise ValueError(f"mask size {h}x{w} is not a multiple of the patch size {patch}")
    cells = masks.reshape(n, h // patch, patch, w // patch, patch).transpose(0, 1, 3, 2, 4)
    cells = cells.reshape(n, (h // patch) * (w // patch), patch * patch).astype(np.int64)
    counts = np.stack([(cells == c).sum(-1) for c in range(n_classes)], axis=-1)  # (N, P, C)
    return counts.argmax(-1)


def raw_patch_features(images: np.ndarray, patch: int) -> np.ndarray:
    """Raw pixels of each cell as a feature vector: (N, 3, H, W) uint8 → (N, P, 3·patch²) float32."""
    n, c, h, w = images.shape
    x = images.astype(np.float32) / 255.0
    x = x.reshape(n, c, h // patch, patch, w // patch, patch).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // patch) * (w // patch), c * patch * patch)


def fit_ridge_probe(features: Tensor, labels: Tensor, n_classes: int, l2: float = 1e-2) -> Tensor:
    """Closed-form, class-balanced ridge regression of one-hot labels on standardised features.

    Args:
        features: (M, D) float.
        labels: (M,) int class ids.
        n_classes: C.
        l2: ridge strength, relative to the mean feature variance (after standardising: 1).

    Returns:
        (D + 1, C) weights for :func:`predict_probe` (the last row is the bias), with the
        standardisation folded in.
    """
    x = features.double()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)  # (M, D+1)
    y = torch.nn.functional.one_hot(labels.long(), n_classes).double()  # (M, C)
    # Class-balanced: each class weighs the same in total, so rare classes are not drowned by
    # background (the usual failure of least squares on imbalanced segmentation labels).
    counts = y.sum(0).clamp(min=1.0)
    sw = (1.0 / counts)[labels.long()]
    sw = sw * (len(x) / sw.sum())  # (M,), mean 1
    zw = z * sw[:, None]
    reg = l2 * len(x) * torch.eye(z.shape[1], dtype=x.dtype)
    reg[-1, -1] = 0.0  # no penalty on the bias
    w = torch.linalg.solve(zw.T @ z + reg, zw.T @ y)  # (D+1, C)
    folded = torch.cat([w[:-1] / std[:, None], (w[-1] - (mean / std) @ w[:-1])[None]], dim=0)
    return folded.float()


def predict_probe(weights: Tensor, features: Tensor) -> Tensor:
    """(M, D) features → (M,) predicted class ids."""
    return (features.float() @ weights[:-1] + weights[-1]).argmax(-1)


def miou(pred: Tensor, target: Tensor, n_classes: int) -> float:
    """Mean IoU over the classes present in ``target`` or ``pred`` (``evaluation.confusion``'s rule)."""
    return float(scores_from_confusion(confusion_counts(pred, target, n_classes))["miou"])


def probe_miou(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, n_classes: int, l2: float = 1e-2
) -> float:
    """Fit a ridge probe on (train_x, train_y) and return its mIoU on (test_x, test_y); (M, D) / (M,)."""
    w = fit_ridge_probe(train_x, train_y, n_classes, l2)
    return miou(predict_probe(w, test_x), test_y, n_classes)
