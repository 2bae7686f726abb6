"""The one key map from the reference's released fine-tuned checkpoints to our models.

The ViTP reference (zcablii/ViTP) fine-tunes in mmrotate, mmsegmentation and open-cd; their
checkpoints name parameters after those libraries' modules. Each :class:`Rule` below maps one
family of source keys (a regular expression over the whole key) onto our model's
``state_dict`` key, with a :class:`Reshape` where the tensors are laid out differently. Keys
that have no place in our model on purpose are listed in :data:`IGNORED` with the reason; a key
neither mapped nor ignored is an error (``vitp_geo.convert.release``).

Source → ours (block / level / stage numbers ``{i}`` carry over unchanged):

* reference ``InternViTAdapter`` (``backbone.``) → ``DeformableViTAdapter`` (``neck.``):
  ``embeddings.patch_embedding`` → ``backbone.patch_embed.proj``;
  ``embeddings.position_embedding`` (1, 1 + N, D) → ``backbone.pos_embed`` (1, N, D), the class
  slot dropped; ``layers.{i}.{norm1, norm2, attn.qkv, attn.proj, mlp.fc1, mlp.fc2}`` →
  ``backbone.blocks.{i}.*``; ``layers.{i}.ls1`` / ``ls2`` → ``…ls1.gamma`` / ``ls2.gamma``;
  ``level_embed``, ``spm.*``, ``interactions.*``, ``up``, ``norm1``–``norm4`` keep their names
  (the adapter built with ``norm="layer"``);
* mmrotate ``SimpleFPN`` ``neck.{lateral,fpn}_convs.{i}.conv`` / ``.ln`` →
  ``fpn.{lateral,fpn}_convs.{i}.conv`` / ``.norm``; mmdet ``FPN`` ``neck.lateral_convs.{i}.conv``
  / ``neck.fpn_convs.{i}.conv`` → torchvision's ``fpn.inner_blocks.{i}.0`` / ``fpn.layer_blocks.{i}.0``;
* mmrotate ``OrientedRPNHead`` ``rpn_head.rpn_conv`` / ``rpn_cls`` / ``rpn_reg`` →
  ``rpn.head.conv`` / ``cls_logits`` / ``bbox_pred`` (anchor-major channels, as mmdet's); mmdet
  ``RPNHead`` the same onto torchvision's ``rpn.head.conv.0.0`` / ``cls_logits`` / ``bbox_pred``;
* mmrotate ``RotatedShared2FCBBoxHead`` ``roi_head.bbox_head.shared_fcs.0`` / ``.1`` / ``fc_cls``
  / ``fc_reg`` → ``roi_heads.head.fc6`` / ``fc7`` / ``cls_score`` (K + 1 rows: background moved
  from last to first) / ``bbox_pred`` (angle rows ÷ π: radians × 10 → half turns × 10);
* mmdet ``CascadeRoIHead`` ``roi_head.bbox_head.{s}.shared_fcs.0`` / ``.1`` / ``fc_cls`` /
  ``fc_reg`` → ``roi_heads.stages.{s}.box_head.fc6`` / ``fc7`` / ``cls_score`` (background first)
  / ``bbox_pred`` (4 class-agnostic deltas, unchanged);
* mmseg ``UPerHead`` (also in open-cd's change models, whose ``FeatureFusionNeck`` concatenation
  has no weights) ``decode_head.psp_modules.{j}.1.{conv, bn}`` → ``head.ppm.{j}.1.{0, 1}``;
  ``bottleneck`` / ``fpn_bottleneck`` → ``head.bottleneck`` / ``head.fuse``; ``lateral_convs.{i}``
  / ``fpn_convs.{i}`` → ``head.lateral.{i}`` / ``head.fpn.{i}`` (``conv`` → ``0``, ``bn`` →
  ``1``); ``conv_seg`` → ``head.classifier``.

mmcv's ``ConvModule`` names its norm layer by the norm's abbreviation (``bn`` for BN / SyncBN,
``ln`` for LN) and drops the conv bias when a norm follows; so the SimpleFPN and UPerHead convs
have no ``bias`` key, and neither have ours.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from torch import Tensor


class Reshape(StrEnum):
    """How a source tensor becomes ours (besides the rename)."""

    NONE = "none"
    DROP_CLASS_SLOT = "drop_class_slot"  # (1, 1 + N, D) → (1, N, D): the adapter never uses slot 0
    BACKGROUND_FIRST = "background_first"  # rows [c_0 … c_{K-1}, bg] → [bg, c_0 … c_{K-1}]
    ANGLE_HALF_TURNS = "angle_half_turns"  # every 5th row (the angle delta) ÷ π


def _drop_class_slot(t: Tensor) -> Tensor:
    if t.ndim != 3 or t.shape[0] != 1 or t.shape[1] < 2:
        raise ValueError(f"expected a (1, 1 + N, D) position embedding, got {tuple(t.shape)}")
    return t[:, 1:].clone()


def _background_first(t: Tensor) -> Tensor:
    # mmdet's softmax classifier puts background at index K; torchvision's (and ours) at 0
    return t.roll(1, dims=0).clone()


def _angle_half_turns(t: Tensor) -> Tensor:
    # mmrotate's DeltaXYWHAOBBoxCoder (norm_factor None) decodes ``angle = roi_angle + 0.1 · d``
    # in radians; ours (models.detection.coder) ``angle = roi_angle + π · d / 10``
    if t.shape[0] % 5:
        raise ValueError(f"expected 5 box deltas per class, got {t.shape[0]} rows")
    out = t.clone()
    out[4::5] = out[4::5] / math.pi
    return out


RESHAPES: dict[Reshape, Callable[[Tensor], Tensor]] = {
    Reshape.NONE: lambda t: t,
    Reshape.DROP_CLASS_SLOT: _drop_class_slot,
    Reshape.BACKGROUND_FIRST: _background_first,
    Reshape.ANGLE_HALF_TURNS: _angle_half_turns,
}


@dataclass(frozen=True)
class Rule:
    """``source`` (a full-match regular expression) → ``target`` (``re`` replacement template)."""

    source: str
    target: str
    reshape: Reshape = Reshape.NONE

    def apply(self, key: str) -> str | None:
        """Our key for ``key``, or None when this rule does not match it."""
        m = re.fullmatch(self.source, key)
        return m.expand(self.target) if m else None

    def source_for(self, key: str) -> str | None:
        """The reference's key that this rule maps onto our ``key`` (None when it maps none): for
        errors that name a missing key as the checkpoint would spell it."""
        parts = re.split(r"\\(\d+)", self.target)  # literal, group number, literal, ...
        pattern = "".join(re.escape(p) if i % 2 == 0 else f"(?P<g{p}>.+?)" for i, p in enumerate(parts))
        m = re.fullmatch(pattern, key)
        if m is None:
            return None
        values = {int(k[1:]): v for k, v in m.groupdict().items()}
        out, depth, group, i = [], 0, 0, 0
        while i < len(self.source):  # replace each top-level capturing group by its value
            c = self.source[i]
            if c == "\\":
                out.append(self.source[i + 1] if depth == 0 else "")
                i += 2
                continue
            if c == "(":
                depth += 1
                if depth == 1:
                    group += 1
                    if group not in values:
                        return None
                    out.append(values[group])
            elif c == ")":
                depth -= 1
            elif depth == 0:
                out.append(c)
            i += 1
        source = "".join(out)
        return source if self.apply(source) == key else None


_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_WB = r"(weight|bias)"

# InternViTAdapter (reference ``backbone.``) → DeformableViTAdapter (``neck.``), norm="layer".
BACKBONE: tuple[Rule, ...] = (
    Rule(rf"backbone\.embeddings\.patch_embedding\.{_WB}", r"neck.backbone.patch_embed.proj.\1"),
    Rule(r"backbone\.embeddings\.position_embedding", "neck.backbone.pos_embed", Reshape.DROP_CLASS_SLOT),
    Rule(
        rf"backbone\.layers\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.{_WB}",
        r"neck.backbone.blocks.\1.\2.\3",
    ),
    Rule(r"backbone\.layers\.(\d+)\.(ls1|ls2)", r"neck.backbone.blocks.\1.\2.gamma"),
    Rule(r"backbone\.level_embed", "neck.level_embed"),
    Rule(rf"backbone\.spm\.(stem\.[0-9]|conv[234]\.[01]|fc[1-4])\.{_WB}", r"neck.spm.\1.\2"),
    Rule(
        r"backbone\.interactions\.(\d+)\.(injector|extractor|extra_extractors\.\d+)\."
        rf"(query_norm|feat_norm|ffn_norm|ffn\.fc1|ffn\.fc2|ffn\.dwconv\.dwconv|attn\.sampling_offsets"
        rf"|attn\.attention_weights|attn\.value_proj|attn\.output_proj)\.{_WB}",
        r"neck.interactions.\1.\2.\3.\4",
    ),
    Rule(r"backbone\.interactions\.(\d+)\.injector\.gamma", r"neck.interactions.\1.injector.gamma"),
    Rule(rf"backbone\.(up|norm[1-4])\.{_WB}", r"neck.\1.\2"),
)

# mmrotate SimpleFPN (LayerNorm, no top-down) → models.simple_fpn.SimpleFPN.
SIMPLE_FPN: tuple[Rule, ...] = (
    Rule(r"neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.weight", r"fpn.\1.\2.conv.weight"),
    Rule(rf"neck\.(lateral_convs|fpn_convs)\.(\d+)\.ln\.{_WB}", r"fpn.\1.\2.norm.\3"),
)

# mmdet FPN (no norm, conv biases) → torchvision FeaturePyramidNetwork.
FPN: tuple[Rule, ...] = (
    Rule(rf"neck\.lateral_convs\.(\d+)\.conv\.{_WB}", r"fpn.inner_blocks.\1.0.\2"),
    Rule(rf"neck\.fpn_convs\.(\d+)\.conv\.{_WB}", r"fpn.layer_blocks.\1.0.\2"),
)

# mmrotate OrientedRPNHead → models.detection.oriented_rpn.OrientedRPNHead.
ORIENTED_RPN: tuple[Rule, ...] = (
    Rule(rf"rpn_head\.rpn_conv\.{_WB}", r"rpn.head.conv.\1"),
    Rule(rf"rpn_head\.rpn_cls\.{_WB}", r"rpn.head.cls_logits.\1"),
    Rule(rf"rpn_head\.rpn_reg\.{_WB}", r"rpn.head.bbox_pred.\1"),
)

# mmrotate RotatedShared2FCBBoxHead → models.detection.oriented_heads.OrientedBoxHead.
ORIENTED_ROI: tuple[Rule, ...] = (
    Rule(rf"roi_head\.bbox_head\.shared_fcs\.0\.{_WB}", r"roi_heads.head.fc6.\1"),
    Rule(rf"roi_head\.bbox_head\.shared_fcs\.1\.{_WB}", r"roi_heads.head.fc7.\1"),
    Rule(rf"roi_head\.bbox_head\.fc_cls\.{_WB}", r"roi_heads.head.cls_score.\1", Reshape.BACKGROUND_FIRST),
    Rule(rf"roi_head\.bbox_head\.fc_reg\.{_WB}", r"roi_heads.head.bbox_pred.\1", Reshape.ANGLE_HALF_TURNS),
)

# mmdet RPNHead → torchvision RPNHead (its 3×3 conv sits in a Conv2dNormActivation: ``conv.0.0``).
RPN: tuple[Rule, ...] = (
    Rule(rf"rpn_head\.rpn_conv\.{_WB}", r"rpn.head.conv.0.0.\1"),
    Rule(rf"rpn_head\.rpn_cls\.{_WB}", r"rpn.head.cls_logits.\1"),
    Rule(rf"rpn_head\.rpn_reg\.{_WB}", r"rpn.head.bbox_pred.\1"),
)

# mmdet CascadeRoIHead, three Shared2FCBBoxHead stages (class-agnostic deltas) → models.detection.cascade.
CASCADE: tuple[Rule, ...] = (
    Rule(rf"roi_head\.bbox_head\.(\d+)\.shared_fcs\.0\.{_WB}", r"roi_heads.stages.\1.box_head.fc6.\2"),
    Rule(rf"roi_head\.bbox_head\.(\d+)\.shared_fcs\.1\.{_WB}", r"roi_heads.stages.\1.box_head.fc7.\2"),
    Rule(
        rf"roi_head\.bbox_head\.(\d+)\.fc_cls\.{_WB}",
        r"roi_heads.stages.\1.cls_score.\2",
        Reshape.BACKGROUND_FIRST,
    ),
    Rule(rf"roi_head\.bbox_head\.(\d+)\.fc_reg\.{_WB}", r"roi_heads.stages.\1.bbox_pred.\2"),
)

# mmseg UPerHead (ConvModule = conv without bias + SyncBN ``bn``) → models.heads.UperNetHead.
UPERHEAD: tuple[Rule, ...] = (
    Rule(r"decode_head\.psp_modules\.(\d+)\.1\.conv\.weight", r"head.ppm.\1.1.0.weight"),
    Rule(rf"decode_head\.psp_modules\.(\d+)\.1\.bn\.{_BN}", r"head.ppm.\1.1.1.\2"),
    Rule(r"decode_head\.bottleneck\.conv\.weight", "head.bottleneck.0.weight"),
    Rule(rf"decode_head\.bottleneck\.bn\.{_BN}", r"head.bottleneck.1.\1"),
    Rule(r"decode_head\.lateral_convs\.(\d+)\.conv\.weight", r"head.lateral.\1.0.weight"),
    Rule(rf"decode_head\.lateral_convs\.(\d+)\.bn\.{_BN}", r"head.lateral.\1.1.\2"),
    Rule(r"decode_head\.fpn_convs\.(\d+)\.conv\.weight", r"head.fpn.\1.0.weight"),
    Rule(rf"decode_head\.fpn_convs\.(\d+)\.bn\.{_BN}", r"head.fpn.\1.1.\2"),
    Rule(r"decode_head\.fpn_bottleneck\.conv\.weight", "head.fuse.0.weight"),
    Rule(rf"decode_head\.fpn_bottleneck\.bn\.{_BN}", r"head.fuse.1.\1"),
    Rule(rf"decode_head\.conv_seg\.{_WB}", r"head.classifier.\1"),
)

# Source keys with no place in our model, on purpose: (full-match pattern, reason).
IGNORED: tuple[tuple[str, str], ...] = (
    (
        r"backbone\.embeddings\.class_embedding",
        "InternViTAdapter.forward_adapter uses no class token (ViT variants that define one still save it)",
    ),
    (
        r"auxiliary_head\..+",
        "mmseg's auxiliary FCN head adds a training loss only; inference uses decode_head",
    ),
)

# Which tables a released model of each kind needs, by the detector / head it was trained with.
LAYOUTS: dict[str, tuple[tuple[Rule, ...], ...]] = {
    "oriented_rcnn": (BACKBONE, ORIENTED_RPN, ORIENTED_ROI),  # + SIMPLE_FPN or FPN, by the keys
    "cascade_rcnn": (BACKBONE, RPN, CASCADE),  # + SIMPLE_FPN or FPN, by the keys
    "upernet": (BACKBONE, UPERHEAD),  # mmseg segmenters and open-cd siamese change models alike
}


def ignored_reason(key: str) -> str | None:
    """Why ``key`` is left out on purpose, or None when it must be mapped."""
    for pattern, reason in IGNORED:
        if re.fullmatch(pattern, key):
            return reason
    return None
