"""Downstream tasks on a ViTP backbone: torchgeo tasks for segmentation and change detection.

Importing this package registers the ``vitp_*`` backbones with timm, so they can be named
wherever torchgeo accepts plain timm ViT names, e.g. ``torchgeo.trainers.ChangeDetectionTask(
model="changevit", backbone="vitp_tiny_patch14_224")`` (see docs/finetune.md for which torchgeo
models can and cannot take them).
"""

from vitp_geo.tasks.change import ChangeDetectionTask
from vitp_geo.tasks.loading import load_inference_model
from vitp_geo.tasks.segmentation import SegmentationTask

__all__ = [
    "ChangeDetectionTask",
    "SegmentationTask",
    "load_inference_model",
]
