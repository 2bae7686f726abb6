"""A ViT read out at its patch tokens: frozen features, and short training runs of ViT + linear head.

The trained counterpart of ``vitp_geo.evaluation.probe``: where the probe fits a closed-form ridge
map on frozen patch tokens, :func:`finetune_patch_head` trains the ViT itself with one linear
layer on its patch tokens, cross-entropy against each patch's majority class
(``probe.patch_labels``), and :func:`patch_head_miou` scores it on held-out tiles with the probe's
mIoU. :func:`train_vit_head` is the optimisation loop under it (AdamW with the library's decay
groups, linear warm-up then cosine, gradient clipping), for any loss on ViT + head; the
pretraining benchmark (``benchmarks/pretrain_gain.py``) runs its fine-tune read-out and its
supervised multi-label baseline through it.

Tiles are (N, 3, H, W) uint8 RGB, normalised with the ImageNet statistics as the VLM's tile
pipeline does; H and W are multiples of the ViT's patch size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from vitp_geo.constants import IMAGENET_MEAN, IMAGENET_STD
from vitp_geo.evaluation.probe import miou, patch_labels
from vitp_geo.tasks.optim import lr_factor, param_groups

__all__ = [
    "finetune_patch_head",
    "normalise",
    "patch_features",
    "patch_head_miou",
    "patch_tokens",
    "predict_patches",
    "train_vit_head",
]


def normalise(images: np.ndarray | Tensor) -> Tensor:
    """uint8 (N, 3, H, W) → float32, ImageNet mean / std (``vlm.dynamic_tiles.to_pixel_values``'s rule)."""
    x = torch.as_tensor(images).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def patch_tokens(vit: VisionTransformer, x: Tensor) -> Tensor:
    """(N, 3, H, W) normalised → (N, P, C) patch tokens of ``forward_features`` (prefix tokens dropped)."""
    return vit.forward_features(x)[:, int(vit.num_prefix_tokens) :]


@torch.no_grad()
def patch_features(vit: VisionTransformer, images: np.ndarray, batch: int = 32) -> Tensor:
    """Frozen (N, P, C) patch tokens of uint8 tiles, ``batch`` tiles at a time (the ViT is put in eval mode)."""
    vit.eval()
    return torch.cat(
        [patch_tokens(vit, normalise(images[i : i + batch])) for i in range(0, len(images), batch)]
    )


def train_vit_head(
    vit: VisionTransformer,
    head: nn.Module,
    loss_fn: Callable[[], Tensor],
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    warmup_ratio: float,
    grad_clip: float,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> None:
    """Train ``vit`` and ``head`` in place for ``steps`` optimiser steps; both end in eval mode.

    ``loss_fn`` draws the step's batch and returns its loss (it calls ``vit`` and ``head``). AdamW
    (betas 0.9, 0.999) with ``tasks.optim.param_groups``: no weight decay on biases, norms,
    layer-scale gammas, class token and position embedding. No layer-wise lr decay: these runs
    are short and start every layer at one lr, as a ViTP pretraining run does. The lr warms up
    linearly over ``int(warmup_ratio * steps)`` steps, then follows a cosine to 0
    (``tasks.optim.lr_factor``); the global gradient norm is clipped to ``grad_clip``.

    Args:
        vit: a timm ViT (``blocks``).
        head: the layer(s) on its output.
        loss_fn: the loss of the next batch (called once a step).
        steps: optimiser steps (>= 1).
        lr, weight_decay: AdamW settings.
        warmup_ratio: share of ``steps`` in warm-up.
        grad_clip: max global gradient norm.
        progress: wraps the step range (e.g. a tqdm bar); None = no display.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    model = nn.ModuleDict({"vit": vit, "head": head})
    groups = param_groups(
        model,
        lr=lr,
        weight_decay=weight_decay,
        layer_decay=1.0,
        depth=len(vit.blocks),
        backbone_prefix="vit.",
    )
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    warmup = int(warmup_ratio * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, steps, warmup, "cosine"))
    model.train()
    for _ in (progress or iter)(range(steps)):
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
    model.eval()


def _d4(x: Tensor, y: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """The same random 90° rotation and horizontal flip of (N, 3, H, W) tiles and (N, H, W) masks."""
    k = int(torch.randint(4, (1,), generator=g))
    x, y = torch.rot90(x, k, (2, 3)), torch.rot90(y, k, (1, 2))
    if int(torch.randint(2, (1,), generator=g)):
        x, y = x.flip(3), y.flip(2)
    return x, y


def _patch(vit: VisionTransformer) -> int:
    return int(vit.patch_embed.patch_size[0])


def finetune_patch_head(
    vit: VisionTransformer,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    n_classes: int,
    lr: float,
    steps: int,
    seed: int,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.1,
    grad_clip: float = 1.0,
) -> nn.Linear:
    """Fine-tune ``vit`` in place with a new linear head on its patch tokens; returns the head.

    Every step trains on all of ``images`` at once, rotated and flipped together with ``masks``
    (one random element of the dihedral group a step, drawn from a generator seeded with
    ``seed``), with cross-entropy between each patch token's logits and the majority class of the
    patch's pixels. The optimiser and schedule are :func:`train_vit_head`'s.

    The head is initialised from torch's global RNG, as every ``nn.Linear`` is: seed it (before
    building or loading the ViT, which draws from it too) for a repeatable run.

    Args:
        vit: a timm ViT (``forward_features``, ``num_prefix_tokens``, ``embed_dim``).
        images: (N, 3, H, W) uint8 labelled tiles.
        masks: (N, H, W) class ids in ``[0, n_classes)``.
        n_classes: number of classes.
        lr: peak learning rate.
        steps: optimiser steps.
        seed: seeds the augmentation draws.
        weight_decay, warmup_ratio, grad_clip: see :func:`train_vit_head`.

    Returns:
        The trained ``nn.Linear(embed_dim, n_classes)``; ``vit`` and the head are in eval mode.
    """
    if len(images) != len(masks) or images.shape[2:] != masks.shape[1:]:
        raise ValueError(f"images {tuple(images.shape)} and masks {tuple(masks.shape)} do not match")
    patch = _patch(vit)
    head = nn.Linear(int(vit.embed_dim), n_classes)
    g = torch.Generator().manual_seed(seed)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(masks)

    def loss() -> Tensor:
        x, y = _d4(x_all, y_all, g)
        labels = torch.from_numpy(patch_labels(y.numpy(), patch, n_classes))
        logits = head(patch_tokens(vit, normalise(x)))
        return nn.functional.cross_entropy(logits.reshape(-1, n_classes), labels.reshape(-1))

    train_vit_head(
        vit,
        head,
        loss,
        steps=steps,
        lr=lr,
        weight_decay=weight_decay,
        warmup_ratio=warmup_ratio,
        grad_clip=grad_clip,
    )
    return head


@torch.no_grad()
def predict_patches(vit: VisionTransformer, head: nn.Module, images: np.ndarray, batch: int = 32) -> Tensor:
    """(N, P) predicted class of every patch of uint8 tiles (``vit`` and ``head`` in eval mode)."""
    vit.eval()
    head.eval()
    return torch.cat(
        [
            head(patch_tokens(vit, normalise(images[i : i + batch]))).argmax(-1)
            for i in range(0, len(images), batch)
        ]
    )


def patch_head_miou(
    vit: VisionTransformer,
    head: nn.Module,
    images: np.ndarray,
    masks: np.ndarray,
    n_classes: int,
    batch: int = 32,
) -> float:
    """Patch-level mIoU of ViT + head on uint8 tiles against the majority class of each patch of ``masks``."""
    pred = predict_patches(vit, head, images, batch)
    target = torch.from_numpy(patch_labels(masks, _patch(vit), n_classes))
    return miou(pred.reshape(-1), target.reshape(-1), n_classes)
