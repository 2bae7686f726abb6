"""Vector-label builder on seeded generated scenes: counts, boxes, edge rule, reprojection, repairs."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from _corpus_helpers import answer, by_task, question, records, tile_origin
from affine import Affine
from shapely.geometry import Polygon, box

from vitp_geo.instruct.builders import VectorSource, build_corpus
from vitp_geo.instruct.builders.vector import quad_corners
from vitp_geo.instruct.records import denormalize_box, parse_boxes
from vitp_geo.io.raster import write_geotiff
from vitp_geo.io.vector import write_objects
from vitp_geo.synthetic.scene import generate_scene, write_scene

TILE = 64


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory):
    scene = generate_scene(7, 128, scene_class=0)  # residential: many buildings
    paths = write_scene(scene, tmp_path_factory.mktemp("scene"))
    return scene, paths


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _pixel_polygons(scene, cls: str) -> list[Polygon]:
    inv = ~scene.transform
    return [
        Polygon([inv @ p for p in o["geometry"].exterior.coords])
        for o in scene.objects
        if o["class_name"] == cls
    ]


def test_counts_and_boxes_match_the_generated_buildings(tmp_path, scene_files):
    scene, paths = scene_files
    out = tmp_path / "corpus"
    build_corpus(
        out,
        [
            VectorSource(
                paths.image,
                paths.objects,
                class_field="class_name",
                tile_size=TILE,
                overlap=0.0,
                min_visible=0.5,
            )
        ],
    )
    buildings = _pixel_polygons(scene, "building")
    counted = 0
    for rec in by_task(out, "counting"):
        if "building" not in question(rec):
            continue
        row, col = tile_origin(rec.images[0])
        tile = box(col, row, col + TILE, row + TILE)
        expected = sum(1 for b in buildings if b.intersection(tile).area / b.area >= 0.5)
        assert int(answer(rec)) == expected
        counted += 1
    assert counted >= 3
    for rec in by_task(out, "grounding"):
        if "<ref>building</ref>" not in answer(rec):
            continue
        row, col = tile_origin(rec.images[0])
        tile = box(col, row, col + TILE, row + TILE)
        truth = [b.intersection(tile).bounds for b in buildings if b.intersection(tile).area / b.area >= 0.5]
        got = [denormalize_box(bx, TILE, TILE) for bx in parse_boxes(answer(rec))]
        assert len(got) == len(truth)
        for g in got:
            g_map = (g[0] + col, g[1] + row, g[2] + col, g[3] + row)
            assert max(_iou(g_map, t) for t in truth) >= 0.9


def test_edge_cut_objects_follow_the_min_visible_rule(tmp_path):
    # 100×100 raster, tiles of 50 without overlap. Object A: 70 % in tile (0,0); B: 30 % in tile (0,0).
    transform = Affine(1.0, 0, 1000.0, 0, -1.0, 2000.0)
    img = np.full((3, 100, 100), 120, np.uint8)
    write_geotiff(tmp_path / "img.tif", img, transform, "EPSG:32633")

    def poly(x0, y0, x1, y1):  # pixel box → map polygon
        return box(*(transform @ (x0, y1)), *(transform @ (x1, y0)))

    objs = [
        {"class_name": "tank", "geometry": poly(30, 10, 60, 20)},  # 20/30 ≈ 0.67 in tile (0, 0)
        {"class_name": "tank", "geometry": poly(41, 30, 71, 40)},  # 9/30 = 0.3 in tile (0, 0), 0.7 in (0, 50)
    ]
    write_objects(tmp_path / "objs.gpkg", objs, "EPSG:32633")
    out = tmp_path / "c"
    build_corpus(out, [VectorSource(tmp_path / "img.tif", tmp_path / "objs.gpkg", tile_size=50, overlap=0.0)])
    counts = {tile_origin(r.images[0]): int(answer(r)) for r in by_task(out, "counting")}
    # A: 0.67 in (0, 0), 0.33 in (0, 50); B: 0.3 in (0, 0), 0.7 in (0, 50) → one object per tile.
    assert counts == {(0, 0): 1, (0, 50): 1}
    ground = {tile_origin(r.images[0]): parse_boxes(answer(r)) for r in by_task(out, "grounding")}
    # Tile (0, 0): only A, clipped at x = 50 → x from 30 to 50 of 50 px → 600..1000.
    assert ground[(0, 0)] == [[600, 200, 1000, 400]]
    # Tile (0, 50): only B, clipped at x = 50 → x from 0 to 21 → 0..420.
    assert ground[(0, 50)] == [[0, 600, 420, 800]]


def test_edge_rule_drops_minor_parts_and_skips_presence_for_them(tmp_path):
    transform = Affine(1.0, 0, 0.0, 0, -1.0, 100.0)
    write_geotiff(tmp_path / "img.tif", np.full((3, 100, 100), 90, np.uint8), transform, "EPSG:32633")
    # One car mostly in the right tile; one tree fully in the left tile.
    car = box(*(transform @ (45, 20)), *(transform @ (65, 10)))  # 5/20 = 0.25 in left, 0.75 in right
    tree = box(*(transform @ (10, 40)), *(transform @ (20, 30)))
    write_objects(
        tmp_path / "o.gpkg",
        [{"kind": "car", "geometry": car}, {"kind": "tree", "geometry": tree}],
        "EPSG:32633",
    )
    out = tmp_path / "c"
    build_corpus(
        out,
        [
            VectorSource(
                tmp_path / "img.tif", tmp_path / "o.gpkg", class_field="kind", tile_size=50, overlap=0.0
            )
        ],
    )
    left = [r for r in records(out) if tile_origin(r.images[0]) == (0, 0)]
    # The car is ambiguous in the left tile: never counted, never asked about.
    assert not any("car" in question(r) for r in left)
    counts = [answer(r) for r in left if r.task == "counting"]
    assert counts == ["1"]
    right_counts = {
        question(r): answer(r)
        for r in records(out)
        if tile_origin(r.images[0]) == (0, 50) and r.task == "counting"
    }
    assert list(right_counts.values()) == ["1"] and "car" in next(iter(right_counts))


def test_labels_in_wgs84_over_a_utm_raster_give_the_same_answers(tmp_path, scene_files):
    scene, paths = scene_files
    frame = gpd.read_file(paths.objects)
    frame.to_crs("EPSG:4326").to_file(tmp_path / "objects_4326.geojson", driver="GeoJSON")
    a, b = tmp_path / "a", tmp_path / "b"
    kw = dict(class_field="class_name", tile_size=TILE, overlap=0.0)
    build_corpus(a, [VectorSource(paths.image, paths.objects, **kw)], seed=3)
    build_corpus(b, [VectorSource(paths.image, tmp_path / "objects_4326.geojson", **kw)], seed=3)
    ra, rb = records(a), records(b)
    assert [r.task for r in ra] == [r.task for r in rb]
    for x, y in zip(ra, rb, strict=True):
        if x.task in ("grounding", "referring"):
            bx, by = np.array(parse_boxes(answer(x))), np.array(parse_boxes(answer(y)))
            assert bx.shape == by.shape and np.abs(bx - by).max() <= 2  # round trip through degrees
        elif x.task == "counting":
            assert answer(x) == answer(y)


def test_invalid_geometries_are_repaired_and_counted(tmp_path):
    transform = Affine(1.0, 0, 0.0, 0, -1.0, 64.0)
    write_geotiff(tmp_path / "img.tif", np.full((3, 64, 64), 90, np.uint8), transform, "EPSG:32633")
    bowtie = Polygon([(10, 10), (30, 30), (30, 10), (10, 30)])  # self-intersecting
    assert not bowtie.is_valid
    frame = gpd.GeoDataFrame(
        {"class_name": ["roof", "roof"]}, geometry=[bowtie, box(40, 40, 50, 50)], crs="EPSG:32633"
    )
    frame.to_file(tmp_path / "o.gpkg", driver="GPKG")
    out = tmp_path / "c"
    res = build_corpus(out, [VectorSource(tmp_path / "img.tif", tmp_path / "o.gpkg", tile_size=64)])
    assert res.summary.geometries_repaired == 1
    # make_valid splits the bow-tie into two triangles kept as one object: 2 objects in total.
    assert [answer(r) for r in by_task(out, "counting")] == ["2"]


def test_oriented_box_corners_of_a_rotated_square():
    sq = shapely.affinity.rotate(box(20, 20, 40, 40), 45)
    q = quad_corners(sq, 100, 100)
    pts = np.array(q).reshape(4, 2) / 10.0
    # The corners of a diamond centred at (30, 30) with half-diagonal 10·√2; the first is nearest top-left.
    assert np.allclose(
        sorted(map(tuple, pts.round(0))), sorted([(30, 16), (44, 30), (30, 44), (16, 30)]), atol=1
    )
    x, y = pts[:, 0], pts[:, 1]
    assert 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) > 0  # clockwise on screen (y down)


def test_seed_makes_the_corpus_reproducible_and_wording_varies(tmp_path, scene_files):
    _, paths = scene_files
    src = [VectorSource(paths.image, paths.objects, class_field="class_name", tile_size=TILE, overlap=0.0)]
    build_corpus(tmp_path / "a", src, seed=1)
    build_corpus(tmp_path / "b", src, seed=1)
    build_corpus(tmp_path / "c", src, seed=2)
    text = {k: (tmp_path / k / "annotations.jsonl").read_text() for k in "abc"}
    assert text["a"] == text["b"]
    assert text["a"] != text["c"]
    questions = {question(r) for r in by_task(tmp_path / "a", "grounding")}
    assert len(questions) >= 3
    # Answers do not depend on the seed, only the wording does.
    ans = lambda k: sorted(answer(r) for r in by_task(tmp_path / k, "counting"))  # noqa: E731
    assert ans("a") == ans("c")


def test_referring_answers_pick_the_right_object(tmp_path):
    transform = Affine(1.0, 0, 0.0, 0, -1.0, 100.0)
    write_geotiff(tmp_path / "img.tif", np.full((3, 100, 100), 90, np.uint8), transform, "EPSG:32633")
    small = box(*(transform @ (10, 80)), *(transform @ (20, 70)))  # 10×10, south-west
    big = box(*(transform @ (50, 40)), *(transform @ (90, 10)))  # 40×30, north-east
    write_objects(
        tmp_path / "o.gpkg", [{"class_name": "pond", "geometry": g} for g in (small, big)], "EPSG:32633"
    )
    seen = set()
    for seed in range(12):
        out = tmp_path / f"c{seed}"
        build_corpus(out, [VectorSource(tmp_path / "img.tif", tmp_path / "o.gpkg", tile_size=100)], seed=seed)
        (rec,) = by_task(out, "referring")
        which = answer(rec).split("<ref>the ")[1].split(" pond")[0]
        expected = {
            "largest": [500, 100, 900, 400],
            "northernmost": [500, 100, 900, 400],
            "easternmost": [500, 100, 900, 400],
            "smallest": [100, 700, 200, 800],
            "southernmost": [100, 700, 200, 800],
            "westernmost": [100, 700, 200, 800],
        }[which]
        assert parse_boxes(answer(rec)) == [expected]
        seen.add(which)
    assert len(seen) >= 3


def test_records_say_where_their_tile_lies_on_the_map(tmp_path, scene_files):
    """Traceability: ``origin`` gives the scene, window, CRS, tile transform and bounds of each record."""
    import rasterio
    from rasterio.windows import Window, bounds, transform

    scene, paths = scene_files
    out = tmp_path / "corpus"
    build_corpus(out, [VectorSource(paths.image, paths.objects, class_field="class_name", tile_size=TILE)])
    recs = records(out)
    assert recs and all("origin" in r.extra for r in recs)
    buildings_map = [o["geometry"] for o in scene.objects if o["class_name"] == "building"]
    with rasterio.open(paths.image) as src:
        for rec in recs:
            o = rec.extra["origin"]
            row, col = tile_origin(rec.images[0])
            assert o["scene"] == str(paths.image) and o["window"] == [col, row, TILE, TILE]
            assert o["crs"] == src.crs.to_string()
            win = Window(col, row, TILE, TILE)
            np.testing.assert_allclose(o["bounds"], bounds(win, src.transform))
            np.testing.assert_allclose(o["transform"], list(transform(win, src.transform))[:6])
        # A grounded box, taken to the map through its record's origin alone, lands on a building.
        rec = next(r for r in by_task(out, "grounding") if "<ref>building</ref>" in answer(r))
        t = Affine(*rec.extra["origin"]["transform"])
        x1, y1, x2, y2 = denormalize_box(parse_boxes(answer(rec))[0], TILE, TILE)
        footprint = shapely.box(*(t @ (x1, y2)), *(t @ (x2, y1)))
        assert max(footprint.intersection(b).area / b.area for b in buildings_map) > 0.5
    # The JSONL on disk carries it too (InternVL ignores extra keys).
    line = (out / "annotations.jsonl").read_text().splitlines()[0]
    assert '"origin": {"scene":' in line
