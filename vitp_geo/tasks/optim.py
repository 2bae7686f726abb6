"""Optimiser parameter groups for ViT fine-tuning: layer-wise learning-rate decay, no decay on norms.

Layer-wise lr decay (BEiT / ViT-Adapter / mmseg ``LayerDecayOptimizerConstructor``): with
``depth`` blocks and decay ``d``, a parameter of layer ``l`` gets ``lr · d^(depth + 1 − l)``
where the patch embedding, class token and position embedding are layer 0, block ``i`` is
layer ``i + 1``, and everything after the ViT (pyramid, adapter, head) is layer ``depth + 1``
(full lr). ``d = 1`` disables it.

Weight decay is not applied to biases, norm weights, layer-scale ``gamma``, tokens and position
embeddings (all 1-D tensors plus ``cls_token`` / ``pos_embed`` / ``level_embed``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from torch import nn

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED = ("patch_embed.", "cls_token", "pos_embed", "reg_token")
_NO_DECAY = ("cls_token", "pos_embed", "reg_token", "level_embed")


def layer_id(name: str, depth: int, backbone_prefix: str) -> int:
    """Layer index of parameter ``name`` (module doc); ``backbone_prefix`` locates the ViT (e.g. ``model.neck.backbone.``)."""
    if not name.startswith(backbone_prefix):
        return depth + 1
    short = name[len(backbone_prefix) :]
    if short.startswith(_EMBED):
        return 0
    match = _BLOCK.match("." + short) or _BLOCK.search(short)
    if match:
        return int(match.group(1)) + 1
    return depth + 1  # final norm etc.


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Whether ``param`` is left out of weight decay (module doc): 1-D tensors and the tokens."""
    return param.ndim <= 1 or name.endswith(_NO_DECAY) or any(f".{k}" in name for k in _NO_DECAY)


def decay_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups, decayed then not (:func:`no_weight_decay`), at one lr: pretraining's."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if no_weight_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def param_groups(
    module: nn.Module, *, lr: float, weight_decay: float, layer_decay: float, depth: int, backbone_prefix: str
) -> list[dict[str, Any]]:
    """AdamW parameter groups with per-layer lr and decay / no-decay split (frozen parameters left out)."""
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        lid = layer_id(name, depth, backbone_prefix)
        no_decay = no_weight_decay(name, param)
        key = (lid, no_decay)
        if key not in groups:
            scale = layer_decay ** (depth + 1 - lid)
            groups[key] = {
                "params": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "name": f"layer_{lid}_{'no_decay' if no_decay else 'decay'}",
            }
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def lr_factor(
    step: int,
    total: int,
    warmup: int,
    schedule: str,
    power: float = 1.0,
    *,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_ratio: float | None = None,
) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based).

    Schedules after the warm-up: ``poly`` (``(1 − t)^power``), ``cosine``, ``constant``, and
    ``step`` (mmcv's ``policy='step'``: ``gamma`` to the number of ``milestones`` — optimiser
    steps — already reached; the reference's detection configs, with milestones at epochs 8 and
    11, or 16 and 22 for SSDD).

    Warm-up over the first ``warmup`` steps: ``warmup_ratio`` None gives ``(step + 1) / warmup``;
    a number gives mmcv's linear warm-up, ``1 − (1 − step / warmup) · (1 − warmup_ratio)`` times
    the schedule's factor (the reference uses 1/3).
    """
    in_warmup = warmup > 0 and step < warmup
    ramp = 1.0
    if in_warmup:
        ramp = (step + 1) / warmup if warmup_ratio is None else 1 - (1 - step / warmup) * (1 - warmup_ratio)
    if schedule == "step":
        return ramp * gamma ** sum(1 for m in milestones if step >= m)
    if in_warmup:
        return ramp
    if schedule == "constant" or total <= warmup:
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "poly":
        return max(0.0, (1 - t) ** power)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"schedule must be 'poly', 'cosine', 'constant' or 'step', got {schedule!r}")


def step_milestones(epochs: Sequence[int], steps_per_epoch: int) -> list[int]:
    """Optimiser steps at which the epochs ``epochs`` begin (epochs counted from 0, as mmcv's
    ``step=[8, 11]``: the lr drops when epoch 8 starts), for ``lr_factor(..., milestones=...)``.

    Raises:
        ValueError: ``epochs`` not strictly increasing positive integers, or ``steps_per_epoch`` < 1.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    e = list(epochs)
    if any(not isinstance(k, int) or k < 1 for k in e) or any(b <= a for a, b in zip(e, e[1:], strict=False)):
        raise ValueError(f"lr_steps must be strictly increasing epochs >= 1, got {e}")
    return [k * steps_per_epoch for k in e]
