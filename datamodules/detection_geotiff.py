"""Detection tiles from GeoTIFF scenes and vector labels (``GeoTiffDetectionDataModule``).

**GeoTIFF scenes.** Labels are read and placed on each scene's pixel grid by the instruction
builders' loader (``vitp_geo.instruct.builders.labels.load_pixel_labels``: any CRS, repaired
geometries, polygons only), and cut per tile by their edge rule (``tile_objects``: an object is
kept when at least ``min_visible`` of its area lies in the tile, and described by the clipped
part). Each scene is split by area as in ``vitp_geo.datamodules.geotiff``: the eastern ``val_fraction``
of its width (whole tiles, at least one) is validation, tiled on a grid; training tiles are
drawn at random strictly west of it, so no pixel is seen by both splits. Samples are those of
``vitp_geo.datamodules.detection_batches``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, get_worker_info
from vitp_geo.datamodules.detection_batches import detection_loader
from vitp_geo.datamodules.geotiff import (
    _AreaSplitDataModule,
    _raster_dtype,
    default_stats,
    resolve_files,
    resolve_files_any,
)
from vitp_geo.datamodules.sampling import SamplingArgs, TakesSampling

log = logging.getLogger(__name__)


def rect_corners(geom: shapely.geometry.base.BaseGeometry) -> np.ndarray:
    """The minimum-area rectangle of ``geom`` as 4 corners (4, 2), clockwise on screen from the top-left-most."""
    rect = shapely.minimum_rotated_rectangle(geom)
    if rect.geom_type != "Polygon":  # a degenerate (line / point) object
        x1, y1, x2, y2 = geom.bounds
        return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float64)
    pts = np.asarray(rect.exterior.coords, np.float64)[:4]
    x, y = pts[:, 0], pts[:, 1]
    if 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) < 0:  # y down: > 0 is clockwise on screen
        pts = pts[::-1]
    return np.roll(pts, -int(np.argmin(pts[:, 0] + pts[:, 1])), axis=0)


class _Scene:
    """One scene: its raw pixels and label polygons in pixel coordinates."""

    def __init__(
        self, image: str, vector: Sequence[str], class_field: str | None, classes: list[str] | None
    ) -> None:
        import rasterio

        from vitp_geo.instruct.builders.labels import load_pixel_labels
        from vitp_geo.instruct.builders.raster_scene import RasterGrid

        with rasterio.open(image) as src:
            self.pixels = src.read().astype(np.float32)  # (C, H, W) raw band values
            # The label loader needs the grid only (transform, CRS, size), not rendered pixels.
            grid = RasterGrid(Path(image), src)  # its attributes stay readable after the close
        c, h, w = self.pixels.shape
        geoms: list[Any] = []
        names: list[str] = []
        for path in vector:
            try:
                labels = load_pixel_labels(path, grid, class_field=class_field)
            except ValueError as err:
                if "do not overlap" in str(err):
                    continue  # this vector file covers another scene
                raise
            geoms += labels.geometries
            names += labels.classes
        self.path = image
        self.geometries = geoms
        self.classes = names
        self.tree = shapely.STRtree(geoms) if geoms else None
        self.height, self.width = h, w


class _TileDataset(Dataset[dict[str, Any]]):
    """Tiles ``(scene, row, col)`` → detection samples (module doc)."""

    def __init__(
        self,
        scenes: list[_Scene],
        tiles: list[tuple[int, int, int]],
        patch: int,
        classes: list[str],
        mean: Tensor,
        std: Tensor,
        min_visible: float,
        flips: bool,
        seed: int,
    ) -> None:
        self.scenes, self.tiles, self.patch, self.classes = scenes, tiles, patch, classes
        self.mean, self.std = mean[:, None, None], std[:, None, None]
        self.min_visible, self.flips, self.seed = min_visible, flips, seed
        self._rng: np.random.Generator | None = None
        self._rng_key: int | None = None

    def _flip_rng(self) -> np.random.Generator:
        """The flip generator of this process.

        In a DataLoader worker it is seeded from ``(seed, the worker's torch seed)``: the loader
        draws a new base seed from its (seeded) generator for every epoch and adds the worker id,
        so each worker and each epoch draw their own flips, reproducibly for a fixed ``seed``. (A
        generator made in ``__init__`` is copied into every worker in the same state, epoch after
        epoch.) In the main process (``num_workers=0``) one stream from ``seed`` runs across epochs.
        """
        info = get_worker_info()
        key = None if info is None else int(info.seed)
        if self._rng is None or key != self._rng_key:
            self._rng = np.random.default_rng(self.seed if key is None else [self.seed, key])
            self._rng_key = key
        return self._rng

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from vitp_geo.instruct.builders.labels import PixelLabels
        from vitp_geo.instruct.builders.tile_places import Tile
        from vitp_geo.instruct.builders.vector import tile_objects

        si, row, col = self.tiles[index]
        scene, p = self.scenes[si], self.patch
        image = torch.from_numpy(scene.pixels[:, row : row + p, col : col + p].copy())
        image = (image - self.mean) / self.std
        corners: list[np.ndarray] = []
        labels: list[int] = []
        if scene.tree is not None:
            pl = PixelLabels(scene.geometries, scene.geometries, scene.classes, sorted(set(scene.classes)))
            for obj in tile_objects(pl, scene.tree, Tile(row, col, p, p), self.min_visible):
                if obj.kept and obj.cls in self.classes:
                    corners.append(rect_corners(obj.visible))
                    labels.append(self.classes.index(obj.cls))
        quads = torch.from_numpy(np.asarray(corners, np.float32).reshape(-1, 4, 2))  # (N, 4, 2)
        if self.flips:
            rng = self._flip_rng()
            if rng.random() < 0.5:  # horizontal flip (corners stay a rectangle, order reverses)
                image = image.flip(-1)
                quads = quads.flip(1)
                quads[..., 0] = p - quads[..., 0]
            if rng.random() < 0.5:
                image = image.flip(-2)
                quads = quads.flip(1)
                quads[..., 1] = p - quads[..., 1]
        xy = quads.reshape(-1, 4, 2)
        hbb = (
            torch.cat([xy.amin(1), xy.amax(1)], dim=1).clamp(0, p)
            if xy.shape[0]
            else torch.zeros((0, 4), dtype=torch.float32)
        )
        return {
            "image": image,
            "bbox_xyxy": hbb,
            "bbox_xyxyxyxy": xy.reshape(-1, 8),
            "label": torch.as_tensor(labels, dtype=torch.int64),
        }


class GeoTiffDetectionDataModule(TakesSampling, LightningDataModule):
    """Detection tiles from GeoTIFF scenes and vector polygons (module doc).

    Args:
        images: scene GeoTIFFs (folder, glob, file or list).
        vectors: vector files (GeoPackage, shapefile, GeoJSON) in any CRS; each is placed on
            every scene it overlaps.
        classes: object classes in label order; objects of other classes are left out (counted
            in the log). None: every class name found, sorted.
        class_field: attribute holding the class name (None: ``class_name`` / ``class`` /
            ``label`` / ``category``, the builders' rule).
        bands: 1-based bands to read (default all).
        sampling: tile size, batch size, tiles per epoch, validation share of each scene's width,
            workers, seed of the training tile positions and flips
            (:class:`~vitp_geo.datamodules.sampling.SamplingArgs`; defaults ``SAMPLING``: those of
            the GeoTIFF segmentation modules with a 0.25 validation strip).
        min_visible: share of an object's area that must lie in a tile for it to count there.
        mean, std: per-channel normalisation (``vitp_geo.datamodules.geotiff.default_stats``).
        flips: random horizontal / vertical flips in training.
    """

    raw_bands = True  # models see the raster's own band values, as for the segmentation datamodules
    raw_dtype: str | None = None  # their value type (the first scene's), which infer requires of a scene
    SAMPLING = {**_AreaSplitDataModule.SAMPLING, "val_fraction": 0.25}

    def __init__(
        self,
        images: str | list[str],
        vectors: str | list[str],
        classes: list[str] | None = None,
        class_field: str | None = None,
        bands: list[int] | None = None,
        sampling: SamplingArgs | None = None,
        min_visible: float = 0.5,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        flips: bool = True,
    ) -> None:
        super().__init__()
        s = self.sampling_settings(sampling)
        val_fraction = s["val_fraction"]
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if not 0 < min_visible <= 1:
            raise ValueError(f"min_visible must be in (0, 1], got {min_visible}")
        self.image_files = resolve_files(images, "image")
        self.vector_files = resolve_files_any(vectors, "vector")
        self.raw_dtype = _raster_dtype(self.image_files[0])
        self.classes = list(classes) if classes is not None else None
        self.class_field = class_field
        self.bands = list(bands) if bands is not None else None
        self.patch_size: int = s["patch_size"]
        self.batch_size: int = s["batch_size"]
        self.length: int | None = s["length"]
        self.val_fraction, self.min_visible = val_fraction, min_visible
        self.flips, self.num_workers, self.seed = flips, s["num_workers"], s["seed"]
        self._mean_arg, self._std_arg = mean, std
        self.scenes: list[_Scene] | None = None

    def _load(self) -> list[_Scene]:
        if self.scenes is None:
            scenes = [_Scene(f, self.vector_files, self.class_field, self.classes) for f in self.image_files]
            if self.bands is not None:
                for s in scenes:
                    if max(self.bands) > s.pixels.shape[0]:
                        raise ValueError(
                            f"{s.path}: band {max(self.bands)} requested but it has {s.pixels.shape[0]} band(s)"
                        )
                    s.pixels = s.pixels[[b - 1 for b in self.bands]]
            found = sorted({c for s in scenes for c in s.classes})
            if self.classes is None:
                self.classes = found
            dropped = {c: sum(s.classes.count(c) for s in scenes) for c in found if c not in self.classes}
            if dropped:
                log.info("objects of classes outside %s left out: %s", self.classes, dropped)
            channels = scenes[0].pixels.shape[0]
            mean, std = default_stats(channels, self._mean_arg, self._std_arg)
            self.mean = torch.tensor(mean, dtype=torch.float32)
            self.std = torch.tensor(std, dtype=torch.float32)
            self.scenes = scenes
        return self.scenes

    def _split(self, scene: _Scene) -> int:
        """First validation column of ``scene`` (module doc)."""
        p = self.patch_size
        n = max(1, round(self.val_fraction * scene.width / p))
        cut = scene.width - n * p
        if cut < p or scene.height < p:
            raise ValueError(
                f"{scene.path}: {scene.width}x{scene.height} px is too small for a training area and a "
                f"{n}-tile validation strip of {p} px tiles"
            )
        return cut

    def setup(self, stage: str) -> None:
        """Read the scenes once; plan random training tiles and grid validation tiles."""
        scenes = self._load()
        p = self.patch_size
        rng = np.random.default_rng(self.seed)
        train: list[tuple[int, int, int]] = []
        val: list[tuple[int, int, int]] = []
        areas = []
        for i, s in enumerate(scenes):
            cut = self._split(s)
            areas.append((cut - p + 1) * (s.height - p + 1))
            for row in range(0, s.height - p + 1, p):
                for col in range(cut, s.width - p + 1, p):
                    val.append((i, row, col))
        n_train = self.length or max(1, sum(round(self._split(s) * s.height / p**2) for s in scenes))
        weights = np.asarray(areas, np.float64) / float(sum(areas))
        for si in rng.choice(len(scenes), size=n_train, p=weights):
            s = scenes[int(si)]
            cut = self._split(s)
            train.append((int(si), int(rng.integers(0, s.height - p + 1)), int(rng.integers(0, cut - p + 1))))
        assert self.classes is not None
        common = dict(
            patch=p, classes=self.classes, mean=self.mean, std=self.std, min_visible=self.min_visible
        )
        self.train_dataset = _TileDataset(scenes, train, flips=self.flips, seed=self.seed, **common)  # type: ignore[arg-type]
        self.val_dataset = _TileDataset(scenes, val, flips=False, seed=self.seed, **common)  # type: ignore[arg-type]

    def _loader(self, dataset: Dataset[dict[str, Any]], shuffle: bool) -> DataLoader[dict[str, Any]]:
        return detection_loader(dataset, self.batch_size, self.num_workers, shuffle, self.seed)

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader(self.val_dataset, shuffle=False)
