#!/usr/bin/env python3
"""Seeded generator of a tiny COCO detection tree (run it to rewrite the files here).

    annotations/instances_train.json   train/000001.jpg ...

Category ids are deliberately not 0..C-1 (SARDet-100K / SSDD exports start at 1, others skip),
one image has no annotations and one annotation is ``iscrowd``. The truth is ``objects()``; the
JSON is built here from plain dicts, independently of the readers under test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
CATEGORIES = [{"id": 3, "name": "ship"}, {"id": 1, "name": "aircraft"}, {"id": 7, "name": "car"}]


def objects() -> dict[str, dict[str, list]]:
    """``{image stem: {"boxes" (xywh), "names", "crowd"}}``."""
    rng = np.random.default_rng(2)
    out: dict[str, dict[str, list]] = {}
    for image, n in [("000001", 3), ("000002", 0), ("000003", 4)]:
        xy = rng.integers(0, 40, (n, 2))
        wh = rng.integers(3, 20, (n, 2))
        out[image] = {
            "boxes": [
                [float(a), float(b), float(c), float(d)] for (a, b), (c, d) in zip(xy, wh, strict=True)
            ],
            "names": [CATEGORIES[int(i)]["name"] for i in rng.integers(0, 3, n)],
            "crowd": [image == "000003" and k == 0 for k in range(n)],
        }
    return out


def main(root: Path = HERE) -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "train").mkdir(parents=True, exist_ok=True)
    cat_id = {c["name"]: c["id"] for c in CATEGORIES}
    images, annotations = [], []
    for k, (image, obj) in enumerate(objects().items()):
        pixels = np.full(
            (64, 64, 3), np.random.default_rng(k).integers(0, 255, 3), np.uint8
        )  # flat colour: small files
        Image.fromarray(pixels).save(root / "train" / f"{image}.jpg", quality=80)
        images.append({"id": 100 + k, "file_name": f"{image}.jpg", "width": 64, "height": 64})
        for b, name, crowd in zip(obj["boxes"], obj["names"], obj["crowd"], strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 100 + k,
                    "category_id": cat_id[name],
                    "bbox": b,
                    "area": b[2] * b[3],
                    "iscrowd": int(crowd),
                    "segmentation": [],
                }
            )
    data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
