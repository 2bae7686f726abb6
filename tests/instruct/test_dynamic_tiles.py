import numpy as np
import pytest
import torch
from PIL import Image

from vitp_geo.vlm.dynamic_tiles import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    choose_grid,
    dynamic_tiles,
    to_pixel_values,
)


@pytest.mark.parametrize(
    ("size", "max_tiles", "grid"),
    [
        ((448, 448), 6, (1, 1)),  # square and small: one tile
        ((896, 448), 6, (2, 1)),  # 2:1 landscape
        ((448, 1344), 6, (1, 3)),  # 1:3 portrait
        ((1792, 1792), 6, (2, 2)),  # big square: tie between 1x1 and 2x2 goes to the larger grid
        ((3000, 448), 6, (6, 1)),  # very wide: the widest allowed grid
        ((3000, 448), 4, (4, 1)),
    ],
)
def test_grid_matches_aspect_ratio(size, max_tiles, grid):
    assert choose_grid(*size, tile_size=448, max_tiles=max_tiles) == grid


def test_tiles_are_row_major_crops_plus_thumbnail():
    # A 2x1 image whose left half is black and right half white → two tiles, then a thumbnail.
    arr = np.zeros((56, 112, 3), np.uint8)
    arr[:, 56:] = 255
    tiles = dynamic_tiles(Image.fromarray(arr), 56, max_tiles=6)
    assert len(tiles) == 3
    assert np.asarray(tiles[0]).max() == 0 and np.asarray(tiles[1]).min() == 255
    thumb = np.asarray(tiles[2])
    assert thumb.shape == (56, 56, 3) and thumb[:, :20].max() < 10 and thumb[:, -20:].min() > 245
    assert len(dynamic_tiles(Image.fromarray(arr), 56, max_tiles=6, thumbnail=False)) == 2


def test_pixel_values_are_imagenet_normalised():
    img = Image.new("RGB", (14, 14), (255, 0, 128))
    pv = to_pixel_values([img])
    assert pv.shape == (1, 3, 14, 14)
    expected = (torch.tensor([255, 0, 128]) / 255.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(
        IMAGENET_STD
    )
    assert torch.allclose(pv[0, :, 0, 0], expected.float(), atol=1e-6)


def test_bad_budget_is_refused():
    with pytest.raises(ValueError, match="min_tiles"):
        choose_grid(10, 10, 448, min_tiles=3, max_tiles=2)
