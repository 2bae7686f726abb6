"""Catalogue sources (lists, CSV pairs, STAC assets), change pairs, and detections merged across scenes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import shapely
from affine import Affine
from catalogue_helpers import read, write_scenes, write_stac_catalog
from tiny_checkpoints import save_tiny_checkpoint

from vitp_geo.catalogue.outputs import write_detection_mosaics
from vitp_geo.catalogue.sources import read_source
from vitp_geo.cli.main import main
from vitp_geo.io.qgis_styles import ClassStyle, write_styled_gpkg
from vitp_geo.io.raster import write_geotiff

CRS = "EPSG:32633"
STYLE = ClassStyle(["building", "tank"], [(220, 20, 60), (30, 144, 255)])


def test_sources_name_the_bad_line_key_or_column(tmp_path: Path) -> None:
    scenes = write_scenes(tmp_path / "s", 2, (40, 40))
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two scenes\n{scenes[0]}\n\ns/scene_1.tif\ns/missing.tif\n")
    with pytest.raises(FileNotFoundError, match=r"list.txt, line 5: scene not found: s/missing.tif"):
        read_source(listing)
    listing.write_text(f"{scenes[0]}\ns/scene_1.tif\n")
    assert [(t.scene_id, t.scene.resolve()) for t in read_source(listing)] == [
        ("scene_0", scenes[0].resolve()),
        ("scene_1", scenes[1].resolve()),
    ]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("before,later\ns/scene_0.tif,s/scene_1.tif\n")
    with pytest.raises(ValueError, match=r"pairs.csv: a pairs CSV needs 'before' and 'after' columns"):
        read_source(pairs)
    catalog = write_stac_catalog(tmp_path, scenes, asset="visual")
    with pytest.raises(ValueError, match=r"no asset 'red' \(--asset\); its assets: thumbnail, visual"):
        read_source(catalog, asset="red")
    # default asset: the first GeoTIFF, not the PNG thumbnail listed before it
    assert [t.scene.resolve() for t in read_source(catalog)] == [p.resolve() for p in scenes]
    (tmp_path / "dup" / "a").mkdir(parents=True)
    for sub in ("dup", "dup/a"):
        (tmp_path / sub / "x.tif").write_bytes(scenes[0].read_bytes())
    assert [t.scene_id for t in read_source(tmp_path / "dup")] == ["a_x", "x"]  # sub-folders keep ids apart
    with pytest.raises(ValueError, match="two scenes get the id 'x'"):
        read_source(str(tmp_path / "dup" / "**" / "*.tif"))


def test_change_pairs_from_a_csv_equal_infer_with_after(tmp_path: Path) -> None:
    ckpt = save_tiny_checkpoint(tmp_path / "change.ckpt", task="change", tile_size=112)
    before = write_scenes(tmp_path / "before", 2, (130, 120))
    after = write_scenes(tmp_path / "after", 2, (130, 120), gap=10)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "id,before,after\n" + "".join(f"p{i},before/scene_{i}.tif,after/scene_{i}.tif\n" for i in range(2))
    )
    args = ["--checkpoint", str(ckpt), "--no-progress"]
    assert main(["infer-catalog", str(pairs), "--out-dir", str(tmp_path / "run"), *args]) == 0
    for i in range(2):
        alone = tmp_path / f"alone_{i}.tif"
        assert main(["infer", str(before[i]), "--after", str(after[i]), "--out", str(alone), *args]) == 0
        np.testing.assert_array_equal(
            read(tmp_path / "run" / "scenes" / f"p{i}" / "class_map.tif"), read(alone)
        )
    # single scenes are refused for a change model, before anything is written
    assert main(["infer-catalog", str(tmp_path / "before"), "--out-dir", str(tmp_path / "bad"), *args]) == 2
    assert not (tmp_path / "bad").exists()


def _scene_grid(path: Path, col0: int, width: int, height: int = 100) -> Path:
    t = Affine(1.0, 0, 500000.0 + col0, 0, -1.0, 5000000.0)
    return write_geotiff(path, np.zeros((3, height, width), np.uint8), t, CRS)


def _boxes(path: Path, boxes: list[tuple[float, float, float, float, float, int]]) -> Path:
    """Boxes (x1, y1, x2, y2 in mosaic pixels, score, class) as a scene's detection GeoPackage."""
    geoms = [
        shapely.box(500000.0 + x1, 5000000.0 - y2, 500000.0 + x2, 5000000.0 - y1)
        for x1, y1, x2, y2, _, _ in boxes
    ]
    frame = gpd.GeoDataFrame(
        {
            "class_id": np.asarray([b[5] for b in boxes], np.int32),
            "class_name": [STYLE.names[b[5]] for b in boxes],
            "score": [b[4] for b in boxes],
            "area": [g.area for g in geoms],
        },
        geometry=gpd.GeoSeries(geoms, crs=CRS),
        crs=CRS,
    )
    return write_styled_gpkg(path, frame, STYLE)


def test_detections_of_overlapping_scenes_merge_by_the_window_rule(tmp_path: Path) -> None:
    # scene A covers mosaic columns 0-120, scene B 100-220: 20 columns seen by both
    a, b = _scene_grid(tmp_path / "a.tif", 0, 120), _scene_grid(tmp_path / "b.tif", 100, 120)
    det_a = _boxes(
        tmp_path / "a.gpkg",
        [
            (80, 10, 120, 30, 0.7, 0),  # a building cut by A's right edge ...
            (104, 50, 116, 60, 0.9, 1),  # a tank inside the overlap, seen whole by both
            (10, 70, 20, 80, 0.6, 0),  # only in A
        ],
    )
    det_b = _boxes(
        tmp_path / "b.gpkg",
        [
            (100, 10, 150, 30, 0.8, 0),  # ... and its other part, cut by B's left edge
            (104, 51, 116, 60, 0.5, 1),  # the same tank, lower score
        ],
    )
    (gpkg,) = write_detection_mosaics(tmp_path, [(det_a, a), (det_b, b)], STYLE, 0.5, horizontal=True)
    merged = gpd.read_file(gpkg, layer=gpkg.stem).sort_values("score", ascending=False)
    got = [(tuple(np.round(np.asarray(g.bounds) - [500000, 5000000, 500000, 5000000], 6)), s, c)
           for g, s, c in zip(merged.geometry, merged["score"], merged["class_name"], strict=True)]  # fmt: skip
    assert got == [
        ((104.0, -60.0, 116.0, -50.0), 0.9, "tank"),  # NMS kept the better of the two views
        ((80.0, -30.0, 150.0, -10.0), 0.8, "building"),  # the two cut parts joined into one box
        ((10.0, -80.0, 20.0, -70.0), 0.6, "building"),
    ]
    assert merged.crs == CRS


def test_detection_catalogue_writes_infer_boxes_per_scene_and_one_merged_layer(tmp_path: Path) -> None:
    ckpt = save_tiny_checkpoint(
        tmp_path / "det.ckpt", task="detection", num_classes=1, class_names=["building"]
    )
    scenes = write_scenes(tmp_path / "s", 2, (130, 120), gap=-40)  # 40 columns seen by both scenes
    args = ["--checkpoint", str(ckpt), "--min-score", "0", "--no-progress"]
    assert main(["infer-catalog", str(tmp_path / "s"), "--out-dir", str(tmp_path / "run"), *args]) == 0
    per_scene = []
    for s in scenes:
        assert main(["infer", str(s), "--vector", str(tmp_path / f"{s.stem}.gpkg"), *args]) == 0
        alone = gpd.read_file(tmp_path / f"{s.stem}.gpkg", layer=s.stem)
        got = gpd.read_file(tmp_path / "run" / "scenes" / s.stem / "detections.gpkg", layer="detections")
        assert len(alone) > 0 and got.geometry.geom_equals_exact(alone.geometry, 1e-9).all()
        np.testing.assert_array_equal(got["score"], alone["score"])
        per_scene.append(got)
    merged = gpd.read_file(
        tmp_path / "run" / "mosaics" / "detections_epsg32633.gpkg", layer="detections_epsg32633"
    )
    # the overlap's duplicates are merged away; boxes away from the overlap pass unchanged
    assert 0 < len(merged) < sum(len(f) for f in per_scene)
    assert merged["score"].max() == max(f["score"].max() for f in per_scene)


def test_help_and_bad_arguments_answer_without_torch_or_ray(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from vitp_geo.cli.main import main\n"
        "try:\n    main(['infer-catalog', '--help'])\nexcept SystemExit:\n    pass\n"
        f"rc = main(['infer-catalog', {str(tmp_path / 'nowhere')!r}, '--checkpoint', 'x.ckpt', '--out-dir', 'o', '--workers', '0'])\n"
        "print(rc, 'torch' in sys.modules, 'ray' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip().splitlines()[-1] == "2 False False", res.stderr[-2000:]
    assert "--workers must be >= 1, got 0" in res.stderr


def test_change_pairs_from_two_assets_of_each_stac_item(tmp_path: Path) -> None:
    before = write_scenes(tmp_path / "before", 2, (40, 40))
    after = write_scenes(tmp_path / "after", 2, (40, 40))
    catalog = write_stac_catalog(tmp_path, before, asset="before")
    cat = pystac.read_file(str(catalog))
    for item, a in zip(sorted(cat.get_items(), key=lambda i: i.id), after, strict=True):
        item.add_asset("after", pystac.Asset(href=str(a.resolve()), media_type=pystac.MediaType.GEOTIFF))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    tasks = read_source(catalog, asset="before", after_asset="after")
    assert [(t.scene.resolve(), t.after.resolve() if t.after else None) for t in tasks] == [
        (b.resolve(), a.resolve()) for b, a in zip(before, after, strict=True)
    ]
    assert all(t.item_href and Path(t.item_href).is_file() for t in tasks)
    with pytest.raises(ValueError, match=r"no asset 'later' \(--after-asset\)"):
        read_source(catalog, asset="before", after_asset="later")
