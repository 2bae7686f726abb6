"""The reference's detection lr schedule (mmcv ``policy='step'`` with a linear warm-up from 1/3):
the lr at chosen optimiser steps against hand-computed values."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vitp_geo.tasks.args import BackboneArgs, OptimArgs
from vitp_geo.tasks.detection import ObjectDetectionTask
from vitp_geo.tasks.optim import lr_factor, step_milestones


def test_lr_factor_step_with_mmcv_warmup() -> None:
    # warm-up 500 from 1/3: 1 − (1 − i / 500) · (1 − 1/3); steps at 800 and 1100, ×0.1 each
    kw = dict(milestones=[800, 1100], gamma=0.1, warmup_ratio=1 / 3)
    expected = {0: 1 / 3, 250: 2 / 3, 499: 1 - (1 / 500) * (2 / 3), 500: 1.0, 799: 1.0, 800: 0.1, 1099: 0.1,
                1100: 0.01, 5000: 0.01}  # fmt: skip
    for step, want in expected.items():
        assert lr_factor(step, 6000, 500, "step", **kw) == pytest.approx(want, abs=1e-12), step
    # a milestone inside the warm-up multiplies the ramp (mmcv warms up the regular, stepped lr)
    assert lr_factor(100, 6000, 500, "step", milestones=[50], warmup_ratio=1 / 3) == pytest.approx(
        0.1 * (1 - 0.8 * 2 / 3)
    )
    # the ramp without a ratio is the other schedules' (step + 1) / warmup
    assert lr_factor(99, 6000, 500, "step", milestones=[800]) == pytest.approx(0.2)
    assert step_milestones([8, 11], 250) == [2000, 2750]
    for bad in ([11, 8], [0, 8], [8, 8]):
        with pytest.raises(ValueError, match="strictly increasing epochs"):
            step_milestones(bad, 250)


def _task(**kw: object) -> ObjectDetectionTask:
    return ObjectDetectionTask(
        backbone=BackboneArgs(name="vitp_tiny_patch14_112", img_size=112), fpn_channels=32, representation=64,
        optim=OptimArgs(lr=1e-3, layer_decay=1.0, warmup_steps=4, schedule="step", lr_steps=[2, 3],
                        warmup_ratio=1 / 3), **kw,
    )  # fmt: skip


@pytest.mark.parametrize(("accumulate", "per_epoch"), [(1, 3), (2, 2)])
def test_task_lr_by_iteration(accumulate: int, per_epoch: int) -> None:
    """3 batches an epoch (2 optimiser steps with accumulation 2, the last one partial): the lr
    drops ×0.1 when epochs 2 and 3 start, after 4 warm-up steps from 1/3 of the lr."""
    task = _task()
    task._trainer = SimpleNamespace(  # type: ignore[assignment]
        estimated_stepping_batches=4 * per_epoch, num_training_batches=3, accumulate_grad_batches=accumulate
    )
    conf = task.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]  # type: ignore[index]
    assert conf["lr_scheduler"]["interval"] == "step"  # type: ignore[index]
    lrs = []
    for _ in range(4 * per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ramp = [1 - (1 - i / 4) * (2 / 3) for i in range(4)]
    want = [1e-3 * (ramp[i] if i < 4 else 1.0) * (0.1 ** ((i >= 2 * per_epoch) + (i >= 3 * per_epoch)))
            for i in range(4 * per_epoch)]  # fmt: skip
    assert lrs == pytest.approx(want, rel=1e-9)


def test_step_schedule_needs_its_epochs() -> None:
    with pytest.raises(ValueError, match="lr_steps goes with schedule 'step'"):
        ObjectDetectionTask(optim=OptimArgs(schedule="step"))
    with pytest.raises(ValueError, match="lr_steps goes with schedule 'step'"):
        ObjectDetectionTask(optim=OptimArgs(schedule="cosine", lr_steps=[8, 11]))
    with pytest.raises(ValueError, match="strictly increasing epochs"):
        ObjectDetectionTask(optim=OptimArgs(schedule="step", lr_steps=[11, 8]))
