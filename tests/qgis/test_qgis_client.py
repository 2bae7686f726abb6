"""A real client: QGIS (Debian's python3-qgis under /usr/bin/python3) opens our outputs styled."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyogrio
import pytest
import torch

from vitp_geo.io.qgis_styles import ClassStyle
from vitp_geo.tiling.engine import EngineConfig, segment_scene
from vitp_geo.tiling.segmentation_outputs import SegmentationOutputs

SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = Path(__file__).with_name("qgis_client.py")
CLASSES = ClassStyle(["dark", "mid", "bright"], [(20, 40, 200), (240, 200, 30), (200, 30, 30)])


def _qgis_available() -> str | None:
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    res = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import qgis.core"],
        capture_output=True,
        text=True,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        timeout=60,
    )
    return (
        None
        if res.returncode == 0
        else f"{SYSTEM_PYTHON} cannot import qgis (apt install python3-qgis): {res.stderr[-200:]}"
    )


def brightness_model(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, T) normalised to [0, 1] → (B, 3, T, T) logits: dark / mid / bright by mean brightness."""
    m = x.mean(1, keepdim=True)
    return torch.cat([-((m - 0.1) ** 2), -((m - 0.35) ** 2), -((m - 0.7) ** 2)], 1) * 100


@pytest.mark.qgis
@pytest.mark.slow
def test_qgis_opens_class_map_and_polygons_styled(tmp_path: Path, shared_data: Path) -> None:
    reason = _qgis_available()
    if reason is not None:
        pytest.skip(reason)
    out = SegmentationOutputs(
        tmp_path / "rgb_classes.tif", vector=tmp_path / "rgb_polygons.gpkg", min_area_px=4
    )
    segment_scene(
        shared_data / "RGB.byte.tif",
        brightness_model,
        CLASSES,
        out,
        config=EngineConfig(tile_size=256, overlap=0.25, progress=False),
    )
    written = pyogrio.read_info(out.vector, layer="rgb_polygons")["features"]
    assert written > 0
    res = subprocess.run(
        [SYSTEM_PYTHON, str(SCRIPT), str(out.class_map), str(out.vector), "rgb_polygons"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    hexes = ["#{:02x}{:02x}{:02x}".format(*c) for c in CLASSES.colors]

    raster = report["raster"]
    assert (
        raster["valid"]
        and raster["crs"] == "EPSG:32618"
        and (raster["width"], raster["height"]) == (791, 718)
    )
    assert raster["renderer"] == "paletted"
    assert [(p["value"], p["color"], p["label"]) for p in raster["palette"]] == [
        (float(i), hexes[i], n) for i, n in enumerate(CLASSES.names)
    ]
    assert raster["gdal_color_table"][:3] == [{"value": i, "color": hexes[i]} for i in range(3)]
    assert raster["has_nodata"] and raster["nodata"] == 255

    vector = report["vector"]
    assert vector["valid"] and vector["crs"] == "EPSG:32618" and vector["feature_count"] == written
    assert vector["renderer"] == "categorizedSymbol" and vector["attribute"] == "class_id"
    assert [(c["value"], c["label"], c["color"]) for c in vector["categories"]] == [
        (str(i), n, hexes[i]) for i, n in enumerate(CLASSES.names)
    ]
    assert {"class_id", "class_name", "score", "area"} <= set(vector["fields"])
    warnings = [m for m in report["messages"] if m["level"] >= 1]  # Qgis.Warning or worse
    assert not warnings, warnings


@pytest.mark.qgis
def test_gpkg_style_comes_from_layer_styles_table(tmp_path: Path) -> None:
    """Without a .qml beside it, QGIS still styles the layer from the GeoPackage's layer_styles."""
    reason = _qgis_available()
    if reason is not None:
        pytest.skip(reason)
    import geopandas as gpd
    from shapely.geometry import box

    from vitp_geo.io.qgis_styles import write_styled_gpkg

    frame = gpd.GeoDataFrame(
        {
            "class_id": [0, 2],
            "class_name": ["dark", "bright"],
            "score": [0.9, 0.8],
            "area": [1.0, 1.0],
            "pixels": [1, 1],
        },
        geometry=[box(0, 0, 1, 1), box(2, 0, 3, 1)],
        crs="EPSG:32618",
    )
    write_styled_gpkg(tmp_path / "p.gpkg", frame, CLASSES, qml=tmp_path / "elsewhere.qml")
    raster = tmp_path / "none.tif"  # the client also opens a raster; an invalid one is fine here
    res = subprocess.run(
        [SYSTEM_PYTHON, str(SCRIPT), str(raster), str(tmp_path / "p.gpkg"), "p"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    vector = json.loads(res.stdout.strip().splitlines()[-1])["vector"]
    assert vector["feature_count"] == 2 and vector["renderer"] == "categorizedSymbol"
    assert [c["color"] for c in vector["categories"]] == [
        "#{:02x}{:02x}{:02x}".format(*c) for c in CLASSES.colors
    ]
