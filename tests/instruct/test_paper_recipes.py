"""The paper recipe templates carry the ViTP reference mixtures (ViTP_configs/ft_data_*.json)."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from vitp_geo.instruct.recipe import effective_count, load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "recipes"

# (file, datasets in the reference meta file, sum of floor(length · repeat_time) over them)
EXPECTED = [
    ("rs_paper.yaml", 36, 1_088_702),
    ("med_paper.yaml", 20, 1_048_143),
    ("general_paper.yaml", 8, 1_023_375),
]


def _raw(name: str) -> dict[str, dict]:
    return yaml.safe_load((RECIPES / name).read_text(encoding="utf-8"))["datasets"]


@pytest.mark.parametrize(("name", "n_datasets", "total"), EXPECTED)
def test_template_parses_and_matches_reference_totals(name, n_datasets, total):
    entries = load_recipe(RECIPES / name)
    raw = _raw(name)
    assert [e.name for e in entries] == list(raw) and len(entries) == n_datasets
    assert all("FILL_ME" in str(e.root) and "FILL_ME" in str(e.annotation) for e in entries)
    # Effective samples per epoch from the file's own fields, two ways (loader arithmetic, exact).
    assert sum(effective_count(raw[e.name]["length"], e.repeat_time) for e in entries) == total
    exact = sum(
        math.floor(Fraction(str(d["length"])) * Fraction(str(d["repeat_time"]))) for d in raw.values()
    )
    assert exact == total
    # The header states the same figure.
    assert f"= {total:,}." in (RECIPES / name).read_text(encoding="utf-8")
    for d in raw.values():
        assert isinstance(d["length"], int) and d["length"] > 0
        assert d["task"] and d["modality"] and d["domain"] in ("rs", "medical", "general")


@pytest.mark.parametrize("name", ["rs_paper.yaml", "med_paper.yaml"])
def test_domain_mixtures_keep_a_share_of_general_data(name):
    raw = _raw(name)
    general = {n for n, d in raw.items() if d["domain"] == "general"}
    assert general == set(_raw("general_paper.yaml"))  # the same eight general sets, at low rates
    assert all(raw[n]["repeat_time"] <= 0.02 for n in general)


def test_known_reference_entries():
    rs = {e.name: e for e in load_recipe(RECIPES / "rs_paper.yaml")}
    raw = _raw("rs_paper.yaml")
    assert raw["cls_rgb_Million-AID"]["length"] == 920057 and rs["cls_rgb_Million-AID"].repeat_time == 0.01
    assert rs["cls_rgb_Million-AID"].max_dynamic_patch == 12
    assert (
        raw["cls_rgb_Million-AID"]["task"] == ["classification"]
        and raw["cls_rgb_Million-AID"]["modality"] == "rgb"
    )
    assert raw["cls_sar_Sentinel-1&2_Image_Pairs"]["modality"] == "sar"
    assert raw["rsvg_train"]["length"] == 5505 and rs["rsvg_train"].repeat_time == 10
    assert raw["cls_rgb_UCM"]["data_augment"] is True
    assert rs["cls_rgb_NWPU-RESISC45"].max_dynamic_patch is None  # not set in the reference
    med = {e.name: e for e in load_recipe(RECIPES / "med_paper.yaml")}
    raw_med = _raw("med_paper.yaml")
    assert raw_med["pmc_oa"]["length"] == 1646527 and med["pmc_oa"].repeat_time == 0.05
    assert raw_med["quilt_vqa"]["force_image_size"] == 224
    gen = {e.name: e for e in load_recipe(RECIPES / "general_paper.yaml")}
    assert (
        gen["dvqa_train_200k"].repeat_time == 1
        and _raw("general_paper.yaml")["dvqa_train_200k"]["length"] == 200000
    )
