"""Reading scene windows as normalised model input.

``SceneWindowReader`` opens one scene (or a before/after pair for change models), checks it,
and returns each window rendered by the documented 3-channel rule (``vitp_geo.io.raster``) and
normalised with the checkpoint's mean/std.

Percentile stretch (non-uint8 and SAR data) must be the same for every window, otherwise
neighbouring tiles would be scaled differently and seams would appear. The stretch limits are
therefore computed once per scene and applied to every window, by the one windowed scene reader
``vitp_geo.io.raster.SceneWindows`` that the instruction builders read through too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from vitp_geo.io.raster import OVERVIEW_SIZE, RenderRule, SceneWindows, open_raster, valid_mask


class SceneWindowReader:
    """Windows of one scene (or a co-registered pair) as normalised float32 input.

    Args:
        paths: the scene, or ``[before, after]`` for change models (same grid).
        rule: the render rule (band selection, percentiles, SAR) from the checkpoint.
        mean, std: per-channel normalisation of the 0–255 rendered input (3 values, or 6 for a
            pair; 3 values are repeated for a pair).
        overview_size: side of the decimated read used for scene-level stretch limits.
        raw: feed the selected bands' raw values (normalised) instead of the 3-channel render —
            for models whose channel count is not 3 (e.g. 4-band multispectral).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        rule: RenderRule,
        mean: Sequence[float],
        std: Sequence[float],
        overview_size: int = OVERVIEW_SIZE,
        raw: bool = False,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.rule = rule
        self.raw = raw
        self.datasets: list[rasterio.DatasetReader] = []
        try:
            for path in self.paths:
                self.datasets.append(open_raster(path))
            self._prepare(mean, std, overview_size)
        except BaseException:
            self.close()  # no dataset stays open when the scene is refused
            raise

    def __enter__(self) -> SceneWindowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prepare(self, mean: Sequence[float], std: Sequence[float], overview_size: int) -> None:
        """Check grids and bands, set normalisation and scene-wide stretch limits."""
        rule, raw = self.rule, self.raw
        first = self.datasets[0]
        for path, ds in zip(self.paths, self.datasets, strict=True):
            if ds.transform.is_identity and ds.crs is None and ds.gcps[0]:
                raise ValueError(f"{path} is georeferenced by GCPs only; warp it to a grid first (gdalwarp)")
            if (ds.height, ds.width, ds.transform, ds.crs) != (
                first.height,
                first.width,
                first.transform,
                first.crs,
            ):
                raise ValueError(f"{path} is not on the same grid as {self.paths[0]}")
        # the one windowed reader (io.raster.SceneWindows); raw input computes no stretch limits
        self.scenes = [
            SceneWindows(p, ds, rule, overview_size=overview_size, stretch=not raw)
            for p, ds in zip(self.paths, self.datasets, strict=True)
        ]
        self.band_index = [scene.bands for scene in self.scenes]
        per_scene = len(self.band_index[0]) if raw else 3
        channels = per_scene * len(self.paths)
        if raw and any(np.dtype(ds.dtypes[0]).kind == "c" for ds in self.datasets):
            raise ValueError(
                f"{self.paths[0]} holds complex (SAR) data: it needs a 3-channel model and the "
                "render rule (20·log10|z|), not raw bands"
            )
        mean_a, std_a = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        if mean_a.size == per_scene and len(self.paths) == 2:
            mean_a, std_a = np.tile(mean_a, 2), np.tile(std_a, 2)
        if mean_a.size != channels or std_a.size != channels:
            raise ValueError(
                f"mean/std have {mean_a.size}/{std_a.size} values, the model input has {channels}"
            )
        if (std_a <= 0).any():
            raise ValueError(f"std must be > 0, got {std_a.tolist()}")
        self.mean, self.std = mean_a[:, None, None], std_a[:, None, None]
        self.limits = [scene.limits for scene in self.scenes]

    @property
    def height(self) -> int:
        return int(self.datasets[0].height)

    @property
    def width(self) -> int:
        return int(self.datasets[0].width)

    @property
    def profile(self) -> rasterio.profiles.Profile:
        return self.datasets[0].profile

    def read(self, row0: int, col0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """One window.

        Returns:
            ``(x, valid)``: (C, h, w) float32 normalised input (C = 3 or 6) and (h, w) bool.
        """
        xs, valid = [], np.ones((h, w), bool)
        window = Window(col0, row0, w, h)
        for scene in self.scenes:
            if self.raw:
                raw = scene.read(window)
                ok = valid_mask(raw, scene.ds.nodata)
                xs.append(np.where(ok, raw, 0).astype(np.float32))
            else:
                rgb, ok = scene.render(window)
                xs.append(rgb)
            valid &= ok
        x = (np.concatenate(xs).astype(np.float32) - self.mean) / self.std
        x[:, ~valid] = 0.0  # nodata pixels carry no signal (and get no vote downstream)
        return x, valid

    def close(self) -> None:
        for ds in self.datasets:
            ds.close()
