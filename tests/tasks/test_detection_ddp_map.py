"""Validation mAP under DDP is the mAP of the whole split, not of each rank's share.

Two CPU processes (gloo) each hold half of the validation images; both must log the AP that one
process holding every image logs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vitp_geo.models.detection.rcnn import BoxType
from vitp_geo.tasks.detection import ObjectDetectionTask, detection_scores


def _entry(gt: list[list[float]], pred: list[list[float]], scores: list[float]) -> dict[str, torch.Tensor]:
    return {
        "pred_boxes": torch.tensor(pred, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "pred_labels": torch.zeros(len(pred), dtype=torch.int64),
        "gt_boxes": torch.tensor(gt, dtype=torch.float32).reshape(-1, 4),
        "gt_labels": torch.zeros(len(gt), dtype=torch.int64),
    }


def _images() -> list[dict[str, torch.Tensor]]:
    """Rank 0's half: every object found with high scores. Rank 1's half: high-scoring false
    positives and a missed object, so the two halves' APs differ from each other and the whole's."""
    b = [10.0, 10.0, 50.0, 50.0]
    far = [200.0, 200.0, 240.0, 240.0]
    return [
        _entry([b], [b], [0.9]),
        _entry([b, far], [b, far], [0.85, 0.8]),
        _entry([b], [far, b], [0.95, 0.5]),
        _entry([b, far], [[100.0, 100.0, 140.0, 140.0]], [0.99]),
    ]


class _Task:
    """What ``ObjectDetectionTask._log_map`` uses of the task; ``log_dict`` records."""

    box_type = BoxType.HBB
    class_names = ["thing"]

    def __init__(self, store: list[dict[str, torch.Tensor]]) -> None:
        self._eval_store = {"val": store, "test": []}
        self.logged: dict[str, float] = {}

    def log_dict(self, values: dict[str, float], **_: Any) -> None:
        self.logged.update({k: float(v) for k, v in values.items()})


def _rank(rank: int, world: int, tmp: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world)
    try:
        half = _images()[2 * rank : 2 * rank + 2]
        task = _Task(half)
        ObjectDetectionTask._log_map(task, "val")  # type: ignore[arg-type]
        assert task._eval_store["val"] == []  # cleared for the next epoch
        Path(tmp, f"rank{rank}.json").write_text(json.dumps(task.logged))
    finally:
        dist.destroy_process_group()


def test_two_ranks_log_the_map_of_the_whole_split(tmp_path: Path) -> None:
    whole = detection_scores(_images(), BoxType.HBB, ["thing"])["map50"]
    halves = [detection_scores(_images()[k : k + 2], BoxType.HBB, ["thing"])["map50"] for k in (0, 2)]
    assert all(abs(h - whole) > 0.05 for h in halves)  # a per-rank value would be visibly wrong
    mp.spawn(_rank, args=(2, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        logged = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert logged == {"val_map50": pytest.approx(whole)}


def test_one_process_is_unchanged() -> None:
    task = _Task(_images())
    ObjectDetectionTask._log_map(task, "val")  # type: ignore[arg-type]
    assert task.logged == {
        "val_map50": pytest.approx(detection_scores(_images(), BoxType.HBB, ["thing"])["map50"])
    }
