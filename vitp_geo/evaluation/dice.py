"""Dice as medical segmentation papers report it: per case, then averaged; and pooled, as mmseg does.

Two averages answer different questions and both are reported:

- **per-case Dice** (nnU-Net, MONAI, the BraTS and AMOS challenges): for every case and class
  ``2 TP / (2 TP + FP + FN)``, then the mean over cases per class, then the mean over classes.
  A small structure missed in one case costs that case a whole point.
- **pooled Dice** (mmsegmentation's ``mDice``, which the ViTP paper's 2D numbers use): TP, FP and
  FN summed over every slice of every case first, then ``2 TP / (2 TP + FP + FN)`` per class, then
  the mean over classes. Summing over 2D slices equals summing over the voxels of the volumes, so
  it does not matter whether the slices are scored one by one or the volumes at once; large
  structures dominate it.

The rule for a class that is absent from a case's ground truth (:class:`EmptyRule`) must be
stated with the number; it moves per-case means by several points.

Everything is computed from one confusion matrix per case over the label values present
(:func:`confusion_matrix`), so a class can be a single label or a region (a set of labels, as the
BraTS regions are) without reading the volumes again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

__all__ = [
    "BRATS_LABELS",
    "BRATS_REGIONS",
    "CaseConfusion",
    "DiceReport",
    "EmptyRule",
    "SegClass",
    "confusion_matrix",
    "counts_for",
    "dice_from_counts",
    "dice_report",
    "per_case_dice",
]


class EmptyRule(StrEnum):
    """Dice of a class in a case whose ground truth does not contain it.

    - ``ignore`` (nnU-Net): when neither ground truth nor prediction contains the class
      (TP + FP + FN = 0) the Dice is NaN and the case is left out of that class's mean; a
      prediction on an empty ground truth scores 0.
    - ``brats`` (BraTS challenge; MONAI ``DiceMetric(ignore_empty=False)``): 1 when the
      prediction is empty too, else 0, and every case counts.
    """

    IGNORE = "ignore"
    BRATS = "brats"


@dataclass(frozen=True)
class SegClass:
    """A class scored by Dice: the voxels whose label is in ``labels`` (one label, or a region)."""

    name: str
    labels: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError(f"class {self.name!r} has no label values")


# BraTS 2021 labels: 1 necrotic / non-enhancing tumour core (NCR), 2 peritumoral oedema (ED),
# 4 enhancing tumour (ET; label 3 is unused). The challenge scores three nested regions.
BRATS_LABELS: tuple[int, ...] = (0, 1, 2, 4)
BRATS_REGIONS: tuple[SegClass, ...] = (
    SegClass("ET", (4,)),  # enhancing tumour
    SegClass("TC", (1, 4)),  # tumour core = NCR + ET
    SegClass("WT", (1, 2, 4)),  # whole tumour = NCR + ED + ET
)


@dataclass
class CaseConfusion:
    """Voxel counts of one case: ``matrix[g, p]`` voxels with ground truth ``values[g]``, prediction ``values[p]``."""

    values: tuple[int, ...]
    matrix: np.ndarray  # (K, K) int64


def confusion_matrix(pred: np.ndarray, gt: np.ndarray) -> CaseConfusion:
    """Confusion matrix over the label values present in either array.

    Args:
        pred: integer labels, any shape.
        gt: integer labels, the same shape.

    Raises:
        ValueError: shape mismatch, negative or non-integer labels.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground truth shape {gt.shape}")
    for name, a in (("prediction", pred), ("ground truth", gt)):
        if a.dtype.kind not in "iub":
            if not np.all(a == np.round(a)):
                bad = a[a != np.round(a)].flat[0]
                raise ValueError(f"{name} holds a non-integer label value {bad}")
        if a.size and a.min() < 0:
            raise ValueError(f"{name} holds a negative label value {int(a.min())}")
    p = pred.astype(np.int64, copy=False).ravel()
    g = gt.astype(np.int64, copy=False).ravel()
    values = np.union1d(np.unique(p), np.unique(g))
    k = len(values)
    pi = np.searchsorted(values, p)
    gi = np.searchsorted(values, g)
    matrix = np.bincount(gi * k + pi, minlength=k * k).reshape(k, k)
    return CaseConfusion(tuple(int(v) for v in values), matrix)


def counts_for(conf: CaseConfusion, cls: SegClass) -> tuple[int, int, int]:
    """``(TP, FP, FN)`` of one class (or region) from a case's confusion matrix."""
    inside = np.isin(np.asarray(conf.values), cls.labels)
    m = conf.matrix
    tp = int(m[np.ix_(inside, inside)].sum())
    fp = int(m[np.ix_(~inside, inside)].sum())
    fn = int(m[np.ix_(inside, ~inside)].sum())
    return tp, fp, fn


def dice_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, rule: EmptyRule | str) -> np.ndarray:
    """``2 TP / (2 TP + FP + FN)`` elementwise with the empty-ground-truth rule.

    Args:
        tp, fp, fn: counts, any (equal) shape.
        rule: what an empty ground truth scores (see :class:`EmptyRule`).

    Returns:
        float64 array of the same shape (NaN where the rule says "left out").
    """
    rule = EmptyRule(rule)
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)
    if rule is EmptyRule.BRATS:
        gt_empty = (tp + fn) == 0
        pred_empty = (tp + fp) == 0
        dice = np.where(gt_empty, np.where(pred_empty, 1.0, 0.0), dice)
    return dice


def per_case_dice(
    pred: np.ndarray, gt: np.ndarray, classes: Sequence[SegClass], rule: EmptyRule | str
) -> np.ndarray:
    """Dice of each class in one case, shape ``(len(classes),)``."""
    conf = confusion_matrix(pred, gt)
    c = np.asarray([counts_for(conf, cls) for cls in classes], dtype=np.int64).reshape(-1, 3)
    return dice_from_counts(c[:, 0], c[:, 1], c[:, 2], rule)


@dataclass
class DiceReport:
    """Dice of a set of cases.

    Attributes:
        classes: the scored classes/regions, in column order.
        cases: case names, in row order.
        counts: ``(N, C, 3)`` int64 TP, FP, FN per case and class.
        rule: the empty-ground-truth rule.
        background: the background class (label 0), scored only in the pooled mean "with
            background" that mmseg prints; None for regions.
        background_counts: ``(N, 3)`` TP, FP, FN of the background.
    """

    classes: list[SegClass]
    cases: list[str]
    counts: np.ndarray
    rule: EmptyRule
    background: SegClass | None = None
    background_counts: np.ndarray | None = field(default=None, repr=False)

    @property
    def per_case(self) -> np.ndarray:
        """``(N, C)`` Dice per case and class (NaN = left out under ``ignore``)."""
        c = self.counts
        return dice_from_counts(c[..., 0], c[..., 1], c[..., 2], self.rule)

    @property
    def mean_per_class(self) -> np.ndarray:
        """``(C,)`` mean over cases of the per-case Dice, NaN cases left out."""
        return _nanmean(self.per_case, axis=0)

    @property
    def cases_counted(self) -> np.ndarray:
        """``(C,)`` how many cases entered each class's mean."""
        return np.isfinite(self.per_case).sum(axis=0)

    @property
    def mean_dice(self) -> float:
        """Mean over classes of :attr:`mean_per_class` (classes with no counted case left out)."""
        return float(_nanmean(self.mean_per_class, axis=0))

    @property
    def pooled_per_class(self) -> np.ndarray:
        """``(C,)`` Dice from TP, FP, FN summed over all cases (all slices); NaN for a class never seen."""
        s = self.counts.sum(axis=0)
        return dice_from_counts(s[:, 0], s[:, 1], s[:, 2], EmptyRule.IGNORE)

    @property
    def pooled_mdice(self) -> float:
        """Mean of :attr:`pooled_per_class` over the scored (foreground) classes."""
        return float(_nanmean(self.pooled_per_class, axis=0))

    @property
    def pooled_mdice_with_background(self) -> float | None:
        """mmseg's ``mDice`` when background is one of its classes: the pooled mean including label 0."""
        if self.background_counts is None:
            return None
        s = self.background_counts.sum(axis=0)
        bg = dice_from_counts(s[0], s[1], s[2], EmptyRule.IGNORE)
        return float(_nanmean(np.append(self.pooled_per_class, bg), axis=0))


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    n = np.isfinite(a).sum(axis=axis)
    s = np.where(np.isfinite(a), a, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.where(n > 0, n, 1), np.nan)


def dice_report(
    confusions: Mapping[str, CaseConfusion] | Iterable[tuple[str, CaseConfusion]],
    classes: Sequence[SegClass],
    rule: EmptyRule | str,
    background: SegClass | None = None,
) -> DiceReport:
    """Score cases from their confusion matrices.

    Args:
        confusions: case name -> :class:`CaseConfusion` (from :func:`confusion_matrix`).
        classes: classes or regions to score.
        rule: the empty-ground-truth rule.
        background: scored only for :attr:`DiceReport.pooled_mdice_with_background`.
    """
    items = list(confusions.items()) if isinstance(confusions, Mapping) else list(confusions)
    if not items:
        raise ValueError("no cases to score")
    if not classes:
        raise ValueError("no classes to score")
    counts = np.asarray(
        [[counts_for(conf, cls) for cls in classes] for _, conf in items], dtype=np.int64
    ).reshape(len(items), len(classes), 3)
    bg = None
    if background is not None:
        bg = np.asarray([counts_for(conf, background) for _, conf in items], dtype=np.int64).reshape(-1, 3)
    return DiceReport(list(classes), [n for n, _ in items], counts, EmptyRule(rule), background, bg)
