"""torchgeo's detection datasets (DOTA, VHR-10) with their class order mapped to ours by name."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset


class TorchGeoDetection(Dataset[dict[str, Any]]):
    """A torchgeo detection dataset (``DOTA``, ``VHR10``) with labels mapped to ``classes`` by name.

    torchgeo 0.8.1's ``DOTA`` gives ``bbox`` (N, 8) corners (or ``bbox_xyxy`` with
    ``bbox_orientation="horizontal"``) and ``labels`` indexing ``DOTA.classes`` (the 18 v2.0
    names, whatever the version); ``VHR10`` gives ``bbox_xyxy`` and ``label`` indexing
    ``VHR10.categories`` (``background`` first). Samples come out as this module's:
    ``image`` float (normalised by ``mean`` / ``std``), ``bbox_xyxy``, ``bbox_xyxyxyxy``,
    ``label`` indexing ``classes``. Names match case-insensitively; objects whose class is not in
    ``classes`` are dropped (so a 15-class DOTA-v1.0 list works on torchgeo's 18-name labels).

    Args:
        dataset: the torchgeo dataset.
        classes: target class names, in label order.
        source_classes: the dataset's label names (default ``dataset.classes`` or
            ``dataset.categories``).
        mean, std: per-channel normalisation of ``image`` (default: unchanged).
    """

    def __init__(
        self,
        dataset: Dataset[dict[str, Any]],
        classes: Sequence[str],
        source_classes: Sequence[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        from vitp_geo.io.annotations import class_index

        names = source_classes or getattr(dataset, "classes", None) or getattr(dataset, "categories", None)
        if names is None:
            raise ValueError(f"{type(dataset).__name__} has no 'classes' / 'categories': give source_classes")
        index = class_index(list(classes))
        self.lookup = torch.tensor([index.get(str(n).lower(), -1) for n in names], dtype=torch.int64)
        if not bool((self.lookup >= 0).any()):
            raise ValueError(
                f"none of {list(classes)} is a class of {type(dataset).__name__} ({list(names)})"
            )
        self.dataset, self.classes = dataset, list(classes)
        unmatched = [str(n) for n, k in zip(names, self.lookup.tolist(), strict=True) if k < 0]
        unmatched = [n for n in unmatched if n.lower() != "background"]
        if unmatched:  # names differ between datasets (VHR10 says "ships", DOTA/DIOR "ship")
            warnings.warn(
                f"{type(dataset).__name__} classes not in the class list, their objects are dropped: "
                f"{', '.join(unmatched)} (give them under the dataset's own name to keep them)",
                stacklevel=2,
            )
        self.mean = torch.tensor(list(mean))[:, None, None] if mean is not None else None
        self.std = torch.tensor(list(std))[:, None, None] if std is not None else None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.dataset[index]
        image = torch.as_tensor(s["image"]).float()
        if self.mean is not None:
            image = image - self.mean
        if self.std is not None:
            image = image / self.std
        labels = (
            torch.as_tensor(s["label"] if "label" in s else s.get("labels", torch.zeros(0)))
            .long()
            .reshape(-1)
        )
        if "bbox" in s:
            quads = torch.as_tensor(s["bbox"]).float().reshape(-1, 4, 2)
        else:
            b = torch.as_tensor(s.get("bbox_xyxy", torch.zeros(0, 4))).float().reshape(-1, 4)
            quads = torch.stack([b[:, 0], b[:, 1], b[:, 2], b[:, 1], b[:, 2], b[:, 3], b[:, 0], b[:, 3]], 1)
            quads = quads.reshape(-1, 4, 2)
        if len(labels) != len(quads):
            raise ValueError(f"sample {index}: {len(labels)} labels for {len(quads)} boxes")
        mapped = self.lookup[labels] if len(labels) else labels
        keep = mapped >= 0
        quads = quads[keep]
        return {
            "image": image,
            "bbox_xyxy": torch.cat([quads.amin(1), quads.amax(1)], 1) if len(quads) else torch.zeros(0, 4),
            "bbox_xyxyxyxy": quads.reshape(-1, 8),
            "label": mapped[keep],
        }
