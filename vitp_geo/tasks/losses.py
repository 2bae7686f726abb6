"""Segmentation losses over (B, K, H, W) logits and (B, H, W) integer targets, all honouring ``ignore_index``.

* ``ce`` — cross-entropy (optional class weights).
* ``dice`` — soft Dice, ``1 − (2·Σ p·t + s) / (Σ p + Σ t + s)`` per class with s = 1, averaged
  over classes; ignored pixels take no part.
* ``focal`` — focal loss (Lin et al., 2017), ``−(1 − p_t)^γ · log p_t`` with γ = 2, averaged over
  valid pixels (class weights act as α).
* ``ce+dice`` — the sum of the two, common for change detection.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOSSES = ("ce", "dice", "focal", "ce+dice")


def _valid(target: Tensor, ignore_index: int | None) -> Tensor:
    return torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index


class DiceLoss(nn.Module):
    """Soft multiclass Dice (module doc)."""

    def __init__(self, ignore_index: int | None = None, smooth: float = 1.0) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.smooth = smooth

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        k = logits.shape[1]
        valid = _valid(target, self.ignore_index)  # (B, H, W)
        probs = logits.softmax(dim=1) * valid.unsqueeze(1)  # (B, K, H, W)
        onehot = F.one_hot(torch.where(valid, target, 0).long(), k).permute(0, 3, 1, 2) * valid.unsqueeze(1)
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        return (1 - (2 * inter + self.smooth) / (denom + self.smooth)).mean()


class FocalLoss(nn.Module):
    """Multiclass focal loss (module doc)."""

    def __init__(
        self, ignore_index: int | None = None, gamma: float = 2.0, alpha: Tensor | None = None
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.gamma = gamma
        self.register_buffer("alpha", alpha, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid = _valid(target, self.ignore_index)
        safe = torch.where(valid, target, 0).long()
        logp = logits.log_softmax(dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)  # (B, H, W) log p_t
        loss = -((1 - logp.exp()) ** self.gamma) * logp
        alpha: Tensor | None = self.alpha  # type: ignore[assignment]
        if alpha is not None:
            loss = loss * alpha[safe]
        n = valid.sum()
        return (loss * valid).sum() / n.clamp(min=1)


class SumLoss(nn.Module):
    """The sum of several losses."""

    def __init__(self, *losses: nn.Module) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return sum((loss(logits, target) for loss in self.losses), torch.zeros((), device=logits.device))


def build_loss(
    name: str, ignore_index: int | None = None, class_weights: Sequence[float] | None = None
) -> nn.Module:
    """The loss ``name`` (one of ``LOSSES``)."""
    weight = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights is not None else None
    ce = nn.CrossEntropyLoss(weight=weight, ignore_index=-100 if ignore_index is None else ignore_index)
    if name == "ce":
        return ce
    if name == "dice":
        return DiceLoss(ignore_index)
    if name == "focal":
        return FocalLoss(ignore_index, alpha=weight)
    if name == "ce+dice":
        return SumLoss(ce, DiceLoss(ignore_index))
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
