"""ViT-Adapter (Chen et al., ICLR 2023), compact and PyTorch-only, as used by the ViTP paper.

What is the same as the reference design:

* **Spatial prior module**: a convolutional stem (3×3 convs, stride 2 → max-pool → stride 4),
  then stride-2 convs to strides 8, 16, 32; each level is projected to the ViT width with a 1×1
  conv. Level embeddings are added to the stride 8/16/32 tokens.
* **Interactions**: the ViT blocks are split into four equal groups (e.g. ``[0-5], [6-11],
  [12-17], [18-23]`` for depth 24). Before each group an **injector** lets the ViT patch tokens
  attend to the spatial-prior tokens (strides 8, 16, 32) and adds the result scaled by a learned
  per-channel ``gamma`` initialised to 0 — so at initialisation the ViT computes exactly what it
  computed before. After each group an **extractor** lets the spatial-prior tokens attend to the
  ViT tokens, followed by a ConvFFN (linear → 3×3 depthwise conv per level → GELU → linear,
  hidden = 1/4 of the width).
* **Outputs**: the stride 8/16/32 tokens become maps, stride 4 is ``c1 + up2(c2)``, the final
  ViT tokens are resized to each level and added, and each level is batch-normalised.

What differs, and why:

* The reference uses **multi-scale deformable attention** (a custom CUDA op) in the injector
  and extractor. Here both are **standard multi-head cross-attention** through
  ``torch.nn.functional.scaled_dot_product_attention``, over all key tokens (global, not
  windowed), with pre-LayerNorm on queries and keys as in the reference. It runs on CPU and
  GPU without compiled extensions; cost grows with (tokens at stride 8) × (ViT tokens), which is
  fine up to ~1024 px tiles.
* No ViT-Adapter-specific extra extractors after the last interaction and no CLS handling: the
  prefix (class) token stays in the ViT sequence but takes no part in the interactions.
* With patch 14 the ViT grid (stride 14) is resized bilinearly to each level when added, as for
  any patch size; outputs always have sizes ``ceil(H/s)`` for s = 4, 8, 16, 32.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from vitp_geo.models.pyramid import STRIDES, enable_dynamic_size, pyramid_sizes


def interaction_groups(depth: int, n: int = 4) -> list[tuple[int, int]]:
    """Split ``depth`` blocks into ``n`` contiguous inclusive ranges: ``24 → [(0,5), (6,11), (12,17), (18,23)]``."""
    if depth < n:
        raise ValueError(f"depth {depth} is smaller than the number of interactions {n}")
    bounds = [round(depth * i / n) for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(n)]


class CrossAttention(nn.Module):
    """Pre-norm multi-head cross-attention (queries attend to a separate key/value set).

    Args:
        dim: token width.
        num_heads: heads; ``dim`` must be divisible by it.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: Tensor, feat: Tensor) -> Tensor:
        """(B, Nq, D) queries, (B, Nk, D) keys/values → (B, Nq, D) attended values."""
        b, nq, d = query.shape
        h = self.num_heads
        q = self.q(self.norm_q(query)).reshape(b, nq, h, d // h).transpose(1, 2)  # (B, h, Nq, d/h)
        k, v = (
            self.kv(self.norm_kv(feat)).reshape(b, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)
        )  # (B, h, Nk, d/h)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, Nq, d/h)
        return self.proj(out.transpose(1, 2).reshape(b, nq, d))


def conv_per_level(conv: nn.Module, x: Tensor, sizes: list[tuple[int, int]]) -> Tensor:
    """Apply ``conv`` to each level's map of (B, N, C) tokens, the levels ``sizes`` concatenated
    row-major in that order → (B, N, C') in the same order."""
    b, _, c = x.shape
    parts, start = [], 0
    for h, w in sizes:
        part = x[:, start : start + h * w].transpose(1, 2).reshape(b, c, h, w)
        parts.append(conv(part).flatten(2).transpose(1, 2))
        start += h * w
    return torch.cat(parts, dim=1)


class ConvFFN(nn.Module):
    """Linear → depthwise 3×3 conv on each level's map → GELU → linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, sizes: list[tuple[int, int]]) -> Tensor:
        """(B, N, D) tokens of the levels ``sizes`` (concatenated in that order) → (B, N, D)."""
        return self.fc2(self.act(conv_per_level(self.dwconv, self.fc1(x), sizes)))


class SpatialPriorModule(nn.Module):
    """Convolutional stem giving c1 (stride 4) and tokens at strides 8, 16, 32, all ``dim`` wide."""

    def __init__(self, in_chans: int, dim: int, width: int = 64) -> None:
        super().__init__()

        def conv(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.stem = nn.Sequential(
            conv(in_chans, width, 2), conv(width, width, 1), conv(width, width, 1), nn.MaxPool2d(3, 2, 1)
        )
        self.conv2 = conv(width, 2 * width, 2)
        self.conv3 = conv(2 * width, 4 * width, 2)
        self.conv4 = conv(4 * width, 4 * width, 2)
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in (width, 2 * width, 4 * width, 4 * width))

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, C, H, W) → four (B, D, ·, ·) maps at strides 4, 8, 16, 32 (input padded to a multiple of 32)."""
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return [p(c) for p, c in zip(self.proj, (c1, c2, c3, c4), strict=True)]


class InteractionBlock(nn.Module):
    """Injector before a group of ViT blocks, extractor (+ ConvFFN) after it."""

    def __init__(self, dim: int, num_heads: int, cffn_ratio: float = 0.25) -> None:
        super().__init__()
        self.injector = CrossAttention(dim, num_heads)
        self.gamma = nn.Parameter(torch.zeros(dim))  # 0 at init: the ViT is unchanged
        self.extractor = CrossAttention(dim, num_heads)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = ConvFFN(dim, max(1, int(dim * cffn_ratio)))

    def forward(
        self, x: Tensor, c: Tensor, blocks: nn.Module, n_prefix: int, sizes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """x (B, P+N, D) ViT sequence, c (B, M, D) prior tokens → updated (x, c)."""
        prefix, patches = x[:, :n_prefix], x[:, n_prefix:]
        patches = patches + self.gamma * self.injector(patches, c)
        x = blocks(torch.cat([prefix, patches], dim=1))
        c = c + self.extractor(c, x[:, n_prefix:])
        c = c + self.ffn(self.ffn_norm(c), sizes)
        return x, c


class ViTAdapter(nn.Module):
    """A ViT with a spatial prior module and four injector/extractor interactions (module doc).

    Args:
        backbone: a timm ``VisionTransformer``.
        num_heads: heads of the cross-attentions; default the ViT's.
        prior_width: channels of the spatial prior stem (64 in the reference).

    Attributes:
        out_channels: four times the ViT width.
        strides: ``(4, 8, 16, 32)``.
    """

    def __init__(
        self, backbone: VisionTransformer, num_heads: int | None = None, prior_width: int = 64
    ) -> None:
        super().__init__()
        enable_dynamic_size(backbone)
        self.backbone = backbone
        dim = int(backbone.embed_dim)
        first: Any = backbone.blocks[0]
        heads = int(num_heads or first.attn.num_heads)
        in_chans = int(backbone.patch_embed.proj.in_channels)
        self.groups = interaction_groups(len(backbone.blocks))
        self.spm = SpatialPriorModule(in_chans, dim, prior_width)
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        nn.init.normal_(self.level_embed, std=0.02)
        self.interactions = nn.ModuleList(InteractionBlock(dim, heads) for _ in self.groups)
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norms = nn.ModuleList(nn.BatchNorm2d(dim) for _ in STRIDES)
        self.out_channels: list[int] = [dim] * 4
        self.strides = STRIDES

    def forward(self, x: Tensor) -> list[Tensor]:
        """Compute the pyramid.

        Args:
            x: (B, C, H, W) normalised images.

        Returns:
            Four maps (B, D, ceil(H/s), ceil(W/s)) for s = 4, 8, 16, 32.
        """
        b, _, height, width = x.shape
        out_sizes = pyramid_sizes(height, width)
        pad_h, pad_w = (-height) % 32, (-width) % 32  # the prior stem works on a multiple of 32
        c1, c2, c3, c4 = self.spm(F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x)
        sizes = [(int(c.shape[2]), int(c.shape[3])) for c in (c2, c3, c4)]
        c = torch.cat(
            [m.flatten(2).transpose(1, 2) + self.level_embed[i] for i, m in enumerate((c2, c3, c4))], dim=1
        )  # (B, M, D)

        vit = self.backbone
        tokens = vit.patch_embed(x)  # (B, h, w, D): dynamic size
        gh, gw = int(tokens.shape[1]), int(tokens.shape[2])
        seq = vit.norm_pre(vit.patch_drop(vit._pos_embed(tokens)))  # (B, P + h*w, D)
        n_prefix = int(vit.num_prefix_tokens)
        for (start, end), block in zip(self.groups, self.interactions, strict=True):
            seq, c = block(seq, c, vit.blocks[start : end + 1], n_prefix, sizes)

        n2, n3 = sizes[0][0] * sizes[0][1], sizes[1][0] * sizes[1][1]
        maps = [c1]
        for part, (h, w) in zip((c[:, :n2], c[:, n2 : n2 + n3], c[:, n2 + n3 :]), sizes, strict=True):
            maps.append(part.transpose(1, 2).reshape(b, -1, h, w))
        maps[0] = maps[0] + self.up(maps[1])
        vit_map = seq[:, n_prefix:].transpose(1, 2).reshape(b, -1, gh, gw)  # (B, D, H/p, W/p)
        outs = []
        for m, norm, size in zip(maps, self.norms, out_sizes, strict=True):
            m = m[..., : size[0], : size[1]]  # drop the padding of the prior stem
            m = m + F.interpolate(vit_map, size=size, mode="bilinear", align_corners=False)
            outs.append(norm(m))
        return outs
