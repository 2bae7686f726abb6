"""Mask R-CNN over a scene: each detection's GeoPackage geometry is its predicted mask, in map
coordinates, and a mask follows its box through the cross-window merge."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
import torch
from affine import Affine
from rasterio.features import rasterize, shapes
from shapely.geometry import Polygon, shape
from torch import nn

from vitp_geo.io.qgis_styles import ClassStyle
from vitp_geo.io.raster import write_geotiff
from vitp_geo.tiling.detection import DetectionMerger
from vitp_geo.tiling.detection_outputs import DetectionRunConfig, detect_scene_to_vector

CRS = "EPSG:32633"
TRANSFORM = Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 5_000_000.0)
STYLE = ClassStyle(["ship"], [(0, 255, 0)])


class MaskBlobDetector(nn.Module):
    """A pixel-exact Mask R-CNN stand-in: each bright connected region of a window is one detection,
    its box the region's pixel bounds and its mask the region's pixels (on the window grid)."""

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for img in x:
            on = (img.mean(0) > 0.5).numpy().astype(np.uint8)
            regions = [shape(g) for g, v in shapes(on, mask=on.astype(bool)) if v == 1]
            masks = [rasterize([(r, 1)], out_shape=on.shape, dtype="uint8").astype(bool) for r in regions]
            n = len(regions)
            out.append(
                {
                    "boxes": torch.tensor([r.bounds for r in regions], dtype=torch.float32).reshape(n, 4),
                    "scores": torch.full((n,), 0.9),
                    "labels": torch.zeros(n, dtype=torch.long),
                    "masks": torch.from_numpy(np.stack(masks))
                    if n
                    else torch.zeros((0, *on.shape), dtype=torch.bool),
                }
            )
        return out


def _scene(path: Path) -> list[Polygon]:
    """A 200 x 160 scene of bright non-rectangular ships (pixel-edge polygons, so rasterising is exact):
    an L-shape, a stair-stepped hull longer than the windows' overlap, crossing a window seam."""
    objects = [
        Polygon([(10, 10), (40, 10), (40, 20), (22, 20), (22, 44), (10, 44)]),  # L
        Polygon([(50, 100), (60, 96), (60, 96), (110, 96), (110, 104), (120, 104), (120, 112), (50, 112)]),
        Polygon([(150, 20), (170, 20), (170, 30), (180, 30), (180, 60), (150, 60)]),
    ]
    img = rasterize([(o, 255) for o in objects], out_shape=(160, 200), fill=0, dtype="uint8")
    write_geotiff(path, np.stack([img] * 3), TRANSFORM, CRS)
    # the truth is the rasterised pixel set as polygons (pixel edges), mapped to the CRS
    on = (img > 0).astype(np.uint8)
    pixels = [shape(g) for g, v in shapes(on, mask=on.astype(bool)) if v == 1]
    return [
        shapely.affinity.affine_transform(p, [TRANSFORM.a, 0, 0, TRANSFORM.e, TRANSFORM.c, TRANSFORM.f])
        for p in pixels
    ]


def test_geopackage_polygons_are_the_predicted_masks_in_map_coordinates(tmp_path: Path) -> None:
    truth = _scene(tmp_path / "s.tif")
    cfg = DetectionRunConfig(tile_size=64, overlap=0.25, batch_size=4, progress=False)  # 16 px shared
    detect_scene_to_vector(tmp_path / "s.tif", MaskBlobDetector(), STYLE, tmp_path / "m.gpkg", config=cfg)
    read = gpd.read_file(tmp_path / "m.gpkg", layer="m", engine="pyogrio")
    assert len(read) == len(truth)  # the 70 px hull, cut by the windows at x 48 and 96, is one object
    for t in truth:
        match = [g for g in read.geometry if g.intersects(t)]
        assert len(match) == 1
        assert match[0].symmetric_difference(t).area < 1e-6 * t.area  # the mask itself, not its box
        assert match[0].area < 0.95 * match[0].envelope.area  # (none of the ships fills its box)
    np.testing.assert_allclose(read["area"], read.geometry.area, rtol=1e-9)


def test_a_mask_follows_its_box_through_nms_and_an_empty_mask_keeps_the_box() -> None:
    m = DetectionMerger(Affine.identity(), 100, 100, iou_threshold=0.5)
    masks = np.zeros((3, 100, 100), bool)
    masks[0, 10:20, 10:30] = True  # the better-scored duplicate: its mask wins
    masks[1, 12:20, 10:30] = True
    boxes = np.array([[10.0, 10, 30, 20], [10, 11, 30, 20], [60, 60, 80, 70]])  # box 2: empty mask
    m.add(0, 0, 100, 100, boxes, np.array([0.9, 0.8, 0.7]), np.zeros(3, int), masks)
    frame = m.to_frame(["ship"], None)
    assert len(frame) == 2
    assert frame.geometry[0].equals(shapely.box(10, 10, 30, 20)) and frame["score"][0] == 0.9
    assert frame.geometry[1].equals(shapely.box(60, 60, 80, 70))  # no mask pixel: the box polygon


def test_cli_infer_with_a_mask_rcnn_checkpoint_writes_mask_polygons(tmp_path: Path) -> None:
    """``vitp-geo infer`` on a (tiny, untrained) Mask R-CNN checkpoint: the card's ``roi_head: mask``
    rebuilds the mask branch, and the GeoPackage holds pixel-edge mask polygons, not 4-corner boxes."""
    from tiny_checkpoints import save_tiny_checkpoint

    from vitp_geo.cli.main import main

    _scene(tmp_path / "s.tif")
    ckpt = save_tiny_checkpoint(
        tmp_path / "mask.ckpt",
        task="detection",
        num_classes=1,
        class_names=["ship"],
        box_type="hbb",
        roi_head="mask",
    )
    out = tmp_path / "mask.gpkg"
    args = ["infer", str(tmp_path / "s.tif"), "--checkpoint", str(ckpt), "--no-progress", "--min-score", "0"]
    assert main([*args, "--vector", str(out)]) == 0
    frame = gpd.read_file(out, layer="mask", engine="pyogrio")
    assert len(frame) > 0
    # masks: pixel-edge outlines (every vertex on the 0.5 m pixel grid, not just 4 corners); the
    # detections whose mask is empty at 0.5 keep their box; one geometry type for the layer
    assert set(frame.geom_type) == {"MultiPolygon"}
    grid = [(shapely.get_coordinates(g) - [TRANSFORM.c, TRANSFORM.f]) / 0.5 for g in frame.geometry]
    on_grid = [np.allclose(v, np.round(v), atol=1e-6) and len(v) != 5 for v in grid]
    assert sum(on_grid) >= len(frame) // 10
