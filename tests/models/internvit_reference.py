"""Independent reference forward of the original InternViT on its own key layout (test helper).

Written from the InternViT description (class embedding, patch-embedding conv, learned position
embedding resized bicubically at run time, pre-norm blocks with layer-scale, no final norm); it
shares no code with ``vitp_geo``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def make_internvit_state_dict(
    dim: int = 48,
    depth: int = 2,
    grid: int = 4,
    patch: int = 14,
    seed: int = 0,
    prefix: str = "vision_model.",
) -> dict[str, Tensor]:
    """A miniature random checkpoint in InternViT's original key layout."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.2) -> Tensor:
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "embeddings.class_embedding": r(1, 1, dim),
        "embeddings.position_embedding": r(1, 1 + grid * grid, dim),
        "embeddings.patch_embedding.weight": r(dim, 3, patch, patch, scale=0.05),
        "embeddings.patch_embedding.bias": r(dim),
    }
    for i in range(depth):
        p = f"encoder.layers.{i}."
        sd.update(
            {
                p + "norm1.weight": 1 + r(dim, scale=0.1),
                p + "norm1.bias": r(dim),
                p + "attn.qkv.weight": r(3 * dim, dim),
                p + "attn.qkv.bias": r(3 * dim),
                p + "attn.proj.weight": r(dim, dim),
                p + "attn.proj.bias": r(dim),
                p + "ls1": r(dim, scale=0.5),
                p + "norm2.weight": 1 + r(dim, scale=0.1),
                p + "norm2.bias": r(dim),
                p + "mlp.fc1.weight": r(4 * dim, dim),
                p + "mlp.fc1.bias": r(4 * dim),
                p + "mlp.fc2.weight": r(dim, 4 * dim),
                p + "mlp.fc2.bias": r(dim),
                p + "ls2": r(dim, scale=0.5),
            }
        )
    return {prefix + k: v for k, v in sd.items()}


def internvit_forward(
    sd: dict[str, Tensor], pixel_values: Tensor, num_heads: int, prefix: str = "vision_model."
) -> Tensor:
    """last_hidden_state of InternViT: (B, 1 + h*w, C), class token first, no final norm."""
    w = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    x = F.conv2d(
        pixel_values,
        w["embeddings.patch_embedding.weight"],
        w["embeddings.patch_embedding.bias"],
        stride=w["embeddings.patch_embedding.weight"].shape[-1],
    )  # (B, C, h, wd)
    b, c, h, wd = x.shape
    x = x.flatten(2).transpose(1, 2)
    cls = w["embeddings.class_embedding"].expand(b, 1, c)
    pos = w["embeddings.position_embedding"]
    old = int(math.sqrt(pos.shape[1] - 1))
    grid = pos[:, 1:].reshape(1, old, old, c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(h, wd), mode="bicubic", align_corners=False)
    grid = grid.reshape(1, c, h * wd).permute(0, 2, 1)
    x = torch.cat([cls, x], dim=1) + torch.cat([pos[:, :1], grid], dim=1)
    depth = len({k.split(".")[2] for k in w if k.startswith("encoder.layers.")})
    hd = c // num_heads
    for i in range(depth):
        p = f"encoder.layers.{i}."
        y = F.layer_norm(x, (c,), w[p + "norm1.weight"], w[p + "norm1.bias"], eps=1e-6)
        qkv = F.linear(y, w[p + "attn.qkv.weight"], w[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(b, -1, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, -1, c)
        y = F.linear(y, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        x = x + y * w[p + "ls1"]
        y = F.layer_norm(x, (c,), w[p + "norm2.weight"], w[p + "norm2.bias"], eps=1e-6)
        y = F.linear(
            F.gelu(F.linear(y, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"])),
            w[p + "mlp.fc2.weight"],
            w[p + "mlp.fc2.bias"],
        )
        x = x + y * w[p + "ls2"]
    return x
