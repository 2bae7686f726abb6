"""Mask, scene-classification (folders + torchgeo layouts) and change-pair builders."""

from __future__ import annotations

import re

import numpy as np
import pytest
import rasterio
import yaml
from _corpus_helpers import answer, by_task, question, records, tile_origin
from affine import Affine
from PIL import Image

from vitp_geo.instruct.builders import (
    ChangeSource,
    ClassFolderSource,
    MaskSource,
    TorchGeoSource,
    build_corpus,
)
from vitp_geo.instruct.records import denormalize_box, parse_boxes
from vitp_geo.io.raster import write_geotiff
from vitp_geo.synthetic.scene import (
    CLASS_NAMES,
    generate_change_pair,
    generate_scene,
    write_change_pair,
    write_scene,
)

T = Affine(2.0, 0, 500_000.0, 0, -2.0, 5_000_000.0)


def test_mask_area_shares_dominant_and_regions(tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    mask[:32, :32] = 1  # building fills the top-left quadrant: 25 %
    mask[40:, :] = 3  # water: bottom 24 rows: 37.5 %
    write_geotiff(tmp_path / "img.tif", np.full((3, 64, 64), 100, np.uint8), T, "EPSG:32633")
    write_geotiff(tmp_path / "mask.tif", mask[None], T, "EPSG:32633")
    (tmp_path / "names.yaml").write_text(
        yaml.safe_dump({0: "background", 1: "building", 2: "road", 3: "water"})
    )
    out = tmp_path / "c"
    build_corpus(
        out,
        [MaskSource(tmp_path / "img.tif", tmp_path / "mask.tif", tmp_path / "names.yaml", tile_size=64)],
        seed=0,
    )
    (share,) = by_task(out, "area_share")
    assert answer(share) == "background: 38%, water: 38%, building: 25%."  # ties keep class order
    (classes,) = by_task(out, "classes")  # present classes in id order, background never named
    assert answer(classes) == "building and water."
    assert not by_task(out, "dominant")  # water and background tie: no dominant question
    for rec in by_task(out, "presence"):
        cls = "road" if "road" in question(rec) else None
        assert (answer(rec).startswith("No")) == (cls == "road")
    # Regions over several seeds: the answers follow the mask.
    truth = {
        "top-left quadrant": "building.",
        "top-right quadrant": "None.",
        "bottom-left quadrant": "water.",
        "bottom-right quadrant": "water.",
        "top half": "building.",
        "bottom half": "water.",
        "left half": "building and water.",
        "right half": "water.",
        "center": "building and water.",
    }
    seen = 0
    for seed in range(8):
        o = tmp_path / f"s{seed}"
        build_corpus(
            o,
            [MaskSource(tmp_path / "img.tif", tmp_path / "mask.tif", tmp_path / "names.yaml", tile_size=64)],
            seed=seed,
        )
        (rec,) = by_task(o, "region")
        region = next(r for r in truth if r in question(rec))
        assert answer(rec) == truth[region], region
        seen += 1
    assert seen == 8


def test_mask_dominant_class_and_unknown_values(tmp_path):
    scene = generate_scene(4, 64, scene_class=2)  # lakeside
    paths = write_scene(scene, tmp_path / "s")
    out = tmp_path / "c"
    build_corpus(out, [MaskSource(paths.image, paths.mask, dict(enumerate(CLASS_NAMES)), tile_size=64)])
    (dom,) = by_task(out, "dominant") or [None]
    with rasterio.open(paths.image) as src:  # a one-tile scene: the tile is the whole scene
        assert dom is not None and dom.extra["origin"]["bounds"] == pytest.approx(list(src.bounds))
    counts = np.bincount(scene.mask.ravel(), minlength=len(CLASS_NAMES))
    expected = CLASS_NAMES[int(np.argmax(counts))]
    assert dom is not None and answer(dom) in (expected, "water body" if expected == "water" else expected)
    with pytest.raises(ValueError, match=r"class value\(s\) \[3\]"):
        build_corpus(
            tmp_path / "bad",
            [MaskSource(paths.image, paths.mask, {0: "bg", 1: "b", 2: "r", 4: "f"}, tile_size=64)],
        )
    assert not (tmp_path / "bad").exists()


def test_class_folders_give_shuffled_multiple_choice_and_open_questions(tmp_path):
    root = tmp_path / "scenes"
    for i in range(6):
        scene = generate_scene(i, 32, scene_class=i % 3)
        from vitp_geo.synthetic.scene import SCENE_CLASSES

        write_geotiff(
            root / SCENE_CLASSES[scene.scene_class] / f"s{i}.tif", scene.image, scene.transform, scene.crs
        )
    out = tmp_path / "c"
    build_corpus(out, [ClassFolderSource(root)], seed=0)
    recs = by_task(out, "classification")
    assert len(recs) == 12
    letters = []
    for rec in recs:
        truth = rec.images[0].split("/")[-2]
        q = question(rec)
        if "A." in q:
            options = dict(re.findall(r"^([A-D])\. (.+)$", q, re.M))
            assert options[answer(rec)] == truth and len(options) == 3
            letters.append(answer(rec))
        else:
            assert answer(rec) == truth
    assert len(set(letters)) >= 2  # the right option is not always in the same place


def _fake_eurosat(root):
    base = root / "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"
    names = []
    rng = np.random.default_rng(0)
    for cls in ("AnnualCrop", "Forest", "River"):
        for k in range(2):
            name = f"{cls}_{k}.tif"
            data = rng.integers(500, 3000, (13, 16, 16)).astype(np.uint16)
            write_geotiff(base / cls / name, data, T, "EPSG:32633")
            names.append(name.replace(".tif", ".jpg"))
    (root / "eurosat-train.txt").write_text("\n".join(names[::2]) + "\n")  # the split holds every other file
    return names


@pytest.mark.slow  # importing torchgeo.datasets takes ~10 s on 2 cores
def test_torchgeo_eurosat_layout_renders_rgb_bands(tmp_path):
    pytest.importorskip("torchgeo")
    _fake_eurosat(tmp_path / "eurosat")
    out = tmp_path / "c"
    build_corpus(out, [TorchGeoSource("EuroSAT", tmp_path / "eurosat")])
    recs = records(out)
    assert len(recs) == 6 and {r.modality for r in recs} == {"multispectral"}
    assert {r.images[0].split("/")[-2] for r in recs} == {"AnnualCrop", "Forest", "River"}
    opens = [r for r in recs if "A." not in question(r)]
    assert sorted(answer(r) for r in opens) == ["AnnualCrop", "Forest", "River"]
    assert Image.open(out / recs[0].images[0]).mode == "RGB"


@pytest.mark.parametrize(
    "name,layout,suffix",
    [("UCMerced", "UCMerced_LandUse/Images", ".tif"), ("RESISC45", "NWPU-RESISC45", ".jpg")],
)
def test_torchgeo_ucmerced_and_resisc45_layouts(tmp_path, name, layout, suffix):
    pytest.importorskip("torchgeo")
    root = tmp_path / name
    files = []
    for cls in ("airplane", "beach", "golf_course"):
        (root / layout / cls).mkdir(parents=True)
        img = Image.fromarray(np.full((8, 8, 3), 20 * len(cls), np.uint8))
        img.save(root / layout / cls / f"{cls}00{suffix}")
        files.append(f"{cls}00{suffix}")
    split = "uc_merced-train.txt" if name == "UCMerced" else "resisc45-train.txt"
    (root / split).write_text("\n".join(files) + "\n")
    out = tmp_path / "c"
    build_corpus(out, [TorchGeoSource(name, root)])
    opens = [r for r in records(out) if "A." not in question(r)]
    assert sorted(answer(r) for r in opens) == ["airplane", "beach", "golf course"]


def test_torchgeo_missing_dataset_names_the_root(tmp_path):
    pytest.importorskip("torchgeo")
    with pytest.raises(FileNotFoundError, match="EuroSAT.*nowhere"):
        build_corpus(tmp_path / "c", [TorchGeoSource("EuroSAT", tmp_path / "nowhere")])
    assert not (tmp_path / "c").exists()


def test_torchgeo_missing_split_file_says_what_to_do_without_download(tmp_path):
    pytest.importorskip("torchgeo")
    _fake_eurosat(tmp_path / "eurosat")
    (tmp_path / "eurosat" / "eurosat-train.txt").unlink()
    with pytest.raises(FileNotFoundError) as info:
        build_corpus(tmp_path / "c", [TorchGeoSource("EuroSAT", tmp_path / "eurosat")])
    msg = str(info.value)
    assert str(tmp_path / "eurosat" / "eurosat-train.txt") in msg  # names the missing file
    assert "image folder" not in msg  # the images are there: only the split file is missing
    assert "use `download=True`" not in msg  # torchgeo's advice: the CLI has no such option
    assert "--root" in msg
    assert not (tmp_path / "c").exists()


def test_change_pairs_two_images_boxes_and_area(tmp_path):
    pair = generate_change_pair(11, 96)
    b, a, c = write_change_pair(pair, tmp_path / "p")
    out = tmp_path / "c"
    build_corpus(out, [ChangeSource(b, a, c, tile_size=48)])
    recs = records(out)
    assert all(len(r.images) == 2 and question(r).count("<image>") == 2 for r in recs)
    for r in recs:  # one origin per image: the same window of the before and the after scene
        before, after = r.extra["origin"]
        row, col = tile_origin(r.images[0])
        assert (before["scene"], after["scene"]) == (str(b), str(a))
        assert before["window"] == after["window"] == [col, row, 48, 48]
        assert before["bounds"] == after["bounds"]
    yesno = {tile_origin(r.images[0]): answer(r).startswith("Yes") for r in by_task(out, "change_yesno")}
    for (row, col), changed in yesno.items():
        assert changed == bool(pair.change_mask[row : row + 48, col : col + 48].any())
    assert any(yesno.values())
    for rec in by_task(out, "change_area"):
        row, col = tile_origin(rec.images[0])
        n = int(pair.change_mask[row : row + 48, col : col + 48].sum())
        m2 = float(re.search(r"About ([\d.,]+) m²", answer(rec)).group(1).replace(",", ""))
        assert m2 == pytest.approx(n * 0.25, abs=0.51)  # 0.5 m pixels
        pct = float(re.search(r"([\d.]+)% of the image", answer(rec)).group(1))
        assert pct == pytest.approx(100 * n / 48**2, abs=0.05)
    for rec in by_task(out, "change_where"):
        row, col = tile_origin(rec.images[0])
        tile = pair.change_mask[row : row + 48, col : col + 48].astype(bool)
        covered = np.zeros_like(tile)
        for bx in parse_boxes(answer(rec)):
            x1, y1, x2, y2 = (int(round(v)) for v in denormalize_box(bx, 48, 48))
            assert tile[y1:y2, x1:x2].any()  # every box holds changed pixels
            covered[y1:y2, x1:x2] = True
        assert covered[tile].mean() > 0.95  # and the boxes cover the change


def test_classes_question_is_skipped_when_a_class_is_ambiguously_small(tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    mask[:32, :32] = 1
    mask[63, 63] = 2  # one road pixel: 0.02 %, between absent and min_share (0.5 %)
    write_geotiff(tmp_path / "img.tif", np.full((3, 64, 64), 100, np.uint8), T, "EPSG:32633")
    write_geotiff(tmp_path / "mask.tif", mask[None], T, "EPSG:32633")
    (tmp_path / "names.yaml").write_text(yaml.safe_dump({0: "background", 1: "building", 2: "road"}))
    out = tmp_path / "c"
    build_corpus(
        out,
        [MaskSource(tmp_path / "img.tif", tmp_path / "mask.tif", tmp_path / "names.yaml", tile_size=64)],
        seed=0,
    )
    assert not by_task(out, "classes")
    assert by_task(out, "area_share")  # the other mask questions are still asked
