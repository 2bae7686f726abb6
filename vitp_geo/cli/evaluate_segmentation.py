"""``vitp-geo evaluate segmentation``: per-case and pooled Dice of label files (argument wiring only).

The logic lives in :mod:`vitp_geo.evaluation.medical_dice`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vitp_geo.evaluation.dice import EmptyRule
from vitp_geo.evaluation.medical_dice import RegionSet, evaluate_segmentation, format_dice_table
from vitp_geo.io.paths import check_output_paths, refuse_existing_outputs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", type=Path, required=True, help="folder of predicted labels (.nii.gz/.nii/.png)")
    p.add_argument("--gt", type=Path, required=True, help="folder of ground-truth labels, same file names")
    p.add_argument(
        "--dataset-json",
        type=Path,
        help="MSD / nnU-Net dataset.json naming the labels (v1 or v2); default: the values found in the files",
    )
    p.add_argument(
        "--regions",
        choices=[r.value for r in RegionSet],
        help="score label regions instead of labels: brats = ET (4), TC (1+4), WT (1+2+4)",
    )
    p.add_argument(
        "--empty",
        choices=[r.value for r in EmptyRule],
        default=EmptyRule.IGNORE.value,
        help="class absent from a case's ground truth: ignore = NaN, left out of the mean when also not "
        "predicted (nnU-Net); brats = 1 if the prediction is empty too, else 0 (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for per_case.csv and summary.json")
    p.add_argument(
        "--overwrite", action="store_true", help="replace per_case.csv / summary.json already in --out"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    # the rule `infer` follows: never write over or into an input, replace only with --overwrite
    inputs = {"--pred": args.pred, "--gt": args.gt, "--dataset-json": args.dataset_json}
    for name in ("per_case.csv", "summary.json"):
        check_output_paths(inputs, {"--out": args.out / name})
        refuse_existing_outputs({"--out": args.out / name}, args.overwrite)
    report, paths = evaluate_segmentation(
        args.pred,
        args.gt,
        args.out,
        dataset_json=args.dataset_json,
        regions=args.regions,
        empty=args.empty,
        progress=not args.no_progress,
    )
    print(format_dice_table(report))
    for path in paths:
        print(f"wrote {path}")
    return 0
