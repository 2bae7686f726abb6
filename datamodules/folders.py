"""Datamodules for benchmark folders of pre-cut tiles (iSAID, UAVid, WHU-CD, S2Looking, SVCD, ...).

Layouts (the mmsegmentation / open-cd conventions the ViTP reference code uses):

* segmentation: ``<root>/<images>/<split>/<name>.<ext>`` and ``<root>/<labels>/<split>/<name><label_suffix>``
  — labels are single-band class-index images (run mmseg's dataset converter first for iSAID
  and UAVid, whose released labels are RGB colours);
* change: ``<root>/<split>/A/<name>``, ``<root>/<split>/B/<name>``, ``<root>/<split>/label/<name>``
  (other folder names through ``before`` / ``after`` / ``label``: S2Looking's ``Image1`` /
  ``Image2``, SVCD's ``OUT``; WHU-CD-256's ``A/``, ``B/``, ``label/`` in the root with
  ``list/{train,val,test}.txt`` through ``split_list``) — labels 0 / 255 (or 0 / 1); any non-zero value except ``ignore_index`` is "changed", or,
  with ``label_threshold`` set, any value >= the threshold. JPEG labels (SVCD / CDD) carry
  compression noise (values 1..127 around every edge): open-cd binarises them at 128, and so
  does ``configs/finetune/change/svcd.yaml``.

Training draws a random ``patch_size`` crop (plus flips); validation uses whole images one at a
time (the models take any size). Samples are torchgeo-style dicts, normalised on the device
with ``mean`` / ``std`` (0–255 units).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import kornia.augmentation as K
import numpy as np
import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from vitp_geo.datamodules.geotiff import _raster_dtype, default_stats
from vitp_geo.datamodules.sampling import SamplingArgs, TakesSampling

_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def _read(path: Path) -> np.ndarray:
    """(C, H, W) array of an image file, via rasterio (PNG, JPEG and TIFF)."""
    from vitp_geo.io.raster import open_raster

    with open_raster(path) as src:
        return src.read()


def _list(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _EXTS)
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    return files


class SegmentationFolder(Dataset[dict[str, Tensor]]):
    """Image / class-index label pairs matched by file stem."""

    def __init__(self, images: Path, labels: Path, label_suffix: str = "") -> None:
        self.images = _list(images)
        self.labels = []
        for img in self.images:
            candidates = [labels / f"{img.stem}{label_suffix}{ext}" for ext in _EXTS]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise FileNotFoundError(
                    f"no label for {img} in {labels} (looked for {img.stem}{label_suffix}.*)"
                )
            self.labels.append(found)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        image = torch.from_numpy(_read(self.images[i]).astype(np.float32))
        mask = torch.from_numpy(_read(self.labels[i])[0].astype(np.int64))
        return {"image": image, "mask": mask}


class ChangeFolder(Dataset[dict[str, Tensor]]):
    """Before / after / label triples matched by file name; image = (2C, H, W).

    Args:
        root: the folder holding the three sub-folders.
        ignore_index, label_threshold: see :class:`PairFolderChangeDataModule`.
        folders: names of the before, after and label sub-folders (``A``, ``B``, ``label``).
        names: only these files of the before folder (a split list, e.g. WHU-CD's
            ``list/train.txt``; a name with or without its extension); None: every image.
        names_from: the list file ``names`` came from, for error messages.
    """

    def __init__(
        self,
        root: Path,
        ignore_index: int | None = None,
        label_threshold: int | None = None,
        folders: tuple[str, str, str] = ("A", "B", "label"),
        names: Sequence[str] | None = None,
        names_from: Path | None = None,
    ) -> None:
        if label_threshold is not None and not 1 <= label_threshold <= 255:
            raise ValueError(f"label_threshold must be in [1, 255] (or None), got {label_threshold}")
        self.root = root
        self.folders = folders
        self.a = _list(root / folders[0])
        if names is not None:
            by_name = {p.name: p for p in self.a} | {p.stem: p for p in self.a}
            missing = [n for n in names if n not in by_name]
            if missing:
                raise FileNotFoundError(
                    f"{names_from}: {missing[0]!r} is not in {root / folders[0]} ({len(missing)} listed files missing)"
                )
            self.a = [by_name[n] for n in names]
        self.ignore_index = ignore_index
        self.label_threshold = label_threshold
        for p in self.a:
            for sub in folders[1:]:
                if not self._match(sub, p).is_file():
                    raise FileNotFoundError(f"{p.name}: no counterpart in {root / sub}")

    def _match(self, sub: str, a: Path) -> Path:
        same = self.root / sub / a.name
        if same.is_file():
            return same
        return next(
            (self.root / sub / f"{a.stem}{e}" for e in _EXTS if (self.root / sub / f"{a.stem}{e}").is_file()),
            same,
        )

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        a = _read(self.a[i])
        b = _read(self._match(self.folders[1], self.a[i]))
        label = _read(self._match(self.folders[2], self.a[i]))[0].astype(np.int64)
        # (H, W) bool; JPEG labels: below the threshold is compression noise, not change
        changed = label != 0 if self.label_threshold is None else label >= self.label_threshold
        if self.ignore_index is not None:
            changed &= label != self.ignore_index
        out = np.where(changed, 1, 0)
        if self.ignore_index is not None:
            out[label == self.ignore_index] = self.ignore_index
        return {
            "image": torch.from_numpy(np.concatenate([a, b]).astype(np.float32)),
            "mask": torch.from_numpy(out),
        }


def _crop_collate(patch: int):  # noqa: ANN202
    """Random ``patch``² crops. Offsets come from torch's RNG, which DataLoader seeds differently
    in every worker (a NumPy generator captured here would repeat the same offsets per worker)."""

    def collate(samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        images, masks = [], []
        for s in samples:
            _, h, w = s["image"].shape
            ph, pw = max(0, patch - h), max(0, patch - w)
            img = torch.nn.functional.pad(s["image"], (0, pw, 0, ph))
            msk = torch.nn.functional.pad(s["mask"], (0, pw, 0, ph), value=0)
            y = int(torch.randint(0, img.shape[1] - patch + 1, (1,)))
            x = int(torch.randint(0, img.shape[2] - patch + 1, (1,)))
            images.append(img[:, y : y + patch, x : x + patch])
            masks.append(msk[y : y + patch, x : x + patch])
        return {"image": torch.stack(images), "mask": torch.stack(masks)}

    return collate


class _FolderDataModule(TakesSampling, LightningDataModule):
    raw_bands = True  # tiles are fed as stored (normalised by mean / std); see the model card
    raw_dtype: str | None = None  # the tiles' value type, set in setup; infer refuses scenes of another
    SAMPLING = dict(patch_size=512, batch_size=8, num_workers=0, seed=0)

    def __init__(self, sampling: SamplingArgs | None, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        s = self.sampling_settings(sampling)
        self.patch_size: int = s["patch_size"]
        self.batch_size: int = s["batch_size"]
        self.num_workers: int = s["num_workers"]
        self.mean = torch.tensor(list(mean))
        self.std = torch.tensor(list(std))
        self.seed: int = s["seed"]  # read by the medical modules; the others draw from torch's generator
        self.train_dataset: Dataset[dict[str, Tensor]] | None = None
        self.val_dataset: Dataset[dict[str, Tensor]] | None = None

    def _norm(self) -> tuple[Tensor, Tensor]:
        return self.mean, self.std

    def train_dataloader(self) -> DataLoader[dict[str, Tensor]]:
        assert self.train_dataset is not None
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            collate_fn=_crop_collate(self.patch_size),
            drop_last=len(self.train_dataset) > self.batch_size,  # type: ignore[arg-type]
        )

    def val_dataloader(self) -> DataLoader[dict[str, Tensor]]:
        assert self.val_dataset is not None
        return DataLoader(self.val_dataset, batch_size=1, num_workers=self.num_workers)

    def on_after_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        mean, std = self._norm()
        batch["image"] = (batch["image"] - mean.to(batch["image"]).view(1, -1, 1, 1)) / std.to(
            batch["image"]
        ).view(1, -1, 1, 1)
        if self.trainer is not None and self.trainer.training:
            flips = K.AugmentationSequential(
                K.RandomHorizontalFlip(), K.RandomVerticalFlip(), data_keys=None, keepdim=True
            )
            batch = flips({"image": batch["image"], "mask": batch["mask"]})
        return batch


class TileFolderSegmentationDataModule(_FolderDataModule):
    """Segmentation on a folder of tiles (module doc).

    Args:
        root: dataset root.
        images, labels: sub-folders holding ``train`` / ``val`` split folders.
        label_suffix: text between a tile's stem and its label's extension (e.g. ``_instance_color_RGB``).
        train_split, val_split: split folder names.
        sampling: training crop side, batch size, workers, seed
            (:class:`~vitp_geo.datamodules.sampling.SamplingArgs`; defaults ``SAMPLING``: 512 px
            crops, batches of 8).
        mean, std: per-channel normalisation in 0–255 units (default ImageNet × 255 for RGB).
        channels: bands per image (for the default statistics).
    """

    def __init__(
        self,
        root: str,
        images: str = "img_dir",
        labels: str = "ann_dir",
        label_suffix: str = "",
        train_split: str = "train",
        val_split: str = "val",
        sampling: SamplingArgs | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        channels: int = 3,
    ) -> None:
        m, s = default_stats(channels, mean, std)
        super().__init__(sampling, m, s)
        self.root = Path(root)
        self.dirs = (images, labels, label_suffix, train_split, val_split)

    def setup(self, stage: str) -> None:
        images, labels, suffix, train, val = self.dirs
        if stage == "fit":
            self.train_dataset = SegmentationFolder(
                self.root / images / train, self.root / labels / train, suffix
            )
        self.val_dataset = SegmentationFolder(self.root / images / val, self.root / labels / val, suffix)
        self.raw_dtype = _raster_dtype(str(self.val_dataset.images[0]))  # the card records it


class PairFolderChangeDataModule(_FolderDataModule):
    """Change detection on ``<root>/<split>/{A,B,label}`` folders (module doc).

    Args:
        root: dataset root.
        train_split, val_split: split folder names (with ``split_list``: the split names put in it).
        before, after, label: sub-folder names of the two dates and the change mask (open-cd's
            ``A`` / ``B`` / ``label``; S2Looking ships ``Image1`` / ``Image2``, SVCD ``OUT``).
        split_list: a file under ``root`` listing each split's files, with ``{split}`` in its
            name (WHU-CD-256: ``list/{split}.txt``); the three sub-folders then lie directly in
            ``root``. None: ``<root>/<split>/{before,after,label}``.
        ignore_index: label value to keep as "ignore" instead of "changed".
        label_threshold: label values >= this are "changed" (128 for JPEG labels, as open-cd's
            ``to_binary``); ``None``: any non-zero value (clean 0 / 1 or 0 / 255 PNG labels).
        sampling, mean, std, channels: as for segmentation (``mean`` / ``std`` per band of one
            date; ``SAMPLING``: 256 px crops, batches of 8).
    """

    SAMPLING = {**_FolderDataModule.SAMPLING, "patch_size": 256}

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        val_split: str = "val",
        before: str = "A",
        after: str = "B",
        label: str = "label",
        split_list: str | None = None,
        ignore_index: int | None = None,
        label_threshold: int | None = None,
        sampling: SamplingArgs | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        channels: int = 3,
    ) -> None:
        m, s = default_stats(channels, mean, std)
        super().__init__(sampling, m, s)
        self.root = Path(root)
        self.splits = (train_split, val_split)
        self.folders = (before, after, label)
        if split_list is not None and "{split}" not in split_list:
            raise ValueError(
                f"split_list must contain '{{split}}' (e.g. list/{{split}}.txt), got {split_list!r}"
            )
        self.split_list = split_list
        self.ignore_index = ignore_index
        self.label_threshold = label_threshold

    def _norm(self) -> tuple[Tensor, Tensor]:
        return self.mean.repeat(2), self.std.repeat(2)

    def _split(self, split: str) -> ChangeFolder:
        if self.split_list is None:
            return ChangeFolder(self.root / split, self.ignore_index, self.label_threshold, self.folders)
        listing = self.root / self.split_list.format(split=split)
        if not listing.is_file():
            raise FileNotFoundError(f"split list not found: {listing} (split_list {self.split_list!r})")
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        if not names:
            raise ValueError(f"{listing}: the split list is empty")
        return ChangeFolder(self.root, self.ignore_index, self.label_threshold, self.folders, names, listing)

    def setup(self, stage: str) -> None:
        train, val = self.splits
        if stage == "fit":
            self.train_dataset = self._split(train)
        self.val_dataset = self._split(val)
        self.raw_dtype = _raster_dtype(str(self.val_dataset.a[0]))  # the card records it
