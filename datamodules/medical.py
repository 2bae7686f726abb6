"""Slice datamodules over medical folders: MSD / nnU-Net (CT, MRI) and X-ray (CovidQU-Ex).

Samples are torchgeo-style dicts ``{"image": (3, H, W) float32, "mask": (H, W) int64}`` that
``vitp_geo.tasks.SegmentationTask`` trains on unchanged:

* **MSD / nnU-Net** (``MedicalSliceDataModule``): each case's channels are read as RAS volumes
  (``vitp_geo.medical.load.load_volume``), checked to share one grid with the label, turned
  into the ViT's 3 channels by a ``SliceInput`` (``channel_rule``, ``windows``, ``preset``,
  ``sequences``; CT windows by default, FLAIR / T1ce / T2 for BraTS) and cut along ``axis``.
  Every slice with foreground is kept plus a seeded ``empty_fraction`` of the empty ones
  (``slicing.choose_slices``). Label values become contiguous class ids in ``dataset.json``'s
  order (``medical.datasets.LabelTable``: BraTS 0/1/2/4 → 0/1/2/3); a value missing from
  ``dataset.json`` is an error naming the file. Cases are split into train / validation by a
  seeded shuffle (``val_fraction``, at least one case each), never slices of one case on both
  sides. Volumes are decoded on demand and a few are cached (``cache_cases``); the training
  sampler visits the cases in random order and a case's slices together, so each volume is read
  once per epoch.
* **X-ray** (``XraySegmentationDataModule``): radiographs with lung / infection masks
  (``medical.datasets.read_xray_folder``), classes background / lung / infection, min–max
  normalised and repeated to 3 channels.

Training draws random ``patch_size`` crops (padding smaller slices); there are no flips, which
would swap left and right organs. Inputs are normalised on the device with ``mean`` / ``std`` of
the ``SliceInput`` (ImageNet's for [0, 1] windows, none for z-scores), and the model card records
the rule (``render_spec``) so ``vitp-geo infer`` prepares new volumes the same way.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from vitp_geo.datamodules.folders import _crop_collate, _FolderDataModule
from vitp_geo.datamodules.sampling import SamplingArgs

from vitp_geo.evaluation.dice import DiceReport
from vitp_geo.medical.datasets import (
    XRAY_CLASSES,
    LabelTable,
    MSDCase,
    XrayItem,
    load_case,
    load_case_label,
    read_msd_dataset,
    read_xray_folder,
    xray_label,
)
from vitp_geo.medical.inputs import SliceInput
from vitp_geo.medical.slicing import choose_slices, take_slice

log = logging.getLogger(__name__)


class MedicalSliceDataset(Dataset[dict[str, Tensor]]):
    """Slices of MSD / nnU-Net cases (module doc); ``index`` lists (case number, slice index)."""

    def __init__(
        self,
        cases: Sequence[MSDCase],
        channel_names: Sequence[str],
        table: LabelTable,
        spec: SliceInput,
        empty_fraction: float = 0.1,
        seed: int = 0,
        cache_cases: int = 4,
    ) -> None:
        self.cases, self.channel_names, self.table, self.spec = list(cases), tuple(channel_names), table, spec
        self.cache_cases = max(1, cache_cases)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.index: list[tuple[int, int]] = []
        self.empty_slices = 0
        for c in range(len(self.cases)):
            prepared, labels = self._load(c)
            keep, empty = choose_slices(labels, spec.axis, empty_fraction, seed=seed + c)
            self.index += [(c, k) for k in keep]
            self.empty_slices += sum(bool(e) for e in empty)
            del prepared
        if not self.index:
            raise ValueError("no slices: every case is empty and empty_fraction is 0")

    def _load(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        prepared, ref = load_case(self.cases[c], self.spec, self.channel_names)
        labels = load_case_label(self.cases[c], ref, self.table)
        self._cache[c] = (prepared, labels)
        while len(self._cache) > self.cache_cases:
            self._cache.popitem(last=False)
        return prepared, labels

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        c, k = self.index[i]
        prepared, labels = self._load(c)
        image = self.spec.slice(prepared, k)  # (3, H, W)
        mask = take_slice(labels, self.spec.axis, k)  # (H, W)
        return {"image": torch.from_numpy(np.ascontiguousarray(image)), "mask": torch.from_numpy(mask.copy())}


class CaseGroupedSampler(Sampler[int]):
    """Cases in a random order, each case's slices together in a random order (module doc)."""

    def __init__(self, index: Sequence[tuple[int, int]], seed: int = 0) -> None:
        self.by_case: dict[int, list[int]] = {}
        for i, (c, _) in enumerate(index):
            self.by_case.setdefault(c, []).append(i)
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_case.values())

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1
        for c in rng.permutation(sorted(self.by_case)).tolist():
            yield from rng.permutation(self.by_case[c]).tolist()


def split_cases(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train / validation case numbers; at least one case on each side."""
    if n < 2:
        raise ValueError(f"need at least 2 cases to split into train and validation, got {n}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = min(n - 1, max(1, math.ceil(val_fraction * n)))
    return sorted(order[n_val:]), sorted(order[:n_val])


class _MedicalDataModule(_FolderDataModule):
    """Shared loading: crops for training, whole slices for validation, no flips."""

    spec: SliceInput
    table: LabelTable
    modality: str = "CT"
    # set in _FolderDataModule.__init__; declared here too so that type checkers reading this
    # folder as ``datamodules`` (it installs as ``vitp_geo.datamodules``) know their type
    train_dataset: Dataset[dict[str, Tensor]] | None
    val_dataset: Dataset[dict[str, Tensor]] | None

    def train_dataloader(self) -> DataLoader[dict[str, Tensor]]:
        assert self.train_dataset is not None
        index = getattr(self.train_dataset, "index", None)
        sampler: Sampler[int] | None = CaseGroupedSampler(index, self.seed) if index is not None else None
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=sampler is None,
            num_workers=self.num_workers,
            collate_fn=_crop_collate(self.patch_size),
            drop_last=len(self.train_dataset) > self.batch_size,  # type: ignore[arg-type]
        )

    def on_after_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        mean, std = self._norm()
        image = batch["image"]
        batch["image"] = (image - mean.to(image).view(1, -1, 1, 1)) / std.to(image).view(1, -1, 1, 1)
        return batch

    channel_names: tuple[str, ...] = ("X-ray",)

    def norm(self) -> tuple[list[float], list[float]]:
        """The per-channel mean and std the batches are normalised with (for whole-case scoring)."""
        mean, std = self._norm()
        return mean.tolist(), std.tolist()

    @property
    def render_spec(self) -> dict[str, Any]:
        """What the model card must hold for ``vitp-geo infer`` (``card.render``)."""
        return {
            "raw": True,
            "medical": self.spec.to_dict(),
            "modality": self.modality,
            "channel_names": list(self.channel_names),
            "label_values": list(self.table.values),
        }

    @property
    def class_names(self) -> list[str]:
        return list(self.table.names)

    def _check_model(self) -> None:
        """The model must predict one class per label table entry (else labels map to wrong ids)."""
        trainer = getattr(self, "trainer", None)
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        k = getattr(module, "hparams", {}).get("num_classes") if module is not None else None
        if k is not None and int(k) != len(self.table.names):
            raise ValueError(
                f"model.num_classes is {k} but the data has {len(self.table.names)} classes "
                f"({dict(zip(self.table.values, self.table.names, strict=True))}); make them agree"
            )


class MedicalSliceDataModule(_MedicalDataModule):
    """2D / 2.5D slices of an MSD / nnU-Net folder (module doc).

    Args:
        root: folder with ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.
        images, labels: sub-folder names.
        val_images, val_labels: a separate validation folder pair (AMOS' ``imagesVa`` /
            ``labelsVa``); when given, every case of ``images`` trains and ``sampling.val_fraction``
            is unused.
        channel_rule: ``ct-windows``, ``neighbours``, ``mri-sequences`` or ``repeat``.
        windows: three CT window presets for ``ct-windows``.
        preset: normalisation for the other rules (``mri-zscore`` for MRI).
        sequences: MRI sequences for ``mri-sequences`` (default FLAIR, T1ce, T2).
        axis: slicing axis of the RAS volume (2 = axial).
        empty_fraction: share of label-free slices kept, in [0, 1].
        sampling: training crop side, batch size, workers, the share of cases held out for
            validation (``val_fraction``, at least one case) and the seed of the split, the slice
            choice and the case order (:class:`~vitp_geo.datamodules.sampling.SamplingArgs`;
            defaults ``SAMPLING``: 224 px crops, batches of 8, 0.2 of the cases).
        cache_cases: decoded cases kept in memory per dataset.
    """

    SAMPLING = {**_FolderDataModule.SAMPLING, "patch_size": 224, "val_fraction": 0.2}

    def __init__(
        self,
        root: str,
        images: str = "imagesTr",
        labels: str = "labelsTr",
        val_images: str | None = None,
        val_labels: str | None = None,
        channel_rule: str = "ct-windows",
        windows: list[str] | None = None,
        preset: str = "ct-abdomen",
        sequences: list[str] | None = None,
        axis: int = 2,
        empty_fraction: float = 0.1,
        sampling: SamplingArgs | None = None,
        cache_cases: int = 4,
    ) -> None:
        spec = SliceInput(
            rule=channel_rule,  # type: ignore[arg-type]
            windows=tuple(windows) if windows else SliceInput.windows,  # type: ignore[arg-type]
            preset=preset,  # type: ignore[arg-type]
            sequences=tuple(sequences) if sequences else SliceInput().sequences,
            axis=axis,
        )
        mean, std = spec.mean_std
        super().__init__(sampling, mean, std)
        if not 0 <= empty_fraction <= 1:
            raise ValueError(f"empty_fraction must be in [0, 1], got {empty_fraction}")
        self.spec = spec
        self.dataset_info = read_msd_dataset(root, images, labels)  # fails early on a bad folder
        self.table = self.dataset_info.labels
        self.modality = self.dataset_info.modality
        self.channel_names = self.dataset_info.channel_names
        if self.modality == "CT" and spec.rule.value == "mri-sequences":
            raise ValueError(f"{root}: a CT dataset cannot use channel_rule mri-sequences")
        if val_images is not None:
            if val_labels is None:
                raise ValueError("val_images needs val_labels")
            self.train_cases = list(self.dataset_info.cases)
            self.val_cases = read_msd_dataset(root, val_images, val_labels).cases
        else:
            split = split_cases(
                len(self.dataset_info.cases), cast(float, self.sampling.val_fraction), self.seed
            )
            self.train_cases, self.val_cases = ([self.dataset_info.cases[i] for i in part] for part in split)
        self.empty_fraction, self.cache_cases = empty_fraction, cache_cases

    def _dataset(self, cases: list[MSDCase], empty_fraction: float) -> MedicalSliceDataset:
        return MedicalSliceDataset(
            cases,
            self.dataset_info.channel_names,
            self.table,
            self.spec,
            empty_fraction=empty_fraction,
            seed=self.seed,
            cache_cases=self.cache_cases,
        )

    def dice_report(self, predictor: Callable[[Tensor], Tensor]) -> DiceReport:
        """Per-case Dice of ``predictor`` on the validation cases, whole volumes slice by slice.

        ``predictor`` maps normalised (B, 3, H, W) → (B, K, H, W) logits; it runs where the caller
        put it (``vitp_geo.medical.finetune.CaseDice`` scores on the trainer's device).
        """
        from vitp_geo.medical.inference import score_cases

        mean, std = self.norm()
        return score_cases(predictor, self.val_cases, self.channel_names, self.table, self.spec, mean, std)

    def setup(self, stage: str) -> None:
        self._check_model()
        if stage == "fit" and self.train_dataset is None:
            self.train_dataset = self._dataset(self.train_cases, self.empty_fraction)
        if self.val_dataset is None:
            self.val_dataset = self._dataset(self.val_cases, self.empty_fraction)


class XraySliceDataset(Dataset[dict[str, Tensor]]):
    """Radiographs and their class maps (background / lung / infection)."""

    def __init__(self, items: Sequence[XrayItem], spec: SliceInput) -> None:
        self.items, self.spec = list(items), spec

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        from vitp_geo.medical.xray import load_xray

        item = self.items[i]
        xr = load_xray(item.image)
        image = self.spec.image_2d(xr.array)
        mask = xray_label(item, xr.shape).astype(np.int64)
        return {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask)}


class XraySegmentationDataModule(_MedicalDataModule):
    """Radiograph segmentation on a CovidQU-Ex-style folder (module doc; layout in ``medical.datasets``).

    Args:
        root: the folder holding the split folders (CovidQU-Ex: ``Infection Segmentation
            Data/Infection Segmentation Data``).
        train_split, val_split: split folder names (``Train``, ``Val``).
        sampling: training crop side, batch size, workers, seed
            (:class:`~vitp_geo.datamodules.sampling.SamplingArgs`; defaults ``SAMPLING``: 256 px
            crops, batches of 8).
    """

    modality = "X-ray"
    SAMPLING = {**_FolderDataModule.SAMPLING, "patch_size": 256}

    def __init__(
        self,
        root: str,
        train_split: str = "Train",
        val_split: str = "Val",
        sampling: SamplingArgs | None = None,
    ) -> None:
        spec = SliceInput(rule="repeat", preset="xray-minmax")  # type: ignore[arg-type]
        mean, std = spec.mean_std
        super().__init__(sampling, mean, std)
        self.spec = spec
        self.table = LabelTable.from_names(XRAY_CLASSES)
        self.root, self.splits = Path(root), (train_split, val_split)
        self.train_items = read_xray_folder(self.root, train_split)  # fails early on a bad folder
        self.val_items = read_xray_folder(self.root, val_split)

    def dice_report(self, predictor: Callable[[Tensor], Tensor]) -> DiceReport:
        """Per-image Dice of ``predictor`` on the validation radiographs (each image is a case)."""
        from vitp_geo.medical.inference import score_radiographs

        mean, std = self.norm()
        return score_radiographs(predictor, self.val_items, self.table, self.spec, mean, std)

    def setup(self, stage: str) -> None:
        self._check_model()
        if stage == "fit":
            self.train_dataset = XraySliceDataset(self.train_items, self.spec)
        self.val_dataset = XraySliceDataset(self.val_items, self.spec)
