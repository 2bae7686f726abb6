#!/usr/bin/env python3
"""Seeded generator of a tiny DIOR / DIOR-R tree in the datasets' real layout (run it to rewrite).

    JPEGImages-trainval/00001.jpg ...  JPEGImages-test/00004.jpg ...
    Annotations/Horizontal Bounding Boxes/00001.xml ...   (VOC <bndbox>)
    Annotations/Oriented Bounding Boxes/00001.xml ...     (DIOR-R <robndbox> corners + <angle>)
    ImageSets/Main/train.txt  val.txt  test.txt

Names are spelled as in the dataset (``Expressway-Service-area``); image 00003 has no objects.
The truth is ``objects()``; the XML is written here with string templates, independently of the
readers under test.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
NAMES = ["airplane", "Expressway-Service-area", "storagetank", "vehicle", "windmill", "golffield"]
SPLITS = {"train": ["00001", "00002"], "val": ["00003"], "test": ["00004"]}


def objects() -> dict[str, dict[str, list]]:
    """``{image: {"boxes" (hbb), "polys" (obb corners lt, rt, rb, lb), "names", "difficult"}}``."""
    rng = np.random.default_rng(1)
    out: dict[str, dict[str, list]] = {}
    for image, n in [("00001", 4), ("00002", 2), ("00003", 0), ("00004", 3)]:
        polys, boxes = [], []
        for _ in range(n):
            cx, cy = (float(v) for v in rng.integers(20, 44, 2))
            w, h = float(rng.integers(6, 20)), float(rng.integers(4, 10))
            a = float(rng.uniform(-0.6, 0.6))
            u = np.array([math.cos(a), math.sin(a)]) * w / 2
            v = np.array([-math.sin(a), math.cos(a)]) * h / 2
            c = np.array([cx, cy])
            p = np.round(np.concatenate([c - u - v, c + u - v, c + u + v, c - u + v]), 1)
            polys.append(p.tolist())
            boxes.append(
                [
                    float(np.floor(p[0::2].min())),
                    float(np.floor(p[1::2].min())),
                    float(np.ceil(p[0::2].max())),
                    float(np.ceil(p[1::2].max())),
                ]
            )
        out[image] = {
            "boxes": boxes,
            "polys": polys,
            "names": [NAMES[int(i)] for i in rng.integers(0, len(NAMES), n)],
            "difficult": [False] * n,
        }
    return out


HBB = """<annotation>
  <filename>{image}.jpg</filename>
  <source>
    <database>DIOR</database>
  </source>
  <size>
    <width>64</width>
    <height>64</height>
    <depth>3</depth>
  </size>
  <segmented>0</segmented>
{objects}</annotation>
"""
HBB_OBJECT = """  <object>
    <name>{name}</name>
    <pose>Unspecified</pose>
    <bndbox>
      <xmin>{b[0]:.0f}</xmin>
      <ymin>{b[1]:.0f}</ymin>
      <xmax>{b[2]:.0f}</xmax>
      <ymax>{b[3]:.0f}</ymax>
    </bndbox>
  </object>
"""
OBB_OBJECT = """  <object>
    <type>robndbox</type>
    <name>{name}</name>
    <pose>Unspecified</pose>
    <truncated>0</truncated>
    <difficult>0</difficult>
    <robndbox>
      <x_left_top>{p[0]}</x_left_top>
      <y_left_top>{p[1]}</y_left_top>
      <x_right_top>{p[2]}</x_right_top>
      <y_right_top>{p[3]}</y_right_top>
      <x_right_bottom>{p[4]}</x_right_bottom>
      <y_right_bottom>{p[5]}</y_right_bottom>
      <x_left_bottom>{p[6]}</x_left_bottom>
      <y_left_bottom>{p[7]}</y_left_bottom>
    </robndbox>
    <angle>{angle:.0f}</angle>
  </object>
"""


def main(root: Path = HERE) -> None:
    hbb_dir = root / "Annotations" / "Horizontal Bounding Boxes"
    obb_dir = root / "Annotations" / "Oriented Bounding Boxes"
    sets = root / "ImageSets" / "Main"
    for d in (hbb_dir, obb_dir, sets, root / "JPEGImages-trainval", root / "JPEGImages-test"):
        d.mkdir(parents=True, exist_ok=True)
    for split, ids in SPLITS.items():
        (sets / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    for image, obj in objects().items():
        folder = "JPEGImages-test" if image in SPLITS["test"] else "JPEGImages-trainval"
        pixels = np.full(
            (64, 64, 3), np.random.default_rng(int(image)).integers(0, 255, 3), np.uint8
        )  # flat colour: small files
        Image.fromarray(pixels).save(root / folder / f"{image}.jpg", quality=80)
        hbb = "".join(HBB_OBJECT.format(name=n, b=b) for n, b in zip(obj["names"], obj["boxes"], strict=True))
        obb = "".join(
            OBB_OBJECT.format(name=n, p=p, angle=math.degrees(math.atan2(p[3] - p[1], p[2] - p[0])))
            for n, p in zip(obj["names"], obj["polys"], strict=True)
        )
        (hbb_dir / f"{image}.xml").write_text(HBB.format(image=image, objects=hbb))
        (obb_dir / f"{image}.xml").write_text(HBB.format(image=image, objects=obb))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
