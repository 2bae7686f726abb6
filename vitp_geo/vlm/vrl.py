"""Visual Robustness Learning (VRL): randomly drop projected image tokens before the LLM.

ViTP's regulariser (Li et al. 2025, §3): after the image features are placed in the token
sequence, a share ``ratio`` of each sample's image tokens is dropped, so every surviving token must
carry more of the image. Our semantics (DESIGN.md §3):

* ``ratio`` r (default 0.75) and apply probability ``prob`` p (default 1.0) are separate;
* per sample: with probability p, keep ``ceil((1 - r) * n)`` of its n image tokens, chosen
  uniformly at random, in their original order (text tokens are never dropped);
* survivors keep their original position ids (RoPE still sees where they were);
* sequences are compacted to the longest survivor count and right-padded with attention mask 0,
  label -100 (and position ids continuing after the last real one).

``reference_mode=True`` reproduces the reference implementation (zcablii/ViTP,
``InternVLChatModel.forward`` with ``TMAug_prob``) for comparison: one coin per batch that fires
with probability ``1 - ratio`` (its test is ``uniform(0, 1) > ratio``), removing ``int(n * r)``
image tokens. The reference flattens the batch's image positions and indexes a per-row mask with
them, so it only works for batch 1; for batch > 1 we apply the drop to every sample under that one
batch-level coin. The reference also pads by repeating the last element (attention mask, label);
we always pad with mask 0 / label -100, which is what it means for batch 1 with trailing padding.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from vitp_geo.constants import IGNORE_INDEX

__all__ = ["VRLResult", "kept_count", "visual_robustness_drop"]



class VRLResult(NamedTuple):
    """Compacted sequences after VRL; all (B, L') with L' ≤ L, plus per-sample counts (B,)."""

    inputs_embeds: Tensor
    attention_mask: Tensor
    labels: Tensor
    position_ids: Tensor
    kept_per_sample: Tensor
    total_per_sample: Tensor


def kept_count(n: int, ratio: float) -> int:
    """``ceil((1 - ratio) * n)``, robust to float error (e.g. r = 0.3, n = 10 keeps 7, not 8)."""
    return min(n, math.ceil(round((1.0 - ratio) * n, 6)))


def _check(name: str, value: float, upper_open: bool) -> None:
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    if not ok:
        raise ValueError(f"{name} must be in [0, {'1)' if upper_open else '1]'}, got {value}")


def _uniform(generator: torch.Generator | None, *shape: int) -> Tensor:
    return torch.rand(*shape, generator=generator)  # CPU: works with any CPU generator


def visual_robustness_drop(
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    position_ids: Tensor,
    image_token_mask: Tensor,
    ratio: float,
    prob: float,
    generator: torch.Generator | None = None,
    reference_mode: bool = False,
) -> VRLResult:
    """Drop a share of each sample's image tokens and compact the batch.

    Args:
        inputs_embeds: (B, L, C) token embeddings with the image features already in place.
        attention_mask: (B, L) 1 for real tokens, 0 for padding (padding is removed and re-added).
        labels: (B, L) targets, -100 where no loss.
        position_ids: (B, L) position ids of the uncompacted sequences.
        image_token_mask: (B, L) bool, True at image-context positions.
        ratio: drop ratio r in [0, 1).
        prob: probability p in [0, 1] that a sample is dropped at all.
        generator: a CPU ``torch.Generator`` for reproducible drops.
        reference_mode: reproduce the reference trigger (see the module docstring).

    Returns:
        :class:`VRLResult` with (B, L') tensors where L' is the longest compacted sequence, and
        ``kept_per_sample`` / ``total_per_sample`` image-token counts (B,).
    """
    _check("ratio", ratio, upper_open=True)
    _check("prob", prob, upper_open=False)
    b, length = attention_mask.shape
    for name, t in (
        ("labels", labels),
        ("position_ids", position_ids),
        ("image_token_mask", image_token_mask),
    ):
        if t.shape != (b, length):
            raise ValueError(f"{name} must have shape {(b, length)}, got {tuple(t.shape)}")
    if inputs_embeds.shape[:2] != (b, length):
        raise ValueError(
            f"inputs_embeds must have shape ({b}, {length}, C), got {tuple(inputs_embeds.shape)}"
        )

    device = inputs_embeds.device
    valid = attention_mask.bool()
    image = image_token_mask.bool() & valid
    total = image.sum(dim=1).cpu()  # (B,)

    if reference_mode:
        fire = bool(_uniform(generator, 1).item() > ratio)  # reference: fires with prob 1 - r
        apply = torch.full((b,), fire)
    else:
        apply = _uniform(generator, b) < prob if prob < 1.0 else torch.ones(b, dtype=torch.bool)

    keep = valid.clone()  # (B, L)
    kept = total.clone()
    image_cpu = image.cpu()
    for i in range(b):
        n = int(total[i])
        if not apply[i] or n == 0 or ratio == 0.0:
            continue
        k = n - int(n * ratio) if reference_mode else kept_count(n, ratio)
        positions = image_cpu[i].nonzero().squeeze(1)  # (n,) in sequence order
        dropped = positions[torch.randperm(n, generator=generator)[: n - k]]
        keep[i, dropped.to(device)] = False
        kept[i] = k

    if bool((keep == valid).all()):
        return VRLResult(inputs_embeds, attention_mask, labels, position_ids, kept, total)

    # Compact: a stable sort on "not kept" moves survivors to the front in their original order.
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # (B, L)
    new_len = int(keep.sum(dim=1).max())
    order = order[:, :new_len]  # (B, L')
    survivors = torch.gather(keep, 1, order)  # (B, L') False in the padding tail
    embeds = torch.gather(inputs_embeds, 1, order.unsqueeze(-1).expand(-1, -1, inputs_embeds.shape[-1]))
    embeds = embeds * survivors.unsqueeze(-1).to(embeds.dtype)  # zero the padding tail
    new_mask = survivors.to(attention_mask.dtype)
    new_labels = torch.where(survivors, torch.gather(labels, 1, order), torch.full_like(order, IGNORE_INDEX))
    pos = torch.gather(position_ids, 1, order)
    last = torch.where(survivors, pos, torch.full_like(pos, -1)).max(dim=1, keepdim=True).values  # (B, 1)
    tail = last + 1 + (torch.arange(new_len, device=device) - survivors.sum(dim=1, keepdim=True)).clamp(min=0)
    new_pos = torch.where(survivors, pos, tail)
    return VRLResult(embeds, new_mask, new_labels, new_pos, kept, total)
