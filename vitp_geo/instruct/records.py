"""Instruction records in the InternVL / LLaVA conversation JSONL format.

One JSON object a line::

    {"id": "tile_0003_ground", "image": "images/tile_0003.png",
     "conversations": [{"from": "human", "value": "<image>\\nWhere are the buildings?"},
                       {"from": "gpt", "value": "<ref>building</ref><box>[[12, 40, 98, 120]]</box>"}],
     "task": "grounding", "modality": "optical"}

``image`` is a path or a list of paths relative to the recipe ``root``; the human turns hold one
``<image>`` placeholder per image. Boxes are ``[x1, y1, x2, y2]`` integers in 0–1000 coordinates of
the image they refer to. Extra keys (``task``, ``modality``) are ignored by InternVL and used by our
statistics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vitp_geo.io.atomic import atomic_output

IMAGE_PLACEHOLDER = "<image>"
BOX_SCALE = 1000  # InternVL grounding boxes live in [0, 1000]


class RecordError(ValueError):
    """A malformed instruction record; the message starts with ``file:line``."""


@dataclass
class InstructionRecord:
    """One conversation about zero or more images."""

    id: str
    images: list[str]
    conversations: list[dict[str, str]]
    task: str = "unknown"
    modality: str = "optical"
    extra: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"id": self.id}
        if self.images:
            out["image"] = self.images[0] if len(self.images) == 1 else list(self.images)
        out["conversations"] = self.conversations
        out["task"] = self.task
        out["modality"] = self.modality
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, obj: object, where: str = "<record>") -> InstructionRecord:
        """Validate and build a record; errors name ``where`` (``file:line``)."""
        if not isinstance(obj, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        image = obj.get("image", [])
        images = [image] if isinstance(image, str) else image
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise RecordError(f"{where}: 'image' must be a path or a list of paths, got {image!r}")
        conv = obj.get("conversations")
        if not isinstance(conv, list) or not conv:
            raise RecordError(f"{where}: 'conversations' must be a non-empty list")
        for i, turn in enumerate(conv):
            if not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt", "system"):
                raise RecordError(f"{where}: turn {i} must have 'from' in human/gpt/system, got {turn!r}")
            if not isinstance(turn.get("value"), str):
                raise RecordError(f"{where}: turn {i} has no string 'value'")
        n_placeholders = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in conv)
        if n_placeholders not in (0, len(images)):
            raise RecordError(
                f"{where}: {len(images)} image(s) but {n_placeholders} '{IMAGE_PLACEHOLDER}' placeholder(s)"
            )
        known = {"id", "image", "conversations", "task", "modality"}
        return cls(
            id=str(obj.get("id", where)),
            images=list(images),
            conversations=[dict(t) for t in conv],
            task=str(obj.get("task", "unknown")),
            modality=str(obj.get("modality", "optical")),
            extra={k: v for k, v in obj.items() if k not in known},
        )


@dataclass
class ReadResult:
    """Records read from a JSONL file and the bad lines that were skipped (``file:line: why``)."""

    records: list[InstructionRecord]
    skipped: list[str]


def read_jsonl(path: str | Path, *, skip_bad: bool = False) -> ReadResult:
    """Read a JSONL file of records.

    Args:
        path: the file.
        skip_bad: skip lines that do not parse or validate (and list them) instead of raising.

    Raises:
        FileNotFoundError: the file does not exist.
        RecordError: a bad line, named as ``file:line``, when ``skip_bad`` is False.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"annotation file not found: {path}")
    records: list[InstructionRecord] = []
    skipped: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise RecordError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from err
                records.append(InstructionRecord.from_json(obj, where))
            except RecordError as err:
                if not skip_bad:
                    raise
                skipped.append(str(err))
    return ReadResult(records, skipped)


def write_jsonl(path: str | Path, records: Iterable[InstructionRecord]) -> Path:
    """Write records as JSONL, atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        with tmp.open("w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec.to_json(), ensure_ascii=False) + "\n")
    return path


def normalize_box(box: Sequence[float], width: float, height: float) -> tuple[int, int, int, int]:
    """Pixel box (x1, y1, x2, y2) in an image of ``width``×``height`` → 0–1000 integer box."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {(width, height)}")
    x1, y1, x2, y2 = box
    sx, sy = BOX_SCALE / width, BOX_SCALE / height

    def clip(v: float) -> int:
        return int(min(max(round(v), 0), BOX_SCALE))

    return clip(x1 * sx), clip(y1 * sy), clip(x2 * sx), clip(y2 * sy)


def denormalize_box(box: Sequence[float], width: float, height: float) -> tuple[float, float, float, float]:
    """0–1000 box → pixel box in an image of ``width``×``height``."""
    x1, y1, x2, y2 = box
    return (x1 * width / BOX_SCALE, y1 * height / BOX_SCALE, x2 * width / BOX_SCALE, y2 * height / BOX_SCALE)


def format_boxes(boxes: Sequence[Sequence[int]]) -> str:
    """``[[x1, y1, x2, y2], ...]`` as InternVL writes it inside ``<box>``."""
    return "[" + ", ".join("[" + ", ".join(str(int(v)) for v in b) + "]" for b in boxes) + "]"


def format_grounding(label: str, boxes: Sequence[Sequence[int]]) -> str:
    """``<ref>label</ref><box>[[...]]</box>``."""
    return f"<ref>{label}</ref><box>{format_boxes(boxes)}</box>"


_BOX_RE = re.compile(r"<box>(.*?)</box>", re.S)


def parse_boxes(text: str) -> list[list[int]]:
    """All boxes in a text (from every ``<box>…</box>``), as integer lists."""
    out: list[list[int]] = []
    for body in _BOX_RE.findall(text):
        for group in re.findall(r"\[([^\[\]]+)\]", body):
            out.append([int(round(float(v))) for v in group.split(",")])
    return out
