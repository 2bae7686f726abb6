"""Tile windows of a scene and the words instruction builders use for places inside a tile."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitp_geo.tiling.planner import plan_windows


@dataclass(frozen=True)
class Tile:
    """A window of a scene in pixels: rows ``row:row+height``, columns ``col:col+width``."""

    row: int
    col: int
    height: int
    width: int

    @property
    def name(self) -> str:
        return f"r{self.row:05d}_c{self.col:05d}"

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)


def plan_tiles(height: int, width: int, tile_size: int, overlap: float = 0.0) -> list[Tile]:
    """Tiles covering an ``height``×``width`` scene, row-major.

    The windows are the one tile planner's (``vitp_geo.tiling.planner.plan_windows``, which
    inference uses too): ``tile_size`` square with stride ``round(tile_size · (1 − overlap))``; the
    last row and column are shifted to end at the scene edge. A scene smaller than ``tile_size`` is
    one tile of the scene's own size.
    """
    if tile_size < 8:
        raise ValueError(f"tile_size must be >= 8, got {tile_size}")
    plan = plan_windows(height, width, tile_size, overlap)
    return [Tile(r, c, plan.tile_h, plan.tile_w) for r in plan.row_offsets for c in plan.col_offsets]


# Named regions of a tile as (row0, row1, col0, col1) fractions.
REGIONS: dict[str, tuple[float, float, float, float]] = {
    "top-left quadrant": (0.0, 0.5, 0.0, 0.5),
    "top-right quadrant": (0.0, 0.5, 0.5, 1.0),
    "bottom-left quadrant": (0.5, 1.0, 0.0, 0.5),
    "bottom-right quadrant": (0.5, 1.0, 0.5, 1.0),
    "top half": (0.0, 0.5, 0.0, 1.0),
    "bottom half": (0.5, 1.0, 0.0, 1.0),
    "left half": (0.0, 1.0, 0.0, 0.5),
    "right half": (0.0, 1.0, 0.5, 1.0),
    "center": (0.25, 0.75, 0.25, 0.75),
}


def region_slices(region: str, height: int, width: int) -> tuple[slice, slice]:
    """Pixel slices of a named region (see ``REGIONS``)."""
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; known: {list(REGIONS)}")
    r0, r1, c0, c1 = REGIONS[region]
    return (
        slice(int(round(r0 * height)), int(round(r1 * height))),
        slice(int(round(c0 * width)), int(round(c1 * width))),
    )


_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "center", "right")


def position_word(x: float, y: float, width: float, height: float) -> str:
    """Where a pixel point lies in a 3×3 grid of the tile: "top-left", "center", "bottom", …"""
    r = min(2, max(0, int(3 * y / height)))
    c = min(2, max(0, int(3 * x / width)))
    if r == 1 and c == 1:
        return "center"
    if r == 1:
        return _COLS[c]
    if c == 1:
        return _ROWS[r]
    return f"{_ROWS[r]}-{_COLS[c]}"


def most_common_position(points: list[tuple[float, float]], width: float, height: float) -> str:
    """The grid cell holding most of ``points`` (first in row-major order on ties)."""
    words = [position_word(x, y, width, height) for x, y in points]
    values, counts = np.unique(np.array(words), return_counts=True)
    return str(values[int(np.argmax(counts))])
