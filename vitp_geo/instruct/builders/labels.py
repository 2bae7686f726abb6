"""Vector labels → polygons in a raster's pixel grid.

Labels in any format GDAL reads (GeoPackage, GeoJSON, Shapefile, …) and any CRS are reprojected
to the raster's CRS with geopandas, repaired with ``shapely.make_valid`` (counted), reduced to
their polygonal parts (points and lines are dropped and counted), and mapped to pixel coordinates
with the inverse of the raster transform (so rotated transforms work too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import shapely
from shapely.affinity import affine_transform
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from vitp_geo.instruct.builders.context import BuildSummary
from vitp_geo.instruct.builders.raster_scene import RasterGrid

# Fields tried, in order, when no --class-field is given.
DEFAULT_CLASS_FIELDS = ("class_name", "class", "label", "category")


@dataclass
class PixelLabels:
    """Label polygons in the raster's pixel coordinates (x = column, y = row)."""

    geometries: list[BaseGeometry]  # Polygon or MultiPolygon, pixel coordinates
    map_geometries: list[BaseGeometry]  # the same in the raster CRS
    classes: list[str]  # class name per geometry
    vocabulary: list[str]  # every class name, sorted


def _polygonal(geom: BaseGeometry) -> BaseGeometry | None:
    if isinstance(geom, (Polygon, MultiPolygon)):
        return geom
    polys = [g for g in getattr(geom, "geoms", []) if isinstance(g, (Polygon, MultiPolygon))]
    parts: list[Polygon] = []
    for p in polys:
        parts.extend(p.geoms if isinstance(p, MultiPolygon) else [p])
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def load_pixel_labels(
    path: str | Path,
    raster: RasterGrid,
    *,
    class_field: str | None = None,
    default_class: str = "object",
    summary: BuildSummary | None = None,
) -> PixelLabels:
    """Read vector labels and place them on ``raster``'s pixel grid.

    Args:
        path: the vector file.
        raster: the raster's grid (its size, CRS and transform are used).
        class_field: attribute holding the class name; None tries ``DEFAULT_CLASS_FIELDS`` and
            falls back to ``default_class`` for every feature.
        default_class: class name used when there is no class field.
        summary: repaired / dropped geometries are counted here.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, no CRS, unknown ``class_field``, or no polygon overlaps the raster.
    """
    path = Path(path)
    summary = summary if summary is not None else BuildSummary()
    if not path.exists():
        raise FileNotFoundError(f"labels not found: {path}")
    try:
        frame = gpd.read_file(path, engine="pyogrio")
    except Exception as err:  # pyogrio raises several DataSourceError subclasses
        raise ValueError(f"cannot read labels {path}: {err}") from err
    if frame.crs is None:
        raise ValueError(
            f"labels {path} have no CRS; set one (e.g. ogr2ogr -a_srs EPSG:XXXX) before building"
        )
    if raster.crs is None:
        raise ValueError(f"raster {raster.path} has no CRS; labels {path} cannot be placed on it")
    if class_field is not None and class_field not in frame.columns:
        fields = [c for c in frame.columns if c != frame.geometry.name]
        raise ValueError(f"labels {path} have no field {class_field!r}; fields are: {', '.join(fields)}")
    if class_field is None:
        class_field = next((f for f in DEFAULT_CLASS_FIELDS if f in frame.columns), None)
    frame = frame.to_crs(raster.crs)

    inv = ~raster.transform
    matrix = [inv.a, inv.b, inv.d, inv.e, inv.c, inv.f]
    geoms: list[BaseGeometry] = []
    map_geoms: list[BaseGeometry] = []
    classes: list[str] = []
    for i, geom in enumerate(frame.geometry):
        if geom is None or geom.is_empty:
            summary.objects_dropped["empty geometry"] += 1
            continue
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
            summary.geometries_repaired += 1
        poly = _polygonal(geom)
        if poly is None or poly.area <= 0:
            summary.objects_dropped["not a polygon"] += 1
            continue
        if class_field is None:
            name = default_class
        else:
            value = frame[class_field].iloc[i]
            if value is None or (isinstance(value, float) and value != value):
                summary.objects_dropped[f"no value in {class_field!r}"] += 1
                continue
            name = str(value)
        geoms.append(affine_transform(poly, matrix))
        map_geoms.append(poly)
        classes.append(name)

    if not geoms:  # say why: an empty layer or one without usable polygons is not an overlap problem
        dropped = ", ".join(f"{n} {why}" for why, n in summary.objects_dropped.items() if n)
        what = f"{len(frame)} feature(s), none usable ({dropped})" if len(frame) else "no features"
        raise ValueError(f"labels {path} have no polygons to build from: {what}")
    extent = shapely.box(0, 0, raster.width, raster.height)
    inside = [g.intersects(extent) for g in geoms]
    if not any(inside):
        lb = frame.total_bounds
        rb = raster.transform @ (0, 0), raster.transform @ (raster.width, raster.height)
        raise ValueError(
            f"labels {path} do not overlap raster {raster.path}: label bounds "
            f"{tuple(round(float(v), 2) for v in lb)}, raster corners {rb} (CRS {raster.crs})"
        )
    summary.objects_dropped["outside the raster"] += inside.count(False)
    if not summary.objects_dropped["outside the raster"]:
        del summary.objects_dropped["outside the raster"]
    keep = [i for i, ok in enumerate(inside) if ok]
    return PixelLabels(
        geometries=[geoms[i] for i in keep],
        map_geometries=[map_geoms[i] for i in keep],
        classes=[classes[i] for i in keep],
        vocabulary=sorted(set(classes)),
    )
