"""``vitp-geo pretrain``: flags → ``PretrainConfig`` → ``run_pretrain``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

from vitp_geo.pretrain.config import DOMAINS, PretrainConfig

_HELP: dict[str, str] = {
    "model_path": "local InternVL2.5-1B directory (original release format); default: a tiny model built in code",
    "data": "instruction recipe (InternVL meta-JSON or YAML); default: the embedded synthetic corpus",
    "output": "run folder (default runs/pretrain-<domain>-<timestamp>)",
    "resume": "continue from a checkpoint: a .ckpt path, or 'last' for <output>/checkpoints/last.ckpt; "
    "corpus, seed, batch size, accumulation, devices and alignment phase must be the interrupted run's",
    "overwrite": "replace an earlier run in --output (without it, and without --resume, such a folder is refused)",
    "lr": "peak learning rate",
    "max_steps": "optimizer steps",
    "batch_size": "samples per batch on each device",
    "accumulate": "gradient accumulation steps",
    "warmup_ratio": "share of steps in linear warm-up before cosine decay",
    "weight_decay": "AdamW weight decay (matrices only)",
    "grad_clip": "gradient norm clipping",
    "loss_reduction": "how answer tokens are averaged: token (InternVL default), sample (each answer weighs the same) or square (1/sqrt(n) per token, InternVL2.5)",
    "max_nonfinite": "stop after this many non-finite losses in a row",
    "vision_arch": "timm ViT for the tiny default",
    "llm_layers": "decoder layers of the tiny default's Qwen2-shaped LLM",
    "drop_path": "stochastic depth rate in the ViT",
    "max_dynamic_patch": "max tiles per sample (InternVL dynamic tiling)",
    "max_length": "max tokens per sample",
    "num_workers": "DataLoader worker processes",
    "data_cache_mb": "MiB of decoded tiles and token ids kept in memory per data process, so a record drawn again is not decoded again (0 = off)",
    "align_steps": "alignment phase: the first N steps draw only --align-tasks records (0 = off)",
    "align_tasks": "comma-separated tasks of the alignment phase",
    "align_ramp_steps": "steps after the alignment phase over which the --align-tasks share falls linearly to its recipe share (0 = hard switch)",
    "question_first": "embedded rs corpus only: share of records whose images follow the question (image tokens can then attend to the class asked about); 0 = images first",
    "world_scenes": "embedded rs corpus only: scenes of the generated world (default 48); more is a GPU setting (the ViT alone needs about 2,400 to learn to count, benchmarks/counting_data.py)",
    "vrl_ratio": "VRL: share of projected image tokens dropped before the LLM",
    "vrl_prob": "VRL: probability that the drop fires for a sample",
    "vrl_reference": "VRL: reproduce the reference implementation (fires with probability 1 - ratio)",
    "vision_init": "where the tiny model's ViT starts: auto (the synthetic base for the embedded rs corpus, random init otherwise), synthetic (a ViT trained on a general synthetic world's per-patch classes and building counts, never on the corpus's labels; built once per machine, about 2 min, cached in $VITP_GEO_CACHE or ~/.cache/vitp-geo), random, or a backbone .safetensors file",
    "base_scenes": "scenes of the synthetic base's world",
    "base_steps": "training steps (32 tiles each) of the synthetic base",
    "vision_frozen_steps": "keep the ViT fixed for the first N steps while the LLM learns to read it (default: the alignment phase when the ViT starts from a base, 0 from random init)",
    "vision_lr_scale": "the ViT's learning rate as a share of --lr (default: 0.1 when it starts from a base, 1 from random init or --model-path)",
    "vision_warmup_steps": "after the fixed steps, the ViT's lr rises from 0 over N steps (default: 100 when it was fixed, else 0)",
    "freeze_vision": "keep the ViT fixed",
    "freeze_projector": "keep the projector fixed",
    "freeze_llm": "keep the LLM fixed",
    "grad_checkpointing": "gradient checkpointing in ViT and LLM",
    "devices": "devices per node",
    "strategy": "Lightning strategy: auto, ddp, fsdp, deepspeed",
    "precision": "auto (bf16-mixed on CUDA and on a CPU with AVX512-BF16 or AMX, else 32-true), 32-true, bf16-mixed, 16-mixed",
    "accelerator": "auto, cpu, gpu",
    "seed": "random seed (data order, init, VRL)",
    "skip_bad_samples": "skip and count records that do not parse or miss images, instead of failing",
    "checkpoint_every": "steps between checkpoints",
    "reliance_records": "held-out records for the image-reliance check (true vs shuffled vs blank images); 0 = off",
    "reliance_every": "steps between image-reliance checks (always also at the last step; 0 = last only)",
    "reliance_shuffles": "derangements (other tiles' images) the closed-task accuracy with shuffled images is averaged over",
    "reliance_data": "recipe of records never trained on (e.g. a validation split) to run the image-reliance check on, all of it at the last step, instead of holding records out of --data",
    "unseen_world": "embedded corpora: run the image-reliance check on a fresh synthetic world (another seed, never trained on; all of it at the last step) instead of on records held out of training",
}


def add_parser(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "pretrain",
        help="ViTP pretraining of a ViT inside a VLM (VRL on)",
        description=(
            "ViTP pretraining. With no --model-path and no --data it runs the embedded default: a tiny "
            "ViT + tiny Qwen2-shaped LLM on a generated remote-sensing instruction corpus (about 5 minutes "
            "on a CPU). Full scale: vitp-geo pretrain --domain rs --model-path /models/InternVL2_5-1B "
            "--data recipe.json --devices 8 --strategy ddp --precision bf16-mixed"
        ),
    )
    p.add_argument(
        "--domain",
        choices=DOMAINS,
        default="rs",
        help="domain preset (configs/pretrain/<domain>.yaml; default: rs)",
    )
    p.add_argument("--config", default=None, help="YAML file of settings (field names as below, with _)")
    p.add_argument(
        "--preset",
        choices=("auto", "paper", "tiny"),
        default="auto",
        help=(
            "auto: the paper settings of configs/pretrain/<domain>.yaml with --model-path, the tiny "
            "schedule otherwise (also for a small --data corpus); paper / tiny force either (default: auto)"
        ),
    )
    defaults = PretrainConfig()
    hints = get_type_hints(PretrainConfig)
    for f in fields(PretrainConfig):
        if f.name == "domain":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            p.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{_HELP.get(f.name, '')} (default: {default})",
            )
        else:
            # a None default parses as its annotation says (``int | None``: int), else as str
            optional = [t for t in get_args(hints[f.name]) if t is not type(None)]
            kind = type(default) if default is not None else (optional[0] if optional else str)
            shown = "" if default is None else f" (default: {default})"
            p.add_argument(flag, type=kind, default=None, help=f"{_HELP.get(f.name, '')}{shown}")


def run(args: argparse.Namespace) -> int:
    from vitp_geo.pretrain.config import describe_settings, resolve_config

    # named with the flag ("config not found" for a folder; numpy's bounds message for the seed)
    if args.config is not None and Path(args.config).is_dir():
        raise ValueError(f"--config {args.config} is a folder; give a YAML file of settings")
    if args.seed is not None and not 0 <= args.seed <= 2**32 - 1:
        raise ValueError(f"--seed must be an integer in [0, {2**32 - 1}], got {args.seed}")
    overrides = {
        f.name: getattr(args, f.name)
        for f in fields(PretrainConfig)
        if f.name != "domain" and getattr(args, f.name, None) is not None
    }
    sources: dict[str, str] = {}
    cfg = resolve_config(args.domain, args.config, overrides, preset=args.preset, sources=sources)
    # Bad flags are one error line at once: checked before torch and Lightning are imported (~10 s).
    cfg.validate()
    from vitp_geo.pretrain.run import check_earlier_run, run_pretrain

    if cfg.output is not None:
        check_earlier_run(cfg, Path(cfg.output))  # an earlier run: refused before anything is printed
    if cfg.embedded:
        print(
            "vitp-geo pretrain: no --model-path or --data given, running the embedded tiny default "
            f"({cfg.max_steps} steps on a generated "
            f"{'medical (CT, MRI, X-ray phantoms)' if cfg.domain == 'med' else 'remote-sensing'} corpus)",
            file=sys.stderr,
        )
    print(f"vitp-geo pretrain: settings\n{describe_settings(cfg, sources)}", file=sys.stderr)
    summary = run_pretrain(cfg)
    if summary.backbone is not None:
        print(summary.format())
    return 0
