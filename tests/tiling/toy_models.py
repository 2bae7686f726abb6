"""Models with a known answer for the tiling tests (importable by spawned ranks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vitp_geo.io.raster import write_geotiff
from vitp_geo.synthetic.scene import generate_scene

N_CLASSES = 5


def pixel_function(red: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """(…, H, W) red in [0, 1] → (…, K, H, W) scores: a bump per class centred at k / (K − 1)."""
    lib = torch if isinstance(red, torch.Tensor) else np
    return lib.stack([lib.exp(-50.0 * (red - k / (N_CLASSES - 1)) ** 2) for k in range(N_CLASSES)], -3)


class PixelModel(torch.nn.Module):
    """Scores that are a known per-pixel function of the (mean 0, std 255) normalised red band."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, T) → (B, K, T, T)
        return pixel_function(x[:, 0])


class InterruptAfter:
    """Wrap a model; raise KeyboardInterrupt on call number ``n`` (simulates Ctrl-C)."""

    def __init__(self, model: torch.nn.Module, n: int) -> None:
        self.model, self.n, self.calls = model, n, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.model(x)


def write_test_scene(
    path: Path, size: tuple[int, int], seed: int = 0, nodata_box: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """A synthetic RGB scene with nodata 0; ``nodata_box`` = (r0, r1, c0, c1) set to 0. Returns the image."""
    scene = generate_scene(seed, size)
    img = np.maximum(scene.image, 1)  # keep 0 for nodata only
    if nodata_box is not None:
        r0, r1, c0, c1 = nodata_box
        img[:, r0:r1, c0:c1] = 0
    write_geotiff(path, img, scene.transform, scene.crs, nodata=0)
    return img


class PositionModel(torch.nn.Module):
    """Scores that depend on where a pixel lies inside its window (spatial context, unlike PixelModel).

    Class 0 rises left to right across the window, class 1 top to bottom; the others are 0. Blending
    windows that disagree this way shows exactly which weights the engine used.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) → (B, K, H, W)
        b, _, h, w = x.shape
        out = torch.zeros(b, N_CLASSES, h, w)
        out[:, 0] = torch.linspace(0.0, 1.0, w).expand(h, w)
        out[:, 1] = torch.linspace(0.0, 1.0, h)[:, None].expand(h, w)
        return out


def reference_blend(height: int, width: int, tile: int, overlap: float) -> np.ndarray:
    """What PositionModel's blended scores must be: windows and cosine ramps of the nominal overlap."""
    from vitp_geo.tiling.blending import blend_weights
    from vitp_geo.tiling.planner import plan_windows

    plan = plan_windows(height, width, tile, overlap)
    stride = max(1, int(round(tile * (1 - overlap))))
    weight = blend_weights(plan.tile_h, plan.tile_w, "cosine", overlap_px=tile - stride).astype(np.float64)
    model = PositionModel()
    scores = model(torch.zeros(1, 3, plan.tile_h, plan.tile_w))[0].numpy().astype(np.float64)
    acc = np.zeros((N_CLASSES, height, width))
    wsum = np.zeros((height, width))
    for r in plan.row_offsets:
        for c in plan.col_offsets:
            acc[:, r : r + plan.tile_h, c : c + plan.tile_w] += scores * weight
            wsum[r : r + plan.tile_h, c : c + plan.tile_w] += weight
    return acc / wsum
