"""Factories for the ViTP VLM: a tiny one built in code, and InternVL2.5 release directories.

``build_tiny_vlm`` is the embedded default and the test model (tiny ViT + tiny Qwen2 built from a
config in code, no files). ``load_internvl`` reads an InternVL2.5 directory in its original
release format (``config.json`` + safetensors with ``vision_model.*``, ``mlp1.*``,
``language_model.*`` keys + the Qwen2 tokenizer files) from a local path; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import CONFIG_MAPPING, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

import vitp_geo.models  # noqa: F401  (registers the vitp_* timm models)
from vitp_geo.models.convert import (
    convert_internvit_state_dict,
    internvl_vision_kwargs,
    load_state_dict_strict,
    read_weights_file,
    resize_pos_embed,
)
from vitp_geo.models.vit import INTERN_LAYOUT_ARCH, build_vision_tower, create_vit
from vitp_geo.vlm.model import ViTPConfig, ViTPModel, pick_attn_implementation
from vitp_geo.vlm.projector import build_projector
from vitp_geo.vlm.tokenizer import IMG_CONTEXT_TOKEN, load_tokenizer

__all__ = ["build_llm", "build_tiny_vlm", "load_internvl", "qwen2_0_5b_config"]

# LLM config keys that describe how the original was run, not what it is.
_RUNTIME_KEYS = {
    "attn_implementation",
    "_attn_implementation",
    "use_flash_attn",
    "_name_or_path",
    "torch_dtype",
}


def _img_context_id(tokenizer: PreTrainedTokenizerBase) -> int:
    tid = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    if not isinstance(tid, int) or tid == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no {IMG_CONTEXT_TOKEN} token")
    return int(tid)


def build_llm(
    llm_config: dict[str, Any], attn_implementation: str | None = None, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """A randomly initialised causal LM from an (InternVL ``llm_config``-style) dict.

    Args:
        llm_config: must name ``model_type`` (e.g. ``qwen2``, ``llama``) and the sizes.
        attn_implementation: ``sdpa`` / ``eager`` / ``flash_attention_2``; ``None`` picks SDPA,
            or flash-attn when installed and CUDA is available.
        dtype: parameter dtype (float32 by default; Lightning handles mixed precision).
    """
    cfg = {k: v for k, v in llm_config.items() if k not in _RUNTIME_KEYS}
    model_type = cfg.pop("model_type", None)
    if model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"llm_config model_type {model_type!r} is not a transformers causal LM we can build without remote code"
        )
    config = CONFIG_MAPPING[model_type](**cfg)
    return AutoModelForCausalLM.from_config(
        config, attn_implementation=attn_implementation or pick_attn_implementation(), dtype=dtype
    )


def qwen2_0_5b_config(vocab_size: int = 151674) -> dict[str, Any]:
    """The Qwen2.5-0.5B-Instruct LLM of InternVL2.5-1B (vocab incl. InternVL's added tokens)."""
    return dict(
        model_type="qwen2",
        vocab_size=vocab_size,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
    )


def build_tiny_vlm(
    tokenizer: PreTrainedTokenizerBase,
    *,
    vision_arch: str = "vitp_tiny_patch14_112",
    img_size: int | None = None,
    llm_hidden: int = 128,
    llm_layers: int = 2,
    llm_heads: int = 4,
    llm_kv_heads: int = 2,
    llm_intermediate: int = 256,
    downsample_ratio: float = 0.5,
    drop_path_rate: float = 0.1,
    vrl_ratio: float = 0.75,
    vrl_prob: float = 1.0,
    vrl_reference_mode: bool = False,
    attn_implementation: str | None = None,
    seed: int | None = 0,
) -> ViTPModel:
    """A small ViTP model built in code: a tiny InternViT-layout ViT and a tiny Qwen2.

    Args:
        tokenizer: gives the vocabulary size and the ``<IMG_CONTEXT>`` id.
        vision_arch: registered timm name of the vision tower.
        img_size: tile size (defaults to the arch's).
        llm_hidden, llm_layers, llm_heads, llm_kv_heads, llm_intermediate: Qwen2 sizes.
        downsample_ratio: pixel-shuffle factor.
        drop_path_rate: ViT stochastic depth (0.1 as in the paper).
        vrl_ratio, vrl_prob, vrl_reference_mode: VRL settings (see :mod:`vitp_geo.vlm.vrl`);
            ``vrl_prob`` 1.0 is the paper text and ``ViTPConfig``'s default, while ``vitp-geo
            pretrain`` (``PretrainConfig.vrl_prob``) uses 0.25 (docs/pretraining-evidence.md §6).
        attn_implementation: LLM attention (``None``: SDPA, flash-attn on CUDA when installed).
        seed: seeds the weight initialisation (``None`` leaves the global RNG alone).
    """
    if llm_hidden % llm_heads or llm_heads % llm_kv_heads:
        raise ValueError(
            f"llm_hidden ({llm_hidden}) must be a multiple of llm_heads ({llm_heads}), "
            f"and llm_heads a multiple of llm_kv_heads ({llm_kv_heads})"
        )
    if seed is not None:
        torch.manual_seed(seed)
    vit = build_vision_tower(vision_arch, img_size=img_size, drop_path_rate=drop_path_rate)
    patch = int(vit.patch_embed.patch_size[0])
    size = int(vit.patch_embed.grid_size[0] * patch)
    llm = build_llm(
        dict(
            model_type="qwen2",
            vocab_size=len(tokenizer),
            hidden_size=llm_hidden,
            intermediate_size=llm_intermediate,
            num_hidden_layers=llm_layers,
            num_attention_heads=llm_heads,
            num_key_value_heads=llm_kv_heads,
            max_position_embeddings=8192,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
        ),
        attn_implementation=attn_implementation,
    )
    config = ViTPConfig(
        img_size=size,
        patch_size=patch,
        downsample_ratio=downsample_ratio,
        vrl_ratio=vrl_ratio,
        vrl_prob=vrl_prob,
        vrl_reference_mode=vrl_reference_mode,
    )
    mlp1 = build_projector(vit.embed_dim, llm_hidden, downsample_ratio)
    return ViTPModel(config, vit, mlp1, llm, _img_context_id(tokenizer))


# --------------------------------------------------------------------------------------------------
# InternVL release directories


def _read_weights(model_dir: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    index = model_dir / "model.safetensors.index.json"
    single = model_dir / "model.safetensors"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (model_dir / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that are missing: {missing}")
        sd: dict[str, Tensor] = {}
        for shard in shards:
            sd.update(read_weights_file(model_dir / shard, load_file))
        return sd
    if single.is_file():
        return read_weights_file(single, load_file)
    raise FileNotFoundError(
        f"no weights in {model_dir}: expected model.safetensors or model.safetensors.index.json"
    )


def _split(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def load_internvl(
    model_path: str | Path,
    *,
    vrl_ratio: float = 0.75,
    vrl_prob: float = 1.0,
    vrl_reference_mode: bool = False,
    drop_path_rate: float = 0.1,
    attn_implementation: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[ViTPModel, PreTrainedTokenizerBase]:
    """Load an InternVL2.5 directory (original release format) into a :class:`ViTPModel`.

    Args:
        model_path: local folder with ``config.json`` (``vision_config``, ``llm_config``,
            ``downsample_ratio``, ``template``, ``ps_version``, ``force_image_size``,
            ``select_layer``), ``model.safetensors`` or a sharded ``model.safetensors.index.json``,
            and the tokenizer files.
        vrl_ratio, vrl_prob, vrl_reference_mode: VRL settings for pretraining (``vrl_prob`` 1.0
            here as in ``ViTPConfig``; ``vitp-geo pretrain`` uses 0.25, see ``PretrainConfig``).
        drop_path_rate: ViT stochastic depth during pretraining (0.1 as in the paper).
        attn_implementation: LLM attention; ``None`` picks SDPA (flash-attn on CUDA if installed).
        dtype: parameter dtype.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        FileNotFoundError: the folder, ``config.json``, weights or tokenizer files are missing.
        ValueError: config fields or weight keys are missing / unexpected (named).
    """
    model_dir = Path(model_path)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"InternVL model directory not found: {model_dir}")
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"missing {cfg_path} (an InternVL2.5 release directory has config.json)")
    cfg = json.loads(cfg_path.read_text())
    missing_fields = [k for k in ("vision_config", "llm_config", "downsample_ratio") if k not in cfg]
    if missing_fields:
        raise ValueError(f"{cfg_path} lacks fields {missing_fields}")
    vcfg, lcfg = cfg["vision_config"], cfg["llm_config"]
    img_size = int(cfg.get("force_image_size") or vcfg["image_size"])
    ckpt_img = int(vcfg.get("image_size", img_size))

    tokenizer = load_tokenizer(model_dir)
    vit = create_vit(
        INTERN_LAYOUT_ARCH,
        drop_path_rate=drop_path_rate,
        **internvl_vision_kwargs(vcfg, img_size),
    )
    llm = build_llm(lcfg, attn_implementation=attn_implementation, dtype=dtype)
    config = ViTPConfig(
        img_size=img_size,
        patch_size=int(vcfg["patch_size"]),
        downsample_ratio=float(cfg["downsample_ratio"]),
        ps_version=str(cfg.get("ps_version", "v1")),
        select_layer=int(cfg.get("select_layer", -1)),
        template=str(cfg.get("template", "internvl2_5")),
        vrl_ratio=vrl_ratio,
        vrl_prob=vrl_prob,
        vrl_reference_mode=vrl_reference_mode,
    )
    mlp1 = build_projector(int(vit.embed_dim), int(llm.config.hidden_size), config.downsample_ratio)
    model = ViTPModel(config, vit, mlp1, llm, _img_context_id(tokenizer))

    sd = _read_weights(model_dir)
    others = sorted(k for k in sd if not k.startswith(("vision_model.", "mlp1.", "language_model.")))
    if others:
        raise ValueError(f"{model_dir}: unexpected weight keys {others[:10]}")
    vision_sd = {k: v for k, v in sd.items() if k.startswith("vision_model.")}
    if not vision_sd:
        raise ValueError(f"{model_dir}: no vision_model.* weights")
    try:
        vision_sd = convert_internvit_state_dict(vision_sd)
    except ValueError as err:
        raise ValueError(f"{model_dir}: {err}") from err
    if ckpt_img != img_size:
        grid = img_size // config.patch_size
        vision_sd["pos_embed"] = resize_pos_embed(vision_sd["pos_embed"], grid)
    fits = f"{model_dir}: weights do not match config.json"
    load_state_dict_strict(vit, vision_sd, fits, prefix="vision_model.")
    load_state_dict_strict(mlp1, _split(sd, "mlp1."), fits, prefix="mlp1.")
    lm_sd = _split(sd, "language_model.")
    tied = bool(getattr(llm.config, "tie_word_embeddings", False))
    if tied:
        lm_sd.pop("lm_head.weight", None)
    load_state_dict_strict(
        llm, lm_sd, fits, prefix="language_model.", allow_missing={"lm_head.weight"} if tied else set()
    )
    if tied:
        llm.tie_weights()
    return model.to(dtype), tokenizer
