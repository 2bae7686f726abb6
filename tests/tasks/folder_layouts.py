"""Tiny iSAID, UAVid, WHU-CD, S2Looking and SVCD roots in the layouts their configs read.

The layouts are the ones the ViTP reference reads them in (mmsegmentation / open-cd; torchgeo
0.8.1 has none of these five): file names, folder names, label suffixes and label encodings as the
datasets ship or as their converter writes them.

* iSAID (mmseg's ``tools/convert_datasets/isaid.py`` output): ``img_dir/{train,val}/P0000_0_896_0_896.png``
  and ``ann_dir/{train,val}/P0000_0_896_0_896_instance_color_RGB.png``, palette PNGs of class ids
  0-15;
* UAVid (mmseg layout): ``img_dir/{train,val}/seq1_000000.png``, ``ann_dir/{train,val}/seq1_000000.png``
  with class ids 0-7;
* WHU-CD-256 (open-cd): ``A/``, ``B/``, ``label/`` (0 / 255 PNG) and ``list/{train,val,test}.txt``;
* S2Looking: ``{train,val}/{Image1,Image2,label}`` (0 / 255 PNG);
* SVCD (CDD ``Real/subset``): ``{train,val}/{A,B,OUT}``, JPEG images and JPEG labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64


def _rgb(rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def _classes(rng: np.random.Generator, n: int) -> np.ndarray:
    """A class-id map with every id 0..n-1 present (blocks of 8 px)."""
    ids = np.arange(64) % n
    rng.shuffle(ids)
    return np.kron(ids.reshape(8, 8), np.ones((8, 8), dtype=np.int64)).astype(np.uint8)


def _change(rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    y, x = rng.integers(0, SIZE - 24, 2)
    mask[y : y + 24, x : x + 20] = 255
    return mask


def write_isaid(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", 2), ("val", 1)):
        for i in range(n):
            stem = f"P{i:04d}_0_896_0_896"
            (root / "img_dir" / split).mkdir(parents=True, exist_ok=True)
            (root / "ann_dir" / split).mkdir(parents=True, exist_ok=True)
            _rgb(rng).save(root / "img_dir" / split / f"{stem}.png")
            label = Image.frombytes("P", (SIZE, SIZE), _classes(rng, 16).tobytes())
            label.putpalette([v for i in range(16) for v in (0, 16 * i, 255 - 16 * i)])
            label.save(root / "ann_dir" / split / f"{stem}_instance_color_RGB.png")
    return root


def write_uavid(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", 2), ("val", 1)):
        for i in range(n):
            (root / "img_dir" / split).mkdir(parents=True, exist_ok=True)
            (root / "ann_dir" / split).mkdir(parents=True, exist_ok=True)
            _rgb(rng).save(root / "img_dir" / split / f"seq{i + 1}_000000.png")
            Image.fromarray(_classes(rng, 8)).save(root / "ann_dir" / split / f"seq{i + 1}_000000.png")
    return root


def write_whu(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for sub in ("A", "B", "label", "list"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = [f"whucd_{i:05d}.png" for i in range(1, 5)]
    for name in names:
        _rgb(rng).save(root / "A" / name)
        _rgb(rng).save(root / "B" / name)
        Image.fromarray(_change(rng)).save(root / "label" / name)
    for split, part in (("train", names[:2]), ("val", names[2:3]), ("test", names[3:])):
        (root / "list" / f"{split}.txt").write_text("".join(f"{n}\n" for n in part))
    return root


def write_s2looking(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", 2), ("val", 1)):
        for sub in ("Image1", "Image2", "label"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _rgb(rng).save(root / split / "Image1" / f"{i}.png")
            _rgb(rng).save(root / split / "Image2" / f"{i}.png")
            Image.fromarray(_change(rng)).save(root / split / "label" / f"{i}.png")
    return root


def write_svcd(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", 2), ("val", 1)):
        for sub in ("A", "B", "OUT"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _rgb(rng).save(root / split / "A" / f"{i:05d}.jpg", quality=90)
            _rgb(rng).save(root / split / "B" / f"{i:05d}.jpg", quality=90)
            Image.fromarray(_change(rng)).save(root / split / "OUT" / f"{i:05d}.jpg", quality=90)
    return root


WRITERS = {
    "segmentation/isaid": write_isaid,
    "segmentation/uavid": write_uavid,
    "change/whu": write_whu,
    "change/s2looking": write_s2looking,
    "change/svcd": write_svcd,
}
# Validation samples each fixture holds (the datamodule must find exactly these).
VAL_SAMPLES = {
    "segmentation/isaid": 1,
    "segmentation/uavid": 1,
    "change/whu": 1,
    "change/s2looking": 1,
    "change/svcd": 1,
}
