"""InternViT-layout timm backbones: key conversion parity, pos-embed resizing, export, sizes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.internvit_reference import internvit_forward, make_internvit_state_dict
from vitp_geo.models import (
    build_vision_tower,
    convert_internvit_state_dict,
    export_backbone,
    load_backbone,
    resize_pos_embed,
)

DIM, DEPTH, HEADS, GRID = 48, 2, 3, 4  # a 56 px miniature with 16-wide heads


def _features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_features(x)


@pytest.mark.parametrize("prefix", ["vision_model.", ""], ids=["internvl", "vitp-backbone"])
def test_conversion_matches_reference_internvit(prefix):
    sd = make_internvit_state_dict(DIM, DEPTH, GRID, prefix=prefix)
    import timm

    model = timm.create_model(
        "vit_intern300m_patch14_448",
        pretrained=False,
        embed_dim=DIM,
        depth=DEPTH,
        num_heads=HEADS,
        img_size=GRID * 14,
        num_classes=0,
    ).eval()
    model.load_state_dict(convert_internvit_state_dict(sd))
    x = torch.randn(2, 3, GRID * 14, GRID * 14, generator=torch.Generator().manual_seed(1))
    ref = internvit_forward(sd, x, HEADS, prefix=prefix)
    torch.testing.assert_close(_features(model, x), ref, atol=1e-5, rtol=1e-5)


def test_load_backbone_pth_infers_arch_and_resizes_pos_embed(tmp_path):
    sd = make_internvit_state_dict(DIM, DEPTH, GRID, prefix="")
    path = tmp_path / "vitp.pth"
    torch.save({"state_dict": sd}, path)
    x_native = torch.randn(1, 3, GRID * 14, GRID * 14, generator=torch.Generator().manual_seed(2))
    x_big = torch.randn(1, 3, 6 * 14, 6 * 14, generator=torch.Generator().manual_seed(3))

    # Without backbone.json the head count is a guess (64-wide heads): a 48-dim checkpoint gets
    # one head, and the guess is announced.
    with pytest.warns(UserWarning, match=r"guessed num_heads=1 from embed_dim=48"):
        native = load_backbone(path)
    heads = 1
    assert native.blocks[0].attn.num_heads == heads
    torch.testing.assert_close(
        _features(native, x_native), internvit_forward(sd, x_native, heads, ""), atol=1e-5, rtol=1e-5
    )

    with pytest.warns(UserWarning, match="guessed num_heads"):
        big = load_backbone(path, img_size=6 * 14)
    assert big.pos_embed.shape == (1, 1 + 36, DIM)
    # The resized table equals InternViT's own run-time bicubic interpolation at that size.
    torch.testing.assert_close(
        _features(big, x_big), internvit_forward(sd, x_big, heads, ""), atol=1e-5, rtol=1e-5
    )
    # Class-token position embedding is kept as-is.
    torch.testing.assert_close(big.pos_embed[:, 0], sd["embeddings.position_embedding"][:, 0])


def test_resize_pos_embed_identity_and_shape():
    pe = torch.randn(1, 1 + 16, 8)
    assert resize_pos_embed(pe, 4) is pe
    out = resize_pos_embed(pe, (2, 3))
    assert out.shape == (1, 1 + 6, 8)
    torch.testing.assert_close(out[:, :1], pe[:, :1])
    # A constant grid stays constant under bicubic resampling.
    const = torch.cat([pe[:, :1], torch.full((1, 16, 8), 0.5)], dim=1)
    torch.testing.assert_close(resize_pos_embed(const, 7)[:, 1:], torch.full((1, 49, 8), 0.5))
    with pytest.raises(ValueError, match="not square"):
        resize_pos_embed(torch.randn(1, 1 + 15, 8), 4)


def test_converter_timm_passthrough_and_errors():
    sd = make_internvit_state_dict(DIM, 1, GRID)
    timm_sd = convert_internvit_state_dict(sd)
    assert "blocks.0.ls1.gamma" in timm_sd and "cls_token" in timm_sd and "patch_embed.proj.weight" in timm_sd
    assert convert_internvit_state_dict(timm_sd).keys() == timm_sd.keys()
    # mlp1 / language_model parts of a full InternVL checkpoint are skipped.
    full = dict(sd, **{"mlp1.0.weight": torch.ones(4), "language_model.lm_head.weight": torch.ones(2, 2)})
    assert convert_internvit_state_dict(full).keys() == timm_sd.keys()

    broken = dict(sd)
    del broken["vision_model.encoder.layers.0.ls2"]
    with pytest.raises(ValueError, match=r"missing keys.*vision_model\.encoder\.layers\.0\.ls2"):
        convert_internvit_state_dict(broken)
    with pytest.raises(ValueError, match=r"unknown keys.*vision_model\.encoder\.layers\.0\.attn\.q_norm"):
        convert_internvit_state_dict(
            dict(sd, **{"vision_model.encoder.layers.0.attn.q_norm.weight": torch.ones(1)})
        )
    with pytest.raises(ValueError, match="empty"):
        convert_internvit_state_dict({})


def test_load_backbone_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_backbone(tmp_path / "nope.safetensors")
    sd = make_internvit_state_dict(DIM, 1, GRID, prefix="")
    del sd["embeddings.class_embedding"]
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ValueError, match=r"bad\.safetensors.*embeddings\.class_embedding"):
        load_backbone(path)


def test_export_round_trip_through_plain_timm(tmp_path):
    import timm

    vit = build_vision_tower("vitp_tiny_patch14_112").eval()
    with torch.no_grad():  # make layer scales non-trivial so a wrong mapping would show
        for blk in vit.blocks:
            blk.ls1.gamma.normal_()
    weights, meta_path = export_backbone(vit, tmp_path / "out")
    assert not list((tmp_path / "out").glob(".*partial*"))
    meta = json.loads(meta_path.read_text())
    assert meta["arch"] == "vit_intern300m_patch14_448"  # a timm-native name
    assert (meta["img_size"], meta["patch_size"], meta["embed_dim"], meta["depth"]) == (112, 14, 192, 4)
    # Only timm below this line: no vitp-geo code is needed to rebuild the model.
    plain = timm.create_model(meta["arch"], pretrained=False, **meta["model_kwargs"]).eval()
    plain.load_state_dict(load_file(str(weights)))
    x = torch.randn(2, 3, 112, 112)
    torch.testing.assert_close(_features(plain, x), _features(vit, x), atol=0, rtol=0)
    # load_backbone reads backbone.json beside the file.
    again = load_backbone(weights)
    torch.testing.assert_close(_features(again, x), _features(vit, x), atol=0, rtol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_load_backbone_refuses_non_finite_weights_naming_file_and_key(tmp_path, bad):
    sd = make_internvit_state_dict(DIM, DEPTH, GRID, prefix="vision_model.")
    sd["vision_model.encoder.layers.1.mlp.fc2.weight"][3, 5] = bad
    path = tmp_path / "diverged.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ValueError, match=r"diverged\.safetensors: non-finite .* blocks\.1\.mlp\.fc2\.weight"):
        load_backbone(path)


def test_build_vision_tower_defaults_and_checks():
    vit = build_vision_tower("vitp_tiny_patch14_224", img_size=112)
    assert vit.patch_embed.grid_size == (8, 8) and vit.pos_embed.shape == (1, 65, 192)
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)  # paper's drop-path 0.1
    torch.testing.assert_close(vit.blocks[0].ls1.gamma, torch.full((192,), 0.1))
    with pytest.raises(ValueError, match="multiple of the patch size 14, got 100"):
        build_vision_tower("vitp_tiny_patch14_112", img_size=100)
    with pytest.raises(ValueError, match="unknown vision architecture 'nope'"):
        build_vision_tower("nope")


def test_full_size_internvit_300m_on_meta_device():
    with torch.device("meta"):
        vit = build_vision_tower("vit_intern300m_patch14_448", drop_path_rate=0.0)
    n = sum(p.numel() for p in vit.parameters())
    assert 300e6 < n < 308e6, n  # InternViT-300M: 304M parameters
    assert vit.patch_embed.grid_size == (32, 32) and vit.embed_dim == 1024 and len(vit.blocks) == 24


def test_damaged_weights_file_is_named(tmp_path):
    from vitp_geo.models.vit import load_backbone

    for name in ("broken.safetensors", "broken.pth"):
        path = tmp_path / name
        path.write_bytes(b"\x00\x01 not weights")
        with pytest.raises(ValueError, match=f"{name}: not a readable weights file"):
            load_backbone(path, arch="vitp_tiny_patch14_112")


def test_mmseg_mmdet_backbone_prefix_keeps_only_the_backbone(caplog):
    """A ViTP mmseg/mmdet checkpoint (``backbone.*`` + heads + ViT-Adapter modules) converts to the ViT."""
    vit = make_internvit_state_dict(DIM, DEPTH, GRID, prefix="")
    expected = convert_internvit_state_dict(vit)
    mm = {f"backbone.{k}": v for k, v in vit.items()}
    extra = {
        "decode_head.conv_seg.weight": torch.ones(6, 64, 1, 1),
        "auxiliary_head.conv_seg.bias": torch.ones(6),
        "neck.lateral_convs.0.conv.weight": torch.ones(4, 4, 1, 1),
        "roi_head.bbox_head.fc_cls.weight": torch.ones(16, 4),
        "backbone.level_embed": torch.ones(3, DIM),
        "backbone.spm.stem.0.weight": torch.ones(4, 3, 3, 3),
        "backbone.interactions.0.injector.gamma": torch.ones(DIM),
        "backbone.up.weight": torch.ones(DIM, DIM, 2, 2),
        "backbone.norm1.weight": torch.ones(DIM),
    }
    with caplog.at_level("WARNING", logger="vitp_geo.models.vit"):
        out = convert_internvit_state_dict({**mm, **extra})
    assert out.keys() == expected.keys()
    for k in out:
        torch.testing.assert_close(out[k], expected[k])
    text = caplog.text
    assert "dropped 4 keys of auxiliary_head, decode_head, neck, roi_head" in text
    assert "dropped 5 ViT-Adapter keys" in text
    # A timm-layout backbone under the same prefix is unwrapped too.
    timm_mm = {f"backbone.{k}": v for k, v in expected.items()} | {"decode_head.conv_seg.bias": torch.ones(6)}
    assert convert_internvit_state_dict(timm_mm).keys() == expected.keys()
    # A key inside backbone.* that is neither ViT nor adapter is still refused, by name.
    with pytest.raises(ValueError, match=r"unknown keys.*backbone\.encoder\.layers\.0\.attn\.q_norm"):
        convert_internvit_state_dict({**mm, "backbone.encoder.layers.0.attn.q_norm.weight": torch.ones(1)})


def test_backbone_json_beside_another_weights_file_is_announced(tmp_path):
    model = build_vision_tower("vitp_tiny_patch14_112")
    weights, _ = export_backbone(model, tmp_path)
    other = tmp_path / "finetuned.safetensors"
    other.write_bytes(weights.read_bytes())
    with pytest.warns(
        UserWarning, match=r"finetuned\.safetensors: using the architecture in .*backbone\.json"
    ):
        load_backbone(other)


def test_arch_overrides_backbone_json_and_its_model_kwargs(tmp_path):
    """``arch=`` builds that model with its own defaults, not the ``model_kwargs`` beside the file."""
    import warnings

    weights, meta_path = export_backbone(build_vision_tower("vitp_tiny_patch14_112"), tmp_path)
    assert json.loads(meta_path.read_text())["model_kwargs"]["img_size"] == 112
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the backbone.json is not read, so not announced either
        vit = load_backbone(weights, arch="vitp_tiny_patch14_224")
    assert vit.patch_embed.img_size == (224, 224)  # the arch's default, the json says 112
    assert vit.pos_embed.shape[1] == 1 + 16 * 16
    assert vit.pretrained_cfg["architecture"] == "vitp_tiny_patch14_224"
    assert load_backbone(weights).patch_embed.img_size == (112, 112)  # without arch= the json rules


def test_an_unreadable_backbone_file_is_named_once(tmp_path):
    """Issue 20: '<path>: <path>: not a readable weights file'."""
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"junk")
    with pytest.raises(ValueError) as err:
        load_backbone(path)
    assert str(err.value).count(str(path)) == 1 and "not a readable weights file" in str(err.value)
