"""The blending accumulator: weighted class-score sums for the rows that are still open.

Windows are added row of windows by row of windows, left to right. Scene columns are split into
fixed-width chunks; a chunk holds ``(K, rows, chunk_w)`` score sums and ``(rows, chunk_w)``
weight sums for the scene rows ``[top, top + rows)`` that some window may still touch. When no
later window can touch a chunk's upper rows they are *finalised* (scores divided by weights) and
dropped. Between window rows only the overlap strip survives, so memory is about
``K · overlap · width`` floats plus one row of windows in flight, never the scene.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass
class FinalBlock:
    """Finalised pixels of one chunk.

    Attributes:
        row0, col0: scene position of the block's upper-left pixel.
        scores: (K, h, w) float32 blended scores (undefined where ``valid`` is False).
        valid: (h, w) bool, True where at least one window voted.
    """

    row0: int
    col0: int
    scores: np.ndarray
    valid: np.ndarray


class _Chunk:
    def __init__(self, top: int, n_classes: int, width: int) -> None:
        self.top = top
        self.acc = np.zeros((n_classes, 0, width), np.float32)  # (K, rows, w)
        self.wsum = np.zeros((0, width), np.float32)  # (rows, w)

    @property
    def bottom(self) -> int:
        return self.top + self.wsum.shape[0]

    def extend_to(self, bottom: int) -> None:
        extra = bottom - self.bottom
        if extra > 0:
            k, _, w = self.acc.shape
            self.acc = np.concatenate([self.acc, np.zeros((k, extra, w), np.float32)], axis=1)
            self.wsum = np.concatenate([self.wsum, np.zeros((extra, w), np.float32)], axis=0)


class StripAccumulator:
    """Weighted score sums over the open rows of a ``height × width`` scene.

    Args:
        width: scene width in pixels.
        n_classes: K, the number of score channels.
        chunk_width: column chunk size (pixels).
    """

    def __init__(self, width: int, n_classes: int, chunk_width: int = 256) -> None:
        if chunk_width < 1:
            raise ValueError(f"chunk_width must be >= 1, got {chunk_width}")
        self.width = width
        self.n_classes = n_classes
        self.chunk_width = chunk_width
        self.chunks: dict[int, _Chunk] = {}

    def _chunk_span(self, k: int) -> tuple[int, int]:
        c0 = k * self.chunk_width
        return c0, min(c0 + self.chunk_width, self.width)

    def add(self, row0: int, col0: int, scores: np.ndarray, weight: np.ndarray) -> None:
        """Add one window's ``scores`` (K, h, w) times ``weight`` (h, w) at (row0, col0).

        ``weight`` is the blend weight already multiplied by the window's valid mask (nodata
        pixels get weight 0: no vote).
        """
        k, h, w = scores.shape
        if k != self.n_classes:
            raise ValueError(f"model returned {k} score channels, expected {self.n_classes}")
        if weight.shape != (h, w):
            raise ValueError(f"weight shape {weight.shape} does not match scores {scores.shape}")
        weighted = scores * weight[None]  # (K, h, w)
        first, last = col0 // self.chunk_width, (col0 + w - 1) // self.chunk_width
        for idx in range(first, last + 1):
            cstart, cend = self._chunk_span(idx)
            chunk = self.chunks.get(idx)
            if chunk is None:
                chunk = self.chunks[idx] = _Chunk(row0, self.n_classes, cend - cstart)
            if row0 < chunk.top:
                raise ValueError(f"window at row {row0} touches rows already finalised (top {chunk.top})")
            chunk.extend_to(row0 + h)
            a, b = max(col0, cstart), min(col0 + w, cend)
            rs = slice(row0 - chunk.top, row0 - chunk.top + h)
            chunk.acc[:, rs, a - cstart : b - cstart] += weighted[:, :, a - col0 : b - col0]
            chunk.wsum[rs, a - cstart : b - cstart] += weight[:, a - col0 : b - col0]

    def finalize(self, upto_row: int, before_col: int | None = None) -> Iterator[FinalBlock]:
        """Finalise rows ``< upto_row`` of every chunk lying entirely left of ``before_col``.

        Yields the finalised blocks (only rows some window has touched); the chunks keep their
        rows ``≥ upto_row``.
        """
        for idx in sorted(self.chunks):
            cstart, cend = self._chunk_span(idx)
            if before_col is not None and cend > before_col:
                continue
            chunk = self.chunks[idx]
            n = min(upto_row, chunk.bottom) - chunk.top
            if n <= 0:
                continue
            wsum = chunk.wsum[:n]
            valid = wsum > 0
            scores = chunk.acc[:, :n] / np.where(valid, wsum, 1.0)[None]
            yield FinalBlock(chunk.top, cstart, scores, valid)
            chunk.acc = chunk.acc[:, n:].copy()
            chunk.wsum = chunk.wsum[n:].copy()
            chunk.top += n
            if chunk.wsum.shape[0] == 0:
                chunk.top = upto_row
        for idx in [i for i, c in self.chunks.items() if c.wsum.shape[0] == 0]:
            del self.chunks[idx]

    # --- resume support -------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """The open sums as plain arrays (for a resume checkpoint)."""
        out: dict[str, np.ndarray] = {}
        for idx, chunk in self.chunks.items():
            out[f"acc_{idx}"] = chunk.acc
            out[f"wsum_{idx}"] = chunk.wsum
            out[f"top_{idx}"] = np.asarray(chunk.top)
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.chunks = {}
        for key in state:
            if key.startswith("top_"):
                idx = int(key[4:])
                chunk = _Chunk(int(state[key]), self.n_classes, 1)
                chunk.acc = np.array(state[f"acc_{idx}"], np.float32)
                chunk.wsum = np.array(state[f"wsum_{idx}"], np.float32)
                self.chunks[idx] = chunk
