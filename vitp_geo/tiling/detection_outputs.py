"""A detection checkpoint over a whole scene → a styled GeoPackage of oriented polygons.

``detect_scene_to_vector`` wraps ``tiling.detection.detect_scene`` (windows, cross-window merge
in map coordinates) around a detection model on one device and writes the merged detections with
``io.qgis_styles.write_styled_gpkg`` — one polygon layer (``class_id``, ``class_name``, ``score``,
``area`` in CRS units²) in the scene CRS, its categorised QGIS style in ``layer_styles`` and a
``.qml`` beside it, exactly as segmentation polygons are styled. Written atomically. For a
Mask R-CNN checkpoint (``roi_head: mask``) each detection's geometry is its instance mask as
polygons on pixel edges (mapped to the scene CRS; ``area`` is the mask's), following its box
through the cross-window merge (``tiling.detection``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import torch
from torch import nn

from vitp_geo.io.qgis_styles import ClassStyle, write_styled_gpkg
from vitp_geo.io.raster import RenderRule
from vitp_geo.tiling.box_merge import nms_threshold
from vitp_geo.tiling.detection import detect_scene
from vitp_geo.tiling.progress import ProgressMode, report_phase


class ModuleDetector:
    """A detection ``nn.Module`` on one device as ``detect_scene``'s detector (outputs on the CPU)."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.module, self.device = module.to(device).eval(), device

    def __call__(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        with torch.inference_mode():
            outs = self.module(x.to(self.device, non_blocking=True).float())
        # labels stay integer and masks boolean (N × tile² floats would be 32 × the memory)
        return [
            {k: v.cpu() if k in ("labels", "masks") else v.float().cpu() for k, v in o.items()} for o in outs
        ]


@dataclass
class DetectionRunConfig:
    """Window and merge settings of a whole-scene detection run.

    Attributes:
        tile_size: window side (pixels).
        overlap: share of a window shared with each neighbour (objects larger than it are joined
            from their parts, ``tiling.box_merge``).
        batch_size: windows per model call.
        iou_threshold: cross-window NMS threshold (None: the detector's own final NMS threshold).
        min_score: detections below this score are not written.
        progress: ``True``/``"bar"``, ``"jsonl"`` or ``False``/``"none"`` (``tiling.progress``).
    """

    tile_size: int = 512
    overlap: float = 0.25
    batch_size: int = 8
    iou_threshold: float | None = None
    min_score: float = 0.3
    progress: ProgressMode = True


def detect_scene_to_vector(
    scene: str | Path,
    module: nn.Module,
    classes: ClassStyle,
    vector: str | Path,
    *,
    rule: RenderRule = RenderRule(),
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (255.0, 255.0, 255.0),
    raw_input: bool = False,
    config: DetectionRunConfig = DetectionRunConfig(),
    device: torch.device | None = None,
) -> gpd.GeoDataFrame:
    """Detect objects over ``scene`` and write them to the GeoPackage ``vector`` (module doc).

    Args:
        scene: the GeoTIFF.
        module: a ``DetectionModel`` (``load_inference_model`` of a detection checkpoint).
        classes: class names and colours (the model card's).
        vector: the ``.gpkg`` to write.
        rule, mean, std, raw_input: how windows become model input (the model card's).
        config: windows, merge and score settings.
        device: where the model runs (default CUDA when available).

    Returns:
        The written detections.
    """
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    iou = config.iou_threshold
    if iou is None:
        iou = _final_nms_threshold(module)
    frame = detect_scene(
        scene,
        ModuleDetector(module, device),
        classes.names,
        tile_size=config.tile_size,
        overlap=config.overlap,
        batch_size=config.batch_size,
        rule=rule,
        mean=mean,
        std=std,
        raw_input=raw_input,
        iou_threshold=iou,
        score_threshold=config.min_score,
        progress=config.progress,
    )
    report_phase(config.progress, "write")
    write_styled_gpkg(vector, frame, classes)
    return frame


def _final_nms_threshold(module: nn.Module) -> float:
    """The detector's final NMS IoU, the checkpoint's (``box_merge.nms_threshold``: the card's
    ``nms_thresh``, by default 0.1 rotated / 0.5 horizontal)."""
    heads = getattr(module, "roi_heads", None)
    return nms_threshold(str(getattr(module, "box_type", "hbb")), getattr(heads, "nms_thresh", None))
