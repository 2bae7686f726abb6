"""``vitp-geo convert``: released reference checkpoints (Oriented / Cascade / Mask R-CNN, UperNet) → model.ckpt.

The miniature checkpoints below are spelled as the reference's module definitions name their
parameters (listed in ``mm_keys_*``, written from the mm* modules, not from our key map):

* ``InternViTAdapter`` (ViTP ``mmrotate/.../backbones/vit_adapter.py``, ``adapter_modules.py``,
  ``intern_vit.py``): ``embeddings.{patch_embedding, position_embedding}``,
  ``layers.N.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2, norm1, norm2, ls1, ls2}``, ``level_embed``,
  ``spm.{stem.0/1/3/4/6/7, conv2-4.0/1, fc1-4}`` (channels-first LayerNorm at 1, 4, 7),
  ``interactions.N.{injector, extractor, extra_extractors.M}`` (MSDeformAttn:
  ``sampling_offsets, attention_weights, value_proj, output_proj``; ConvFFN ``fc1, dwconv.dwconv,
  fc2``), ``up``, ``norm1``–``norm4``;
* ``SimpleFPN`` (mmrotate ``necks/simple_fpn.py``: mmcv ``ConvModule`` with LN, so
  ``{lateral,fpn}_convs.N.conv.weight`` (no bias) and ``.ln.{weight,bias}``);
* ``OrientedRPNHead`` (``rpn_conv``, ``rpn_cls``, ``rpn_reg``) and ``RotatedShared2FCBBoxHead``
  (``shared_fcs.0/1``, ``fc_cls``, ``fc_reg``);
* mmseg ``UPerHead`` (``psp_modules.N.1``, ``bottleneck``, ``lateral_convs.N``, ``fpn_convs.N``,
  ``fpn_bottleneck``: ``conv.weight`` + SyncBN ``bn.*``; ``conv_seg``);
* mmdet Mask R-CNN (SSDD's): ``FPN`` (``{lateral,fpn}_convs.N.conv.{weight,bias}``: mmcv
  ``ConvModule`` without norm keeps the conv bias), ``RPNHead`` (``rpn_conv``, ``rpn_cls``,
  ``rpn_reg``), ``StandardRoIHead`` with ``Shared2FCBBoxHead`` (``bbox_head.shared_fcs.0/1``,
  ``fc_cls``, ``fc_reg``: 4 deltas a class, ``reg_class_agnostic=False``) and ``FCNMaskHead``
  (``mask_head.convs.0-3.conv``, ``upsample`` (the deconv), ``conv_logits``: one map a class).

Tiny dims: the ``vitp_tiny`` ViT (width 192, depth 4, 3 heads) with a patch-16 kernel, a 32-wide
FPN and head.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
import yaml
from safetensors.torch import save_file

from vitp_geo.cli.main import main
from vitp_geo.convert import convert_release, convert_state_dict
from vitp_geo.io.model_card import CARD_KEY
from vitp_geo.io.raster import write_geotiff
from vitp_geo.models.detection.coder import OrientedBoxCoder
from vitp_geo.synthetic.scene import generate_scene
from vitp_geo.tasks.loading import load_inference_model

DEPTH, DIM, PATCH, GRID = 4, 192, 16, 8  # tiny ViT, 128 px training size
NUM_CLASSES_DET, NUM_CLASSES_SEG, FPN_W = 3, 4, 32
MASK_CLASSES = ["ship", "boat"]  # two, so a class-specific row or map in the wrong place shows
_WB = ("weight", "bias")
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _backbone_keys() -> list[str]:
    keys = ["backbone.embeddings.patch_embedding.weight", "backbone.embeddings.patch_embedding.bias"]
    keys.append("backbone.embeddings.position_embedding")
    for i in range(DEPTH):
        for mod in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "norm1", "norm2"):
            keys += [f"backbone.layers.{i}.{mod}.{p}" for p in _WB]
        keys += [f"backbone.layers.{i}.ls1", f"backbone.layers.{i}.ls2"]
    keys.append("backbone.level_embed")
    keys += [f"backbone.spm.stem.{j}.weight" for j in (0, 3, 6)]
    keys += [f"backbone.spm.stem.{j}.{p}" for j in (1, 4, 7) for p in _WB]
    for c in ("conv2", "conv3", "conv4"):
        keys += [f"backbone.spm.{c}.0.weight"] + [f"backbone.spm.{c}.1.{p}" for p in _WB]
    keys += [f"backbone.spm.fc{j}.{p}" for j in (1, 2, 3, 4) for p in _WB]
    attn = ("sampling_offsets", "attention_weights", "value_proj", "output_proj")

    def extractor(prefix: str) -> list[str]:
        mods = ["query_norm", "feat_norm", *(f"attn.{a}" for a in attn)]
        mods += ["ffn.fc1", "ffn.dwconv.dwconv", "ffn.fc2", "ffn_norm"]
        return [f"{prefix}.{m}.{p}" for m in mods for p in _WB]

    for i in range(4):
        pre = f"backbone.interactions.{i}"
        keys.append(f"{pre}.injector.gamma")
        keys += [f"{pre}.injector.{m}.{p}" for m in ("query_norm", "feat_norm") for p in _WB]
        keys += [f"{pre}.injector.attn.{a}.{p}" for a in attn for p in _WB]
        keys += extractor(f"{pre}.extractor")
        if i == 3:
            keys += extractor(f"{pre}.extra_extractors.0") + extractor(f"{pre}.extra_extractors.1")
    keys += [f"backbone.{m}.{p}" for m in ("up", "norm1", "norm2", "norm3", "norm4") for p in _WB]
    return keys


def mm_keys_oriented_rcnn() -> list[str]:
    """The state-dict keys of the reference's Oriented R-CNN (InternViTAdapter + SimpleFPN)."""
    keys = _backbone_keys()
    for kind in ("lateral_convs", "fpn_convs"):
        for i in range(4):
            keys += [f"neck.{kind}.{i}.conv.weight", f"neck.{kind}.{i}.ln.weight", f"neck.{kind}.{i}.ln.bias"]
    keys += [f"rpn_head.{m}.{p}" for m in ("rpn_conv", "rpn_cls", "rpn_reg") for p in _WB]
    keys += [
        f"roi_head.bbox_head.{m}.{p}"
        for m in ("shared_fcs.0", "shared_fcs.1", "fc_cls", "fc_reg")
        for p in _WB
    ]
    return keys


def mm_keys_cascade_rcnn() -> list[str]:
    """The state-dict keys of the reference's Cascade R-CNN (InternViTAdapter + SimpleFPN, mmdet
    ``RPNHead`` and ``CascadeRoIHead`` with three ``Shared2FCBBoxHead`` stages)."""
    keys = [k for k in mm_keys_oriented_rcnn() if not k.startswith("roi_head.")]
    for s in range(3):
        mods = ("shared_fcs.0", "shared_fcs.1", "fc_cls", "fc_reg")
        keys += [f"roi_head.bbox_head.{s}.{m}.{p}" for m in mods for p in _WB]
    return keys


def mm_keys_mask_rcnn() -> list[str]:
    """The state-dict keys of the reference's SSDD Mask R-CNN (InternViTAdapter + mmdet ``FPN``,
    ``RPNHead``, ``StandardRoIHead`` with ``Shared2FCBBoxHead`` and ``FCNMaskHead``)."""
    keys = _backbone_keys()
    keys += [
        f"neck.{kind}.{i}.conv.{p}" for kind in ("lateral_convs", "fpn_convs") for i in range(4) for p in _WB
    ]
    keys += [f"rpn_head.{m}.{p}" for m in ("rpn_conv", "rpn_cls", "rpn_reg") for p in _WB]
    mods = ("shared_fcs.0", "shared_fcs.1", "fc_cls", "fc_reg")
    keys += [f"roi_head.bbox_head.{m}.{p}" for m in mods for p in _WB]
    mods = (*(f"convs.{i}.conv" for i in range(4)), "upsample", "conv_logits")
    keys += [f"roi_head.mask_head.{m}.{p}" for m in mods for p in _WB]
    return keys


def mm_keys_upernet() -> list[str]:
    """The state-dict keys of the reference's UperNet segmenter (InternViTAdapter + mmseg UPerHead)."""
    keys = _backbone_keys()
    mods = [f"psp_modules.{j}.1" for j in range(4)] + ["bottleneck", "fpn_bottleneck"]
    mods += [f"lateral_convs.{i}" for i in range(3)] + [f"fpn_convs.{i}" for i in range(3)]
    for m in mods:
        keys += [f"decode_head.{m}.conv.weight"] + [f"decode_head.{m}.bn.{p}" for p in _BN]
    keys += ["decode_head.conv_seg.weight", "decode_head.conv_seg.bias"]
    return keys


_MASK_RCNN_OURS = (  # mmdet FPN / RPNHead / Mask R-CNN heads → torchvision's modules
    ("neck.lateral_convs.", "fpn.inner_blocks.", ".conv.", ".0."),
    ("neck.fpn_convs.", "fpn.layer_blocks.", ".conv.", ".0."),
    ("rpn_head.rpn_conv.", "rpn.head.conv.0.0.", "", ""),
    ("roi_head.bbox_head.shared_fcs.0.", "roi_heads.box_head.fc6.", "", ""),
    ("roi_head.bbox_head.shared_fcs.1.", "roi_heads.box_head.fc7.", "", ""),
    ("roi_head.bbox_head.fc_cls.", "roi_heads.box_predictor.cls_score.", "", ""),
    ("roi_head.bbox_head.fc_reg.", "roi_heads.box_predictor.bbox_pred.", "", ""),
    ("roi_head.mask_head.convs.", "roi_heads.mask_head.", ".conv.", ".0."),
    ("roi_head.mask_head.upsample.", "roi_heads.mask_predictor.conv5_mask.", "", ""),
    ("roi_head.mask_head.conv_logits.", "roi_heads.mask_predictor.mask_fcn_logits.", "", ""),
)


def _ours(mm_key: str, layout: str = "oriented") -> str:
    """Our key for a reference key — the inverse map, written here by hand from the names above
    (``layout``: ``oriented``, ``cascade`` (the mmdet RPN / Cascade R-CNN heads), ``mask`` (the
    mmdet FPN / RPN / Mask R-CNN heads) or ``upernet``)."""
    if layout == "mask":
        for a, b, c, d in _MASK_RCNN_OURS:
            if mm_key.startswith(a):
                return b + mm_key[len(a) :].replace(c, d) if c else b + mm_key[len(a) :]
    cascade = layout == "cascade"
    k = f"cascade:{mm_key}" if cascade and mm_key.startswith(("rpn_head.rpn_conv", "roi_head.")) else mm_key
    for a, b in (
        ("backbone.embeddings.patch_embedding.", "neck.backbone.patch_embed.proj."),
        ("backbone.embeddings.position_embedding", "neck.backbone.pos_embed"),
        ("backbone.layers.", "neck.backbone.blocks."),
        ("backbone.", "neck."),
        ("cascade:rpn_head.rpn_conv", "rpn.head.conv.0.0"),
        ("rpn_head.rpn_conv", "rpn.head.conv"),
        ("rpn_head.rpn_cls", "rpn.head.cls_logits"),
        ("rpn_head.rpn_reg", "rpn.head.bbox_pred"),
        ("cascade:roi_head.bbox_head.", "roi_heads.stages."),
        ("roi_head.bbox_head.shared_fcs.0", "roi_heads.head.fc6"),
        ("roi_head.bbox_head.shared_fcs.1", "roi_heads.head.fc7"),
        ("roi_head.bbox_head.fc_cls", "roi_heads.head.cls_score"),
        ("roi_head.bbox_head.fc_reg", "roi_heads.head.bbox_pred"),
        ("decode_head.psp_modules.", "head.ppm."),
        ("decode_head.bottleneck", "head.bottleneck"),
        ("decode_head.fpn_bottleneck", "head.fuse"),
        ("decode_head.lateral_convs", "head.lateral"),
        ("decode_head.fpn_convs", "head.fpn"),
        ("decode_head.conv_seg", "head.classifier"),
    ):
        if k.startswith(a):
            k = b + k[len(a) :]
            break
    k = k.replace(".shared_fcs.0", ".box_head.fc6").replace(".shared_fcs.1", ".box_head.fc7")
    k = k.replace(".fc_cls", ".cls_score").replace(".fc_reg", ".bbox_pred")
    if k.startswith("neck.lateral_convs") or k.startswith("neck.fpn_convs"):
        k = "fpn." + k[len("neck.") :]
    k = k.replace(".ln.", ".norm.")
    if k.startswith("head."):
        k = k.replace(".conv.weight", ".0.weight").replace(".bn.", ".1.")
    if k.endswith((".ls1", ".ls2")):
        k += ".gamma"
    return k


def _to_mm(
    ours: dict[str, torch.Tensor], mm_keys: list[str], layout: str = "oriented"
) -> dict[str, torch.Tensor]:
    """The reference-layout state dict holding our model's weights (the inverse tensor layouts too)."""
    out = {}
    for key in mm_keys:
        t = ours[_ours(key, layout)].clone()
        if key.endswith("position_embedding"):  # the reference keeps a class slot it never reads
            t = torch.cat([torch.randn(1, 1, t.shape[-1]), t], dim=1)
        elif "fc_cls" in key:  # mmdet: background last
            t = torch.cat([t[1:], t[:1]])
        elif "fc_reg" in key and layout == "oriented":  # mmrotate: angle delta in radians (× 10)
            t[4::5] = t[4::5] * math.pi
        elif "fc_reg" in key and layout == "mask":  # mmdet: 4 deltas a class, no background rows
            t = t[4:]
        elif "conv_logits" in key:  # mmdet's FCNMaskHead: one map a class, no background map
            t = t[1:]
        out[key] = t
    assert not set(ours) - {_ours(k, layout) for k in mm_keys}, (
        "the listed reference keys must cover our model"
    )
    return out


def _config(tmp_path: Path, kind: str) -> Path:
    if kind in ("detection", "cascade", "mask"):
        heads = {
            "detection": dict(box_type="obb", rpn="oriented", reg_class_agnostic=True, fpn="simple_fpn"),
            "cascade": dict(box_type="hbb", roi_head="cascade", fpn="simple_fpn"),
            # SSDD's Mask R-CNN: plain FPN (no fpn key: the checkpoint's keys say which)
            "mask": dict(box_type="hbb", roi_head="mask"),
        }
        names = MASK_CLASSES if kind == "mask" else ["plane", "ship", "tank"]
        init = dict(
            backbone=dict(name="vitp_tiny_patch14_112", neck="deformable_adapter"),
            num_classes=len(names),
            class_names=names,
            **heads[kind],
            fpn_channels=FPN_W,
            representation=64,
            anchor_sizes=[16, 32, 64, 128, 256],
            detections_per_img=50,
            score_thresh=0.0,
        )
        path = "vitp_geo.tasks.detection.ObjectDetectionTask"
    elif kind == "change":  # head width and fusion differ from the checkpoint's: it must use those
        init = dict(
            backbone=dict(name="vitp_tiny_patch14_112", neck="sfp"),
            head="upernet",
            head_channels=8,
            fusion="diff",
        )
        path = "vitp_geo.tasks.ChangeDetectionTask"
    else:
        init = dict(
            backbone=dict(name="vitp_tiny_patch14_112", neck="deformable_adapter"),
            num_classes=NUM_CLASSES_SEG,
            head="upernet",
            head_channels=FPN_W,
        )
        path = "vitp_geo.tasks.SegmentationTask"
    cfg = {"model": {"class_path": path, "init_args": init}, "data": {"init_args": {"root": "FILL_ME"}}}
    out = tmp_path / f"{kind}.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


def _reference_model(
    config: Path, mm_keys: list[str], layout: str
) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """Our model in the reference layout with seeded random weights, and the same weights in mm layout."""
    torch.manual_seed(0)
    model, _, _, _ = convert_state_dict(_probe_state(config, mm_keys, layout), config)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t) * 0.2 + (1.0 if name.endswith("norm.weight") else 0.0))
            elif name.endswith("num_batches_tracked"):
                t.fill_(7)
        for name, t in model.state_dict().items():  # BN variances must stay positive
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
    ours = {k: v.clone() for k, v in model.state_dict().items()}
    return model.eval(), _to_mm(ours, mm_keys, layout)


def _probe_state(config: Path, mm_keys: list[str], layout: str) -> dict[str, torch.Tensor]:
    """Reference-layout tensors of the right shapes, from a model built in our layout directly."""
    from vitp_geo.tasks.backbone import rebuild_backbone
    from vitp_geo.tasks.models import assemble

    cfg = yaml.safe_load(config.read_text())["model"]["init_args"]
    vit = rebuild_backbone(
        {
            "arch": "vitp_tiny_patch14_112",
            "model_kwargs": dict(
                patch_size=PATCH, img_size=GRID * PATCH, class_token=False, global_pool="avg", num_classes=0
            ),
        }
    )
    options = {"norm": "layer", "attn_norm_eps": 1e-5}
    if "fusion" in cfg:
        fields = dict(
            kind="change",
            neck="deformable_adapter",
            neck_options=options,
            head="upernet",
            head_channels=FPN_W,
            num_classes=2,
            in_channels=3,
            fusion="concat",
        )
    elif "box_type" in cfg:
        detector = {
            "cascade": dict(representation=64, roi_head="cascade"),
            "mask": dict(representation=64, roi_head="mask"),
            "oriented": dict(representation=64, rpn="oriented", reg_class_agnostic=True),
        }
        fields = dict(
            kind="detection",
            box_type=cfg["box_type"],
            neck="deformable_adapter",
            neck_options=options,
            num_classes=cfg["num_classes"],
            fpn="fpn" if layout == "mask" else "simple_fpn",
            fpn_channels=FPN_W,
            anchor_sizes=cfg["anchor_sizes"],
            detector=detector[layout],
        )
    else:
        fields = dict(
            kind="segmentation",
            neck="deformable_adapter",
            neck_options=options,
            head="upernet",
            head_channels=FPN_W,
            num_classes=NUM_CLASSES_SEG,
        )
    ours = assemble(vit, fields).state_dict()
    return _to_mm(ours, mm_keys, layout)


Case = tuple[Path, torch.nn.Module, dict[str, torch.Tensor]]


def _case(factory: pytest.TempPathFactory, kind: str) -> Case:
    """(config, our model, the same weights in the reference's layout) for ``kind``."""
    config = _config(factory.mktemp(kind), kind)
    keys = {
        "detection": mm_keys_oriented_rcnn,
        "cascade": mm_keys_cascade_rcnn,
        "segmentation": mm_keys_upernet,
        "change": mm_keys_upernet,  # open-cd: the same backbone and UPerHead; its concat neck has no weights
        "mask": mm_keys_mask_rcnn,
    }
    layout = {"detection": "oriented", "cascade": "cascade", "mask": "mask"}.get(kind, "upernet")
    model, mm = _reference_model(config, keys[kind](), layout)
    return config, model, mm


@pytest.fixture(scope="module")
def det(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return _case(tmp_path_factory, "detection")


@pytest.fixture(scope="module")
def cascade(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return _case(tmp_path_factory, "cascade")


@pytest.fixture(scope="module")
def mask(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return _case(tmp_path_factory, "mask")


@pytest.fixture(scope="module")
def change(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return _case(tmp_path_factory, "change")


@pytest.fixture(scope="module")
def seg(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return _case(tmp_path_factory, "segmentation")


def _save_mm(path: Path, state: dict[str, torch.Tensor], classes: list[str]) -> Path:
    torch.save(
        {"meta": {"CLASSES": tuple(classes), "epoch": 12, "mmcv_version": "1.7.2"}, "state_dict": state}, path
    )
    return path


def test_listed_keys_are_exactly_the_reference_layout_and_load_with_nothing_left_over(det, seg) -> None:
    for (config, _, mm), keys in ((det, mm_keys_oriented_rcnn()), (seg, mm_keys_upernet())):
        assert sorted(mm) == sorted(keys) and len(set(keys)) == len(keys)
        _, arch, card, ignored = convert_state_dict(mm, config)
        assert ignored == []
        assert arch["neck_options"] == {"norm": "layer", "attn_norm_eps": 1e-5, "deform_ratio": 0.25}
        assert arch["backbone"]["model_kwargs"]["patch_size"] == PATCH
        assert arch["backbone"]["model_kwargs"]["class_token"] is False
        assert card.tile_size == GRID * PATCH and card.render == {"raw": True, "dtype": "uint8"}
    assert convert_state_dict(det[2], det[0])[1]["fpn"] == "simple_fpn"


def test_converted_detector_gives_the_outputs_of_the_same_weights_loaded_by_name(det) -> None:
    config, model, mm = det
    converted, _, _, _ = convert_state_dict(mm, config)
    ref, got = model.state_dict(), converted.state_dict()
    for key, value in ref.items():
        if key == "roi_heads.head.bbox_pred.weight" or key == "roi_heads.head.bbox_pred.bias":
            torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-7)  # × π then ÷ π
        else:
            assert torch.equal(got[key], value), key
    x = torch.randn(2, 3, GRID * PATCH, GRID * PATCH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = model(x), converted(x)
    assert sum(len(e["scores"]) for e in expected) > 0
    for e, a in zip(expected, actual, strict=True):
        assert torch.equal(e["labels"], a["labels"])
        torch.testing.assert_close(a["scores"], e["scores"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a["boxes"], e["boxes"], rtol=1e-4, atol=1e-3)


def test_converted_cascade_rcnn_equals_the_same_weights_exactly(cascade) -> None:
    config, model, mm = cascade
    assert sorted(mm) == sorted(mm_keys_cascade_rcnn())
    converted, arch, _, _ = convert_state_dict(mm, config)
    assert arch["detector"]["roi_head"] == "cascade" and arch["fpn"] == "simple_fpn"
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, actual = model(x), converted(x)
    assert len(expected[0]["scores"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(actual[0][key], expected[0][key]), key


def test_converted_open_cd_change_model_equals_the_same_weights_exactly(change) -> None:
    config, model, mm = change
    converted, arch, card, _ = convert_state_dict(mm, config)
    assert (arch["fusion"], arch["head_channels"]) == ("concat", FPN_W)  # the checkpoint's, not the config's
    assert card.class_names == ["unchanged", "changed"] and card.task == "change"
    x = torch.randn(1, 6, 128, 128, generator=torch.Generator().manual_seed(4))  # before, after
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))
    diff = dict(mm)  # a head fed |after - before| (1x width) is not open-cd's concat: refused by name
    diff["decode_head.lateral_convs.0.conv.weight"] = mm["decode_head.lateral_convs.0.conv.weight"][:, :DIM]
    with pytest.raises(ValueError, match=r"decode_head\.lateral_convs\.0\.conv\.weight takes 192 channels"):
        convert_state_dict(diff, config)


def test_converted_segmenter_equals_the_same_weights_exactly(seg) -> None:
    config, model, mm = seg
    converted, _, _, _ = convert_state_dict(mm, config)
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))


def test_mmdet_background_last_becomes_our_background_first(det) -> None:
    config, _, mm = det
    mm = dict(mm)
    k = NUM_CLASSES_DET
    w = mm["roi_head.bbox_head.fc_cls.weight"]
    mm["roi_head.bbox_head.fc_cls.weight"] = torch.zeros_like(w)
    bias = torch.full((k + 1,), -10.0)
    bias[1] = 10.0  # mmdet's class 1 ("ship")
    mm["roi_head.bbox_head.fc_cls.bias"] = bias
    converted, _, _, _ = convert_state_dict(mm, config)
    head = converted.roi_heads.head
    assert head.cls_score.bias[0] == -10.0 and head.cls_score.bias[2] == 10.0  # bg first, ship at 1 + 1
    with torch.no_grad():
        dets = converted(torch.randn(1, 3, 128, 128))
    assert len(dets[0]["labels"]) > 0 and set(dets[0]["labels"].tolist()) == {1}  # 0-based "ship"


def test_mmrotate_radian_angle_delta_decodes_to_the_same_angle(det) -> None:
    config, _, mm = det
    mm = dict(mm)
    mm["roi_head.bbox_head.fc_reg.bias"] = torch.tensor([0.0, 0.0, 0.0, 0.0, 2.0])  # 2 × std 0.1 = 0.2 rad
    converted, _, _, _ = convert_state_dict(mm, config)
    deltas = converted.roi_heads.head.bbox_pred.bias.detach()[None]
    roi = torch.tensor([[50.0, 40.0, 30.0, 10.0, 0.3]])
    box = OrientedBoxCoder().decode(deltas, roi)[0]
    assert box[4].item() == pytest.approx(0.3 + 0.2, abs=1e-6)
    torch.testing.assert_close(box[:4], roi[0, :4])


def test_leftover_and_missing_keys_are_errors_naming_them(det, tmp_path: Path) -> None:
    config, _, mm = det
    extra = dict(mm, **{"roi_head.bbox_head.fc_extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"does not map.*roi_head\.bbox_head\.fc_extra\.weight"):
        convert_state_dict(extra, config)
    missing = {k: v for k, v in mm.items() if k != "neck.fpn_convs.2.ln.bias"}
    with pytest.raises(
        ValueError, match=r"missing from the checkpoint: neck\.fpn_convs\.2\.ln\.bias \(our fpn"
    ):
        convert_state_dict(missing, config)
    # through the command: exit 2, one line naming the key, nothing written
    src = _save_mm(tmp_path / "extra.pth", extra, ["plane", "ship", "tank"])
    assert main(["convert", str(src), "--config", str(config), "--out", str(tmp_path / "m.ckpt")]) == 2
    assert not (tmp_path / "m.ckpt").exists()


def test_ignore_list_is_consumed_and_reported(seg) -> None:
    config, _, mm = seg
    with_aux = dict(mm)
    with_aux["decode_head.conv_seg.weight"] = mm["decode_head.conv_seg.weight"]
    with_aux["auxiliary_head.conv_seg.weight"] = torch.zeros(4, 8, 1, 1)
    with_aux["backbone.embeddings.class_embedding"] = torch.zeros(1, 1, DIM)
    _, _, _, ignored = convert_state_dict(with_aux, config)
    assert sorted(ignored) == ["auxiliary_head.conv_seg.weight", "backbone.embeddings.class_embedding"]


def test_refuses_a_full_pickle_and_a_file_without_state_dict(det, tmp_path: Path) -> None:
    config, _, mm = det
    # an arbitrary object in meta (as a full-pickle training checkpoint may hold): weights_only refuses it
    torch.save({"state_dict": mm, "meta": {"config": argparse.Namespace(lr=1)}}, tmp_path / "pickle.pth")
    with pytest.raises(ValueError, match="pickle.pth"):
        convert_release(tmp_path / "pickle.pth", config, tmp_path / "a.ckpt")
    torch.save(mm, tmp_path / "bare.pth")
    with pytest.raises(ValueError, match=r"bare.pth: not an mm\* checkpoint"):
        convert_release(tmp_path / "bare.pth", config, tmp_path / "b.ckpt")
    _save_mm(tmp_path / "classes.pth", mm, ["a", "b"])
    with pytest.raises(ValueError, match="meta CLASSES has 2 classes"):
        convert_release(tmp_path / "classes.pth", config, tmp_path / "c.ckpt")
    assert not any(tmp_path.glob("*.ckpt"))


def test_safetensors_and_pth_give_the_same_model_ckpt(det, tmp_path: Path) -> None:
    config, _, mm = det
    save_file({k: v.contiguous() for k, v in mm.items()}, str(tmp_path / "m.safetensors"))
    _save_mm(tmp_path / "m.pth", mm, ["plane", "ship", "tank"])
    a, _ = convert_release(tmp_path / "m.safetensors", config, tmp_path / "a.ckpt")
    b, _ = convert_release(tmp_path / "m.pth", config, tmp_path / "b.ckpt")
    sa = torch.load(a, weights_only=True)["state_dict"]
    sb = torch.load(b, weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _write_original(path: Path, model: torch.nn.Module, card_dict: dict) -> Path:
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, CARD_KEY: card_dict}, path
    )
    return path


def test_infer_with_the_converted_checkpoint_equals_infer_with_the_original(seg, tmp_path: Path) -> None:
    config, model, mm = seg
    src = _save_mm(tmp_path / "upernet.pth", mm, ["background", "a", "b", "c"])
    assert main(["convert", str(src), "--config", str(config), "--out", str(tmp_path / "model.ckpt")]) == 0
    converted = torch.load(tmp_path / "model.ckpt", weights_only=True)
    original = _write_original(tmp_path / "original.ckpt", model, converted[CARD_KEY])
    loaded, card = load_inference_model(tmp_path / "model.ckpt")
    assert card.class_names == [f"class_{i}" for i in range(NUM_CLASSES_SEG)]
    scene = generate_scene(3, (150, 170))
    image = np.clip(scene.image, 0, 255).astype(np.uint8)
    write_geotiff(tmp_path / "scene.tif", image, scene.transform, scene.crs)
    outs = []
    for name, ckpt in (("conv", tmp_path / "model.ckpt"), ("orig", original)):
        out = tmp_path / name
        rc = main(
            [
                "infer",
                str(tmp_path / "scene.tif"),
                "--checkpoint",
                str(ckpt),
                "--out",
                str(out / "pred.tif"),
                "--probabilities",
                str(out / "probs.tif"),
                "--no-progress",
            ]
        )
        assert rc == 0
        with rasterio.open(out / "probs.tif") as src_probs:
            outs.append(src_probs.read())
    assert outs[0].shape == (NUM_CLASSES_SEG, 150, 170)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert outs[0].std() > 0  # not a constant map


def _infer_converted_and_original(case: Case, classes: list[str], seed: int, tmp_path: Path) -> list[Any]:
    """``vitp-geo convert`` the case's checkpoint, then ``infer --vector`` a generated scene with the
    converted model and with the original weights under the same card: the two GeoPackage layers."""
    import geopandas as gpd

    config, model, mm = case
    src = _save_mm(tmp_path / "released.pth", mm, classes)
    assert main(["convert", str(src), "--config", str(config), "--out", str(tmp_path / "model.ckpt")]) == 0
    card = torch.load(tmp_path / "model.ckpt", weights_only=True)[CARD_KEY]
    original = _write_original(tmp_path / "original.ckpt", model, card)
    scene = generate_scene(seed, (150, 170))
    write_geotiff(
        tmp_path / "scene.tif", np.clip(scene.image, 0, 255).astype(np.uint8), scene.transform, scene.crs
    )
    frames = []
    for name, ckpt in (("conv", tmp_path / "model.ckpt"), ("orig", original)):
        gpkg = tmp_path / f"{name}.gpkg"
        args = ["infer", str(tmp_path / "scene.tif"), "--checkpoint", str(ckpt), "--vector", str(gpkg)]
        assert main([*args, "--min-score", "0.0", "--no-progress"]) == 0
        frames.append(gpd.read_file(gpkg, layer=name))
    return frames


def test_infer_detections_of_the_converted_oriented_rcnn_equal_the_originals(det, tmp_path: Path) -> None:
    frames = _infer_converted_and_original(det, ["plane", "ship", "tank"], 4, tmp_path)
    conv, orig = (f.sort_values("score", ascending=False, ignore_index=True) for f in frames)
    assert len(conv) == len(orig) > 0
    assert set(conv["class_name"]) <= {"plane", "ship", "tank"}
    assert list(conv["class_name"]) == list(orig["class_name"])
    np.testing.assert_allclose(conv["score"], orig["score"], rtol=1e-5)
    a = np.concatenate([np.asarray(g.exterior.coords) for g in conv.geometry])
    b = np.concatenate([np.asarray(g.exterior.coords) for g in orig.geometry])
    np.testing.assert_allclose(a, b, atol=1e-2)  # map units (metres); the angle rows went × π then ÷ π


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("leftover", "does not map (and does not ignore): roi_head.bbox_head.fc_extra.weight"),
        ("missing-file", "checkpoint not found"),
        ("out-is-the-checkpoint", "--out"),
        ("config-not-a-task", "is not a vitp-geo task"),
        ("truncated", "m.pth"),
    ],
)
def test_convert_bad_input_is_one_error_line_and_writes_nothing(
    case: str, expected: str, det, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _, mm = det
    src = tmp_path / "m.pth"
    out = tmp_path / "out" / "model.ckpt"
    _save_mm(
        src,
        dict(mm, **{"roi_head.bbox_head.fc_extra.weight": torch.zeros(2)}) if case == "leftover" else mm,
        ["plane", "ship", "tank"],
    )
    if case == "missing-file":
        src.unlink()
    if case == "out-is-the-checkpoint":
        out = src
    if case == "config-not-a-task":
        bad = yaml.safe_load(config.read_text())
        bad["model"]["class_path"] = "torch.nn.Linear"
        config = tmp_path / "bad.yaml"
        config.write_text(yaml.safe_dump(bad))
    if case == "truncated":
        src.write_bytes(src.read_bytes()[:1000])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["convert", str(src), "--config", str(config), "--out", str(out)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vitp-geo convert: error: ") and expected in lines[0], (
        lines
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_every_listed_reference_key_maps_and_maps_back_by_one_rule() -> None:
    from vitp_geo.convert.keymap import (
        BACKBONE,
        CASCADE,
        FPN,
        MASK_RCNN,
        ORIENTED_ROI,
        ORIENTED_RPN,
        RPN,
        SIMPLE_FPN,
        UPERHEAD,
    )

    layouts = {
        "oriented": (mm_keys_oriented_rcnn(), BACKBONE + SIMPLE_FPN + ORIENTED_RPN + ORIENTED_ROI),
        "cascade": (mm_keys_cascade_rcnn(), BACKBONE + SIMPLE_FPN + RPN + CASCADE),
        "upernet": (mm_keys_upernet(), BACKBONE + UPERHEAD),
        "mask": (mm_keys_mask_rcnn(), BACKBONE + FPN + RPN + MASK_RCNN),
    }
    for name, (keys, rules) in layouts.items():
        for key in keys:
            hits = [(r, t) for r in rules if (t := r.apply(key)) is not None]
            assert len(hits) == 1, (name, key, hits)  # one rule per key: the table is unambiguous
            rule, ours = hits[0]
            assert ours == _ours(key, name), key  # the same as the hand-written inverse
            assert rule.source_for(ours) == key  # error messages name the checkpoint's spelling


CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "finetune"


@pytest.mark.parametrize(
    ("config", "layout"),
    [
        ("detection/diorr.yaml", "oriented_rcnn"),
        ("detection/dotav2.yaml", "oriented_rcnn"),
        ("detection/rsar.yaml", "oriented_rcnn"),
        ("detection/dior.yaml", "cascade_rcnn"),
        ("detection/sardet100k.yaml", "cascade_rcnn"),
        ("detection/ssdd.yaml", "mask_rcnn"),
        ("segmentation/isaid.yaml", "upernet"),
        ("segmentation/loveda.yaml", "upernet"),
        ("segmentation/uavid.yaml", "upernet"),
        ("change/levircd.yaml", "upernet"),
        ("change/whu.yaml", "upernet"),
        ("change/s2looking.yaml", "upernet"),
        ("change/svcd.yaml", "upernet"),
    ],
)
def test_every_shipped_benchmark_config_with_a_released_model_has_a_layout(config: str, layout: str) -> None:
    from vitp_geo.convert.release import _hparams, _layout, _read_config

    path = CONFIGS / config
    task_cls, init = _read_config(path)
    assert _layout(str(task_cls.KIND), _hparams(task_cls, init, path), path) == layout


def test_a_config_without_a_released_layout_is_refused_with_the_layouts_named(tmp_path: Path) -> None:
    from vitp_geo.convert.release import _hparams, _layout, _read_config

    cfg = yaml.safe_load((CONFIGS / "detection" / "ssdd.yaml").read_text())
    cfg["model"]["init_args"]["roi_head"] = "standard"  # Faster R-CNN: the reference released none
    path = tmp_path / "faster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    task_cls, init = _read_config(path)
    with pytest.raises(
        ValueError, match="no released-checkpoint layout.*Oriented R-CNN.*Cascade R-CNN.*Mask R-CNN"
    ):
        _layout(str(task_cls.KIND), _hparams(task_cls, init, path), path)


def test_the_checkpoints_rgb_input_wins_over_the_configs_channel_count(det, tmp_path: Path) -> None:
    config, _, mm = det
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["init_args"]["backbone"]["in_channels"] = 1  # e.g. a single-band SAR setting
    one_band = tmp_path / "one_band.yaml"
    one_band.write_text(yaml.safe_dump(cfg))
    _, arch, card, _ = convert_state_dict(mm, one_band)
    assert card.bands == [1, 2, 3] and len(card.mean) == 3 and arch["in_channels"] == 3
    cfg["model"]["init_args"]["inputs"] = {"bands": [1]}
    one_band.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match=r"model\.init_args\.inputs\.bands has 1 values, the model takes 3"):
        convert_state_dict(mm, one_band)


def test_the_card_carries_the_reference_normalisation_whatever_the_config_says(seg, tmp_path: Path) -> None:
    config, _, mm = seg
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["init_args"]["inputs"] = {"mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0]}
    other = tmp_path / "other_stats.yaml"
    other.write_text(yaml.safe_dump(cfg))
    _, _, card, _ = convert_state_dict(mm, other)
    assert card.mean == [123.675, 116.28, 103.53] and card.std == [58.395, 57.12, 57.375]


def test_reference_layout_adapter_norms_compute_the_references_channels_first_layernorm(det) -> None:
    _, model, _ = det
    neck = model.neck
    x = torch.randn(2, DIM, 5, 7, generator=torch.Generator().manual_seed(5)) * 3 + 1
    for norm in (neck.norm1, neck.norm4):
        # the reference's adapter_modules.LayerNorm (channels_first, eps 1e-6), written out
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        expected = norm.weight[:, None, None] * (x - u) / torch.sqrt(s + 1e-6) + norm.bias[:, None, None]
        with torch.no_grad():
            torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)
    stem_norm = neck.spm.stem[1]
    assert not isinstance(stem_norm, torch.nn.BatchNorm2d) and stem_norm.eps == 1e-6
    assert (
        neck.interactions[0].injector.query_norm.eps == 1e-5
    )  # torch's default, as InternViTAdapter builds it


@pytest.mark.parametrize("kind", ["detection", "segmentation"])
def test_a_released_model_given_as_backbone_is_refused_naming_it_and_vitp_geo_convert(
    kind: str, det, seg, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vitp_geo.models.vit import load_backbone

    _, _, mm = det if kind == "detection" else seg
    src = _save_mm(tmp_path / "released.pth", mm, ["plane", "ship", "tank"])
    what = "detector" if kind == "detection" else "segmenter or change model"
    heads = "neck, roi_head, rpn_head" if kind == "detection" else "decode_head"
    # the library: the file named once, what it is, the heads found, the command that runs it
    with pytest.raises(ValueError) as err:
        load_backbone(src)
    msg = str(err.value)
    assert msg.count("released.pth") == 1 and f"a fine-tuned ViTP reference {what}" in msg
    assert f"with {heads})" in msg and "`vitp-geo convert CHECKPOINT --config" in msg
    # the command: exit 2, one line, before anything is written
    out = tmp_path / "run"
    assert main(["finetune", kind, "--backbone", str(src), "--output", str(out)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"released.pth is a fine-tuned ViTP reference {what}" in lines[0], lines
    assert "vitp-geo convert" in lines[0] and not out.exists()


def test_an_unreadable_backbone_file_is_named_once(tmp_path: Path) -> None:
    from vitp_geo.models.vit import load_backbone

    path = tmp_path / "broken.pth"
    path.write_bytes(b"\x00\x01 not weights")
    with pytest.raises(ValueError) as err:
        load_backbone(path, arch="vitp_tiny_patch14_112")
    assert str(err.value).count("broken.pth") == 1 and "not a readable weights file" in str(err.value)


def _mask_outputs_equal(expected: list[dict], actual: list[dict]) -> None:
    assert sum(len(e["scores"]) for e in expected) > 0
    for e, a in zip(expected, actual, strict=True):
        assert set(a) == {"boxes", "scores", "labels", "masks"}
        for key in ("boxes", "scores", "labels", "masks"):
            assert torch.equal(a[key], e[key]), key
        assert e["masks"].any()  # not all-empty masks


def test_converted_mask_rcnn_equals_the_same_weights_exactly_masks_included(mask) -> None:
    config, model, mm = mask
    assert sorted(mm) == sorted(mm_keys_mask_rcnn())
    converted, arch, card, ignored = convert_state_dict(mm, config)
    assert ignored == [] and arch["detector"]["roi_head"] == "mask" and arch.get("fpn", "fpn") == "fpn"
    assert card.class_names == MASK_CLASSES
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected, actual = model(x), converted(x)
    _mask_outputs_equal(expected, actual)


def test_mmdet_class_maps_and_deltas_land_on_our_classes_after_the_background_slot(mask) -> None:
    """mmdet's FCNMaskHead has one logit map a class and no background map; its class-specific box
    deltas have no background rows: class c is our c + 1, our slot 0 a zero background."""
    config, _, mm = mask
    mm = dict(mm)
    k = len(MASK_CLASSES)
    cls_w = mm["roi_head.bbox_head.fc_cls.weight"]
    mm["roi_head.bbox_head.fc_cls.weight"] = torch.zeros_like(cls_w)
    mm["roi_head.bbox_head.fc_cls.bias"] = torch.tensor([-10.0, 10.0, -10.0])  # mmdet: ship, boat, background
    reg_b = torch.zeros(4 * k)
    reg_b[4:6] = 1.0  # boat's dx, dy: shifted by 0.1 box widths / heights (std 0.1)
    mm["roi_head.bbox_head.fc_reg.weight"] = torch.zeros(4 * k, cls_w.shape[1])
    mm["roi_head.bbox_head.fc_reg.bias"] = reg_b
    w = mm["roi_head.mask_head.conv_logits.weight"]
    mm["roi_head.mask_head.conv_logits.weight"] = torch.zeros_like(w)
    mm["roi_head.mask_head.conv_logits.bias"] = torch.tensor([-20.0, 20.0])  # ship: no mask, boat: full box
    converted, _, _, _ = convert_state_dict(mm, config)
    logits = converted.roi_heads.mask_predictor.mask_fcn_logits
    assert logits.out_channels == k + 1 and torch.equal(logits.bias, torch.tensor([0.0, -20.0, 20.0]))
    bbox_pred = converted.roi_heads.box_predictor.bbox_pred
    assert torch.equal(bbox_pred.bias, torch.tensor([0.0] * 4 + [0.0] * 4 + [1.0, 1.0, 0.0, 0.0]))
    with torch.no_grad():
        out = converted(torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(7)))[0]
    assert len(out["labels"]) > 0 and set(out["labels"].tolist()) == {1}  # 0-based "boat"
    for box, m in zip(out["boxes"], out["masks"], strict=True):  # the whole box, nothing outside
        x1, y1, x2, y2 = box.tolist()
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert len(xs) > 0 and xs.min() >= int(x1) - 1 and xs.max() <= x2 + 1 and ys.max() <= y2 + 1
        inner = m[int(y1) + 2 : int(y2) - 1, int(x1) + 2 : int(x2) - 1]
        assert inner.numel() == 0 or bool(inner.all())


def _with_head_classes(mm: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """``mm`` with its per-class head rows grown to ``n`` classes (mmdet's default num_classes=80 left
    in the reference's SSDD config): random rows after the trained ones, background still last."""
    g = torch.Generator().manual_seed(8)
    out = dict(mm)
    for key in ("weight", "bias"):
        cls = mm[f"roi_head.bbox_head.fc_cls.{key}"]
        k = cls.shape[0] - 1
        extra = torch.randn((n - k, *cls.shape[1:]), generator=g) - 5.0
        out[f"roi_head.bbox_head.fc_cls.{key}"] = torch.cat([cls[:k], extra, cls[k:]])
        reg = mm[f"roi_head.bbox_head.fc_reg.{key}"]
        out[f"roi_head.bbox_head.fc_reg.{key}"] = torch.cat(
            [reg, torch.randn((4 * (n - k), *reg.shape[1:]), generator=g)]
        )
        maps = mm[f"roi_head.mask_head.conv_logits.{key}"]
        out[f"roi_head.mask_head.conv_logits.{key}"] = torch.cat(
            [maps, torch.randn((n - k, *maps.shape[1:]), generator=g)]
        )
    return out


def test_the_released_ssdd_heads_80_classes_keep_the_meta_classes_and_give_their_outputs(
    mask, tmp_path: Path
) -> None:
    config, model, mm = mask
    mm80 = _with_head_classes(mm, 80)
    assert mm80["roi_head.bbox_head.fc_cls.weight"].shape[0] == 81 and mm80[
        "roi_head.mask_head.conv_logits.bias"
    ].shape == (80,)
    converted, _, card, cut = convert_state_dict(mm80, config, meta_classes=len(MASK_CLASSES))
    assert card.class_names == MASK_CLASSES
    assert sorted(c.split(" ")[0] for c in cut) == sorted(
        f"roi_head.{m}.{p}"
        for m in ("bbox_head.fc_cls", "bbox_head.fc_reg", "mask_head.conv_logits")
        for p in _WB
    )
    assert all("head classes 3-80 of 80" in c for c in cut)
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        _mask_outputs_equal(model(x), converted(x))  # the first K classes, exactly the trained ones
    # without meta CLASSES (a .safetensors file) nothing says which classes the config's are: refused
    with pytest.raises(
        ValueError, match=r"fc_cls\.weight has 81 rows \(80 classes and background\), the config has 2"
    ):
        convert_state_dict(mm80, config)
    # through the command: the meta of the .pth decides; the cut is reported
    src = _save_mm(tmp_path / "ssdd.pth", mm80, MASK_CLASSES)
    assert main(["convert", str(src), "--config", str(config), "--out", str(tmp_path / "m.ckpt")]) == 0
    save_file({k: v.contiguous() for k, v in mm80.items()}, str(tmp_path / "ssdd.safetensors"))
    rc = main(
        [
            "convert",
            str(tmp_path / "ssdd.safetensors"),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "n.ckpt"),
        ]
    )
    assert rc == 2 and not (tmp_path / "n.ckpt").exists()


def test_infer_mask_polygons_of_the_converted_mask_rcnn_equal_the_originals(mask, tmp_path: Path) -> None:
    conv, orig = _infer_converted_and_original(mask, MASK_CLASSES, 5, tmp_path)
    assert len(conv) == len(orig) > 0 and set(conv["class_name"]) <= set(MASK_CLASSES)
    assert list(conv["class_name"]) == list(orig["class_name"])
    np.testing.assert_array_equal(conv["score"], orig["score"])
    # mask outlines, not boxes: some polygon has more than a rectangle's 5 ring points
    assert max(len(g.exterior.coords) if g.geom_type == "Polygon" else 6 for g in conv.geometry) > 5
    assert all(a.equals_exact(b, 0.0) for a, b in zip(conv.geometry, orig.geometry, strict=True))
