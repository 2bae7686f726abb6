"""Shared fixtures of the catalogue tests: a tiny checkpoint, 6 scenes in a STAC catalogue."""

from __future__ import annotations

from pathlib import Path

import pytest
from catalogue_helpers import SMALL, TILE, write_scenes, write_stac_catalog
from tiny_checkpoints import save_tiny_segmentation_checkpoint

from vitp_geo.cli.main import main


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
