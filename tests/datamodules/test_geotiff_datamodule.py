"""GeoTIFF datamodules: area split without leakage, labels from rasters or vectors, change batches."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from vitp_geo.datamodules.geotiff import GeoTiffChangeDataModule, GeoTiffSegmentationDataModule, area_split
from vitp_geo.datamodules.sampling import SamplingArgs
from vitp_geo.datamodules.synthetic_geotiff import write_synthetic_change, write_synthetic_segmentation


@pytest.fixture(scope="module")
def folders(tmp_path_factory):  # noqa: ANN001, ANN201
    return write_synthetic_segmentation(tmp_path_factory.mktemp("dm"), n_scenes=2, size=224, seed=11)


def _boxes(sampler) -> list[shapely.Polygon]:  # noqa: ANN001
    out = []
    for item in sampler:
        items = item if isinstance(item, list) else [item]
        for x, y, _ in items:
            out.append(shapely.box(x.start, y.start, x.stop, y.stop))
    return out


def test_train_and_val_tiles_never_overlap(folders) -> None:  # noqa: ANN001
    dm = GeoTiffSegmentationDataModule(
        str(folders.images),
        labels=str(folders.labels),
        sampling=SamplingArgs(batch_size=4, length=64, patch_size=64),
    )
    dm.setup("fit")
    train, val = _boxes(dm.train_batch_sampler), _boxes(dm.val_sampler)
    assert len(train) == 64 and len(val) >= 2
    overlap = max(t.intersection(v).area for t in train for v in val)
    assert overlap == 0.0
    assert all(dm.train_roi.buffer(1e-6).contains(t) for t in train)


def test_area_split_rounds_the_strip_to_whole_tiles() -> None:
    train, val = area_split([shapely.box(0, 0, 100, 50)], tile=10, val_fraction=0.24)
    assert val.bounds == (80, 0, 100, 50) and train.bounds == (0, 0, 80, 50)
    with pytest.raises(ValueError, match="too narrow"):
        area_split([shapely.box(0, 0, 12, 50)], tile=10, val_fraction=0.5)


def test_batches_match_the_label_raster_and_vectors_burn_the_same_objects(folders) -> None:  # noqa: ANN001
    raster = GeoTiffSegmentationDataModule(
        str(folders.images),
        labels=str(folders.labels),
        sampling=SamplingArgs(batch_size=2, length=2),
        flips=False,
    )
    vector = GeoTiffSegmentationDataModule(
        str(folders.images),
        vectors=str(folders.vectors),
        sampling=SamplingArgs(batch_size=2, length=2),
        flips=False,
        cache_dir=None,
    )
    for dm in (raster, vector):
        dm.setup("validate")
    a = next(iter(raster.val_dataloader()))
    b = next(iter(vector.val_dataloader()))
    assert a["image"].shape == (2, 3, 112, 112) and a["mask"].shape == (2, 112, 112)
    np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
    ma, mb = a["mask"].numpy(), b["mask"].numpy()
    objects = np.isin(ma, [1, 3, 4])  # roads are not objects; only they may differ
    assert (ma[objects] == mb[objects]).mean() > 0.95
    assert set(np.unique(mb)) <= {0, 1, 3, 4}


def test_change_batches_stack_before_then_after(tmp_path) -> None:  # noqa: ANN001
    f = write_synthetic_change(tmp_path, n_pairs=1, size=224, seed=2)
    dm = GeoTiffChangeDataModule(
        str(f.images),
        str(f.after),
        str(f.labels),
        sampling=SamplingArgs(batch_size=2, length=2),
        mean=[0, 0, 0],
        std=[1, 1, 1],
    )
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 6, 112, 112)
    changed = batch["mask"].numpy() == 1
    diff = np.abs(batch["image"][:, :3].numpy() - batch["image"][:, 3:].numpy()).sum(1)
    assert diff[changed].mean() > diff[~changed].mean()  # the after half differs where the mask says so
    with pytest.raises(ValueError, match="one of each per pair"):
        GeoTiffChangeDataModule(str(f.images), [str(f.after / "pair_0_after.tif")] * 2, str(f.labels))
