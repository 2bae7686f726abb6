"""The reference's LayerNorm SimpleFPN neck, and the benchmark configs that use it."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from vitp_geo.models.simple_fpn import SimpleFPN
from vitp_geo.tasks.args import BackboneArgs
from vitp_geo.tasks.backbone import build_backbone
from vitp_geo.tasks.detection import ObjectDetectionTask
from vitp_geo.tasks.models import assemble, rebuild_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "finetune" / "detection"


def _maps(widths: list[int], size: int = 16) -> OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return OrderedDict(
        (str(i), torch.randn(2, c, size // 2**i, size // 2**i, generator=g)) for i, c in enumerate(widths)
    )


def test_each_level_is_conv_ln_conv_ln_of_its_own_input_and_pool_is_a_stride_2_subsample() -> None:
    fpn = SimpleFPN([6, 6, 6, 6], 8).eval()
    with torch.no_grad():
        for p in fpn.parameters():
            p.copy_(torch.randn_like(p))
        x = _maps([6, 6, 6, 6])
        out = fpn(x)

        def ln(t: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:  # over channels, per pixel
            return F.layer_norm(t.permute(0, 2, 3, 1), (t.shape[1],), norm.weight, norm.bias, 1e-5).permute(
                0, 3, 1, 2
            )

        for i, key in enumerate(("0", "1", "2", "3")):
            lat, top = fpn.lateral_convs[i], fpn.fpn_convs[i]
            expected = ln(
                F.conv2d(ln(F.conv2d(x[key], lat.conv.weight), lat.norm), top.conv.weight, padding=1),
                top.norm,
            )
            torch.testing.assert_close(out[key], expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(out["pool"], out["3"][..., ::2, ::2])
        # no top-down pathway: changing the coarsest input leaves the finer levels unchanged
        x2 = OrderedDict(x)
        x2["3"] = x2["3"] + 1.0
        out2 = fpn(x2)
        assert torch.equal(out2["0"], out["0"]) and not torch.equal(out2["3"], out["3"])
    keys = set(fpn.state_dict())
    assert "lateral_convs.0.conv.weight" in keys and "lateral_convs.0.conv.bias" not in keys
    assert "fpn_convs.3.norm.weight" in keys


@pytest.mark.parametrize("name", ["diorr", "dotav2", "rsar", "dior", "sardet100k"])
def test_configs_use_the_simple_fpn_where_the_reference_does(name: str) -> None:
    init = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["model"]["init_args"]
    assert init["fpn"] == "simple_fpn"
    # the task records it in the arch, and a model rebuilt from that arch has the SimpleFPN
    task = ObjectDetectionTask(
        backbone=BackboneArgs(name="vitp_tiny_patch14_112"),
        num_classes=2,
        box_type="obb",
        rpn="oriented",
        fpn=init["fpn"],
        fpn_channels=16,
        representation=32,
        anchor_sizes=[16, 32, 64, 128, 256],
    )
    assert task.arch["fpn"] == "simple_fpn" and isinstance(task.model.fpn, SimpleFPN)
    assert isinstance(rebuild_model(task.arch).fpn, SimpleFPN)


def test_ssdd_config_keeps_the_plain_fpn_of_the_reference_mask_rcnn() -> None:
    init = yaml.safe_load((CONFIGS / "ssdd.yaml").read_text())["model"]["init_args"]
    assert init.get("fpn", "fpn") == "fpn"


def test_default_detector_keeps_torchvision_fpn_and_bad_fpn_is_refused() -> None:
    vit = build_backbone("vitp_tiny_patch14_112")
    fields = dict(kind="detection", num_classes=2, box_type="hbb", fpn_channels=16)
    assert not isinstance(assemble(vit, fields).fpn, SimpleFPN)
    with pytest.raises(ValueError, match="fpn must be one of fpn, simple_fpn, got 'lateral'"):
        assemble(vit, dict(fields, fpn="lateral"))
