"""Raster, vector and volume I/O: windows, nodata, dtype scaling, CRS, COG, GeoPackage, styles."""
