"""Cross-tile detection merging in map coordinates, with a fake detector that sees the true objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
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
    """Returns the scene's building boxes visible in each window (clipped to it).

    The scene's pixels hold their own coordinates (band 1: row, band 2: column), so the detector
    reads where each window lies from its input, whatever order or batching the engine uses.
    """

    def __init__(self, boxes_px: list[tuple[float, float, float, float]]) -> None:
        self.boxes = boxes_px
        self.seen: list[tuple[int, int]] = []

    def __call__(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        t = x.shape[-1]
        for window in x:
            r0, c0 = int(window[0, 0, 0]), int(window[1, 0, 0])
            assert (
                int(window[0, 5, 0]) == r0 + 5 and int(window[1, 0, 7]) == c0 + 7
            )  # really the scene's pixels
            self.seen.append((r0, c0))
            found = []
            for x1, y1, x2, y2 in self.boxes:
                a, b, c, d = max(x1 - c0, 0), max(y1 - r0, 0), min(x2 - c0, t), min(y2 - r0, t)
                if a < c and b < d:
                    found.append([a, b, c, d])
            out.append(
                {
                    "boxes": torch.tensor(found, dtype=torch.float64).reshape(-1, 4),
                    "scores": torch.rand(len(found), generator=torch.Generator().manual_seed(r0 * 1000 + c0)),
                    "labels": torch.ones(len(found), dtype=torch.int64),
                }
            )
        return out


def _coordinate_scene(tmp_path: Path):  # noqa: ANN202
    """The synthetic scene's buildings (pixel boxes, map boxes) over pixels that hold (row, col)."""
    scene = generate_scene(3, 300, scene_class=0)
    rows, cols = np.mgrid[0:300, 0:300].astype(np.uint16)
    path = tmp_path / "scene.tif"
    write_geotiff(path, np.stack([rows, cols, np.zeros_like(rows)]), scene.transform, scene.crs)
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
    return scene, path, boxes, truth


@pytest.mark.parametrize("overlap", [0.5, 0.1], ids=["overlap-wider-than-objects", "objects-cut-everywhere"])
def test_each_object_is_found_once_across_tile_overlaps(tmp_path: Path, overlap: float) -> None:
    from vitp_geo.tiling.planner import plan_windows

    scene, path, boxes, truth = _coordinate_scene(tmp_path)
    tile = 96
    plan = plan_windows(300, 300, tile, overlap)
    windows = [(r, c) for r in plan.row_offsets for c in plan.col_offsets]

    def whole_in_some_window(b: tuple[float, float, float, float]) -> bool:
        return any(c <= b[0] and r <= b[1] and b[2] <= c + tile and b[3] <= r + tile for r, c in windows)

    cut = [b for b in boxes if not whole_in_some_window(b)]
    if overlap == 0.1:  # objects larger than the overlap: only joining their parts gives them whole
        assert len(cut) >= 2, "the test must cut some objects in every window that sees them"
    else:
        assert not cut
    detector = TruthDetector(boxes)
    frame = detect_scene(
        path,
        detector,
        ["background", "building"],
        tile_size=tile,
        overlap=overlap,
        batch_size=3,
        raw_input=True,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        progress=False,
    )
    assert sorted(detector.seen) == sorted(windows)  # every window read once, wherever it came in a batch
    assert len(frame) == len(truth)  # one polygon per building, no duplicates from overlapping windows
    for g in truth:  # each building's box recovered in map coordinates
        best = max(frame.geometry, key=lambda p: p.intersection(g).area / p.union(g).area)
        assert best.intersection(g).area / best.union(g).area > 0.99
    assert frame.crs == scene.crs
