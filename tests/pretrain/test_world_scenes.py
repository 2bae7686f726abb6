"""--world-scenes: the size of the embedded rs world, checked against a run folder's corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vitp_geo.cli.main import main
from vitp_geo.instruct.default_corpus import DEFAULT_N_SCENES, build_default_corpus
from vitp_geo.pretrain.config import PretrainConfig

QUICK = ["--max-steps", "1", "--batch-size", "2", "--reliance-records", "0", "--no-unseen-world"]


def _scenes(corpus: Path) -> int:
    return sum(
        1
        for d in (corpus / "images").iterdir()
        if d.is_dir() and d.name.startswith("scene_") and d.name[6:].isdigit()
    )


def test_bad_sizes_and_other_corpora_are_refused() -> None:
    with pytest.raises(ValueError, match=r"world-scenes must be >= 3 \(one scene per scene class\), got 2"):
        PretrainConfig(world_scenes=2).validate()
    with pytest.raises(ValueError, match="world-scenes applies to the embedded rs corpus only"):
        PretrainConfig(domain="med", world_scenes=96).validate()
    with pytest.raises(ValueError, match="--data r.json"):
        PretrainConfig(data="r.json", world_scenes=96).validate()
    PretrainConfig(world_scenes=3).validate()


def test_the_run_trains_on_a_world_of_that_size_and_records_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["pretrain", "--output", str(out), "--world-scenes", "6", *QUICK]) == 0
    assert _scenes(out / "corpus") == 6
    spec = json.loads((out / "backbone.json").read_text())
    assert spec["pretraining"]["world_scenes"] == 6
    # the default records the builder's size too
    default = tmp_path / "default"
    assert main(["pretrain", "--output", str(default), *QUICK]) == 0
    assert (
        json.loads((default / "backbone.json").read_text())["pretraining"]["world_scenes"] == DEFAULT_N_SCENES
    )
    # the corpus says what it was built with
    assert json.loads((out / "corpus" / "world.json").read_text()) == {
        "domain": "rs",
        "seed": 0,
        "question_first": 0.0,
        "world_scenes": 6,
    }
    # --overwrite with the same settings reuses the corpus
    assert main(["pretrain", "--output", str(out), "--overwrite", "--world-scenes", "6", *QUICK]) == 0


def test_overwrite_with_another_seed_is_refused_not_trained_on_the_old_world(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, --overwrite --seed 1 trained on the seed-0 world left in the folder, silently."""
    out = tmp_path / "run"
    assert main(["pretrain", "--output", str(out), "--world-scenes", "3", *QUICK]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    args = ["pretrain", "--output", str(out), "--overwrite", "--world-scenes", "3", "--seed", "1", *QUICK]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{out / 'corpus'} was built for --seed 0 and this run asks for --seed 1" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    ("built", "flags", "asked"), [(6, ["--world-scenes", "9"], 9), (6, [], DEFAULT_N_SCENES)]
)
def test_a_run_folder_with_another_world_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], built: int, flags: list[str], asked: int
) -> None:
    """The corpus of a run folder is reused (resume, --overwrite): another size would be ignored.

    A corpus built before ``world.json`` existed (as here) is checked on its scene folders."""
    out = tmp_path / "run"
    build_default_corpus(out / "corpus", seed=0, n_scenes=built)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["pretrain", "--output", str(out), "--overwrite", *flags, *QUICK]) == 2
    err = capsys.readouterr().err
    assert (
        f"{out / 'corpus'} was built for --world-scenes {built} and this run asks for --world-scenes {asked}"
        in err
    )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
