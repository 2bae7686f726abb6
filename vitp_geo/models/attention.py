"""Which scaled-dot-product-attention kernel a training step uses.

On a CPU under bf16 autocast, torch's fused CPU flash-attention kernel is fast forward and slow
backward: in the tiny default's ViT (4 blocks, 65 tokens a tile, head dim 64) its backward took
11.6 ms a block for 32 tiles, 15 times its forward, and 37 % of a pretraining step with the ViT
training (torch 2.14, 2 cores; ``benchmarks/pretrain_step.py``). The math kernel (batched matrix
products and a softmax) does the same work in plain ops and is faster there, forward and backward
together. It keeps each (batch, head, L, L) attention matrix for the backward, where the fused
kernel keeps O(L), so it is taken for short sequences only (:data:`MATH_MAX_TOKENS`): the tiny
default's (65 ViT tokens, at most about 200 LLM tokens) and not a 448 px InternViT's 1,025. In fp32 on
a CPU the two kernels are level (the fused one a few per cent ahead), and on CUDA the fused kernels
are the right choice, so nothing changes there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

# The longest sequence for which a training step takes the math kernel: its attention matrices
# (batch x heads x L x L, bf16) stay small next to the activations around them.
MATH_MAX_TOKENS = 512


def cpu_bf16_autocast() -> bool:
    """Whether the calling code runs under CPU autocast to bf16."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def vit_tokens(vit: Any, size: Sequence[int] | None = None) -> int:
    """Sequence length of a timm ViT on ``size`` (H, W) inputs (its own image size if None); 0 if no ViT."""
    embed = getattr(vit, "patch_embed", None)
    if embed is None:
        return 0
    ph, pw = embed.patch_size
    h, w = size if size is not None else embed.img_size
    return (int(h) // ph) * (int(w) // pw) + int(getattr(vit, "num_prefix_tokens", 1))


@contextmanager
def training_attention(tokens: int) -> Iterator[None]:
    """The math attention kernel under CPU bf16 autocast for sequences of at most ``MATH_MAX_TOKENS``.

    Enter it inside the autocast region of a training step's forward (the backward follows the
    kernels the forward chose); ``tokens`` is the step's longest sequence. Elsewhere a no-op.
    """
    if cpu_bf16_autocast() and tokens <= MATH_MAX_TOKENS:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    else:
        yield
