"""Detection datamodules, by where their data come from (one module each):

* ``vitp_geo.datamodules.detection_geotiff``: ``GeoTiffDetectionDataModule``, tiles of GeoTIFF scenes
  with vector labels;
* ``vitp_geo.datamodules.detection_files``: ``DetectionFilesDataModule``, a benchmark in its own layout
  (DOTA / RSAR, DIOR / DIOR-R, COCO), with the augmentations of ``vitp_geo.datamodules.detection_augment``;
* ``vitp_geo.datamodules.torchgeo_detection``: ``TorchGeoDetection``, torchgeo's DOTA / VHR-10 with
  named classes;
* ``vitp_geo.datamodules.detection_batches``: ``detection_collate`` and the sample keys they share.

The names stay importable from here (configs name ``vitp_geo.datamodules.detection.DetectionFilesDataModule``).
"""

from __future__ import annotations

from vitp_geo.datamodules.detection_batches import BOX_KEYS, detection_collate
from vitp_geo.datamodules.detection_files import AnnotationFormat, DetectionFilesDataModule, read_split
from vitp_geo.datamodules.detection_geotiff import GeoTiffDetectionDataModule, rect_corners
from vitp_geo.datamodules.torchgeo_detection import TorchGeoDetection

__all__ = [
    "BOX_KEYS",
    "AnnotationFormat",
    "DetectionFilesDataModule",
    "GeoTiffDetectionDataModule",
    "TorchGeoDetection",
    "detection_collate",
    "read_split",
    "rect_corners",
]
