"""Weight conversion: every foreign checkpoint layout becomes a timm ``VisionTransformer`` state dict here.

- :func:`convert_internvit_state_dict` dispatches on the keys it sees: InternVL
  ``vision_model.*`` (``mlp1.*`` / ``language_model.*`` skipped), released ViTP backbones
  (the same keys without the prefix), mmseg / mmdet ``backbone.*`` (heads, neck and ViT-Adapter
  modules dropped with a logged count), or keys that are already timm's;
- :func:`resize_pos_embed` fits position embeddings to another tile size (InternViT's bicubic rule);
- :func:`internvl_vision_kwargs` turns an InternVL ``vision_config`` into timm model arguments;
- :func:`read_state_dict` reads ``.safetensors`` / ``.pth`` / ``.bin`` / ``.ckpt`` files and
  :func:`check_finite_weights` refuses NaN / inf weights, naming the file.

Whole fine-tuned reference models (mmrotate / mmseg / open-cd detectors, segmenters and change
models, adapter and heads included) are converted by ``vitp_geo.convert`` (``vitp-geo convert``).

Key renames (InternViT → timm): ``embeddings.patch_embedding`` → ``patch_embed.proj``,
``embeddings.class_embedding`` → ``cls_token``, ``embeddings.position_embedding`` → ``pos_embed``,
``encoder.layers.N.*`` → ``blocks.N.*`` with ``ls1`` / ``ls2`` → ``ls1.gamma`` / ``ls2.gamma``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vitp_geo.io.torch_files import load_error

logger = logging.getLogger(__name__)

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
        logger.warning(
            "mmseg/mmdet checkpoint: dropped %d ViT-Adapter keys (spm, interactions, ...)", len(adapter)
        )
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


def internvl_vision_kwargs(vision_config: dict[str, Any], img_size: int) -> dict[str, Any]:
    """timm ``model_kwargs`` (for ``vit_intern300m_patch14_448``) from InternVL's ``vision_config``."""
    if vision_config.get("norm_type", "layer_norm") != "layer_norm" or vision_config.get(
        "qk_normalization", False
    ):
        raise ValueError(
            "only InternViT-300M-style vision towers (layer_norm, no qk_normalization) are supported, got "
            f"norm_type={vision_config.get('norm_type')!r}, qk_normalization={vision_config.get('qk_normalization')}"
        )
    try:
        hidden = int(vision_config["hidden_size"])
        return dict(
            img_size=img_size,
            patch_size=int(vision_config["patch_size"]),
            embed_dim=hidden,
            depth=int(vision_config["num_hidden_layers"]),
            num_heads=int(vision_config["num_attention_heads"]),
            mlp_ratio=int(vision_config["intermediate_size"]) / hidden,
            qkv_bias=bool(vision_config.get("qkv_bias", True)),
            num_classes=0,
        )
    except KeyError as err:
        raise ValueError(f"vision_config lacks {err.args[0]!r}") from err


def read_weights_file(path: Path, load: Callable[[str], Any]) -> Any:
    """Call a weights loader, turning a damaged or foreign file into an error that names it."""
    try:
        return load(str(path))
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as err:  # safetensors, pickle and zip errors have no common base class
        raise ValueError(f"{path}: {load_error(err, 'a readable weights file')}") from err


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


def load_state_dict_strict(
    module: torch.nn.Module,
    state_dict: Mapping[str, Tensor],
    source: str,
    *,
    prefix: str = "",
    allow_missing: set[str] | None = None,
) -> None:
    """Load ``state_dict`` into ``module`` only if every key and shape fits; else name what does not.

    The one strict loader of a checkpoint's weights (``models.vit.load_backbone``,
    ``vlm.build.load_internvl``): torch's ``strict=True`` stops at the first class of problem and
    does not say which file; this names the source and up to ten missing / unexpected keys (with
    ``prefix``, as the file spells them) or five shape mismatches.

    Args:
        module: the model the weights are for.
        state_dict: its keys without ``prefix``.
        source: what the message names first (the file or folder, and what the weights must fit).
        prefix: the keys' prefix in the file (e.g. ``"vision_model."``), for messages only.
        allow_missing: module keys the file may lack (a tied ``lm_head.weight``).

    Raises:
        ValueError: ``"<source>: missing keys [...], unexpected keys [...]"`` or ``"<source>: shape mismatch [...]"``.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict) - (allow_missing or set()))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{source}: missing keys {[prefix + k for k in missing[:10]]}{' …' if len(missing) > 10 else ''}, "
            f"unexpected keys {[prefix + k for k in unexpected[:10]]}{' …' if len(unexpected) > 10 else ''}"
        )
    bad = [
        f"{prefix}{k}: {tuple(v.shape)} vs expected {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if v.shape != own[k].shape
    ]
    if bad:
        raise ValueError(f"{source}: shape mismatch {bad[:5]}")
    module.load_state_dict(dict(state_dict), strict=not allow_missing)
