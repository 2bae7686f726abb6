"""Load a fine-tuned checkpoint for inference, and write tiny real checkpoints for tests.

``load_inference_model(path)`` reads the Lightning ``.ckpt`` written by ``vitp-geo finetune``:
the ``ModelCard`` under ``CARD_KEY`` says how to rebuild the model (``card.arch``), and the
``model.*`` weights of the task's ``state_dict`` fill it. The original backbone file is not
needed. The returned module is in eval mode and maps

* segmentation: (B, C, h, w) float, normalised with ``card.mean`` / ``card.std`` →
  (B, K, h, w) class logits;
* change: (B, 2C, h, w), before and after stacked on channels, each normalised →
  (B, 2, h, w) logits (class 1 = changed);
* detection: (B, C, h, w) normalised → per image ``boxes`` ((N, 4) ``x1, y1, x2, y2`` or (N, 5)
  ``cx, cy, w, h, angle``, ``card.arch["box_type"]``), ``scores``, ``labels`` (0-based classes).

Any h, w work (position embeddings are resampled); ``card.tile_size`` is what it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitp_geo.io.atomic import atomic_output
from vitp_geo.io.model_card import CARD_KEY, ModelCard
from vitp_geo.tasks.models import rebuild_model

__all__ = [
    "load_inference_model",
    "save_tiny_checkpoint",
    "save_tiny_segmentation_checkpoint",
    "write_weights_checkpoint",
]

# What a fine-tuned model.ckpt keeps: weights, what rebuilds the model (hyper-parameters, the card)
# and where it came from. Optimizer / scheduler / loop / callback state is for resuming only.
WEIGHTS_CHECKPOINT_KEYS = (
    "state_dict",
    "hyper_parameters",
    "hparams_name",
    CARD_KEY,
    "pytorch-lightning_version",
    "epoch",
    "global_step",
)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated file, or not a torch checkpoint at all
        raise ValueError(
            f"{path}: not a readable PyTorch/Lightning checkpoint ({err.__class__.__name__}: {err})"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    if CARD_KEY not in ckpt:
        raise ValueError(f"{path}: no model card under {CARD_KEY!r}; was it written by `vitp-geo finetune`?")
    return ckpt


def write_weights_checkpoint(source: str | Path, path: str | Path) -> Path:
    """Write ``path`` (atomically) from the Lightning checkpoint ``source``, weights only.

    Keeps ``WEIGHTS_CHECKPOINT_KEYS`` (weights, hyper-parameters, model card), drops optimizer,
    scheduler, loop and callback state; :func:`load_inference_model` and
    ``Task.load_from_checkpoint`` read the result.

    Raises:
        FileNotFoundError, ValueError: ``source`` is missing or not a finetune checkpoint.
    """
    ckpt = _read_checkpoint(Path(source))
    slim = {k: ckpt[k] for k in WEIGHTS_CHECKPOINT_KEYS if k in ckpt}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save(slim, str(tmp))
    return path


def load_inference_model(path: str | Path) -> tuple[nn.Module, ModelCard]:
    """Rebuild the fine-tuned model and its card from a checkpoint (module doc).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a Lightning checkpoint, no model card, or weights that do not fit the
            card's architecture (the path is named).
    """
    path = Path(path)
    ckpt = _read_checkpoint(path)
    try:
        card = ModelCard.from_dict(ckpt[CARD_KEY])
        if card.task not in ("segmentation", "change", "detection"):
            raise ValueError(f"task {card.task!r} is not segmentation, change or detection")
        model = rebuild_model(card.arch)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: bad model card: {err}") from err
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: weights do not fit the card's architecture: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return model.eval(), card


def save_tiny_checkpoint(
    path: str | Path,
    *,
    task: str = "segmentation",
    num_classes: int = 5,
    tile_size: int = 112,
    bands: Sequence[int] = (1, 2, 3),
    class_names: Sequence[str] | None = None,
    class_colors: Sequence[Sequence[int]] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    neck: str = "sfp",
    head: str = "upernet",
    seed: int = 0,
    box_type: str = "obb",
) -> Path:
    """Write a real, small, untrained checkpoint in the exact format ``vitp-geo finetune`` writes.

    The backbone is ``vitp_tiny_patch14_112`` (dim 192, depth 4) with a 32-wide head; weights
    are seeded, so two calls with the same arguments give the same logits. Takes about a second.

    Args:
        path: the ``.ckpt`` to write (atomically).
        task: ``segmentation``, ``change`` (``num_classes`` is ignored, always 2) or ``detection``
            (``num_classes`` object classes; a 32-wide FPN and a 64-wide box head).
        num_classes: segmentation classes K.
        tile_size: recorded tile size (also the backbone's position-embedding grid).
        bands: 1-based raster bands, one per model channel (per date for change).
        class_names, class_colors: card entries (defaults ``class_i`` / a fixed palette).
        mean, std: per-channel statistics in 0–255 units (default 0 / 255).
        neck, head: ``sfp`` / ``adapter`` and ``upernet`` / ``unet``.
        seed: weight initialisation seed.
        box_type: ``hbb`` or ``obb`` (detection only).

    Returns:
        ``path``.
    """
    import lightning

    from vitp_geo.tasks.change import ChangeDetectionTask
    from vitp_geo.tasks.detection import ObjectDetectionTask
    from vitp_geo.tasks.segmentation import SegmentationTask

    path = Path(path)
    common: dict[str, Any] = dict(
        backbone="vitp_tiny_patch14_112",
        img_size=tile_size,
        in_channels=len(bands),
        neck=neck,
        head=head,
        head_channels=32,
        drop_path_rate=0.0,
        bands=list(bands),
        mean=list(mean) if mean is not None else None,
        std=list(std) if std is not None else None,
        class_names=list(class_names) if class_names is not None else None,
        class_colors=[list(c) for c in class_colors] if class_colors is not None else None,
    )
    torch.manual_seed(seed)
    module: SegmentationTask | ChangeDetectionTask | ObjectDetectionTask
    if task == "detection":
        for key in ("head", "head_channels"):
            common.pop(key)
        module = ObjectDetectionTask(
            num_classes=num_classes,
            box_type=box_type,  # type: ignore[arg-type]
            fpn_channels=32,
            representation=64,
            anchor_sizes=[16, 32, 64, 128, 256],
            **common,
        )
    elif task == "segmentation":
        module = SegmentationTask(num_classes=num_classes, **common)
    elif task == "change":
        module = ChangeDetectionTask(**common)
    else:
        raise ValueError(f"task must be 'segmentation', 'change' or 'detection', got {task!r}")
    with torch.no_grad():  # non-trivial normalisation statistics, so eval-mode BN is exercised
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ckpt: dict[str, Any] = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    module.on_save_checkpoint(ckpt)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save(ckpt, str(tmp))
    return path


def save_tiny_segmentation_checkpoint(path: str | Path, **kwargs: Any) -> Path:
    """:func:`save_tiny_checkpoint` with ``task="segmentation"`` (same keyword arguments)."""
    return save_tiny_checkpoint(path, task="segmentation", **kwargs)
