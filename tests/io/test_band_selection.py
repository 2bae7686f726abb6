"""The 3-channel rule's band selection says when it guesses."""

from __future__ import annotations

import warnings

import pytest

from vitp_geo.io.raster import RenderRule, select_bands


def test_more_than_three_bands_without_a_selection_warns_and_takes_rgb() -> None:
    with pytest.warns(UserWarning, match=r"4 bands and no band selection.*bands 1, 2, 3"):
        assert select_bands(4, RenderRule()) == (1, 2, 3)


@pytest.mark.parametrize(
    ("count", "rule", "expected"),
    [(3, RenderRule(), (1, 2, 3)), (2, RenderRule(), (1, 2)), (4, RenderRule(bands=(4, 3, 2)), (4, 3, 2))],
)
def test_no_warning_when_nothing_is_guessed(count: int, rule: RenderRule, expected: tuple[int, ...]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_bands(count, rule) == expected
