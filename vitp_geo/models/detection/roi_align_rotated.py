"""Rotated RoI align in plain tensor ops (no compiled extension; CPU and GPU, differentiable).

A rotated RoI ``(cx, cy, w, h, angle)`` (image pixels, radians) is cut into
``output_size`` bins in its own frame; each bin averages ``sampling_ratio²`` bilinear samples.
A point ``(u, v)`` of the RoI frame (origin at the centre, ``u`` along the width) lies at
``(cx + u cos a - v sin a, cy + u sin a + v cos a)`` in the image — the rotation the box
coder and ``obb.obb_to_poly`` use. Feature coordinates are ``image * spatial_scale``; with
``aligned=True`` a half-pixel offset puts pixel centres at integer + 0.5, as in
``torchvision.ops.roi_align(aligned=True)``, which this function equals at angle 0 (same
bilinear rule at the borders: samples more than one pixel outside give 0, samples within one
pixel are clamped to the edge). When every RoI of a call has angle 0 (the horizontal proposals of
a Rotated Faster R-CNN) the call goes to torchvision's compiled kernel, which computes the same
values faster; ``rotated_kernel=True`` forces the tensor-op path (tests compare the two).

``MultiScaleRotatedRoIAlign`` picks a pyramid level per RoI by its size (the FPN rule of
``torchvision.ops.MultiScaleRoIAlign``) and gathers all levels without a Python loop over boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align as tv_roi_align


def _bilinear(features: Tensor, batch: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Bilinear samples of ``features`` (B, C, H, W) at (K, S) points ``y, x`` of images ``batch`` (K,).

    Returns:
        (K, S, C).
    """
    _, c, height, width = features.shape
    valid = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    y = y.clamp(min=0.0)
    x = x.clamp(min=0.0)
    y0 = y.floor().long()
    x0 = x.floor().long()
    top_y = y0 >= height - 1
    top_x = x0 >= width - 1
    y0 = torch.where(top_y, height - 1, y0)
    x0 = torch.where(top_x, width - 1, x0)
    y = torch.where(top_y, y0.to(y.dtype), y)
    x = torch.where(top_x, x0.to(x.dtype), x)
    y1 = (y0 + 1).clamp(max=height - 1)
    x1 = (x0 + 1).clamp(max=width - 1)
    ly, lx = y - y0, x - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    flat = features.permute(0, 2, 3, 1).reshape(-1, c)  # (B*H*W, C)
    base = (batch * (height * width))[:, None]  # (K, 1)

    def at(yy: Tensor, xx: Tensor) -> Tensor:
        return flat[(base + yy * width + xx).reshape(-1)].reshape(*yy.shape, c)

    out = (
        at(y0, x0) * (hy * hx)[..., None]
        + at(y0, x1) * (hy * lx)[..., None]
        + at(y1, x0) * (ly * hx)[..., None]
        + at(y1, x1) * (ly * lx)[..., None]
    )
    return out * valid[..., None].to(out.dtype)


def roi_align_rotated(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = True,
    rotated_kernel: bool = False,
) -> Tensor:
    """Pool rotated RoIs from a feature map (module doc).

    Args:
        features: (B, C, H, W).
        rois: (K, 6) ``batch_index, cx, cy, w, h, angle`` in image pixels.
        output_size: bins ``(ph, pw)`` (or one int for both).
        spatial_scale: feature / image size (1 / stride).
        sampling_ratio: samples per bin side (> 0: a fixed count keeps the op vectorised).
        aligned: half-pixel offset (module doc).
        rotated_kernel: always use the tensor-op path, even when every angle is 0.

    Returns:
        (K, C, ph, pw).
    """
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    if sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be >= 1, got {sampling_ratio}")
    if rois.ndim != 2 or rois.shape[1] != 6:
        raise ValueError(f"rois must be (K, 6) batch_index, cx, cy, w, h, angle; got {tuple(rois.shape)}")
    k, c = rois.shape[0], features.shape[1]
    if k == 0:
        return features.new_zeros((0, c, ph, pw))
    if not rotated_kernel and not bool(
        rois[:, 5].any()
    ):  # all horizontal: torchvision's kernel computes the same, faster
        x1 = rois[:, 1] - rois[:, 3] / 2
        y1 = rois[:, 2] - rois[:, 4] / 2
        boxes = torch.stack([rois[:, 0], x1, y1, x1 + rois[:, 3], y1 + rois[:, 4]], dim=1)
        return tv_roi_align(
            features, boxes.to(features.dtype), (ph, pw), spatial_scale, sampling_ratio, aligned
        )
    s = sampling_ratio
    dtype = features.dtype
    rois = rois.to(dtype)
    offset = 0.5 if aligned else 0.0
    cx = rois[:, 1] * spatial_scale - offset
    cy = rois[:, 2] * spatial_scale - offset
    w0 = rois[:, 3] * spatial_scale
    h0 = rois[:, 4] * spatial_scale
    # torchvision's legacy (unaligned) rule: RoIs at least one feature pixel wide, from the start edge.
    w, h = (w0, h0) if aligned else (w0.clamp(min=1.0), h0.clamp(min=1.0))
    a = rois[:, 5]
    # Sample positions in [0, 1) along each side: bin i, sub-sample j → (i + (j + 0.5) / s) / p.
    fy = (torch.arange(ph * s, device=rois.device, dtype=dtype) + 0.5) / (ph * s)
    fx = (torch.arange(pw * s, device=rois.device, dtype=dtype) + 0.5) / (pw * s)
    v = fy[None, :] * h[:, None] - h0[:, None] / 2  # (K, ph*s), RoI frame
    u = fx[None, :] * w[:, None] - w0[:, None] / 2  # (K, pw*s)
    cos, sin = torch.cos(a)[:, None, None], torch.sin(a)[:, None, None]
    uu, vv = u[:, None, :], v[:, :, None]  # (K, 1, pw*s), (K, ph*s, 1)
    x = cx[:, None, None] + uu * cos - vv * sin  # (K, ph*s, pw*s)
    y = cy[:, None, None] + uu * sin + vv * cos
    batch = rois[:, 0].long()
    samples = _bilinear(features, batch, y.reshape(k, -1), x.reshape(k, -1))  # (K, ph*s*pw*s, C)
    samples = samples.reshape(k, ph, s, pw, s, c).mean(dim=(2, 4))  # (K, ph, pw, C)
    return samples.permute(0, 3, 1, 2).contiguous()


def fpn_levels(
    wh: Tensor, k_min: int, k_max: int, canonical_scale: float = 224.0, canonical_level: int = 4
) -> Tensor:
    """FPN level (0-based from ``k_min``) per RoI of sizes ``wh`` (K, 2): ``floor(4 + log2(sqrt(wh) / 224))``."""
    size = torch.sqrt((wh[:, 0] * wh[:, 1]).clamp(min=1e-6))
    k = torch.floor(canonical_level + torch.log2(size / canonical_scale) + 1e-6)
    return (k.clamp(k_min, k_max) - k_min).long()


class MultiScaleRotatedRoIAlign(nn.Module):
    """Rotated RoI align over a feature pyramid, one level per RoI (module doc).

    Args:
        strides: stride of each pyramid level used (e.g. 4, 8, 16, 32), finest first.
        output_size: bins per side.
        sampling_ratio: samples per bin side.
    """

    def __init__(self, strides: Sequence[int], output_size: int = 7, sampling_ratio: int = 2) -> None:
        super().__init__()
        self.strides = [int(s) for s in strides]
        self.k_min = int(round(math.log2(self.strides[0])))
        self.k_max = int(round(math.log2(self.strides[-1])))
        if [2 ** (self.k_min + i) for i in range(len(self.strides))] != self.strides:
            raise ValueError(f"strides must be consecutive powers of two, got {list(strides)}")
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio

    def forward(self, features: Sequence[Tensor], rois: Tensor) -> Tensor:
        """Pool ``rois`` (K, 6) from ``features`` (one (B, C, H_l, W_l) map per stride) → (K, C, p, p)."""
        levels = fpn_levels(rois[:, 3:5], self.k_min, self.k_max)
        c = features[0].shape[1]
        out = features[0].new_zeros((rois.shape[0], c, self.output_size, self.output_size))
        for level, (feat, stride) in enumerate(zip(features, self.strides, strict=True)):
            idx = torch.nonzero(levels == level).squeeze(1)
            if idx.numel() == 0:
                continue
            pooled = roi_align_rotated(
                feat, rois[idx], self.output_size, 1.0 / stride, self.sampling_ratio, aligned=True
            )
            out = out.index_copy(0, idx, pooled.to(out.dtype))
        return out
