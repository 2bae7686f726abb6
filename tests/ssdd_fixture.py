"""A miniature SSDD in the layout the reference reads (mmdet ``CocoDataset``, ``vitp_ssdd_orcnn.py``):
``JPEGImages/*.jpg`` and ``Annotations/{trainval,test}.json``, one class ``ship``, objects as
COCO ``segmentation`` polygons with their ``bbox``, ``area`` and ``iscrowd``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# per split: image stem → ship polygons (x, y pairs, pixels)
SHIPS: dict[str, dict[str, list[list[float]]]] = {
    "trainval": {
        "000001": [[10, 12, 40, 20, 37, 30, 7, 22], [50, 40, 70, 40, 70, 52, 60, 58, 50, 52]],
        "000002": [[20, 8, 30, 8, 30, 50, 20, 50]],
    },
    "test": {"000003": [[12, 30, 60, 10, 64, 20, 16, 40]]},
}
SIZE = (64, 80)  # height, width


def write_ssdd(root: Path) -> Path:
    """Write the fixture under ``root`` (ships brighter than the sea, so the pixels match the labels)."""
    from PIL import ImageDraw

    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    h, w = SIZE
    next_image, next_ann = 1, 1
    for split, images in SHIPS.items():
        data: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "ship"}]}
        for stem, polys in images.items():
            canvas = Image.fromarray(rng.integers(0, 60, (h, w), dtype=np.uint8)).convert("RGB")
            draw = ImageDraw.Draw(canvas)
            for p in polys:
                draw.polygon([(p[i], p[i + 1]) for i in range(0, len(p), 2)], fill=(220, 220, 220))
            canvas.save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
            data["images"].append({"id": next_image, "file_name": f"{stem}.jpg", "height": h, "width": w})
            for p in polys:
                xs, ys = p[0::2], p[1::2]
                x0, y0 = min(xs), min(ys)
                data["annotations"].append(
                    {
                        "id": next_ann,
                        "image_id": next_image,
                        "category_id": 1,
                        "bbox": [x0, y0, max(xs) - x0, max(ys) - y0],
                        "area": 0.5 * abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))),
                        "iscrowd": 0,
                        "segmentation": [p],
                    }
                )
                next_ann += 1
            next_image += 1
        (root / "Annotations" / f"{split}.json").write_text(json.dumps(data))
    return root
