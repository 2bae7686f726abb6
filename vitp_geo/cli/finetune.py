"""``vitp-geo finetune segmentation|change``: fine-tune a ViTP backbone (argument wiring only).

With ``--config`` it runs a LightningCLI YAML (``configs/finetune/<task>/<dataset>.yaml``);
without one it runs an embedded default on generated GeoTIFF scenes (the shared synthetic
world) that finishes in a few minutes on a laptop CPU. The best weights (with the model card,
no optimizer state) are written to ``<output>/model.ckpt``; ``--save-last`` also keeps the full,
resumable state in ``<output>/checkpoints/last.ckpt``; ``<output>/finetune_summary.json``
records the validation scores.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

from vitp_geo.io.model_card import TASK_KINDS
from vitp_geo.io.paths import refuse_existing_outputs

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")  # what the installed stack can run (no TPU / XLA)
SEED_MAX = 2**32 - 1  # what numpy's and Lightning's seeding accept


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune the backbone for segmentation, change detection or object detection",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("task", choices=sorted(TASK_KINDS), help=", ".join(sorted(TASK_KINDS)))
    p.add_argument("--config", type=Path, help="LightningCLI YAML (default: embedded run on generated data)")
    p.add_argument(
        "--domain",
        choices=("rs", "med"),
        default="rs",
        help="embedded run without --config: rs (aerial scenes) or med (CT phantoms, per-case Dice)",
    )
    p.add_argument(
        "--backbone",
        type=Path,
        help="backbone.safetensors from `vitp-geo pretrain` (or a ViTP/InternViT file)",
    )
    p.add_argument(
        "--output", type=Path, default=Path("finetune_out"), help="output folder (default ./finetune_out)"
    )
    p.add_argument("--max-epochs", type=int, help="override trainer.max_epochs")
    p.add_argument("--max-steps", type=int, help="override trainer.max_steps")
    p.add_argument(
        "--batch-size",
        type=int,
        help="override data.init_args.sampling.batch_size (data.init_args.batch_size for torchgeo's own DataModules)",
    )
    p.add_argument("--accelerator", default=None, help="override trainer.accelerator (cpu, gpu, auto)")
    p.add_argument(
        "--seed", type=int, default=None, help="override seed_everything (default: the config's, else 0)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--save-last",
        action="store_true",
        help="also keep checkpoints/last.ckpt, the full training state (optimizer and random state "
        "included), replaced at the end of every epoch (or every --checkpoint-every steps): --resume reads it",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="with --save-last / --resume: save the training state every N steps instead of every epoch "
        "(for iteration-based configs whose epochs are long)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --output from its checkpoints/last.ckpt, exactly (same "
        "config and flags; other settings are refused)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier run in --output (model.ckpt, summary)"
    )
    p.add_argument(
        "--task1-out",
        type=Path,
        default=None,
        help="detection: also write DOTA Task1 result files (Task1_<class>.txt) for the test split here",
    )


def apply_overrides(cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Command-line overrides on a config dict (returns a new dict)."""
    cfg = copy.deepcopy(cfg)
    trainer = cfg.setdefault("trainer", {}) or {}
    cfg["trainer"] = trainer
    init = cfg["model"].setdefault("init_args", {})
    if args.backbone is not None:  # run() has checked that it exists
        group = init.get("backbone") or {}
        init["backbone"] = {**group, "weights": str(args.backbone)}
    if args.max_epochs is not None:
        trainer["max_epochs"] = args.max_epochs
        if args.max_steps is None:
            trainer["max_steps"] = -1
    if args.max_steps is not None:
        trainer["max_steps"] = args.max_steps
    if args.batch_size is not None:
        from vitp_geo.datamodules.sampling import takes_sampling

        data_init = cfg["data"].setdefault("init_args", {})
        if takes_sampling(cfg["data"].get("class_path")):  # ours: the sampling group
            data_init["sampling"] = {**(data_init.get("sampling") or {}), "batch_size": args.batch_size}
        else:  # torchgeo's own DataModules take it flat
            data_init["batch_size"] = args.batch_size
    if args.accelerator is not None:
        trainer["accelerator"] = args.accelerator
    if args.seed is not None:
        cfg["seed_everything"] = args.seed
    elif cfg.get("seed_everything") in (None, True):  # reproducible unless the config says otherwise
        cfg["seed_everything"] = 0
    trainer["default_root_dir"] = str(args.output)
    return cfg


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad flag values before anything is written (errors name the flag and the value).

    The plain value checks come before any import of torch or the task stack (~8 s), so a bad
    flag is answered at once."""
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    for flag, value in (("--max-steps", args.max_steps), ("--max-epochs", args.max_epochs)):
        if value is not None and value < 1 and value != -1:  # Lightning's -1 = no limit
            raise ValueError(f"{flag} must be >= 1 (or -1 for no limit), got {value}")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be >= 1 (training steps), got {args.checkpoint_every}")
    if args.seed is not None and not 0 <= args.seed <= SEED_MAX:
        raise ValueError(f"--seed must be an integer in [0, {SEED_MAX}], got {args.seed}")
    if args.config is not None and not args.config.is_file():
        what = "a folder" if args.config.is_dir() else "not found"
        raise ValueError(
            f"--config {args.config} is {what}; give a YAML file (configs/finetune/<task>/<dataset>.yaml)"
        )
    if args.accelerator is not None and args.accelerator not in ACCELERATORS:
        raise ValueError(f"--accelerator must be one of {', '.join(ACCELERATORS)}, got {args.accelerator!r}")
    if args.accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                f"--accelerator {args.accelerator}: no CUDA GPU is visible here (use cpu or auto)"
            )
    if args.task1_out is not None and args.task != "detection":
        raise ValueError(f"--task1-out is for detection runs, not {args.task}")
    if args.backbone is not None:
        from vitp_geo.tasks.run import check_backbone_file

        check_backbone_file(args.backbone)


def run(args: argparse.Namespace) -> int:
    check_args(args)  # before anything is written, and before the heavy imports below
    from vitp_geo.tasks.run import (  # the library does the work; this module parses and wires
        FINETUNE_OUTPUTS,
        TASK_CLASSES,
        check_backbone_file,
        default_config,
        fit,
        load_config,
        print_summary,
    )

    out: Path = args.output
    if args.task1_out is not None:
        refuse_existing_outputs({"--task1-out": args.task1_out}, args.overwrite)
    earlier = [n for n in FINETUNE_OUTPUTS if (out / n).exists()]
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --output and --overwrite replaces it: pass one")
    if earlier and not args.overwrite and not args.resume:
        raise ValueError(
            f"--output {out} holds an earlier run ({', '.join(earlier)}); pass --overwrite to replace it, "
            "or choose another --output"
        )
    if args.config is not None:
        cfg = load_config(args.config)
    elif getattr(args, "domain", "rs") == "med":
        from vitp_geo.medical.finetune import default_config as medical_default_config

        if args.task != "segmentation":
            raise ValueError(f"--domain med has an embedded run for segmentation only, not {args.task}")
        print(f"vitp-geo finetune segmentation: no --config, embedded run on CT phantoms in {out / 'data'}")
        out.mkdir(parents=True, exist_ok=True)
        cfg = medical_default_config(out / "data", seed=args.seed or 0)
    else:
        print(
            f"vitp-geo finetune {args.task}: no --config, embedded run on generated scenes in {out / 'data'}"
        )
        out.mkdir(parents=True, exist_ok=True)
        cfg = default_config(args.task, out / "data", seed=args.seed or 0)
    class_path = cfg["model"].get("class_path", "")
    if class_path != TASK_CLASSES[args.task]:
        raise ValueError(
            f"config model.class_path is {class_path!r}; `finetune {args.task}` needs {TASK_CLASSES[args.task]}"
        )
    cfg = apply_overrides(cfg, args)
    weights = (cfg["model"]["init_args"].get("backbone") or {}).get("weights")
    if weights is None:
        print("note: no backbone weights given (--backbone): the ViT starts from random initialisation")
    elif args.backbone is None:  # named by the config: the same checks as --backbone, before training
        check_backbone_file(Path(weights))
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    source = str(args.config) if args.config is not None else "embedded config"
    try:
        summary = fit(
            cfg,
            args.task,
            out,
            progress=not args.no_progress,
            source=source,
            save_last=args.save_last,
            resume=args.resume,
            checkpoint_every=args.checkpoint_every,
            score_start=args.config is None,  # the embedded run also scores the untrained model
            task1_out=args.task1_out,
        )
    except ValueError:
        if created and not any(out.iterdir()):  # a refused config leaves no empty run folder behind
            out.rmdir()
        raise
    print_summary(summary)
    return 0
