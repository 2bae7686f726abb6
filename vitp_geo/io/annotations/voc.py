"""DIOR annotations: horizontal PASCAL VOC XML (``<bndbox>``) and DIOR-R oriented XML (``<robndbox>``).

A DIOR object (``Annotations/Horizontal Bounding Boxes/<id>.xml``)::

    <object><name>golffield</name><pose>Unspecified</pose>
      <bndbox><xmin>133</xmin><ymin>237</ymin><xmax>684</xmax><ymax>672</ymax></bndbox></object>

A DIOR-R object (``Annotations/Oriented Bounding Boxes/<id>.xml``)::

    <object><type>robndbox</type><name>golffield</name><truncated>0</truncated><difficult>0</difficult>
      <robndbox><x_left_top>133</x_left_top><y_left_top>237</y_left_top>
        <x_right_top>684</x_right_top>...<x_left_bottom>133</x_left_bottom><y_left_bottom>672</y_left_bottom>
      </robndbox><angle>0</angle></object>

The four corners are read in the order left-top, right-top, right-bottom, left-bottom; the
``<angle>`` element is not needed (the corners define the box) and is ignored. ``<difficult>`` is
optional in both.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vitp_geo.io.annotations.classes import class_index
from vitp_geo.io.annotations.samples import ParseError, box_sample, finite32, lookup_class, polygon_sample
from vitp_geo.io.atomic import atomic_output

__all__ = [
    "DIOR_HBB_DIR",
    "DIOR_OBB_DIR",
    "ROBNDBOX_CORNERS",
    "dior_split_ids",
    "read_dior",
    "read_dior_r_xml",
    "read_voc_xml",
    "read_xml_folder",
    "write_dior_r_xml",
    "write_voc_xml",
]

ROBNDBOX_CORNERS = (
    "x_left_top",
    "y_left_top",
    "x_right_top",
    "y_right_top",
    "x_right_bottom",
    "y_right_bottom",
    "x_left_bottom",
    "y_left_bottom",
)
_BNDBOX = ("xmin", "ymin", "xmax", "ymax")


def _parse(path: Path) -> tuple[ET.Element, str]:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        line, col = e.position
        reason = re.sub(r": line \d+, column \d+$", "", str(e.msg if hasattr(e, "msg") else e))  # said once
        raise ParseError(path, line, f"malformed XML ({reason}, column {col})") from None
    if root.tag != "annotation":
        raise ParseError(path, 1, f"expected an <annotation> root element, got <{root.tag}>")
    return root, text


def _object_line(text: str, k: int) -> int:
    """Line number of the k-th ``<object>`` element in the file's text (for error messages)."""
    pos = -1
    for _ in range(k + 1):
        pos = text.find("<object", pos + 1)
        if pos < 0:
            return 0
    return text.count("\n", 0, pos) + 1


def _number(obj: ET.Element, parent: str, tag: str, path: Path, line: int) -> float:
    el = obj.find(f"{parent}/{tag}")
    if el is None or el.text is None:
        raise ParseError(path, line, f"object without <{parent}><{tag}>")
    try:
        value = float(el.text.strip())
    except ValueError:
        raise ParseError(path, line, f"<{parent}><{tag}> must be a number, got {el.text.strip()!r}") from None
    if not finite32(value):
        raise ParseError(path, line, f"<{parent}><{tag}> must be a finite number, got {el.text.strip()!r}")
    return value


def _name_and_difficult(obj: ET.Element, path: Path, line: int) -> tuple[str, bool]:
    name = obj.findtext("name")
    if name is None or not name.strip():
        raise ParseError(path, line, "object without <name>")
    d = (obj.findtext("difficult") or "0").strip()
    if d not in ("0", "1"):
        raise ParseError(path, line, f"<difficult> must be 0 or 1, got {d!r}")
    return name.strip(), d == "1"


def read_voc_xml(path: str | Path, classes: Sequence[str]) -> dict[str, Tensor]:
    """A DIOR (PASCAL VOC) horizontal-box XML file as a sample (``bbox_xyxy``, ``label``, ``difficult``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: malformed XML, a missing or non-numeric element, or an unknown class, naming
            the file, the line of the object and the value.
    """
    path = Path(path)
    root, text = _parse(path)
    index = class_index(classes)
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(root.iter("object")):
        line = _object_line(text, k)
        name, diff = _name_and_difficult(obj, path, line)
        labels.append(lookup_class(name, index, classes, path, line))
        boxes.append([_number(obj, "bndbox", t, path, line) for t in _BNDBOX])
        difficult.append(diff)
    return box_sample(boxes, labels, difficult, path)


def read_dior_r_xml(path: str | Path, classes: Sequence[str]) -> dict[str, Tensor]:
    """A DIOR-R oriented XML file as a sample (``bbox_xyxyxyxy``, ``bbox_xyxy``, ``label``, ``difficult``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: as ``read_voc_xml``.
    """
    path = Path(path)
    root, text = _parse(path)
    index = class_index(classes)
    polys, labels, difficult = [], [], []
    for k, obj in enumerate(root.iter("object")):
        line = _object_line(text, k)
        name, diff = _name_and_difficult(obj, path, line)
        labels.append(lookup_class(name, index, classes, path, line))
        polys.append([_number(obj, "robndbox", t, path, line) for t in ROBNDBOX_CORNERS])
        difficult.append(diff)
    return polygon_sample(polys, labels, difficult, path)


def _header(root: ET.Element, image: str, size: tuple[int, int] | None) -> None:
    ET.SubElement(root, "filename").text = image
    src = ET.SubElement(root, "source")
    ET.SubElement(src, "database").text = "DIOR"
    if size is not None:
        s = ET.SubElement(root, "size")
        ET.SubElement(s, "width").text = str(size[0])
        ET.SubElement(s, "height").text = str(size[1])
        ET.SubElement(s, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


def _write(path: Path, root: ET.Element) -> Path:
    ET.indent(root)
    with atomic_output(path) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=False)
    return path


def write_voc_xml(
    path: str | Path,
    sample: Mapping[str, Tensor],
    classes: Sequence[str],
    image: str,
    size: tuple[int, int] | None = None,
) -> Path:
    """Write ``bbox_xyxy`` boxes as a DIOR horizontal XML file (atomically).

    Args:
        path: the ``.xml`` file.
        sample: ``bbox_xyxy``, ``label``, optional ``difficult``.
        classes: class names.
        image: the image file name written to ``<filename>``.
        size: ``(width, height)`` for ``<size>``.
    """
    root = ET.Element("annotation")
    _header(root, image, size)
    boxes = torch.as_tensor(sample["bbox_xyxy"]).double().reshape(-1, 4).tolist()
    labels = torch.as_tensor(sample["label"]).reshape(-1).tolist()
    diff = (
        torch.as_tensor(sample.get("difficult", torch.zeros(len(labels), dtype=torch.bool)))
        .reshape(-1)
        .tolist()
    )
    for b, lab, d in zip(boxes, labels, diff, strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[lab]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(bool(d)))
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in zip(_BNDBOX, b, strict=True):
            ET.SubElement(bb, tag).text = _num(v)
    return _write(Path(path), root)


def write_dior_r_xml(
    path: str | Path,
    sample: Mapping[str, Tensor],
    classes: Sequence[str],
    image: str,
    size: tuple[int, int] | None = None,
) -> Path:
    """Write ``bbox_xyxyxyxy`` corners as a DIOR-R oriented XML file (atomically).

    ``<angle>`` holds the direction of the first edge in degrees (informative; readers ignore it).
    """
    root = ET.Element("annotation")
    _header(root, image, size)
    polys = torch.as_tensor(sample["bbox_xyxyxyxy"]).double().reshape(-1, 8).numpy()
    labels = torch.as_tensor(sample["label"]).reshape(-1).tolist()
    diff = (
        torch.as_tensor(sample.get("difficult", torch.zeros(len(labels), dtype=torch.bool)))
        .reshape(-1)
        .tolist()
    )
    for p, lab, d in zip(polys, labels, diff, strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "type").text = "robndbox"
        ET.SubElement(obj, "name").text = classes[lab]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(bool(d)))
        rb = ET.SubElement(obj, "robndbox")
        for tag, v in zip(ROBNDBOX_CORNERS, p.tolist(), strict=True):
            ET.SubElement(rb, tag).text = _num(v)
        angle = math.degrees(math.atan2(p[3] - p[1], p[2] - p[0]))
        ET.SubElement(obj, "angle").text = _num(float(np.round(angle, 2)))
    return _write(Path(path), root)


DIOR_HBB_DIR = "Annotations/Horizontal Bounding Boxes"
DIOR_OBB_DIR = "Annotations/Oriented Bounding Boxes"


def read_xml_folder(
    folder: str | Path, classes: Sequence[str], oriented: bool, image_ids: Sequence[str] | None = None
) -> dict[str, dict[str, Tensor]]:
    """Every ``*.xml`` of a folder (or only ``image_ids``), keyed by file stem.

    Args:
        folder: a folder of DIOR (``oriented=False``) or DIOR-R (``oriented=True``) XML files.
        classes: class names.
        oriented: read ``<robndbox>`` corners instead of ``<bndbox>``.
        image_ids: read only these (each must exist); default all.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"annotation folder not found: {folder}")
    files = sorted(folder.glob("*.xml")) if image_ids is None else [folder / f"{i}.xml" for i in image_ids]
    if not files:
        raise FileNotFoundError(f"no annotation files (*.xml) in {folder}")
    read = read_dior_r_xml if oriented else read_voc_xml
    return {f.stem: read(f, classes) for f in files}


def dior_split_ids(root: str | Path, split: str) -> list[str]:
    """Image ids of a DIOR split from ``ImageSets/Main/<split>.txt`` (``train``, ``val``, ``test``)."""
    path = Path(root) / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"DIOR split list not found: {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_dior(
    root: str | Path, split: str, classes: Sequence[str], oriented: bool = False
) -> dict[str, dict[str, Tensor]]:
    """The annotations of one DIOR / DIOR-R split, from the dataset's own layout::

    root/JPEGImages-trainval/00001.jpg ...   root/JPEGImages-test/11726.jpg ...
    root/Annotations/Horizontal Bounding Boxes/00001.xml ...
    root/Annotations/Oriented Bounding Boxes/00001.xml ...
    root/ImageSets/Main/{train,val,test}.txt
    """
    root = Path(root)
    return read_xml_folder(
        root / (DIOR_OBB_DIR if oriented else DIOR_HBB_DIR), classes, oriented, dior_split_ids(root, split)
    )
