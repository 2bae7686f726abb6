"""Change labels from pre-cut folders: JPEG labels (SVCD) are binarised at 128, as open-cd does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from datamodules.folders import ChangeFolder, PairFolderChangeDataModule

SVCD = Path(__file__).resolve().parents[2] / "vitp_geo" / "configs" / "finetune" / "change" / "svcd.yaml"


def _jpeg_like_label(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(label, truth): a 0/255 change block with JPEG-style noise (1..127 off it, 128..254 on it)."""
    truth = np.zeros((size, size), dtype=bool)
    truth[16:40, 20:50] = True
    label = np.where(truth, 255, 0).astype(np.uint8)
    noise = rng.random((size, size)) < 0.3
    label[noise & ~truth] = rng.integers(1, 128, size=int((noise & ~truth).sum()))
    label[noise & truth] = rng.integers(128, 255, size=int((noise & truth).sum()))
    return label, truth


def _write_split(root: Path, label: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    for sub in ("A", "B", "label"):
        (root / sub).mkdir(parents=True)
    for sub in ("A", "B"):
        Image.fromarray(rng.integers(0, 256, (*label.shape, 3), dtype=np.uint8)).save(root / sub / "t0.png")
    Image.fromarray(label).save(root / "label" / "t0.png")  # PNG: the exact decoded JPEG values


def test_threshold_128_ignores_jpeg_noise(tmp_path: Path) -> None:
    label, truth = _jpeg_like_label(np.random.default_rng(0))
    _write_split(tmp_path / "val", label)
    noisy = ChangeFolder(tmp_path / "val")[0]["mask"].numpy()
    assert noisy.sum() > truth.sum()  # without a threshold the noise counts as change
    mask = ChangeFolder(tmp_path / "val", label_threshold=128)[0]["mask"].numpy()
    np.testing.assert_array_equal(mask, truth.astype(mask.dtype))
    with pytest.raises(ValueError, match="label_threshold .* got 0"):
        ChangeFolder(tmp_path / "val", label_threshold=0)


def test_svcd_config_binarises_its_jpeg_labels_at_128(tmp_path: Path) -> None:
    label, truth = _jpeg_like_label(np.random.default_rng(2))
    for split in ("train", "val"):
        _write_split(tmp_path / split, label)
    init = dict(yaml.safe_load(SVCD.read_text())["data"]["init_args"], root=str(tmp_path), num_workers=0)
    dm = PairFolderChangeDataModule(**init)
    dm.setup("fit")
    for ds in (dm.train_dataset, dm.val_dataset):
        np.testing.assert_array_equal(ds[0]["mask"].numpy(), truth.astype(np.int64))


def test_the_tiles_value_type_is_recorded_for_the_model_card(tmp_path: Path) -> None:
    """Issue 20: tile-folder datamodules fed raw values without saying of what type, so infer
    could not refuse a scene of another type (one rule for every model kind)."""
    label, _ = _jpeg_like_label(np.random.default_rng(3))
    _write_split(tmp_path / "val", label)
    dm = PairFolderChangeDataModule(root=str(tmp_path))
    assert dm.raw_dtype is None  # known once the tiles are found
    dm.setup("validate")
    assert dm.raw_dtype == "uint8"
