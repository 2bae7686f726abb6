"""Detections over a whole scene: window boxes → map polygons → cross-tile NMS in map coordinates.

A detector maps a window batch (B, C, T, T) to one dict per window (torchvision style):
``boxes`` (N, 4) ``x1, y1, x2, y2`` or (N, 5) oriented ``cx, cy, w, h, angle`` (the convention of
``vitp_geo.geometry.obb``: radians, the w side along ``(cos, sin)`` in pixel axes),
``scores`` (N,) and ``labels`` (N,), all in window pixels.

``DetectionMerger`` converts each window's boxes to polygons in map coordinates through the
scene's affine transform, drops boxes cut by an inner window edge (the neighbouring window, which
overlaps by more than an object, sees them whole), and at the end runs per-class non-maximum
suppression, so a building seen by four windows is one polygon. The suppression is the tensor
``batched_rotated_nms`` on the boxes in scene pixels: IoU is a ratio of areas, which any affine
map (the scene transform) preserves, so this is the same decision as polygon IoU in map
coordinates, made by the one NMS rule of the detectors. ``detect_scene`` drives a detector over a scene with the same planner and reader as
segmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import torch
from affine import Affine
from shapely import STRtree
from shapely.geometry import Polygon, box

from vitp_geo.constants import GDAL_CACHE_MB
from vitp_geo.geometry.obb import batched_rotated_nms, hbb_to_obb, obb_to_poly
from vitp_geo.io.raster import RenderRule
from vitp_geo.tiling.planner import plan_windows
from vitp_geo.tiling.progress import ProgressMode, progress_bar
from vitp_geo.tiling.reader import SceneWindowReader

Detector = Callable[[torch.Tensor], Sequence[dict[str, torch.Tensor]]]


def box_polygon(b: Sequence[float]) -> Polygon:
    """A pixel-space polygon from ``(x1, y1, x2, y2)`` or oriented ``(cx, cy, w, h, angle)`` (radians)."""
    if len(b) == 4:
        return box(*b)
    if len(b) == 5:
        corners = obb_to_poly(torch.tensor([list(b)], dtype=torch.float64))[0]
        return Polygon(corners.reshape(4, 2).tolist())
    raise ValueError(f"a box has 4 (x1, y1, x2, y2) or 5 (cx, cy, w, h, angle) values, got {len(b)}")


def to_map(poly: Polygon, transform: Affine) -> Polygon:
    """Pixel (col, row) polygon → map coordinates."""
    return Polygon([transform @ (x, y) for x, y in poly.exterior.coords])


def nms_polygons(polys: Sequence[Polygon], scores: Sequence[float], iou_threshold: float) -> list[int]:
    """Indices kept by greedy NMS on polygon IoU (highest score first).

    Any polygons (shapely); a polygon is dropped when its IoU with a kept one is strictly greater
    than ``iou_threshold``, the rule of ``rotated_nms``. The merger uses the tensor
    ``batched_rotated_nms``; this is its reference for polygons that are not rectangles.
    """
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    tree = STRtree(list(polys))
    removed = np.zeros(len(polys), bool)
    keep: list[int] = []
    for i in order:
        if removed[i]:
            continue
        keep.append(int(i))
        for j in tree.query(polys[i]):
            if j == i or removed[j]:
                continue
            inter = polys[i].intersection(polys[j]).area
            union = polys[i].area + polys[j].area - inter
            if union > 0 and inter / union > iou_threshold:
                removed[j] = True
    return keep


@dataclass
class DetectionMerger:
    """Collect window detections in map coordinates and merge them across overlaps.

    Args:
        transform: the scene's pixel → map transform.
        height, width: scene size (pixels), to tell inner window edges from scene edges.
        iou_threshold: NMS threshold on polygon IoU.
        edge_margin: boxes within this many pixels of an inner window edge are dropped.
    """

    transform: Affine
    height: int
    width: int
    iou_threshold: float = 0.5
    edge_margin: float = 1.0
    polygons: list[Polygon] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)  # oriented boxes in scene pixels

    def add(
        self, row0: int, col0: int, h: int, w: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray
    ) -> None:
        """Add one window's detections (pixel coordinates within the window)."""
        inner = (
            col0 > 0,
            row0 > 0,
            col0 + w < self.width,
            row0 + h < self.height,
        )  # left, top, right, bottom
        m = self.edge_margin
        for b, s, lab in zip(
            np.asarray(boxes, np.float64), np.asarray(scores), np.asarray(labels), strict=True
        ):
            poly = box_polygon(b.tolist())
            x1, y1, x2, y2 = poly.bounds
            if (
                (inner[0] and x1 <= m)
                or (inner[1] and y1 <= m)
                or (inner[2] and x2 >= w - m)
                or (inner[3] and y2 >= h - m)
            ):
                continue  # cut by an inner edge: a neighbouring window sees it whole
            poly = to_map(Polygon([(x + col0, y + row0) for x, y in poly.exterior.coords]), self.transform)
            self.polygons.append(poly)
            self.boxes.append(_scene_obb(b, row0, col0))
            self.scores.append(float(s))
            self.labels.append(int(lab))

    def merged(self) -> list[int]:
        """Indices of detections kept by per-class NMS."""
        if not self.boxes:
            return []
        keep = batched_rotated_nms(
            torch.tensor(self.boxes, dtype=torch.float64),
            torch.tensor(self.scores, dtype=torch.float64),
            torch.tensor(self.labels, dtype=torch.int64),
            self.iou_threshold,
        )
        return sorted(keep.tolist())

    def to_frame(self, class_names: Sequence[str], crs: object) -> gpd.GeoDataFrame:
        """The merged detections: ``class_id, class_name, score, area`` and polygon geometry."""
        keep = self.merged()
        return gpd.GeoDataFrame(
            {
                "class_id": np.asarray([self.labels[i] for i in keep], np.int32),
                "class_name": [class_names[self.labels[i]] for i in keep],
                "score": np.asarray([self.scores[i] for i in keep], np.float64),
                "area": np.asarray([self.polygons[i].area for i in keep], np.float64),
            },
            geometry=gpd.GeoSeries([self.polygons[i] for i in keep], crs=crs),
            crs=crs,
        )


def _scene_obb(b: np.ndarray, row0: int, col0: int) -> list[float]:
    """A window box (4 or 5 values) as an oriented box ``cx, cy, w, h, angle`` in scene pixels."""
    t = torch.as_tensor(b, dtype=torch.float64)[None]
    obb = hbb_to_obb(t)[0] if t.shape[1] == 4 else t[0].clone()
    obb[0] += col0
    obb[1] += row0
    return obb.tolist()


def detect_scene(
    scene: str | Path,
    detector: Detector,
    class_names: Sequence[str],
    *,
    tile_size: int = 512,
    overlap: float = 0.25,
    batch_size: int = 8,
    rule: RenderRule = RenderRule(),
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (255.0, 255.0, 255.0),
    iou_threshold: float = 0.5,
    score_threshold: float = 0.0,
    progress: ProgressMode = True,
    raw_input: bool = False,
) -> gpd.GeoDataFrame:
    """Run ``detector`` over every window of ``scene`` and merge the boxes in map coordinates.

    ``raw_input``: feed the selected bands' raw values (normalised by ``mean`` / ``std``), as for
    models trained on the rasters' own values (``SceneWindowReader(raw=True)``).

    Returns:
        GeoDataFrame of merged detections in the scene's CRS (see ``DetectionMerger.to_frame``).
    """
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):  # bounded block cache, independent of the scene
        return _detect(
            scene,
            detector,
            class_names,
            tile_size,
            overlap,
            batch_size,
            rule,
            mean,
            std,
            iou_threshold,
            score_threshold,
            progress,
            raw_input,
        )


def _detect(
    scene: str | Path,
    detector: Detector,
    class_names: Sequence[str],
    tile_size: int,
    overlap: float,
    batch_size: int,
    rule: RenderRule,
    mean: Sequence[float],
    std: Sequence[float],
    iou_threshold: float,
    score_threshold: float,
    progress: ProgressMode,
    raw_input: bool = False,
) -> gpd.GeoDataFrame:
    reader = SceneWindowReader([scene], rule, mean, std, raw=raw_input)
    try:
        plan = plan_windows(reader.height, reader.width, tile_size, overlap)
        merger = DetectionMerger(reader.profile["transform"], reader.height, reader.width, iou_threshold)
        windows = [(r, c) for r in plan.row_offsets for c in plan.col_offsets]
        bar = progress_bar(progress, total=len(windows), desc="detect", unit="window")
        for g in range(0, len(windows), batch_size):
            batch, where = [], []
            for r, c in windows[g : g + batch_size]:
                x, valid = reader.read(r, c, plan.tile_h, plan.tile_w)
                if valid.any():
                    pad = ((0, 0), (0, tile_size - plan.tile_h), (0, tile_size - plan.tile_w))
                    batch.append(np.pad(x, pad))
                    where.append((r, c))
            if not batch:
                bar.update(len(windows[g : g + batch_size]))
                continue
            with torch.inference_mode():
                outs = detector(torch.from_numpy(np.stack(batch)))
            for (r, c), out in zip(where, outs, strict=True):
                keep = out["scores"].cpu().numpy() >= score_threshold
                merger.add(
                    r,
                    c,
                    plan.tile_h,
                    plan.tile_w,
                    out["boxes"].cpu().numpy()[keep],
                    out["scores"].cpu().numpy()[keep],
                    out["labels"].cpu().numpy()[keep],
                )
            bar.update(len(windows[g : g + batch_size]))
        bar.close()
        return merger.to_frame(class_names, reader.profile.get("crs"))
    finally:
        reader.close()
