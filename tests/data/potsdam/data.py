#!/usr/bin/env python3
"""Seeded fake ISPRS Potsdam in the on-disk layout torchgeo 0.8.1's ``Potsdam2D`` reads.

The ISPRS archives ``4_Ortho_RGBIR.zip`` (a folder) and ``5_Labels_all.zip`` (flat files)
extract to::

    <root>/4_Ortho_RGBIR/top_potsdam_<r>_<c>_RGBIR.tif   4-band uint8 GeoTIFF: R, G, B, IR (EPSG:32633, 5 cm)
    <root>/top_potsdam_<r>_<c>_label.tif                  3-band uint8 TIFF, one ISPRS colour per class

Label colours, in torchgeo's class order (index = the class id torchgeo returns): clutter /
background (255, 0, 0), impervious surfaces (255, 255, 255), building (0, 0, 255), low
vegetation (0, 255, 255), tree (0, 255, 0), car (255, 255, 0). Tiles are named from torchgeo's
own split lists (train: 2_10, 2_11, 3_10; test: 5_15, 6_15); the real ones are 6000 x 6000, these
are small (600 x 600 by default, not a multiple of a 512 crop). With ``archives=True`` only the
two zip files are written, as downloaded, and torchgeo extracts them on first use.

Run ``python tests/data/potsdam/data.py OUT`` to write it into ``OUT``; the tests call
:func:`write` into a temporary folder.
"""

from __future__ import annotations

import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

COLOURS = ((255, 0, 0), (255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0))
TRAIN = ("top_potsdam_2_10", "top_potsdam_2_11", "top_potsdam_3_10")
TEST = ("top_potsdam_5_15", "top_potsdam_6_15")


def write(root: Path, size: int = 600, seed: int = 0, archives: bool = False) -> Path:
    """Write the fake dataset under ``root`` (created) and return ``root``."""
    rng = np.random.default_rng(seed)
    means = rng.integers(30, 226, size=(len(COLOURS), 4))  # (class, band) mean R, G, B, IR
    (root / "4_Ortho_RGBIR").mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, str]] = []
    for k, name in enumerate(TRAIN + TEST):
        block = size // 6
        coarse = rng.integers(0, len(COLOURS), size=(7, 7))
        classes = np.kron(coarse, np.ones((block, block), np.int64))[:size, :size]  # (H, W)
        noise = rng.integers(-4, 5, size=(4, size, size))
        image = np.clip(means[classes].transpose(2, 0, 1) + noise, 0, 255).astype(np.uint8)  # (4, H, W)
        label = np.asarray(COLOURS, np.uint8)[classes].transpose(2, 0, 1)  # (3, H, W)
        image_path = root / "4_Ortho_RGBIR" / f"{name}_RGBIR.tif"
        with rasterio.open(
            image_path,
            "w",
            driver="GTiff",
            dtype="uint8",
            count=4,
            height=size,
            width=size,
            crs="EPSG:32633",
            transform=Affine(0.05, 0.0, 366976.5 + 300 * k, 0.0, -0.05, 5808562.6),
            compress="lzw",
        ) as dst:
            dst.write(image)
        label_path = root / f"{name}_label.tif"
        with warnings.catch_warnings():  # the label tiles carry no georeferencing
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(
                label_path,
                "w",
                driver="GTiff",
                dtype="uint8",
                count=3,
                height=size,
                width=size,
                compress="lzw",
            ) as dst:
                dst.write(label)
        written += [(image_path, f"4_Ortho_RGBIR/{image_path.name}"), (label_path, label_path.name)]
    if archives:
        for archive, folder in (("4_Ortho_RGBIR.zip", True), ("5_Labels_all.zip", False)):
            with zipfile.ZipFile(root / archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for path, member in written:
                    if member.startswith("4_Ortho_RGBIR/") == folder:
                        zf.write(path, member)
        for path, _ in written:
            path.unlink()
        (root / "4_Ortho_RGBIR").rmdir()
    return root


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "Potsdam")
