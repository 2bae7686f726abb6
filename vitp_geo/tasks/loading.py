"""Load a fine-tuned checkpoint for inference (tests write tiny real ones: ``tests/tiny_checkpoints.py``).

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

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitp_geo.io.atomic import atomic_output
from vitp_geo.io.model_card import CARD_KEY, ModelCard
from vitp_geo.io.torch_files import load_error
from vitp_geo.models.convert import check_finite_weights
from vitp_geo.tasks.models import rebuild_model

__all__ = ["load_inference_model", "write_weights_checkpoint"]

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
    except Exception as err:  # a truncated file, not a torch checkpoint at all, or a refused pickle
        raise ValueError(f"{path}: {load_error(err, 'a readable PyTorch/Lightning checkpoint')}") from err
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
        ValueError: not a Lightning checkpoint, no model card, non-finite (NaN / inf) weights, or
            weights that do not fit the card's architecture (the path and tensor names are given).
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
    # a diverged run's NaN / inf weights would paint every pixel class 0 without an error
    check_finite_weights({k: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}, path)
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: weights do not fit the card's architecture: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return model.eval(), card
