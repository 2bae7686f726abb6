"""Rasters for the builders, read window by window: rendered 3-channel tiles, valid masks,
georeferencing, modality.

A scene is never held in memory: ``open_scene`` opens it, computes its stretch limits once
(``vitp_geo.io.raster.scene_stretch_limits``, the rule ``vitp-geo infer`` uses, so a pretraining
tile and an inference window of the same scene render the same) and ``SceneRaster.read`` reads
and renders one tile at a time. Label rasters (class masks, change masks) are read the same way
(``open_label_raster``). A sparse 50 000 × 50 000 scene costs one tile's memory, not 7.5 GB.

Modality rule (recorded in every record): complex bands or ``RenderRule.sar_db`` → ``sar``; more
than three bands → ``multispectral``; otherwise ``optical``. ``modality=`` overrides it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Self

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from vitp_geo.instruct.builders.tiles import Tile
from vitp_geo.io.raster import RenderRule, SceneWindows, open_raster, read_window

MODALITIES = ("optical", "multispectral", "sar")


def _open_quietly(path: Path) -> rasterio.DatasetReader:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return open_raster(path)


class RasterGrid:
    """An open raster's grid: size, transform, CRS; closes its dataset (use as a context manager)."""

    def __init__(self, path: Path, ds: rasterio.DatasetReader) -> None:
        self.path = path
        self._ds = ds
        self.transform: Affine = ds.transform
        self.crs: CRS | None = ds.crs
        self.height, self.width = int(ds.height), int(ds.width)  # readable after close()

    def close(self) -> None:
        self._ds.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SceneRaster(RasterGrid):
    """A scene opened for the builders (see the module doc); ``read`` renders one tile.

    Attributes:
        path: the file.
        transform: pixel → map affine transform.
        crs: the raster CRS (None only when georeferencing was not required).
        modality: ``optical`` / ``multispectral`` / ``sar``.
        bands: the 1-based bands the render rule reads.
        limits: the scene's stretch limits (None when the values are kept as they are).
    """

    def __init__(
        self, path: Path, ds: rasterio.DatasetReader, rule: RenderRule, modality: str | None
    ) -> None:
        super().__init__(path, ds)
        self.rule = rule
        self.windows = SceneWindows(path, ds, rule)  # the one windowed reader (io.raster)
        self.bands, self.limits = self.windows.bands, self.windows.limits
        is_complex = np.dtype(ds.dtypes[self.bands[0] - 1]).kind == "c"
        self.modality = modality or detect_modality(is_complex, ds.count, rule)

    def read(self, tile: Tile | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One tile (the whole raster when None), rendered with the scene's stretch.

        Returns:
            ``(rgb, valid)``: (3, h, w) uint8 and (h, w) bool (False on nodata).
        """
        tile = tile or Tile(0, 0, self.height, self.width)
        return self.windows.render(Window(tile.col, tile.row, tile.width, tile.height))

    def tile_origin(self, row: int, col: int, height: int, width: int) -> dict[str, object]:
        """Where a tile of this raster lies, for the record that uses it (trace a record to the map).

        Returns ``scene`` (the file), ``window`` ``[col_off, row_off, width, height]`` in pixels,
        ``crs`` (authority string such as ``EPSG:32633``, else WKT; ``None`` when the raster has
        none), the tile's own ``transform`` (GDAL order ``a, b, c, d, e, f``) and its map ``bounds``
        ``[minx, miny, maxx, maxy]``.
        """
        t = self.transform @ Affine.translation(col, row)
        corners = [t @ (x, y) for x, y in ((0, 0), (width, 0), (0, height), (width, height))]
        xs, ys = [c[0] for c in corners], [c[1] for c in corners]
        crs: str | None = None
        if self.crs is not None:
            auth = self.crs.to_authority()
            crs = f"{auth[0]}:{auth[1]}" if auth else self.crs.to_wkt()
        return {
            "scene": str(self.path),
            "window": [col, row, width, height],
            "crs": crs,
            "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "bounds": [min(xs), min(ys), max(xs), max(ys)],
        }

    @property
    def pixel_area(self) -> float:
        """Area of one pixel in CRS units² (absolute determinant of the transform)."""
        t = self.transform
        return abs(t.a * t.e - t.b * t.d)

    @property
    def units(self) -> str:
        """The CRS linear unit name ("metre", "degree", …) or "units" when unknown."""
        if self.crs is None:
            return "units"
        try:
            unit = self.crs.linear_units
        except Exception:  # pragma: no cover - depends on GDAL/PROJ build
            unit = None
        return {"metre": "m", "meter": "m", "m": "m"}.get(str(unit).lower(), str(unit) if unit else "units")


class LabelRaster(RasterGrid):
    """Band 1 of a label raster (class ids or a change mask), read tile by tile."""

    def __init__(self, path: Path, ds: rasterio.DatasetReader) -> None:
        super().__init__(path, ds)
        self.nodata: float | None = ds.nodata

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def read(self, tile: Tile) -> np.ndarray:
        """(h, w) label values of one tile."""
        window = Window(tile.col, tile.row, tile.width, tile.height)
        return read_window(self.path, self._ds, (1,), window)[0]


def detect_modality(dtype_is_complex: bool, count: int, rule: RenderRule) -> str:
    """See the module doc."""
    if dtype_is_complex or rule.sar_db:
        return "sar"
    if count > 3:
        return "multispectral"
    return "optical"


def open_scene(
    path: str | Path,
    rule: RenderRule = RenderRule(),
    *,
    require_georef: bool = True,
    modality: str | None = None,
) -> SceneRaster:
    """Open a scene for tile-by-tile rendering (close it, or use it as a context manager).

    Raises:
        FileNotFoundError: the file does not exist.
        RasterReadError: it cannot be opened or its pixels cannot be read.
        ValueError: ``require_georef`` and the raster has no CRS or no transform; a bad band choice;
            an unknown modality.
    """
    path = Path(path)
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    ds = _open_quietly(path)
    try:
        if require_georef and (ds.crs is None or ds.transform == Affine.identity()):
            raise ValueError(
                f"raster {path} has no georeferencing (crs={ds.crs}, transform is "
                f"{'identity' if ds.transform == Affine.identity() else 'set'}); "
                "labels in map coordinates cannot be placed on it"
            )
        return SceneRaster(path, ds, rule, modality)
    except BaseException:
        ds.close()
        raise


def open_label_raster(path: str | Path) -> LabelRaster:
    """Open band 1 of a label raster for tile-by-tile reading."""
    path = Path(path)
    return LabelRaster(path, _open_quietly(path))


def check_same_grid(ref: RasterGrid, other: RasterGrid) -> None:
    """Raise ValueError naming ``other`` when it is not on ``ref``'s pixel grid."""
    if (other.height, other.width) != (ref.height, ref.width):
        raise ValueError(
            f"{other.path} is {other.width}×{other.height} pixels but {ref.path} is {ref.width}×{ref.height}"
        )
    if not other.transform.almost_equals(ref.transform, precision=1e-6):
        raise ValueError(
            f"{other.path} has transform {tuple(other.transform)[:6]} but {ref.path} has {tuple(ref.transform)[:6]}"
        )
    if other.crs is not None and ref.crs is not None and other.crs != ref.crs:
        raise ValueError(f"{other.path} has CRS {other.crs} but {ref.path} has {ref.crs}")
