"""benchmarks/base_probe.py: its counts are the corpus's answers, its probe reads what features carry, MIM learns."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from load_script import load_script

from vitp_geo.pretrain.base import BaseSpec

bp = load_script("benchmarks/base_probe.py", "base_probe_bench")


@pytest.mark.parametrize("scene_class", [0, 1, 2])
def test_tile_counts_are_the_answers_of_the_corpus_counting_questions(
    tmp_path: Path, scene_class: int
) -> None:
    """A tile's patch counts add up to what the vector builder answers to "How many X?" about it."""
    from vitp_geo.instruct.builders import VectorSource, build_corpus
    from vitp_geo.instruct.builders.tile_places import Tile
    from vitp_geo.instruct.records import read_jsonl
    from vitp_geo.instruct.templates import class_fields
    from vitp_geo.synthetic.scene import generate_scene, write_scene

    scene = generate_scene(bp.PROBE_SEED + scene_class, 224, scene_class=scene_class)
    labels = bp.scene_labels(scene)
    paths = write_scene(scene, tmp_path / "scenes", stem="s")
    source = VectorSource(paths.image, paths.objects, class_field="class_name", tile_size=112, overlap=0.0)
    result = build_corpus(tmp_path / "corpus", [source], seed=0, overwrite=True)
    records = [r for r in read_jsonl(result.annotation).records if r.task == "counting"]
    assert records
    for r in records:
        row, col = (int(v) for v in re.search(r"r(\d+)_c(\d+)", r.images[0]).groups())  # type: ignore[union-attr]
        question, answer = r.conversations[0]["value"], r.conversations[1]["value"]
        (k,) = [k for k, n in enumerate(bp.COUNTED) if class_fields(n)["plural"] in question]
        counts = bp.patch_counts(labels, Tile(row, col, 112, 112))
        assert counts.shape == (8, 8, 3)
        assert counts[..., k].sum() == int(answer), (r.images[0], question, answer)
    # the whole scene as one window counts every object once
    whole = bp.patch_counts(labels, Tile(0, 0, 224, 224), patch=28)
    for k, name in enumerate(bp.COUNTED):
        assert whole[..., k].sum() == sum(o["class_name"] == name for o in scene.objects)


def test_the_count_probe_reads_counts_that_features_carry_and_not_otherwise() -> None:
    _, fit_c = bp.count_world(6, bp.PROBE_SEED)
    _, test_c = bp.count_world(4, bp.PROBE_SEED + 6)
    g = torch.Generator().manual_seed(0)

    def carrying(c: np.ndarray) -> torch.Tensor:  # the patch counts themselves plus noise dimensions
        f = torch.from_numpy(c.reshape(len(c), -1, 3)).float()
        return torch.cat([f, torch.randn(f.shape[0], f.shape[1], 5, generator=g)], -1)

    good = bp.count_probe(carrying(fit_c), fit_c, carrying(test_c), test_c)
    assert good["building"].tiles > 0 and good["building"].accuracy == 1.0 and good["building"].mae < 0.3
    flat = bp.count_probe(torch.ones(len(fit_c), 64, 4), fit_c, torch.ones(len(test_c), 64, 4), test_c)
    assert flat["building"].accuracy <= flat["building"].prior  # one answer for every tile
    assert flat["building"].accuracy < good["building"].accuracy


def test_masked_image_modelling_learns_and_is_kept(tmp_path: Path) -> None:
    spec = BaseSpec(scenes=3, steps=40, batch_size=8)
    vit, losses = bp.train_mim(spec)
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.95 * np.mean(losses[:5])
    first = bp.mim_base(tmp_path, BaseSpec(scenes=3, steps=2, batch_size=4))
    stamp = first.parent / "mim.json"
    made = stamp.stat().st_mtime_ns
    again = bp.mim_base(tmp_path, BaseSpec(scenes=3, steps=2, batch_size=4))
    assert again == first and stamp.stat().st_mtime_ns == made  # reused, not trained again
    bp.mim_base(tmp_path, BaseSpec(scenes=3, steps=3, batch_size=4))  # other settings: rebuilt
    assert stamp.stat().st_mtime_ns != made
