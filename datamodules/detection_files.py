"""Detection benchmarks in their own on-disk layouts: DOTA / RSAR labelTxt, DIOR / DIOR-R XML, COCO
(``DetectionFilesDataModule``), with the reference's training augmentations
(``vitp_geo.datamodules.detection_augment``).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from vitp_geo.datamodules.detection_augment import FLIP_DIRECTIONS, Augment, rect_label_ids
from vitp_geo.datamodules.detection_batches import detection_loader
from vitp_geo.datamodules.geotiff import default_stats
from vitp_geo.datamodules.sampling import SamplingArgs, TakesSampling


class AnnotationFormat(StrEnum):
    """On-disk annotation layouts read by ``DetectionFilesDataModule``."""

    DOTA = "dota"  # <root>/<split>/images/*.png + <root>/<split>/labelTxt/*.txt (DOTA, RSAR)
    DIOR = "dior"  # DIOR: JPEGImages-{trainval,test}, Annotations/Horizontal Bounding Boxes, ImageSets
    DIOR_R = "dior-r"  # DIOR-R: the same with Annotations/Oriented Bounding Boxes (robndbox)
    COCO = "coco"  # <root>/<annotations>/instances_<split>.json + <root>/<split>/<file_name>


def read_split(
    root: Path,
    fmt: AnnotationFormat,
    split: str,
    classes: Sequence[str],
    layout: dict[str, str],
    masks: bool = False,
) -> list[tuple[Path, dict[str, Any]]]:
    """(image file, sample) pairs of one split, read by ``vitp_geo.io.annotations`` (class order by name).

    ``layout`` overrides the folder templates (``{split}`` is replaced): ``images``, ``labels``
    (dota), ``annotations`` (coco json). ``masks`` (coco only): samples also carry each object's
    ``segmentation`` as an RLE (``io.annotations.coco``).
    """
    from vitp_geo.io import annotations as A

    def tmpl(key: str, default: str) -> Path:
        return root / layout.get(key, default).format(split=split)

    if masks and fmt != AnnotationFormat.COCO:
        raise ValueError(f"instance masks are read from COCO segmentations; format {fmt.value!r} has none")
    if fmt == AnnotationFormat.DOTA:
        images = tmpl("images", "{split}/images")
        samples = A.read_dota_labels(tmpl("labels", "{split}/labelTxt"), classes)
    elif fmt in (AnnotationFormat.DIOR, AnnotationFormat.DIOR_R):
        images = tmpl("images", "JPEGImages-test" if split == "test" else "JPEGImages-trainval")
        samples = A.read_dior(root, split, classes, oriented=fmt == AnnotationFormat.DIOR_R)
    else:
        ann = tmpl("annotations", "annotations/instances_{split}.json")
        images = tmpl("images", "{split}")
        samples = A.read_coco(ann, classes, masks=masks)
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
    """Images and their annotation samples → detection samples (normalised image, both box keys,
    instance ``mask`` when the samples carry ``segmentation``), augmented by ``augment`` if given."""

    def __init__(
        self,
        items: list[tuple[Path, dict[str, Any]]],
        channels: int,
        mean: Tensor,
        std: Tensor,
        augment: Augment | None,
    ) -> None:
        self.items, self.channels, self.augment = items, channels, augment
        self.mean, self.std = mean[:, None, None], std[:, None, None]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from torchvision.io import ImageReadMode, decode_image, read_file

        path, s = self.items[index]
        mode = ImageReadMode.RGB if self.channels == 3 else ImageReadMode.GRAY
        image = decode_image(read_file(str(path)), mode=mode).float()
        hbb = s["bbox_xyxy"].float().reshape(-1, 4)
        if "bbox_xyxyxyxy" in s:
            quads = s["bbox_xyxyxyxy"].float().reshape(-1, 4, 2)
        else:  # horizontal datasets: the corners of the box, clockwise from the top-left
            x1, y1, x2, y2 = hbb.unbind(1)
            quads = torch.stack([x1, y1, x2, y1, x2, y2, x1, y2], 1).reshape(-1, 4, 2)
        labels = s["label"].long()
        keep = torch.ones(len(labels), dtype=torch.bool)
        masks = _masks(s, path, image.shape[-2:]) if "segmentation" in s else None
        if self.augment is not None:
            # torch's generator: seeded by the DataLoader per worker and epoch (or the global seed)
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
            image, quads, keep, masks = self.augment(rng, image, quads, labels, masks)
            labels = labels[keep]
        image = (image - self.mean) / self.std
        hbb = torch.cat([quads.amin(1), quads.amax(1)], 1) if len(quads) else hbb[:0]
        out: dict[str, Any] = {
            "image": image,
            "bbox_xyxy": hbb,
            "bbox_xyxyxyxy": quads.reshape(-1, 8),
            "label": labels,
            "image_id": path.stem,
        }
        if "difficult" in s:
            out["difficult"] = s["difficult"].bool()[keep]
        if masks is not None:
            out["mask"] = masks
        return out


def _masks(sample: dict[str, Any], path: Path, size: Sequence[int]) -> Tensor:
    """The sample's ``segmentation`` RLEs as (N, H, W) uint8 masks on the image's grid."""
    from pycocotools import mask as mask_utils

    rles = sample["segmentation"]
    h, w = int(size[0]), int(size[1])
    if any(list(r["size"]) != [h, w] for r in rles):
        raise ValueError(f"{path}: the annotation's height / width differ from the image's {w} x {h}")
    if not rles:
        return torch.zeros((0, h, w), dtype=torch.uint8)
    return torch.from_numpy(np.ascontiguousarray(mask_utils.decode(list(rles)).transpose(2, 0, 1)))


class DetectionFilesDataModule(TakesSampling, LightningDataModule):
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
        sampling: batch size and workers (:class:`~vitp_geo.datamodules.sampling.SamplingArgs`;
            defaults ``SAMPLING``: batches of 2). Images are used at their size and the
            augmentations draw from torch's generator: no ``patch_size``, ``length`` or ``seed``.
        mean, std: per-channel normalisation (0–255 units; ImageNet's for 3 channels by default).
        flips: random flips in training (``flip_directions``, ``flip_ratio``); False: none.
        flip_directions: the flips drawn from: ``horizontal`` (default; mmdet's ``RandomFlip``),
            ``vertical``, ``diagonal`` (mmrotate's ``RRandomFlip`` draws all three).
        flip_ratio: probability of each direction (at most one flip per image).
        rotate_ratio: probability of a random rotation (mmrotate's ``PolyRandomRotate``; the
            reference's oriented configs use 0.5); 0: none.
        rotate_range: rotation angles are drawn from (−range, range) degrees.
        rect_classes: classes (by name) whose presence restricts the rotation to ±90° / 180°.
        masks: read COCO ``segmentation`` into per-image instance ``mask`` (N, H, W) (Mask R-CNN).
        (The augmentations are ``vitp_geo.datamodules.detection_augment``'s.)
    """

    raw_bands = True  # the model sees the files' own 0-255 values; the card tells inference so
    raw_dtype = "uint8"  # 8-bit PNG / JPEG / TIFF images: infer refuses scenes of another value type
    SAMPLING = dict(batch_size=2, num_workers=0)

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
        sampling: SamplingArgs | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        flips: bool = True,
        flip_directions: list[Literal["horizontal", "vertical", "diagonal"]] | None = None,
        flip_ratio: float = 0.5,
        rotate_ratio: float = 0.0,
        rotate_range: float = 180.0,
        rect_classes: list[str] | None = None,
        masks: bool = False,
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
        settings = self.sampling_settings(sampling)
        self.channels, self.batch_size = channels, settings["batch_size"]
        self.num_workers = settings["num_workers"]
        self.masks = masks
        directions = tuple(flip_directions or ("horizontal",)) if flips else FLIP_DIRECTIONS[:0]
        self.augment = Augment(
            flip_directions=directions,
            flip_ratio=flip_ratio,
            rotate_ratio=rotate_ratio,
            rotate_range=rotate_range,
            rect_labels=rect_label_ids(rect_classes, self.classes),
        )
        m, s = default_stats(channels, mean, std)
        self.mean, self.std = torch.tensor(m), torch.tensor(s)

    def _dataset(self, stage: str, augment: Augment | None) -> _ImageFileDataset:
        split = self.splits[stage]
        if split is None:
            raise ValueError(f"no {stage}_split configured")
        items = read_split(self.root, self.format, split, self.classes, self.layout, masks=self.masks)
        return _ImageFileDataset(items, self.channels, self.mean, self.std, augment)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_dataset = self._dataset("train", self.augment)
        if stage in ("fit", "validate"):
            self.val_dataset = self._dataset("val", None)
        if stage == "test":
            self.test_dataset = self._dataset("test", None)

    def _loader(self, dataset: Dataset[dict[str, Any]], shuffle: bool) -> DataLoader[dict[str, Any]]:
        return detection_loader(dataset, self.batch_size, self.num_workers, shuffle)

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader(self.train_dataset, True)

    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader(self.val_dataset, False)

    def test_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader(self.test_dataset, False)
