"""Detections over a whole scene: window boxes → map polygons → cross-tile NMS in map coordinates.

A detector maps a window batch (B, C, T, T) to one dict per window (torchvision style):
``boxes`` (N, 4) ``x1, y1, x2, y2`` or (N, 5) oriented ``cx, cy, w, h, angle`` (the convention of
``vitp_geo.geometry.obb``: radians, the w side along ``(cos, sin)`` in pixel axes),
``scores`` (N,) and ``labels`` (N,), all in window pixels; a Mask R-CNN adds ``masks`` (N, T, T)
bool, each turned into polygons on pixel edges (``rasterio.features.shapes``).

``DetectionMerger`` collects each window's boxes in scene pixels and merges them by the one
cross-window rule of ``vitp_geo.tiling.box_merge`` (also used for DOTA patches): boxes cut by an
inner window edge are kept and joined with the neighbouring windows' parts of the same object
(so an object larger than the overlap comes out whole), then class-wise rotated NMS at the
checkpoint's final NMS threshold, so a building seen by four windows is one polygon. The
decisions are taken on boxes in scene pixels: IoU is a ratio of areas, which any affine map (the
scene transform) preserves, so they are those polygon IoU in map coordinates would give; the
polygons are mapped through the scene's affine transform at the end. A mask follows its box: a
box kept as a window gave it is written as its mask's polygons, a box joined from several
windows' parts as the union of their masks (``JoinedBoxes.parts``); a box whose mask is empty at
the 0.5 threshold keeps its box polygon. ``detect_scene`` drives a
detector over a scene with the same planner and reader as segmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
import torch
from affine import Affine
from shapely import STRtree
from shapely.geometry import Polygon, box

from vitp_geo.constants import GDAL_CACHE_MB
from vitp_geo.geometry.obb import hbb_to_obb, obb_to_poly
from vitp_geo.io.raster import RenderRule
from vitp_geo.tiling.box_merge import JoinedBoxes, merge_window_boxes
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
    """Collect window detections and merge them across overlaps (``tiling.box_merge``'s rule).

    Boxes cut by an inner window edge are kept and joined with the other windows' parts of the
    same object; then class-wise rotated NMS. Polygons go to map coordinates at the end.

    Args:
        transform: the scene's pixel → map transform.
        height, width: scene size (pixels), to tell inner window edges from scene edges.
        iou_threshold: the merge (NMS) threshold: the checkpoint's ``box_merge.card_nms_threshold``.
        edge_margin: boxes within this many pixels of an inner window edge count as cut.
    """

    transform: Affine
    height: int
    width: int
    iou_threshold: float = 0.5
    edge_margin: float = 1.0
    _polys: list[np.ndarray] = field(default_factory=list, repr=False)  # (n, 4, 2) scene pixels
    _obb: list[np.ndarray] = field(default_factory=list, repr=False)  # (n, 5) scene pixels
    _scores: list[np.ndarray] = field(default_factory=list, repr=False)
    _labels: list[np.ndarray] = field(default_factory=list, repr=False)
    _horizontal: list[np.ndarray] = field(default_factory=list, repr=False)
    _window: list[np.ndarray] = field(default_factory=list, repr=False)
    _windows: list[tuple[int, int, int, int]] = field(default_factory=list, repr=False)
    _masks: list[object] = field(default_factory=list, repr=False)  # per box: scene-pixel geometry or None

    def add(
        self,
        row0: int,
        col0: int,
        h: int,
        w: int,
        boxes: np.ndarray,
        scores: np.ndarray,
        labels: np.ndarray,
        masks: np.ndarray | None = None,
    ) -> None:
        """Add one window's detections (pixel coordinates within the window); ``masks`` (N, ≥h, ≥w)
        bool instance masks of a Mask R-CNN, on the window's grid."""
        b = np.asarray(boxes, np.float64)
        if b.size == 0:
            b = b.reshape(0, b.shape[-1] if b.ndim == 2 else 4)
        if b.ndim != 2 or b.shape[1] not in (4, 5):
            raise ValueError(
                f"window ({row0}, {col0}): boxes must be (N, 4) x1, y1, x2, y2 or (N, 5) cx, cy, w, h, "
                f"angle, got shape {b.shape}"
            )
        n = b.shape[0]
        s, lab = np.asarray(scores, np.float64).reshape(-1), np.asarray(labels).astype(np.int64).reshape(-1)
        if s.shape != (n,) or lab.shape != (n,):
            raise ValueError(
                f"window ({row0}, {col0}): {n} boxes but {s.shape[0]} scores and {lab.shape[0]} labels"
            )
        t = torch.from_numpy(b)
        if b.shape[1] == 4:
            x1, y1, x2, y2 = b.T
            corners = np.stack([x1, y1, x2, y1, x2, y2, x1, y2], 1).reshape(-1, 4, 2)
            obb = hbb_to_obb(t).numpy()
        else:
            corners = obb_to_poly(t).numpy().reshape(-1, 4, 2)
            obb = b.copy()
        corners = corners + (col0, row0)
        obb[:, 0] += col0
        obb[:, 1] += row0
        self._polys.append(corners)
        self._obb.append(obb)
        self._scores.append(s)
        self._labels.append(lab)
        self._horizontal.append(np.full(n, b.shape[1] == 4))
        if masks is not None:
            m = np.asarray(masks, bool)
            if m.ndim != 3 or m.shape[0] != n or m.shape[1] < h or m.shape[2] < w:
                raise ValueError(
                    f"window ({row0}, {col0}): masks must be ({n}, >= {h}, >= {w}), got {m.shape}"
                )
            self._masks.extend(mask_geometry(k[:h, :w], row0, col0) for k in m)
        else:
            self._masks.extend([None] * n)
        self._window.append(np.full(n, len(self._windows), np.int64))
        self._windows.append((row0, col0, h, w))

    def _cat(self, parts: list[np.ndarray], shape: tuple[int, ...], dtype: type) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(shape, dtype)

    @property
    def polygons(self) -> list[Polygon]:
        """Every added box as a polygon in map coordinates."""
        return list(self._map(self._cat(self._polys, (0, 4, 2), np.float64)))

    @property
    def scores(self) -> list[float]:
        return self._cat(self._scores, (0,), np.float64).tolist()

    @property
    def labels(self) -> list[int]:
        return self._cat(self._labels, (0,), np.int64).tolist()

    def _map(self, polys: np.ndarray) -> np.ndarray:
        """(N, 4, 2) scene pixels → (N,) shapely polygons in map coordinates."""
        t = self.transform
        x, y = polys[..., 0], polys[..., 1]
        xy = np.stack([t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f], -1)
        return shapely.polygons(xy) if len(xy) else np.zeros(0, object)

    def merged(self) -> JoinedBoxes:
        """The merged detections in scene pixels (``JoinedBoxes.source``: the added box kept, in
        the order added, or -1 for a box covering an object's parts from several windows)."""
        return merge_window_boxes(
            self._cat(self._polys, (0, 4, 2), np.float64),
            self._cat(self._scores, (0,), np.float64),
            self._cat(self._labels, (0,), np.int64),
            self._cat(self._window, (0,), np.int64),
            np.asarray(self._windows, np.float64).reshape(-1, 4),
            self.height,
            self.width,
            self.iou_threshold,
            horizontal=self._cat(self._horizontal, (0,), bool),
            obb=self._cat(self._obb, (0, 5), np.float64),
            edge_margin=self.edge_margin,
        )

    def _mask_polygons(self, kept: JoinedBoxes, boxes: np.ndarray) -> np.ndarray:
        """Each kept box's geometry in map coordinates: its parts' masks joined (module doc), as
        MultiPolygons (one geometry type per layer, as the GeoPackage specification asks)."""
        t = self.transform
        out = np.empty(len(boxes), object)
        for k, parts in enumerate(kept.parts.tolist()):
            geoms = [self._masks[i] for i in parts if self._masks[i] is not None]
            g = boxes[k]
            if geoms:
                g = shapely.affinity.affine_transform(
                    shapely.union_all(geoms), [t.a, t.b, t.d, t.e, t.c, t.f]
                )
            out[k] = g if g.geom_type == "MultiPolygon" else shapely.MultiPolygon([g])
        return out

    def to_frame(self, class_names: Sequence[str], crs: object) -> gpd.GeoDataFrame:
        """The merged detections: ``class_id, class_name, score, area`` and polygon geometry."""
        kept = self.merged()
        polys = self._map(kept.polys)
        if any(g is not None for g in self._masks):
            polys = self._mask_polygons(kept, polys)
        return gpd.GeoDataFrame(
            {
                "class_id": kept.labels.astype(np.int32),
                "class_name": [class_names[i] for i in kept.labels.tolist()],
                "score": kept.scores.astype(np.float64),
                "area": np.asarray(shapely.area(polys), np.float64),
            },
            geometry=gpd.GeoSeries(polys, crs=crs),
            crs=crs,
        )


def mask_geometry(mask: np.ndarray, row0: int, col0: int) -> object:
    """A window's (h, w) bool mask as a (Multi)Polygon on pixel edges in scene pixels, or None if empty."""
    from rasterio.features import shapes
    from shapely.geometry import shape

    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    r0, c0 = int(rows[0]), int(cols[0])
    crop = mask[r0 : int(rows[-1]) + 1, c0 : int(cols[-1]) + 1].astype(np.uint8)
    where = Affine.translation(col0 + c0, row0 + r0)
    return shapely.union_all([shape(g) for g, _ in shapes(crop, mask=crop.astype(bool), transform=where)])


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
                    out["masks"].cpu().numpy()[keep] if "masks" in out else None,
                )
            bar.update(len(windows[g : g + batch_size]))
        bar.close()
        return merger.to_frame(class_names, reader.profile.get("crs"))
    finally:
        reader.close()
