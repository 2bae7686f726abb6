"""ViT-Adapter with multi-scale deformable attention (Chen et al., ICLR 2023), as the ViTP paper uses it.

The same design as ``models.adapter`` (spatial prior module, four injector / extractor
interactions around groups of ViT blocks, ConvFFN, the ViT features added back to each level),
with the reference's **multi-scale deformable attention** (Zhu et al., Deformable DETR) in the
injector and extractor instead of global cross-attention: each query looks at ``n_points``
learned offsets around its reference point on every value level, with softmax weights over all
of them. Written in plain PyTorch with ``torch.nn.functional.grid_sample`` (bilinear, zero
padding, ``align_corners=False``), so it runs on CPU and GPU without compiled kernels; its cost
is linear in the number of queries.

Settings follow the reference: 4 sampling points, the ViT's number of heads, value projection
ratio (``deform_ratio``) 0.25 and ConvFFN ratio 0.25, injector ``gamma`` initialised to
``init_values`` (0: the ViT is unchanged at the start), two extra extractors after the last
interaction, sampling offsets initialised on rays of 1..n_points cells per head, attention
weights at 0 (uniform). Parameters are named as the reference's modules name them
(``spm.stem`` / ``conv2``–``conv4`` / ``fc1``–``fc4``, ``level_embed``,
``interactions.{i}.injector.{query_norm, feat_norm, attn.{sampling_offsets, attention_weights,
value_proj, output_proj}, gamma}``, ``interactions.{i}.extractor.{…, ffn.{fc1, dwconv.dwconv,
fc2}, ffn_norm}``, ``interactions.3.extra_extractors.{0,1}``, ``up``, ``norm1``–``norm4``), with
the ViT under ``backbone.``. The prior stem and the four outputs are batch-normalised by default;
``norm="layer"`` gives the reference's channels-first LayerNorm (``use_final_norm=True``) and
``attn_norm_eps=1e-5`` its interaction LayerNorms, the layout ``vitp-geo convert`` builds for
released fine-tuned weights (``vitp_geo.convert``).

Reference points are token centres in pixels divided by the extent of the value map they sample
(so a patch-14 ViT grid and the stride-8/16/32 prior levels, which cover slightly different
padded extents, still line up); with a patch-16 ViT on inputs divisible by 32 this is the
reference's normalised grid.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from vitp_geo.models.adapter import conv_per_level, interaction_groups
from vitp_geo.models.pyramid import STRIDES, enable_dynamic_size, patch_size_of, pyramid_sizes

# The reference's interactions for InternViT-300M (24 blocks); other depths get four equal groups.
REFERENCE_INTERACTIONS: dict[int, list[list[int]]] = {24: [[0, 7], [8, 11], [12, 15], [16, 23]]}
# Normalisation of the prior stem and the four outputs: BatchNorm, or the reference's
# channels-first LayerNorm (eps 1e-6; ``use_final_norm=True``), which released weights need.
NORMS = ("batch", "layer")


def _norm2d(kind: str, dim: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(dim)
    if kind == "layer":
        return LayerNorm2d(dim, eps=1e-6)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {kind!r}")


def ms_deform_attn_sample(
    value: Tensor, shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor
) -> Tensor:
    """Weighted bilinear samples of multi-level value maps (the core of deformable attention).

    Args:
        value: (B, S, M, C) values of all levels, flattened row-major and concatenated
            (S = Σ H_l·W_l), M heads of C channels.
        shapes: (H_l, W_l) per level.
        locations: (B, Q, M, L, P, 2) sampling points ``(x, y)`` in [0, 1] of each level's extent
            (0 = left / top edge, 1 = right / bottom edge; outside reads zeros).
        weights: (B, Q, M, L, P) weights of the samples (softmax over L·P in the attention).

    Returns:
        (B, Q, M·C).
    """
    b, _, m, c = value.shape
    q, n_levels, n_points = locations.shape[1], locations.shape[3], locations.shape[4]
    if len(shapes) != n_levels:
        raise ValueError(f"{len(shapes)} level shapes for {n_levels} levels of sampling locations")
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2.0 * locations - 1.0  # grid_sample's [-1, 1]
    samples = []
    for lvl, (h, w) in enumerate(shapes):
        v = per_level[lvl].permute(0, 2, 3, 1).reshape(b * m, c, h, w)  # (B·M, C, H, W)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(b * m, q, n_points, 2)  # (B·M, Q, P, 2)
        samples.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(samples, dim=3).reshape(b * m, c, q, n_levels * n_points)  # (B·M, C, Q, L·P)
    wts = weights.transpose(1, 2).reshape(b * m, 1, q, n_levels * n_points)
    out = (stacked * wts).sum(-1)  # (B·M, C, Q)
    return out.reshape(b, m * c, q).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (module doc).

    Args:
        dim: query / output width.
        n_levels: value levels.
        n_heads: heads.
        n_points: sampling points per head and level.
        ratio: value width as a share of ``dim`` (``deform_ratio``).
    """

    def __init__(self, dim: int, n_levels: int, n_heads: int, n_points: int = 4, ratio: float = 1.0) -> None:
        super().__init__()
        value_dim = int(dim * ratio)
        if value_dim % n_heads:
            raise ValueError(
                f"value width {value_dim} (dim {dim} × ratio {ratio}) is not divisible by {n_heads} heads"
            )
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(dim, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(dim, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(dim, value_dim)
        self.output_proj = nn.Linear(value_dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on rays (one direction per head, 1..P cells out); weights uniform."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        rays = torch.stack([angles.cos(), angles.sin()], -1)
        rays = rays / rays.abs().max(-1, keepdim=True).values  # onto the unit square's border
        grid = rays[:, None, None, :].repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self, query: Tensor, reference: Tensor, value: Tensor, shapes: list[tuple[int, int]]
    ) -> Tensor:
        """(B, Q, D) queries at (B, Q, 2) reference points ``(x, y)`` in [0, 1] over (B, S, D)
        values of ``shapes`` → (B, Q, D)."""
        b, q, _ = query.shape
        if sum(h * w for h, w in shapes) != value.shape[1]:
            raise ValueError(
                f"value has {value.shape[1]} tokens, shapes {shapes} give {sum(h * w for h, w in shapes)}"
            )
        v = self.value_proj(value).reshape(b, value.shape[1], self.n_heads, -1)
        offsets = self.sampling_offsets(query).reshape(b, q, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).reshape(b, q, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).reshape(b, q, self.n_heads, self.n_levels, self.n_points)
        # offsets are in cells of each level: divide by its (W, H)
        norm = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
        locations = reference[:, :, None, None, None, :] + offsets / norm[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn_sample(v, shapes, locations, weights))


class DWConv(nn.Module):
    """Depthwise 3×3 conv applied to each level's map of a concatenated token sequence."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor, sizes: list[tuple[int, int]]) -> Tensor:
        return conv_per_level(self.dwconv, x, sizes)


class ConvFFN(nn.Module):
    """Linear → depthwise conv per level → GELU → linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, sizes: list[tuple[int, int]]) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), sizes)))


class Injector(nn.Module):
    """ViT tokens attend (deformably) to the prior's three levels; added scaled by ``gamma``."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_points: int,
        deform_ratio: float,
        init_values: float,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.feat_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MSDeformAttn(dim, 3, n_heads, n_points, deform_ratio)
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(
        self, query: Tensor, reference: Tensor, feat: Tensor, shapes: list[tuple[int, int]]
    ) -> Tensor:
        return query + self.gamma * self.attn(self.query_norm(query), reference, self.feat_norm(feat), shapes)


class Extractor(nn.Module):
    """Prior tokens attend (deformably) to the ViT tokens, then a ConvFFN; both residual."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_points: int,
        deform_ratio: float,
        cffn_ratio: float,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.feat_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MSDeformAttn(dim, 1, n_heads, n_points, deform_ratio)
        self.ffn = ConvFFN(dim, max(1, int(dim * cffn_ratio)))
        self.ffn_norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(
        self,
        query: Tensor,
        reference: Tensor,
        feat: Tensor,
        feat_shape: tuple[int, int],
        query_sizes: list[tuple[int, int]],
    ) -> Tensor:
        query = query + self.attn(self.query_norm(query), reference, self.feat_norm(feat), [feat_shape])
        return query + self.ffn(self.ffn_norm(query), query_sizes)


class InteractionBlock(nn.Module):
    """Injector, a group of ViT blocks, extractor (and, on the last one, extra extractors)."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_points: int,
        deform_ratio: float,
        cffn_ratio: float,
        init_values: float,
        extra_extractors: int = 0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.injector = Injector(dim, n_heads, n_points, deform_ratio, init_values, norm_eps)
        self.extractor = Extractor(dim, n_heads, n_points, deform_ratio, cffn_ratio, norm_eps)
        self.extra_extractors = (
            nn.ModuleList(
                Extractor(dim, n_heads, n_points, deform_ratio, cffn_ratio, norm_eps)
                for _ in range(extra_extractors)
            )
            if extra_extractors
            else None
        )


class SpatialPriorModule(nn.Module):
    """Convolutional stem: c1 (stride 4) and maps at strides 8, 16, 32, projected to the ViT width."""

    def __init__(self, in_chans: int, dim: int, width: int = 64, norm: str = "batch") -> None:
        super().__init__()

        def conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                _norm2d(norm, cout),
                nn.ReLU(inplace=True),
            ]

        self.stem = nn.Sequential(
            *conv(in_chans, width, 2), *conv(width, width, 1), *conv(width, width, 1), nn.MaxPool2d(3, 2, 1)
        )
        self.conv2 = nn.Sequential(*conv(width, 2 * width, 2))
        self.conv3 = nn.Sequential(*conv(2 * width, 4 * width, 2))
        self.conv4 = nn.Sequential(*conv(4 * width, 4 * width, 2))
        self.fc1 = nn.Conv2d(width, dim, 1)
        self.fc2 = nn.Conv2d(2 * width, dim, 1)
        self.fc3 = nn.Conv2d(4 * width, dim, 1)
        self.fc4 = nn.Conv2d(4 * width, dim, 1)

    def forward(self, x: Tensor) -> list[Tensor]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return [self.fc1(c1), self.fc2(c2), self.fc3(c3), self.fc4(c4)]


def token_centres(height: int, width: int, stride: float, extent: tuple[float, float]) -> Tensor:
    """(H·W, 2) centres ``(x, y)`` of a stride-``stride`` grid, divided by ``extent`` = (width, height) in pixels."""
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) * stride / extent[1]
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) * stride / extent[0]
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)


class DeformableViTAdapter(nn.Module):
    """A ViT with a spatial prior module and four deformable injector / extractor interactions.

    Args:
        backbone: a timm ``VisionTransformer``.
        interaction_indexes: inclusive block ranges of the four interactions (default: the
            reference's ``[[0, 7], [8, 11], [12, 15], [16, 23]]`` for a 24-block ViT such as
            InternViT-300M, else four equal groups).
        n_heads: deformable-attention heads (default the ViT's).
        n_points: sampling points per head and level.
        deform_ratio: value width / ViT width in the deformable attentions.
        cffn_ratio: ConvFFN hidden width / ViT width.
        init_values: initial injector ``gamma``.
        extra_extractors: extractors added after the last interaction.
        prior_width: channels of the spatial prior stem.
        norm: ``batch`` (BatchNorm in the prior stem and on the four outputs) or ``layer``
            (channels-first LayerNorm, eps 1e-6: the reference's ``InternViTAdapter`` with
            ``use_final_norm=True``, which its released fine-tuned weights need).
        attn_norm_eps: eps of the injector / extractor LayerNorms (1e-6; the reference's
            ``InternViTAdapter`` builds them with torch's default, 1e-5).

    Attributes:
        out_channels: four times the ViT width.
        strides: ``(4, 8, 16, 32)``.
    """

    def __init__(
        self,
        backbone: VisionTransformer,
        interaction_indexes: list[list[int]] | None = None,
        n_heads: int | None = None,
        n_points: int = 4,
        deform_ratio: float = 0.25,
        cffn_ratio: float = 0.25,
        init_values: float = 0.0,
        extra_extractors: int = 2,
        prior_width: int = 64,
        norm: str = "batch",
        attn_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        enable_dynamic_size(backbone)
        self.backbone = backbone
        dim = int(backbone.embed_dim)
        depth = len(backbone.blocks)
        first: Any = backbone.blocks[0]
        heads = int(n_heads or first.attn.num_heads)
        if interaction_indexes is None:
            interaction_indexes = REFERENCE_INTERACTIONS.get(depth)
        groups = (
            [(int(a), int(b)) for a, b in interaction_indexes]
            if interaction_indexes is not None
            else interaction_groups(depth)
        )
        if (
            len(groups) != 4
            or groups[0][0] != 0
            or groups[-1][1] != depth - 1
            or any(
                b < a or nxt[0] != b + 1
                for (a, b), nxt in zip(groups, groups[1:] + [(depth, depth)], strict=True)
            )
        ):
            raise ValueError(
                f"interaction_indexes must be four contiguous inclusive ranges covering blocks 0..{depth - 1}, "
                f"got {interaction_indexes}"
            )
        self.groups = groups
        in_chans = int(backbone.patch_embed.proj.in_channels)
        self.patch = patch_size_of(backbone)
        self.spm = SpatialPriorModule(in_chans, dim, prior_width, norm)
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        nn.init.normal_(self.level_embed, std=0.02)
        self.interactions = nn.ModuleList(
            InteractionBlock(
                dim,
                heads,
                n_points,
                deform_ratio,
                cffn_ratio,
                init_values,
                extra_extractors if i == len(groups) - 1 else 0,
                attn_norm_eps,
            )
            for i in range(len(groups))
        )
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norm1, self.norm2, self.norm3, self.norm4 = (_norm2d(norm, dim) for _ in STRIDES)
        self.out_channels: list[int] = [dim] * 4
        self.strides = STRIDES

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, C, H, W) normalised images → four maps (B, D, ceil(H/s), ceil(W/s)), s = 4, 8, 16, 32."""
        b, _, height, width = x.shape
        out_sizes = pyramid_sizes(height, width)
        pad_h, pad_w = (-height) % 32, (-width) % 32  # the prior stem works on a multiple of 32
        padded = (width + pad_w, height + pad_h)
        c1, c2, c3, c4 = self.spm(F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x)
        sizes = [(int(m.shape[2]), int(m.shape[3])) for m in (c2, c3, c4)]
        c = torch.cat(
            [m.flatten(2).transpose(1, 2) + self.level_embed[i] for i, m in enumerate((c2, c3, c4))], dim=1
        )

        vit = self.backbone
        tokens = vit.patch_embed(x)  # (B, h, w, D)
        gh, gw = int(tokens.shape[1]), int(tokens.shape[2])
        seq = vit.norm_pre(vit.patch_drop(vit._pos_embed(tokens)))
        n_prefix = int(vit.num_prefix_tokens)
        vit_extent = (float(gw * self.patch), float(gh * self.patch))
        # injector: ViT token centres over the prior levels' (padded) extent
        ref_inject = token_centres(gh, gw, self.patch, padded).to(x)[None].expand(b, -1, -1)
        # extractor: prior token centres (strides 8, 16, 32) over the ViT grid's extent
        ref_extract = (
            torch.cat(
                [token_centres(h, w, s, vit_extent) for (h, w), s in zip(sizes, STRIDES[1:], strict=True)]
            )
            .to(x)[None]
            .expand(b, -1, -1)
        )
        for (start, end), block in zip(self.groups, self.interactions, strict=True):
            assert isinstance(block, InteractionBlock)
            prefix, patches = seq[:, :n_prefix], seq[:, n_prefix:]
            patches = block.injector(patches, ref_inject, c, sizes)
            seq = vit.blocks[start : end + 1](torch.cat([prefix, patches], dim=1))
            feat = seq[:, n_prefix:]
            c = block.extractor(c, ref_extract, feat, (gh, gw), sizes)
            for extra in block.extra_extractors or []:
                c = extra(c, ref_extract, feat, (gh, gw), sizes)

        n2, n3 = sizes[0][0] * sizes[0][1], sizes[1][0] * sizes[1][1]
        maps = [c1]
        for part, (h, w) in zip((c[:, :n2], c[:, n2 : n2 + n3], c[:, n2 + n3 :]), sizes, strict=True):
            maps.append(part.transpose(1, 2).reshape(b, -1, h, w))
        maps[0] = maps[0] + self.up(maps[1])
        vit_map = seq[:, n_prefix:].transpose(1, 2).reshape(b, -1, gh, gw)
        outs = []
        for m, norm, size in zip(
            maps, (self.norm1, self.norm2, self.norm3, self.norm4), out_sizes, strict=True
        ):
            m = m[..., : size[0], : size[1]]
            m = m + F.interpolate(vit_map, size=size, mode="bilinear", align_corners=False)
            outs.append(norm(m))
        return outs
