"""Strip-wise polygonisation joins regions cut by strip borders."""

from __future__ import annotations

import numpy as np
from affine import Affine

from vitp_geo.io.polygonize import polygonize_rows


def _polys(cls: np.ndarray, conf: np.ndarray, strip: int, min_area: int = 0):
    return polygonize_rows(
        lambda a, b: (cls[a:b], conf[a:b]),
        height=cls.shape[0],
        width=cls.shape[1],
        transform=Affine(2, 0, 0, 0, -2, 100),
        crs="EPSG:32633",
        class_names=["a", "b", "c"],
        nodata=255,
        min_area_px=min_area,
        strip_rows=strip,
    )


def test_strips_give_the_same_polygons_as_one_pass() -> None:
    rng = np.random.default_rng(0)
    cls = (rng.random((60, 50)) > 0.6).astype(np.uint8)  # speckled: many regions cross strip borders
    cls[20:40, 10:30] = 2
    cls[:3, :3] = 255
    conf = rng.random((60, 50)).astype(np.float32)
    one, many = _polys(cls, conf, 60), _polys(cls, conf, 7)
    assert len(one) == len(many)
    key = ["class_id", "pixels"]
    a, b = one.sort_values(key).reset_index(drop=True), many.sort_values(key).reset_index(drop=True)
    np.testing.assert_array_equal(a[key].to_numpy(), b[key].to_numpy())
    np.testing.assert_allclose(np.sort(a.score), np.sort(b.score))
    big = many[many.class_id == 2].iloc[0]
    assert big.pixels == 400 and big.area == 400 * 4 and abs(big.score - conf[20:40, 10:30].mean()) < 1e-6
    assert many.geometry.is_valid.all() and (many.pixels.sum() == (cls != 255).sum())


def test_min_area_and_empty() -> None:
    cls = np.zeros((10, 10), np.uint8)
    cls[0, 0] = 1
    conf = np.ones((10, 10), np.float32)
    frame = _polys(cls, conf, 4, min_area=2)
    assert list(frame.class_id) == [0]
    empty = _polys(np.full((10, 10), 255, np.uint8), conf, 4)
    assert len(empty) == 0 and list(empty.columns[:5]) == [
        "class_id",
        "class_name",
        "score",
        "area",
        "pixels",
    ]
