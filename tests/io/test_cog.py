"""Raw row file → VRT → COG, with colour table, nodata, overviews and category names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from vitp_geo.io.cog import raw_vrt, write_cog


def test_raw_rows_become_a_cog_with_palette_and_categories(tmp_path: Path) -> None:
    h, w = 900, 700
    data = (np.arange(h * w).reshape(h, w) % 3).astype(np.uint8)
    data[:5] = 255
    data.tofile(tmp_path / "c.raw")
    t = Affine(10.0, 0, 300000.0, 0, -10.0, 4000000.0)
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    (tmp_path / "c.vrt").write_text(
        raw_vrt(
            tmp_path / "c.raw",
            width=w,
            height=h,
            bands=1,
            dtype="uint8",
            transform=t,
            crs=CRS.from_epsg(32618),
            nodata=255,
            colors=colors,
            category_names=["a", "b", "c"],
        )
    )
    out = write_cog(tmp_path / "c.vrt", tmp_path / "out.tif", category_names=["a", "b", "c"])
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(1), data)
        assert ds.transform == t and ds.crs == CRS.from_epsg(32618) and ds.nodata == 255
        assert ds.colormap(1)[2] == (0, 0, 255, 255) and ds.colormap(1)[255][3] == 0  # nodata transparent
        assert ds.overviews(1) == [2] and ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert "<Category>b</Category>" in (tmp_path / "out.tif.aux.xml").read_text()
    assert not list(tmp_path.glob(".*partial*"))


def test_pixel_interleaved_multiband_float(tmp_path: Path) -> None:
    h, w, k = 40, 30, 3
    data = np.random.default_rng(0).random((h, w, k)).astype(np.float32)  # rows × width × bands
    data[0, 0, :] = np.nan
    data.tofile(tmp_path / "p.raw")
    (tmp_path / "p.vrt").write_text(
        raw_vrt(
            tmp_path / "p.raw",
            width=w,
            height=h,
            bands=k,
            dtype="float32",
            transform=Affine.identity(),
            crs=None,
            nodata=float("nan"),
        )
    )
    write_cog(tmp_path / "p.vrt", tmp_path / "p.tif", resampling="average")
    with rasterio.open(tmp_path / "p.tif") as ds:
        np.testing.assert_array_equal(ds.read(), np.moveaxis(data, -1, 0))
        assert np.isnan(ds.nodata)
