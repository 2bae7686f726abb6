"""Append-only raw row files: where finalised pixels go before they become a COG.

A ``RawRowSink`` buffers finalised blocks until whole scene rows are complete and appends them
to a raw, pixel-interleaved file (rows × width × bands). Appending in row order makes the file
safe to interrupt: after a crash its first ``rows_written`` rows are valid and the file is
truncated back to them on ``--resume``. A GDAL VRT (``vitp_geo.io.cog.raw_vrt``) then exposes
the file to GDAL for the COG conversion, so no step ever holds the whole raster.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class RawRowSink:
    """Buffer blocks and append completed rows to ``path``.

    Args:
        path: raw file to append to.
        width: scene width (pixels).
        bands: values per pixel.
        dtype: numpy dtype of the values.
        fill: value of pixels no block was written to (the nodata value).
        start_row: rows already in the file (resume); the file is truncated to them.
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        bands: int,
        dtype: np.dtype | str,
        fill: float,
        start_row: int = 0,
    ) -> None:
        self.path = Path(path)
        self.width, self.bands, self.dtype, self.fill = width, bands, np.dtype(dtype), fill
        self.row_bytes = width * bands * self.dtype.itemsize
        self.rows_written = start_row
        mode = "r+b" if start_row > 0 else "wb"
        self._file = open(self.path, mode)  # noqa: SIM115 - closed in close()
        if start_row > 0:
            self._file.truncate(start_row * self.row_bytes)
            self._file.seek(start_row * self.row_bytes)
        self._buffer = np.full((0, width, bands), fill, self.dtype)  # rows from rows_written

    def put(self, row0: int, col0: int, values: np.ndarray) -> None:
        """Place ``values`` (bands, h, w) at scene position (row0, col0)."""
        if row0 < self.rows_written:
            raise ValueError(f"row {row0} already written (file holds {self.rows_written} rows)")
        b, h, w = values.shape
        need = row0 + h - self.rows_written
        if need > self._buffer.shape[0]:
            extra = np.full((need - self._buffer.shape[0], self.width, self.bands), self.fill, self.dtype)
            self._buffer = np.concatenate([self._buffer, extra], axis=0)
        r = row0 - self.rows_written
        self._buffer[r : r + h, col0 : col0 + w, :] = np.moveaxis(values, 0, -1)

    def commit(self, upto_row: int) -> None:
        """Append rows ``[rows_written, upto_row)`` (unwritten pixels get ``fill``)."""
        n = upto_row - self.rows_written
        if n <= 0:
            return
        if n > self._buffer.shape[0]:
            extra = np.full((n - self._buffer.shape[0], self.width, self.bands), self.fill, self.dtype)
            self._buffer = np.concatenate([self._buffer, extra], axis=0)
        self._file.write(np.ascontiguousarray(self._buffer[:n]).tobytes())
        self._buffer = self._buffer[n:].copy()
        self.rows_written = upto_row

    def sync(self) -> None:
        """Flush to disk (before a resume checkpoint names ``rows_written``)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def read_rows(self, row0: int, row1: int) -> np.ndarray:
        """(bands, row1 − row0, width) from the file (after ``close``)."""
        count = (row1 - row0) * self.width * self.bands
        data = np.fromfile(self.path, self.dtype, count=count, offset=row0 * self.row_bytes)
        return np.moveaxis(data.reshape(row1 - row0, self.width, self.bands), -1, 0)
