"""Class raster → polygons on the pixel grid, strip by strip.

``polygonize_rows`` reads a class map (and a per-pixel confidence) in horizontal strips, turns
each strip's connected regions of one class (4-connectivity) into polygons with
``rasterio.features.shapes`` (edges on pixel boundaries), and joins the pieces of regions cut
by strip borders with a per-class union. Each polygon carries its class id and name, its score
(mean confidence of its pixels), its area in map units² and its pixel count; polygons smaller
than ``min_area_px`` pixels are dropped after joining. Memory: one strip plus the polygons.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import geopandas as gpd
import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize, shapes
from shapely import STRtree
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

RowReader = Callable[[int, int], tuple[np.ndarray, np.ndarray]]  # (r0, r1) → classes (h,W), conf (h,W)
COLUMNS = ["class_id", "class_name", "score", "area", "pixels"]


def polygonize_rows(
    read_rows: RowReader,
    *,
    height: int,
    width: int,
    transform: Affine,
    crs: CRS | str | None,
    class_names: Sequence[str],
    nodata: int,
    min_area_px: int = 0,
    strip_rows: int = 512,
) -> gpd.GeoDataFrame:
    """Polygons of every class region of a (height × width) class raster.

    Args:
        read_rows: returns ``(classes (h, W) uint8, confidence (h, W) float)`` for rows [r0, r1).
        height, width: raster size.
        transform, crs: georeferencing of the raster.
        class_names: name per class id.
        nodata: class value that is not a class (no polygon).
        min_area_px: drop polygons with fewer pixels.
        strip_rows: rows per strip.

    Returns:
        GeoDataFrame with ``class_id, class_name, score, area, pixels`` and polygon geometry.
    """
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    done: list[tuple[int, BaseGeometry, float, int]] = []  # (class, geom, conf sum, pixels)
    open_pieces: dict[int, list[tuple[BaseGeometry, float, int]]] = defaultdict(list)
    for r0 in range(0, height, strip_rows):
        r1 = min(height, r0 + strip_rows)
        cls, conf = read_rows(r0, r1)
        t = transform @ Affine.translation(0, r0)
        valid = cls != nodata
        if not valid.any():
            continue
        pieces = [(shape(g), int(v)) for g, v in shapes(cls, mask=valid, connectivity=4, transform=t)]
        labels = rasterize(
            ((g, i + 1) for i, (g, _) in enumerate(pieces)), out_shape=cls.shape, transform=t, dtype="int32"
        )  # pixel-grid polygons: exact pixel sets
        count = np.bincount(labels.ravel(), minlength=len(pieces) + 1)
        csum = np.bincount(
            labels.ravel(), weights=np.nan_to_num(conf.ravel().astype(np.float64)), minlength=len(pieces) + 1
        )
        edge: set[int] = set()  # pieces touching a strip border inside the raster
        if r0 > 0:
            edge.update(np.unique(labels[0]).tolist())
        if r1 < height:
            edge.update(np.unique(labels[-1]).tolist())
        for i, (geom, cid) in enumerate(pieces):
            item = (geom, float(csum[i + 1]), int(count[i + 1]))
            if i + 1 in edge:
                open_pieces[cid].append(item)
            else:
                done.append((cid, *item))
    for cid, items in open_pieces.items():
        merged = unary_union([g for g, _, _ in items])
        parts = list(getattr(merged, "geoms", [merged]))
        # Which joined part each piece went into: one spatial-index query (was parts × pieces tests).
        points = [g.representative_point() for g, _, _ in items]
        piece_idx, part_idx = STRtree(parts).query(points, predicate="within")
        sums = np.zeros(len(parts))
        pixels = np.zeros(len(parts), np.int64)
        np.add.at(sums, part_idx, [items[i][1] for i in piece_idx])
        np.add.at(pixels, part_idx, [items[i][2] for i in piece_idx])
        for j, part in enumerate(parts):
            done.append((cid, part, float(sums[j]), int(pixels[j])))
    records = [
        {
            "class_id": cid,
            "class_name": class_names[cid] if cid < len(class_names) else str(cid),
            "score": s / n if n else 0.0,
            "area": n * pixel_area,
            "pixels": n,
            "geometry": g,
        }
        for cid, g, s, n in done
        if n >= max(min_area_px, 1)
    ]
    if not records:
        return gpd.GeoDataFrame(
            {c: [] for c in COLUMNS}, geometry=gpd.GeoSeries([], crs=crs), crs=crs
        ).astype(
            {
                "class_id": "int32",
                "class_name": "str",
                "score": "float64",
                "area": "float64",
                "pixels": "int64",
            }
        )
    frame = gpd.GeoDataFrame(records, geometry="geometry", crs=crs)
    frame = frame.sort_values(["class_id", "pixels"], ascending=[True, False], kind="stable")
    return frame.reset_index(drop=True).astype({"class_id": "int32", "pixels": "int64"})
