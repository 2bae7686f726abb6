"""Shared fixtures of the catalogue tests: a tiny checkpoint, 6 scenes in a STAC catalogue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from catalogue_helpers import SMALL, TILE, write_scenes, write_stac_catalog
from tiny_checkpoints import save_tiny_segmentation_checkpoint

from vitp_geo.cli.main import main


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Everything these tests compare runs on one torch thread: Ray actors and pool workers do by
    default (``--threads``), and a float sum split over another number of threads may differ in
    its last bit, so the in-process runs (``infer`` alone, the local engine) use one thread too,
    whatever the machine's default (the probabilities are compared bit for bit)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny checkpoint, 6 scenes in a STAC catalogue, and the one-scene `infer` result of each."""
    root = tmp_path_factory.mktemp("catalogue")
    ckpt = save_tiny_segmentation_checkpoint(
        root / "tiny.ckpt", tile_size=TILE, mean=[120.0, 110.0, 100.0], std=[50.0, 45.0, 40.0]
    )
    scenes = write_scenes(root / "scenes", 6, SMALL)
    catalog = write_stac_catalog(root, scenes)
    alone = root / "alone"
    alone.mkdir()
    for s in scenes:
        rc = main(
            ["infer", str(s), "--checkpoint", str(ckpt), "--out", str(alone / f"{s.stem}.tif"),
             "--probabilities", str(alone / f"{s.stem}_p.tif"), "--no-progress"]
        )  # fmt: skip
        assert rc == 0
    return {"root": root, "ckpt": ckpt, "catalog": catalog, "scenes": root / "scenes", "alone": alone}
