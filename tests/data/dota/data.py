#!/usr/bin/env python3
"""Seeded generator of a tiny DOTA tree in the real on-disk layout (run it to rewrite the files here).

    DOTA-v1.0/train/images/P0000.png   DOTA-v1.0/train/labelTxt/P0000.txt   (integer corners)
    DOTA-v2.0/val/images/P0003.png     DOTA-v2.0/val/labelTxt/P0003.txt     (float corners)

v1.0 files start with ``imagesource:`` / ``gsd:`` lines, v2.0 files with ``acquisition dates:``
as well; one image has no objects (empty label file), some objects are difficult, class names
carry hyphens, and one v2.0 object is degenerate (all corners on a line). The truth the files
encode is ``objects()``; the text is written here with plain string formatting, independently of
the readers under test.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
V1 = ["plane", "small-vehicle", "large-vehicle", "storage-tank", "helicopter", "ground-track-field"]
V2 = ["container-crane", "airport", "helipad", "small-vehicle", "plane"]


def _rect(rng: np.random.Generator, size: int) -> list[float]:
    cx, cy = rng.uniform(20, size - 20, 2)
    w, h = rng.uniform(6, 30), rng.uniform(4, 16)
    a = rng.uniform(-math.pi, math.pi)
    u = np.array([math.cos(a), math.sin(a)]) * w / 2
    v = np.array([-math.sin(a), math.cos(a)]) * h / 2
    c = np.array([cx, cy])
    return np.concatenate([c - u - v, c + u - v, c + u + v, c - u + v]).tolist()


def objects() -> dict[str, dict[str, list]]:
    """``{"<version>/<split>/<image>": {"polys", "names", "difficult", "header"}}``."""
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, list]] = {}
    for image, n in [("P0000", 5), ("P0001", 3), ("P0002", 0)]:
        polys = [[float(round(v)) for v in _rect(rng, 128)] for _ in range(n)]
        names = [V1[int(i)] for i in rng.integers(0, len(V1), n)]
        out[f"DOTA-v1.0/train/{image}"] = {
            "polys": polys,
            "names": names,
            "difficult": [bool(d) for d in rng.random(n) < 0.3],
            "header": ["imagesource:GoogleEarth", "gsd:0.146343590398"],
        }
    for image, n in [("P0003", 6)]:
        polys = [[round(v, 1) for v in _rect(rng, 128)] for _ in range(n)]
        polys[-1] = [10.0, 10.0, 20.0, 10.0, 30.0, 10.0, 15.0, 10.0]  # degenerate: zero area
        names = [V2[i % len(V2)] for i in range(n)]
        out[f"DOTA-v2.0/val/{image}"] = {
            "polys": polys,
            "names": names,
            "difficult": [i == 1 for i in range(n)],
            "header": ["acquisition dates:2016-08-19", "imagesource:GF2", "gsd:0.8"],
        }
    return out


def _num(v: float, integer: bool) -> str:
    return str(int(v)) if integer else f"{v:.1f}"


def main(root: Path = HERE) -> None:
    for key, obj in objects().items():
        version, split, image = key.split("/")
        base = root / version / split
        (base / "images").mkdir(parents=True, exist_ok=True)
        (base / "labelTxt").mkdir(parents=True, exist_ok=True)
        seed = int(image[1:])
        pixels = np.full(
            (128, 128, 3), np.random.default_rng(seed).integers(0, 255, 3), np.uint8
        )  # flat colour: small files
        Image.fromarray(pixels).save(base / "images" / f"{image}.png")
        lines = list(obj["header"])
        integer = version == "DOTA-v1.0"
        for p, name, d in zip(obj["polys"], obj["names"], obj["difficult"], strict=True):
            lines.append(" ".join(_num(v, integer) for v in p) + f" {name} {int(d)}")
        (base / "labelTxt" / f"{image}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
