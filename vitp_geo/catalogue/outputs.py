"""What a catalogue run writes for the whole run, from the manifest's finished scenes.

* ``write_stac_collection``: a self-contained STAC collection in ``<out_dir>/stac/``, one item per
  scene with assets ``class_map``, ``probabilities``, ``vectors`` (or ``detections``), the source
  item linked (``derived_from``), and the checkpoint named with the STAC processing extension
  (``processing:lineage``, ``processing:software``) plus ``vitp_geo:checkpoint``.
* ``write_class_mosaics``: per CRS a VRT mosaic of the class maps
  (``mosaics/class_map_<crs>.vrt``) with the colour table and category names, and its QGIS
  ``.qml``; the VRT XML is written here (GDAL's ``gdalbuildvrt`` is not a Python dependency) and
  checked by opening it with rasterio. Scenes whose grid is rotated cannot join a VRT without
  warping and are left out with a warning.
* ``write_detection_mosaics``: per CRS one GeoPackage of the scenes' detections, boxes of
  overlapping scenes merged by ``tiling.box_merge`` — the rule that merges windows within a
  scene: each scene is a window of a common pixel grid of the CRS.

Every file is written under a temporary name and renamed when complete; the STAC folder is built
beside the old one and swapped in.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from vitp_geo.catalogue.sources import SceneTask
from vitp_geo.catalogue.worker import CLASS_MAP_NAME, DETECTIONS_NAME, PROBABILITIES_NAME, VECTOR_NAME
from vitp_geo.io.atomic import atomic_output
from vitp_geo.io.qgis_styles import ClassStyle

logger = logging.getLogger(__name__)

PROCESSING_EXT = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
ASSETS = {  # output file → (asset key, media type, roles)
    CLASS_MAP_NAME: ("class_map", "image/tiff; application=geotiff; profile=cloud-optimized", ["data"]),
    PROBABILITIES_NAME: (
        "probabilities",
        "image/tiff; application=geotiff; profile=cloud-optimized",
        ["data"],
    ),
    VECTOR_NAME: ("vectors", "application/geopackage+sqlite3", ["data"]),
    DETECTIONS_NAME: ("detections", "application/geopackage+sqlite3", ["data"]),
}


def _crs_key(crs: CRS | None) -> str:
    if crs is None:
        return "none"
    epsg = crs.to_epsg()
    if epsg is not None:
        return f"epsg{epsg}"
    import hashlib

    return "crs" + hashlib.sha1(crs.to_wkt().encode()).hexdigest()[:8]


def write_stac_collection(
    out_dir: Path,
    done: Sequence[tuple[SceneTask, Mapping[str, Any]]],
    *,
    checkpoint: Path,
    task: str,
    version: str,
) -> Path:
    """The STAC collection of the finished scenes' outputs (module doc); returns its JSON path."""
    import pystac
    from rasterio.warp import transform_bounds
    from shapely.geometry import box, mapping

    items, boxes, times = [], [], []
    for scene, record in done:
        files = {Path(e["path"]).name: out_dir / e["path"] for e in record["outputs"]}
        first = next(iter(files.values()))
        if first.suffix == ".tif":
            with rasterio.open(first) as src:
                bounds, crs = src.bounds, src.crs
        else:
            import pyogrio

            info = pyogrio.read_info(first, layer=first.stem)
            bounds = info["total_bounds"] if info["features"] else _raster_bounds(scene.scene)
            crs = CRS.from_user_input(info["crs"]) if info["crs"] else None
        lonlat = transform_bounds(crs, "EPSG:4326", *bounds) if crs is not None else tuple(bounds)
        when = (
            datetime.fromisoformat(scene.datetime)
            if scene.datetime
            else datetime.fromtimestamp(record.get("time", 0), UTC)
        )
        item = pystac.Item(
            id=scene.scene_id,
            geometry=mapping(box(*lonlat)),
            bbox=list(lonlat),
            datetime=when,
            properties={
                "processing:lineage": f"vitp-geo infer-catalog, {task} model {checkpoint.name}",
                "processing:software": {"vitp-geo": version},
                "vitp_geo:checkpoint": str(checkpoint.resolve()),
                "vitp_geo:task": task,
                "vitp_geo:seconds": record.get("seconds"),
            },
            stac_extensions=[PROCESSING_EXT],
        )
        if crs is not None and crs.to_epsg() is not None:
            item.properties["proj:code"] = f"EPSG:{crs.to_epsg()}"
        for name, path in files.items():
            key, media, roles = ASSETS.get(name, (path.stem, None, ["data"]))
            item.add_asset(key, pystac.Asset(href=str(path.resolve()), media_type=media, roles=roles))
        if scene.item_href:
            item.add_link(pystac.Link("derived_from", scene.item_href, media_type="application/geo+json"))
        items.append(item)
        boxes.append(list(lonlat))
        times.append(when)
    if not items:
        raise ValueError("no finished scene: no STAC collection to write")
    collection = pystac.Collection(
        id=f"vitp-geo-{out_dir.name}",
        description=f"vitp-geo {task} predictions of {len(items)} scenes with {checkpoint.name}",
        extent=pystac.Extent(
            pystac.SpatialExtent([_union(boxes)]),
            pystac.TemporalExtent([[min(times), max(times)]]),
        ),
        stac_extensions=[PROCESSING_EXT],
    )
    collection.add_items(items)
    final, partial, old = out_dir / "stac", out_dir / "stac_partial", out_dir / "stac_old"
    for p in (partial, old):
        shutil.rmtree(p, ignore_errors=True)
    collection.normalize_hrefs(f"{final.resolve()}/")
    collection.make_all_asset_hrefs_relative()
    collection.normalize_hrefs(f"{partial.resolve()}/")  # same depth: the relative hrefs still hold
    collection.save(pystac.CatalogType.SELF_CONTAINED)
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final / "collection.json"


def _raster_bounds(path: Path) -> tuple[float, float, float, float]:
    with rasterio.open(path) as src:
        return tuple(src.bounds)  # type: ignore[return-value]


def _union(boxes: Sequence[Sequence[float]]) -> list[float]:
    b = np.asarray(boxes, np.float64)
    return [float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())]


Member = tuple[Path, Affine, int, int, CRS | None]  # file, its scene's transform, height, width, CRS


def _by_crs(files: Sequence[tuple[Path, Path]], what: str) -> dict[str, list[Member]]:
    """``(file, raster giving its grid)`` pairs grouped by CRS; rotated grids are left out (warned)."""
    groups: dict[str, list[Member]] = defaultdict(list)
    for path, grid_source in sorted(files):
        with rasterio.open(grid_source) as src:
            if not _north_up(src.transform):
                warnings.warn(
                    f"{path}: a rotated grid cannot join {what} without warping; left out", stacklevel=3
                )
                continue
            groups[_crs_key(src.crs)].append((path, src.transform, src.height, src.width, src.crs))
    return dict(sorted(groups.items()))


def _grid(members: Sequence[Member]) -> tuple[Affine, int, int]:
    """The common north-up grid: the finest resolution, the union of the scenes' extents."""
    res_x = min(abs(m[1].a) for m in members)
    res_y = min(abs(m[1].e) for m in members)
    xs, ys = [], []
    for _, t, h, w, _ in members:
        xs += [t.c, t.c + t.a * w]
        ys += [t.f, t.f + t.e * h]
    x0, y0 = min(xs), max(ys)
    width = math.ceil(round((max(xs) - x0) / res_x, 6))
    height = math.ceil(round((y0 - min(ys)) / res_y, 6))
    return Affine(res_x, 0, x0, 0, -res_y, y0), height, width


def _north_up(t: Affine) -> bool:
    return t.b == 0 and t.d == 0 and t.a > 0 and t.e < 0


def write_class_mosaics(out_dir: Path, class_maps: Sequence[Path], classes: ClassStyle) -> list[Path]:
    """One VRT mosaic of ``class_maps`` per CRS, with colour table and QGIS style (module doc)."""
    from vitp_geo.io.qgis_styles import write_raster_qml
    from vitp_geo.tiling.engine import CLASS_NODATA

    written = []
    folder = out_dir / "mosaics"
    folder.mkdir(exist_ok=True)
    for key, members in _by_crs([(p, p) for p in class_maps], "the VRT mosaic").items():
        grid, height, width = _grid(members)
        vrt = folder / f"class_map_{key}.vrt"
        text = _mosaic_vrt(vrt, members, grid, height, width, classes, CLASS_NODATA)
        with atomic_output(vrt) as tmp:
            tmp.write_text(text)
        with rasterio.open(vrt) as check:  # GDAL must read what was written
            if (check.height, check.width, check.count) != (height, width, 1):
                raise ValueError(f"{vrt}: GDAL reads {check.shape}, expected {(height, width)}")
        write_raster_qml(vrt, classes)
        written.append(vrt)
    return written


def _mosaic_vrt(
    vrt: Path,
    members: Sequence[tuple[Path, Affine, int, int, CRS | None]],
    grid: Affine,
    height: int,
    width: int,
    classes: ClassStyle,
    nodata: int,
) -> str:
    crs = members[0][4]
    parts = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if crs is not None:
        parts.append(f"  <SRS>{escape(crs.to_wkt())}</SRS>")
    parts.append(f"  <GeoTransform>{', '.join(repr(float(v)) for v in grid.to_gdal())}</GeoTransform>")
    parts.append('  <VRTRasterBand dataType="Byte" band="1">')
    parts.append(f"    <NoDataValue>{nodata}</NoDataValue>")
    parts.append("    <ColorInterp>Palette</ColorInterp>")
    entries = [f'      <Entry c1="{r}" c2="{g}" c3="{b}" c4="255"/>' for r, g, b in classes.colors]
    entries += ['      <Entry c1="0" c2="0" c3="0" c4="0"/>'] * (256 - len(classes.colors))
    parts += ["    <ColorTable>", *entries, "    </ColorTable>"]
    parts += [
        "    <CategoryNames>",
        *[f"      <Category>{escape(n)}</Category>" for n in classes.names],
        "    </CategoryNames>",
    ]
    inv = ~grid
    for path, t, h, w, _ in members:
        col0, row0 = inv @ (t.c, t.f)
        col1, row1 = inv @ (t.c + t.a * w, t.f + t.e * h)
        rel = os.path.relpath(path.resolve(), vrt.parent.resolve())
        parts += [
            "    <ComplexSource>",
            f'      <SourceFilename relativeToVRT="1">{escape(str(rel))}</SourceFilename>',
            "      <SourceBand>1</SourceBand>",
            f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
            f'      <DstRect xOff="{col0!r}" yOff="{row0!r}" xSize="{col1 - col0!r}" ySize="{row1 - row0!r}"/>',
            f"      <NODATA>{nodata}</NODATA>",
            "    </ComplexSource>",
        ]
    parts += ["  </VRTRasterBand>", "</VRTDataset>"]
    return "\n".join(parts) + "\n"


def write_detection_mosaics(
    out_dir: Path,
    detections: Sequence[tuple[Path, Path]],
    classes: ClassStyle,
    iou_threshold: float,
    horizontal: bool,
) -> list[Path]:
    """Per CRS one GeoPackage of all scenes' detections, merged across scene overlaps (module doc).

    Args:
        out_dir: the run's folder (``mosaics/detections_<crs>.gpkg`` are written there).
        detections: ``(GeoPackage, its scene GeoTIFF)`` per finished scene.
        classes: class names and colours (the model card's).
        iou_threshold: the merge threshold (``box_merge.card_nms_threshold`` of the checkpoint).
        horizontal: the boxes are horizontal (``box_type`` ``hbb``).
    """
    import geopandas as gpd
    import shapely

    from vitp_geo.io.qgis_styles import write_styled_gpkg
    from vitp_geo.tiling.box_merge import merge_window_boxes

    written = []
    folder = out_dir / "mosaics"
    folder.mkdir(exist_ok=True)
    for key, members in _by_crs(detections, "the merged detections").items():
        grid, height, width = _grid(members)
        inv = ~grid
        polys, scores, labels, window, windows = [], [], [], [], []
        for i, (path, t, h, w, _) in enumerate(members):
            col0, row0 = inv @ (t.c, t.f)
            col1, row1 = inv @ (t.c + t.a * w, t.f + t.e * h)
            windows.append((row0, col0, row1 - row0, col1 - col0))
            frame = gpd.read_file(path, layer=path.stem)
            for geom, score, label in zip(frame.geometry, frame["score"], frame["class_id"], strict=True):
                ring = np.asarray(shapely.get_coordinates(geom.exterior))[:4]
                if len(ring) != 4:
                    ring = np.asarray(shapely.get_coordinates(geom.minimum_rotated_rectangle.exterior))[:4]
                px = np.stack([(inv @ (x, y)) for x, y in ring])
                polys.append(px)
                scores.append(float(score))
                labels.append(int(label))
                window.append(i)
        merged = merge_window_boxes(
            np.asarray(polys, np.float64).reshape(-1, 4, 2),
            np.asarray(scores, np.float64),
            np.asarray(labels, np.int64),
            np.asarray(window, np.int64),
            np.asarray(windows, np.float64).reshape(-1, 4),
            height,
            width,
            iou_threshold,
            horizontal=np.full(len(scores), horizontal),
        )
        xy = merged.polys.copy()
        geoms = [shapely.Polygon([grid @ (x, y) for x, y in p]) for p in xy]
        crs = members[0][4]
        frame = gpd.GeoDataFrame(
            {
                "class_id": merged.labels.astype(np.int32),
                "class_name": [classes.names[i] for i in merged.labels.tolist()],
                "score": merged.scores.astype(np.float64),
                "area": np.asarray([g.area for g in geoms], np.float64),
            },
            geometry=gpd.GeoSeries(geoms, crs=crs),
            crs=crs,
        )
        written.append(write_styled_gpkg(folder / f"detections_{key}.gpkg", frame, classes))
    return written
