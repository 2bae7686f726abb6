"""ViTP vision backbones: timm VisionTransformers in the InternViT-300M layout.

The file follows timm's order: blocks → model → ``checkpoint_filter_fn`` → default cfgs →
``@register_model`` entries, followed by the loading / export helpers the rest of vitp-geo uses.

Layout (InternViT-300M, as in InternVL2.5 and ViTP): patch 14, a class token, learned absolute
position embeddings, pre-norm blocks with layer-scale (init 0.1), qkv bias, GELU MLP (ratio 4),
LayerNorm eps 1e-6 and **no final norm**. timm already ships the full size as
``vit_intern300m_patch14_448``; we register tiny variants with the same layout for tests and the
embedded default run.

Foreign checkpoints go through one converter, ``vitp_geo.models.convert`` (imported here), that
dispatches on the keys it sees (InternVL ``vision_model.*``, released ViTP backbones without the
prefix, mmdet/mmseg ``backbone.*``, or keys that are already timm's).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import timm
import torch
from timm.models import register_model
from timm.models._builder import build_model_with_cfg
from timm.models._registry import generate_default_cfgs
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from vitp_geo.constants import IMAGENET_MEAN, IMAGENET_STD
from vitp_geo.io.atomic import atomic_output
from vitp_geo.models.convert import (  # one home for weight conversion (models/convert.py)
    check_finite_weights,
    convert_internvit_state_dict,
    load_state_dict_strict,
    non_finite_keys,
    read_state_dict,
    resize_pos_embed,
)

logger = logging.getLogger(__name__)

__all__ = [
    "INTERN_LAYOUT_ARCH",
    "build_vision_tower",
    "check_finite_weights",
    "checkpoint_filter_fn",
    "create_vit",
    "convert_internvit_state_dict",
    "describe_vit",
    "export_backbone",
    "load_backbone",
    "non_finite_keys",
    "read_state_dict",
    "resize_pos_embed",
    "vitp_tiny_patch14_112",
    "vitp_tiny_patch14_224",
]

# The timm-native architecture every exported backbone names in ``backbone.json``: tiny variants
# are the same class with smaller ``model_kwargs``, so plain timm can rebuild them.
INTERN_LAYOUT_ARCH = "vit_intern300m_patch14_448"

# Architecture arguments shared by every InternViT-layout model (timm's intern300m entry).
_INTERN_LAYOUT_ARGS: dict[str, Any] = dict(
    patch_size=14,
    init_values=0.1,  # layer-scale init of InternViT
    final_norm=False,  # InternViT has no norm after the last block
    dynamic_img_size=True,  # tiles of any multiple of 14 px
    qkv_bias=True,
    class_token=True,
)

# --------------------------------------------------------------------------------------------------
# model


def _create_vitp(variant: str, pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Build a ViTP VisionTransformer through timm's builder (no pretrained download exists)."""
    if pretrained:
        raise ValueError(
            f"{variant} has no downloadable weights; load a local file with "
            "vitp_geo.models.vit.load_backbone(path)"
        )
    return build_model_with_cfg(
        VisionTransformer,
        variant,
        pretrained=False,
        pretrained_filter_fn=checkpoint_filter_fn,
        **kwargs,
    )


# --------------------------------------------------------------------------------------------------
# checkpoint conversion


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: VisionTransformer) -> dict[str, Tensor]:
    """timm hook: convert an InternViT / ViTP checkpoint and fit its pos-embed to ``model``."""
    out = convert_internvit_state_dict(state_dict)
    if "pos_embed" in out and out["pos_embed"].shape != _pos_shape(model):
        out["pos_embed"] = resize_pos_embed(out["pos_embed"], _grid(model), model.num_prefix_tokens)
    return out


def _grid(vit: VisionTransformer) -> tuple[int, int]:
    grid = cast(Any, vit.patch_embed).grid_size
    return int(grid[0]), int(grid[1])


def _pos_shape(vit: VisionTransformer) -> tuple[int, ...]:
    return tuple(vit.pos_embed.shape) if vit.pos_embed is not None else ()


def create_vit(arch: str, **kwargs: Any) -> VisionTransformer:
    model = timm.create_model(arch, pretrained=False, **kwargs)
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"{arch} is not a timm VisionTransformer")
    return model


# --------------------------------------------------------------------------------------------------
# default cfgs


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, 448, 448),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_MEAN,  # InternVL normalises with ImageNet statistics
        "std": IMAGENET_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "vitp_tiny_patch14_112.untrained": _cfg(input_size=(3, 112, 112)),
        "vitp_tiny_patch14_224.untrained": _cfg(input_size=(3, 224, 224)),
    }
)


# --------------------------------------------------------------------------------------------------
# registered models

_TINY = dict(embed_dim=192, depth=4, num_heads=3)


@register_model
def vitp_tiny_patch14_112(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Tiny InternViT-layout ViT (dim 192, depth 4, 3 heads) at 112 px: tests, embedded default."""
    args = dict(_INTERN_LAYOUT_ARGS, img_size=112, **_TINY)
    return _create_vitp("vitp_tiny_patch14_112", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def vitp_tiny_patch14_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Tiny InternViT-layout ViT (dim 192, depth 4, 3 heads) at 224 px."""
    args = dict(_INTERN_LAYOUT_ARGS, img_size=224, **_TINY)
    return _create_vitp("vitp_tiny_patch14_224", pretrained=pretrained, **dict(args, **kwargs))


# --------------------------------------------------------------------------------------------------
# building, loading and exporting


def build_vision_tower(
    arch: str, img_size: int | None = None, drop_path_rate: float = 0.1
) -> VisionTransformer:
    """Create an untrained InternViT-layout backbone for ViTP pretraining.

    Args:
        arch: a registered timm name, e.g. ``vitp_tiny_patch14_112`` or ``vit_intern300m_patch14_448``.
        img_size: tile size in pixels (a multiple of 14); ``None`` keeps the arch default.
        drop_path_rate: stochastic depth; 0.1 as in the ViTP paper.

    Returns:
        A timm ``VisionTransformer`` with ``num_classes=0`` (features only).
    """
    if arch not in timm.list_models():
        raise ValueError(f"unknown vision architecture {arch!r}; e.g. vitp_tiny_patch14_112")
    kwargs: dict[str, Any] = {"num_classes": 0, "drop_path_rate": drop_path_rate}
    if img_size is not None:
        _check_img_size(img_size, 14)
        kwargs["img_size"] = img_size
    return create_vit(arch, **kwargs)


def _check_img_size(img_size: int, patch_size: int) -> None:
    if img_size <= 0 or img_size % patch_size:
        raise ValueError(
            f"img_size must be a positive multiple of the patch size {patch_size}, got {img_size}"
        )


def _infer_kwargs(sd: dict[str, Tensor]) -> dict[str, Any]:
    """Architecture arguments implied by a timm-layout InternViT state dict."""
    embed_dim = int(sd["cls_token"].shape[-1])
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    patch = int(sd["patch_embed.proj.weight"].shape[-1])
    grid = math.isqrt(int(sd["pos_embed"].shape[1]) - 1)
    mlp_ratio = sd["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    # InternViT heads are 64 wide at every released size (300M: 1024/16); tiny variants use 3×64.
    # The weights do not say the head count: this is a guess, so it is said.
    num_heads = max(1, embed_dim // 64)
    warnings.warn(
        f"no backbone.json beside the weights: guessed num_heads={num_heads} from embed_dim={embed_dim} "
        "(64-wide heads, as every released InternViT); pass arch= or keep backbone.json to be exact",
        stacklevel=3,
    )
    return dict(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        patch_size=patch,
        img_size=grid * patch,
        mlp_ratio=mlp_ratio,
    )


def load_backbone(
    path: str | Path, *, arch: str | None = None, img_size: int | None = None
) -> VisionTransformer:
    """Load an InternViT-layout backbone from a local file into a timm ``VisionTransformer``.

    Reads ``.safetensors`` or ``.pth`` / ``.bin``; when a ``backbone.json`` lies beside the file
    (written by :func:`export_backbone`) and ``arch`` is not given, its ``arch`` and
    ``model_kwargs`` define the model; otherwise ``arch`` (with its registered defaults) or, with
    neither, the shapes in the checkpoint do. Keys are converted with
    :func:`convert_internvit_state_dict` and position embeddings are resized bicubically when
    ``img_size`` differs from the checkpoint's.

    Args:
        path: the weights file.
        arch: registered timm name to build with its own defaults (``backbone.json`` and its
            ``model_kwargs`` are then not read).
        img_size: tile size to build for; ``None`` keeps the checkpoint's.

    Returns:
        The backbone in eval mode with ``num_classes=0``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown / missing keys, shape mismatches or non-finite (NaN / inf) weights,
            naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint not found: {path}")
    raw = read_state_dict(path)  # its errors name the file already
    try:
        sd = convert_internvit_state_dict(raw)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        if key not in sd:
            raise ValueError(f"{path}: missing key {key!r}")
    check_finite_weights(sd, path)

    kwargs: dict[str, Any] = {}
    meta_path = path.with_name("backbone.json")
    if arch is None and meta_path.is_file():
        if path.name != "backbone.safetensors":
            warnings.warn(
                f"{path}: using the architecture in {meta_path}, which lies in the same folder "
                "(written by export_backbone for backbone.safetensors); pass arch= if it does not belong to this file",
                stacklevel=2,
            )
        meta = json.loads(meta_path.read_text())
        arch = meta.get("arch")
        kwargs.update(meta.get("model_kwargs", {}))
    elif arch is None:
        arch = INTERN_LAYOUT_ARCH
        kwargs.update(_infer_kwargs(sd))
    patch = int(sd["patch_embed.proj.weight"].shape[-1])
    if img_size is not None:
        _check_img_size(img_size, patch)
        kwargs["img_size"] = img_size
    kwargs["num_classes"] = 0
    if arch is None or arch not in timm.list_models():
        raise ValueError(f"{path}: unknown architecture {arch!r}")
    model = create_vit(arch, **kwargs)
    sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], _grid(model), model.num_prefix_tokens)
    load_state_dict_strict(model, sd, f"{path}: checkpoint does not fit {arch} {kwargs}")
    return model.eval()


def describe_vit(vit: VisionTransformer, arch: str | None = None) -> dict[str, Any]:
    """The one description of a ViT: ``{"arch": timm name, "model_kwargs": {...}}``, the schema of
    ``backbone.json`` and of a model card's ``arch["backbone"]``, so that
    ``timm.create_model(d["arch"], pretrained=False, **d["model_kwargs"])`` rebuilds its shapes.

    Args:
        vit: a timm ``VisionTransformer``.
        arch: the timm name to record (default: the one it was created with).

    Returns:
        ``model_kwargs`` holds ``img_size`` (an int when square, else ``[h, w]``), ``patch_size``,
        ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``in_chans`` and ``num_classes=0``
        (and ``class_token=False``, ``global_pool="avg"`` for a ViT without a class token).
    """
    if arch is None:
        arch = (getattr(vit, "pretrained_cfg", None) or {}).get("architecture")
        if not arch:
            raise ValueError("cannot describe a ViT that was not created through timm.create_model")
    block0 = cast(Any, vit.blocks[0])
    patch = int(cast(Any, vit.patch_embed).patch_size[0])
    rows, cols = _grid(vit)
    embed_dim = int(vit.embed_dim)
    kwargs: dict[str, Any] = {
        "img_size": rows * patch if rows == cols else [rows * patch, cols * patch],
        "patch_size": patch,
        "embed_dim": embed_dim,
        "depth": len(vit.blocks),
        "num_heads": int(block0.attn.num_heads),
        "mlp_ratio": block0.mlp.fc1.out_features / embed_dim,
        "in_chans": int(cast(Any, vit.patch_embed).proj.in_channels),
        "num_classes": 0,
    }
    if vit.cls_token is None:  # e.g. converted reference detectors: their adapter ViT has no class token
        kwargs.update(class_token=False, global_pool="avg")
    return {"arch": str(arch), "model_kwargs": kwargs}


def export_backbone(
    vit: VisionTransformer, out_dir: str | Path, state: Mapping[str, torch.Tensor] | None = None
) -> tuple[Path, Path]:
    """Write ``backbone.safetensors`` (plain timm state dict) and ``backbone.json``.

    ``backbone.json`` names the timm-native architecture (``vit_intern300m_patch14_448``) and the
    ``model_kwargs`` that rebuild exactly this model, so that::

        meta = json.load(open("backbone.json"))
        m = timm.create_model(meta["arch"], pretrained=False, **meta["model_kwargs"])
        m.load_state_dict(safetensors.torch.load_file("backbone.safetensors"))

    works without vitp-geo installed.

    Args:
        vit: an InternViT-layout timm ``VisionTransformer`` (class token, layer-scale, no final
            norm, no classifier head).
        out_dir: output folder (created); both files are written atomically.
        state: the ViT's full weights when ``vit`` holds only a shard of them (FSDP: see
            ``vitp_geo.pretrain.export.gather_vision_state``); default ``vit.state_dict()``.

    Returns:
        (path of backbone.safetensors, path of backbone.json).

    Raises:
        ValueError: not the InternViT layout, or weights whose shapes do not fit the model
            (e.g. the flat shards FSDP leaves in each rank's module).
    """
    from safetensors.torch import save_file

    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"export_backbone expects a timm VisionTransformer, got {type(vit).__name__}")
    if vit.cls_token is None or not hasattr(vit.blocks[0].ls1, "gamma"):
        raise ValueError("export_backbone expects the InternViT layout (class token and layer-scale)")
    if not isinstance(vit.norm, torch.nn.Identity) or not isinstance(vit.head, torch.nn.Identity):
        raise ValueError("export_backbone expects no final norm and no classifier head (num_classes=0)")
    described = describe_vit(vit, INTERN_LAYOUT_ARCH)  # timm-native: plain timm rebuilds it
    model_kwargs = described["model_kwargs"]
    patch = int(model_kwargs["patch_size"])
    img_size = _grid(vit)[0] * patch
    embed_dim = int(model_kwargs["embed_dim"])
    depth = int(model_kwargs["depth"])
    meta = {
        "arch": described["arch"],
        "model_kwargs": model_kwargs,
        "img_size": img_size,
        "patch_size": patch,
        "embed_dim": embed_dim,
        "depth": depth,
        "format": "timm VisionTransformer state dict (InternViT-300M layout)",
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights, meta_path = out / "backbone.safetensors", out / "backbone.json"
    weights_in = vit.state_dict() if state is None else state
    expected = {
        "cls_token": (1, 1, embed_dim),
        "patch_embed.proj.weight": (
            embed_dim,
            int(cast(Any, vit.patch_embed).proj.in_channels),
            patch,
            patch,
        ),
    }
    for key, shape in expected.items():
        got = tuple(weights_in[key].shape) if key in weights_in else None
        if got != shape:
            raise ValueError(
                f"export_backbone: {key} has shape {got}, the model needs {shape}: these are not the "
                "ViT's full weights (under FSDP, export the gathered full state dict)"
            )
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights_in.items()}
    with atomic_output(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"arch": INTERN_LAYOUT_ARCH})
    with atomic_output(meta_path) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=2) + "\n")
    return weights, meta_path
