"""Downstream tasks on a ViTP backbone: torchgeo tasks for segmentation, change detection and
object detection, and loading a fine-tuned model for inference.

Importing this package registers the ``vitp_*`` backbones with timm, so they can be named
wherever torchgeo accepts plain timm ViT names, e.g. ``torchgeo.trainers.ChangeDetectionTask(
model="changevit", backbone="vitp_tiny_patch14_224")`` (see docs/finetune.md for which torchgeo
models can and cannot take them).

The task classes are imported on first use (``from vitp_geo.tasks import SegmentationTask``
works as before): they need torchgeo and Lightning, about 8 s to import, which inference
(``load_inference_model``, the medical path included) does not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import vitp_geo.models.vit  # noqa: F401  (registers the vitp_* backbones with timm)

if TYPE_CHECKING:
    from vitp_geo.tasks.args import BackboneArgs, InputArgs, OptimArgs
    from vitp_geo.tasks.change import ChangeDetectionTask
    from vitp_geo.tasks.detection import ObjectDetectionTask
    from vitp_geo.tasks.loading import load_inference_model
    from vitp_geo.tasks.segmentation import SegmentationTask

_LAZY = {
    "BackboneArgs": "vitp_geo.tasks.args",
    "InputArgs": "vitp_geo.tasks.args",
    "OptimArgs": "vitp_geo.tasks.args",
    "ChangeDetectionTask": "vitp_geo.tasks.change",
    "ObjectDetectionTask": "vitp_geo.tasks.detection",
    "SegmentationTask": "vitp_geo.tasks.segmentation",
    "load_inference_model": "vitp_geo.tasks.loading",
}

__all__ = [
    "BackboneArgs",
    "ChangeDetectionTask",
    "InputArgs",
    "ObjectDetectionTask",
    "OptimArgs",
    "SegmentationTask",
    "load_inference_model",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
