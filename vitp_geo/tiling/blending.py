"""Blending weights for overlapping windows.

Each window's class scores are multiplied by a weight map before they are summed, and the sum is
divided by the summed weights, so predictions near a window's border (where the model sees less
context) count less than those at its centre.

- ``cosine``: 1 in the centre, a raised-cosine ramp ``sin²`` over the ``overlap`` pixels at each
  border. With a regular stride of ``tile − overlap`` the ramps of neighbouring windows sum to
  exactly 1 (``sin² + cos² = 1``), so the blend is a partition of unity.
- ``gaussian``: ``exp(−d²/2σ²)`` around the centre with ``σ = 0.125 · tile`` (MONAI's default).
- ``constant``: plain averaging.

Every weight is at least ``floor`` (> 0): a pixel covered by one window only (the scene edge)
still gets that window's prediction after normalisation.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np


class BlendMode(StrEnum):
    COSINE = "cosine"
    GAUSSIAN = "gaussian"
    CONSTANT = "constant"


def _cosine_ramp(n: int, ramp: int) -> np.ndarray:
    w = np.ones(n, np.float64)
    ramp = min(ramp, n // 2)
    if ramp > 0:
        t = (np.arange(ramp) + 0.5) / ramp  # pixel centres across the ramp, in (0, 1)
        up = np.sin(0.5 * np.pi * t) ** 2
        w[:ramp] = up
        w[n - ramp :] = up[::-1]
    return w


def blend_weights(
    tile_h: int,
    tile_w: int,
    mode: BlendMode | str = BlendMode.COSINE,
    overlap_px: int = 0,
    floor: float = 1e-3,
) -> np.ndarray:
    """The (tile_h, tile_w) float32 weight map of one window.

    Args:
        tile_h, tile_w: window size in pixels.
        mode: ``cosine``, ``gaussian`` or ``constant``.
        overlap_px: ramp width for ``cosine`` (the overlap between neighbours, in pixels).
        floor: smallest weight (> 0).
    """
    mode = BlendMode(mode)
    if tile_h < 1 or tile_w < 1:
        raise ValueError(f"tile size must be positive, got {tile_h}x{tile_w}")
    if not 0 < floor <= 1:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    if mode is BlendMode.CONSTANT:
        w = np.ones((tile_h, tile_w), np.float64)
    elif mode is BlendMode.COSINE:
        w = np.outer(_cosine_ramp(tile_h, overlap_px), _cosine_ramp(tile_w, overlap_px))
    else:
        axes = []
        for n in (tile_h, tile_w):
            d = np.arange(n) - (n - 1) / 2
            sigma = 0.125 * n
            axes.append(np.exp(-(d**2) / (2 * sigma**2)))
        w = np.outer(*axes)
        w /= w.max()
    return np.maximum(w, floor).astype(np.float32)
