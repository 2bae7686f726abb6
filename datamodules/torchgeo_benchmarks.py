"""LoveDA, ISPRS Potsdam and LEVIR-CD in torchgeo 0.8.1's on-disk layouts, with explicit arguments.

torchgeo's own ``LoveDADataModule`` / ``Potsdam2DDataModule`` / ``LEVIRCDDataModule`` pass
``root`` through ``**kwargs``, which LightningCLI cannot see ("Option 'root' is not accepted"),
feed ``x / 255`` instead of the ImageNet statistics the ViTP backbone was pretrained with, and
(LEVIR-CD) cannot be augmented with kornia >= 0.9 (``VideoSequential`` refuses the one-frame
mask; kornia 0.8.x accepts it but crops each mask with the next sample's offsets). These
datamodules read the same folders through torchgeo's dataset classes (``download=False``,
``checksum=False``: nothing is fetched or hashed) and share the tile-folder machinery of
:mod:`vitp_geo.datamodules.folders`: random ``patch_size`` training crops plus flips, the same crop and
flip for image, mask and both dates, normalisation on the device with ``mean`` / ``std``
(0–255 units; default ImageNet × 255 for three bands, the one rule of
:func:`vitp_geo.datamodules.geotiff.default_stats`).

Layouts (``root`` is the folder the archives were extracted into):

* LoveDA: ``<root>/{Train,Val}/{Urban,Rural}/{images_png,masks_png}/<N>.png``; mask values
  0 = no-data (ignore it), 1 background, 2 building, 3 road, 4 water, 5 barren, 6 forest,
  7 agriculture. Validation: the whole ``Val`` tiles (1024 x 1024), one at a time.
* Potsdam: ``<root>/4_Ortho_RGBIR/top_potsdam_<r>_<c>_RGBIR.tif`` (R, G, B, IR) and
  ``<root>/top_potsdam_<r>_<c>_label.tif`` (ISPRS colours; also found in
  ``<root>/5_Labels_all/``). With only ``4_Ortho_RGBIR.zip`` and ``5_Labels_all.zip`` in the
  root, torchgeo extracts them on first use. Class ids follow torchgeo's ``Potsdam2D.classes``:
  0 clutter / background, 1 impervious surfaces, 2 building, 3 low vegetation, 4 tree, 5 car.
  Training: random windows from torchgeo's 24 ``train`` tiles; validation: a grid of
  ``patch_size`` windows over its 14 ``test`` tiles (the last row and column shifted inward, no
  padding), as the mmseg / ViTP reference evaluates. Tiles are read window by window.
* LEVIR-CD: ``<root>/{A,B,label}/{train,val,test}_<N>.png`` (torchgeo's three zips extract into
  the same ``A`` / ``B`` / ``label`` folders, the split is the file-name prefix); labels 0 / 255.
  Batches are torchgeo's change layout, ``image`` (B, 2, C, H, W) and ``mask`` (B, 1, H, W), so
  torchgeo's own ``ChangeDetectionTask`` trains on them too.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from vitp_geo.datamodules.folders import _FolderDataModule
from vitp_geo.datamodules.geotiff import default_stats
from vitp_geo.datamodules.sampling import SamplingArgs

LOVEDA_SCENES = ("urban", "rural")


def _not_found(what: str, path: Path, layout: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} not found: {path} (expected torchgeo's layout: {layout})")


# ---------------------------------------------------------------------------------------- LoveDA
def loveda_split(root: Path, split: str, scene: Sequence[str]) -> Dataset[dict[str, Tensor]]:
    """torchgeo's ``LoveDA`` for ``split`` (``train`` / ``val``), checked: every image has its mask.

    Raises:
        ValueError: an unknown scene name.
        FileNotFoundError: a missing scene folder, an empty one, or an image without its mask.
    """
    from torchgeo.datasets import LoveDA

    bad = [s for s in scene if s not in LOVEDA_SCENES]
    if bad or not scene:
        raise ValueError(f"scene must be a non-empty list of {list(LOVEDA_SCENES)}, got {list(scene)}")
    layout = "<root>/{Train,Val}/{Urban,Rural}/{images_png,masks_png}/<N>.png"
    for s in scene:
        folder = root / split.capitalize() / s.capitalize() / "images_png"
        if not folder.is_dir():
            raise _not_found("LoveDA folder", folder, layout)
        if not any(folder.glob("*.png")):
            raise _not_found("LoveDA images", folder / "*.png", layout)
    ds = LoveDA(root=str(root), split=split, scene=list(scene), download=False, checksum=False)
    for files in ds.files:
        if not Path(files["mask"]).is_file():
            raise FileNotFoundError(f"LoveDA image {files['image']} has no mask: {files['mask']} is missing")
    return ds


class LoveDADataModule(_FolderDataModule):
    """LoveDA semantic segmentation (module doc), read by torchgeo's ``LoveDA``.

    Args:
        root: folder holding ``Train/`` and ``Val/``.
        scene: ``urban`` and / or ``rural``.
        sampling: training crop side (512 in the paper, the default; LoveDA tiles are 1024), batch
            size (8), workers, seed (:class:`~vitp_geo.datamodules.sampling.SamplingArgs`).
        mean, std: per-channel normalisation in 0–255 units (default ImageNet × 255).
    """

    def __init__(
        self,
        root: str,
        scene: list[str] | None = None,
        sampling: SamplingArgs | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        m, s = default_stats(3, mean, std)
        super().__init__(sampling, m, s)
        self.root = Path(root)
        self.scene = list(scene) if scene is not None else list(LOVEDA_SCENES)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_dataset = loveda_split(self.root, "train", self.scene)
        self.val_dataset = loveda_split(self.root, "val", self.scene)


# --------------------------------------------------------------------------------------- Potsdam
def potsdam_tiles(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label) paths of torchgeo's ``Potsdam2D`` ``split`` tiles that are present.

    torchgeo extracts ``4_Ortho_RGBIR.zip`` / ``5_Labels_all.zip`` when only the archives are
    there. Labels are looked for in ``root`` (where ``5_Labels_all.zip`` extracts) and then in
    ``root/5_Labels_all``. A split with some tiles missing warns; with none, it is an error.

    Raises:
        FileNotFoundError: no tile of the split has both its image and its label.
    """
    from torchgeo.datasets import Potsdam2D
    from torchgeo.datasets.errors import DatasetNotFoundError

    layout = "<root>/4_Ortho_RGBIR/top_potsdam_<r>_<c>_RGBIR.tif + <root>/top_potsdam_<r>_<c>_label.tif"
    try:
        Potsdam2D(root=str(root), split=split, checksum=False)  # extracts the zips if needed
    except DatasetNotFoundError as err:
        raise _not_found("Potsdam", root / Potsdam2D.image_root, layout) from err
    pairs: list[tuple[Path, Path]] = []
    missing: list[str] = []
    for name in Potsdam2D.splits[split]:
        image = root / Potsdam2D.image_root / f"{name}_RGBIR.tif"
        labels = [root / f"{name}_label.tif", root / "5_Labels_all" / f"{name}_label.tif"]
        label = next((p for p in labels if p.is_file()), None)
        if image.is_file() and label is not None:
            pairs.append((image, label))
        else:
            missing.append(name)
    if not pairs:
        raise _not_found(
            f"Potsdam {split} tiles", root / Potsdam2D.image_root / f"{missing[0]}_RGBIR.tif", layout
        )
    if missing:
        warnings.warn(
            f"Potsdam {split}: {len(missing)} of {len(Potsdam2D.splits[split])} tiles have no image or "
            f"label under {root} and are left out (first: {missing[0]})",
            stacklevel=2,
        )
    return pairs


def _open_label(path: Path) -> Any:
    """Open a Potsdam label tile (the ISPRS label TIFFs carry no georeferencing: no warning)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


class PotsdamWindows(Dataset[dict[str, Tensor]]):
    """Square windows of Potsdam tiles, read window by window (tiles are 6000 x 6000).

    Args:
        tiles: (image, label) paths from :func:`potsdam_tiles`.
        bands: 1-based image bands to keep (``[1, 2, 3]`` = R, G, B; 4 = IR).
        patch_size: window side; every tile must be at least this large.
        length: ``None``: a fixed grid over every tile (validation); an int: that many random
            windows per epoch, cycling through the tiles (training).

    Samples: ``image`` (len(bands), P, P) float in 0–255, ``mask`` (P, P) class ids in torchgeo's
    order.
    """

    def __init__(
        self, tiles: Sequence[tuple[Path, Path]], bands: Sequence[int], patch_size: int, length: int | None
    ) -> None:
        import rasterio

        from vitp_geo.tiling.planner import plan_windows

        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        if length is not None and length < 1:
            raise ValueError(f"length must be >= 1 (or None for a grid), got {length}")
        self.tiles = list(tiles)
        self.bands = [int(b) for b in bands]
        self.patch = patch_size
        self.length = length
        self.shapes: list[tuple[int, int]] = []
        self.grid: list[tuple[int, int, int]] = []  # (tile, row, col) of each grid window
        for t, (image, label) in enumerate(self.tiles):
            with rasterio.open(image) as src, _open_label(label) as lab:
                if min(self.bands) < 1 or max(self.bands) > src.count:
                    raise ValueError(
                        f"{image}: bands {self.bands} requested, the tile has {src.count} band(s)"
                    )
                if lab.count < 3 or (lab.height, lab.width) != (src.height, src.width):
                    raise ValueError(
                        f"{label}: expected a 3-band colour label of {src.height}x{src.width}, "
                        f"got {lab.count} band(s) of {lab.height}x{lab.width}"
                    )
                if min(src.height, src.width) < patch_size:
                    raise ValueError(
                        f"{image}: tile is {src.height}x{src.width}, smaller than patch_size {patch_size}"
                    )
                self.shapes.append((src.height, src.width))
            plan = plan_windows(src.height, src.width, patch_size, 0.0)
            self.grid += [(t, r, c) for r in plan.row_offsets for c in plan.col_offsets]

    def __len__(self) -> int:
        return self.length if self.length is not None else len(self.grid)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if self.length is None:
            t, row, col = self.grid[i]
        else:  # torch's RNG: DataLoader seeds it differently in every worker
            t = i % len(self.tiles)
            h, w = self.shapes[t]
            row = int(torch.randint(0, h - self.patch + 1, (1,)))
            col = int(torch.randint(0, w - self.patch + 1, (1,)))
        return self.read(t, row, col)

    def read(self, t: int, row: int, col: int) -> dict[str, Tensor]:
        """The window of tile ``t`` starting at (``row``, ``col``)."""
        import rasterio
        from rasterio.windows import Window
        from torchgeo.datasets import Potsdam2D
        from torchgeo.datasets.utils import rgb_to_mask

        window = Window(col, row, self.patch, self.patch)
        image_path, label_path = self.tiles[t]
        with rasterio.open(image_path) as src:
            image = src.read(self.bands, window=window)  # (C, P, P)
        with _open_label(label_path) as lab:
            colours = lab.read([1, 2, 3], window=window).transpose(1, 2, 0)  # (P, P, 3)
        mask = rgb_to_mask(np.ascontiguousarray(colours), Potsdam2D.colormap)  # off-palette → 0 (clutter)
        return {
            "image": torch.from_numpy(image.astype(np.float32)),
            "mask": torch.from_numpy(mask.astype(np.int64)),
        }


class Potsdam2DDataModule(_FolderDataModule):
    """ISPRS Potsdam semantic segmentation (module doc), tiles found as torchgeo's ``Potsdam2D``.

    Args:
        root: folder holding ``4_Ortho_RGBIR/`` and the label tiles (or the two zip archives).
        bands: 1-based bands of the RGBIR tiles to feed (default R, G, B: what the ViTP backbone
            was pretrained on; ``[1, 2, 3, 4]`` with the task's ``in_channels: 4`` adds IR, whose
            patch-embedding filter starts from the mean RGB filter).
        sampling: window side (512 in the paper, the default), random training windows per epoch
            (``length``; default: as many as the grid has windows), batch size (8), workers, seed
            (:class:`~vitp_geo.datamodules.sampling.SamplingArgs`).
        mean, std: per-channel normalisation in 0–255 units (default ImageNet × 255 for three
            bands, else 0 / 255).
    """

    SAMPLING = {**_FolderDataModule.SAMPLING, "length": None}

    def __init__(
        self,
        root: str,
        bands: list[int] | None = None,
        sampling: SamplingArgs | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        self.bands = list(bands) if bands is not None else [1, 2, 3]
        m, s = default_stats(len(self.bands), mean, std)
        super().__init__(sampling, m, s)
        self.root = Path(root)
        self.length: int | None = self.sampling.length

    def setup(self, stage: str) -> None:
        if stage == "fit":
            tiles = potsdam_tiles(self.root, "train")
            grid = PotsdamWindows(tiles, self.bands, self.patch_size, None)
            self.train_dataset = PotsdamWindows(tiles, self.bands, self.patch_size, self.length or len(grid))
        self.val_dataset = PotsdamWindows(potsdam_tiles(self.root, "test"), self.bands, self.patch_size, None)


# -------------------------------------------------------------------------------------- LEVIR-CD
class _FlatPairs(Dataset[dict[str, Tensor]]):
    """torchgeo change samples, (2, C, H, W) / (1, H, W), as (2C, H, W) / (H, W) for the crop collate."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        sample = self.dataset[i]
        return {"image": sample["image"].flatten(0, 1), "mask": sample["mask"][0]}


def levircd_split(root: Path, split: str) -> Dataset[dict[str, Tensor]]:
    """torchgeo's ``LEVIRCD`` for ``split``, checked: A, B and label hold the same file names.

    (torchgeo pairs the three sorted lists by position, so one missing file would shift every
    later pair silently.)

    Raises:
        FileNotFoundError: a missing folder, no ``<split>_*.png`` files, or a file without its
            counterpart in the other folders.
    """
    from torchgeo.datasets import LEVIRCD

    layout = "<root>/{A,B,label}/{train,val,test}_<N>.png"
    names: dict[str, set[str]] = {}
    for sub in LEVIRCD.directories:
        folder = root / sub
        if not folder.is_dir():
            raise _not_found("LEVIR-CD folder", folder, layout)
        names[sub] = {p.name for p in folder.glob(f"{split}*.png")}
    if not names["A"]:
        raise _not_found(f"LEVIR-CD {split} images", root / "A" / f"{split}_*.png", layout)
    for sub in ("B", "label"):
        for name in sorted(names["A"] ^ names[sub]):
            where = "A" if name in names[sub] else sub
            raise FileNotFoundError(f"LEVIR-CD {split}: {name} has no counterpart in {root / where}")
    ds = LEVIRCD(root=str(root), split=split, download=False, checksum=False)
    return _FlatPairs(ds)


class LEVIRCDDataModule(_FolderDataModule):
    """LEVIR-CD building change detection (module doc), read by torchgeo's ``LEVIRCD``.

    Args:
        root: folder holding ``A/``, ``B/`` and ``label/``.
        sampling: training crop side, batch size (8), workers, seed
            (:class:`~vitp_geo.datamodules.sampling.SamplingArgs`). Crops of 266 (19 patches of
            14) by default: our ``ChangeDetectionTask`` takes any size (it pads to the patch), but
            torchgeo's ``changevit`` needs a multiple of the patch size and fails on open-cd's 256.
        mean, std: per-band normalisation of one date in 0–255 units (default ImageNet × 255).

    Batches: ``image`` (B, 2, 3, H, W), ``mask`` (B, 1, H, W) with 1 = changed.
    """

    SAMPLING = {**_FolderDataModule.SAMPLING, "patch_size": 266}

    def __init__(
        self,
        root: str,
        sampling: SamplingArgs | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        m, s = default_stats(3, mean, std)
        super().__init__(sampling, m, s)
        self.root = Path(root)

    def _norm(self) -> tuple[Tensor, Tensor]:
        return self.mean.repeat(2), self.std.repeat(2)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_dataset = levircd_split(self.root, "train")
        self.val_dataset = levircd_split(self.root, "val")

    def on_after_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        """Normalise and flip the stacked (B, 2C, H, W) pair with its mask, then torchgeo's layout."""
        batch = super().on_after_batch_transfer(batch, dataloader_idx)
        image, mask = batch["image"], batch["mask"]
        b, c2, h, w = image.shape
        batch["image"] = image.reshape(b, 2, c2 // 2, h, w)  # (B, 2, C, H, W)
        batch["mask"] = mask.reshape(b, 1, h, w)  # (B, 1, H, W)
        return batch
