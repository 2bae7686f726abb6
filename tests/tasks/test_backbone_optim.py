"""Extra-band rule for the patch embedding, layer-wise lr decay and freezing."""

from __future__ import annotations

import pytest
import timm
import torch

from vitp_geo.tasks import SegmentationTask
from vitp_geo.tasks.args import BackboneArgs
from vitp_geo.tasks.backbone import adapt_patch_embed, describe_backbone, rebuild_backbone
from vitp_geo.tasks.optim import layer_id, lr_factor, param_groups


def _vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vitp_tiny_patch14_112", num_classes=0).eval()


def test_single_band_gets_the_sum_of_rgb_filters_so_grey_images_match() -> None:
    rgb, one = _vit(), _vit()
    adapt_patch_embed(one, 1)
    grey = torch.rand(1, 1, 112, 112)
    torch.testing.assert_close(one.patch_embed.proj(grey), rgb.patch_embed.proj(grey.repeat(1, 3, 1, 1)))


def test_three_bands_in_bgr_order_get_their_filters_permuted() -> None:
    """``rgb_channels: [2, 1, 0]`` on 3-band tiles (BGR) was ignored: the model kept reading RGB."""
    rgb, bgr = _vit(), _vit()
    adapt_patch_embed(bgr, 3, rgb_channels=[2, 1, 0])
    image = torch.rand(1, 3, 112, 112)
    torch.testing.assert_close(bgr(image.flip(1)), rgb(image))  # the BGR copy gives the RGB response
    same = _vit()
    adapt_patch_embed(same, 3, rgb_channels=[0, 1, 2])  # RGB order: nothing changes
    torch.testing.assert_close(same.patch_embed.proj.weight, rgb.patch_embed.proj.weight)
    with pytest.raises(ValueError, match="rgb_channels"):
        adapt_patch_embed(_vit(), 3, rgb_channels=[0, 1, 3])


def test_extra_bands_keep_rgb_filters_at_their_positions_and_scale_by_3_over_c() -> None:
    rgb, ms = _vit(), _vit()
    w = rgb.patch_embed.proj.weight.detach()
    adapt_patch_embed(ms, 5, rgb_channels=[3, 2, 1])  # e.g. bands B,G,R,NIR... with R at 3, G at 2, B at 1
    new = ms.patch_embed.proj.weight.detach()
    assert new.shape[1] == 5
    torch.testing.assert_close(new[:, 3], w[:, 0] * 3 / 5)
    torch.testing.assert_close(new[:, 2], w[:, 1] * 3 / 5)
    torch.testing.assert_close(new[:, 1], w[:, 2] * 3 / 5)
    torch.testing.assert_close(new[:, 0], w.mean(1) * 3 / 5)
    torch.testing.assert_close(new[:, 4], w.mean(1) * 3 / 5)
    with pytest.raises(ValueError, match="rgb_channels"):
        adapt_patch_embed(_vit(), 4, rgb_channels=[0, 0, 1])


@pytest.mark.parametrize("chans", [2, 4, 6])
def test_equal_channels_keep_the_rgb_response(chans: int) -> None:
    """A grey input (all channels equal) gives the RGB model's patch response: every C != 1, 3 is
    scaled by 3 / C, as timm's ``adapt_input_conv`` scales (2 channels used to be left 1.5x short)."""
    rgb = _vit()
    w = rgb.patch_embed.proj.weight.detach().clone()
    vit = _vit()
    adapt_patch_embed(vit, chans)
    grey = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = rgb.patch_embed.proj(grey.expand(1, 3, 28, 28))
        out = vit.patch_embed.proj(grey.expand(1, chans, 28, 28))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    if chans == 2:  # no RGB triple: both channels start from the mean filter, scaled by 3/2
        torch.testing.assert_close(vit.patch_embed.proj.weight.detach()[:, 1], w.mean(1) * 1.5)


def test_describe_then_rebuild_gives_the_same_shapes() -> None:
    vit = _vit()
    adapt_patch_embed(vit, 2)
    again = rebuild_backbone(describe_backbone(vit))
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in vit.state_dict().items()
    }


def test_layer_ids_and_decayed_learning_rates() -> None:
    p = "model.neck.backbone."
    assert layer_id(p + "pos_embed", 4, p) == 0
    assert layer_id(p + "patch_embed.proj.weight", 4, p) == 0
    assert layer_id(p + "blocks.0.attn.qkv.weight", 4, p) == 1
    assert layer_id(p + "blocks.3.mlp.fc2.bias", 4, p) == 4
    assert layer_id("model.head.classifier.weight", 4, p) == 5
    task = SegmentationTask(head_channels=16, backbone=BackboneArgs(drop_path_rate=0.0))
    groups = param_groups(task, lr=1.0, weight_decay=0.05, layer_decay=0.5, depth=4, backbone_prefix=p)
    by_name = {g["name"]: g for g in groups}
    assert by_name["layer_0_no_decay"]["lr"] == pytest.approx(0.5**5)  # pos_embed, cls_token
    assert by_name["layer_2_decay"]["lr"] == pytest.approx(0.5**3)
    assert by_name["layer_5_decay"]["lr"] == pytest.approx(1.0)
    assert (
        by_name["layer_1_no_decay"]["weight_decay"] == 0.0
        and by_name["layer_1_decay"]["weight_decay"] == 0.05
    )
    n_params = sum(p.numel() for g in groups for p in g["params"])
    assert n_params == sum(p.numel() for p in task.parameters())


def test_freezing_options_and_schedule() -> None:
    frozen = SegmentationTask(head_channels=16, backbone=BackboneArgs(freeze_blocks=2))
    vit = frozen.backbone
    assert not vit.pos_embed.requires_grad and not vit.patch_embed.proj.weight.requires_grad
    assert not any(p.requires_grad for p in vit.blocks[1].parameters())
    assert all(p.requires_grad for p in vit.blocks[2].parameters())
    whole = SegmentationTask(head_channels=16, backbone=BackboneArgs(freeze=True))
    assert not any(p.requires_grad for p in whole.backbone.parameters())
    assert all(p.requires_grad for p in whole.model.head.parameters())
    assert lr_factor(0, 100, 10, "poly") == pytest.approx(0.1)
    assert lr_factor(55, 100, 10, "poly") == pytest.approx(0.5)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0)


def test_one_vit_description_for_backbone_json_and_the_model_card(tmp_path) -> None:  # noqa: ANN001
    import json

    from vitp_geo.models.vit import export_backbone

    vit = _vit()
    card = describe_backbone(vit)
    _, meta = export_backbone(vit, tmp_path)
    on_disk = json.loads(meta.read_text())
    # same schema and the same shapes; backbone.json names the timm-native class of the tiny variant
    assert set(card) == {"arch", "model_kwargs"} and card["model_kwargs"] == on_disk["model_kwargs"]
    assert card["arch"] == "vitp_tiny_patch14_112" and on_disk["arch"] == "vit_intern300m_patch14_448"
    for description in (card, {"arch": on_disk["arch"], "model_kwargs": on_disk["model_kwargs"]}):
        again = rebuild_backbone(description)
        assert {k: v.shape for k, v in again.state_dict().items()} == {
            k: v.shape for k, v in vit.state_dict().items()
        }
    # model cards written before the one schema ({"name", "kwargs"}, img_size as [h, w]) still load
    legacy = {"name": card["arch"], "kwargs": {**card["model_kwargs"], "img_size": [112, 112]}}
    assert rebuild_backbone(legacy).patch_embed.grid_size == (8, 8)
