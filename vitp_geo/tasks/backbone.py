"""The fine-tuning backbone: build or load a timm ViT, adapt its input bands, describe it for rebuilding.

Extra bands (multispectral, SAR) — the rule, applied to the patch-embedding convolution
``W`` of shape (D, 3, p, p) pretrained on RGB when the task has ``C != 3`` input channels:

1. ``rgb_channels`` names which input channels are red, green and blue (0-based, default the
   first three when ``C >= 3``). Those channels keep their pretrained filters ``W[:, 0..2]``.
2. Every other channel (NIR, SWIR, SAR polarisations, ...) starts from the mean RGB filter
   ``W.mean(dim=1)``; with ``C == 1`` (single SAR band, panchromatic) the one channel gets the
   sum of the three RGB filters (a grey image then gives exactly the RGB model's response).
3. For ``C == 2`` and ``C > 3`` all filters are scaled by ``3 / C`` so that the response to an input whose
   channels are equal keeps the magnitude the pretrained model saw.

This is the rule of timm's ``adapt_input_conv`` with the RGB channels placed where the user's
bands say they are. The adapted filters are then fine-tuned like every other weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

import vitp_geo.models  # noqa: F401  (registers the vitp_* models with timm)
from vitp_geo.models.pyramid import enable_dynamic_size
from vitp_geo.models.vit import describe_vit, load_backbone


def adapt_patch_embed(vit: VisionTransformer, in_chans: int, rgb_channels: list[int] | None = None) -> None:
    """Change the number of input channels of ``vit`` in place by the rule in the module doc.

    Args:
        vit: a timm ViT whose patch embedding has 3 input channels.
        in_chans: the task's channel count C.
        rgb_channels: 0-based positions of R, G, B among the C channels (C >= 3 only); with C == 3
            in another order (BGR tiles: ``[2, 1, 0]``) the filters are permuted to match.
    """
    conv = vit.patch_embed.proj
    old = int(conv.in_channels)
    reordered = in_chans == old == 3 and rgb_channels is not None and list(rgb_channels) != [0, 1, 2]
    if in_chans == old and not reordered:  # nothing to adapt (3 bands in R, G, B order)
        return
    if in_chans < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_chans}")
    if old != 3:
        raise ValueError(f"can only adapt an RGB (3-channel) patch embedding, this one has {old} channels")
    weight = conv.weight.detach()  # (D, 3, p, p)
    if in_chans == 1:
        new = weight.sum(dim=1, keepdim=True)
    else:
        rgb = list(rgb_channels) if rgb_channels is not None else ([0, 1, 2] if in_chans >= 3 else [])
        if len(rgb) not in (0, 3) or len(set(rgb)) != len(rgb) or any(not 0 <= c < in_chans for c in rgb):
            raise ValueError(
                f"rgb_channels must be 3 distinct indexes in [0, {in_chans}), got {rgb_channels}"
            )
        new = weight.mean(dim=1, keepdim=True).repeat(1, in_chans, 1, 1)
        for src, dst in enumerate(rgb):
            new[:, dst] = weight[:, src]
        new = new * (3.0 / in_chans)  # C == 2 too (timm's adapt_input_conv scales every C != 1, 3)
    new_conv = torch.nn.Conv2d(
        in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None
    )
    with torch.no_grad():
        new_conv.weight.copy_(new)
        if conv.bias is not None and new_conv.bias is not None:
            new_conv.bias.copy_(conv.bias)
    vit.patch_embed.proj = new_conv


def build_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    img_size: int | None = None,
    in_channels: int = 3,
    rgb_channels: list[int] | None = None,
    drop_path_rate: float = 0.0,
) -> VisionTransformer:
    """The ViT a task fine-tunes.

    Args:
        name: a timm ViT name (``vitp_tiny_patch14_112``, ``vit_intern300m_patch14_448``,
            ``vit_base_patch16_224``, ...). Ignored for the architecture when ``weights`` has a
            ``backbone.json`` beside it (``vitp-geo pretrain`` output).
        weights: ``backbone.safetensors`` / released ViTP or InternViT file; None = random init.
        img_size: training tile size (position embeddings are resized to it; any size works at
            run time). None keeps the model's default.
        in_channels: input channels; RGB filters are adapted by :func:`adapt_patch_embed`.
        rgb_channels: positions of R, G, B among the inputs.
        drop_path_rate: stochastic depth while fine-tuning.

    Returns:
        A timm ``VisionTransformer`` accepting any input size, with ``num_classes=0``.
    """
    if weights is not None:
        refuse_finetuned_checkpoint(weights)
        vit = load_backbone(weights, img_size=img_size)
        if drop_path_rate > 0:
            _set_drop_path(vit, drop_path_rate)
        vit.train()
    else:
        if name not in timm.list_models():
            raise ValueError(f"unknown backbone {name!r}: not a timm model name (e.g. vitp_tiny_patch14_112)")
        kwargs: dict[str, Any] = {"num_classes": 0, "drop_path_rate": drop_path_rate}
        if img_size is not None:
            kwargs["img_size"] = img_size
        vit = timm.create_model(name, pretrained=False, **kwargs)  # type: ignore[assignment]
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"backbone {name!r} is a {type(vit).__name__}, not a timm VisionTransformer")
    adapt_patch_embed(vit, in_channels, rgb_channels)
    return enable_dynamic_size(vit)


def refuse_finetuned_checkpoint(path: str | Path) -> None:
    """Raise a clear ``ValueError`` when ``path`` is a fine-tuned task checkpoint, not a backbone.

    A ``model.ckpt`` from ``vitp-geo finetune`` (segmentation, change or detection) carries a
    model card; its weights include a neck and head, so it cannot initialise another task's ViT.
    """
    from vitp_geo.io.model_card import CARD_KEY

    path = Path(path)
    if path.suffix != ".ckpt" or not path.is_file():
        return
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # not a torch file: load_backbone reports it
        return
    if isinstance(ckpt, dict) and isinstance(ckpt.get(CARD_KEY), dict):
        task = ckpt[CARD_KEY].get("task", "?")
        raise ValueError(
            f"{path} is a fine-tuned {task} checkpoint (it has a model card), not a backbone: give the "
            "backbone file instead (backbone.safetensors from `vitp-geo pretrain`, or a ViTP / InternViT release)"
        )


def _set_drop_path(vit: VisionTransformer, rate: float) -> None:
    from timm.layers import DropPath

    n = len(vit.blocks)
    for i, block in enumerate(vit.blocks):
        p = rate * i / max(1, n - 1)
        block.drop_path1 = DropPath(p) if p > 0 else torch.nn.Identity()
        block.drop_path2 = DropPath(p) if p > 0 else torch.nn.Identity()


def describe_backbone(vit: VisionTransformer) -> dict[str, Any]:
    """What :func:`rebuild_backbone` needs to recreate ``vit`` (untrained) with the same shapes: the
    one ViT description, ``models.vit.describe_vit`` (``{"arch", "model_kwargs"}``, the schema of
    ``backbone.json``), stored in the model card's ``arch["backbone"]``."""
    return describe_vit(vit)


def rebuild_backbone(description: dict[str, Any]) -> VisionTransformer:
    """An untrained ViT with the shapes of :func:`describe_backbone`'s output (weights come from a checkpoint).

    Also reads the ``{"name", "kwargs"}`` form that model cards written before the one schema hold.
    """
    try:
        if "arch" in description:
            name, kwargs = description["arch"], dict(description["model_kwargs"])
        else:
            name, kwargs = description["name"], dict(description["kwargs"])
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"backbone description needs 'arch' and 'model_kwargs', got {description!r}"
        ) from err
    if isinstance(kwargs.get("img_size"), list):
        kwargs["img_size"] = tuple(kwargs["img_size"])
    if name not in timm.list_models():
        raise ValueError(f"unknown backbone architecture {name!r} in the checkpoint")
    vit: Any = timm.create_model(name, pretrained=False, **kwargs)
    return enable_dynamic_size(vit)
