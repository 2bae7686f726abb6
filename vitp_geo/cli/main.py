"""The ``vitp-geo`` command: argument wiring only; each subcommand lives in its own module.

A subcommand module exposes ``add_parser(subparsers) -> None`` and ``run(args) -> int``. Modules are
imported only when their subcommand is used, so ``vitp-geo --help`` stays fast.

Errors print as one line (``vitp-geo <command>: error: ...``, exit 2). ``--debug`` anywhere on the
command line (or ``VITP_GEO_DEBUG=1``) also prints the traceback behind that line, for every error
including CUDA out-of-memory.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

# subcommand name → (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("vitp_geo.cli.pretrain", "ViTP pretraining of a ViT inside a VLM (VRL on)"),
    "build-instructions": ("vitp_geo.cli.build_instructions", "turn labelled rasters into instruction JSONL"),
    "recipe": ("vitp_geo.cli.recipe", "inspect and merge instruction recipes"),
    "finetune": ("vitp_geo.cli.finetune", "fine-tune the backbone for segmentation or change detection"),
    "infer": ("vitp_geo.cli.infer", "tiled inference over a GeoTIFF scene, QGIS-ready outputs"),
    "infer-catalog": (
        "vitp_geo.cli.infer_catalog",
        "inference over a catalogue of scenes, locally or on Ray",
    ),
    "convert": ("vitp_geo.cli.convert", "turn a released reference checkpoint into a model.ckpt for infer"),
    "evaluate": ("vitp_geo.cli.evaluate", "score predictions: detection mAP, segmentation Dice"),
    "qgis-plugin": ("vitp_geo.cli.qgis_plugin", "build or install the QGIS Processing plugin"),
}


# Lightning logs its info lines (device summary, ...) through this logger. One of them advertises a
# cloud logging service on every run; an offline tool has no use for it, so the CLI drops that one.
LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"


class _DropCloudTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage().lower()


def quiet_lightning_tips() -> None:
    """Drop Lightning's cloud-logger advertisement; every other Lightning info line stays."""
    log = logging.getLogger(LIGHTNING_INFO_LOGGER)
    if not any(isinstance(f, _DropCloudTip) for f in log.filters):
        log.addFilter(_DropCloudTip())


class CLIError(Exception):
    """A user error: printed without a traceback, exit code 2."""


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitp-geo",
        description="ViTP foundation models for remote sensing: pretrain, build data, fine-tune, infer.",
    )
    from vitp_geo import __version__

    parser.add_argument("--version", action="version", version=f"vitp-geo {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback behind an error line (also VITP_GEO_DEBUG=1); may appear anywhere",
    )
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
    debug = "--debug" in argv or os.environ.get("VITP_GEO_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    selected = next((a for a in argv if a in SUBCOMMANDS), None)
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    quiet_lightning_tips()
    try:
        return int(module.run(args))
    except KeyboardInterrupt as err:
        if debug:
            traceback.print_exc()
        print(f"vitp-geo: interrupted{f'; {err}' if str(err) else ''}", file=sys.stderr)
        return 130
    except (CLIError, FileNotFoundError, ValueError, RuntimeError, OSError) as err:
        if debug:
            traceback.print_exc()
        print(f"vitp-geo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
