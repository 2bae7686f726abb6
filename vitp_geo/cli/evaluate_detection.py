"""``vitp-geo evaluate detection``: mAP of box (or, COCO ``--iou-type segm``, mask) predictions against a dataset's ground truth.

Argument wiring only; the work is ``vitp_geo.evaluation.detection_files.evaluate_files`` (see it
for the accepted layouts of ``--gt`` and ``--pred``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from vitp_geo.evaluation.detection import APMetric
from vitp_geo.evaluation.detection_files import (
    CLASS_PRESETS,
    GroundTruthFormat,
    evaluate_files,
    write_metrics,
)
from vitp_geo.io.paths import check_output_paths, refuse_existing_outputs


def _iou(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--iou must be a number in [0, 1), got {text!r}") from None
    if not (math.isfinite(v) and 0 <= v < 1):
        raise argparse.ArgumentTypeError(f"--iou must be in [0, 1), got {text}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gt",
        type=Path,
        required=True,
        help="ground truth: labelTxt folder, DIOR root / XML folder, or COCO JSON",
    )
    p.add_argument(
        "--pred",
        type=Path,
        required=True,
        help="folder of Task1_<class>.txt (or Task2) files, or a COCO results JSON",
    )
    p.add_argument("--format", dest="fmt", choices=[f.value for f in GroundTruthFormat], required=True)
    p.add_argument("--metric", choices=[m.value for m in APMetric], default="voc07", help="default voc07")
    p.add_argument(
        "--iou-type",
        choices=["bbox", "segm"],
        default="bbox",
        help="coco: box AP (default) or mask AP (segm: COCO segmentations in both files)",
    )
    p.add_argument(
        "--iou", type=_iou, default=0.5, help="VOC match threshold, matched when IoU > it (default 0.5)"
    )
    p.add_argument(
        "--classes",
        nargs="+",
        default=None,
        help=f"class names in id order, or one preset ({', '.join(CLASS_PRESETS)}); default the format's list",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--image-list", type=Path, default=None, help="file of image ids to score (one per line)"
    )
    group.add_argument(
        "--split", default=None, help="DIOR split: reads ImageSets/Main/<split>.txt under --gt"
    )
    p.add_argument("--out", type=Path, required=True, help="metrics JSON to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    # the rule `infer` follows: never write over or into an input, replace only with --overwrite
    check_output_paths(
        {"--gt": args.gt, "--pred": args.pred, "--image-list": args.image_list}, {"--out": args.out}
    )
    refuse_existing_outputs({"--out": args.out}, args.overwrite)
    metrics = evaluate_files(
        args.gt,
        args.pred,
        args.fmt,
        args.metric,
        iou_threshold=args.iou,
        classes=args.classes,
        image_list=args.image_list,
        split=args.split,
        iou_type=args.iou_type,
    )
    write_metrics(args.out, metrics, {"format": args.fmt, "gt": str(args.gt), "pred": str(args.pred)})
    print(metrics.table())
    print(f"wrote {args.out}")
    return 0
