"""Change labels from pre-cut folders: JPEG labels (SVCD) are binarised at 128, as open-cd does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from vitp_geo.datamodules.folders import ChangeFolder, PairFolderChangeDataModule

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


def _write_split(root: Path, label: np.ndarray, folders: tuple[str, str, str] = ("A", "B", "label")) -> None:
    rng = np.random.default_rng(1)
    for sub in folders:
        (root / sub).mkdir(parents=True)
    for sub in folders[:2]:
        Image.fromarray(rng.integers(0, 256, (*label.shape, 3), dtype=np.uint8)).save(root / sub / "t0.png")
    Image.fromarray(label).save(root / folders[2] / "t0.png")  # PNG: the exact decoded JPEG values


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
        _write_split(tmp_path / split, label, ("A", "B", "OUT"))  # SVCD's own folder names
    init = dict(yaml.safe_load(SVCD.read_text())["data"]["init_args"], root=str(tmp_path))
    init["sampling"]["num_workers"] = 0
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


def test_whu_cd_256_split_lists_pick_the_files_of_each_split(tmp_path: Path) -> None:
    """WHU-CD-256 keeps A/, B/, label/ in the root and names each split's files in list/*.txt."""
    label, truth = _jpeg_like_label(np.random.default_rng(4))
    _write_split(tmp_path, label)
    (tmp_path / "A" / "t1.png").write_bytes((tmp_path / "A" / "t0.png").read_bytes())
    for sub in ("B", "label"):
        Image.fromarray(np.zeros_like(label) if sub == "label" else np.zeros((64, 64, 3), np.uint8)).save(
            tmp_path / sub / "t1.png"
        )
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "train.txt").write_text("t0.png\n")
    (tmp_path / "list" / "val.txt").write_text("t1\n")  # with or without the extension
    dm = PairFolderChangeDataModule(root=str(tmp_path), split_list="list/{split}.txt", label_threshold=128)
    dm.setup("fit")
    assert [p.name for p in dm.train_dataset.a] == ["t0.png"] and [p.name for p in dm.val_dataset.a] == [
        "t1.png"
    ]
    np.testing.assert_array_equal(dm.train_dataset[0]["mask"].numpy(), truth.astype(np.int64))
    (tmp_path / "list" / "val.txt").write_text("t0.png\nt9.png\n")
    with pytest.raises(FileNotFoundError, match=r"val\.txt: 't9\.png' is not in .*A"):
        dm.setup("validate")
    with pytest.raises(ValueError, match=r"split_list must contain '\{split\}'"):
        PairFolderChangeDataModule(root=str(tmp_path), split_list="list/train.txt")
