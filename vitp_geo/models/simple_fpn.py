"""The reference detectors' LayerNorm ``SimpleFPN`` neck: per-level convs, no top-down pathway.

The ViTP reference configs for DIOR, DIOR-R, DOTA-v2.0, RSAR and SARDet-100K put a
``SimpleFPN`` (mmrotate, ``use_residual=False``, ``norm_cfg=LN``, no activation) between the
ViT-Adapter and the RPN instead of the classic FPN (Lin et al., 2017). Per level ``i`` of the
four adapter maps (strides 4–32)::

    out_i = LN(conv3x3(LN(conv1x1(x_i))))        # both convs without bias, LN over channels

and a fifth level (stride 64) is ``max_pool2d(out_3, kernel 1, stride 2)``, as torchvision's
``LastLevelMaxPool``. The adapter's maps are already fused across scales, so nothing flows
top-down. ``LN`` is a LayerNorm over the channel dimension at every pixel (eps 1e-5, mmcv's
``LN``).

The module takes and returns ``OrderedDict`` s like torchvision's ``FeaturePyramidNetwork``
(keys ``"0"``–``"3"`` in, plus ``"pool"`` out), so ``DetectionModel`` uses either. Parameters:
``lateral_convs.{i}.conv.weight`` (C, C_in, 1, 1), ``lateral_convs.{i}.norm.{weight, bias}``,
``fpn_convs.{i}.conv.weight`` (C, C, 3, 3), ``fpn_convs.{i}.norm.{weight, bias}`` — the
reference's names with mmcv's ``ln`` called ``norm`` (``vitp_geo.convert.keymap``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

# mmcv's ``LN`` norm layer is torch's LayerNorm with its default eps.
LN_EPS = 1e-5


class ConvLayerNorm(nn.Module):
    """Conv (no bias) → LayerNorm over channels (mmcv ``ConvModule`` with ``norm_cfg=LN``, no activation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.LayerNorm(out_channels, eps=LN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) → (B, C_out, H, W)."""
        y = self.conv(x).permute(0, 2, 3, 1)  # (B, H, W, C): LayerNorm over the last dimension
        return self.norm(y).permute(0, 3, 1, 2).contiguous()


class SimpleFPN(nn.Module):
    """Per-level 1×1 + 3×3 conv with LayerNorm, then a max-pooled stride-64 level (module doc).

    Args:
        in_channels_list: widths of the four input maps, finest first.
        out_channels: output width of every level (256 in the reference).
    """

    def __init__(self, in_channels_list: list[int], out_channels: int) -> None:
        super().__init__()
        if not in_channels_list or min(in_channels_list) <= 0 or out_channels <= 0:
            raise ValueError(
                f"SimpleFPN needs positive widths, got in {in_channels_list}, out {out_channels}"
            )
        self.lateral_convs = nn.ModuleList(ConvLayerNorm(c, out_channels, 1) for c in in_channels_list)
        self.fpn_convs = nn.ModuleList(ConvLayerNorm(out_channels, out_channels, 3) for _ in in_channels_list)
        for m in self.modules():  # mmdet's FPN init: Xavier-uniform convs
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, x: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        """Maps ``"0"``–``"3"`` (B, C_i, H_i, W_i) → the same names at ``out_channels`` plus ``"pool"``."""
        if len(x) != len(self.lateral_convs):
            raise ValueError(f"SimpleFPN takes {len(self.lateral_convs)} maps, got {len(x)}")
        names = list(x.keys())
        outs = [
            fpn(lat(feat))
            for lat, fpn, feat in zip(self.lateral_convs, self.fpn_convs, x.values(), strict=True)
        ]
        result = OrderedDict(zip(names, outs, strict=True))
        result["pool"] = F.max_pool2d(outs[-1], 1, 2, 0)
        return result
