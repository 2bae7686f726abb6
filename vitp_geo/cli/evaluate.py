"""``vitp-geo evaluate detection|segmentation``: score predictions written by anyone (argument wiring only).

Each target lives in its own module (``evaluate_detection``, ``evaluate_segmentation``) that exposes
``add_arguments(parser)`` and ``run(args) -> int``; this module only dispatches.
"""

from __future__ import annotations

import argparse
import importlib

TARGETS: dict[str, tuple[str, str]] = {
    "detection": (
        "vitp_geo.cli.evaluate_detection",
        "mAP (VOC07/VOC12 on polygons, COCO) of box predictions",
    ),
    "segmentation": ("vitp_geo.cli.evaluate_segmentation", "per-case Dice of label volumes/images"),
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "evaluate",
        help="score predictions against ground truth (detection mAP, segmentation Dice)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    sub = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, (module, help_text) in TARGETS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(sp)


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(TARGETS[args.target][0]).run(args))
