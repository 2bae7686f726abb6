"""InternVL dynamic tiling: split an image into aspect-ratio-matched square tiles plus a thumbnail.

For an image of width ``W`` and height ``H`` and a tile budget ``[min_tiles, max_tiles]``, every
grid ``(cols, rows)`` with ``min_tiles <= cols·rows <= max_tiles`` is a candidate. The grid whose
aspect ratio ``cols/rows`` is closest to ``W/H`` wins; on a tie, the larger grid wins when the image
has more than half the pixels that grid would cover (so big images get more tiles). The image is
resized to ``(cols·S, rows·S)`` and cut row-major into ``cols·rows`` tiles of ``S×S``; when more than
one tile results and ``thumbnail`` is on, the whole image resized to ``S×S`` is appended last.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vitp_geo.constants import IMAGENET_MEAN, IMAGENET_STD

# InternVL normalises with the ImageNet statistics.


def candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """All ``(cols, rows)`` with ``min_tiles <= cols·rows <= max_tiles``, fewest tiles first."""
    if min_tiles < 1 or max_tiles < min_tiles:
        raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {min_tiles}, {max_tiles}")
    grids = {
        (c, r)
        for c in range(1, max_tiles + 1)
        for r in range(1, max_tiles + 1)
        if min_tiles <= c * r <= max_tiles
    }
    return sorted(grids, key=lambda g: (g[0] * g[1], g))


def choose_grid(
    width: int, height: int, tile_size: int, min_tiles: int = 1, max_tiles: int = 6
) -> tuple[int, int]:
    """The ``(cols, rows)`` grid for an image (see module doc)."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def dynamic_tiles(
    image: Image.Image, tile_size: int, *, min_tiles: int = 1, max_tiles: int = 6, thumbnail: bool = True
) -> list[Image.Image]:
    """Cut a PIL image into tiles (row-major), plus a thumbnail when there is more than one tile."""
    cols, rows = choose_grid(image.width, image.height, tile_size, min_tiles, max_tiles)
    resized = image.resize((cols * tile_size, rows * tile_size), Image.Resampling.BICUBIC)
    tiles = [
        resized.crop((c * tile_size, r * tile_size, (c + 1) * tile_size, (r + 1) * tile_size))
        for r in range(rows)
        for c in range(cols)
    ]
    if thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile_size, tile_size), Image.Resampling.BICUBIC))
    return tiles


def to_pixel_values(tiles: list[Image.Image]) -> torch.Tensor:
    """Tiles → normalised float tensor (T, 3, S, S)."""
    arr = np.stack([np.asarray(t.convert("RGB"), dtype=np.float32) / 255.0 for t in tiles])  # (T, S, S, 3)
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(((arr - mean) / std).transpose(0, 3, 1, 2).copy())
