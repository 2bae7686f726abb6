"""Which scaled-dot-product-attention kernel a training step uses.

On a CPU under bf16 autocast, torch's fused CPU flash-attention kernel is fast forward and slow
backward: in the tiny default's ViT (4 blocks, 65 tokens a tile, head dim 64) its backward took
11.6 ms a block for 32 tiles, 15 times its forward, and 37 % of a pretraining step with the ViT
training (torch 2.14, 2 cores; ``benchmarks/pretrain_step.py``). The math kernel (batched matrix
products and a softmax) does the same work in plain ops and is faster there, forward and backward
together. In fp32 on a CPU the two are level (the fused kernel a few per cent ahead), and on CUDA
the fused kernels are the right choice, so nothing changes elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def cpu_bf16_autocast() -> bool:
    """Whether the calling code runs under CPU autocast to bf16."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


@contextmanager
def training_attention() -> Iterator[None]:
    """Route scaled-dot-product attention to the math kernel under CPU bf16 autocast; else no-op.

    Enter it inside the autocast region of a training step (the forward; the backward follows the
    kernels the forward chose).
    """
    if cpu_bf16_autocast():
        with sdpa_kernel(SDPBackend.MATH):
            yield
    else:
        yield
