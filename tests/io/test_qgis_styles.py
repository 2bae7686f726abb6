"""QGIS styles: QML content and the GeoPackage ``layer_styles`` table; GDAL 3.6 opens without warnings."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas as gpd
import pytest
from shapely.geometry import box

from vitp_geo.io.qgis_styles import ClassStyle, categorized_qml, paletted_qml, write_styled_gpkg

CLASSES = ClassStyle(["background", "building & roof"], [(0, 0, 0), (220, 20, 60)])


def test_paletted_qml_lists_classes_with_colours() -> None:
    root = ET.fromstring(paletted_qml(CLASSES).split("\n", 1)[1])
    entries = root.findall(".//rasterrenderer[@type='paletted']/colorPalette/paletteEntry")
    assert [(e.get("value"), e.get("color"), e.get("label")) for e in entries] == [
        ("0", "#000000", "background"),
        ("1", "#dc143c", "building & roof"),
    ]


def test_categorized_qml_colours_match_classes() -> None:
    root = ET.fromstring(categorized_qml(CLASSES).split("\n", 1)[1])
    rend = root.find("renderer-v2")
    assert rend is not None and rend.get("type") == "categorizedSymbol" and rend.get("attr") == "class_id"
    colors = {s.get("name"): s.find(".//Option[@name='color']").get("value") for s in rend.iter("symbol")}
    assert colors == {"0": "0,0,0,255", "1": "220,20,60,255"}


def _frame(n: int) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "class_id": list(range(n)),
            "class_name": ["x"] * n,
            "score": [0.5] * n,
            "area": [1.0] * n,
            "pixels": [1] * n,
        },
        geometry=[box(i, 0, i + 1, 1) for i in range(n)],
        crs="EPSG:32618",
    )


@pytest.mark.parametrize("n", [0, 2])
def test_gpkg_has_default_style_row_and_opens_cleanly_in_gdal_36(tmp_path: Path, n: int) -> None:
    path = write_styled_gpkg(tmp_path / "pred.gpkg", _frame(n), CLASSES)
    with sqlite3.connect(path) as con:
        row = con.execute(
            "select f_table_name, f_geometry_column, useAsDefault, styleQML from layer_styles"
        ).fetchone()
        version = con.execute("pragma user_version").fetchone()[0]
        geom_col = con.execute(
            "select column_name from gpkg_geometry_columns where table_name='pred'"
        ).fetchone()[0]
    assert row[0] == "pred" and row[1] == geom_col and row[2] == 1 and "categorizedSymbol" in row[3]
    assert version < 10400  # GeoPackage 1.2: what GDAL 3.6 reads without a version warning
    assert (tmp_path / "pred.qml").read_text() == row[3]
    assert len(gpd.read_file(path, layer="pred")) == n
    ogrinfo = shutil.which("ogrinfo")
    if ogrinfo is None:
        pytest.skip("ogrinfo (gdal-bin) not installed: cannot check with the system GDAL")
    res = subprocess.run([ogrinfo, "-al", "-so", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "Warning" not in res.stderr and "ERROR" not in res.stderr, res.stderr
    assert f"Feature Count: {n}" in res.stdout
