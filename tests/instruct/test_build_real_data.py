"""Builders on real files nobody here made: SpaceNet buildings, SAR (complex64), multispectral (float64)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from _corpus_helpers import answer, by_task, records, tile_origin
from PIL import Image
from shapely.geometry import Polygon, box

from vitp_geo.instruct.builders import VectorSource, build_corpus
from vitp_geo.instruct.records import denormalize_box, parse_boxes
from vitp_geo.io.vector import write_objects

TILE = 448


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


_BUILT: dict[str, object] = {}


@pytest.fixture
def spacenet_corpus(shared_data, tmp_path_factory):
    """The SpaceNet chip built once per session (the ``shared_data`` fixture skips when absent)."""
    if "sn" not in _BUILT:
        out = tmp_path_factory.mktemp("sn") / "corpus"
        build_corpus(
            out,
            [
                VectorSource(
                    shared_data / "sample_geotiff.tif",
                    shared_data / "geotiff_labels.geojson",
                    default_class="building",
                    tile_size=TILE,
                    overlap=0.25,
                )
            ],
        )
        _BUILT["sn"] = out
    return _BUILT["sn"]


def test_spacenet_boxes_land_on_their_buildings(shared_data, spacenet_corpus):
    """Every grounding box mapped back to map coordinates matches a building (IoU ≥ 0.9)."""
    with rasterio.open(shared_data / "sample_geotiff.tif") as src:
        transform = src.transform
    buildings = [
        shapely.make_valid(g) for g in gpd.read_file(shared_data / "geotiff_labels.geojson").geometry
    ]
    n_boxes = 0
    for rec in by_task(spacenet_corpus, "grounding"):
        row, col = tile_origin(rec.images[0])
        (x0, y0), (x1, y1) = transform @ (col, row), transform @ (col + TILE, row + TILE)
        tile_map = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        # Under the edge rule the expected box is the bounding box of the part inside the tile.
        truth = [
            b.intersection(tile_map).bounds
            for b in buildings
            if b.intersection(tile_map).area >= 0.5 * b.area
        ]
        matched = set()
        for bx in parse_boxes(answer(rec)):
            px = denormalize_box(bx, TILE, TILE)
            (mx0, my0), (mx1, my1) = (
                transform @ (px[0] + col, px[1] + row),
                transform @ (px[2] + col, px[3] + row),
            )
            got = (min(mx0, mx1), min(my0, my1), max(mx0, mx1), max(my0, my1))
            ious = [_iou(got, t) for t in truth]
            best = int(np.argmax(ious))
            assert ious[best] >= 0.9, (rec.id, got, truth[best], ious[best])
            matched.add(best)
            n_boxes += 1
        assert len(matched) == len(truth)  # one box per building, none missing
    assert n_boxes >= 43  # every building appears at least once (tiles overlap)


def test_spacenet_counts_match_buildings_inside_each_tile(shared_data, spacenet_corpus):
    with rasterio.open(shared_data / "sample_geotiff.tif") as src:
        transform = src.transform
    buildings = [
        shapely.make_valid(g) for g in gpd.read_file(shared_data / "geotiff_labels.geojson").geometry
    ]
    counting = by_task(spacenet_corpus, "counting")
    assert len(counting) == 9  # 900 px at 448 with 25 % overlap → 3 × 3 tiles, all holding buildings
    for rec in counting:
        row, col = tile_origin(rec.images[0])
        (x0, y0), (x1, y1) = transform @ (col, row), transform @ (col + TILE, row + TILE)
        tile_map = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        expected = sum(1 for b in buildings if b.intersection(tile_map).area >= 0.5 * b.area)
        assert int(answer(rec)) == expected
    # Records say the 1-band uint16 SpaceNet chip is optical, and its tiles are 3-channel PNGs.
    assert {r.modality for r in records(spacenet_corpus)} == {"optical"}
    img = Image.open(spacenet_corpus / records(spacenet_corpus)[0].images[0])
    assert img.mode == "RGB" and img.size == (TILE, TILE)


def _square_labels(path, raster_path, px_box):
    """A square given in pixel coordinates written as a map polygon in the raster's CRS."""
    with rasterio.open(raster_path) as src:
        t, crs = src.transform, src.crs
    x0, y0, x1, y1 = px_box
    poly = Polygon([t @ (x0, y0), t @ (x1, y0), t @ (x1, y1), t @ (x0, y1)])
    write_objects(path, [{"class_name": "ship", "geometry": poly}], crs.to_string())


def test_complex_sar_is_rendered_in_db_and_recorded_as_sar(tmp_path, shared_data):
    sar = shared_data / "sar_hh.tif"  # complex64 with a rotated transform
    _square_labels(tmp_path / "ship.gpkg", sar, (50, 60, 90, 80))
    out = tmp_path / "c"
    build_corpus(out, [VectorSource(sar, tmp_path / "ship.gpkg", tile_size=200)])
    recs = records(out)
    assert {r.modality for r in recs} == {"sar"}
    # The rotated transform is inverted exactly: the box is the square's pixel box.
    (g,) = by_task(out, "grounding")
    assert parse_boxes(answer(g)) == [[250, 300, 450, 400]]
    png = np.asarray(Image.open(out / recs[0].images[0]))
    with rasterio.open(sar) as src:
        db = 20 * np.log10(np.abs(src.read(1)).astype(np.float64))
    assert png.shape == (200, 200, 3) and (png[..., 0] == png[..., 1]).all()  # one band → grey
    # Brighter in dB → brighter in the PNG (monotone stretch), checked on a rank correlation.
    valid = np.isfinite(db)
    r1 = np.argsort(np.argsort(db[valid]))
    r2 = np.argsort(np.argsort(png[..., 0][valid].astype(float)))
    assert np.corrcoef(r1, r2)[0, 1] > 0.95


def test_multispectral_band_selection_and_modality(tmp_path, shared_data):
    ms = shared_data / "ms1.tif"  # 4 bands float64
    _square_labels(tmp_path / "ship.gpkg", ms, (100, 100, 160, 130))
    out_default, out_bands = tmp_path / "a", tmp_path / "b"
    build_corpus(out_default, [VectorSource(ms, tmp_path / "ship.gpkg", tile_size=300)])
    from vitp_geo.io.raster import RenderRule

    build_corpus(
        out_bands, [VectorSource(ms, tmp_path / "ship.gpkg", tile_size=300, rule=RenderRule(bands=(4, 3, 2)))]
    )
    assert {r.modality for r in records(out_default)} == {"multispectral"}
    a = np.asarray(Image.open(out_default / records(out_default)[0].images[0]))
    b = np.asarray(Image.open(out_bands / records(out_bands)[0].images[0]))
    # Bands (4, 3, 2): the red channel of b is band 4, its blue channel is band 2 = a's green channel.
    assert np.array_equal(b[..., 2], a[..., 1]) and np.array_equal(b[..., 1], a[..., 2])
    assert not np.array_equal(b[..., 0], a[..., 0])
