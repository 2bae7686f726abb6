"""Multi-scale deformable attention (grid_sample) and the deformable ViT-Adapter."""

from __future__ import annotations

import math

import pytest
import torch

from vitp_geo.models.deformable_adapter import DeformableViTAdapter, MSDeformAttn, ms_deform_attn_sample
from vitp_geo.tasks.backbone import build_backbone


def _bilinear_zero_pad(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """(C, H, W) sampled at normalised (x, y) in [0, 1] of the extent, pixel centres at (i + 0.5) / W."""
    _, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(img.shape[0], dtype=img.dtype)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            wgt = (1 - abs(px - xx)) * (1 - abs(py - yy))
            if 0 <= xx < w and 0 <= yy < h:
                out += wgt * img[:, yy, xx]
    return out


def _loop_reference(value, shapes, locations, weights):  # noqa: ANN001, ANN202
    b, _, m, c = value.shape
    q, n_points = locations.shape[1], locations.shape[4]
    levels = value.split([h * w for h, w in shapes], dim=1)
    out = torch.zeros(b, q, m, c, dtype=value.dtype)
    for bi in range(b):
        for qi in range(q):
            for mi in range(m):
                for li, (h, w) in enumerate(shapes):
                    img = levels[li][bi, :, mi, :].T.reshape(c, h, w)
                    for pi in range(n_points):
                        x, y = locations[bi, qi, mi, li, pi].tolist()
                        out[bi, qi, mi] += weights[bi, qi, mi, li, pi] * _bilinear_zero_pad(img, x, y)
    return out.reshape(b, q, m * c)


def _random_inputs(dtype: torch.dtype = torch.float32, seed: int = 0):  # noqa: ANN202
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 7), (3, 4)]
    b, q, m, c, p = 2, 6, 2, 3, 3
    value = torch.randn(b, sum(h * w for h, w in shapes), m, c, generator=g, dtype=dtype)
    # some points fall outside [0, 1] (zeros beyond the border)
    locations = torch.rand(b, q, m, len(shapes), p, 2, generator=g, dtype=dtype) * 1.3 - 0.15
    weights = torch.rand(b, q, m, len(shapes), p, generator=g, dtype=dtype)
    return value, shapes, locations, weights


def test_grid_sample_version_equals_a_per_point_bilinear_loop() -> None:
    value, shapes, locations, weights = _random_inputs()
    fast = ms_deform_attn_sample(value, shapes, locations, weights)
    slow = _loop_reference(value, shapes, locations, weights)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_gradients_by_gradcheck() -> None:
    value, shapes, locations, weights = _random_inputs(torch.float64, seed=1)
    value.requires_grad_(True)
    weights.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v, w: ms_deform_attn_sample(v, shapes, locations, w), (value, weights), eps=1e-6, atol=1e-6
    )


def test_attention_reads_where_its_offsets_point() -> None:
    """Offsets of one cell to the right make each query read its right-hand neighbour's value."""
    attn = MSDeformAttn(8, n_levels=1, n_heads=1, n_points=1, ratio=1.0)
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.copy_(torch.tensor([1.0, 0.0]))  # (dx, dy) in cells
        attn.value_proj.weight.copy_(torch.eye(8))
        attn.value_proj.bias.zero_()
        attn.output_proj.weight.copy_(torch.eye(8))
        attn.output_proj.bias.zero_()
    h, w = 3, 4
    value = torch.randn(1, h * w, 8)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ref = torch.stack([(xs.reshape(-1) + 0.5) / w, (ys.reshape(-1) + 0.5) / h], -1)[None].float()
    out = attn(torch.randn(1, h * w, 8), ref, value, [(h, w)])
    grid = value.reshape(h, w, 8)
    expected = torch.cat([grid[:, 1:], torch.zeros(h, 1, 8)], dim=1).reshape(
        1, h * w, 8
    )  # zeros past the edge
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def _adapter(**kw: object) -> DeformableViTAdapter:
    torch.manual_seed(0)
    return DeformableViTAdapter(build_backbone("vitp_tiny_patch14_112", img_size=112), **kw)  # type: ignore[arg-type]


def test_adapter_output_sizes_and_the_vit_is_unchanged_at_init() -> None:
    adapter = _adapter().eval()
    x = torch.randn(2, 3, 100, 90)  # not a multiple of the patch nor of 32
    outs = adapter(x)
    assert [tuple(o.shape[-2:]) for o in outs] == [(25, 23), (13, 12), (7, 6), (4, 3)]
    assert all(o.shape[:2] == (2, 192) for o in outs)
    # gamma = 0: the injector adds nothing, the ViT tokens are the plain ViT's
    vit = adapter.backbone
    with torch.no_grad():
        tokens = vit.patch_embed(x)
        plain = vit.blocks(vit.norm_pre(vit._pos_embed(tokens)))
        seen: list[torch.Tensor] = []
        handle = vit.blocks[-1].register_forward_hook(lambda _m, _i, o: seen.append(o))
        adapter(x)
        handle.remove()
    torch.testing.assert_close(seen[-1], plain)


def test_adapter_gradients_reach_every_part() -> None:
    adapter = _adapter(init_values=0.1).train()
    sum(o.square().mean() for o in adapter(torch.randn(1, 3, 112, 112))).backward()
    for name in (
        "interactions.0.injector.attn.sampling_offsets.weight",
        "interactions.0.injector.gamma",
        "interactions.3.extra_extractors.1.attn.value_proj.weight",
        "spm.fc4.weight",
        "backbone.blocks.0.attn.qkv.weight",
    ):
        grad = dict(adapter.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_parameters_are_named_as_the_reference_names_them() -> None:
    keys = set(_adapter().state_dict())
    # spelled as the reference ViT-Adapter's modules produce them (SpatialPriorModule,
    # Injector / Extractor with MSDeformAttn, ConvFFN with DWConv, norm1..norm4)
    expected = {
        "level_embed",
        "spm.stem.0.weight",
        "spm.stem.1.running_mean",
        "spm.stem.3.weight",
        "spm.stem.6.weight",
        "spm.conv2.0.weight",
        "spm.conv3.1.weight",
        "spm.conv4.0.weight",
        "spm.fc1.weight",
        "spm.fc2.bias",
        "spm.fc3.weight",
        "spm.fc4.bias",
        "interactions.0.injector.query_norm.weight",
        "interactions.0.injector.feat_norm.bias",
        "interactions.0.injector.gamma",
        "interactions.0.injector.attn.sampling_offsets.weight",
        "interactions.0.injector.attn.attention_weights.bias",
        "interactions.0.injector.attn.value_proj.weight",
        "interactions.0.injector.attn.output_proj.bias",
        "interactions.2.extractor.attn.sampling_offsets.bias",
        "interactions.2.extractor.ffn.fc1.weight",
        "interactions.2.extractor.ffn.dwconv.dwconv.weight",
        "interactions.2.extractor.ffn.fc2.bias",
        "interactions.2.extractor.ffn_norm.weight",
        "interactions.3.extra_extractors.0.attn.value_proj.weight",
        "interactions.3.extra_extractors.1.ffn.dwconv.dwconv.bias",
        "up.weight",
        "norm1.weight",
        "norm4.running_var",
    }
    assert expected <= keys, sorted(expected - keys)
    assert not any(k.startswith("interactions.0.extra_extractors") for k in keys)
    # deform_ratio 0.25: the value projection is a quarter of the ViT width (192 → 48)
    assert _adapter().state_dict()["interactions.0.injector.attn.value_proj.weight"].shape == (48, 192)


def test_interaction_indexes_are_checked_and_the_reference_split_is_the_24_block_default() -> None:
    from timm.models.vision_transformer import VisionTransformer

    with pytest.raises(ValueError, match=r"four contiguous inclusive ranges covering blocks 0\.\.3"):
        _adapter(interaction_indexes=[[0, 0], [2, 2], [3, 3], [3, 3]])
    assert _adapter().groups == [(0, 0), (1, 1), (2, 2), (3, 3)]  # depth 4: four equal groups
    deep = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=24, num_heads=2)
    adapter = DeformableViTAdapter(deep)
    assert adapter.groups == [(0, 7), (8, 11), (12, 15), (16, 23)]  # the reference's InternViT-300M split
    outs = adapter.eval()(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 16), (8, 8), (4, 4), (2, 2)]
