"""The tile-folder finetune YAMLs (iSAID, UAVid, WHU-CD, S2Looking, SVCD) run with fast_dev_run:
their data section as shipped with only ``root`` filled, over fixtures in each dataset's own
layout (``tests/tasks/folder_layouts.py``), and their model settings as written (neck, head,
loss, classes, schedule) with a tiny backbone. The torchgeo-layout configs (LoveDA, Potsdam, LEVIR-CD)
keep their data section and run over fake datasets in torchgeo's layouts instead:
``tests/tasks/test_benchmark_configs.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from config_runs import fill_root, smoke_cli

from tasks.folder_layouts import VAL_SAMPLES, WRITERS
from vitp_geo.tasks.args import flat_hparams

CONFIGS = sorted(
    p
    for p in (Path(__file__).resolve().parents[2] / "vitp_geo" / "configs" / "finetune").glob("*/*.yaml")
    if p.parent.name in ("segmentation", "change")  # medical/, detection/: their own config tests
)
TORCHGEO_LAYOUT = {
    "segmentation/loveda",
    "segmentation/potsdam",
    "change/levircd",
}  # run as shipped elsewhere
FOLDER_CONFIGS = [p for p in CONFIGS if f"{p.parent.name}/{p.stem}" not in TORCHGEO_LAYOUT]


def test_all_eight_paper_configs_exist() -> None:
    names = {f"{p.parent.name}/{p.stem}" for p in CONFIGS}
    assert names == {
        "segmentation/loveda",
        "segmentation/isaid",
        "segmentation/uavid",
        "segmentation/potsdam",
        "change/levircd",
        "change/whu",
        "change/s2looking",
        "change/svcd",
    }


@pytest.mark.slow
@pytest.mark.parametrize("path", FOLDER_CONFIGS, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_shipped_data_section_trains_on_the_datasets_own_layout(path: Path, tmp_path: Path) -> None:
    """The data section as shipped, only ``root`` filled, over a fixture in the dataset's layout."""
    name = f"{path.parent.name}/{path.stem}"
    root = WRITERS[name](tmp_path / "data")
    cfg = yaml.safe_load(fill_root(path, root, tmp_path / "config.yaml").read_text())
    written = yaml.safe_load(path.read_text())
    assert cfg["data"] == {
        **written["data"],
        "init_args": {**written["data"]["init_args"], "root": str(root)},
    }
    model = cfg["model"]["init_args"]
    # test-only: a backbone that fits this CPU (tests/tasks/test_benchmark_configs.py's module doc)
    model["backbone"].update(name="vitp_tiny_patch14_112", img_size=112, weights=None)
    model["head_channels"] = 16
    cli = smoke_cli(cfg, tmp_path)
    task, dm = cli.model, cli.datamodule
    # the paper's deformable ViT-Adapter in the segmentation and change configs (issue 17)
    neck = (
        "deformable_adapter"  # the reference mmseg and open-cd configs both use InternViTAdapter (deformable)
    )
    assert task.hp["neck"] == flat_hparams(written["model"]["init_args"])["neck"] == neck
    cli.trainer.fit(task, datamodule=dm)
    assert cli.trainer.state.finished and "train_loss" in cli.trainer.callback_metrics
    monitor = "val_mIoU" if path.parent.name == "segmentation" else "val_F1"
    assert monitor in cli.trainer.callback_metrics
    # the datamodule read the fixture's files, and its labels as the dataset encodes them
    assert len(dm.val_dataset) == VAL_SAMPLES[name]
    masks = [dm.train_dataset[i]["mask"] for i in range(len(dm.train_dataset))]
    values = set(torch.cat([m.flatten() for m in masks]).tolist())
    if path.parent.name == "segmentation":
        assert values == set(range(16 if "isaid" in name else 8)) and max(values) < model["num_classes"]
    else:  # 0 / 255 (WHU, S2Looking) and JPEG-noisy (SVCD) labels become exactly one 24 x 20 block
        assert values == {0, 1} and all(int(m.sum()) == 24 * 20 for m in masks)


# The reference's values (zcablii/ViTP mmseg / open-cd configs), as issue 17 lists them:
# lr, weight decay, layer decay, iterations, schedule, warm-up, training crop, change fusion.
REPO_CONFIGS = Path(__file__).resolve().parents[2] / "vitp_geo" / "configs" / "finetune"
REFERENCE_VALUES = {
    "segmentation/isaid": (1.5e-5, 0.05, 0.9, 80000, "cosine", 1500, 896, None),
    "segmentation/loveda": (1e-5, 0.1, 0.9, 80000, "cosine", 1500, 512, None),
    "segmentation/uavid": (1e-5, 0.05, 0.9, 80000, "cosine", 1500, 768, None),
    "change/levircd": (1e-4, 0.05, 0.9, 80000, "cosine", 1500, 266, "concat"),  # 256 there; 266 = 19 × 14
    "change/s2looking": (2e-5, 0.05, 0.9, 120000, "poly", 1000, 512, "concat"),
    "change/svcd": (2e-5, 0.05, 0.94, 120000, "poly", 1000, 256, "concat"),
    "change/whu": (2e-5, 0.05, 0.9, 120000, "poly", 1000, 256, "concat"),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_VALUES))
def test_shipped_values_are_the_reference_values(name: str) -> None:
    cfg = yaml.safe_load((REPO_CONFIGS / f"{name}.yaml").read_text())
    m, d = flat_hparams(cfg["model"]["init_args"]), cfg["data"]["init_args"]
    lr, wd, decay, steps, schedule, warmup, crop, fusion = REFERENCE_VALUES[name]
    assert (m["lr"], m["weight_decay"], m["layer_decay"]) == (pytest.approx(lr), wd, decay)
    assert (cfg["trainer"]["max_steps"], m["schedule"], m["warmup_steps"]) == (steps, schedule, warmup)
    assert d["sampling"]["patch_size"] == crop and m.get("fusion") == fusion and m["drop_path_rate"] == 0.1
