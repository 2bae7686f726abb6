"""A detection checkpoint over a whole scene: oriented polygons in map coordinates, styled GeoPackage."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import torch
from affine import Affine
from rasterio.features import rasterize, shapes
from shapely.affinity import rotate
from shapely.geometry import box, shape
from tiny_checkpoints import save_tiny_checkpoint
from torch import nn

from vitp_geo.cli.main import main
from vitp_geo.geometry.obb import poly_to_obb
from vitp_geo.io.qgis_styles import ClassStyle
from vitp_geo.io.raster import write_geotiff
from vitp_geo.tiling.detection_outputs import DetectionRunConfig, detect_scene_to_vector

CRS = "EPSG:32633"
TRANSFORM = Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 5_000_000.0)
STYLE = ClassStyle(["building"], [(220, 20, 60)])


class BlobDetector(nn.Module):
    """A real pixel detector: bright connected regions of a window → their minimum-area rectangles.

    It sees only the window's pixels, so every polygon it finds must be put back in the right
    place by the scene machinery (window offsets, merge, transform).
    """

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for img in x:
            mask = (img.mean(0) > 0.5).numpy().astype(np.uint8)
            polys = [shape(g) for g, v in shapes(mask, mask=mask.astype(bool)) if v == 1]
            quads = [
                np.asarray(shapely.minimum_rotated_rectangle(p).exterior.coords)[:4].reshape(-1)
                for p in polys
                if p.area > 20
            ]
            boxes = poly_to_obb(torch.tensor(np.asarray(quads, np.float32)).reshape(-1, 8))
            n = boxes.shape[0]
            out.append(
                {"boxes": boxes, "scores": torch.full((n,), 0.9), "labels": torch.zeros(n, dtype=torch.long)}
            )
        return out


def _scene(path: Path) -> list[shapely.Polygon]:
    """A 300x260 scene with rotated bright rectangles (the truth, in pixel coordinates)."""
    rects = [
        rotate(box(cx - 14, cy - 7, cx + 14, cy + 7), ang, origin=(cx, cy))
        for cx, cy, ang in [
            (40, 40, 20),
            (150, 60, -35),
            (95, 128, 60),
            (230, 200, 10),
            (270, 30, 80),
            (60, 220, 45),
        ]
    ]
    img = rasterize([(r, 255) for r in rects], out_shape=(260, 300), fill=0, dtype="uint8")
    write_geotiff(path, np.stack([img] * 3), TRANSFORM, CRS)
    return rects


def _to_map(p: shapely.Polygon) -> shapely.Polygon:
    return shapely.Polygon([TRANSFORM @ xy for xy in p.exterior.coords])


def test_objects_across_windows_merge_to_one_polygon_each_in_map_coordinates(tmp_path: Path) -> None:
    truth = [_to_map(r) for r in _scene(tmp_path / "s.tif")]
    frame = detect_scene_to_vector(
        tmp_path / "s.tif",
        BlobDetector(),
        STYLE,
        tmp_path / "d.gpkg",
        config=DetectionRunConfig(tile_size=96, overlap=0.5, batch_size=4, progress=False),
    )
    read = gpd.read_file(tmp_path / "d.gpkg", layer="d", engine="pyogrio")
    assert read.crs == CRS and len(read) == len(frame) == len(truth)  # one polygon per object
    assert {"class_id", "class_name", "score", "area"} <= set(read.columns)
    for t in truth:  # each object found once, where it is, as an oriented rectangle
        ious = [t.intersection(g).area / t.union(g).area for g in read.geometry]
        assert max(ious) > 0.8
        assert sum(i > 0.1 for i in ious) == 1
    np.testing.assert_allclose(read["area"], read.geometry.area, rtol=1e-6)  # CRS units (m²)
    assert set(read["class_name"]) == {"building"}
    layers = [name for name, _ in pyogrio.list_layers(tmp_path / "d.gpkg")]
    assert "layer_styles" in layers and (tmp_path / "d.qml").is_file()


def test_cli_infer_with_a_detection_checkpoint(tmp_path: Path) -> None:
    _scene(tmp_path / "s.tif")
    ckpt = save_tiny_checkpoint(
        tmp_path / "det.ckpt", task="detection", num_classes=1, class_names=["building"]
    )
    out = tmp_path / "det.gpkg"
    args = ["infer", str(tmp_path / "s.tif"), "--checkpoint", str(ckpt), "--no-progress"]
    assert main([*args, "--vector", str(out), "--min-score", "0"]) == 0
    frame = gpd.read_file(out, layer="det", engine="pyogrio")
    assert frame.crs == CRS and len(frame) > 0  # an untrained model: boxes with scores ~0.5
    with rasterio.open(tmp_path / "s.tif") as src:
        scene = box(*src.bounds)
    assert all(scene.buffer(20).contains(g) for g in frame.geometry)
    assert (frame.geometry.apply(lambda g: len(g.exterior.coords)) == 5).all()  # 4 corners, closed
    assert frame["score"].between(0, 1).all()
    # a detection checkpoint writes --vector only
    assert main([*args, "--out", str(tmp_path / "x.tif")]) == 2
    assert not (tmp_path / "x.tif").exists()
    assert main(args) == 2


@pytest.mark.qgis
def test_qgis_opens_detections_in_the_right_place(tmp_path: Path) -> None:
    if not Path("/usr/bin/python3").exists():
        pytest.skip("/usr/bin/python3 not found")
    check = subprocess.run(["/usr/bin/python3", "-c", "import qgis.core"], capture_output=True, text=True)
    if check.returncode != 0:
        pytest.skip("/usr/bin/python3 cannot import qgis (apt install python3-qgis)")
    truth = [_to_map(r) for r in _scene(tmp_path / "s.tif")]
    detect_scene_to_vector(
        tmp_path / "s.tif",
        BlobDetector(),
        STYLE,
        tmp_path / "det.gpkg",
        config=DetectionRunConfig(tile_size=96, overlap=0.5, progress=False),
    )
    res = subprocess.run(
        [
            "/usr/bin/python3",
            str(Path(__file__).parents[1] / "qgis" / "qgis_detection_client.py"),
            str(tmp_path / "det.gpkg"),
            "det",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["valid"] and report["crs"] == CRS and report["feature_count"] == len(truth)
    np.testing.assert_allclose(report["extent"], shapely.MultiPolygon(truth).bounds, atol=1.0)  # metres
    assert report["renderer"] == "categorizedSymbol" and report["attribute"] == "class_id"
    assert [(c["label"], c["color"]) for c in report["categories"]] == [("building", "#dc143c")]
    assert report["vertices"] == [5] * len(truth)
    assert not [m for m in report["messages"] if m["level"] >= 1]
