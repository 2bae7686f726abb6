"""Cloud-Optimized GeoTIFF output from raw row files, with colour table and category names.

``raw_vrt`` describes a raw pixel-interleaved file (see ``vitp_geo.tiling.rowsink``) as a GDAL
VRT carrying the georeferencing, nodata, colour table and category names; ``write_cog`` copies
it with GDAL's COG driver (tiled, deflate, internal overviews), atomically. GDAL streams both
steps block by block, so the raster is never held in memory.

GeoTIFF has no tag for category names; GDAL keeps them in a ``.aux.xml`` sidecar, which
``write_cog`` writes beside the COG (QGIS and GDAL read it).
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS

from vitp_geo.constants import GDAL_CACHE_MB
from vitp_geo.io.atomic import atomic_output

_GDAL_TYPES = {
    "uint8": "Byte",
    "float32": "Float32",
    "float16": "Float16",
    "int16": "Int16",
    "uint16": "UInt16",
    "int32": "Int32",
}
# A small GDAL block cache keeps peak memory independent of the scene size.
GDAL_ENV = {"GDAL_CACHEMAX": GDAL_CACHE_MB, "GDAL_PAM_ENABLED": "NO"}


def _nodata_text(nodata: float) -> str:
    return "nan" if np.isnan(nodata) else repr(float(nodata))


def raw_vrt(
    raw_path: str | Path,
    *,
    width: int,
    height: int,
    bands: int,
    dtype: str,
    transform: Affine,
    crs: CRS | None,
    nodata: float | None,
    colors: Sequence[tuple[int, int, int]] | None = None,
    category_names: Sequence[str] | None = None,
    band_descriptions: Sequence[str] | None = None,
) -> str:
    """VRT XML exposing a raw pixel-interleaved (rows × width × bands) file to GDAL.

    Args:
        raw_path: absolute path of the raw file.
        width, height, bands, dtype: its layout.
        transform, crs: georeferencing copied to the output.
        nodata: nodata value of every band (None for none).
        colors: colour table of band 1 (class id → RGB).
        category_names: category names of band 1 (class id → name).
        band_descriptions: one description per band.
    """
    if dtype not in _GDAL_TYPES:
        raise ValueError(f"unsupported raw dtype {dtype!r}")
    size = np.dtype(dtype).itemsize
    gt = ", ".join(repr(float(v)) for v in transform.to_gdal())
    parts = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if crs is not None:
        parts.append(f"  <SRS>{escape(crs.to_wkt())}</SRS>")
    parts.append(f"  <GeoTransform>{gt}</GeoTransform>")
    for b in range(bands):
        parts.append(
            f'  <VRTRasterBand dataType="{_GDAL_TYPES[dtype]}" band="{b + 1}" subClass="VRTRawRasterBand">'
        )
        if band_descriptions is not None:
            parts.append(f"    <Description>{escape(band_descriptions[b])}</Description>")
        if nodata is not None:
            parts.append(f"    <NoDataValue>{_nodata_text(nodata)}</NoDataValue>")
        if b == 0 and colors is not None:
            parts.append("    <ColorInterp>Palette</ColorInterp>")
            entries = [f'      <Entry c1="{r}" c2="{g}" c3="{bl}" c4="255"/>' for r, g, bl in colors]
            entries += ['      <Entry c1="0" c2="0" c3="0" c4="0"/>'] * (256 - len(colors))
            parts += ["    <ColorTable>", *entries, "    </ColorTable>"]
        if b == 0 and category_names is not None:
            names = [f"      <Category>{escape(n)}</Category>" for n in category_names]
            parts += ["    <CategoryNames>", *names, "    </CategoryNames>"]
        parts.append(
            f'    <SourceFilename relativetoVRT="0">{escape(str(Path(raw_path).resolve()))}</SourceFilename>'
        )
        parts.append(f"    <ImageOffset>{b * size}</ImageOffset>")
        parts.append(f"    <PixelOffset>{bands * size}</PixelOffset>")
        parts.append(f"    <LineOffset>{bands * size * width}</LineOffset>")
        parts.append("    <ByteOrder>LSB</ByteOrder>")
        parts.append("  </VRTRasterBand>")
    parts.append("</VRTDataset>")
    return "\n".join(parts) + "\n"


def category_aux_xml(category_names: Sequence[str]) -> str:
    """The ``.aux.xml`` (GDAL PAM) text naming the categories of band 1."""
    cats = "".join(f"<Category>{escape(n)}</Category>" for n in category_names)
    return (
        '<PAMDataset>\n  <PAMRasterBand band="1">\n'
        f"    <CategoryNames>{cats}</CategoryNames>\n  </PAMRasterBand>\n</PAMDataset>\n"
    )


def write_cog(
    src: str | Path,
    dst: str | Path,
    *,
    resampling: str = "nearest",
    blocksize: int = 512,
    category_names: Sequence[str] | None = None,
) -> Path:
    """Copy ``src`` (any GDAL raster, e.g. a ``raw_vrt``) to a COG at ``dst``, atomically.

    Args:
        src: source raster path.
        dst: output ``.tif``.
        resampling: overview resampling (``nearest`` or ``mode`` for classes, ``average`` for
            scores).
        blocksize: internal tile size.
        category_names: written to ``dst.aux.xml`` (GeoTIFF cannot hold them).
    """
    dst = Path(dst)
    with rasterio.Env(**GDAL_ENV), atomic_output(dst) as tmp:
        try:
            rasterio.shutil.copy(
                str(src),
                str(tmp),
                driver="COG",
                COMPRESS="DEFLATE",
                BLOCKSIZE=blocksize,
                OVERVIEW_RESAMPLING=resampling.upper(),
                OVERVIEWS="AUTO",
                BIGTIFF="IF_SAFER",
            )
        except Exception as err:  # GDAL's CPLE_* errors are no OSError, even for a full disk
            text = " ".join(str(err).split())
            code = errno.ENOSPC if "No space left" in text else errno.EIO
            raise OSError(code, f"writing {dst} failed: {text}") from err
    if category_names is not None:  # sidecar after the raster, so it never describes a missing file
        aux = dst.with_name(dst.name + ".aux.xml")
        with atomic_output(aux) as tmp:
            tmp.write_text(category_aux_xml(category_names))
    return dst
