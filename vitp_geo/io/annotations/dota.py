"""DOTA ``labelTxt`` annotations (v1.0 / v1.5 / v2.0) and the DOTA server's Task1 / Task2 result files.

``labelTxt/<image>.txt``: optional header lines ``key:value`` (``imagesource:GoogleEarth``,
``gsd:0.146343590398``, ``acquisition dates:...``), then one object per line::

    x1 y1 x2 y2 x3 y3 x4 y4 class-name difficult

(integers in v1.0, floats in v1.5 / v2.0; ``difficult`` is 0 or 1 and may be absent; the devkit's
splitter writes 2 for the small remnant of an object cut by a patch edge, read as difficult). Task1 result
files ``Task1_<class>.txt`` hold one detection per line, ``image score x1 y1 ... x4 y4``; Task2
files ``Task2_<class>.txt`` hold ``image score xmin ymin xmax ymax``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vitp_geo.io.annotations.classes import class_index
from vitp_geo.io.annotations.samples import ParseError, box_sample, finite32, lookup_class, polygon_sample
from vitp_geo.io.atomic import atomic_output

log = logging.getLogger(__name__)

__all__ = [
    "dota_header",
    "read_dota_label",
    "read_dota_labels",
    "read_task_results",
    "write_dota_label",
    "write_task_results",
]


def _float(tok: str, path: Path, lineno: int) -> float:
    try:
        value = float(tok)
    except ValueError:
        raise ParseError(path, lineno, f"expected a number, got {tok!r}") from None
    if not finite32(value):  # a NaN coordinate dropped silently changed the mAP; a NaN score ranks anywhere
        raise ParseError(path, lineno, f"expected a finite number, got {tok!r}")
    return value


def _is_number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def _is_header(line: str) -> bool:
    head = line.split(maxsplit=1)[0]
    try:
        float(head)
    except ValueError:
        return ":" in line
    return False


def dota_header(path: str | Path) -> dict[str, str]:
    """The ``key:value`` header lines of a labelTxt file (``imagesource``, ``gsd``, ...)."""
    path = Path(path)
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        line = line.strip()
        if not line:
            continue
        if not _is_header(line):
            break
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def read_dota_label(path: str | Path, classes: Sequence[str]) -> dict[str, Tensor]:
    """One labelTxt file as a sample (``bbox_xyxyxyxy``, ``bbox_xyxy``, ``label``, ``difficult``).

    Args:
        path: the ``.txt`` file.
        classes: class names; labels are their indices (matched by name, ignoring case).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed line or an unknown class, naming the file, line and value.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DOTA label file not found: {path}")
    index = class_index(classes)
    polys: list[list[float]] = []
    labels: list[int] = []
    difficult: list[bool] = []
    body = False
    for lineno, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if not body and _is_header(line):
            continue
        body = True
        tok = line.split()
        first_name = next((k for k, t in enumerate(tok) if not _is_number(t)), len(tok))
        if first_name != 8:
            raise ParseError(
                path, lineno, f"expected 8 coordinates before the class name, got {first_name}: {line!r}"
            )
        if len(tok) not in (9, 10):
            raise ParseError(
                path, lineno, f"expected 'x1 y1 ... x4 y4 class [difficult]' (9 or 10 fields), got {line!r}"
            )
        polys.append([_float(t, path, lineno) for t in tok[:8]])
        labels.append(lookup_class(tok[8], index, classes, path, lineno))
        if len(tok) == 10:
            if tok[9] not in ("0", "1", "2"):
                raise ParseError(path, lineno, f"difficult flag must be 0, 1 or 2, got {tok[9]!r}")
            difficult.append(tok[9] != "0")  # 2: a remnant cut by a patch edge (devkit split)
        else:
            difficult.append(False)
    return polygon_sample(polys, labels, difficult, path)


def read_dota_labels(
    folder: str | Path, classes: Sequence[str], image_ids: Sequence[str] | None = None
) -> dict[str, dict[str, Tensor]]:
    """Every ``*.txt`` of a labelTxt folder (or of ``folder/labelTxt``), keyed by file stem.

    Args:
        folder: the ``labelTxt`` folder or the dataset split folder holding it.
        classes: class names.
        image_ids: read only these (each must exist); default all.
    """
    folder = Path(folder)
    if (folder / "labelTxt").is_dir():
        folder = folder / "labelTxt"
    if not folder.is_dir():
        raise FileNotFoundError(f"DOTA label folder not found: {folder}")
    if image_ids is None:
        files = sorted(folder.glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"no DOTA label files (*.txt) in {folder}")
    else:
        files = [folder / f"{i}.txt" for i in image_ids]
    return {f.stem: read_dota_label(f, classes) for f in files}


def _fmt(v: float) -> str:
    return f"{v:.1f}" if float(v).is_integer() else f"{v:.3f}"


def write_dota_label(
    path: str | Path,
    sample: Mapping[str, Tensor],
    classes: Sequence[str],
    header: Mapping[str, str] | None = None,
    flags: Sequence[int] | None = None,
) -> Path:
    """Write a sample as a labelTxt file (atomically), corners from ``bbox_xyxyxyxy`` or ``bbox_xyxy``.

    Args:
        path: the ``.txt`` file.
        sample: boxes, ``label``, optional ``difficult``.
        classes: class names.
        header: ``key:value`` lines written first (``imagesource``, ``gsd``).
        flags: per-object flags (0, 1 or 2) written instead of ``difficult``.
    """
    path = Path(path)
    polys = _polygons(sample)
    labels = torch.as_tensor(sample["label"]).reshape(-1).tolist()
    if flags is None:
        diff = torch.as_tensor(sample.get("difficult", torch.zeros(len(labels), dtype=torch.bool))).reshape(
            -1
        )
        flags = [int(bool(d)) for d in diff.tolist()]
    lines = [f"{k}:{v}" for k, v in (header or {}).items()]
    for p, lab, f in zip(polys.tolist(), labels, flags, strict=True):
        if f not in (0, 1, 2):
            raise ValueError(f"{path}: flags must be 0, 1 or 2, got {f}")
        lines.append(" ".join(_fmt(v) for v in p) + f" {classes[lab]} {f}")
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    return path


def _polygons(sample: Mapping[str, Tensor]) -> np.ndarray:
    if "bbox_xyxyxyxy" in sample:
        return torch.as_tensor(sample["bbox_xyxyxyxy"]).double().reshape(-1, 8).numpy()
    b = torch.as_tensor(sample["bbox_xyxy"]).double().reshape(-1, 4).numpy()
    x1, y1, x2, y2 = b.T
    return np.stack([x1, y1, x2, y1, x2, y2, x1, y2], 1)


def _bounds(sample: Mapping[str, Tensor]) -> np.ndarray:
    if "bbox_xyxy" in sample:
        return torch.as_tensor(sample["bbox_xyxy"]).double().reshape(-1, 4).numpy()
    p = _polygons(sample).reshape(-1, 4, 2)
    return np.concatenate([p.min(1), p.max(1)], 1)


def write_task_results(
    folder: str | Path,
    predictions: Mapping[str, Mapping[str, Tensor]],
    classes: Sequence[str],
    task: int = 1,
) -> list[Path]:
    """Write ``Task{task}_<class>.txt`` for every class (empty files included), each atomically.

    Args:
        folder: output folder (created).
        predictions: image id → sample with boxes, ``label`` and ``score``.
        classes: class names (file names and label ids).
        task: 1 (oriented: 8 corner coordinates) or 2 (horizontal: ``xmin ymin xmax ymax``).

    Returns:
        The written files.
    """
    if task not in (1, 2):
        raise ValueError(f"task must be 1 (oriented) or 2 (horizontal), got {task}")
    per_class: list[list[str]] = [[] for _ in classes]
    for image, s in predictions.items():
        boxes = _polygons(s) if task == 1 else _bounds(s)
        labels = torch.as_tensor(s["label"]).reshape(-1).tolist()
        scores = torch.as_tensor(s["score"]).double().reshape(-1).tolist()
        for b, lab, sc in zip(boxes.tolist(), labels, scores, strict=True):
            if not 0 <= lab < len(classes):
                raise ValueError(f"predictions for {image}: label {lab} outside the {len(classes)} classes")
            per_class[lab].append(f"{image} {sc:.6g} " + " ".join(f"{v:.2f}" for v in b))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, lines in zip(classes, per_class, strict=True):
        path = folder / f"Task{task}_{name}.txt"
        with atomic_output(path) as tmp:
            tmp.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        out.append(path)
    return out


def read_task_results(folder: str | Path, classes: Sequence[str]) -> dict[str, dict[str, Tensor]]:
    """Read ``Task1_<class>.txt`` (or ``Task2_<class>.txt``) files into per-image prediction samples.

    Every ``Task1_*.txt`` / ``Task2_*.txt`` in ``folder`` is read (one of the two kinds, not both);
    its class comes from the file name (an empty file of a class outside ``classes`` is skipped). Oriented results give ``bbox_xyxyxyxy`` and ``bbox_xyxy``,
    horizontal ones ``bbox_xyxy``; all give ``label`` and ``score``.

    Raises:
        FileNotFoundError: no result files.
        ValueError: a file for an unknown class, two files of one class (``Task1_plane.txt`` and
            ``Task1_Plane.txt``), or a malformed line (file, line and value named).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"result folder not found: {folder}")
    t1, t2 = sorted(folder.glob("Task1_*.txt")), sorted(folder.glob("Task2_*.txt"))
    if t1 and t2:
        raise ValueError(f"{folder} holds both Task1_*.txt and Task2_*.txt files; keep one kind")
    files, task = (t1, 1) if t1 else (t2, 2)
    if not files:
        raise FileNotFoundError(f"no Task1_<class>.txt or Task2_<class>.txt files in {folder}")
    index = class_index(classes)
    width = 8 if task == 1 else 4
    rows: dict[str, tuple[list[list[float]], list[int], list[float]]] = {}
    seen: dict[int, Path] = {}  # class → its file: two files of one class would count it twice
    for f in files:
        name = f.stem.split("_", 1)[1]
        text = f.read_text(encoding="utf-8-sig")
        if name.lower() not in index and not text.strip():
            log.info("%s: skipped an empty result file of a class outside the class list", f)
            continue
        lab = lookup_class(name, index, classes, f, "file name")
        if lab in seen:
            raise ValueError(
                f"{seen[lab]} and {f} both hold class {classes[lab]!r} (class names ignore case); "
                "keep one file per class"
            )
        seen[lab] = f
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line:
                continue
            tok = line.split()
            if len(tok) != 2 + width:
                raise ParseError(f, lineno, f"expected 'image score' and {width} coordinates, got {line!r}")
            boxes, labels, scores = rows.setdefault(tok[0], ([], [], []))
            scores.append(_float(tok[1], f, lineno))
            boxes.append([_float(t, f, lineno) for t in tok[2:]])
            labels.append(lab)
    out: dict[str, dict[str, Tensor]] = {}
    for image, (boxes, labels, scores) in rows.items():
        where = f"{folder} (image {image})"
        make = polygon_sample if task == 1 else box_sample
        out[image] = make(boxes, labels, None, where, scores)
    return out
