"""Load a raster once for the builders: rendered 3-channel pixels, valid mask, georeferencing, modality.

The whole scene is rendered with ``vitp_geo.io.raster.render_rgb`` in one pass so that the
percentile stretch is the same for every tile of a scene (a per-tile stretch would make the same
roof look different in neighbouring tiles). This holds the rendered scene in memory: 3 bytes a
pixel, e.g. 300 MB for a 10 000 × 10 000 scene.

Modality rule (recorded in every record): complex bands or ``RenderRule.sar_db`` → ``sar``; more
than three bands → ``multispectral``; otherwise ``optical``. ``modality=`` overrides it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from vitp_geo.io.raster import RasterReadError, RenderRule, open_raster, render_rgb, select_bands

MODALITIES = ("optical", "multispectral", "sar")


@dataclass
class LoadedRaster:
    """A rendered raster.

    Attributes:
        path: the file.
        rgb: (3, H, W) uint8 rendered pixels.
        valid: (H, W) bool, False on nodata.
        transform: pixel → map affine transform.
        crs: the raster CRS (None only when georeferencing was not required).
        modality: ``optical`` / ``multispectral`` / ``sar``.
    """

    path: Path
    rgb: np.ndarray
    valid: np.ndarray
    transform: Affine
    crs: CRS | None
    modality: str

    @property
    def height(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[2])

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


def detect_modality(dtype_is_complex: bool, count: int, rule: RenderRule) -> str:
    """See the module doc."""
    if dtype_is_complex or rule.sar_db:
        return "sar"
    if count > 3:
        return "multispectral"
    return "optical"


def load_raster(
    path: str | Path,
    rule: RenderRule = RenderRule(),
    *,
    require_georef: bool = True,
    modality: str | None = None,
) -> LoadedRaster:
    """Read and render a whole raster.

    Raises:
        FileNotFoundError: the file does not exist.
        RasterReadError: it cannot be opened or its pixels cannot be read.
        ValueError: ``require_georef`` and the raster has no CRS or no transform; a bad band choice;
            an unknown modality.
    """
    path = Path(path)
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with open_raster(path) as src:
            if require_georef and (src.crs is None or src.transform == Affine.identity()):
                raise ValueError(
                    f"raster {path} has no georeferencing (crs={src.crs}, transform is "
                    f"{'identity' if src.transform == Affine.identity() else 'set'}); "
                    "labels in map coordinates cannot be placed on it"
                )
            try:
                idx = select_bands(src.count, rule)
            except ValueError as err:
                raise ValueError(f"raster {path}: {err}") from err
            try:
                array = src.read(list(idx))
            except RasterioIOError as err:
                raise RasterReadError(f"cannot read raster {path}: {err}") from err
            is_complex = np.iscomplexobj(array)
            rgb, valid = render_rgb(array, src.nodata, rule)
            return LoadedRaster(
                path=path,
                rgb=rgb,
                valid=valid,
                transform=src.transform,
                crs=src.crs,
                modality=modality or detect_modality(is_complex, src.count, rule),
            )


def read_label_raster(path: str | Path) -> tuple[np.ndarray, Affine, CRS | None, float | None]:
    """Read band 1 of a label raster (class ids or a change mask).

    Returns:
        ``(array (H, W), transform, crs, nodata)``.
    """
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with open_raster(path) as src:
            try:
                array = src.read(1)
            except RasterioIOError as err:
                raise RasterReadError(f"cannot read raster {path}: {err}") from err
            return array, src.transform, src.crs, src.nodata


def check_same_grid(
    ref: LoadedRaster, shape: tuple[int, int], transform: Affine, crs: CRS | None, other: Path
) -> None:
    """Raise ValueError naming ``other`` when it is not on ``ref``'s pixel grid."""
    if shape != (ref.height, ref.width):
        raise ValueError(
            f"{other} is {shape[1]}×{shape[0]} pixels but {ref.path} is {ref.width}×{ref.height}"
        )
    if not transform.almost_equals(ref.transform, precision=1e-6):
        raise ValueError(
            f"{other} has transform {tuple(transform)[:6]} but {ref.path} has {tuple(ref.transform)[:6]}"
        )
    if crs is not None and ref.crs is not None and crs != ref.crs:
        raise ValueError(f"{other} has CRS {crs} but {ref.path} has {ref.crs}")
