#!/usr/bin/env python3
"""Seeded fake LoveDA in the on-disk layout torchgeo 0.8.1's ``LoveDA`` reads.

``Train.zip`` / ``Val.zip`` / ``Test.zip`` extract to::

    <root>/{Train,Val}/{Urban,Rural}/images_png/<N>.png   RGB image
    <root>/{Train,Val}/{Urban,Rural}/masks_png/<N>.png    8-bit class ids: 0 = no-data, 1 = background,
                                                          2 building, 3 road, 4 water, 5 barren,
                                                          6 forest, 7 agriculture
    <root>/Test/{Urban,Rural}/images_png/<N>.png          (no public masks)

(real tiles are 1024 x 1024 and numbered across both scenes; these are small). Masks are blocks
of classes with a no-data strip along one edge; each class has its own mean colour, so the
image predicts the mask.

Run ``python tests/data/loveda/data.py OUT`` to write it into ``OUT``; the tests call
:func:`write` into a temporary folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

PER_SCENE = {"Train": 2, "Val": 1, "Test": 1}
NUM_VALUES = 8  # 0 (no-data) .. 7 (agriculture)


def write(root: Path, size: int = 64, seed: int = 0) -> Path:
    """Write the fake dataset under ``root`` (created) and return ``root``."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(NUM_VALUES, 3))
    index = 0
    for split, n in PER_SCENE.items():
        for scene in ("Urban", "Rural"):
            images = root / split / scene / "images_png"
            images.mkdir(parents=True, exist_ok=True)
            if split != "Test":
                (root / split / scene / "masks_png").mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                block = size // 4
                coarse = rng.integers(1, NUM_VALUES, size=(4, 4))
                mask = np.kron(coarse, np.ones((block, block), np.int64))[:size, :size]
                mask[:, : size // 16] = 0  # a no-data strip
                noise = rng.integers(-20, 21, size=(size, size, 3))
                image = np.clip(colours[mask] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(image, "RGB").save(images / f"{index}.png")
                if split != "Test":
                    Image.fromarray(mask.astype(np.uint8), "L").save(
                        root / split / scene / "masks_png" / f"{index}.png"
                    )
                index += 1
    return root


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "LoveDA")
