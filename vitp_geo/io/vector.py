"""Vector label reading and writing (GeoPackage via pyogrio)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd

from vitp_geo.io.atomic import atomic_output

# GeoPackage 1.2: GDAL >= 3.7 writes 1.4 by default, which Debian's GDAL 3.6 / QGIS 3.22 warn about.
GPKG_OPTIONS = {"VERSION": "1.2"}


def write_objects(
    path: str | Path, objects: Sequence[dict[str, object]], crs: str, layer: str = "objects"
) -> Path:
    """Write object dicts (``geometry`` plus attribute keys) to a GeoPackage layer, atomically."""
    path = Path(path)
    frame = gpd.GeoDataFrame(
        [{k: v for k, v in o.items() if k != "geometry"} for o in objects],
        geometry=[o["geometry"] for o in objects],
        crs=crs,
    )
    with atomic_output(path) as tmp:
        frame.to_file(tmp, layer=layer, driver="GPKG", engine="pyogrio", dataset_options=GPKG_OPTIONS)
    return path
