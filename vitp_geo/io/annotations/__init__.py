"""Detection annotation formats: DOTA labelTxt and Task1/Task2 results, DIOR / DIOR-R XML, COCO JSON.

Every reader returns torchgeo-style samples: ``bbox_xyxy`` (N, 4) float, ``bbox_xyxyxyxy`` (N, 8)
float for oriented formats, ``label`` (N,) int64 mapped **by class name** to the class list given,
and ``difficult`` (N,) bool (ground truth) or ``score`` (N,) float (predictions). Malformed input
raises ``ValueError`` naming the file, the line (or element) and the value; degenerate boxes (zero
area, non-finite) are dropped with a logged count; files without objects give empty samples.
Writers are atomic (temporary name, then rename). No torch.nn here.
"""

from vitp_geo.io.annotations.classes import (
    DIOR_CLASSES,
    DOTA_CLASSES,
    DOTA_V1_CLASSES,
    DOTA_V2_CLASSES,
    DOTA_V15_CLASSES,
    class_index,
)
from vitp_geo.io.annotations.coco import coco_classes, read_coco, read_coco_results, write_coco_results
from vitp_geo.io.annotations.dota import (
    dota_header,
    read_dota_label,
    read_dota_labels,
    read_task_results,
    write_dota_label,
    write_task_results,
)
from vitp_geo.io.annotations.samples import ParseError, empty_sample
from vitp_geo.io.annotations.voc import (
    dior_split_ids,
    read_dior,
    read_dior_r_xml,
    read_voc_xml,
    read_xml_folder,
    write_dior_r_xml,
    write_voc_xml,
)

__all__ = [
    "DIOR_CLASSES",
    "DOTA_CLASSES",
    "DOTA_V15_CLASSES",
    "DOTA_V1_CLASSES",
    "DOTA_V2_CLASSES",
    "ParseError",
    "class_index",
    "coco_classes",
    "dior_split_ids",
    "dota_header",
    "empty_sample",
    "read_coco",
    "read_coco_results",
    "read_dior",
    "read_dior_r_xml",
    "read_dota_label",
    "read_dota_labels",
    "read_task_results",
    "read_voc_xml",
    "read_xml_folder",
    "write_coco_results",
    "write_dior_r_xml",
    "write_dota_label",
    "write_task_results",
    "write_voc_xml",
]
