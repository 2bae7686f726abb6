"""GeoTIFF reading and writing, and the rule that maps any raster to the model's 3 channels.

The 3-channel rule (``render_rgb``), applied identically by the instruction builders, the
pretraining data path and inference:

1. **Band selection.** ``bands`` (1-based, as in GDAL) picks bands; by default the first three
   bands of an image with three or more bands, otherwise all bands.
2. **SAR.** Complex bands become magnitude in decibels, ``20·log10(|z|)``; with ``sar_db=True``
   real-valued bands (amplitude) are converted the same way.
3. **Scaling.** ``uint8`` bands are kept as they are. Every other dtype is stretched per band
   from its ``percentiles`` (default 2–98 %, computed on valid pixels only) to 0–255.
4. **Channels.** One band is repeated three times. Two bands (dual-pol SAR such as VV/VH)
   become ``(b1, b2, b1 − b2)`` (the ratio in dB), each stretched. Three bands are RGB.
5. **Nodata.** Pixels equal to the nodata value (or non-finite) in any selected band are invalid:
   they render as 0 and are reported in the returned valid mask.

**One stretch per scene.** Readers that work window by window (``vitp-geo infer``, the
instruction builders) compute the stretch limits once per scene with ``scene_stretch_limits``,
from a decimated read of at most ``OVERVIEW_SIZE`` pixels a side (GDAL uses the file's overviews
when it has them; a scene no larger than that is read whole, so its limits are exact), and apply
them to every window. So a pretraining tile and an inference window of the same scene render the
same, and neighbouring windows never differ in scale.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from vitp_geo.io.atomic import atomic_output

# Side of the decimated read from which a scene's stretch limits are computed (see module doc).
OVERVIEW_SIZE = 1024


class RasterReadError(RuntimeError):
    """A raster could not be opened or read; the message names the file."""


@dataclass(frozen=True)
class RenderRule:
    """How a raster of any band count and dtype becomes 3-channel uint8 (see module doc)."""

    bands: tuple[int, ...] | None = None  # 1-based band indexes; None = first three / all
    percentiles: tuple[float, float] = (2.0, 98.0)  # stretch range for non-uint8 data
    sar_db: bool = False  # treat real bands as SAR amplitude and convert to dB

    def __post_init__(self) -> None:
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {self.percentiles}")
        if self.bands is not None and (len(self.bands) == 0 or min(self.bands) < 1):
            raise ValueError(f"bands are 1-based and non-empty, got {self.bands}")


def select_bands(count: int, rule: RenderRule) -> tuple[int, ...]:
    """The 1-based band indexes the rule reads from a raster with ``count`` bands."""
    if rule.bands is None:
        if count > 3:
            warnings.warn(
                f"the raster has {count} bands and no band selection was given: using bands 1, 2, 3 "
                "as RGB (set bands=... / --bands to choose)",
                stacklevel=2,
            )
        return tuple(range(1, min(count, 3) + 1))
    bad = [b for b in rule.bands if b > count]
    if bad:
        raise ValueError(f"band(s) {bad} requested but the raster has {count} band(s)")
    return rule.bands


def valid_mask(array: np.ndarray, nodata: float | None) -> np.ndarray:
    """(H, W) bool: True where every band is finite and differs from ``nodata``."""
    if np.iscomplexobj(array):
        ok = np.isfinite(array.real) & np.isfinite(array.imag)
    else:
        ok = np.isfinite(array) if array.dtype.kind == "f" else np.ones(array.shape, bool)
    if nodata is not None and not np.isnan(nodata):
        ok &= array != np.asarray(nodata).astype(array.dtype)
    return ok.all(axis=0)


def _stretch(
    band: np.ndarray,
    valid: np.ndarray,
    percentiles: tuple[float, float],
    limits: tuple[float, float] | None = None,
) -> np.ndarray:
    if limits is None:
        values = band[valid]
        if values.size == 0:
            return np.zeros(band.shape, np.uint8)
        lo, hi = np.percentile(values, percentiles)
    else:
        lo, hi = limits
    if hi <= lo:
        hi = lo + 1e-6
    out = (band.astype(np.float64) - lo) / (hi - lo) * 255.0
    return np.clip(np.nan_to_num(out), 0, 255).astype(np.uint8)


def _prepare(
    array: np.ndarray, nodata: float | None, rule: RenderRule
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Steps 2 and 4 of the rule before stretching: (data (C', H, W), valid (H, W), is_sar)."""
    if array.ndim != 3 or array.shape[0] < 1:
        raise ValueError(f"expected a (C, H, W) array with C >= 1, got shape {array.shape}")
    valid = valid_mask(array, nodata)
    is_sar = np.iscomplexobj(array) or rule.sar_db
    data: np.ndarray
    if is_sar:
        with np.errstate(divide="ignore", invalid="ignore"):
            data = 20.0 * np.log10(np.abs(array).astype(np.float64))
        valid &= np.isfinite(data).all(axis=0)
    else:
        data = array
    if data.shape[0] == 2:
        data = np.concatenate([data, data[:1].astype(np.float64) - data[1:2]], axis=0)
    return data, valid, is_sar


def stretch_limits(
    array: np.ndarray, nodata: float | None = None, rule: RenderRule = RenderRule()
) -> list[tuple[float, float]] | None:
    """The per-channel ``(lo, hi)`` stretch limits ``render_rgb`` would compute for ``array``.

    Tiled readers compute them once from a decimated read of the whole scene and pass them to
    every ``render_rgb`` call, so that all windows share one stretch. Returns None when the rule
    keeps the values as they are (plain uint8 data).
    """
    data, valid, is_sar = _prepare(array, nodata, rule)
    if data.dtype == np.uint8 and not is_sar:
        return None
    limits = []
    for band in data:
        values = band[valid]
        if values.size == 0:
            limits.append((0.0, 1.0))
            continue
        lo, hi = np.percentile(values, rule.percentiles)
        limits.append((float(lo), float(hi)))
    return limits


def keeps_values(dtype: np.dtype | str, n_bands: int, rule: RenderRule) -> bool:
    """True when the rule keeps the selected bands' values as they are (no stretch to compute).

    That is plain ``uint8`` data, not SAR, and not two bands (``b1 − b2`` is not uint8).
    """
    return np.dtype(dtype) == np.uint8 and not rule.sar_db and n_bands != 2


def scene_stretch_limits(
    path: str | Path,
    ds: rasterio.DatasetReader,
    bands: tuple[int, ...],
    rule: RenderRule,
    overview_size: int = OVERVIEW_SIZE,
) -> list[tuple[float, float]] | None:
    """The stretch limits of one scene from a decimated read (see module doc).

    Returns None when ``keeps_values``; otherwise the per-channel ``(lo, hi)`` that
    ``render_rgb(..., limits=...)`` takes.
    """
    if keeps_values(ds.dtypes[bands[0] - 1], len(bands), rule):
        return None
    if overview_size < 1:
        raise ValueError(f"overview_size must be >= 1, got {overview_size}")
    scale = max(1.0, max(ds.height, ds.width) / overview_size)
    shape = (len(bands), max(1, int(ds.height / scale)), max(1, int(ds.width / scale)))
    try:
        sample = ds.read(list(bands), out_shape=shape, resampling=Resampling.nearest)
    except RasterioIOError as err:
        raise RasterReadError(f"cannot read raster {path}: {err}") from err
    return stretch_limits(sample, ds.nodata, rule)


def read_window(
    path: str | Path, ds: rasterio.DatasetReader, bands: tuple[int, ...], window: Window
) -> np.ndarray:
    """The selected bands of one window, (C, h, w), with read errors naming the file."""
    try:
        return ds.read(list(bands), window=window)
    except RasterioIOError as err:
        raise RasterReadError(f"cannot read raster {path}: {err}") from err


def render_rgb(
    array: np.ndarray,
    nodata: float | None = None,
    rule: RenderRule = RenderRule(),
    limits: list[tuple[float, float]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Map already-selected bands (C, H, W) of any dtype to (3, H, W) uint8 and a valid mask.

    Args:
        array: (C, H, W) band stack, C ≥ 1, already reduced to the selected bands.
        nodata: the raster's nodata value, if any.
        rule: percentiles and SAR handling (band selection happens before this call).
        limits: fixed per-channel stretch limits (see ``stretch_limits``); by default they are
            the rule's percentiles of ``array`` itself.

    Returns:
        ``(rgb, valid)``: (3, H, W) uint8 and (H, W) bool.
    """
    data, valid, is_sar = _prepare(array, nodata, rule)
    if data.dtype == np.uint8 and not is_sar:
        bands = [b for b in data]
    else:
        if limits is not None and len(limits) != data.shape[0]:
            raise ValueError(f"expected {data.shape[0]} stretch limits, got {len(limits)}")
        bands = [
            _stretch(b, valid, rule.percentiles, None if limits is None else limits[i])
            for i, b in enumerate(data)
        ]
    if len(bands) == 1:
        bands = bands * 3
    rgb = np.stack(bands[:3]).astype(np.uint8)
    rgb[:, ~valid] = 0
    return rgb, valid


class SceneWindows:
    """One open scene read window by window: the rule's bands, the stretch limits computed once.

    The one windowed scene reader: ``vitp-geo infer`` (``tiling.reader.SceneWindowReader``, one per
    scene of a pair) and ``build-instructions`` (``instruct.builders.raster_scene.SceneRaster``)
    both read and render through it, so a pretraining tile and an inference window of the same
    scene render alike (module doc: one scene-wide stretch, no seams).

    Args:
        path: the file (named in errors).
        ds: the open dataset; the caller closes it.
        rule: band selection, percentiles, SAR.
        overview_size: side of the decimated read the stretch limits come from.
        stretch: compute the scene's stretch limits (False: the raw bands are fed, never rendered).

    Raises:
        ValueError: a band the rule names is not in the raster (the file named).
        RasterReadError: the decimated read fails.
    """

    def __init__(
        self,
        path: str | Path,
        ds: rasterio.DatasetReader,
        rule: RenderRule,
        *,
        overview_size: int = OVERVIEW_SIZE,
        stretch: bool = True,
    ) -> None:
        self.path, self.ds, self.rule = Path(path), ds, rule
        try:
            self.bands = select_bands(ds.count, rule)
        except ValueError as err:
            raise ValueError(f"raster {path}: {err}") from err
        self.limits = scene_stretch_limits(path, ds, self.bands, rule, overview_size) if stretch else None

    def read(self, window: Window) -> np.ndarray:
        """The selected bands of one window as stored, (C, h, w)."""
        return read_window(self.path, self.ds, self.bands, window)

    def render(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """One window rendered with the scene's stretch: (3, h, w) uint8 and (h, w) valid mask."""
        return render_rgb(self.read(window), self.ds.nodata, self.rule, limits=self.limits)


def open_raster(path: str | Path) -> rasterio.DatasetReader:
    """Open a raster, turning rasterio's errors into one that names the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"raster not found: {path}")
    try:
        return rasterio.open(path)
    except RasterioIOError as err:
        raise RasterReadError(f"cannot open raster {path}: {err}") from err


def read_rgb(
    path: str | Path, rule: RenderRule = RenderRule(), window: rasterio.windows.Window | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a raster (or a window of it) and render it with ``render_rgb``.

    Returns:
        ``(rgb, valid)``: (3, H, W) uint8 and (H, W) bool.
    """
    with open_raster(path) as src:
        idx = select_bands(src.count, rule)
        try:
            array = src.read(list(idx), window=window, boundless=False)
        except RasterioIOError as err:
            raise RasterReadError(f"cannot read raster {path}: {err}") from err
        return render_rgb(array, src.nodata, rule)


def write_geotiff(
    path: str | Path,
    array: np.ndarray,
    transform: Affine,
    crs: str | rasterio.crs.CRS,
    *,
    nodata: float | None = None,
    colormap: dict[int, tuple[int, int, int]] | None = None,
    tiled: bool = True,
) -> Path:
    """Write a (C, H, W) array as a tiled, deflate-compressed GeoTIFF, atomically."""
    if array.ndim != 3:
        raise ValueError(f"expected a (C, H, W) array, got shape {array.shape}")
    count, height, width = array.shape
    profile: dict[str, object] = dict(
        driver="GTiff",
        count=count,
        height=height,
        width=width,
        dtype=array.dtype,
        transform=transform,
        crs=crs,
        nodata=nodata,
        compress="deflate",
    )
    if tiled and height >= 16 and width >= 16:
        profile.update(
            tiled=True,
            blockxsize=256 if width >= 256 else 16 * (width // 16),
            blockysize=256 if height >= 256 else 16 * (height // 16),
        )
    path = Path(path)
    with atomic_output(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(array)
            if colormap is not None:
                dst.write_colormap(1, colormap)
    return path
