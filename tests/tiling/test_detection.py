"""Cross-tile detection merging in map coordinates, with a fake detector that sees the true objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from affine import Affine
from shapely.geometry import box

from vitp_geo.io.raster import write_geotiff
from vitp_geo.synthetic.scene import generate_scene
from vitp_geo.tiling.detection import DetectionMerger, box_polygon, detect_scene, nms_polygons


def test_nms_keeps_best_of_overlapping_and_separate_boxes() -> None:
    polys = [box(0, 0, 10, 10), box(1, 0, 11, 10), box(50, 50, 60, 60)]
    assert nms_polygons(polys, [0.5, 0.9, 0.1], 0.5) == [1, 2]


def test_oriented_box_polygon_keeps_area_and_centre() -> None:
    p = box_polygon([20, 10, 8, 4, 30])
    assert abs(p.area - 32) < 1e-9 and abs(p.centroid.x - 20) < 1e-9 and abs(p.centroid.y - 10) < 1e-9


def test_merger_maps_boxes_through_the_transform() -> None:
    t = Affine(2.0, 0, 1000.0, 0, -2.0, 5000.0)
    m = DetectionMerger(t, 100, 100)
    m.add(10, 20, 50, 50, np.array([[5, 5, 15, 25]]), np.array([0.8]), np.array([1]))
    frame = m.to_frame(["bg", "car"], "EPSG:32633")
    assert frame.geometry[0].equals(box(1000 + 2 * 25, 5000 - 2 * 35, 1000 + 2 * 35, 5000 - 2 * 15))
    assert frame.class_name[0] == "car" and frame.area[0] == 10 * 20 * 4


class TruthDetector:
    """Returns the scene's building boxes visible in each window (clipped to it), from the pixels.

    The windows' positions are recovered by matching the rendered input against the scene.
    """

    def __init__(
        self, boxes_px: list[tuple[float, float, float, float]], positions: list[tuple[int, int]]
    ) -> None:
        self.boxes, self.positions = boxes_px, positions

    def __call__(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for _ in range(x.shape[0]):
            r0, c0 = self.positions.pop(0)
            t = x.shape[-1]
            found = []
            for x1, y1, x2, y2 in self.boxes:
                a, b, c, d = max(x1 - c0, 0), max(y1 - r0, 0), min(x2 - c0, t), min(y2 - r0, t)
                if a < c and b < d:
                    found.append([a, b, c, d])
            out.append(
                {
                    "boxes": torch.tensor(found, dtype=torch.float64).reshape(-1, 4),
                    "scores": torch.rand(len(found), generator=torch.Generator().manual_seed(len(found))),
                    "labels": torch.ones(len(found), dtype=torch.int64),
                }
            )
        return out


def test_each_object_is_found_once_across_tile_overlaps(tmp_path: Path) -> None:
    scene = generate_scene(3, 300, scene_class=0)
    path = tmp_path / "scene.tif"
    write_geotiff(path, scene.image, scene.transform, scene.crs)
    inv = ~scene.transform
    boxes, truth = [], []
    for obj in scene.objects:
        if obj["class_id"] != 1:
            continue
        g = obj["geometry"]
        xs, ys = zip(*[inv @ p for p in g.exterior.coords], strict=True)
        boxes.append((min(xs), min(ys), max(xs), max(ys)))
        truth.append(box(*g.bounds))
    assert 3 <= len(boxes)
    tile, overlap = 96, 0.5  # overlap (48 px) larger than any building, so each is whole in some window
    from vitp_geo.tiling.planner import plan_windows

    plan = plan_windows(300, 300, tile, overlap)
    positions = [(r, c) for r in plan.row_offsets for c in plan.col_offsets]
    frame = detect_scene(
        path,
        TruthDetector(boxes, positions),
        ["background", "building"],
        tile_size=tile,
        overlap=overlap,
        batch_size=4,
        progress=False,
    )
    assert len(frame) == len(truth)  # one polygon per building, no duplicates from overlapping windows
    for g in truth:  # each building's box recovered in map coordinates
        best = max(frame.geometry, key=lambda p: p.intersection(g).area / p.union(g).area)
        assert best.intersection(g).area / best.union(g).area > 0.99
    assert frame.crs == scene.crs
