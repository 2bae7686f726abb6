"""Batch size 1 trains: the UperNet head's global pooling branch sees one value per channel."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitp_geo.models.heads import HeadBatchNorm2d, UperNetHead
from vitp_geo.tasks import ChangeDetectionTask, SegmentationTask
from vitp_geo.tasks.args import BackboneArgs


@pytest.mark.parametrize("head", ["upernet", "unet"])
def test_segmentation_task_trains_at_batch_1(head: str) -> None:
    torch.manual_seed(0)
    task = SegmentationTask(
        num_classes=3, head=head, head_channels=16, backbone=BackboneArgs(drop_path_rate=0.0)
    ).train()
    x, y = torch.randn(1, 3, 112, 112), torch.randint(0, 3, (1, 112, 112))
    loss = task.criterion(task(x), y)  # (1, 3, 112, 112) logits
    loss.backward()
    grads = [p.grad for p in task.model.head.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if head == "upernet":  # the 1×1 pooling branch is trained too
        conv = task.model.head.ppm[0][1][0]
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_change_task_trains_at_batch_1() -> None:
    """One pair per step learns: the pooling branch gets a gradient and the loss on it falls."""
    torch.manual_seed(0)
    task = ChangeDetectionTask(head_channels=16, backbone=BackboneArgs(drop_path_rate=0.0)).train()
    x = torch.randn(1, 6, 112, 112)
    y = torch.zeros(1, 112, 112, dtype=torch.int64)
    y[:, 30:80, 20:60] = 1  # one changed block
    opt = torch.optim.AdamW(task.parameters(), lr=1e-3)
    losses = []
    for step in range(15):
        opt.zero_grad()
        logits = task(x)
        assert logits.shape == (1, 2, 112, 112)
        loss = task.criterion(logits, y)
        loss.backward()
        if step == 0:  # the 1x1 pooling branch (one value per channel) is trained too
            conv = task.model.head.ppm[0][1][0]
            assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
            assert task.model.neck.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses
    task.eval()
    with torch.no_grad():
        pred = task(x).argmax(1)
    assert (pred[0, 30:80, 20:60] == 1).float().mean() > 0.8 and (pred[0, :30] == 0).float().mean() > 0.8


def test_head_norm_is_batchnorm_except_for_one_value_per_channel() -> None:
    torch.manual_seed(0)
    head = UperNetHead([8, 8, 8, 8], num_classes=2, channels=8).train()
    bn = head.ppm[0][1][1]  # after AdaptiveAvgPool2d(1): (B, C, 1, 1)
    assert isinstance(bn, HeadBatchNorm2d)
    feats = [torch.randn(2, 8, s, s) for s in (16, 8, 4, 2)]
    before = bn.running_mean.clone()
    head(feats)  # batch 2: ordinary BatchNorm, running statistics move
    assert not torch.equal(bn.running_mean, before)
    one = torch.randn(1, 8, 1, 1)
    stats = bn.running_mean.clone(), bn.running_var.clone()
    out = bn(one)  # plain nn.BatchNorm2d raises "Expected more than 1 value per channel"
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert torch.allclose(out, bn.eval()(one))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm2d(8).train()(one)


def test_head_state_dict_keys_are_batchnorms() -> None:
    """Checkpoints written with plain ``nn.BatchNorm2d`` heads load strictly into the new head."""
    old = UperNetHead([8, 8, 8, 8], num_classes=2, channels=8)
    for parent in list(old.modules()):
        for name, child in parent.named_children():
            if isinstance(child, HeadBatchNorm2d):
                setattr(parent, name, nn.BatchNorm2d(child.num_features))
    assert not any(isinstance(m, HeadBatchNorm2d) for m in old.modules())
    UperNetHead([8, 8, 8, 8], num_classes=2, channels=8).load_state_dict(old.state_dict(), strict=True)
