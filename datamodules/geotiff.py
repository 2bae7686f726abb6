"""torchgeo datamodules for your own GeoTIFF scenes: segmentation and change detection.

Scenes are read with torchgeo's ``RasterDataset`` (labels: a class-id raster, or vector
polygons burned once onto each scene's grid), tiles are drawn with torchgeo samplers —
``RandomBatchGeoSampler`` for training, ``GridGeoSampler`` for validation — so batches are
torchgeo's dicts and any torchgeo task (ours included) trains on them.

**Split by area.** Every scene footprint is cut in two along a vertical line: the eastern strip
(``val_fraction`` of the width, rounded to whole tiles, at least one tile) is the validation
area, the rest the training area. Training tiles are drawn strictly inside the training area
and validation tiles start inside the validation area and only ever extend east / north,
away from it — so no pixel is seen by both splits.

Band statistics: ``mean`` / ``std`` per channel in the rasters' units (default: ImageNet's
statistics × 255 for 3 uint8 bands, otherwise 0 / 255). They are stored in the fine-tuned
checkpoint's model card through the task.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import shapely
import torch
from shapely.geometry.base import BaseGeometry
from torchgeo.datamodules import GeoDataModule
from torchgeo.datasets import GeoDataset, RasterDataset
from torchgeo.samplers import GridGeoSampler, RandomBatchGeoSampler
from vitp_geo.datamodules.sampling import SamplingArgs, TakesSampling

from vitp_geo.constants import IMAGENET_MEAN_255, IMAGENET_STD_255


def resolve_files(spec: str | Sequence[str], what: str) -> list[str]:
    """Files named by a folder (``*.tif`` inside), a glob, a file, or a list of those; sorted.

    Raises:
        FileNotFoundError: nothing matches (the spec is named).
    """
    specs = [spec] if isinstance(spec, str | Path) else list(spec)
    files: list[str] = []
    for s in specs:
        p = Path(s)
        if p.is_dir():
            files += sorted(str(f) for f in p.iterdir() if f.suffix.lower() in (".tif", ".tiff", ".vrt"))
        elif p.is_file():
            files.append(str(p))
        else:
            files += sorted(glob.glob(str(s)))
    if not files:
        raise FileNotFoundError(f"no {what} files found for {spec!r}")
    return files


class _ImageRaster(RasterDataset):
    is_image = True


class _LabelRaster(RasterDataset):
    is_image = False


class _BandSelect:
    """Dataset transform keeping 1-based ``bands`` of ``sample['image']``."""

    def __init__(self, bands: Sequence[int]) -> None:
        self.index = [b - 1 for b in bands]

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = sample["image"]
        if max(self.index) >= image.shape[0]:
            raise ValueError(
                f"band {max(self.index) + 1} requested but the raster has {image.shape[0]} band(s)"
            )
        sample["image"] = image[self.index]
        return sample


def area_split(
    footprints: Sequence[BaseGeometry], tile: float, val_fraction: float
) -> tuple[BaseGeometry, BaseGeometry]:
    """Training and validation regions (map units) for scene ``footprints`` (module doc).

    Args:
        footprints: scene outlines.
        tile: tile width in map units.
        val_fraction: share of each scene's width given to validation (0 < f < 1).

    Returns:
        (train region, val region), each a (multi)polygon; they only touch along the cut lines.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train, val = [], []
    for fp in footprints:
        xmin, ymin, xmax, ymax = fp.bounds
        n_tiles = max(1, round(val_fraction * (xmax - xmin) / tile))
        cut = xmax - n_tiles * tile
        if cut <= xmin + tile / 2:
            raise ValueError(
                f"scene {fp.bounds} is too narrow to hold a training area and a {n_tiles}-tile validation strip "
                f"of {tile} map units"
            )
        train.append(shapely.box(xmin, ymin, cut, ymax))
        val.append(shapely.box(cut, ymin, xmax, ymax))
    return shapely.union_all(train), shapely.union_all(val)


class _AreaSplitDataModule(TakesSampling, GeoDataModule):
    """Common setup: one intersected dataset, samplers restricted to the train / val regions."""

    # Models see the raster's own band values (normalised by mean / std), not the 3-channel
    # render rule; the model card records this so that inference feeds them the same way.
    raw_bands = True
    SAMPLING = dict(patch_size=112, batch_size=8, length=None, val_fraction=0.2, num_workers=0, seed=0)

    def __init__(
        self,
        sampling: SamplingArgs | None,
        mean: Sequence[float],
        std: Sequence[float],
        flips: bool,
    ) -> None:
        s = self.sampling_settings(sampling)
        super().__init__(
            GeoDataset,  # type: ignore[type-abstract]
            batch_size=s["batch_size"],
            patch_size=s["patch_size"],
            length=s["length"],
            num_workers=s["num_workers"],
        )
        self.val_fraction = s["val_fraction"]
        self.seed = s["seed"]
        self.mean = torch.tensor(list(mean), dtype=torch.float32)
        self.std = torch.tensor(list(std), dtype=torch.float32)
        self.flips = flips
        self._build_augmentations()

    def _norm_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean, self.std

    def _build_augmentations(self) -> None:
        mean, std = self._norm_stats()
        self.aug = K.AugmentationSequential(K.Normalize(mean=mean, std=std), data_keys=None, keepdim=True)
        train: list[Any] = [K.Normalize(mean=mean, std=std)]
        if self.flips:
            train += [K.RandomHorizontalFlip(), K.RandomVerticalFlip()]
        self.train_aug = K.AugmentationSequential(*train, data_keys=None, keepdim=True)

    def build_dataset(self) -> GeoDataset:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        """Build the dataset once and the area-split samplers for ``stage``."""
        dataset = self.build_dataset()
        tile = float(self.patch_size) * float(dataset.res[0])  # type: ignore[arg-type]
        train_roi, val_roi = area_split(list(dataset.index.geometry), tile, self.val_fraction)
        self.train_roi, self.val_roi = train_roi, val_roi
        if stage in ("fit",):
            self.train_dataset = dataset
            self.train_batch_sampler = RandomBatchGeoSampler(
                dataset,
                self.patch_size,
                self.batch_size,
                self.length,
                roi=train_roi,
                generator=torch.Generator().manual_seed(self.seed),
            )
            if len(self.train_batch_sampler) == 0:  # torchgeo's answer is a traceback at fit time
                tiles = getattr(self.train_batch_sampler, "length", "fewer")
                raise ValueError(
                    f"batch_size {self.batch_size} is more than the {tiles} training tiles an epoch draws; "
                    "lower --batch-size (data.init_args.sampling.batch_size) or raise data.init_args.sampling.length"
                )
        if stage in ("fit", "validate", "test"):
            self.val_dataset = dataset
            self.val_sampler = GridGeoSampler(dataset, self.patch_size, self.patch_size, roi=val_roi)
            self.test_dataset, self.test_sampler = dataset, self.val_sampler


class GeoTiffSegmentationDataModule(_AreaSplitDataModule):
    """Segmentation tiles from GeoTIFF scenes and label rasters or vector polygons.

    Args:
        images: scene GeoTIFFs (folder, glob, file or list).
        labels: label rasters (class ids), aligned with ``images`` in CRS and resolution.
        vectors: instead of ``labels``: vector files (GeoPackage, shapefile, GeoJSON) whose
            ``label_field`` holds the class id of each polygon. They are burned once, onto each
            scene's own pixel grid (reprojected when the CRS differs; later polygons over
            earlier ones), into label rasters under ``cache_dir``; ground no polygon covers is 0.
        cache_dir: where burned label rasters go (default: ``<first image folder>/.vitp_labels``).
        label_field: attribute with the class id (vectors only).
        bands: 1-based bands to read (default all).
        sampling: tile size, batch size, tiles per epoch, validation share of each scene's width,
            workers, sampler seed (:class:`~vitp_geo.datamodules.sampling.SamplingArgs`; defaults
            ``SAMPLING``: 112 px tiles, batches of 8, about one pass over the training area, 0.2).
        mean, std: per-channel normalisation (module doc for defaults).
        flips: random horizontal / vertical flips in training.
    """

    def __init__(
        self,
        images: str | list[str],
        labels: str | list[str] | None = None,
        vectors: str | list[str] | None = None,
        label_field: str = "class_id",
        cache_dir: str | None = None,
        bands: list[int] | None = None,
        sampling: SamplingArgs | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        flips: bool = True,
    ) -> None:
        if (labels is None) == (vectors is None):
            raise ValueError("give exactly one of labels (rasters) or vectors (polygons)")
        self.image_files = resolve_files(images, "image")
        self.label_files = resolve_files(labels, "label") if labels is not None else None
        self.vector_files = resolve_files_any(vectors, "vector") if vectors is not None else None
        self.label_field = label_field
        self.cache_dir = Path(cache_dir) if cache_dir else Path(self.image_files[0]).parent / ".vitp_labels"
        self.bands = list(bands) if bands is not None else None
        channels = len(self.bands) if self.bands is not None else _band_count(self.image_files[0])
        self.raw_dtype = _raster_dtype(self.image_files[0])
        mean, std = default_stats(channels, mean, std)
        super().__init__(sampling, mean, std, flips)

    def build_dataset(self) -> GeoDataset:
        transforms = _BandSelect(self.bands) if self.bands is not None else None
        image = _ImageRaster(paths=self.image_files, transforms=transforms)
        if self.label_files is None:
            assert self.vector_files is not None
            self.label_files = burn_vector_labels(
                self.image_files, self.vector_files, self.label_field, self.cache_dir
            )
        label = _LabelRaster(paths=self.label_files, crs=image.crs, res=image.res)
        return image & label


class GeoTiffChangeDataModule(_AreaSplitDataModule):
    """Change-detection tiles from before / after GeoTIFFs and change-mask rasters (1 = changed).

    Batches hold ``image`` (B, 2C, H, W): the before bands then the after bands, each normalised
    with the same per-band ``mean`` / ``std``; ``mask`` (B, H, W). Pairs must be co-registered
    (same CRS and resolution); different pairs must not overlap each other.

    Args:
        before, after, labels: the three file sets (folder, glob, file or list), one per pair.
        bands, sampling, mean, std, flips: as for :class:`GeoTiffSegmentationDataModule`
            (``mean`` / ``std`` per band of one date).
    """

    def __init__(
        self,
        before: str | list[str],
        after: str | list[str],
        labels: str | list[str],
        bands: list[int] | None = None,
        sampling: SamplingArgs | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        flips: bool = True,
    ) -> None:
        self.before_files = resolve_files(before, "before-image")
        self.after_files = resolve_files(after, "after-image")
        self.label_files = resolve_files(labels, "change-mask")
        if not len(self.before_files) == len(self.after_files) == len(self.label_files):
            raise ValueError(
                f"{len(self.before_files)} before, {len(self.after_files)} after and {len(self.label_files)} "
                "change-mask files: one of each per pair is needed"
            )
        self.bands = list(bands) if bands is not None else None
        channels = len(self.bands) if self.bands is not None else _band_count(self.before_files[0])
        self.raw_dtype = _raster_dtype(self.before_files[0])
        mean, std = default_stats(channels, mean, std)
        super().__init__(sampling, mean, std, flips)

    def _norm_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean.repeat(2), self.std.repeat(2)  # the same statistics for both dates

    def build_dataset(self) -> GeoDataset:
        transforms = _BandSelect(self.bands) if self.bands is not None else None
        before = _ImageRaster(paths=self.before_files, transforms=transforms)
        after = _ImageRaster(paths=self.after_files, crs=before.crs, res=before.res, transforms=transforms)
        label = _LabelRaster(paths=self.label_files, crs=before.crs, res=before.res)
        return (before & after) & label


def resolve_files_any(spec: str | Sequence[str], what: str) -> list[str]:
    """Like :func:`resolve_files` for vector files (folders: ``.gpkg``, ``.shp``, ``.geojson``)."""
    specs = [spec] if isinstance(spec, str | Path) else list(spec)
    files: list[str] = []
    for s in specs:
        p = Path(s)
        if p.is_dir():
            files += sorted(
                str(f) for f in p.iterdir() if f.suffix.lower() in (".gpkg", ".shp", ".geojson", ".json")
            )
        elif p.is_file():
            files.append(str(p))
        else:
            files += sorted(glob.glob(str(s)))
    if not files:
        raise FileNotFoundError(f"no {what} files found for {spec!r}")
    return files


def burn_vector_labels(
    images: Sequence[str], vectors: Sequence[str], label_field: str, out_dir: str | Path
) -> list[str]:
    """Rasterise ``label_field`` of all ``vectors`` onto each image's grid; returns the label rasters.

    Raises:
        ValueError: a vector file lacks ``label_field`` (file and field named).
    """
    import geopandas as gpd
    import numpy as np
    import pandas as pd
    from rasterio.features import rasterize

    from vitp_geo.io.raster import open_raster, write_geotiff

    frames = []
    for path in vectors:
        frame = gpd.read_file(path, engine="pyogrio")
        if label_field not in frame.columns:
            raise ValueError(
                f"{path}: no attribute {label_field!r} (has {sorted(c for c in frame.columns if c != 'geometry')})"
            )
        frames.append(frame)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    for image in images:
        with open_raster(image) as src:
            crs, transform, shape = src.crs, src.transform, (src.height, src.width)
        shapes = []
        for frame in frames:
            frame = frame.to_crs(crs) if frame.crs is not None and frame.crs != crs else frame
            shapes += [
                (g, int(v))
                for g, v in zip(frame.geometry, frame[label_field], strict=True)
                if g is not None and pd.notna(v)
            ]
        mask = (
            rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="uint8")
            if shapes
            else np.zeros(shape, np.uint8)
        )
        out = out_dir / f"{Path(image).stem}_labels.tif"
        write_geotiff(out, mask[None], transform, crs.to_string())
        outputs.append(str(out))
    return outputs


def _band_count(path: str) -> int:
    from vitp_geo.io.raster import open_raster

    with open_raster(path) as src:
        return int(src.count)


def _raster_dtype(path: str) -> str:
    """The first band's dtype: the value type a raw-band model is trained on (recorded in its card)."""
    from vitp_geo.io.raster import open_raster

    with open_raster(path) as src:
        return str(src.dtypes[0])


def default_stats(
    channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[list[float], list[float]]:
    """Per-channel mean / std: the given ones (checked), or ImageNet × 255 for 3 channels, else 0 / 255."""
    if mean is None:
        mean = list(IMAGENET_MEAN_255) if channels == 3 else [0.0] * channels
    if std is None:
        std = list(IMAGENET_STD_255) if channels == 3 else [255.0] * channels
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"mean ({len(mean)}) and std ({len(std)}) must have one value per channel ({channels})"
        )
    if min(std) <= 0:
        raise ValueError(f"std must be > 0, got {list(std)}")
    return [float(v) for v in mean], [float(v) for v in std]
