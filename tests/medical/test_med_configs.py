"""Each medical finetune YAML runs as shipped (only the root filled in, a tiny backbone swapped in) under
fast_dev_run, over a phantom fixture written in the dataset's real on-disk layout."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml
from config_runs import smoke_cli

from vitp_geo.medical import phantoms as P

CONFIG_DIR = Path(__file__).resolve().parents[2] / "vitp_geo" / "configs" / "finetune" / "medical"


def _amos(root: Path) -> Path:
    """The AMOS22 layout: imagesTr/labelsTr/imagesVa/labelsVa, amos_XXXX.nii.gz, MSD-style dataset.json."""
    table = {n: i for i, n in enumerate(P.AMOS_CLASSES)}
    P.write_ct_dataset(root, n_cases=2, seed=1, shape=(48, 48, 8), label_table=table, max_lesions=0)
    va = P.write_ct_dataset(
        root.parent / "va", n_cases=1, seed=2, shape=(48, 48, 8), label_table=table, max_lesions=0
    )
    shutil.move(va / "imagesTr", root / "imagesVa")
    shutil.move(va / "labelsTr", root / "labelsVa")
    for sub, first in (("imagesTr", 1), ("labelsTr", 1), ("imagesVa", 500), ("labelsVa", 500)):
        for i, f in enumerate(sorted((root / sub).iterdir())):
            f.rename(f.with_name(f"amos_{first + i:04d}.nii.gz"))
    meta = {
        "name": "AMOS",
        "modality": {"0": "CT"},
        "labels": {str(i): n for i, n in enumerate(P.AMOS_CLASSES)},
        "numTraining": 2,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


FIXTURES = {
    "amos": _amos,
    "brats": lambda root: P.write_brats_dataset(root, n_cases=3, shape=(40, 40, 8)),
    "covidquex": lambda root: P.write_xray_dataset(root, n_images=2, size=64, splits=("Train", "Val")),
}


def test_the_three_medical_configs_exist() -> None:
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) == sorted(FIXTURES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_medical_config_runs_fast_dev_run(name: str, tmp_path: Path) -> None:
    cfg = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    assert cfg["data"]["init_args"]["root"] == "FILL_ME"  # the one thing to fill in
    written = copy.deepcopy(cfg["model"]["init_args"])
    cfg["data"]["init_args"]["root"] = str(FIXTURES[name](tmp_path / "data"))
    # what is loaded is unchanged; no worker processes in tests
    cfg["data"]["init_args"]["sampling"]["num_workers"] = 0
    cfg["model"]["init_args"]["backbone"].update(name="vitp_tiny_patch14_112", img_size=112, weights=None)
    cfg["model"]["init_args"]["head_channels"] = 16
    cli = smoke_cli(cfg, tmp_path)
    task, dm = cli.model, cli.datamodule
    assert task.hparams["head"] == written["head"] == "upernet" and task.hp["neck"] == "adapter"
    assert dm.class_names == written["class_names"] and len(dm.class_names) == written["num_classes"]
    cli.trainer.fit(task, datamodule=dm)
    assert cli.trainer.state.finished
    assert "train_loss" in cli.trainer.callback_metrics and "val_mIoU" in cli.trainer.callback_metrics
    card = task.model_card()
    assert (
        card.render["medical"]["rule"]
        == {"amos": "ct-windows", "brats": "mri-sequences", "covidquex": "repeat"}[name]
    )
    if name == "brats":
        assert card.render["label_values"] == [0, 1, 2, 4]  # class 3 is written back as label 4
    if name == "amos":
        assert len(dm.val_cases) == 1 and dm.val_cases[0].case_id == "amos_0500"  # imagesVa validates
