"""One normalisation rule for every finetune config: training, the model card, inference and
pretraining turn the same pixel into the same model input.

The rule: ``(x − mean) / std`` on 0–255 band values, with ImageNet's statistics × 255 for three
bands — what pretraining feeds the ViT (``vitp_geo.vlm.dynamic_tiles.to_pixel_values``) — and
``mean`` 0 / ``std`` 255 for other band counts, unless a config sets its own. The datamodule
applies it, the task copies it into the model card, ``vitp-geo infer`` applies the card's.
A config that fed ``x / 255`` (torchgeo's datamodules' default) fails here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
import yaml
from affine import Affine
from lightning.pytorch.cli import instantiate_class
from PIL import Image

from vitp_geo.io.raster import RenderRule
from vitp_geo.tasks import ChangeDetectionTask, SegmentationTask
from vitp_geo.tasks.args import BackboneArgs
from vitp_geo.tiling.reader import SceneWindowReader
from vitp_geo.vlm.dynamic_tiles import to_pixel_values

# Remote-sensing configs; the medical ones map intensities by their own presets (docs/medical.md),
# tested in tests/medical/.
CONFIGS = sorted(
    p
    for p in (Path(__file__).resolve().parents[2] / "vitp_geo" / "configs" / "finetune").glob("*/*.yaml")
    if p.parent.name in ("segmentation", "change")
)
PIXEL = (200, 100, 50)  # R, G, B in 0–255
IR = 30  # Potsdam's fourth band


def _scene(path: Path, bands: int) -> Path:
    """A 4 x 4 GeoTIFF of one colour (R, G, B [, IR])."""
    values = [*PIXEL, IR][:bands]
    data = np.stack([np.full((4, 4), v, np.uint8) for v in values])
    with rasterio.open(
        path, "w", driver="GTiff", dtype="uint8", count=bands, height=4, width=4,
        crs="EPSG:32633", transform=Affine(1.0, 0.0, 0.0, 0.0, -1.0, 4.0),
    ) as dst:  # fmt: skip
        dst.write(data)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_config_feeds_pretraining_statistics_in_training_and_inference(path: Path, tmp_path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    data = copy.deepcopy(cfg["data"])
    data["init_args"]["root"] = str(tmp_path)  # constructing reads no files
    dm = instantiate_class((), data)
    change = path.parent.name == "change"
    bands = list(getattr(dm, "bands", None) or [1, 2, 3])

    # pretraining: the ViT's input for this colour
    expected = to_pixel_values([Image.new("RGB", (8, 8), PIXEL)])[0, :, 0, 0]  # (3,)

    # training: the datamodule's normalisation (no trainer attached: no flips)
    pixel = torch.tensor([*PIXEL, IR][: len(bands)], dtype=torch.float32)
    image = pixel.view(1, -1, 1, 1).expand(1, len(bands), 4, 4).clone()
    batch = {
        "image": torch.cat([image, image], 1) if change else image,
        "mask": torch.zeros(1, 4, 4, dtype=torch.long),
    }
    fed = dm.on_after_batch_transfer(batch, 0)["image"].reshape(1, -1, 4, 4)[0, :, 0, 0]
    torch.testing.assert_close(fed[:3], expected, atol=1e-5, rtol=1e-5)
    if change:
        torch.testing.assert_close(fed[3:6], expected, atol=1e-5, rtol=1e-5)  # the second date alike

    # the model card the task writes, and inference reading a scene with it
    task = (ChangeDetectionTask if change else SegmentationTask)(
        head_channels=8, backbone=BackboneArgs(in_channels=len(bands))
    )
    task._trainer = SimpleNamespace(datamodule=dm)  # type: ignore[assignment]  # what Trainer.fit attaches
    card = task.model_card()
    scene = _scene(tmp_path / "scene.tif", max(bands))
    with SceneWindowReader(
        [scene, scene] if change else [scene],
        RenderRule(bands=tuple(card.bands)),
        card.mean,
        card.std,
        raw=True,
    ) as reader:
        x, _ = reader.read(0, 0, 4, 4)
    np.testing.assert_allclose(x[:, 0, 0], fed.numpy(), atol=1e-5)


def test_card_warns_when_the_datamodule_does_not_say_what_it_fed() -> None:
    task = SegmentationTask(head_channels=8)
    task._trainer = SimpleNamespace(datamodule=SimpleNamespace(setup=lambda stage: None))  # type: ignore[assignment]
    with pytest.warns(UserWarning, match="neither the task nor the datamodule sets mean"):
        card = task.model_card()
    assert card.mean == [0.0] * 3 and card.std == [255.0] * 3  # recorded as the x / 255 it guesses
