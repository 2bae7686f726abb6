"""Multi-scale features from a plain ViT: the simple feature pyramid (ViTDet / BEiT style).

A plain ViT has one resolution (stride = patch size, 14 or 16). Dense heads (UperNet, UNet)
want four maps at strides 4, 8, 16 and 32. ``SimpleFeaturePyramid`` takes the tokens of four
chosen blocks (``out_indices``; by default the blocks at 1/3, 1/2, 2/3 and the end of the
depth, i.e. 7, 11, 15, 23 for ViT-L / InternViT-300M and 0, 1, 2, 3 for the tiny depth-4
variants) and resamples them:

* block ``out_indices[0]`` → two 2×2 transposed convolutions (×4) → stride p/4,
* block ``out_indices[1]`` → one 2×2 transposed convolution (×2) → stride p/2,
* block ``out_indices[2]`` → identity → stride p,
* block ``out_indices[3]`` → 2×2 max-pooling (÷2) → stride 2p.

With patch 16 these are exactly strides 4, 8, 16, 32. With patch 14 they are 3.5, 7, 14, 28,
so each map is then resized bilinearly to ``ceil(H / s) × ceil(W / s)`` for s = 4, 8, 16, 32;
every neck in this package returns exactly those sizes, whatever the patch size.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

STRIDES: tuple[int, int, int, int] = (4, 8, 16, 32)


def default_out_indices(depth: int) -> tuple[int, int, int, int]:
    """Blocks tapped for the pyramid: at 1/3, 1/2, 2/3 and the full depth (0-based).

    ``24 → (7, 11, 15, 23)`` (the ViT-L choice of the paper), ``12 → (3, 5, 7, 11)``,
    ``4 → (0, 1, 2, 3)``.
    """
    if depth < 4:
        raise ValueError(f"a four-level pyramid needs a backbone with at least 4 blocks, got depth {depth}")
    picks = [max(0, round(depth * f) - 1) for f in (1 / 3, 1 / 2, 2 / 3, 1.0)]
    for i in range(1, 4):  # keep them strictly increasing for shallow models
        picks[i] = max(picks[i], picks[i - 1] + 1)
    return (picks[0], picks[1], picks[2], picks[3])


def check_out_indices(out_indices: tuple[int, ...] | list[int], depth: int) -> tuple[int, int, int, int]:
    """Validate four block indexes for a backbone of ``depth`` blocks (negative ones count from the end)."""
    if len(out_indices) != 4:
        raise ValueError(f"out_indices must name 4 blocks, got {list(out_indices)}")
    norm = [i + depth if i < 0 else i for i in out_indices]
    if any(not 0 <= i < depth for i in norm):
        raise ValueError(f"out_indices {list(out_indices)} out of range for a backbone of depth {depth}")
    return (norm[0], norm[1], norm[2], norm[3])


def pyramid_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Output sizes ``ceil(H/s) × ceil(W/s)`` for s in ``STRIDES``."""
    return [(math.ceil(height / s), math.ceil(width / s)) for s in STRIDES]


def patch_size_of(vit: VisionTransformer) -> int:
    """The (square) patch size of a timm ViT."""
    p = vit.patch_embed.patch_size
    return int(p[0] if isinstance(p, tuple | list) else p)


def enable_dynamic_size(vit: VisionTransformer) -> VisionTransformer:
    """Let a timm ViT take inputs of any size (position embeddings resampled per call), in place.

    InternViT-layout models are built with ``dynamic_img_size=True`` already; other timm ViTs
    (e.g. ``vit_base_patch16_224``) are switched the way timm's constructor does it. Inputs that
    are not a multiple of the patch size are zero-padded to the next multiple (timm's
    ``dynamic_img_pad``); the pyramid then crops/resizes to ``ceil(H/s)``.
    """
    if not vit.dynamic_img_size:
        from timm.layers import Format

        vit.dynamic_img_size = True  # type: ignore[misc]
        vit.patch_embed.strict_img_size = False
        vit.patch_embed.flatten = False
        vit.patch_embed.output_fmt = Format.NHWC
    vit.patch_embed.dynamic_img_pad = True  # sizes that are not a multiple of the patch: pad the last patch
    return vit


class _ConvTranspose2x(nn.Sequential):
    def __init__(self, channels: int, with_norm: bool) -> None:
        layers: list[nn.Module] = [nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)]
        if with_norm:
            layers += [nn.BatchNorm2d(channels), nn.GELU()]
        super().__init__(*layers)


class SimpleFeaturePyramid(nn.Module):
    """Four maps at strides 4, 8, 16, 32 from four blocks of a plain ViT (module doc).

    Args:
        backbone: a timm ``VisionTransformer`` (any patch size; inputs of any size: position
            embeddings are resampled on the fly when the model has ``dynamic_img_size``).
        out_indices: the four blocks to tap; ``None`` = :func:`default_out_indices`.

    Attributes:
        out_channels: channels of each output map (the embedding width, four times).
        strides: ``(4, 8, 16, 32)``.
    """

    def __init__(
        self, backbone: VisionTransformer, out_indices: tuple[int, ...] | list[int] | None = None
    ) -> None:
        super().__init__()
        depth = len(backbone.blocks)
        self.backbone = enable_dynamic_size(backbone)
        self.out_indices = check_out_indices(
            tuple(out_indices) if out_indices is not None else default_out_indices(depth), depth
        )
        dim = int(backbone.embed_dim)
        self.ops = nn.ModuleList(
            [
                nn.Sequential(_ConvTranspose2x(dim, with_norm=True), _ConvTranspose2x(dim, with_norm=False)),
                _ConvTranspose2x(dim, with_norm=False),
                nn.Identity(),
                nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True),
            ]
        )
        self.out_channels: list[int] = [dim] * 4
        self.strides = STRIDES

    def forward(self, x: Tensor) -> list[Tensor]:
        """Compute the pyramid.

        Args:
            x: (B, C, H, W) normalised images.

        Returns:
            Four maps (B, D, ceil(H/s), ceil(W/s)) for s = 4, 8, 16, 32, D = embedding width.
        """
        height, width = x.shape[-2:]
        taps = sorted(set(self.out_indices))  # timm returns intermediates in block order, once each
        found: list[Tensor] = self.backbone.forward_intermediates(  # type: ignore[assignment]
            x, indices=taps, output_fmt="NCHW", intermediates_only=True
        )
        feats = [found[taps.index(i)] for i in self.out_indices]  # 4 × (B, D, H/p, W/p)
        outs = []
        for feat, op, size in zip(feats, self.ops, pyramid_sizes(height, width), strict=True):
            y = op(feat)
            if tuple(y.shape[-2:]) != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            outs.append(y)
        return outs
