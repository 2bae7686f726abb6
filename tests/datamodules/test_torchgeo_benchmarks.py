"""LoveDA / Potsdam / LEVIR-CD datamodules over fake data in torchgeo 0.8.1's real on-disk layouts."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchgeo.datasets import LEVIRCD, LoveDA, Potsdam2D
from vitp_geo.datamodules.geotiff import IMAGENET_MEAN_255, IMAGENET_STD_255
from vitp_geo.datamodules.sampling import SamplingArgs
from vitp_geo.datamodules.torchgeo_benchmarks import (
    LEVIRCDDataModule,
    LoveDADataModule,
    Potsdam2DDataModule,
    PotsdamWindows,
    potsdam_tiles,
)

CONFIGS = Path(__file__).resolve().parents[2] / "vitp_geo" / "configs" / "finetune"
ROOT = Path(__file__).resolve().parents[2]


def _denorm(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) ImageNet-normalised → 0–255."""
    mean = torch.tensor(IMAGENET_MEAN_255).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD_255).view(1, 3, 1, 1)
    return x * std + mean


def _training(dm: object) -> None:
    dm.trainer = SimpleNamespace(training=True)  # type: ignore[attr-defined]  # crops + flips on


# ------------------------------------------------------------------------------------ LEVIR-CD
def test_levircd_crops_and_flips_keep_both_dates_and_the_mask_aligned(torchgeo_layouts) -> None:  # noqa: ANN001
    """The fixture's changed pixels are bright in B only, so mask == bright(B) iff all three got the
    same crop and flip (torchgeo's own datamodule under kornia 0.8.x crops masks with the next
    sample's offsets; under 0.9 it refuses, see the next test)."""
    dm = LEVIRCDDataModule(
        str(torchgeo_layouts["levircd"]), sampling=SamplingArgs(patch_size=32, batch_size=3)
    )
    dm.setup("fit")
    _training(dm)
    torch.manual_seed(0)
    for _ in range(3):
        batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
        image, mask = batch["image"], batch["mask"]
        assert image.shape == (3, 2, 3, 32, 32) and mask.shape == (3, 1, 32, 32)  # torchgeo's layout
        before, after = _denorm(image[:, 0]), _denorm(image[:, 1])
        changed = mask[:, 0].bool()
        assert changed.any() and (~changed).any()
        assert torch.equal((after >= 170).all(1), changed)
        assert float((after - before).abs().amax(1)[~changed].max()) <= 8.01  # same crop for A and B


def test_torchgeo_levircd_datamodule_is_refused_by_kornia_0_9(torchgeo_layouts) -> None:  # noqa: ANN001
    """Why we do not use torchgeo's LEVIRCDDataModule: its VideoSequential aug cannot take the
    one-frame mask. If this starts passing, torchgeo / kornia fixed it: revisit datamodules."""
    from torchgeo.datamodules import LEVIRCDDataModule as TorchGeoLEVIRCD

    ds = LEVIRCD(root=str(torchgeo_layouts["levircd"]), split="train")
    batch = {
        "image": torch.stack([ds[0]["image"], ds[1]["image"]]),
        "mask": torch.stack([ds[0]["mask"], ds[1]["mask"]]),
    }
    with pytest.raises(ValueError, match="same number of frames"):
        TorchGeoLEVIRCD(root=str(torchgeo_layouts["levircd"]), patch_size=32).train_aug(batch)


def test_levircd_missing_counterpart_is_named(torchgeo_layouts, tmp_path: Path) -> None:  # noqa: ANN001
    root = tmp_path / "levir"
    shutil.copytree(torchgeo_layouts["levircd"], root)
    (root / "B" / "train_2.png").unlink()  # torchgeo would pair train_3's A with ... silently
    dm = LEVIRCDDataModule(str(root))
    with pytest.raises(FileNotFoundError, match=r"train_2\.png has no counterpart in .*B"):
        dm.setup("fit")
    with pytest.raises(FileNotFoundError, match=r"LEVIR-CD folder not found: .*label"):
        shutil.rmtree(root / "label")
        dm.setup("fit")


def test_levircd_labels_are_binary_and_validation_is_whole_pairs(torchgeo_layouts) -> None:  # noqa: ANN001
    root = torchgeo_layouts["levircd"]
    dm = LEVIRCDDataModule(str(root))
    dm.setup("validate")
    batch = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    label = np.asarray(Image.open(root / "label" / "val_1.png"))
    assert batch["image"].shape == (1, 2, 3, 64, 64)
    assert torch.equal(batch["mask"][0, 0], torch.from_numpy((label == 255).astype(np.int64)))


# -------------------------------------------------------------------------------------- LoveDA
def test_loveda_masks_keep_the_file_values_and_images_are_imagenet_normalised(torchgeo_layouts) -> None:  # noqa: ANN001
    root = torchgeo_layouts["loveda"]
    dm = LoveDADataModule(str(root), scene=["rural"])
    dm.setup("validate")
    assert len(dm.val_dataset) == 1  # type: ignore[arg-type]  # Val/Rural only
    batch = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    name = Path(LoveDA(root=str(root), split="val", scene=["rural"]).files[0]["image"]).name
    mask = np.asarray(Image.open(root / "Val" / "Rural" / "masks_png" / name))
    image = np.asarray(Image.open(root / "Val" / "Rural" / "images_png" / name)).transpose(2, 0, 1)
    assert torch.equal(batch["mask"][0], torch.from_numpy(mask.astype(np.int64)))  # 0 = no-data kept as 0
    torch.testing.assert_close(_denorm(batch["image"])[0], torch.from_numpy(image.astype(np.float32)))


def test_loveda_bad_layouts_are_named(torchgeo_layouts, tmp_path: Path) -> None:  # noqa: ANN001
    root = tmp_path / "loveda"
    shutil.copytree(torchgeo_layouts["loveda"], root)
    with pytest.raises(ValueError, match="scene must be"):
        LoveDADataModule(str(root), scene=["suburban"]).setup("fit")
    mask = next((root / "Train" / "Urban" / "masks_png").glob("*.png"))
    mask.unlink()
    with pytest.raises(FileNotFoundError, match=f"has no mask: .*{mask.name}"):
        LoveDADataModule(str(root)).setup("fit")
    shutil.rmtree(root / "Val" / "Rural")
    with pytest.raises(FileNotFoundError, match=r"LoveDA folder not found: .*Val/Rural/images_png"):
        LoveDADataModule(str(root)).setup("validate")


# ------------------------------------------------------------------------------------- Potsdam
def test_potsdam_windows_match_torchgeo_reading_rgb_bands_and_class_ids(torchgeo_layouts) -> None:  # noqa: ANN001
    root = torchgeo_layouts["potsdam"]
    reference = Potsdam2D(root=str(root), split="test")[0]  # whole tile: (4, H, W) image, (H, W) ids
    tiles = potsdam_tiles(root, "test")
    assert tiles[0][0].name == Path(Potsdam2D(root=str(root), split="test").files[0]["image"]).name
    windows = PotsdamWindows(tiles[:1], [1, 2, 3], 512, None)
    assert len(windows) == 4  # 600 px: windows at 0 and 88 per axis (shifted inward, no padding)
    last = windows[3]
    assert torch.equal(last["image"], reference["image"][:3, 88:600, 88:600])
    assert torch.equal(last["mask"], reference["mask"][88:600, 88:600])
    assert set(reference["mask"].unique().tolist()) == set(range(6))
    with pytest.raises(ValueError, match=r"bands \[1, 5\] requested, the tile has 4"):
        PotsdamWindows(tiles[:1], [1, 5], 512, None)
    with pytest.raises(ValueError, match="smaller than patch_size 700"):
        PotsdamWindows(tiles[:1], [1, 2, 3], 700, None)


def test_potsdam_zips_extract_and_labels_in_5_labels_all_are_found(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "fake_potsdam", ROOT / "tests" / "data" / "potsdam" / "data.py"
    )
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    zipped = gen.write(tmp_path / "zipped", size=64, archives=True)
    assert sorted(p.name for p in zipped.iterdir()) == ["4_Ortho_RGBIR.zip", "5_Labels_all.zip"]
    with pytest.warns(UserWarning, match="21 of 24 tiles"):
        assert len(potsdam_tiles(zipped, "train")) == 3  # torchgeo extracted both archives
    moved = gen.write(tmp_path / "moved", size=64)
    (moved / "5_Labels_all").mkdir()
    for label in moved.glob("*_label.tif"):
        label.rename(moved / "5_Labels_all" / label.name)
    with pytest.warns(UserWarning):
        assert len(potsdam_tiles(moved, "test")) == 2
    with pytest.raises(FileNotFoundError, match=r"Potsdam not found: .*4_Ortho_RGBIR"):
        potsdam_tiles(tmp_path / "empty", "train")


def test_potsdam_config_classes_follow_torchgeo_order_and_feed_rgb() -> None:
    cfg = yaml.safe_load((CONFIGS / "segmentation" / "potsdam.yaml").read_text())
    model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
    ours = [n.replace("_", " ").lower() for n in model["class_names"]]
    theirs = [n.lower().replace("clutter/background", "clutter") for n in Potsdam2D.classes]
    assert ours == theirs
    assert [tuple(c) for c in model["class_colors"]] == list(Potsdam2D.colormap)
    assert model["num_classes"] == len(Potsdam2D.classes)
    assert data["bands"] == [1, 2, 3] and model["backbone"]["in_channels"] == 3


def test_potsdam_datamodule_trains_on_train_tiles_and_validates_on_the_test_grid(torchgeo_layouts) -> None:  # noqa: ANN001
    root = torchgeo_layouts["potsdam"]
    dm = Potsdam2DDataModule(str(root), sampling=SamplingArgs(batch_size=2))
    with pytest.warns(UserWarning, match="left out"):
        dm.setup("fit")
    assert len(dm.train_dataset) == 3 * 4 and len(dm.val_dataset) == 2 * 4  # type: ignore[arg-type]
    assert {p[0].name for p in dm.val_dataset.tiles} == {
        "top_potsdam_5_15_RGBIR.tif",
        "top_potsdam_6_15_RGBIR.tif",
    }  # type: ignore[union-attr]
    _training(dm)
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["image"].shape == (2, 3, 512, 512) and batch["mask"].shape == (2, 512, 512)
    raw = _denorm(batch["image"])
    assert float(raw.min()) >= -0.01 and float(raw.max()) <= 255.01  # ImageNet-normalised 0-255 bands
    assert dm.bands == [1, 2, 3]  # recorded in the model card: infer reads R, G, B of an RGBIR scene
