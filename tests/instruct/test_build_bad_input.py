"""Bad input: clear errors naming the file and the problem, non-zero CLI exit, nothing half-written."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from affine import Affine
from shapely.geometry import LineString, Point, box

from vitp_geo.cli.main import main
from vitp_geo.instruct.builders import VectorSource, build_corpus
from vitp_geo.io.raster import RasterReadError, write_geotiff
from vitp_geo.synthetic.scene import generate_scene, write_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_scene(generate_scene(2, 64, scene_class=0), tmp_path_factory.mktemp("s"))


def _nothing_left(parent, name="out"):
    return not any(p.name.startswith((name, f".{name}")) for p in parent.iterdir())


def test_labels_without_crs(tmp_path, scene):
    frame = gpd.read_file(scene.objects).set_crs(None, allow_override=True)
    frame.to_file(tmp_path / "nocrs.gpkg", driver="GPKG")
    with pytest.raises(ValueError, match=r"nocrs\.gpkg have no CRS"):
        build_corpus(tmp_path / "out", [VectorSource(scene.image, tmp_path / "nocrs.gpkg", tile_size=64)])
    assert _nothing_left(tmp_path)


def test_raster_without_georeferencing(tmp_path, scene):
    import rasterio

    with rasterio.open(
        tmp_path / "plain.tif", "w", driver="GTiff", width=32, height=32, count=3, dtype="uint8"
    ) as dst:
        dst.write(np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"plain\.tif has no georeferencing"):
        build_corpus(tmp_path / "out", [VectorSource(tmp_path / "plain.tif", scene.objects, tile_size=32)])
    assert _nothing_left(tmp_path)


def test_labels_that_miss_the_raster(tmp_path, scene):
    far = gpd.GeoDataFrame({"class_name": ["building"]}, geometry=[box(0, 0, 10, 10)], crs="EPSG:32633")
    far.to_file(tmp_path / "far.gpkg", driver="GPKG")
    with pytest.raises(ValueError, match=r"far\.gpkg do not overlap raster .*scene\.tif"):
        build_corpus(tmp_path / "out", [VectorSource(scene.image, tmp_path / "far.gpkg", tile_size=64)])
    assert _nothing_left(tmp_path)


@pytest.mark.parametrize(
    ("geoms", "expected"),
    [
        ([], r"empty\.gpkg have no polygons to build from: no features"),
        (
            [Point(5, 5), LineString([(0, 0), (1, 1)])],
            r"empty\.gpkg have no polygons to build from: 2 feature\(s\), none usable \(2 not a polygon\)",
        ),
    ],
    ids=["no-features", "points-and-lines"],
)
def test_labels_without_polygons_say_so_not_that_they_miss_the_raster(tmp_path, scene, geoms, expected):
    frame = gpd.GeoDataFrame({"class_name": ["building"] * len(geoms)}, geometry=geoms, crs="EPSG:32633")
    frame.to_file(tmp_path / "empty.gpkg", driver="GPKG")
    with pytest.raises(ValueError, match=expected):
        build_corpus(tmp_path / "out", [VectorSource(scene.image, tmp_path / "empty.gpkg", tile_size=64)])
    assert _nothing_left(tmp_path)


def test_zero_records_is_an_error_not_an_empty_corpus(tmp_path):
    t = Affine(1.0, 0, 0.0, 0, -1.0, 64.0)
    write_geotiff(tmp_path / "img.tif", np.zeros((3, 64, 64), np.uint8), t, "EPSG:32633", nodata=0)
    gpd.GeoDataFrame({"class_name": ["x"]}, geometry=[box(10, 10, 20, 20)], crs="EPSG:32633").to_file(
        tmp_path / "o.gpkg", driver="GPKG"
    )
    with pytest.raises(ValueError, match=r"zero records \(mostly nodata: 1\)"):
        build_corpus(
            tmp_path / "out", [VectorSource(tmp_path / "img.tif", tmp_path / "o.gpkg", tile_size=64)]
        )
    assert _nothing_left(tmp_path)


def test_unreadable_raster(tmp_path, shared_data):
    """``corrupt.tif`` opens but some of its tiles cannot be decoded: the tile that reads one fails
    with an error naming the file, and the half-built corpus is removed."""
    import rasterio

    with rasterio.open(shared_data / "corrupt.tif") as src:
        bounds, crs = src.bounds, src.crs
    x0, y0, x1, y1 = bounds  # small buildings all over the scene, so every tile is read
    xs, ys = np.arange(x0 + 5, x1 - 15, 40.0), np.arange(y0 + 5, y1 - 15, 40.0)
    houses = [box(x, y, x + 10, y + 10) for x in xs for y in ys]
    gpd.GeoDataFrame({"class_name": ["building"] * len(houses)}, geometry=houses, crs=crs).to_file(
        tmp_path / "all.gpkg", driver="GPKG"
    )
    with pytest.raises(RasterReadError, match=r"cannot read raster .*corrupt\.tif"):
        build_corpus(
            tmp_path / "out",
            [VectorSource(shared_data / "corrupt.tif", tmp_path / "all.gpkg", tile_size=256)],
        )
    assert _nothing_left(tmp_path)


def test_missing_class_field_lists_the_fields(tmp_path, scene):
    with pytest.raises(ValueError, match=r"no field 'kind'; fields are: class_id, class_name"):
        build_corpus(tmp_path / "out", [VectorSource(scene.image, scene.objects, class_field="kind")])
    assert _nothing_left(tmp_path)


def test_existing_output_is_not_replaced_without_overwrite(tmp_path, scene):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        build_corpus(out, [VectorSource(scene.image, scene.objects, tile_size=64)])
    assert (out / "keep.txt").read_text() == "mine"


def test_cli_errors_exit_non_zero_and_leave_nothing(tmp_path, scene, shared_data, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "build-instructions",
            "--image",
            str(shared_data / "corrupt.tif"),
            "--labels",
            str(scene.objects),
            "--out",
            str(out),
        ]
    )
    assert rc == 2 and "corrupt.tif" in capsys.readouterr().err
    rc = main(
        [
            "build-instructions",
            "--image",
            str(scene.image),
            "--labels",
            str(scene.objects),
            "--class-field",
            "nope",
            "--out",
            str(out),
        ]
    )
    assert rc == 2 and "'nope'" in capsys.readouterr().err
    rc = main(["build-instructions", "--image", str(scene.image), "--out", str(out)])
    assert rc == 2 and "--labels" in capsys.readouterr().err
    rc = main(["build-instructions", "--before", str(scene.image), "--out", str(out)])
    assert rc == 2 and "--change-mask" in capsys.readouterr().err
    assert _nothing_left(tmp_path)


def test_cli_builds_vector_and_mask_sources_into_one_corpus(tmp_path, scene, capsys):
    (tmp_path / "names.yaml").write_text("[background, building, road, water, field]\n")
    out = tmp_path / "out"
    rc = main(
        [
            "build-instructions",
            "--image",
            str(scene.image),
            "--labels",
            str(scene.objects),
            "--mask",
            str(scene.mask),
            "--classes",
            str(tmp_path / "names.yaml"),
            "--tile-size",
            "32",
            "--overlap",
            "0",
            "--seed",
            "5",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0
    from vitp_geo.instruct.records import read_jsonl

    recs = read_jsonl(out / "annotations.jsonl").records
    tasks = {r.task for r in recs}
    assert {"grounding", "counting", "area_share", "region"} <= tasks
    assert f"records: {len(recs)}" in text and "tiles written:" in text
    # Both sources share each tile's image: one PNG per tile, not two.
    assert len(list((out / "images").rglob("*.png"))) == len({i for r in recs for i in r.images})
    assert sorted(p.name for p in out.iterdir()) == ["annotations.jsonl", "images", "recipe.json"]


def test_overwrite_replaces_an_earlier_corpus_but_nothing_it_did_not_write(tmp_path, scene):
    """Issue 20: --overwrite deleted the whole folder, files the build never wrote included."""
    out = tmp_path / "out"
    build_corpus(out, [VectorSource(scene.image, scene.objects, tile_size=64)])
    result = build_corpus(
        out, [VectorSource(scene.image, scene.objects, tile_size=64)], seed=1, overwrite=True
    )
    assert result.recipe.is_file()  # an earlier corpus is replaced
    (out / "images" / "notes.txt").write_text("mine")
    with pytest.raises(
        ValueError, match=r"holds .*images/notes\.txt, which build-instructions does not write"
    ):
        build_corpus(out, [VectorSource(scene.image, scene.objects, tile_size=64)], overwrite=True)
    assert (out / "images" / "notes.txt").read_text() == "mine" and result.recipe.is_file()


def test_a_builder_tile_and_an_inference_window_render_alike_through_one_reader(tmp_path):
    """One windowed scene reader (io.raster.SceneWindows): build-instructions and infer render a
    uint16 scene's window with the same scene-wide stretch, pixel for pixel."""
    import rasterio
    from affine import Affine

    from vitp_geo.instruct.builders.raster_scene import open_scene
    from vitp_geo.instruct.builders.tiles import Tile
    from vitp_geo.io.raster import RenderRule, SceneWindows
    from vitp_geo.tiling.reader import SceneWindowReader

    rng = np.random.default_rng(0)
    path = tmp_path / "scene.tif"
    data = (rng.gamma(2.0, 600.0, (3, 300, 300))).clip(0, 65535).astype(np.uint16)
    profile = dict(driver="GTiff", height=300, width=300, count=3, dtype="uint16", crs="EPSG:32633")
    with rasterio.open(path, "w", transform=Affine(1, 0, 500000, 0, -1, 4000000), **profile) as dst:
        dst.write(data)
    rule = RenderRule()
    with open_scene(path, rule) as scene:
        assert isinstance(scene.windows, SceneWindows) and scene.limits is not None
        rgb, valid = scene.read(Tile(64, 32, 96, 96))
    with SceneWindowReader([path], rule, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) as reader:
        assert reader.limits == [scene.limits]  # one stretch, computed once per scene
        x, ok = reader.read(64, 32, 96, 96)
    np.testing.assert_array_equal(x, rgb.astype(np.float32))
    np.testing.assert_array_equal(ok, valid)
