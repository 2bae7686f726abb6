"""Dense decoders over a four-level pyramid (strides 4, 8, 16, 32).

* ``UperNetHead`` — UPerNet (Xiao et al., 2018) as in mmsegmentation's ``UPerHead``: a pyramid
  pooling module on the coarsest map, a top-down FPN, all levels upsampled to stride 4,
  concatenated and fused by a 3×3 conv, then a 1×1 classifier. The paper's head for iSAID,
  LoveDA, UAVid, Potsdam and the change-detection benchmarks.
* ``UNetHead`` — a UNet-style decoder: start from the coarsest map, repeatedly upsample ×2,
  concatenate the next finer map and apply two 3×3 convs; classifier at stride 4.

Both return logits at stride 4; the model wrapping them upsamples to the input size.

Normalisation is BatchNorm, as mmseg's ``ConvModule`` (``SyncBN`` there), through
:class:`HeadBatchNorm2d`: where a training batch holds one value per channel (batch 1 into the
1×1 global pooling branch, or a 1×1 map), plain BatchNorm cannot compute a variance and raises;
this one normalises such a batch with its running statistics instead (and leaves them as they
are). Every other batch is ordinary BatchNorm, and the state-dict keys are BatchNorm's, so
checkpoints written before keep loading unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class HeadBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` that also trains on batches with one value per channel (module doc)."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalise (B, C, H, W); with B·H·W == 1 in training, by the running statistics."""
        one_value = x.shape[0] * x.shape[2] * x.shape[3] == 1
        if self.training and one_value and self.running_mean is not None and self.running_var is not None:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
            )
        return super().forward(x)


class ConvBNReLU(nn.Sequential):
    """Conv → BatchNorm → ReLU (the mmseg ``ConvModule`` default)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            HeadBatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def _resize(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _check_levels(in_channels: list[int]) -> None:
    if len(in_channels) != 4 or min(in_channels) <= 0:
        raise ValueError(f"in_channels must list 4 positive widths (strides 4..32), got {in_channels}")


class UperNetHead(nn.Module):
    """UPerNet decoder (module doc).

    Args:
        in_channels: widths of the four input maps, finest first.
        num_classes: output classes K.
        channels: internal width (512 in mmseg; smaller for tiny models).
        pool_scales: pyramid pooling bins on the coarsest map.
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        _check_levels(in_channels)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.pool_scales = tuple(pool_scales)
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(in_channels[-1], channels, 1))
            for s in self.pool_scales
        )
        self.bottleneck = ConvBNReLU(in_channels[-1] + len(self.pool_scales) * channels, channels, 3)
        self.lateral = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = ConvBNReLU(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        """Decode.

        Args:
            feats: four maps (B, C_i, H/s_i, W/s_i), s = 4, 8, 16, 32.

        Returns:
            (B, K, H/4, W/4) logits.
        """
        top = feats[-1]
        pooled = [top] + [_resize(m(top), top.shape[-2:]) for m in self.ppm]
        laterals = [lat(f) for lat, f in zip(self.lateral, feats[:-1], strict=True)]
        laterals.append(self.bottleneck(torch.cat(pooled, dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [fpn(lat) for fpn, lat in zip(self.fpn, laterals[:-1], strict=True)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([_resize(o, size) for o in outs], dim=1))
        return self.classifier(self.dropout(fused))


class UNetHead(nn.Module):
    """UNet-style decoder (module doc).

    Args:
        in_channels: widths of the four input maps, finest first.
        num_classes: output classes K.
        channels: width of the decoder at stride 4; it doubles at each coarser stage.
        dropout: dropout before the classifier.
    """

    def __init__(
        self, in_channels: list[int], num_classes: int, channels: int = 64, dropout: float = 0.1
    ) -> None:
        super().__init__()
        _check_levels(in_channels)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        widths = [channels * 2**i for i in range(4)]  # decoder width at strides 4, 8, 16, 32
        self.center = ConvBNReLU(in_channels[3], widths[3], 3)
        self.stages = nn.ModuleList(
            nn.Sequential(
                ConvBNReLU(widths[i + 1] + in_channels[i], widths[i], 3), ConvBNReLU(widths[i], widths[i], 3)
            )
            for i in (2, 1, 0)
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        """Decode.

        Args:
            feats: four maps (B, C_i, H/s_i, W/s_i), s = 4, 8, 16, 32.

        Returns:
            (B, K, H/4, W/4) logits.
        """
        x = self.center(feats[3])
        for stage, skip in zip(self.stages, (feats[2], feats[1], feats[0]), strict=True):
            x = stage(torch.cat([_resize(x, skip.shape[-2:]), skip], dim=1))
        return self.classifier(self.dropout(x))


def build_head(name: str, in_channels: list[int], num_classes: int, channels: int) -> nn.Module:
    """``upernet`` or ``unet`` head by name."""
    if name == "upernet":
        return UperNetHead(in_channels, num_classes, channels=channels)
    if name == "unet":
        return UNetHead(in_channels, num_classes, channels=channels)
    raise ValueError(f"head must be 'upernet' or 'unet', got {name!r}")
