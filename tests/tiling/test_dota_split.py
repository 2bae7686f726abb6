"""DOTA devkit-style splitting into 1024 px patches (200 px gap) and merging patch detections back."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shapely.geometry import Polygon

from vitp_geo.geometry.obb import obb_to_poly
from vitp_geo.io.annotations import DOTA_V1_CLASSES, read_dota_label, read_task_results, write_task_results
from vitp_geo.tiling.dota_split import (
    merge_patch_detections,
    merge_task_results,
    parse_patch_name,
    patch_name,
    patch_origins,
    split_dataset,
)

W, H = 2000, 1500


def rect(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    return [x1, y1, x2, y1, x2, y2, x1, y2]


# a rotated square whose right corner pokes 30 px past the first patch's right edge (x = 1024)
DIAMOND = obb_to_poly(torch.tensor([[994.0, 300.0, 60.0, 60.0, math.pi / 4]], dtype=torch.float64))[
    0
].tolist()
OBJECTS = [
    (rect(100, 100, 140, 120), "plane", 0),  # inside the first patch only
    (rect(1000, 500, 1060, 520), "ship", 0),  # 24 of 60 px inside the first patch: a remnant there
    (rect(1004, 600, 1030, 610), "harbor", 1),  # 20 of 26 px inside the first patch (77 %)
    (DIAMOND, "small-vehicle", 0),
    (rect(1900, 1400, 1950, 1450), "bridge", 0),  # bottom-right corner of the image
]


@pytest.fixture
def dota_src(tmp_path: Path) -> Path:
    src = tmp_path / "train"
    (src / "images").mkdir(parents=True)
    (src / "labelTxt").mkdir()
    yy, xx = np.mgrid[0:H, 0:W]
    pixels = np.stack([xx % 256, yy % 256, (xx // 256 + 8 * (yy // 256)) % 256], -1).astype(np.uint8)
    Image.fromarray(pixels).save(src / "images" / "P9999.png")
    lines = ["imagesource:GoogleEarth", "gsd:0.5"]
    lines += [" ".join(f"{v:.3f}" for v in p) + f" {n} {d}" for p, n, d in OBJECTS]
    (src / "labelTxt" / "P9999.txt").write_text("\n".join(lines) + "\n")
    return src


def test_patch_origins_follow_the_devkit_stride_and_end_on_the_edge() -> None:
    assert patch_origins(W, H) == [(0, 0), (0, 476), (824, 0), (824, 476), (976, 0), (976, 476)]
    assert patch_origins(1848, 500) == [(0, 0), (824, 0)]  # second patch ends exactly on the edge
    assert patch_origins(600, 700) == [(0, 0)]
    with pytest.raises(ValueError, match="gap"):
        patch_origins(W, H, 1024, 1024)


def test_patch_names_round_trip() -> None:
    assert patch_name("P0000", 1.0, 824, 0) == "P0000__1.0__824___0"
    assert parse_patch_name("P0000__1.0__824___0") == parse_patch_name("P0000__1__824___0")  # devkit spelling
    p = parse_patch_name("P0706_x__0.5__0___412")
    assert (p.image, p.rate, p.left, p.up) == ("P0706_x", 0.5, 0, 412)
    with pytest.raises(ValueError, match="not a DOTA patch name"):
        parse_patch_name("P0000_824_0")


def _objects(path: Path) -> list[tuple[list[float], str, int]]:
    rows = []
    for line in path.read_text().splitlines():
        t = line.split()
        rows.append(([float(v) for v in t[:8]], t[8], int(t[9])))
    return rows


def test_split_writes_the_devkit_layout_and_cut_objects_by_its_rule(dota_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "split"
    names = split_dataset(dota_src, out, DOTA_V1_CLASSES, progress=False)
    assert sorted(names) == sorted(f"P9999__1.0__{x}___{y}" for x, y in patch_origins(W, H))
    assert sorted(p.stem for p in (out / "images").glob("*.png")) == sorted(names)
    assert sorted(p.stem for p in (out / "labelTxt").glob("*.txt")) == sorted(names)
    src = np.asarray(Image.open(dota_src / "images" / "P9999.png"))
    patch = np.asarray(Image.open(out / "images" / "P9999__1.0__824___476.png"))
    assert patch.shape == (1024, 1024, 3)
    np.testing.assert_array_equal(patch, src[476:1500, 824:1848])
    first = {n: (p, d) for p, n, d in _objects(out / "labelTxt" / "P9999__1.0__0___0.txt")}
    assert first["plane"] == (rect(100, 100, 140, 120), 0)  # whole: unchanged, own flag
    p, d = first["ship"]  # 40 % inside: clipped, flag 2
    assert d == 2 and sorted(set(p[0::2])) == [1000, 1024] and sorted(set(p[1::2])) == [500, 520]
    p, d = first["harbor"]  # 77 % inside: clipped, keeps its own (difficult) flag
    assert d == 1 and max(p[0::2]) == 1024
    # the diamond's clipped outline is a pentagon; its shortest edge (the 24.9 px cut along x = 1024)
    # merges into its midpoint (1024, 300): a 4-corner outline, 96 % of the diamond inside: flag 0
    p, d = first["small-vehicle"]
    r = 30 * math.sqrt(2)
    want = [(994, 300 - r), (1024, 300), (994, 300 + r), (994 - r, 300)]
    got = [tuple(q) for q in np.asarray(p).reshape(4, 2)]
    k = min(range(4), key=lambda k: np.abs(np.roll(np.asarray(got), -k, 0) - np.asarray(want)).sum())
    np.testing.assert_allclose(np.roll(np.asarray(got), -k, 0), want, atol=2e-3)
    assert d == 0
    assert "bridge" not in first
    # the neighbouring patch sees the ship whole, shifted by its offset
    second = {n: (p, d) for p, n, d in _objects(out / "labelTxt" / "P9999__1.0__824___0.txt")}
    assert second["ship"] == (rect(1000 - 824, 500, 1060 - 824, 520), 0)
    corner = {n: (p, d) for p, n, d in _objects(out / "labelTxt" / "P9999__1.0__976___476.txt")}
    assert corner["bridge"] == (rect(1900 - 976, 1400 - 476, 1950 - 976, 1450 - 476), 0)
    # the reader takes the split's flag 2 as difficult
    s = read_dota_label(out / "labelTxt" / "P9999__1.0__0___0.txt", DOTA_V1_CLASSES)
    assert s["difficult"][s["label"] == DOTA_V1_CLASSES.index("ship")].tolist() == [True]


def test_small_image_is_padded_and_rate_scales(tmp_path: Path) -> None:
    src = tmp_path / "test"
    (src / "images").mkdir(parents=True)
    Image.fromarray(np.full((300, 500, 3), 200, np.uint8)).save(src / "images" / "P0001.png")
    names = split_dataset(src, tmp_path / "out", DOTA_V1_CLASSES, rates=(0.5, 1.0), progress=False)
    assert sorted(names) == ["P0001__0.5__0___0", "P0001__1.0__0___0"]
    img = np.asarray(Image.open(tmp_path / "out" / "images" / "P0001__0.5__0___0.png"))
    assert img.shape == (1024, 1024, 3) and (img[:150, :250] == 200).all() and (img[150:, :] == 0).all()
    assert not (tmp_path / "out" / "labelTxt").exists()  # no labels in, no labels out


def test_merge_patch_detections_back_to_the_full_image(dota_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "split"
    split_dataset(dota_src, out, DOTA_V1_CLASSES, progress=False)
    preds = {}
    for f in sorted((out / "labelTxt").glob("*.txt")):
        s = read_dota_label(f, DOTA_V1_CLASSES)
        cut = ((s["bbox_xyxyxyxy"] <= 1) | (s["bbox_xyxyxyxy"] >= 1024)).any(1)
        # "detections": what each patch sees; outlines cut by a patch edge score lower than whole views
        preds[f.stem] = {
            "bbox_xyxyxyxy": s["bbox_xyxyxyxy"],
            "label": s["label"],
            "score": torch.where(cut, 0.3, 0.9),
        }
    merged = merge_patch_detections(preds, iou_threshold=0.1)
    assert list(merged) == ["P9999"]
    m = merged["P9999"]
    assert sorted(DOTA_V1_CLASSES[i] for i in m["label"].tolist()) == sorted(n for _, n, _ in OBJECTS)
    for poly, name, _ in OBJECTS:
        k = m["label"].tolist().index(DOTA_V1_CLASSES.index(name))
        got = Polygon(m["bbox_xyxyxyxy"][k].reshape(4, 2).tolist())
        want = Polygon(np.asarray(poly).reshape(4, 2))
        assert got.intersection(want).area / got.union(want).area > 0.999, name
    # the same through Task1 files, rate 0.5 coordinates scaled back
    half = {
        k.replace("__1.0__", "__0.5__"): {**v, "bbox_xyxyxyxy": v["bbox_xyxyxyxy"] * 0.5}
        for k, v in preds.items()
    }
    for k in list(half):  # offsets in a 0.5 split are in the resized image: halve them too
        pn = parse_patch_name(k)
        half[patch_name(pn.image, 0.5, pn.left // 2, pn.up // 2)] = half.pop(k)
    write_task_results(tmp_path / "patches", half, DOTA_V1_CLASSES)
    merge_task_results(tmp_path / "patches", tmp_path / "merged", DOTA_V1_CLASSES, 0.1)
    back = read_task_results(tmp_path / "merged", DOTA_V1_CLASSES)["P9999"]
    assert sorted(back["label"].tolist()) == sorted(m["label"].tolist())
    np.testing.assert_allclose(
        np.sort(back["bbox_xyxy"].numpy(), 0), np.sort(m["bbox_xyxy"].numpy(), 0), atol=0.02
    )
