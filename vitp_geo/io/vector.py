"""Vector label reading and writing (GeoPackage via pyogrio)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd

from vitp_geo.io.atomic import atomic_output


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
        frame.to_file(tmp, layer=layer, driver="GPKG", engine="pyogrio")
    return path
