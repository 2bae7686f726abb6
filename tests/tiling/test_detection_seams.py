"""Objects larger than the window overlap: cut in every window that sees them, merged back whole.

The detectors here see only the pixels of the window they are given (no window positions, no
planner order), and the objects are longer than the overlap of two windows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from affine import Affine
from rasterio.features import rasterize, shapes
from shapely.affinity import rotate
from shapely.geometry import Polygon, box, shape

from vitp_geo.geometry.obb import obb_to_poly, poly_to_obb
from vitp_geo.io.raster import write_geotiff
from vitp_geo.tiling.box_merge import card_nms_threshold, merge_window_boxes, nms_threshold
from vitp_geo.tiling.dota_split import merge_patch_detections, patch_name
from vitp_geo.tiling.planner import plan_windows
from vitp_geo.tiling.window_detections import DetectionMerger, detect_scene

TRANSFORM = Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 5_000_000.0)


class PixelDetector:
    """Bright connected regions of a window → their minimum-area rectangles (``obb``) or their
    horizontal envelopes (``hbb``). Only the window's pixels are used."""

    def __init__(self, oriented: bool) -> None:
        self.oriented = oriented

    def __call__(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for img in x:
            mask = (img.mean(0) > 0.5).numpy().astype(np.uint8)
            polys = [shape(g) for g, v in shapes(mask, mask=mask.astype(bool)) if v == 1]
            polys = [p for p in polys if p.area > 20]
            if self.oriented:
                quads = [np.asarray(shapely.minimum_rotated_rectangle(p).exterior.coords)[:4] for p in polys]
                boxes = poly_to_obb(torch.tensor(np.asarray(quads, np.float64)).reshape(-1, 8))
            else:
                boxes = torch.tensor([p.bounds for p in polys], dtype=torch.float64).reshape(-1, 4)
            n = boxes.shape[0]
            scores = torch.linspace(0.9, 0.6, n) if n else torch.zeros(0)
            out.append({"boxes": boxes, "scores": scores, "labels": torch.zeros(n, dtype=torch.long)})
        return out


# Tile 128, overlap 0.25: windows at 0, 96, 192 on each axis (32 px shared). Every object but the
# last is longer than 32 px and crosses a seam; two of them cross a window corner (four windows),
# one spans three windows and is whole in none; two short bars sit 4 px apart on both sides of a
# seam (they must stay two objects).
OBJECTS = [
    (112, 40, 90, 14, 0),  # across the first vertical seam
    (110, 110, 100, 18, 30),  # across the corner of four windows, rotated
    (215, 205, 80, 20, -50),  # across another corner
    (160, 280, 220, 16, 0),  # spans three windows, seen whole by none
    (290, 150, 16, 120, 10),  # across the horizontal seams, tall
    (100, 180, 40, 12, 0),  # two neighbours across a seam, 4 px apart
    (144, 180, 40, 12, 0),
    (40, 230, 24, 12, 0),  # small, inside one window: untouched
]


def _scene(path: Path) -> list[Polygon]:
    rects = [
        rotate(box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), ang, origin=(cx, cy))
        for cx, cy, w, h, ang in OBJECTS
    ]
    img = rasterize([(r, 255) for r in rects], out_shape=(320, 320), fill=0, dtype="uint8")
    write_geotiff(path, np.stack([img] * 3), TRANSFORM, "EPSG:32633")
    return rects


def _to_map(p: Polygon) -> Polygon:
    return Polygon([TRANSFORM @ xy for xy in p.exterior.coords])


def _iou(a: Polygon, b: Polygon) -> float:
    return a.intersection(b).area / a.union(b).area


@pytest.mark.parametrize("oriented", [True, False], ids=["obb", "hbb"])
def test_objects_larger_than_the_overlap_come_back_whole_once(tmp_path: Path, oriented: bool) -> None:
    rects = _scene(tmp_path / "s.tif")
    plan = plan_windows(320, 320, 128, 0.25)
    assert list(plan.row_offsets) == list(plan.col_offsets) == [0, 96, 192]  # 32 px overlap
    truth = [_to_map(r if oriented else shapely.envelope(r)) for r in rects]
    frame = detect_scene(
        tmp_path / "s.tif",
        PixelDetector(oriented),
        ["thing"],
        tile_size=128,
        overlap=0.25,
        batch_size=3,
        iou_threshold=nms_threshold("obb" if oriented else "hbb"),
        progress=False,
    )
    assert len(frame) == len(truth)  # nothing lost, nothing doubled
    for t in truth:
        ious = [_iou(t, g) for g in frame.geometry]
        assert max(ious) > 0.85, (t.bounds, max(ious))
        assert sum(i > 0.05 for i in ious) == 1
    if not oriented:  # horizontal boxes stay axis-aligned
        assert all(g.equals(shapely.envelope(g)) for g in frame.geometry)


def test_a_200px_ship_at_tile_512_overlap_025_is_one_box() -> None:
    """The review's case: a ship from column 350 to 550 is cut by both windows (0–512, 384–896)."""
    m = DetectionMerger(Affine.identity(), 512, 896)  # windows at columns 0 and 384 (128 px shared)
    m.add(0, 0, 512, 512, np.array([[350, 100, 512, 140]]), np.array([0.8]), np.array([2]))
    m.add(0, 384, 512, 512, np.array([[0, 101, 166, 139]]), np.array([0.7]), np.array([2]))
    frame = m.to_frame(["a", "b", "ship"], None)
    assert len(frame) == 1 and frame.class_name[0] == "ship" and frame.score[0] == pytest.approx(0.8)
    assert frame.geometry[0].equals(box(350, 100, 550, 140))


def test_parts_of_different_classes_or_apart_are_not_joined() -> None:
    m = DetectionMerger(Affine.identity(), 512, 896)
    m.add(
        0,
        0,
        512,
        512,
        np.array([[300, 100, 512, 140], [300, 300, 512, 340]]),
        np.array([0.8, 0.8]),
        np.array([0, 0]),
    )
    # the same place, another class; and a part 30 px lower than the first window's second part
    m.add(
        0,
        384,
        512,
        512,
        np.array([[0, 100, 116, 140], [0, 330, 116, 370]]),
        np.array([0.7, 0.7]),
        np.array([1, 0]),
    )
    assert len(m.to_frame(["a", "b"], None)) == 4


def test_a_part_seen_whole_by_a_neighbour_gives_the_whole_box() -> None:
    m = DetectionMerger(Affine.identity(), 512, 896, iou_threshold=0.5)
    m.add(0, 0, 512, 512, np.array([[420, 100, 512, 140]]), np.array([0.9]), np.array([0]))  # cut part
    m.add(0, 384, 512, 512, np.array([[36, 100, 96, 140]]), np.array([0.6]), np.array([0]))  # whole: 420..480
    frame = m.to_frame(["a"], None)
    assert len(frame) == 1 and frame.geometry[0].equals(box(420, 100, 480, 140))


def test_a_part_touching_two_objects_seen_whole_keeps_both() -> None:
    m = DetectionMerger(Affine.identity(), 512, 896, iou_threshold=0.1)
    m.add(0, 0, 512, 512, np.array([[400, 100, 512, 175]]), np.array([0.95]), np.array([0]))  # one blob
    whole = np.array([[16, 100, 96, 140], [16, 135, 96, 175]])  # two objects, 5 px shared
    m.add(0, 384, 512, 512, whole, np.array([0.9, 0.6]), np.array([0, 0]))
    frame = m.to_frame(["a"], None)
    assert sorted(g.bounds for g in frame.geometry) == [(400, 100, 480, 140), (400, 135, 480, 175)]


def test_an_oriented_object_over_four_windows_is_the_rectangle_around_its_parts() -> None:
    truth = torch.tensor([[500.0, 500.0, 300.0, 60.0, 0.6]])  # centred on the corner of four windows
    true_poly = Polygon(obb_to_poly(truth).reshape(4, 2).tolist())
    windows = [(0, 0), (0, 384), (384, 0), (384, 384)]
    polys, win = [], []
    for k, (r, c) in enumerate(windows):
        part = true_poly.intersection(box(c, r, c + 512, r + 512))
        polys.append(np.asarray(shapely.minimum_rotated_rectangle(part).exterior.coords)[:4])
        win.append(k)
    kept = merge_window_boxes(
        np.stack(polys),
        np.array([0.9, 0.8, 0.7, 0.6]),
        np.zeros(4),
        np.array(win),
        np.array([(r, c, 512, 512) for r, c in windows]),
        896,
        896,
        nms_threshold("obb"),
    )
    assert len(kept.scores) == 1 and kept.source.tolist() == [-1] and kept.scores[0] == pytest.approx(0.9)
    assert _iou(Polygon(kept.polys[0]), true_poly) > 0.97


def test_dota_patches_rejoin_an_object_longer_than_the_gap() -> None:
    """A 400 px ship across the seam of two 1024 px patches with a 200 px gap: the old NMS at 0.1
    kept one of the two parts."""
    ship = box(700, 300, 1100, 360)
    preds = {}
    for left in (0, 824):
        part = np.asarray(ship.intersection(box(left, 0, left + 1024, 1024)).exterior.coords)[:4] - (left, 0)
        preds[patch_name("P0001", 1.0, left, 0)] = {
            "bbox_xyxyxyxy": torch.tensor(np.clip(part, 1, 1024)).reshape(1, 8),
            "label": torch.tensor([3]),
            "score": torch.tensor([0.9 if left == 0 else 0.7]),
        }
    m = merge_patch_detections(preds)
    assert m["P0001"]["label"].tolist() == [3]
    got = Polygon(m["P0001"]["bbox_xyxyxyxy"][0].reshape(4, 2).tolist())
    assert _iou(got, ship) > 0.99


def test_one_threshold_from_the_checkpoint() -> None:
    assert nms_threshold("hbb") == 0.5 and nms_threshold("obb") == 0.1 and nms_threshold("obb", 0.3) == 0.3
    assert card_nms_threshold({"box_type": "obb", "detector": {"nms_thresh": None}}) == 0.1
    assert card_nms_threshold({"box_type": "hbb", "detector": {"nms_thresh": 0.6}}) == 0.6
    with pytest.raises(ValueError, match="nms_thresh must be in \\[0, 1\\], got 1.5"):
        nms_threshold("obb", 1.5)
    with pytest.raises(ValueError, match="box_type must be 'hbb' or 'obb', got 'rbox'"):
        nms_threshold("rbox")
