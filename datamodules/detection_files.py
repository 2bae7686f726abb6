"""Detection benchmarks in their own on-disk layouts: DOTA / RSAR labelTxt, DIOR / DIOR-R XML, COCO
(``DetectionFilesDataModule``), with the reference's training augmentations
(``datamodules.detection_augment``).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.detection_batches import detection_collate
from datamodules.geotiff import default_stats


class AnnotationFormat(StrEnum):
    """On-disk annotation layouts read by ``DetectionFilesDataModule``."""

    DOTA = "dota"  # <root>/<split>/images/*.png + <root>/<split>/labelTxt/*.txt (DOTA, RSAR)
    DIOR = "dior"  # DIOR: JPEGImages-{trainval,test}, Annotations/Horizontal Bounding Boxes, ImageSets
    DIOR_R = "dior-r"  # DIOR-R: the same with Annotations/Oriented Bounding Boxes (robndbox)
    COCO = "coco"  # <root>/<annotations>/instances_<split>.json + <root>/<split>/<file_name>


def read_split(
    root: Path, fmt: AnnotationFormat, split: str, classes: Sequence[str], layout: dict[str, str]
) -> list[tuple[Path, dict[str, Tensor]]]:
    """(image file, sample) pairs of one split, read by ``vitp_geo.io.annotations`` (class order by name).

    ``layout`` overrides the folder templates (``{split}`` is replaced): ``images``, ``labels``
    (dota), ``annotations`` (coco json).
    """
    from vitp_geo.io import annotations as A

    def tmpl(key: str, default: str) -> Path:
        return root / layout.get(key, default).format(split=split)

    if fmt == AnnotationFormat.DOTA:
        images = tmpl("images", "{split}/images")
        samples = A.read_dota_labels(tmpl("labels", "{split}/labelTxt"), classes)
    elif fmt in (AnnotationFormat.DIOR, AnnotationFormat.DIOR_R):
        images = tmpl("images", "JPEGImages-test" if split == "test" else "JPEGImages-trainval")
        samples = A.read_dior(root, split, classes, oriented=fmt == AnnotationFormat.DIOR_R)
    else:
        ann = tmpl("annotations", "annotations/instances_{split}.json")
        images = tmpl("images", "{split}")
        samples = A.read_coco(ann, classes)
    if not images.is_dir():
        raise FileNotFoundError(f"image folder not found: {images}")
    files = {
        p.stem: p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".bmp")
    }
    missing = [k for k in samples if k not in files]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} annotated image(s) missing from {images}, e.g. {missing[:3]}"
        )
    return [(files[k], samples[k]) for k in sorted(samples)]


class _ImageFileDataset(Dataset[dict[str, Any]]):
    """Images and their annotation samples → detection samples (normalised image, both box keys)."""

    def __init__(
        self,
        items: list[tuple[Path, dict[str, Tensor]]],
        channels: int,
        mean: Tensor,
        std: Tensor,
        flips: bool,
    ) -> None:
        self.items, self.channels, self.flips = items, channels, flips
        self.mean, self.std = mean[:, None, None], std[:, None, None]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from torchvision.io import ImageReadMode, decode_image, read_file

        path, s = self.items[index]
        mode = ImageReadMode.RGB if self.channels == 3 else ImageReadMode.GRAY
        image = (decode_image(read_file(str(path)), mode=mode).float() - self.mean) / self.std
        w = image.shape[-1]
        hbb = s["bbox_xyxy"].float().reshape(-1, 4)
        if "bbox_xyxyxyxy" in s:
            quads = s["bbox_xyxyxyxy"].float().reshape(-1, 4, 2)
        else:  # horizontal datasets: the corners of the box, clockwise from the top-left
            x1, y1, x2, y2 = hbb.unbind(1)
            quads = torch.stack([x1, y1, x2, y1, x2, y2, x1, y2], 1).reshape(-1, 4, 2)
        if self.flips and torch.rand(()) < 0.5:
            image = image.flip(-1)
            quads = quads.flip(1)
            quads[..., 0] = w - quads[..., 0]
        hbb = torch.cat([quads.amin(1), quads.amax(1)], 1) if len(quads) else hbb
        out: dict[str, Any] = {
            "image": image,
            "bbox_xyxy": hbb,
            "bbox_xyxyxyxy": quads.reshape(-1, 8),
            "label": s["label"].long(),
            "image_id": path.stem,
        }
        if "difficult" in s:
            out["difficult"] = s["difficult"].bool()
        return out


class DetectionFilesDataModule(LightningDataModule):
    """A detection benchmark in its own layout (``AnnotationFormat``): DOTA / RSAR, DIOR / DIOR-R, COCO.

    Images are used at their size (DOTA: split them into 1024 px patches first with
    ``vitp_geo.tiling.dota_split``, the devkit's rule, and point ``root`` at the patches); a batch
    is zero-padded to its largest image. Classes are matched to the files by name.

    Args:
        root: the dataset folder.
        format: ``dota``, ``dior``, ``dior-r`` or ``coco``.
        classes: class names in label order (the paper's list for the dataset).
        train_split, val_split, test_split: split names (folders / list files / json suffixes).
        layout: folder templates overriding the format's defaults (``images``, ``labels``,
            ``annotations``; ``{split}`` is replaced).
        channels: 3 (RGB) or 1 (single-band SAR).
        batch_size, num_workers: DataLoader settings.
        mean, std: per-channel normalisation (0–255 units; ImageNet's for 3 channels by default).
        flips: random horizontal flips in training.
    """

    raw_bands = True  # the model sees the files' own 0-255 values; the card tells inference so
    raw_dtype = "uint8"  # 8-bit PNG / JPEG / TIFF images: infer refuses scenes of another value type

    def __init__(
        self,
        root: str,
        format: Literal["dota", "dior", "dior-r", "coco"],
        classes: list[str],
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        layout: dict[str, str] | None = None,
        channels: int = 3,
        batch_size: int = 2,
        num_workers: int = 0,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        flips: bool = True,
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
        self.format = AnnotationFormat(format)
        self.classes = list(classes)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.layout = dict(layout or {})
        self.channels, self.batch_size, self.num_workers, self.flips = (
            channels,
            batch_size,
            num_workers,
            flips,
        )
        m, s = default_stats(channels, mean, std)
        self.mean, self.std = torch.tensor(m), torch.tensor(s)

    def _dataset(self, stage: str, flips: bool) -> _ImageFileDataset:
        split = self.splits[stage]
        if split is None:
            raise ValueError(f"no {stage}_split configured")
        items = read_split(self.root, self.format, split, self.classes, self.layout)
        return _ImageFileDataset(items, self.channels, self.mean, self.std, flips)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_dataset = self._dataset("train", self.flips)
        if stage in ("fit", "validate"):
            self.val_dataset = self._dataset("val", False)
        if stage == "test":
            self.test_dataset = self._dataset("test", False)

    def _loader(self, dataset: Dataset[dict[str, Any]], shuffle: bool) -> DataLoader[dict[str, Any]]:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=detection_collate,
        )

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader(self.train_dataset, True)

    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader(self.val_dataset, False)

    def test_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader(self.test_dataset, False)
