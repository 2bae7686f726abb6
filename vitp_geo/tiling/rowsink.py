"""Append-only raw row files: where finalised pixels go before they become a COG.

A ``RawRowSink`` buffers finalised blocks until whole scene rows are complete and appends them
to a raw, pixel-interleaved file (rows × width × bands). Appending in row order makes the file
safe to interrupt: after a crash its first ``rows_written`` rows are valid and the file is
truncated back to them on ``--resume``, after its size and a running CRC-32 of those rows have
been checked against the saved state (a shorter or altered file is refused, never zero-filled).
A GDAL VRT (``vitp_geo.io.cog.raw_vrt``) then exposes
the file to GDAL for the COG conversion, so no step ever holds the whole raster.
"""

from __future__ import annotations

import os
import zlib
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
        expected_crc: CRC-32 of those rows as the saved state recorded it (resume); checked
            before anything is truncated.

    Raises:
        ValueError: on resume, the file is shorter than ``start_row`` rows or its CRC differs
            (the file is left as it is).
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        bands: int,
        dtype: np.dtype | str,
        fill: float,
        start_row: int = 0,
        expected_crc: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.width, self.bands, self.dtype, self.fill = width, bands, np.dtype(dtype), fill
        self.row_bytes = width * bands * self.dtype.itemsize
        self.rows_written = start_row
        self.crc = 0  # CRC-32 of every byte appended so far (rows [0, rows_written))
        if start_row > 0:
            self.crc = self._verify(start_row, expected_crc)
        mode = "r+b" if start_row > 0 else "wb"
        self._file = open(self.path, mode)  # noqa: SIM115 - closed in close()
        if start_row > 0:
            self._file.truncate(start_row * self.row_bytes)
            self._file.seek(start_row * self.row_bytes)
        self._buffer = np.full((0, width, bands), fill, self.dtype)  # rows from rows_written

    def _verify(self, rows: int, expected_crc: int | None) -> int:
        need = rows * self.row_bytes
        size = self.path.stat().st_size if self.path.is_file() else -1
        if size < need:
            held = "is missing" if size < 0 else f"holds {size} bytes"
            raise ValueError(
                f"cannot resume: {self.path} {held}, but the saved state records {rows} rows ({need} bytes); "
                "the saved state is kept — rerun without --resume to start over"
            )
        crc = 0
        with open(self.path, "rb") as f:
            left = need
            while left > 0:
                chunk = f.read(min(left, 1 << 24))
                crc = zlib.crc32(chunk, crc)
                left -= len(chunk)
        if expected_crc is not None and crc != expected_crc:
            raise ValueError(
                f"cannot resume: the first {rows} rows of {self.path} differ from what the saved state "
                f"recorded (CRC-32 {crc:#010x}, expected {expected_crc:#010x}); the saved state is kept — "
                "rerun without --resume to start over"
            )
        return crc

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
        data = np.ascontiguousarray(self._buffer[:n]).tobytes()
        self._file.write(data)
        self.crc = zlib.crc32(data, self.crc)
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
