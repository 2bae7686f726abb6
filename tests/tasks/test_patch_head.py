"""vitp_geo.tasks.patch_head: the ViT + linear-head training loop, the patch fine-tune, features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitp_geo.evaluation.probe import patch_labels
from vitp_geo.tasks.patch_head import (
    _d4,
    finetune_patch_head,
    normalise,
    patch_features,
    patch_head_miou,
    patch_tokens,
    predict_patches,
    train_vit_head,
)

PATCH = 14


def _vit(seed: int = 0) -> VisionTransformer:
    """A tiny ViT with a class token, position embedding and layer-scale gammas (all no-decay)."""
    torch.manual_seed(seed)
    return VisionTransformer(
        img_size=2 * PATCH,
        patch_size=PATCH,
        embed_dim=24,
        depth=2,
        num_heads=2,
        init_values=0.1,
        num_classes=0,
    )


def _reference_loop(vit, head, loss_fn, steps, lr, weight_decay, warmup_ratio, grad_clip):
    """The loop benchmarks/pretrain_gain.py wrote out before it used the library (its fine-tune
    and supervised arm): the pretraining module's two AdamW groups, warm-up + cosine, clipping."""
    model = nn.ModuleDict({"vit": vit, "head": head})
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or name.endswith(("pos_embed", "cls_token")) or ".gamma" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    warmup = int(warmup_ratio * steps)

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()


def _regression_task(vit, head, seed):
    """Mean-pooled patch tokens regressed on fixed random targets, fresh random tiles each step."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(4, 3, generator=g)

    def loss():
        x = torch.randint(0, 256, (4, 3, 2 * PATCH, 2 * PATCH), generator=g, dtype=torch.uint8)
        return nn.functional.mse_loss(head(patch_tokens(vit, normalise(x)).mean(1)), target)

    return loss


def test_train_vit_head_gives_the_weights_of_the_benchmarks_former_loop():
    # Strong weight decay, warm-up then cosine, and a clip that binds: a tensor put in the wrong
    # decay group, another schedule or a missing clip would change the weights.
    settings = dict(steps=8, lr=1e-2, weight_decay=0.5, warmup_ratio=0.25, grad_clip=0.05)
    runs = []
    for train in (train_vit_head, None):
        vit = _vit()
        head = nn.Linear(24, 3)
        loss = _regression_task(vit, head, seed=5)
        if train is None:
            _reference_loop(vit, head, loss, **settings)
        else:
            train(vit, head, loss, **settings)
        runs.append({**{f"vit.{k}": v for k, v in vit.state_dict().items()}, **head.state_dict()})
    new, old = runs
    start = _vit().state_dict()
    assert any(not torch.equal(new[f"vit.{k}"], v) for k, v in start.items())  # it trained
    assert new.keys() == old.keys()
    for k in new:
        assert torch.equal(new[k], old[k]), k


def test_train_vit_head_leaves_no_decay_tensors_to_the_gradient_alone():
    # Zero gradients everywhere: AdamW then moves a tensor only through weight decay, so the
    # decayed tensors shrink and the no-decay ones (biases, norms, gammas, tokens) stay put.
    vit, head = _vit(), nn.Linear(24, 3)
    before = {k: v.clone() for k, v in nn.ModuleDict({"vit": vit, "head": head}).state_dict().items()}
    zero = lambda: sum((p * 0).sum() for p in [*vit.parameters(), *head.parameters()])  # noqa: E731
    train_vit_head(vit, head, zero, steps=3, lr=0.1, weight_decay=0.5, warmup_ratio=0.0, grad_clip=1.0)
    after = nn.ModuleDict({"vit": vit, "head": head}).state_dict()
    for k, v in after.items():
        fixed = v.ndim < 2 or k.endswith(("pos_embed", "cls_token")) or ".gamma" in k
        assert torch.equal(v, before[k]) == fixed, k
    assert not vit.training and not head.training
    with pytest.raises(ValueError, match="steps must be >= 1"):
        train_vit_head(vit, head, zero, steps=0, lr=0.1, weight_decay=0.0, warmup_ratio=0.0, grad_clip=1.0)


def _colour_tiles(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Tiles of 2 x 2 solid patches, each coloured by its class (3 classes): learnable per patch."""
    rng = np.random.default_rng(seed)
    colours = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], np.uint8)
    cls = rng.integers(0, 3, size=(n, 2, 2))
    masks = cls.repeat(PATCH, 1).repeat(PATCH, 2).astype(np.int64)
    images = colours[masks].transpose(0, 3, 1, 2).copy()
    return images, masks


def test_finetune_patch_head_learns_the_patch_classes():
    train_x, train_y = _colour_tiles(6, seed=0)
    test_x, test_y = _colour_tiles(8, seed=1)
    vit = _vit()
    torch.manual_seed(0)
    before = patch_head_miou(vit, nn.Linear(24, 3), test_x, test_y, 3)
    head = finetune_patch_head(vit, train_x, train_y, n_classes=3, lr=3e-3, steps=30, seed=0)
    after = patch_head_miou(vit, head, test_x, test_y, 3)
    assert after > 0.95 > before
    pred = predict_patches(vit, head, test_x)
    assert pred.shape == (8, 4)
    assert (pred.numpy() == patch_labels(test_y, PATCH, 3)).mean() > 0.95


def test_finetune_patch_head_repeats_with_the_same_seeds_and_differs_with_another():
    x, y = _colour_tiles(4, seed=2)

    def run(seed: int) -> torch.Tensor:
        vit = _vit()
        torch.manual_seed(1)
        head = finetune_patch_head(vit, x, y, n_classes=3, lr=1e-3, steps=4, seed=seed)
        return torch.cat([head.weight.flatten(), vit.blocks[0].attn.qkv.weight.flatten()])

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(3))  # another augmentation sequence
    with pytest.raises(ValueError, match=r"images \(4, 3, 28, 28\) and masks \(3, 28, 28\)"):
        finetune_patch_head(_vit(), x, y[:3], n_classes=3, lr=1e-3, steps=1, seed=0)


def test_d4_turns_tiles_and_masks_together_through_all_eight_symmetries():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (2, 3, 6, 6), dtype=np.uint8))
    y = x[:, 0].long() // 64  # the mask is a function of the image, pixel by pixel
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(64):
        xt, yt = _d4(x, y, g)
        assert torch.equal(yt, xt[:, 0].long() // 64)
        seen.add(xt.numpy().tobytes())
    assert len(seen) == 8


def test_patch_features_drop_the_class_token_and_do_not_depend_on_the_batch():
    vit = _vit()
    x, _ = _colour_tiles(5, seed=3)
    f = patch_features(vit, x, batch=2)
    assert f.shape == (5, 4, 24)
    assert torch.allclose(f, patch_features(vit, x, batch=32), atol=1e-6)
    with torch.no_grad():
        full = vit.forward_features(normalise(x))
    assert torch.allclose(f, full[:, 1:], atol=1e-6)
    assert not vit.training
