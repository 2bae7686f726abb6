"""A seeded corpus whose answer is the image's colour: the image decides every answer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vitp_geo.instruct.records import InstructionRecord, write_jsonl

COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 200), "yellow": (220, 210, 40)}


def write_colour_corpus(root: Path, sizes: Sequence[int], tasks: Sequence[str]) -> Path:
    """``images/{i}.png`` of side ``sizes[i]`` in colour ``i % 4`` (noisy), one record per task each."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    recs = []
    names = list(COLOURS)
    for i, size in enumerate(sizes):
        colour = names[i % 4]
        arr = np.clip(np.array(COLOURS[colour])[None, None] + rng.normal(0, 10, (size, size, 3)), 0, 255)
        Image.fromarray(arr.astype(np.uint8)).save(root / "images" / f"{i}.png")
        for k, task in enumerate(tasks):
            recs.append(
                InstructionRecord(
                    id=f"img{i}_{task}",
                    images=[f"images/{i}.png"],
                    conversations=[
                        {"from": "human", "value": f"<image>\nWhat colour is this image? case {i} {k}"},
                        {"from": "gpt", "value": colour},
                    ],
                    task=task,
                )
            )
    write_jsonl(root / "annotations.jsonl", recs)
    return root
