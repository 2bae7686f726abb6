"""Window planning: where the tiles of a scene go.

Windows form a regular grid of rows and columns with stride ``tile − overlap``. The last row and
column are shifted inward so that they end exactly at the scene edge: every window has the full
tile size (unless the scene itself is smaller than one tile, then the window is the scene), so
the model never sees padding inside the scene and no edge seam appears.
"""

from __future__ import annotations

from dataclasses import dataclass


def axis_offsets(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets along one axis of ``length`` pixels; the last one is shifted inward.

    Args:
        length: pixels along the axis (≥ 1).
        tile: window size along the axis.
        stride: step between consecutive windows (1 ≤ stride ≤ tile).
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if tile < 1 or not 1 <= stride <= tile:
        raise ValueError(f"need tile >= 1 and 1 <= stride <= tile, got tile={tile}, stride={stride}")
    if length <= tile:
        return [0]
    offsets = list(range(0, length - tile, stride))
    offsets.append(length - tile)  # the last window ends on the edge
    return offsets


@dataclass(frozen=True)
class WindowPlan:
    """A grid of windows over a ``height × width`` scene.

    Attributes:
        height, width: scene size in pixels.
        tile_h, tile_w: window size (``min(tile_size, scene side)``).
        row_offsets, col_offsets: window start rows and columns, increasing.
        stride: the nominal step between neighbouring windows (``tile_size − overlap px``); only the
            last row and column, shifted inward to end on the edge, may overlap more. Blending ramps
            take their width from it (``tile_size − stride``), never from an offset gap.
    """

    height: int
    width: int
    tile_h: int
    tile_w: int
    row_offsets: tuple[int, ...]
    col_offsets: tuple[int, ...]
    stride: int

    @property
    def overlap_px(self) -> int:
        """Nominal overlap between neighbouring windows in pixels (the blend ramp width)."""
        return max(0, max(self.tile_h, self.tile_w) - self.stride)

    @property
    def n_windows(self) -> int:
        return len(self.row_offsets) * len(self.col_offsets)

    def row_end(self, row: int) -> int:
        """First scene row that a window row ≥ ``row + 1`` may still touch (H after the last)."""
        return self.row_offsets[row + 1] if row + 1 < len(self.row_offsets) else self.height


def plan_windows(height: int, width: int, tile_size: int, overlap: float) -> WindowPlan:
    """Plan windows of ``tile_size`` with fractional ``overlap`` over a ``height × width`` scene.

    Args:
        height, width: scene size in pixels.
        tile_size: window side in pixels.
        overlap: fraction of the tile shared by neighbouring windows, in [0, 1).

    Returns:
        The plan; stride is ``round(tile_size · (1 − overlap))`` (at least 1).
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size}")
    if height < 1 or width < 1:
        raise ValueError(f"scene must be at least 1x1 pixels, got {height}x{width}")
    stride = max(1, int(round(tile_size * (1 - overlap))))
    tile_h, tile_w = min(tile_size, height), min(tile_size, width)
    return WindowPlan(
        height,
        width,
        tile_h,
        tile_w,
        tuple(axis_offsets(height, tile_size, stride)),
        tuple(axis_offsets(width, tile_size, stride)),
        stride,
    )
