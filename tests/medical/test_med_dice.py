"""Per-case Dice against MONAI, the empty-ground-truth rules, BraTS regions, pooled vs per-case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitp_geo.evaluation.dice import (
    BRATS_REGIONS,
    EmptyRule,
    SegClass,
    confusion_matrix,
    dice_report,
    per_case_dice,
)

CLASSES = [SegClass(f"c{v}", (v,)) for v in (1, 2, 3)]


def _random_cases(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 4, size=(6, 9, 10, 7))
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 4, size=gt.shape))
    gt[1][gt[1] == 2] = 0  # class 2 absent from case 1's ground truth, present in its prediction
    gt[2][gt[2] == 3] = 0
    pred[2][pred[2] == 3] = 0  # class 3 absent from both in case 2
    return pred, gt


def _one_hot(a: np.ndarray, n: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(a), n).permute(0, 4, 1, 2, 3).float()


@pytest.mark.slow  # importing MONAI takes ~10-25 s on a shared 2-core CPU
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_case_dice_equals_monai(seed: int) -> None:
    DiceMetric = pytest.importorskip("monai.metrics", reason="MONAI (test extra) is the oracle").DiceMetric
    pred, gt = _random_cases(seed)
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    monai_per_case = metric(_one_hot(pred), _one_hot(gt)).numpy()  # (N, 3)
    report = dice_report(
        {f"case{i}": confusion_matrix(pred[i], gt[i]) for i in range(len(gt))}, CLASSES, "brats"
    )
    np.testing.assert_allclose(report.per_case, monai_per_case, rtol=1e-6)
    batch = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=False)
    batch(_one_hot(pred), _one_hot(gt))
    np.testing.assert_allclose(report.mean_per_class, batch.aggregate().numpy(), rtol=1e-6)
    # the two special cases really occur in this data
    assert report.per_case[1, 1] == 0.0 and report.per_case[2, 2] == 1.0


def test_ignore_rule_is_nnunets() -> None:
    pred, gt = _random_cases(0)
    report = dice_report(
        {f"case{i}": confusion_matrix(pred[i], gt[i]) for i in range(len(gt))}, CLASSES, "ignore"
    )
    # a false positive on an empty ground truth scores 0; both empty -> NaN, left out of the mean
    assert report.per_case[1, 1] == 0.0 and np.isnan(report.per_case[2, 2])
    assert report.cases_counted.tolist() == [6, 6, 5]
    expected = np.delete(report.per_case[:, 2], 2).mean()
    assert report.mean_per_class[2] == pytest.approx(expected)
    brats = dice_report(
        {f"case{i}": confusion_matrix(pred[i], gt[i]) for i in range(len(gt))}, CLASSES, "brats"
    )
    assert brats.mean_per_class[2] == pytest.approx((expected * 5 + 1.0) / 6)


def test_brats_regions_on_hand_made_cases() -> None:
    gt = np.zeros((4, 5), np.int64)
    gt[0, :] = 4  # ET: 5 voxels
    gt[1, :] = 1  # NCR: 5
    gt[2, :] = 2  # ED: 5
    pred = gt.copy()
    pred[0, :2] = 1  # 2 ET voxels predicted as NCR: inside TC and WT, wrong for ET
    pred[2, :] = 0  # oedema missed entirely: WT loses 5 voxels
    et, tc, wt = per_case_dice(pred, gt, BRATS_REGIONS, "brats")
    assert et == pytest.approx(2 * 3 / (3 + 5))  # pred ET 3, gt ET 5, overlap 3
    assert tc == pytest.approx(1.0)  # TC = {1, 4}: 10 vs 10, identical
    assert wt == pytest.approx(2 * 10 / (10 + 15))
    # a case with no enhancing tumour: the BraTS rule scores 1 when ET is also not predicted, else 0
    no_et = np.where(gt == 4, 1, gt)
    assert per_case_dice(no_et, no_et, BRATS_REGIONS, EmptyRule.BRATS)[0] == 1.0
    assert per_case_dice(gt, no_et, BRATS_REGIONS, EmptyRule.BRATS)[0] == 0.0
    assert np.isnan(per_case_dice(no_et, no_et, BRATS_REGIONS, EmptyRule.IGNORE)[0])
    # label 3 is not part of any BraTS region: it counts as background
    with_3 = gt.copy()
    with_3[3, 0] = 3
    assert per_case_dice(with_3, gt, BRATS_REGIONS, "brats")[2] == pytest.approx(1.0)


def test_pooled_and_per_case_differ_on_a_built_case() -> None:
    # case A: a large organ predicted perfectly; case B: a tiny one missed
    a = np.zeros((20, 20, 20), np.int64)
    a[2:18, 2:18, 2:18] = 1
    b = np.zeros((20, 20, 20), np.int64)
    b[5, 5, 5] = 1
    cases = {"A": confusion_matrix(a, a), "B": confusion_matrix(np.zeros_like(b), b)}
    report = dice_report(cases, [SegClass("organ", (1,))], "ignore", background=SegClass("background", (0,)))
    assert report.per_case[:, 0].tolist() == [1.0, 0.0]
    assert report.mean_dice == pytest.approx(0.5)
    n = 16**3
    assert report.pooled_mdice == pytest.approx(2 * n / (2 * n + 1))  # one missed voxel in 4097
    assert report.pooled_mdice > 0.99
    # mmseg's mDice with background averages the background class in too
    bg_tp = 2 * 20**3 - n - 1
    bg = 2 * bg_tp / (2 * bg_tp + 1)
    assert report.pooled_mdice_with_background == pytest.approx((report.pooled_mdice + bg) / 2)
    # pooling over the 2D slices of the volumes gives the same numbers as pooling over voxels
    slices = {
        f"{name}_{k}": confusion_matrix(p[:, :, k], g[:, :, k])
        for name, (p, g) in {"A": (a, a), "B": (np.zeros_like(b), b)}.items()
        for k in range(20)
    }
    assert dice_report(slices, report.classes, "ignore").pooled_mdice == pytest.approx(report.pooled_mdice)


def test_confusion_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-integer label value 0.5"):
        confusion_matrix(np.full((2, 2), 0.5), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="negative label value -1"):
        confusion_matrix(np.zeros((2, 2), int), -np.ones((2, 2), int))
