"""STAC-GeoParquet sources: files written by ``stac-geoparquet`` itself from a pystac catalogue."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pystac
import pytest
from catalogue_helpers import manifest, read

from vitp_geo.catalogue.sources import read_source
from vitp_geo.cli.main import main

sgp_arrow = pytest.importorskip(
    "stac_geoparquet.arrow",
    reason="STAC-GeoParquet needs the geoparquet extra: pip install 'vitp-geo[geoparquet]'",
)


def _write_geoparquet(items: list[pystac.Item] | list[dict], path: Path) -> Path:
    """STAC-GeoParquet as the library writes it (WKB geometry, ``assets`` struct, ``links`` list)."""
    sgp_arrow.to_parquet(sgp_arrow.parse_stac_items_to_arrow(items), path)
    return path


def _catalog(source: Path, ckpt: Path, out: Path) -> int:
    return main(
        ["infer-catalog", str(source), "--checkpoint", str(ckpt), "--out-dir", str(out), "--no-progress"]
    )


def _collection_items(out: Path) -> dict[str, pystac.Item]:
    collection = pystac.read_file(str(out / "stac" / "collection.json"))
    return {it.id: it for it in collection.get_items(recursive=True)}


def test_geoparquet_scenes_run_as_the_same_stac_catalogue(world: dict[str, Path], tmp_path: Path) -> None:
    items = list(pystac.read_file(str(world["catalog"])).get_items(recursive=True))
    parquet = _write_geoparquet(items, tmp_path / "items.parquet")
    # the file is in the real layout: an assets struct, WKB geometry, a timestamp column
    import pyarrow.parquet as pq

    schema = pq.read_schema(parquet)
    assert {"id", "assets", "geometry", "datetime", "links"} <= set(schema.names)
    assert b"stac-geoparquet" in (schema.metadata or {})
    # the same scenes, ids, source item links and datetimes as the STAC JSON catalogue
    assert read_source(parquet) == read_source(world["catalog"])
    from_json, from_parquet = tmp_path / "json", tmp_path / "parquet"
    assert _catalog(world["catalog"], world["ckpt"], from_json) == 0
    assert _catalog(parquet, world["ckpt"], from_parquet) == 0
    for i in range(6):
        np.testing.assert_array_equal(
            read(from_parquet / "scenes" / f"scene_{i}" / "class_map.tif"),
            read(from_json / "scenes" / f"scene_{i}" / "class_map.tif"),
        )
    a, b = _collection_items(from_json), _collection_items(from_parquet)
    assert sorted(a) == sorted(b) == [f"scene_{i}" for i in range(6)]
    for sid in a:
        assert a[sid].datetime == b[sid].datetime and a[sid].bbox == b[sid].bbox
        derived = [
            [link.get_absolute_href() for link in it.links if link.rel == "derived_from"]
            for it in (a[sid], b[sid])
        ]
        assert derived[0] == derived[1] and len(derived[0]) == 1
    assert [r["status"] for r in manifest(from_parquet)].count("done") == 6


def test_geoparquet_relative_hrefs_resolve_against_the_file_and_bad_files_are_named(
    world: dict[str, Path], tmp_path: Path
) -> None:
    items = sorted(pystac.read_file(str(world["catalog"])).get_items(recursive=True), key=lambda i: i.id)
    dicts = []
    for it in items[:2]:  # no self link, asset hrefs relative to the parquet's folder
        d = it.to_dict(include_self_link=False, transform_hrefs=False)
        d["links"] = []
        for a in d["assets"].values():
            a["href"] = os.path.relpath(a["href"], tmp_path)  # ../../catalogue0/scenes/scene_0.tif
        dicts.append(d)
    parquet = _write_geoparquet(dicts, tmp_path / "relative.parquet")
    tasks = read_source(parquet)
    assert [(t.scene_id, t.scene) for t in tasks] == [
        (it.id, (world["scenes"] / f"{it.id}.tif").resolve()) for it in items[:2]
    ]
    assert all(t.item_href is None for t in tasks)  # no source item JSON to link to
    with pytest.raises(
        ValueError, match=r"relative.parquet.*no asset 'red' \(--asset\); its assets: thumbnail, image"
    ):
        read_source(parquet, asset="red")
    # a Parquet file that is not STAC: the missing columns named
    import geopandas as gpd
    import shapely

    plain = tmp_path / "plain.parquet"
    gpd.GeoDataFrame({"name": ["a"]}, geometry=[shapely.Point(0, 0)], crs="EPSG:4326").to_parquet(plain)
    with pytest.raises(ValueError, match=r"plain.parquet: not STAC-GeoParquet: no column 'id', 'assets'"):
        read_source(plain)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(parquet.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"broken.parquet: not a readable Parquet file"):
        read_source(broken)
    # the CLI: bad input exits 2 with one line
    assert _catalog(plain, world["ckpt"], tmp_path / "out") == 2
    assert not (tmp_path / "out").exists()
