"""ViTP vision backbones: timm VisionTransformers in the InternViT-300M layout.

The file follows timm's order: blocks → model → ``checkpoint_filter_fn`` → default cfgs →
``@register_model`` entries, followed by the loading / export helpers the rest of vitp-geo uses.

Layout (InternViT-300M, as in InternVL2.5 and ViTP): patch 14, a class token, learned absolute
position embeddings, pre-norm blocks with layer-scale (init 0.1), qkv bias, GELU MLP (ratio 4),
LayerNorm eps 1e-6 and **no final norm**. timm already ships the full size as
``vit_intern300m_patch14_448``; we register tiny variants with the same layout for tests and the
embedded default run.

Foreign checkpoints go through one converter, :func:`convert_internvit_state_dict`, that
dispatches on the keys it sees (InternVL ``vision_model.*``, released ViTP backbones without the
prefix, mmdet/mmseg ``backbone.*``, or keys that are already timm's).
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import timm
import torch
import torch.nn.functional as F
from timm.models import register_model
from timm.models._builder import build_model_with_cfg
from timm.models._registry import generate_default_cfgs
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from vitp_geo.constants import IMAGENET_MEAN, IMAGENET_STD
from vitp_geo.io.atomic import atomic_output

logger = logging.getLogger(__name__)

__all__ = [
    "INTERN_LAYOUT_ARCH",
    "build_vision_tower",
    "check_finite_weights",
    "checkpoint_filter_fn",
    "create_vit",
    "convert_internvit_state_dict",
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

_BLOCK_SUFFIXES = {
    "attn.qkv.weight": "attn.qkv.weight",
    "attn.qkv.bias": "attn.qkv.bias",
    "attn.proj.weight": "attn.proj.weight",
    "attn.proj.bias": "attn.proj.bias",
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "ls1": "ls1.gamma",
    "ls2": "ls2.gamma",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_EMBED_KEYS = {
    "embeddings.class_embedding": "cls_token",
    "embeddings.position_embedding": "pos_embed",
    "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
    "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
}
_LAYER_RE = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
# Parts of a full InternVL checkpoint that are not the vision tower (skipped by the converter).
_NON_VISION_PREFIXES = ("mlp1.", "language_model.")
# Modules a ViT-Adapter (mmseg/mmdet ``backbone.*``) adds around the plain ViT; not part of the backbone.
_ADAPTER_PREFIXES = ("spm.", "interactions.", "level_embed", "up.", "norm1.", "norm2.", "norm3.", "norm4.")


def _strip_mm_prefix(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keep the ``backbone.`` part of an mmseg/mmdet checkpoint, without the prefix.

    The detector's or segmentor's other modules (``decode_head.*``, ``neck.*``, ``roi_head.*``, ...) and
    the ViT-Adapter's own modules (``spm``, ``interactions``, ``level_embed``, ...) are dropped, and
    the counts are logged.
    """
    kept: dict[str, Tensor] = {}
    outside: list[str] = []
    adapter: list[str] = []
    for key, value in sd.items():
        if not key.startswith("backbone."):
            outside.append(key)
            continue
        short = key[len("backbone.") :]
        if short.startswith(_ADAPTER_PREFIXES):
            adapter.append(key)
            continue
        kept[short] = value
    if outside:
        heads = sorted({k.split(".")[0] for k in outside})
        logger.warning(
            "mmseg/mmdet checkpoint: kept the backbone.* keys, dropped %d keys of %s",
            len(outside),
            ", ".join(heads),
        )
    if adapter:
        logger.warning("mmseg/mmdet checkpoint: dropped %d ViT-Adapter keys (spm, interactions, ...)", len(adapter))
    return kept


def _is_timm_layout(keys: set[str]) -> bool:
    return "patch_embed.proj.weight" in keys or any(k.startswith("blocks.") for k in keys)


def convert_internvit_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Convert an InternViT / ViTP / timm state dict to timm ``VisionTransformer`` keys.

    Dispatches on the keys it sees:

    * InternVL layout: ``vision_model.embeddings.*`` and ``vision_model.encoder.layers.N.*``
      (``mlp1.*`` and ``language_model.*`` of a full InternVL checkpoint are skipped);
    * released ViTP backbone layout: the same keys without ``vision_model.`` (an mmdet/mmseg
      ``backbone.`` prefix is also accepted: only ``backbone.*`` is kept, and the ViT-Adapter's own
      modules and every head/neck key are dropped with a logged count);
    * timm layout (``patch_embed.proj.weight``, ``blocks.N.*``): returned unchanged.

    Args:
        sd: the checkpoint's tensors.

    Returns:
        A new dict with timm keys (``cls_token`` (1, 1, C), ``pos_embed`` (1, 1+N, C),
        ``patch_embed.proj.*``, ``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,
        mlp.fc2,ls2.gamma}.*``).

    Raises:
        ValueError: on keys it cannot map or when required keys are missing (both named).
    """
    keys = set(sd)
    if not keys:
        raise ValueError("empty state dict: no tensors to convert")
    shown = ""  # the prefix error messages put back, so they name the keys as the file has them
    if not _is_timm_layout(keys) and not any(k.startswith("vision_model.") for k in keys):
        if any(k.startswith("backbone.") for k in keys):
            sd, shown = _strip_mm_prefix(sd), "backbone."
            keys = set(sd)
    if _is_timm_layout(keys):
        return dict(sd)

    prefix = "vision_model." if any(k.startswith("vision_model.") for k in keys) else ""

    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if prefix and not key.startswith(prefix):
            if key.startswith(_NON_VISION_PREFIXES):
                continue
            unknown.append(shown + key)
            continue
        short = key[len(prefix) :]
        if short in _EMBED_KEYS:
            out[_EMBED_KEYS[short]] = value
            continue
        match = _LAYER_RE.match(short)
        if match and match.group(2) in _BLOCK_SUFFIXES:
            out[f"blocks.{match.group(1)}.{_BLOCK_SUFFIXES[match.group(2)]}"] = value
            continue
        unknown.append(shown + key)
    if unknown:
        shown = ", ".join(sorted(unknown)[:10])
        more = f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""
        raise ValueError(f"unknown keys in InternViT checkpoint: {shown}{more}")

    prefix = shown + prefix
    missing = [f"{prefix}{k}" for k, v in _EMBED_KEYS.items() if v not in out]
    depth = 1 + max((int(k.split(".")[1]) for k in out if k.startswith("blocks.")), default=-1)
    for i in range(depth):
        missing += [
            f"{prefix}encoder.layers.{i}.{src}"
            for src, dst in _BLOCK_SUFFIXES.items()
            if f"blocks.{i}.{dst}" not in out
        ]
    if depth == 0:
        missing.append(f"{prefix}encoder.layers.0.*")
    if missing:
        shown = ", ".join(missing[:10])
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise ValueError(f"missing keys in InternViT checkpoint: {shown}{more}")
    # InternViT stores the class embedding as (1, 1, C) and the layer scales as (C,): same as timm.
    return out


def resize_pos_embed(
    pos_embed: Tensor, new_grid: int | tuple[int, int], num_prefix_tokens: int = 1
) -> Tensor:
    """Resize absolute position embeddings bicubically, keeping prefix (class) tokens.

    Matches InternViT's own runtime interpolation (bicubic, ``align_corners=False``, no
    anti-aliasing), so a resized checkpoint gives the same features as InternViT at that size.

    Args:
        pos_embed: (1, P + H*W, C) with a square H = W grid.
        new_grid: target grid (side or (rows, cols)), e.g. ``img_size // patch_size``.
        num_prefix_tokens: leading tokens copied as-is (1 for the class token).

    Returns:
        (1, P + rows*cols, C) in the input dtype.
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must have shape (1, N, C), got {tuple(pos_embed.shape)}")
    rows, cols = (new_grid, new_grid) if isinstance(new_grid, int) else new_grid
    n_grid = pos_embed.shape[1] - num_prefix_tokens
    old = math.isqrt(n_grid)
    if old * old != n_grid:
        raise ValueError(f"pos_embed grid of {n_grid} tokens is not square")
    if (rows, cols) == (old, old):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    c = grid.shape[-1]
    grid = grid.float().reshape(1, old, old, c).permute(0, 3, 1, 2)  # (1, C, H, W)
    grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, c).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


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


def read_weights_file(path: Path, load: Callable[[str], Any]) -> Any:
    """Call a weights loader, turning a damaged or foreign file into an error that names it."""
    try:
        return load(str(path))
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as err:  # safetensors, pickle and zip errors have no common base class
        raise ValueError(f"{path}: not a readable weights file ({type(err).__name__}: {err})") from err


def _check_img_size(img_size: int, patch_size: int) -> None:
    if img_size <= 0 or img_size % patch_size:
        raise ValueError(
            f"img_size must be a positive multiple of the patch size {patch_size}, got {img_size}"
        )


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` / ``.pth`` / ``.bin`` / ``.ckpt`` weights file, keys as stored
    (``state_dict`` / ``model`` / ``module`` wrappers removed); ``ValueError`` naming the file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return read_weights_file(path, load_file)
    if path.suffix in {".pth", ".pt", ".bin", ".ckpt"}:
        obj = read_weights_file(path, lambda p: torch.load(p, map_location="cpu", weights_only=True))
        for wrapper in ("state_dict", "model", "module"):
            if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
                obj = obj[wrapper]
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
        return {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    raise ValueError(
        f"{path}: unsupported checkpoint format {path.suffix!r} (use .safetensors, .pth or .bin)"
    )


def non_finite_keys(state_dict: Mapping[str, Tensor]) -> list[str]:
    """Names of the floating-point tensors in ``state_dict`` that hold a NaN or an infinity."""
    return [
        k
        for k, v in state_dict.items()
        if isinstance(v, Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def check_finite_weights(state_dict: Mapping[str, Tensor], source: str | Path) -> None:
    """Raise ``ValueError`` naming ``source`` and the first bad keys if any weight is NaN or inf.

    A diverged run (too high a learning rate, a bad loss) leaves such weights; they would turn
    every prediction into NaN and every pixel into class 0 without any error.
    """
    bad = non_finite_keys(state_dict)
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(
            f"{source}: non-finite weights (NaN or inf) in {len(bad)} of {len(state_dict)} tensors: "
            f"{', '.join(bad[:5])}{more}"
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
    (written by :func:`export_backbone`) its ``arch`` and ``model_kwargs`` define the model,
    otherwise ``arch`` (if given) or the shapes in the checkpoint do. Keys are converted with
    :func:`convert_internvit_state_dict` and position embeddings are resized bicubically when
    ``img_size`` differs from the checkpoint's.

    Args:
        path: the weights file.
        arch: registered timm name to build (overrides ``backbone.json``).
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
    try:
        sd = convert_internvit_state_dict(read_state_dict(path))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        if key not in sd:
            raise ValueError(f"{path}: missing key {key!r}")
    check_finite_weights(sd, path)

    kwargs: dict[str, Any] = {}
    meta_path = path.with_name("backbone.json")
    if meta_path.is_file():
        if path.name != "backbone.safetensors":
            warnings.warn(
                f"{path}: using the architecture in {meta_path}, which lies in the same folder "
                "(written by export_backbone for backbone.safetensors); pass arch= if it does not belong to this file",
                stacklevel=2,
            )
        meta = json.loads(meta_path.read_text())
        arch = arch or meta.get("arch")
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
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{path}: checkpoint does not fit {arch} {kwargs}: missing keys {missing[:10]}, "
            f"unexpected keys {unexpected[:10]}"
        )
    bad = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if sd[k].shape != v.shape]
    if bad:
        raise ValueError(f"{path}: shape mismatch for {arch} {kwargs}: {bad[:5]}")
    model.load_state_dict(sd)
    return model.eval()


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
    block0 = cast(Any, vit.blocks[0])
    patch = int(cast(Any, vit.patch_embed).patch_size[0])
    img_size = _grid(vit)[0] * patch
    embed_dim = int(vit.embed_dim)
    depth = len(vit.blocks)
    num_heads = int(block0.attn.num_heads)
    mlp_ratio = block0.mlp.fc1.out_features / embed_dim
    model_kwargs: dict[str, Any] = dict(
        img_size=img_size,
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        num_classes=0,
    )
    meta = {
        "arch": INTERN_LAYOUT_ARCH,
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
