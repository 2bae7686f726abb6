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
