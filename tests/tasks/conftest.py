"""Small generated GeoTIFF folders shared by the task tests (written once per session)."""

from __future__ import annotations

import pytest
from vitp_geo.datamodules.synthetic_geotiff import (
    SyntheticFolders,
    write_synthetic_change,
    write_synthetic_segmentation,
)


@pytest.fixture(scope="session")
def seg_folders(tmp_path_factory: pytest.TempPathFactory) -> SyntheticFolders:
    return write_synthetic_segmentation(tmp_path_factory.mktemp("seg"), n_scenes=2, size=224, seed=3)


@pytest.fixture(scope="session")
def change_folders(tmp_path_factory: pytest.TempPathFactory) -> SyntheticFolders:
    return write_synthetic_change(tmp_path_factory.mktemp("chg"), n_pairs=2, size=224, seed=5)
