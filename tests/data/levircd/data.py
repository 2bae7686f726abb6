#!/usr/bin/env python3
"""Seeded fake LEVIR-CD in the on-disk layout torchgeo 0.8.1's ``LEVIRCD`` reads.

torchgeo's ``train.zip`` / ``val.zip`` / ``test.zip`` all extract into the same three folders
under the root, the split being the file-name prefix::

    <root>/A/{train,val,test}_<N>.png      before image, RGB
    <root>/B/{train,val,test}_<N>.png      after image, RGB
    <root>/label/{train,val,test}_<N>.png  change mask, 8-bit grey: 0 = unchanged, 255 = changed

(the real tiles are 1024 x 1024; these are small). Each pair gets a few "new buildings": bright
rectangles present in B only, and marked 255 in the label, so a model can learn from it.

Run ``python tests/data/levircd/data.py OUT`` to write it into ``OUT``; the tests call
:func:`write` into a temporary folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = {"train": 3, "val": 2, "test": 1}


def write(root: Path, size: int = 64, seed: int = 0) -> Path:
    """Write the fake dataset under ``root`` (created) and return ``root``."""
    rng = np.random.default_rng(seed)
    for sub in ("A", "B", "label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for split, n in SPLITS.items():
        for i in range(1, n + 1):  # LEVIR-CD numbers its tiles from 1
            before = rng.integers(40, 120, size=(size, size, 3), dtype=np.uint8)
            after = np.clip(before.astype(np.int16) + rng.integers(-8, 9, size=before.shape), 0, 255)
            after = after.astype(np.uint8)
            label = np.zeros((size, size), np.uint8)
            for _ in range(3):
                h, w = rng.integers(size // 8, size // 3, size=2)
                y, x = rng.integers(0, size - h), rng.integers(0, size - w)
                after[y : y + h, x : x + w] = rng.integers(180, 256, size=3, dtype=np.uint8)
                label[y : y + h, x : x + w] = 255
            name = f"{split}_{i}.png"
            Image.fromarray(before, "RGB").save(root / "A" / name)
            Image.fromarray(after, "RGB").save(root / "B" / name)
            Image.fromarray(label, "L").save(root / "label" / name)
    return root


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "LEVIR-CD")
