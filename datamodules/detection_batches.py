"""Detection batches: ``detection_collate``, the per-image keys it keeps as lists, and
``detection_loader``, the DataLoader both detection DataModules build with it.

Samples are torchgeo-style dicts: ``image`` (C, H, W) float32 (normalised), ``bbox_xyxy``
(N, 4) ``x1, y1, x2, y2``, ``bbox_xyxyxyxy`` (N, 8) the four corners of each object's
(minimum-area) rectangle, ``label`` (N,) int64, optionally ``difficult`` (N,) bool and ``mask``
(N, H, W) uint8 instance masks (Mask R-CNN), and ``image_id`` (the file stem).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

BOX_KEYS = ("bbox_xyxy", "bbox_xyxyxyxy", "label", "difficult", "mask")


def detection_collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``image`` (zero-padded bottom / right to the largest in the batch); keep
    ``bbox_xyxy`` / ``bbox_xyxyxyxy`` / ``label`` / ``difficult`` / ``mask`` as per-image lists
    (masks stay on their image's own grid)."""
    images = [torch.as_tensor(s["image"]) for s in samples]
    h = max(int(i.shape[-2]) for i in images)
    w = max(int(i.shape[-1]) for i in images)
    images = [torch.nn.functional.pad(i, (0, w - i.shape[-1], 0, h - i.shape[-2])) for i in images]
    batch: dict[str, Any] = {"image": torch.stack(images)}
    for key in BOX_KEYS:
        if all(key in s for s in samples):
            batch[key] = [torch.as_tensor(s[key]) for s in samples]
    if all("image_id" in s for s in samples):  # file stems: DOTA Task1 result lines name them
        batch["image_id"] = [str(s["image_id"]) for s in samples]
    return batch


def detection_loader(
    dataset: Dataset[dict[str, Any]],
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    seed: int | None = None,
) -> DataLoader[dict[str, Any]]:
    """A DataLoader of ``detection_collate`` batches; a shuffled one draws its order from ``seed``
    when given (else from torch's global generator, which ``seed_everything`` seeds)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=detection_collate,
        generator=torch.Generator().manual_seed(seed) if shuffle and seed is not None else None,
    )
