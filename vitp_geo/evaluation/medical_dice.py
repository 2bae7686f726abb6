"""Medical Dice: score a folder of label predictions against ground truth (``vitp-geo evaluate segmentation``).

Cases are matched by file name: ``case_001.nii.gz`` in ``--pred`` against ``case_001.nii.gz`` (or
``.nii``) in ``--gt``, as nnU-Net and MONAI write them; PNG masks (X-ray) likewise. NIfTI pairs
must share the voxel grid (shape and affine, compared in RAS so that a prediction stored in a
different axis order still matches). Class names and label values come from an MSD / nnU-Net
``dataset.json``: v1 ``"labels": {"0": "background", "1": "liver"}`` or v2 ``"labels":
{"background": 0, "liver": 1}`` (v2 region entries such as ``"tumour core": [1, 3]`` are scored as
regions, an ``"ignore"`` label is left out of every count). Without it the classes are the non-zero
values found in the files. ``--regions brats`` scores the BraTS regions ET, TC, WT instead.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vitp_geo.evaluation.dice import (
    BRATS_LABELS,
    BRATS_REGIONS,
    CaseConfusion,
    DiceReport,
    EmptyRule,
    SegClass,
    confusion_matrix,
    dice_report,
)
from vitp_geo.io.atomic import atomic_output
from vitp_geo.io.png_mask import read_png_mask
from vitp_geo.io.strict_json import json_safe
from vitp_geo.io.volume import as_labels, check_same_grid, load_nifti

__all__ = [
    "LabelSpec",
    "RegionSet",
    "evaluate_folders",
    "evaluate_segmentation",
    "find_label_files",
    "format_dice_table",
    "load_dataset_labels",
    "write_dice_outputs",
]

log = logging.getLogger(__name__)

LABEL_SUFFIXES = (".nii.gz", ".nii", ".png")


class RegionSet(StrEnum):
    """Named region sets scored instead of single labels."""

    BRATS = "brats"  # ET = {4}, TC = {1, 4}, WT = {1, 2, 4}


@dataclass
class LabelSpec:
    """What to score and which label values a file may hold.

    Attributes:
        classes: scored classes / regions.
        background: label-0 class, for mmseg's pooled mean with background (None for regions).
        allowed: label values a file may contain; None accepts any (classes then inferred).
        ignore: a label value left out of every count (nnU-Net v2 ``"ignore"``), or None.
        source: where the classes came from, for the summary.
    """

    classes: list[SegClass]
    background: SegClass | None
    allowed: set[int] | None
    ignore: int | None
    source: str


def _as_int(value: object, path: Path, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{path}: label {key!r} has value {value!r}, expected an integer")
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"{path}: label {key!r} has value {value!r}, expected an integer") from err


def load_dataset_labels(path: str | Path) -> LabelSpec:
    """Read the ``labels`` of an MSD / nnU-Net v1 or nnU-Net v2 ``dataset.json``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, no ``labels`` object, or entries that are neither format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such dataset.json: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON (line {err.lineno}: {err.msg})") from err
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise ValueError(
            f"{path}: no 'labels' object (expected {{'0': 'background', ...}} or {{'background': 0, ...}})"
        )
    v1 = all(str(k).strip().lstrip("-").isdigit() and isinstance(v, str) for k, v in labels.items())
    entries: list[tuple[str, tuple[int, ...]]] = []
    if v1:
        for k, name in labels.items():
            entries.append((str(name), (int(k),)))
    else:
        for name, v in labels.items():
            if isinstance(v, list):
                if not v:
                    raise ValueError(f"{path}: region {name!r} lists no label values")
                entries.append((str(name), tuple(_as_int(x, path, name) for x in v)))
            else:
                entries.append((str(name), (_as_int(v, path, name),)))
    ignore = None
    classes: list[SegClass] = []
    background = None
    allowed: set[int] = set()
    for name, values in entries:
        allowed.update(values)
        if name.lower() == "ignore" and not v1 and len(values) == 1:
            ignore = values[0]
        elif values == (0,):
            background = SegClass(name, values)
        else:
            classes.append(SegClass(name, values))
    if not classes:
        raise ValueError(f"{path}: 'labels' holds no foreground class: {labels}")
    if background is None:  # nnU-Net requires background = 0; some files leave it implicit
        log.info("%s: no label 0 listed; treating 0 as background", path)
        background = SegClass("background", (0,))
        allowed.add(0)
    return LabelSpec(classes, background, allowed, ignore, str(path))


def find_label_files(folder: str | Path, role: str) -> dict[str, Path]:
    """Case name -> label file (``.nii.gz``, ``.nii``, ``.png``) directly inside ``folder``.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: no label files, or two files for one case (``a.nii`` and ``a.nii.gz``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such {role} folder: {folder}")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        suffix = next((s for s in LABEL_SUFFIXES if p.name.lower().endswith(s)), None)
        if suffix is None:
            continue
        case = p.name[: -len(suffix)]
        if case in found:
            raise ValueError(f"{folder}: two {role} files for case {case!r}: {found[case].name} and {p.name}")
        found[case] = p
    if not found:
        raise ValueError(f"{folder}: no {role} label files (.nii, .nii.gz or .png)")
    return found


def _read_pair(pred_path: Path, gt_path: Path) -> tuple[np.ndarray, np.ndarray]:
    pred_png, gt_png = pred_path.suffix.lower() == ".png", gt_path.suffix.lower() == ".png"
    if pred_png != gt_png:
        raise ValueError(f"{pred_path} and {gt_path}: one is PNG, the other NIfTI; compare like with like")
    if gt_png:
        pred, gt = read_png_mask(pred_path), read_png_mask(gt_path)
        if pred.shape != gt.shape:
            raise ValueError(f"shape mismatch: {pred_path} is {pred.shape}, {gt_path} is {gt.shape}")
        return pred, gt
    gv, pv = load_nifti(gt_path), load_nifti(pred_path)
    if pv.array.ndim != 3 or gv.array.ndim != 3:
        raise ValueError(
            f"label volumes must be 3D: {pred_path} is {pv.array.shape}, {gt_path} is {gv.array.shape}"
        )
    check_same_grid(gv, pv)
    return as_labels(pv.array, pred_path), as_labels(gv.array, gt_path)


def _check_values(array: np.ndarray, allowed: set[int], path: Path, source: str) -> None:
    values = np.unique(array)
    extra = [int(v) for v in values if int(v) not in allowed]
    if extra:
        raise ValueError(
            f"{path}: label value {extra[0]} is not in {source} (known labels {sorted(allowed)})"
        )


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    dataset_json: str | Path | None = None,
    regions: RegionSet | str | None = None,
    empty: EmptyRule | str = EmptyRule.IGNORE,
    progress: bool = True,
) -> tuple[DiceReport, LabelSpec]:
    """Dice of every ground-truth case against the prediction of the same name.

    Args:
        pred_dir: folder of predicted label files.
        gt_dir: folder of ground-truth label files.
        dataset_json: MSD / nnU-Net ``dataset.json`` naming the labels.
        regions: score a region set (``brats``) instead of single labels.
        empty: the empty-ground-truth rule.
        progress: show a progress bar.

    Returns:
        ``(report, spec)``.

    Raises:
        FileNotFoundError / ValueError: missing folders or cases, mismatched grids, label values
            outside ``dataset.json`` (file and value named). Nothing is written.
    """
    spec = load_dataset_labels(dataset_json) if dataset_json is not None else None
    if regions is not None:
        RegionSet(regions)
        if spec is not None and 4 not in (spec.allowed or set()):
            raise ValueError(
                f"{dataset_json}: --regions brats needs enhancing tumour = label 4 (BraTS 2021), "
                f"the labels here are {sorted(spec.allowed or set())} (MSD Task01 relabels it as 3)"
            )
        spec = LabelSpec(
            list(BRATS_REGIONS),
            None,
            spec.allowed if spec is not None else set(BRATS_LABELS),
            spec.ignore if spec is not None else None,
            f"BraTS regions ({spec.source if spec else 'labels 0, 1, 2, 4'})",
        )
    gts = find_label_files(gt_dir, "ground-truth")
    preds = find_label_files(pred_dir, "prediction")
    missing = [c for c in gts if c not in preds]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{pred_dir}: no prediction for {len(missing)} ground-truth case(s): {shown}")
    extra = sorted(set(preds) - set(gts))
    if extra:
        log.warning(
            "%s: %d prediction(s) without ground truth ignored (e.g. %s)", pred_dir, len(extra), extra[0]
        )

    confusions: dict[str, CaseConfusion] = {}
    seen: set[int] = set()
    for case in tqdm(list(gts), desc="dice", unit="case", disable=not progress):
        pred, gt = _read_pair(preds[case], gts[case])
        if spec is not None and spec.allowed is not None:
            _check_values(gt, spec.allowed, gts[case], spec.source)
            _check_values(pred, spec.allowed, preds[case], spec.source)
        if spec is not None and spec.ignore is not None:
            keep = gt != spec.ignore
            pred, gt = pred[keep], gt[keep]
        conf = confusion_matrix(pred, gt)
        seen.update(conf.values)
        confusions[case] = conf
    if spec is None:
        values = sorted(v for v in seen if v != 0)
        if not values:
            raise ValueError(f"{gt_dir}: every ground-truth and predicted voxel is 0; no class to score")
        log.info("no dataset.json: scoring the label values found in the files: %s", values)
        spec = LabelSpec(
            [SegClass(f"label_{v}", (v,)) for v in values],
            SegClass("background", (0,)),
            None,
            None,
            f"label values found in the files {values} (no dataset.json)",
        )
    return dice_report(confusions, spec.classes, empty, spec.background), spec


def _fmt(x: float | None) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.4f}"


def format_dice_table(report: DiceReport) -> str:
    """A plain-text table: per class the per-case mean Dice, cases counted, pooled Dice."""
    width = max(8, *(len(c.name) for c in report.classes))
    lines = [f"{'class':<{width}}  labels        per-case Dice  cases  pooled Dice"]
    for i, cls in enumerate(report.classes):
        labels = ",".join(str(v) for v in cls.labels)
        lines.append(
            f"{cls.name:<{width}}  {labels:<12}  {_fmt(report.mean_per_class[i]):>13}  "
            f"{int(report.cases_counted[i]):>5}  {_fmt(report.pooled_per_class[i]):>11}"
        )
    lines.append(
        f"{'mean':<{width}}  {'':<12}  {_fmt(report.mean_dice):>13}  {len(report.cases):>5}  "
        f"{_fmt(report.pooled_mdice):>11}"
    )
    with_bg = report.pooled_mdice_with_background
    if with_bg is not None:
        lines.append(f"pooled mDice with background (mmseg): {_fmt(with_bg)}")
    lines.append(f"empty ground truth rule: {report.rule}")
    return "\n".join(lines)


EMPTY_RULE_TEXT = {
    EmptyRule.IGNORE: "nnU-Net: a class absent from both ground truth and prediction is NaN and left out of "
    "the mean; a prediction on an empty ground truth scores 0",
    EmptyRule.BRATS: "BraTS / MONAI ignore_empty=False: a class absent from the ground truth scores 1 if "
    "the prediction is empty too, else 0",
}


def write_dice_outputs(report: DiceReport, spec: LabelSpec, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``per_case.csv`` (one row per case and class) and ``summary.json``, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_case = report.per_case
    csv_path = out_dir / "per_case.csv"
    with atomic_output(csv_path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "class", "labels", "dice", "tp", "fp", "fn", "gt_voxels", "pred_voxels"])
        for n, case in enumerate(report.cases):
            for c, cls in enumerate(report.classes):
                tp, fp, fn = (int(x) for x in report.counts[n, c])
                d = per_case[n, c]
                w.writerow(
                    [
                        case,
                        cls.name,
                        " ".join(map(str, cls.labels)),
                        "" if np.isnan(d) else f"{d:.6f}",
                        tp,
                        fp,
                        fn,
                        tp + fn,
                        tp + fp,
                    ]
                )
    summary = {
        "n_cases": len(report.cases),
        "labels_from": spec.source,
        "empty_rule": str(report.rule),
        "empty_rule_text": EMPTY_RULE_TEXT[report.rule],
        "ignore_label": spec.ignore,
        "classes": [{"name": c.name, "labels": list(c.labels)} for c in report.classes],
        "per_case_mean": {c.name: float(report.mean_per_class[i]) for i, c in enumerate(report.classes)},
        "cases_counted": {c.name: int(report.cases_counted[i]) for i, c in enumerate(report.classes)},
        "mean_dice": report.mean_dice,
        "pooled": {c.name: float(report.pooled_per_class[i]) for i, c in enumerate(report.classes)},
        "pooled_mdice": report.pooled_mdice,
        "pooled_mdice_with_background": report.pooled_mdice_with_background,
        "notes": "per_case_mean: Dice per case and class, averaged over cases (nnU-Net, MONAI); pooled: TP/FP/FN "
        "summed over all cases and slices first (mmsegmentation mDice, the ViTP paper's 2D numbers)",
    }
    json_path = out_dir / "summary.json"
    with atomic_output(json_path) as tmp:
        tmp.write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")
    return csv_path, json_path


def evaluate_segmentation(
    pred_dir: str | Path,
    gt_dir: str | Path,
    out_dir: str | Path,
    dataset_json: str | Path | None = None,
    regions: RegionSet | str | None = None,
    empty: EmptyRule | str = EmptyRule.IGNORE,
    progress: bool = True,
) -> tuple[DiceReport, Sequence[Path]]:
    """:func:`evaluate_folders`, then :func:`write_dice_outputs` into ``out_dir``."""
    report, spec = evaluate_folders(pred_dir, gt_dir, dataset_json, regions, empty, progress)
    return report, write_dice_outputs(report, spec, out_dir)
