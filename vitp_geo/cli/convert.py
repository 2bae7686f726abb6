"""``vitp-geo convert``: a released fine-tuned reference checkpoint → ``model.ckpt`` (argument wiring only).

The logic lives in :mod:`vitp_geo.convert`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vitp_geo.io.paths import check_output_paths, refuse_existing_outputs


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "convert",
        help="convert a released reference checkpoint (mmrotate / mmseg / open-cd) into a model.ckpt for infer",
        description=(
            "Map a fine-tuned checkpoint of the ViTP reference (mmrotate Oriented R-CNN or Cascade R-CNN, "
            "mmseg UperNet, open-cd siamese change model; a .pth with state_dict / meta, read weights-only, "
            "or .safetensors) onto the model the config describes and write a model.ckpt with its model "
            "card. Every key must be mapped or on the documented ignore list (vitp_geo.convert.keymap)."
        ),
    )
    p.add_argument(
        "checkpoint", type=Path, help="the released checkpoint (.pth / .pt / .ckpt / .safetensors)"
    )
    p.add_argument(
        "--config",
        type=Path,
        required=True,
        help="the benchmark config it was trained for, e.g. configs/finetune/detection/diorr.yaml",
    )
    p.add_argument("--out", type=Path, required=True, help="the model.ckpt to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    from vitp_geo.convert import convert_release

    check_output_paths({"checkpoint": args.checkpoint, "--config": args.config}, {"--out": args.out})
    refuse_existing_outputs({"--out": args.out}, args.overwrite)
    out, ignored = convert_release(args.checkpoint, args.config, args.out)
    if ignored:
        print(f"left out on purpose (vitp_geo.convert.keymap.IGNORED): {', '.join(sorted(ignored))}")
    print(f"wrote {out}")
    return 0
