"""Window planning and blending weights."""

from __future__ import annotations

import numpy as np
import pytest

from vitp_geo.tiling.blending import blend_weights
from vitp_geo.tiling.planner import axis_offsets, plan_windows


@pytest.mark.parametrize(
    "length,tile,stride", [(1000, 256, 192), (256, 256, 192), (257, 256, 192), (100, 256, 200)]
)
def test_offsets_cover_axis_and_end_on_edge(length: int, tile: int, stride: int) -> None:
    offs = axis_offsets(length, tile, stride)
    size = min(tile, length)
    covered = np.zeros(length, bool)
    for o in offs:
        assert 0 <= o and o + size <= length  # every window inside the scene, full size
        covered[o : o + size] = True
    assert covered.all()
    assert offs[-1] + size == length  # last window shifted inward onto the edge
    assert all(b - a <= stride for a, b in zip(offs, offs[1:], strict=False))


def test_plan_small_scene_is_one_window() -> None:
    plan = plan_windows(12, 13, 512, 0.25)
    assert (plan.tile_h, plan.tile_w, plan.row_offsets, plan.col_offsets) == (12, 13, (0,), (0,))


def test_bad_overlap_names_value() -> None:
    with pytest.raises(ValueError, match="overlap must be in"):
        plan_windows(100, 100, 64, 1.0)


def _weight_sum(plan, w: np.ndarray) -> np.ndarray:
    total = np.zeros((plan.height, plan.width))
    for r in plan.row_offsets:
        for c in plan.col_offsets:
            total[r : r + plan.tile_h, c : c + plan.tile_w] += w
    return total


def test_cosine_weights_are_a_partition_of_unity_on_a_regular_grid() -> None:
    tile, ov = 64, 16
    plan = plan_windows(4 * 48 + ov, 3 * 48 + ov, tile, ov / tile)  # exactly regular: no shifted window
    total = _weight_sum(plan, blend_weights(tile, tile, "cosine", overlap_px=ov, floor=1e-9))
    inner = total[ov:-ov, ov:-ov]  # away from the scene border every pixel's weights sum to exactly 1
    np.testing.assert_allclose(inner, 1.0, atol=1e-6)


@pytest.mark.parametrize("mode", ["cosine", "gaussian", "constant"])
def test_normalised_weights_sum_to_one_everywhere(mode: str) -> None:
    plan = plan_windows(203, 150, 64, 0.3)  # irregular: last windows shifted
    w = blend_weights(64, 64, mode, overlap_px=19)
    total = _weight_sum(plan, w)
    assert total.min() > 0  # every pixel, including the scene border, gets weight
    norm = np.zeros_like(total)
    for r in plan.row_offsets:
        for c in plan.col_offsets:
            norm[r : r + 64, c : c + 64] += w / total[r : r + 64, c : c + 64]
    np.testing.assert_allclose(norm, 1.0, atol=1e-6)


def test_weights_peak_in_the_centre_and_are_symmetric() -> None:
    for mode in ("cosine", "gaussian"):
        w = blend_weights(33, 33, mode, overlap_px=8)
        assert w[16, 16] == w.max() and w[0, 0] < w[16, 16]
        np.testing.assert_allclose(w, w[::-1, ::-1])
        np.testing.assert_allclose(w, w.T)
