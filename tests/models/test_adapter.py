"""ViT-Adapter: interaction groups, zero-initialised injection, output shapes, gradients reach the prior."""

from __future__ import annotations

import math

import pytest
import timm
import torch

import vitp_geo.models  # noqa: F401
from vitp_geo.models.adapter import CrossAttention, InteractionBlock, ViTAdapter, interaction_groups


def test_interaction_groups_split_depth_evenly() -> None:
    assert interaction_groups(24) == [(0, 5), (6, 11), (12, 17), (18, 23)]
    assert interaction_groups(4) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    with pytest.raises(ValueError, match="depth 3"):
        interaction_groups(3)


def test_injector_starts_as_identity_so_the_vit_is_unchanged() -> None:
    torch.manual_seed(0)
    vit = timm.create_model("vitp_tiny_patch14_112", num_classes=0).eval()
    block = InteractionBlock(192, 3).eval()
    seq = torch.randn(2, 1 + 64, 192)
    c = torch.randn(2, 196 + 49 + 16, 192)
    out, c2 = block(seq, c, vit.blocks[0:2], 1, [(14, 14), (7, 7), (4, 4)])
    torch.testing.assert_close(out, vit.blocks[0:2](seq))
    assert not torch.allclose(c2, c)  # the extractor did update the prior tokens
    with torch.no_grad():
        block.gamma.fill_(1.0)
    out_injected, _ = block(seq, c, vit.blocks[0:2], 1, [(14, 14), (7, 7), (4, 4)])
    assert not torch.allclose(out_injected, out)


def test_cross_attention_matches_a_naive_softmax_attention() -> None:
    torch.manual_seed(0)
    attn = CrossAttention(12, 3)
    q, kv = torch.randn(2, 5, 12), torch.randn(2, 7, 12)
    qh = attn.q(attn.norm_q(q)).reshape(2, 5, 3, 4).transpose(1, 2)
    k, v = attn.kv(attn.norm_kv(kv)).reshape(2, 7, 2, 3, 4).permute(2, 0, 3, 1, 4)
    w = (qh @ k.transpose(-1, -2) / 2.0).softmax(-1)  # sqrt(head dim 4) = 2
    ref = attn.proj((w @ v).transpose(1, 2).reshape(2, 5, 12))
    torch.testing.assert_close(attn(q, kv), ref)


@pytest.mark.parametrize("size", [(112, 112), (90, 125)])
def test_adapter_shapes_and_gradient_flow(size: tuple[int, int]) -> None:
    vit = timm.create_model("vitp_tiny_patch14_112", num_classes=0)
    neck = ViTAdapter(vit)
    feats = neck(torch.randn(2, 3, *size))
    assert [tuple(f.shape) for f in feats] == [
        (2, 192, math.ceil(size[0] / s), math.ceil(size[1] / s)) for s in (4, 8, 16, 32)
    ]
    sum(f.square().mean() for f in feats).backward()
    assert neck.spm.stem[0][0].weight.grad is not None and neck.spm.stem[0][0].weight.grad.abs().sum() > 0
    assert vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
