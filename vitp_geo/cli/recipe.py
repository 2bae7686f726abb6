"""``vitp-geo recipe stats|merge``: inspect and combine instruction recipes (wiring only)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitp_geo.instruct.stats import (
    estimate_tokens,
    format_stats,
    merge_recipes,
    recipe_stats,
    tokenizer_counter,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "recipe",
        help="inspect and merge instruction recipes",
        description="Inspect and merge InternVL/ViTP meta-JSON (or YAML) recipes.",
    )
    sub = p.add_subparsers(dest="recipe_command", metavar="ACTION", required=True)
    s = sub.add_parser("stats", help="records, samples per epoch, task/modality mix, images, mean tokens")
    s.add_argument("recipe", type=Path)
    s.add_argument(
        "--tokenizer",
        type=Path,
        help="tokenizer.json (or its folder) for exact token counts; default: chars/4 estimate",
    )
    m = sub.add_parser("merge", help="combine recipes into one (name clashes get a _2, _3 suffix)")
    m.add_argument("recipes", type=Path, nargs="+")
    m.add_argument("--out", type=Path, required=True, help="merged recipe (.json)")
    m.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    if args.recipe_command == "stats":
        counter = tokenizer_counter(args.tokenizer) if args.tokenizer else estimate_tokens
        per, total = recipe_stats(args.recipe, counter)
        print(format_stats(per, total))
        if not args.tokenizer:
            print("(text tokens estimated as characters/4; pass --tokenizer for exact counts)")
        return 0
    out, notes = merge_recipes(list(args.recipes), args.out, overwrite=args.overwrite)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out}")
    return 0
