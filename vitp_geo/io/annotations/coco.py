"""COCO detection JSON (``annotations/instances_<split>.json``) and COCO result files.

Ground truth: ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations``
(``image_id``, ``category_id``, ``bbox`` = ``[x, y, width, height]``, ``iscrowd``) and
``categories`` (``id``, ``name``); SARDet-100K, SSDD and any COCO export use it. Samples are
keyed by the image file's stem; ``iscrowd`` objects become ``difficult`` (ignored by the VOC
metrics). Results: a JSON list of ``{"image_id", "category_id", "bbox", "score"}``, whose ids refer
to a ground-truth file.

Instance masks (``masks=True``, for Mask R-CNN and COCO ``segm`` AP): each annotation's
``segmentation`` — polygons (a list of ``[x1, y1, x2, y2, ...]`` rings), an uncompressed RLE
(``counts`` a list) or a compressed one (``counts`` a string) — becomes a compressed RLE on its
image's grid (``width`` / ``height``) by pycocotools, COCO's own rasterisation; the samples gain
``segmentation``, one RLE dict per object in the order of the boxes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitp_geo.io.annotations.classes import class_index
from vitp_geo.io.annotations.samples import ParseError, box_sample, finite32, lookup_class
from vitp_geo.io.atomic import atomic_output

__all__ = ["coco_classes", "read_coco", "read_coco_results", "segmentation_rle", "write_coco_results"]


def _load(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"COCO JSON file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise ParseError(path, e.lineno, f"malformed JSON ({e.msg}, column {e.colno})") from None


def _gt(path: Path) -> dict[str, Any]:
    data = _load(path)
    if not isinstance(data, dict):
        raise ParseError(
            path,
            None,
            f"expected a JSON object with 'images', 'annotations', 'categories', got {type(data).__name__}",
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ParseError(path, None, f"missing or non-list '{key}'")
    return data


def _category_list(data: dict[str, Any], path: Path) -> list[tuple[int | str, str]]:
    """The categories as ``(id, name)``, checked: each has an integer (or string) ``id`` and a
    ``name``; ids and names (ignoring case) are unique, and the ids are all of one type. A
    duplicate id would relabel every object of the first category as the second, silently."""
    out: list[tuple[int | str, str]] = []
    names: dict[str, int | str] = {}
    by_id: dict[int | str, str] = {}
    for k, c in enumerate(data["categories"]):
        where = f"categories[{k}]"
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise ParseError(path, where, f"a category needs an 'id' and a 'name', got {c!r}")
        cid, name = c["id"], c["name"]
        if isinstance(cid, bool) or not isinstance(cid, int | str):
            raise ParseError(path, where, f"category id must be an integer (or a string), got {cid!r}")
        if not isinstance(name, str) or not name.strip():
            raise ParseError(path, where, f"category name must be a non-empty string, got {name!r}")
        if cid in by_id:
            raise ParseError(path, where, f"category id {cid!r} is given twice ({by_id[cid]!r} and {name!r})")
        if name.lower() in names:
            raise ParseError(
                path, where, f"two categories are named {name!r} (ids {names[name.lower()]!r} and {cid!r})"
            )
        by_id[cid], names[name.lower()] = name, cid
        out.append((cid, name))
    if len({type(cid) for cid, _ in out}) > 1:
        raise ParseError(path, "categories", f"category ids mix integers and strings: {[c for c, _ in out]}")
    return out


def coco_classes(path: str | Path) -> list[str]:
    """The category names of a COCO ground-truth file, by ascending category id."""
    path = Path(path)
    return [name for _, name in sorted(_category_list(_gt(path), path), key=lambda c: c[0])]


def _bbox(v: Any, path: Path, where: str) -> list[float]:
    if not (isinstance(v, list) and len(v) == 4 and all(isinstance(x, int | float) for x in v)):
        raise ParseError(path, where, f"bbox must be [x, y, width, height], got {v!r}")
    if not all(finite32(float(x)) for x in v):
        raise ParseError(path, where, f"bbox must hold finite numbers, got {v!r}")
    x, y, w, h = (float(t) for t in v)
    return [x, y, x + w, y + h]


def _id(value: Any, path: Path, where: str, key: str) -> int | str:
    """An image / category id as COCO gives it: an integer (or a string), never a list or null."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ParseError(path, where, f"{key} must be an integer, got {value!r}")
    return value


def _images(data: dict[str, Any], path: Path) -> tuple[dict[Any, str], dict[str, Any]]:
    """image id → key (file stem), and key → id; duplicate stems are an error."""
    by_id: dict[Any, str] = {}
    by_key: dict[str, Any] = {}
    for k, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise ParseError(path, f"images[{k}]", f"image without 'id' or 'file_name': {im!r}")
        _id(im["id"], path, f"images[{k}]", "id")
        key = Path(str(im["file_name"])).stem
        if key in by_key:
            raise ParseError(path, f"images[{k}]", f"two images share the name {key!r}")
        by_id[im["id"]] = key
        by_key[key] = im["id"]
    return by_id, by_key


def segmentation_rle(seg: Any, height: int, width: int, path: Path | str, where: str) -> dict[str, Any]:
    """One object's COCO ``segmentation`` (polygons or RLE) as a compressed RLE on a ``height`` × ``width`` grid.

    Raises:
        ParseError: an empty or malformed segmentation, or an RLE of another size, naming ``where``.
    """
    from pycocotools import mask as mask_utils

    path = Path(path)
    if isinstance(seg, list):
        rings = [r for r in seg if isinstance(r, list)]
        if not seg or len(rings) != len(seg):
            raise ParseError(
                path, where, f"segmentation must be a non-empty list of polygons, got {seg!r:.80}"
            )
        for r in rings:
            if (
                len(r) < 6
                or len(r) % 2
                or not all(isinstance(v, int | float) and math.isfinite(v) for v in r)
            ):
                raise ParseError(path, where, f"a polygon needs >= 3 finite x, y pairs, got {r!r:.80}")
        return dict(
            mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in r] for r in rings], height, width))
        )
    if (
        isinstance(seg, dict)
        and isinstance(seg.get("counts"), list | str)
        and isinstance(seg.get("size"), list)
    ):
        if [int(v) for v in seg["size"]] != [height, width]:
            raise ParseError(path, where, f"RLE size {seg['size']} is not the image's [{height}, {width}]")
        if isinstance(seg["counts"], list):
            return dict(mask_utils.frPyObjects(seg, height, width))
        return {"size": [height, width], "counts": seg["counts"].encode("ascii")}
    raise ParseError(path, where, f"segmentation must be polygons or an RLE dict, got {seg!r:.80}")


def _image_sizes(data: dict[str, Any], path: Path) -> dict[Any, tuple[int, int]]:
    """image id → (height, width), which masks need."""
    out: dict[Any, tuple[int, int]] = {}
    for k, im in enumerate(data["images"]):
        h, w = im.get("height"), im.get("width")
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            raise ParseError(
                path, f"images[{k}]", f"masks need a positive integer 'height' and 'width', got {h!r}, {w!r}"
            )
        out[im["id"]] = (h, w)
    return out


def _categories(data: dict[str, Any], classes: Sequence[str], path: Path) -> dict[Any, int]:
    index = class_index(classes)
    return {
        cid: lookup_class(name, index, classes, path, f"category id {cid}")
        for cid, name in _category_list(data, path)
    }


def read_coco(
    path: str | Path, classes: Sequence[str] | None = None, masks: bool = False
) -> dict[str, dict[str, Any]]:
    """A COCO ground-truth file as samples keyed by image file stem (images without objects too).

    Args:
        path: the ``instances_*.json`` file.
        classes: class names (matched to the categories by name); default the file's categories.
        masks: also read each object's ``segmentation`` into ``segmentation`` (module doc).

    Raises:
        FileNotFoundError: no such file.
        ValueError: malformed JSON, a bad ``bbox``, an unknown image or category, naming the file
            and the annotation.
    """
    path = Path(path)
    data = _gt(path)
    classes = coco_classes(path) if classes is None else classes
    by_id, _ = _images(data, path)
    cat = _categories(data, classes, path)
    rows: dict[str, tuple[list[list[float]], list[int], list[bool]]] = {
        k: ([], [], []) for k in by_id.values()
    }
    sizes = _image_sizes(data, path) if masks else {}
    rles: dict[str, list[dict[str, Any]]] = {k: [] for k in by_id.values()}
    for k, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            raise ParseError(path, f"annotations[{k}]", f"expected an object, got {a!r}")
        where = f"annotations[{k}] (id {a.get('id')})"
        _id(a.get("image_id"), path, where, "image_id")
        _id(a.get("category_id"), path, where, "category_id")
        if a.get("image_id") not in by_id:
            raise ParseError(path, where, f"unknown image_id {a.get('image_id')!r}")
        if a.get("category_id") not in cat:
            raise ParseError(path, where, f"unknown category_id {a.get('category_id')!r}")
        boxes, labels, crowd = rows[by_id[a["image_id"]]]
        boxes.append(_bbox(a.get("bbox"), path, where))
        labels.append(cat[a["category_id"]])
        crowd.append(bool(a.get("iscrowd", 0)))
        if masks:
            h, w = sizes[a["image_id"]]
            rles[by_id[a["image_id"]]].append(segmentation_rle(a.get("segmentation"), h, w, path, where))
    out: dict[str, dict[str, Any]] = {
        key: box_sample(b, lab, c, f"{path} (image {key})") for key, (b, lab, c) in rows.items()
    }
    if masks:
        for key, sample in out.items():
            sample["segmentation"] = rles[key]
    return out


def read_coco_results(
    path: str | Path, gt_path: str | Path, classes: Sequence[str] | None = None, masks: bool = False
) -> dict[str, dict[str, Any]]:
    """A COCO results JSON list as prediction samples (``bbox_xyxy``, ``label``, ``score``).

    Args:
        path: the results file.
        gt_path: the ground-truth file its ``image_id`` / ``category_id`` refer to.
        classes: class names; default the ground truth's categories.
        masks: also read each detection's ``segmentation`` (RLE or polygons, on the ground-truth
            image's grid) into ``segmentation``; a detection without one is an error.
    """
    path, gt_path = Path(path), Path(gt_path)
    gt = _gt(gt_path)
    classes = coco_classes(gt_path) if classes is None else classes
    by_id, _ = _images(gt, gt_path)
    cat = _categories(gt, classes, gt_path)
    res = _load(path)
    if not isinstance(res, list):
        raise ParseError(path, None, f"expected a JSON list of detections, got {type(res).__name__}")
    rows: dict[str, tuple[list[list[float]], list[int], list[float]]] = {}
    sizes = _image_sizes(gt, gt_path) if masks else {}
    rles: dict[str, list[dict[str, Any]]] = {}
    for k, d in enumerate(res):
        where = f"[{k}]"
        if not isinstance(d, dict):
            raise ParseError(path, where, f"expected an object, got {d!r}")
        _id(d.get("image_id"), path, where, "image_id")
        _id(d.get("category_id"), path, where, "category_id")
        if d.get("image_id") not in by_id:
            raise ParseError(path, where, f"image_id {d.get('image_id')!r} is not in {gt_path}")
        if d.get("category_id") not in cat:
            raise ParseError(path, where, f"category_id {d.get('category_id')!r} is not in {gt_path}")
        score = d.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise ParseError(path, where, f"score must be a finite number, got {score!r}")
        boxes, labels, scores = rows.setdefault(by_id[d["image_id"]], ([], [], []))
        boxes.append(_bbox(d.get("bbox"), path, where))
        labels.append(cat[d["category_id"]])
        scores.append(float(score))
        if masks:
            h, w = sizes[d["image_id"]]
            rle = segmentation_rle(d.get("segmentation"), h, w, path, where)
            rles.setdefault(by_id[d["image_id"]], []).append(rle)
    out: dict[str, dict[str, Any]] = {
        key: box_sample(b, lab, None, f"{path} (image {key})", s) for key, (b, lab, s) in rows.items()
    }
    if masks:
        for key, sample in out.items():
            sample["segmentation"] = rles[key]
    return out


def write_coco_results(
    path: str | Path,
    predictions: Mapping[str, Mapping[str, Any]],
    gt_path: str | Path,
    classes: Sequence[str] | None = None,
) -> Path:
    """Write predictions (``bbox_xyxy`` or corners, ``label``, ``score``) as a COCO results file, atomically.

    Image and category ids are taken from ``gt_path`` by file stem and class name. Predictions
    carrying ``segmentation`` (one compressed RLE dict per detection, as ``read_coco`` and
    ``evaluation.detection.masks_to_rle`` make them) get it written too (``counts`` as text).
    """
    gt_path = Path(gt_path)
    gt = _gt(gt_path)
    classes = coco_classes(gt_path) if classes is None else classes
    _, by_key = _images(gt, gt_path)
    cat = _categories(gt, classes, gt_path)
    cat_of_label = {v: k for k, v in cat.items()}
    out: list[dict[str, Any]] = []
    for key, s in predictions.items():
        if key not in by_key:
            raise ValueError(f"prediction for image {key!r}, which is not in {gt_path}")
        if "bbox_xyxy" in s:
            b = torch.as_tensor(s["bbox_xyxy"]).double().reshape(-1, 4).numpy()
        else:
            p = torch.as_tensor(s["bbox_xyxyxyxy"]).double().reshape(-1, 4, 2).numpy()
            b = np.concatenate([p.min(1), p.max(1)], 1)
        rles = s.get("segmentation")
        if rles is not None and len(rles) != len(b):
            raise ValueError(f"predictions for {key}: {len(rles)} segmentations for {len(b)} boxes")
        for k, ((x1, y1, x2, y2), lab, sc) in enumerate(
            zip(
                b.tolist(),
                torch.as_tensor(s["label"]).reshape(-1).tolist(),
                torch.as_tensor(s["score"]).reshape(-1).tolist(),
                strict=True,
            )
        ):
            if lab not in cat_of_label:
                raise ValueError(f"predictions for {key}: label {lab} has no category in {gt_path}")
            out.append(
                {
                    "image_id": by_key[key],
                    "category_id": cat_of_label[lab],
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(float(sc), 6),
                }
            )
            if rles is not None:
                counts = rles[k]["counts"]
                out[-1]["segmentation"] = {
                    "size": [int(v) for v in rles[k]["size"]],
                    "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
                }
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(out), encoding="utf-8")
    return path
