"""DOTA-style splitting of large images into patches, and merging patch detections back.

Splitting follows the DOTA devkit's ``ImgSplit`` (``subsize`` 1024, ``gap`` 200 as used for
DOTA in the ViTP / mmrotate configs, so neighbouring patches overlap by 200 px):

* patch origins step by ``subsize - gap`` along each axis; the last patch is shifted inward so it
  ends on the image edge (``vitp_geo.tiling.planner.axis_offsets``: the devkit's rule); images
  smaller than a patch give one patch, zero-padded to ``subsize`` (``padding=True``);
* each patch is ``<image>__<rate>__<left>___<up>`` (``P0000__1.0__824___0.png``) with a labelTxt
  file of the same name;
* an object is written to a patch by the share of its area inside the patch
  (``iof = area(object ∩ patch) / area(object)``):

  - ``iof == 1``: unchanged (shifted to patch coordinates), original difficult flag;
  - ``0.7 < iof < 1`` (``thresh``): clipped to the patch, original flag;
  - ``0 < iof <= 0.7``: clipped to the patch, flag ``2`` (a remnant; the reader maps it to
    ``difficult``);

  a clipped outline with five corners loses its shortest edge (its two ends merge into their
  midpoint), one with fewer than four or more than five corners is dropped, the four corners are
  cycled to best fit the original's order, and clipped coordinates are clamped to ``[1, subsize]``.

Merging parses the offsets from the patch names, shifts the boxes back and merges them by the one
cross-window rule of ``vitp_geo.tiling.box_merge`` (the rule of scene inference too): boxes cut
by an inner patch edge are joined with the neighbouring patches' parts of the same object, then,
divided by the rate, class-wise rotated NMS over each full image at the checkpoint's final NMS
threshold (None: 0.1 for oriented boxes, the papers' final rotated NMS; 0.5 for horizontal).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from shapely.geometry import Polygon, box
from shapely.geometry.polygon import orient
from torch import Tensor
from tqdm.auto import tqdm

from vitp_geo.io.annotations import read_dota_label, read_task_results, write_dota_label, write_task_results
from vitp_geo.io.atomic import atomic_output
from vitp_geo.tiling.box_merge import JoinedBoxes, join_cut_boxes, nms_joined, nms_threshold
from vitp_geo.tiling.planner import axis_offsets

__all__ = [
    "PatchName",
    "clip_objects",
    "merge_patch_detections",
    "merge_task_results",
    "parse_patch_name",
    "patch_name",
    "patch_origins",
    "split_dataset",
    "split_image",
]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(?P<image>.+)__(?P<rate>\d+(?:\.\d+)?)__(?P<left>-?\d+)___(?P<up>-?\d+)$")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class PatchName:
    """The parts of ``<image>__<rate>__<left>___<up>``."""

    image: str
    rate: float
    left: int
    up: int


def patch_name(image: str, rate: float, left: int, up: int) -> str:
    """``<image>__<rate>__<left>___<up>`` (the rate as ``1.0``, ``0.5``; the devkit writes ``1``)."""
    return f"{image}__{float(rate)}__{left}___{up}"


def parse_patch_name(name: str) -> PatchName:
    """Split a patch name; both ``__1__`` (devkit) and ``__1.0__`` (mmrotate) rates are read."""
    m = _NAME.match(name)
    if m is None:
        raise ValueError(f"not a DOTA patch name <image>__<rate>__<left>___<up>: {name!r}")
    return PatchName(m["image"], float(m["rate"]), int(m["left"]), int(m["up"]))


def patch_origins(width: int, height: int, subsize: int = 1024, gap: int = 200) -> list[tuple[int, int]]:
    """``(left, up)`` of every patch, column by column like the devkit.

    Args:
        width, height: image size in pixels.
        subsize: patch side.
        gap: overlap of neighbouring patches (``0 <= gap < subsize``).
    """
    if not 0 <= gap < subsize:
        raise ValueError(f"need 0 <= gap < subsize, got gap={gap}, subsize={subsize}")
    xs = axis_offsets(width, subsize, subsize - gap)
    ys = axis_offsets(height, subsize, subsize - gap)
    return [(x, y) for x in xs for y in ys]


def _poly4_from_poly5(p: np.ndarray) -> np.ndarray:
    """(5, 2) → (4, 2): the two ends of the shortest edge merge into their midpoint."""
    d = np.linalg.norm(p - np.roll(p, -1, 0), axis=1)
    k = int(d.argmin())
    out = []
    for i in range(5):
        if i == k:
            out.append((p[k] + p[(k + 1) % 5]) / 2)
        elif i != (k + 1) % 5:
            out.append(p[i])
    return np.asarray(out)


def _best_order(p: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The cyclic shift of (4, 2) ``p`` closest to ``ref``'s corner order."""
    shifts = [np.roll(p, -k, 0) for k in range(4)]
    return min(shifts, key=lambda q: float(np.linalg.norm(q - ref, axis=1).sum()))


def clip_objects(
    polys: np.ndarray,
    flags: np.ndarray,
    left: int,
    up: int,
    right: int,
    down: int,
    thresh: float = 0.7,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The objects of one patch by the devkit's rule (see the module docstring).

    Args:
        polys: (N, 8) polygons in image coordinates (already scaled by the rate).
        flags: (N,) difficult flags (0 / 1).
        left, up, right, down: the patch in image coordinates (``right``/``down`` exclusive).
        thresh: share of an object inside the patch above which it keeps its own flag.

    Returns:
        ``(polys (K, 8) in patch coordinates, flags (K,) 0 / 1 / 2, index (K,) of the source object)``.
    """
    size = max(right - left, down - up)
    window = box(left, up, right, down)
    out_p, out_f, out_i = [], [], []
    for i, (p, f) in enumerate(zip(np.asarray(polys, np.float64).reshape(-1, 4, 2), flags, strict=True)):
        obj = Polygon(p)
        if not obj.is_valid or obj.area <= 0:
            continue
        inter = obj.intersection(window)
        iof = inter.area / obj.area
        if iof <= 0:
            continue
        if iof >= 1 - 1e-12:
            out_p.append(p - (left, up))
            out_f.append(int(f))
            out_i.append(i)
            continue
        if inter.geom_type != "Polygon":
            continue
        corners = np.asarray(orient(inter, sign=1).exterior.coords)[:-1]
        if len(corners) == 5:
            corners = _poly4_from_poly5(corners)
        if len(corners) != 4:
            continue
        corners = _best_order(corners, p) - (left, up)
        out_p.append(np.clip(corners, 1, size))
        out_f.append(int(f) if iof > thresh else 2)
        out_i.append(i)
    if not out_p:
        return np.zeros((0, 8)), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.stack(out_p).reshape(-1, 8), np.asarray(out_f, np.int64), np.asarray(out_i, np.int64)


def _open_image(path: Path) -> Image.Image:
    Image.MAX_IMAGE_PIXELS = None  # DOTA images reach 20000 x 20000 px: not a decompression bomb
    try:
        return Image.open(path)
    except OSError as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


def split_image(
    image_path: str | Path,
    label_path: str | Path | None,
    out_dir: str | Path,
    classes: Sequence[str],
    *,
    subsize: int = 1024,
    gap: int = 200,
    rate: float = 1.0,
    thresh: float = 0.7,
    padding: bool = True,
    ext: str = ".png",
) -> list[str]:
    """Cut one image (and its labelTxt, if given) into patches under ``out_dir/images`` and ``out_dir/labelTxt``.

    Args:
        image_path: the image.
        label_path: its labelTxt file, or None (test images: patches only).
        out_dir: output root.
        classes: class names (labels are written by name).
        subsize: patch side in pixels.
        gap: overlap of neighbouring patches in pixels.
        rate: resize factor applied first (multi-scale splits use 0.5, 1.0, 1.5).
        thresh: the devkit's 0.7 (see the module docstring).
        padding: pad patches at the image border to ``subsize``.
        ext: patch image suffix.

    Returns:
        The patch names written.
    """
    image_path, out_dir = Path(image_path), Path(out_dir)
    if not rate > 0 or not math.isfinite(rate):
        raise ValueError(f"rate must be > 0, got {rate}")
    img = _open_image(image_path)
    if rate != 1:
        img = img.resize((round(img.width * rate), round(img.height * rate)), Image.Resampling.BICUBIC)
    if label_path is not None:
        s = read_dota_label(label_path, classes)
        polys = s["bbox_xyxyxyxy"].double().numpy() * rate
        flags = s["difficult"].numpy().astype(np.int64)
        labels = s["label"].numpy()
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    if label_path is not None:
        (out_dir / "labelTxt").mkdir(parents=True, exist_ok=True)
    names = []
    for left, up in patch_origins(img.width, img.height, subsize, gap):
        right, down = min(left + subsize, img.width), min(up + subsize, img.height)
        name = patch_name(image_path.stem, rate, left, up)
        patch = img.crop((left, up, right, down))
        if padding and patch.size != (subsize, subsize):
            full = Image.new(patch.mode, (subsize, subsize))
            full.paste(patch, (0, 0))
            patch = full
        with atomic_output(out_dir / "images" / f"{name}{ext}") as tmp:
            patch.save(tmp, format=Image.registered_extensions().get(ext.lower()))
        if label_path is not None:
            p, f, idx = clip_objects(polys, flags, left, up, right, down, thresh)
            sample = {
                "bbox_xyxyxyxy": torch.as_tensor(p),
                "label": torch.as_tensor(labels[idx]),
                "difficult": torch.as_tensor(f > 0),
            }
            write_dota_label(out_dir / "labelTxt" / f"{name}.txt", sample, classes, flags=f.tolist())
        names.append(name)
    return names


def split_dataset(
    src: str | Path,
    out_dir: str | Path,
    classes: Sequence[str],
    *,
    subsize: int = 1024,
    gap: int = 200,
    rates: Sequence[float] = (1.0,),
    thresh: float = 0.7,
    padding: bool = True,
    ext: str = ".png",
    progress: bool = True,
) -> list[str]:
    """Split every image of a DOTA split folder (``src/images`` + optional ``src/labelTxt``).

    Images without a label file are split without labels (the DOTA test set). Returns the
    patch names.
    """
    src = Path(src)
    images = sorted(p for p in (src / "images").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images in {src / 'images'}")
    labels = src / "labelTxt"
    names: list[str] = []
    jobs = [(img, r) for img in images for r in rates]
    for img, r in tqdm(jobs, disable=not progress, unit="image", desc="split"):
        lab = labels / f"{img.stem}.txt"
        names += split_image(
            img,
            lab if lab.is_file() else None,
            out_dir,
            classes,
            subsize=subsize,
            gap=gap,
            rate=r,
            thresh=thresh,
            padding=padding,
            ext=ext,
        )
    return names


def merge_patch_detections(
    predictions: Mapping[str, Mapping[str, Tensor]],
    iou_threshold: float | None = None,
    *,
    subsize: int = 1024,
    edge_margin: float = 1.0,
) -> dict[str, dict[str, Tensor]]:
    """Patch detections → full-image detections by the one cross-window rule (``tiling.box_merge``).

    The offsets and rate come from the patch names; per image and rate, boxes cut by an inner patch
    edge are joined with the neighbouring patches' parts of the same object (an object larger than
    ``gap`` comes back whole); then coordinates are divided by the rate and class-wise rotated NMS
    runs over each full image.

    Args:
        predictions: patch name → ``bbox_xyxyxyxy`` (N, 8) or ``bbox_xyxy`` (N, 4), ``label``,
            ``score`` in patch pixels.
        iou_threshold: the merge (NMS) threshold: the checkpoint's final NMS IoU
            (``box_merge.card_nms_threshold(card.arch)``); None: the detectors' default, 0.1 for
            oriented boxes (the ViTP / mmrotate DOTA configs), 0.5 when every patch gives
            horizontal boxes only.
        subsize: the patch side the patches were cut with (``split_image``).
        edge_margin: pixels from an inner patch edge within which a box counts as cut.

    Returns:
        image name → ``bbox_xyxyxyxy``, ``bbox_xyxy``, ``label``, ``score`` of the kept detections.
    """
    if subsize < 1:
        raise ValueError(f"subsize must be >= 1, got {subsize}")
    horizontal_only = all("bbox_xyxyxyxy" not in s for s in predictions.values())
    thr = nms_threshold("hbb" if horizontal_only else "obb", iou_threshold)
    # (image, rate) → per patch (left, up, corners (N, 4, 2), labels, scores, horizontal)
    gathered: dict[str, dict[float, list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray, bool]]]] = {}
    for name, s in predictions.items():
        pn = parse_patch_name(name)
        horizontal = "bbox_xyxyxyxy" not in s
        if not horizontal:
            poly = torch.as_tensor(s["bbox_xyxyxyxy"]).double().reshape(-1, 8).numpy()
        else:
            x1, y1, x2, y2 = torch.as_tensor(s["bbox_xyxy"]).double().reshape(-1, 4).numpy().T
            poly = np.stack([x1, y1, x2, y1, x2, y2, x1, y2], 1)
        lab = torch.as_tensor(s["label"]).reshape(-1).numpy().astype(np.int64)
        sc = torch.as_tensor(s["score"]).double().reshape(-1).numpy()
        if not len(poly) == len(lab) == len(sc):
            raise ValueError(f"patch {name}: {len(poly)} boxes, {len(lab)} labels and {len(sc)} scores")
        entry = (pn.left, pn.up, poly.reshape(-1, 4, 2), lab, sc, horizontal)
        gathered.setdefault(pn.image, {}).setdefault(pn.rate, []).append(entry)
    out: dict[str, dict[str, Tensor]] = {}
    for image, rates in gathered.items():
        parts = []
        for rate, patches in rates.items():
            width = max(p[0] for p in patches) + subsize  # the last patch ends on the image edge
            height = max(p[1] for p in patches) + subsize
            joined = join_cut_boxes(
                np.concatenate([p[2] + (p[0], p[1]) for p in patches]),
                np.concatenate([p[4] for p in patches]),
                np.concatenate([p[3] for p in patches]),
                np.concatenate([np.full(len(p[3]), k) for k, p in enumerate(patches)]),
                np.asarray([(p[1], p[0], subsize, subsize) for p in patches], np.float64),
                height,
                width,
                thr,
                horizontal=np.concatenate([np.full(len(p[3]), p[5]) for p in patches]),
                edge_margin=edge_margin,
            )
            joined.polys = joined.polys / rate
            joined.obb = np.concatenate([joined.obb[:, :4] / rate, joined.obb[:, 4:]], 1)
            parts.append(joined)
        kept = nms_joined(JoinedBoxes.concat(parts), thr)
        order = np.argsort(-kept.scores, kind="stable")  # by descending score, as NMS returns them
        polys = torch.as_tensor(kept.polys[order])
        out[image] = {
            "bbox_xyxyxyxy": polys.reshape(-1, 8).float(),
            "bbox_xyxy": torch.cat([polys.amin(1), polys.amax(1)], 1).float(),
            "label": torch.as_tensor(kept.labels[order]),
            "score": torch.as_tensor(kept.scores[order]).float(),
        }
    return out


def merge_task_results(
    src: str | Path,
    dst: str | Path,
    classes: Sequence[str],
    iou_threshold: float | None = None,
    *,
    subsize: int = 1024,
) -> list[Path]:
    """Merge a folder of patch-level ``Task1_<class>.txt`` files into full-image ones (the DOTA
    server's input) by ``merge_patch_detections``. Task2 (horizontal) input gives Task2 output."""
    preds = read_task_results(src, classes)
    task = 2 if any(Path(src).glob("Task2_*.txt")) else 1
    merged = merge_patch_detections(preds, iou_threshold, subsize=subsize)
    return write_task_results(dst, merged, classes, task=task)
