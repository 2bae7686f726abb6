"""Scores and losses checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitp_geo.tasks.losses import DiceLoss, FocalLoss, build_loss
from vitp_geo.tasks.metrics import confusion_metric, scores_from_confusion


def test_scores_from_a_hand_made_confusion_matrix() -> None:
    # rows = reference, cols = prediction
    cm = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    s = scores_from_confusion(cm)
    # class 0: tp 5, fp 2, fn 1 → IoU 5/8, F1 10/13; class 1: tp 3, fp 1, fn 2 → IoU 3/6, F1 6/9
    torch.testing.assert_close(s["iou"][:2].float(), torch.tensor([5 / 8, 3 / 6]))
    torch.testing.assert_close(s["f1"][:2].float(), torch.tensor([10 / 13, 6 / 9]))
    assert math.isnan(float(s["iou"][2]))  # absent everywhere: left out of the mean
    assert float(s["miou"]) == pytest.approx((5 / 8 + 3 / 6) / 2)
    assert float(s["oa"]) == pytest.approx(8 / 11)
    assert float(s["precision"][1]) == pytest.approx(3 / 4) and float(s["recall"][1]) == pytest.approx(3 / 5)
    assert float(scores_from_confusion(cm, exclude=1)["miou"]) == pytest.approx(5 / 8)


def test_torchmetrics_confusion_skips_ignore_index_pixels() -> None:
    metric = confusion_metric(3, ignore_index=255)
    pred = torch.tensor([[0, 1, 2, 2]])
    target = torch.tensor([[0, 1, 255, 1]])
    metric.update(pred, target)
    cm = metric.compute()
    assert cm.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    s = scores_from_confusion(cm)
    assert float(s["iou"][1]) == pytest.approx(1 / 2)  # tp 1, fn 1
    assert float(s["iou"][2]) == 0.0  # predicted but never present: a false positive


def test_change_scores_on_a_binary_example() -> None:
    metric = confusion_metric(2, None)
    pred = torch.tensor([1, 1, 0, 0, 1, 0])
    target = torch.tensor([1, 0, 0, 1, 1, 0])
    metric.update(pred, target)
    s = scores_from_confusion(metric.compute())
    # change class: tp 2, fp 1, fn 1
    assert float(s["f1"][1]) == pytest.approx(4 / 6)
    assert float(s["iou"][1]) == pytest.approx(2 / 4)
    assert float(s["precision"][1]) == pytest.approx(2 / 3)


def test_losses_ignore_index_and_reference_values() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    ignored = target.clone()
    ignored[:, 0] = 255
    # ignored pixels change nothing: same as computing on the valid pixels only
    ce = build_loss("ce", ignore_index=255)
    valid = ignored != 255
    ref = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], ignored[valid])
    torch.testing.assert_close(ce(logits, ignored), ref)
    # focal with gamma 0 is cross-entropy
    torch.testing.assert_close(FocalLoss(255, gamma=0.0)(logits, ignored), ref)
    # focal down-weights easy pixels: smaller than CE
    assert FocalLoss(255)(logits, ignored) < ref
    # dice of a perfect, confident prediction is ~0; of a wrong one ~1
    perfect = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert float(DiceLoss()(perfect, target)) < 1e-3
    wrong = F.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float() * 50
    assert float(DiceLoss()(wrong, target)) > 0.9
    # dice ignores the ignored pixels: changing their logits changes nothing
    other = logits.clone()
    other[:, :, 0] = 100.0
    torch.testing.assert_close(DiceLoss(255)(logits, ignored), DiceLoss(255)(other, ignored))
    total = build_loss("ce+dice", 255)(logits, ignored)
    torch.testing.assert_close(total, ref + DiceLoss(255)(logits, ignored))
    with pytest.raises(ValueError, match="loss must be one of"):
        build_loss("hinge")


def test_the_probe_reads_miou_from_the_same_confusion_scores_as_the_tasks() -> None:
    """One mIoU: the ridge probe's equals the tasks' (torchmetrics matrix → scores_from_confusion)."""
    from vitp_geo.evaluation.probe import miou

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randint(0, 4, (500,), generator=g), torch.randint(0, 4, (500,), generator=g)
    pred[pred == 3] = 0  # class 3 never predicted; class 4 absent from both (left out of the mean)
    cm = confusion_metric(5, None)(pred, target)
    assert miou(pred, target, 5) == pytest.approx(float(scores_from_confusion(cm)["miou"]), abs=1e-12)
    by_hand = [((pred == c) & (target == c)).sum() / ((pred == c) | (target == c)).sum() for c in range(4)]
    assert miou(pred, target, 5) == pytest.approx(float(torch.stack(by_hand).double().mean()), abs=1e-6)
