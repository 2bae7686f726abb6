"""The torchgeo-layout paper configs (LoveDA, Potsdam, LEVIR-CD) run as shipped, root filled in.

Each test reads the shipped YAML file, puts the fake dataset's folder in ``data.init_args.root``
(the one thing the file asks the user to fill) and goes through the real entry point
(``vitp-geo finetune``'s argument parser, ``load_config``, ``apply_overrides``, ``fit``) under
``fast_dev_run``. The ``data:`` section is never touched. The model section is kept too (neck,
head, classes, colours, channels, loss, schedule) except for the backbone's size: InternViT-300M
in the adapter needs ~8 GB and >12 min per step on this 2-core CPU, so the backbone is the
tiny ``vitp_tiny_patch14_112`` (and ``head_channels`` 16).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from config_runs import CPU_SMOKE_TRAINER, fill_root, finetune_args
from vitp_geo.datamodules.geotiff import IMAGENET_MEAN_255, IMAGENET_STD_255

from vitp_geo.cli import finetune
from vitp_geo.tasks import run as finetune_run
from vitp_geo.tasks.args import flat_hparams

CONFIGS = Path(__file__).resolve().parents[2] / "vitp_geo" / "configs" / "finetune"
TORCHGEO_LAYOUT_CONFIGS = {
    "loveda": ("segmentation", CONFIGS / "segmentation" / "loveda.yaml"),
    "potsdam": ("segmentation", CONFIGS / "segmentation" / "potsdam.yaml"),
    "levircd": ("change", CONFIGS / "change" / "levircd.yaml"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TORCHGEO_LAYOUT_CONFIGS))
def test_shipped_config_trains_on_the_torchgeo_layout(name: str, torchgeo_layouts, tmp_path: Path) -> None:  # noqa: ANN001
    task, shipped = TORCHGEO_LAYOUT_CONFIGS[name]
    config = fill_root(shipped, torchgeo_layouts[name], tmp_path / f"{name}.yaml")
    args = finetune_args(task, config, tmp_path / "run")
    finetune.check_args(args)
    cfg = finetune.apply_overrides(finetune_run.load_config(args.config), args)
    written = yaml.safe_load(shipped.read_text())
    assert cfg["data"] == {
        **written["data"],
        "init_args": {**written["data"]["init_args"], "root": str(torchgeo_layouts[name])},
    }
    # test-only: one step on the CPU, and a backbone that fits it (module doc)
    cfg["trainer"].update(CPU_SMOKE_TRAINER)
    cfg["model"]["init_args"]["backbone"]["name"] = "vitp_tiny_patch14_112"
    cfg["model"]["init_args"]["head_channels"] = 16
    summary = finetune_run.fit(cfg, task, args.output, progress=False, source=str(config))

    card = torch.load(args.output / "model.ckpt", map_location="cpu", weights_only=True)["vitp_geo_card"]
    model = flat_hparams(written["model"]["init_args"])
    names = model["class_names"]
    assert card["class_names"] == names
    assert card["mean"] == pytest.approx(list(IMAGENET_MEAN_255)) and card["std"] == pytest.approx(
        list(IMAGENET_STD_255)
    )
    assert card["bands"] == [1, 2, 3]  # Potsdam: R, G, B of the RGBIR tiles
    assert card["render"].get("raw") is True
    neck = "deformable_adapter"  # the paper's (InternViTAdapter) in the reference mmseg and open-cd configs
    assert card["arch"]["neck"] == model["neck"] == neck and card["arch"]["head"] == "upernet"
    val = summary["validation"]
    if task == "segmentation":
        ignore = model.get("ignore_index")
        for i, cls in enumerate(names):  # per-class scores under the config's (torchgeo-ordered) names
            assert (f"val_IoU_{cls}" in val) == (i != ignore)
        assert "val_mIoU" in val
    else:
        assert {"val_F1", "val_IoU", "val_precision", "val_recall"} <= set(val)
    if name == "potsdam":
        assert list(card["class_colors"][0]) == [255, 0, 0] and names[0] == "clutter"  # ISPRS legend, id 0


def test_the_three_configs_no_longer_name_torchgeo_datamodules() -> None:
    """torchgeo's datamodules hide ``root`` behind **kwargs, which LightningCLI refuses."""
    for _, path in TORCHGEO_LAYOUT_CONFIGS.values():
        data = yaml.safe_load(path.read_text())["data"]
        assert data["class_path"].startswith("vitp_geo.datamodules.torchgeo_benchmarks.")
        assert set(data["init_args"]) >= {"root", "sampling"}
        assert set(data["init_args"]["sampling"]) >= {"patch_size", "batch_size"}


def test_levircd_crop_is_a_multiple_of_14_for_torchgeo_changevit() -> None:
    from torchgeo.trainers import ChangeDetectionTask

    import vitp_geo.models  # noqa: F401  (registers the vitp_* names with timm)

    data = yaml.safe_load(TORCHGEO_LAYOUT_CONFIGS["levircd"][1].read_text())["data"]
    crop = data["init_args"]["sampling"]["patch_size"]
    assert crop % 14 == 0
    vit = ChangeDetectionTask(model="changevit", backbone="vitp_tiny_patch14_112", in_channels=3)
    with torch.no_grad():
        assert vit(torch.rand(1, 2, 3, crop, crop)).shape == (1, 1, crop, crop)
        with pytest.raises(AssertionError, match="divisible by patch size"):
            vit(torch.rand(1, 2, 3, 256, 256))  # open-cd's 256: why the config does not use it
