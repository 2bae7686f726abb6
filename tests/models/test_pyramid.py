"""Feature pyramid: block choice, shapes and strides (tiny and full size), loaded backbone = original."""

from __future__ import annotations

import math

import pytest
import timm
import torch

import vitp_geo.models  # noqa: F401  (registers vitp_tiny_*)
from vitp_geo.models.adapter import ViTAdapter
from vitp_geo.models.pyramid import SimpleFeaturePyramid, default_out_indices, pyramid_sizes
from vitp_geo.models.vit import export_backbone, load_backbone


def test_default_out_indices_match_the_paper_choice_and_tiny_depth() -> None:
    assert default_out_indices(24) == (7, 11, 15, 23)
    assert default_out_indices(12) == (3, 5, 7, 11)
    assert default_out_indices(4) == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="depth 3"):
        default_out_indices(3)


@pytest.mark.parametrize("name", ["vitp_tiny_patch14_112", "vit_tiny_patch16_224"])
@pytest.mark.parametrize("size", [(112, 112), (100, 130)])
def test_sfp_gives_strides_4_8_16_32_for_patch_14_and_16(name: str, size: tuple[int, int]) -> None:
    vit = timm.create_model(name, num_classes=0)
    neck = SimpleFeaturePyramid(vit).eval()
    feats = neck(torch.randn(2, 3, *size))
    assert [tuple(f.shape) for f in feats] == [
        (2, vit.embed_dim, math.ceil(size[0] / s), math.ceil(size[1] / s)) for s in (4, 8, 16, 32)
    ]
    assert neck.out_channels == [vit.embed_dim] * 4


def test_sfp_taps_the_chosen_blocks() -> None:
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, depth=4).eval()
    x = torch.randn(1, 3, 112, 112)
    a = SimpleFeaturePyramid(vit, out_indices=[0, 1, 2, 3]).eval()
    b = SimpleFeaturePyramid(vit, out_indices=[0, 1, 3, 3]).eval()
    b.load_state_dict(a.state_dict())
    fa, fb = a(x), b(x)
    assert torch.equal(fa[0], fb[0]) and torch.equal(fa[3], fb[3])
    assert not torch.allclose(fa[2], fb[2])  # level 2 comes from block 2 vs block 3
    ref = vit.forward_intermediates(x, indices=[3], intermediates_only=True)[0]  # (1, D, 7, 7) block 3
    assert torch.equal(fb[2], ref)  # patch 16: the stride-16 level is block 3's grid itself
    with pytest.raises(ValueError, match="out of range"):
        SimpleFeaturePyramid(vit, out_indices=[0, 1, 2, 9])


@pytest.mark.parametrize("neck_cls", [SimpleFeaturePyramid, ViTAdapter])
def test_full_size_internvit_pyramid_on_meta_device(neck_cls: type) -> None:
    with torch.device("meta"):
        vit = timm.create_model("vit_intern300m_patch14_448", num_classes=0)
        neck = neck_cls(vit)
        feats = neck(torch.empty(2, 3, 512, 512))
    if neck_cls is SimpleFeaturePyramid:
        assert neck.out_indices == (7, 11, 15, 23)
    assert [tuple(f.shape) for f in feats] == [(2, 1024, h, w) for h, w in pyramid_sizes(512, 512)]
    assert [f.shape[-1] for f in feats] == [128, 64, 32, 16]


def test_loaded_backbone_gives_the_same_features(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    vit = timm.create_model("vitp_tiny_patch14_112", num_classes=0).eval()
    with torch.no_grad():  # non-trivial layer scales and position embeddings
        for p in vit.parameters():
            p.add_(0.01 * torch.randn_like(p))
    export_backbone(vit, tmp_path)
    loaded = load_backbone(tmp_path / "backbone.safetensors").eval()
    a, b = SimpleFeaturePyramid(vit).eval(), SimpleFeaturePyramid(loaded).eval()
    b.ops.load_state_dict(a.ops.state_dict())
    x = torch.randn(2, 3, 112, 112)
    for fa, fb in zip(a(x), b(x), strict=True):
        torch.testing.assert_close(fa, fb)
    y = torch.randn(1, 3, 140, 98)  # another input size: position embeddings resampled the same way
    for fa, fb in zip(a(y), b(y), strict=True):
        torch.testing.assert_close(fa, fb)
