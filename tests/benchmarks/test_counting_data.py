"""benchmarks/counting_data.py: the counting examples it reads, the prior, and that it trains."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from load_script import load_script
from PIL import Image

from vitp_geo.constants import IMAGENET_MEAN, IMAGENET_STD
from vitp_geo.instruct.default_corpus import build_default_corpus

cd = load_script("benchmarks/counting_data.py", "counting_data_bench")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    build_default_corpus(out, seed=3, n_scenes=6)
    return out


def _building_counts(world: Path) -> list[tuple[str, int]]:
    """(image, count) of every building counting question on one tile, read straight from the file."""
    rows = []
    for line in (world / "annotations.jsonl").read_text().splitlines():
        rec = json.loads(line)
        q = rec["conversations"][0]["value"].lower()
        if rec["task"] == "counting" and re.search(r"\bbuildings?\b", q) and isinstance(rec["image"], str):
            with Image.open(world / rec["image"]) as im:
                if im.size == (112, 112):
                    rows.append((rec["image"], int(rec["conversations"][1]["value"])))
    return rows


def test_examples_are_the_worlds_building_counts(world: Path) -> None:
    expected = _building_counts(world)
    assert len(expected) >= 5, "the world should ask about buildings"
    x, y = cd.counting_examples(world, "building", max_count=6)
    assert x.shape == (len(expected), 3, 112, 112)
    assert y.tolist() == [min(c, 6) - 1 for _, c in expected]
    # the first tile, normalised with InternVL's ImageNet statistics
    pixels = np.asarray(Image.open(world / expected[0][0]).convert("RGB"), np.float32) / 255.0
    ref = (pixels.transpose(2, 0, 1) - np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]) / np.asarray(
        IMAGENET_STD, np.float32
    )[:, None, None]
    np.testing.assert_allclose(x[0].numpy(), ref, rtol=0, atol=1e-6)
    # a cap of 2 folds every count of 2 or more into one label
    _, y2 = cd.counting_examples(world, "building", max_count=2)
    assert y2.tolist() == [min(c, 2) - 1 for _, c in expected]


def test_other_classes_and_bad_counts(world: Path, tmp_path: Path) -> None:
    # the embedded world never counts roads (a stripe is not an object)
    with pytest.raises(ValueError, match="no counting question about 'road'"):
        cd.counting_examples(world, "road", max_count=6)
    # a counting answer that is not a positive number names the file and the record
    lines = (world / "annotations.jsonl").read_text().splitlines()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "images").symlink_to(world / "images")
    out = []
    for line in lines:
        rec = json.loads(line)
        if rec["task"] == "counting" and "building" in rec["conversations"][0]["value"].lower():
            rec["conversations"][1]["value"] = "many"
            out.append(json.dumps(rec))
            break
    (bad / "annotations.jsonl").write_text("\n".join(out) + "\n")
    with pytest.raises(ValueError, match=r"annotations\.jsonl: record .*counting.*'many'"):
        cd.counting_examples(bad, "building", max_count=6)


def test_prior_is_the_most_common_training_count() -> None:
    train = torch.tensor([0, 0, 0, 1, 2])
    test = torch.tensor([0, 1, 1, 0])
    assert cd.prior_accuracy(train, test) == 0.5
    assert cd.prior_accuracy(torch.tensor([2, 2, 1]), test) == 0.0


def test_training_learns_a_count_the_image_decides_and_not_one_it_does_not() -> None:
    """Label 0: dark tiles, label 1: bright tiles. Learnable labels score 1.0 on new tiles;
    the same tiles with labels drawn at random score about the prior."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (96,), generator=g)
    x = (y.float() * 2 - 1)[:, None, None, None] + 0.3 * torch.randn(96, 3, 112, 112, generator=g)
    train, test = (x[:64], y[:64]), (x[64:], y[64:])
    train_acc, unseen_acc = cd.train_and_score(train, test, n_counts=2, steps=30, batch_size=16, seed=0)
    assert train_acc == 1.0 and unseen_acc == 1.0
    noise = torch.randint(0, 2, (96,), generator=g)
    _, unseen_noise = cd.train_and_score(
        (x[:64], noise[:64]), (x[64:], noise[64:]), n_counts=2, steps=30, batch_size=16, seed=0
    )
    assert unseen_noise < 0.8
