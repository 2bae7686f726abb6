"""Helpers shared by the builder tests: read a built corpus back."""

from __future__ import annotations

import json
import re
from pathlib import Path

from vitp_geo.instruct.records import InstructionRecord, read_jsonl

TILE_RE = re.compile(r"r(\d+)_c(\d+)\.png$")


def records(out: Path) -> list[InstructionRecord]:
    return read_jsonl(out / "annotations.jsonl").records


def by_task(out: Path, task: str) -> list[InstructionRecord]:
    return [r for r in records(out) if r.task == task]


def answer(rec: InstructionRecord) -> str:
    return rec.conversations[-1]["value"]


def question(rec: InstructionRecord) -> str:
    return rec.conversations[0]["value"]


def tile_origin(image: str) -> tuple[int, int]:
    """(row, col) of a tile from its image name."""
    m = TILE_RE.search(image)
    assert m is not None, image
    return int(m.group(1)), int(m.group(2))


def recipe(out: Path) -> dict:
    return json.loads((out / "recipe.json").read_text())
