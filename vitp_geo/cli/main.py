"""The ``vitp-geo`` command: argument wiring only; each subcommand lives in its own module.

A subcommand module exposes ``add_parser(subparsers) -> None`` and ``run(args) -> int``. Modules are
imported only when their subcommand is used, so ``vitp-geo --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand name → (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("vitp_geo.cli.pretrain", "ViTP pretraining of a ViT inside a VLM (VRL on)"),
    "build-instructions": ("vitp_geo.cli.build_instructions", "turn labelled rasters into instruction JSONL"),
    "recipe": ("vitp_geo.cli.recipe", "inspect and merge instruction recipes"),
    "finetune": ("vitp_geo.cli.finetune", "fine-tune the backbone for segmentation or change detection"),
    "infer": ("vitp_geo.cli.infer", "tiled inference over a GeoTIFF scene, QGIS-ready outputs"),
    "evaluate": ("vitp_geo.cli.evaluate", "score predictions: detection mAP, segmentation Dice"),
}


class CLIError(Exception):
    """A user error: printed without a traceback, exit code 2."""


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitp-geo",
        description="ViTP foundation models for remote sensing: pretrain, build data, fine-tune, infer.",
    )
    from vitp_geo import __version__

    parser.add_argument("--version", action="version", version=f"vitp-geo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        if selected is not None and name == selected:
            mod = importlib.import_module(module)
            mod.add_parser(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if a in SUBCOMMANDS), None)
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        print("vitp-geo: interrupted", file=sys.stderr)
        return 130
    except (CLIError, FileNotFoundError, ValueError, RuntimeError, OSError) as err:
        print(f"vitp-geo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
