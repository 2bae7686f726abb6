"""The argument groups the three ViTP tasks share: backbone, optimisation, and the inputs' card.

``SegmentationTask``, ``ChangeDetectionTask`` and ``ObjectDetectionTask`` take them as nested
dataclasses, so a config names each setting once, under the group it belongs to::

    model:
      class_path: vitp_geo.tasks.SegmentationTask
      init_args:
        backbone: {name: vitp_tiny_patch14_112, weights: backbone.safetensors, img_size: 112}
        optim: {lr: 1.0e-3, warmup_steps: 10}
        inputs: {bands: [1, 2, 3]}
        num_classes: 5

The groups follow what the settings act on:

* ``BackboneArgs``: what builds the ViT and its pyramid, and how much of it trains — the same
  for every task (``tasks.backbone.build_backbone``, the neck, the freezing);
* ``OptimArgs``: AdamW, layer-wise lr decay and the lr schedule (``DenseTask.configure_optimizers``);
  the ``step`` schedule and its ``lr_steps`` / ``lr_gamma`` / ``warmup_ratio`` are detection's;
* ``InputArgs``: what the model card records about the input (bands, normalisation, render rule),
  which ``vitp-geo infer`` applies to a scene.

The task-specific settings (classes, head, loss, detector) stay flat arguments of each task.

Hyper-parameters are recorded as plain dicts (``hparams["backbone"] == {"name": ..., ...}``): a
checkpoint holds no custom classes, so ``torch.load(weights_only=True)`` reads it. Models saved
before the groups (every setting flat) still load: :func:`nest_flat_hparams` regroups them, and
:func:`old_spelling` names the new key for an old one in a config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

__all__ = [
    "GROUPS",
    "OLD_KEYS",
    "BackboneArgs",
    "InputArgs",
    "OptimArgs",
    "as_group",
    "flat_hparams",
    "nest_flat_hparams",
    "old_spelling",
]


@dataclass(frozen=True)
class BackboneArgs:
    """The ViT, its pyramid, and what of it trains.

    Args:
        name: timm ViT name (the architecture when no ``weights`` are given).
        weights: ``backbone.safetensors`` from ``vitp-geo pretrain`` or a released ViTP /
            InternViT file; None = random init.
        img_size: training tile size (position embeddings resized to it; any size runs).
        in_channels: input channels (one date's for change); extra bands follow
            ``tasks.backbone``'s documented rule.
        rgb_channels: 0-based positions of R, G, B among the input channels.
        drop_path_rate: stochastic depth in the ViT.
        neck: ``sfp`` (simple feature pyramid), ``adapter`` (ViT-Adapter, global cross-attention) or
            ``deformable_adapter`` (ViT-Adapter with multi-scale deformable attention, the paper's).
        out_indices: four blocks the pyramid taps (default 1/3, 1/2, 2/3, last).
        freeze: train only what follows the backbone (neck and head).
        freeze_blocks: freeze the patch embedding and the first N blocks.
    """

    name: str = "vitp_tiny_patch14_112"
    weights: str | None = None
    img_size: int | None = None
    in_channels: int = 3
    rgb_channels: list[int] | None = None
    drop_path_rate: float = 0.1
    neck: Literal["sfp", "adapter", "deformable_adapter"] = "sfp"
    out_indices: list[int] | None = None
    freeze: bool = False
    freeze_blocks: int = 0


@dataclass(frozen=True)
class OptimArgs:
    """AdamW with layer-wise lr decay and the learning-rate schedule.

    Args:
        lr, weight_decay, layer_decay: AdamW settings and layer-wise lr decay.
        warmup_steps: linear warm-up steps.
        schedule: ``poly``, ``cosine``, ``constant``, or (detection) ``step``.
        lr_steps: ``step`` schedule: the epochs at whose start the lr is multiplied by
            ``lr_gamma`` (mmcv's ``step=[8, 11]``).
        lr_gamma: the ``step`` schedule's factor.
        warmup_ratio: None: the warm-up rises as ``(step + 1) / warmup_steps``; a number: mmcv's
            linear warm-up from this fraction of the lr (the reference: 1/3).
    """

    lr: float = 1e-4
    weight_decay: float = 0.05
    layer_decay: float = 0.9
    warmup_steps: int = 0
    schedule: Literal["poly", "cosine", "constant", "step"] = "poly"
    lr_steps: list[int] | None = None
    lr_gamma: float = 0.1
    warmup_ratio: float | None = None

    def __post_init__(self) -> None:
        if (self.schedule == "step") != (self.lr_steps is not None):
            raise ValueError("optim: lr_steps goes with schedule 'step' (and 'step' needs lr_steps)")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio <= 1:
            raise ValueError(f"optim: warmup_ratio must be in [0, 1], got {self.warmup_ratio}")


@dataclass(frozen=True)
class InputArgs:
    """What the model card records about the input, for ``vitp-geo infer``.

    Args:
        bands: 1-based raster bands the model reads (default 1..C).
        mean, std: per-channel normalisation in 0–255 units (default: the datamodule's ``mean`` /
            ``std``, else torchgeo's 0 / 255).
        render: ``RenderRule`` fields.
    """

    bands: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    render: dict[str, Any] | None = None


GROUPS: dict[str, type] = {"backbone": BackboneArgs, "optim": OptimArgs, "inputs": InputArgs}
# The flat hyper-parameter names the tasks took before the groups, and where each went.
_RENAMED = {"backbone": "name", "backbone_weights": "weights", "freeze_backbone": "freeze"}
_FLAT_NAME = {new: old for old, new in _RENAMED.items()}
OLD_KEYS: dict[str, tuple[str, str]] = {
    _FLAT_NAME.get(f.name, f.name): (group, f.name) for group, cls in GROUPS.items() for f in fields(cls)
}
G = TypeVar("G")


def as_group(cls: type[G], value: G | dict[str, Any] | None, key: str) -> dict[str, Any]:
    """``value`` (the dataclass, its dict as a checkpoint holds it, or None for the defaults) as a
    plain dict of every field.

    Raises:
        TypeError: anything else — a flat value such as ``backbone="vitp_tiny_patch14_112"`` is
            the old spelling and the message names the new one.
    """
    if value is None:
        value = cls()
    elif isinstance(value, dict):
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(value) - names)
        if unknown:
            raise TypeError(f"{key} has no field {unknown[0]!r} ({cls.__name__} takes {sorted(names)})")
        value = cls(**value)
    elif not isinstance(value, cls):
        hint = f"{key}={cls.__name__}(name={value!r})" if key == "backbone" else f"{key}={cls.__name__}(...)"
        raise TypeError(f"{key} takes a {cls.__name__} (or its dict), got {value!r}: e.g. {hint}")
    return dataclasses.asdict(value)  # type: ignore[call-overload, no-any-return]


def old_spelling(key: str, where: str = "model.init_args") -> str | None:
    """The message for a flat pre-group key (``lr`` → ``optim.lr``), None for any other key."""
    if key not in OLD_KEYS:
        return None
    group, name = OLD_KEYS[key]
    return f"{where}.{key} is the old spelling: the task settings are grouped; use {where}.{group}.{name}"


def nest_flat_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters as a model saved before the groups recorded them (flat), regrouped; a
    grouped dict is returned unchanged."""
    if isinstance(hparams.get("backbone"), dict) or not any(k in OLD_KEYS for k in hparams):
        return dict(hparams)
    out: dict[str, Any] = {group: {} for group in GROUPS}
    for key, value in hparams.items():
        if key in OLD_KEYS:
            group, name = OLD_KEYS[key]
            out[group][name] = value
        else:
            out[key] = value
    return out


def flat_hparams(hparams: Any) -> dict[str, Any]:
    """The grouped hyper-parameters under their flat names (``backbone_weights``, ``lr``, ...):
    what the model-building code reads."""
    out = {k: v for k, v in dict(hparams).items() if k not in GROUPS}
    for old, (group, name) in OLD_KEYS.items():
        section = hparams.get(group) or {}
        if name in section:
            out[old] = section[name]
    return out
