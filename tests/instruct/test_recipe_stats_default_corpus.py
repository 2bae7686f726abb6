"""Recipe statistics and merging, and the embedded default corpus."""

from __future__ import annotations

import json

import pytest

from vitp_geo.cli.main import main
from vitp_geo.instruct.default_corpus import build_default_corpus
from vitp_geo.instruct.recipe import load_recipe
from vitp_geo.instruct.records import InstructionRecord, read_jsonl, write_jsonl
from vitp_geo.instruct.stats import estimate_tokens, merge_recipes, recipe_stats


def _dataset(root, name, tasks, modality="optical", repeat=1.0):
    root.mkdir(parents=True)
    recs = [
        InstructionRecord(
            f"{name}{i}",
            [f"images/{i % 3}.png"],
            [{"from": "human", "value": "<image>\n" + "abcd" * 5}, {"from": "gpt", "value": "wxyz" * 2}],
            task=t,
            modality=modality,
        )
        for i, t in enumerate(tasks)
    ]
    write_jsonl(root / "annotations.jsonl", recs)
    (root / "recipe.json").write_text(
        json.dumps({name: {"root": ".", "annotation": "annotations.jsonl", "repeat_time": repeat}})
    )
    return root / "recipe.json"


def test_estimate_tokens_ignores_image_placeholders():
    assert estimate_tokens("<image>\nabcdefgh") == 3  # "\nabcdefgh" is 9 characters → ceil(9 / 4)


def test_stats_arithmetic_and_weighted_mix(tmp_path):
    a = _dataset(tmp_path / "a", "a", ["counting"] * 7 + ["grounding"] * 3, repeat=0.5)
    b = _dataset(tmp_path / "b", "b", ["presence"] * 4, modality="sar", repeat=2.5)
    merged, notes = merge_recipes([a, b], tmp_path / "m" / "merged.json")
    assert notes == []
    per, total = recipe_stats(merged)
    assert [(s.name, s.records, s.effective) for s in per] == [("a", 10, 5), ("b", 4, 10)]
    assert total.records == 14 and total.effective == 15
    assert per[0].images == 3 and per[0].image_refs == 10 and per[0].missing_images == 3
    assert per[0].mean_tokens == pytest.approx(6 + 2)  # ceil(21/4) + ceil(8/4)
    # Total mix weighted by repeat_time: counting 3.5, grounding 1.5, presence 10.
    assert total.tasks["presence"] == pytest.approx(10.0) and total.tasks["counting"] == pytest.approx(3.5)
    assert total.modalities["sar"] == pytest.approx(10.0)


def test_merge_renames_clashing_names_and_keeps_paths_valid(tmp_path, capsys):
    a = _dataset(tmp_path / "a", "rs", ["counting"])
    b = _dataset(tmp_path / "b", "rs", ["presence"] * 2)
    rc = main(["recipe", "merge", str(a), str(b), "--out", str(tmp_path / "elsewhere" / "m.json")])
    assert rc == 0 and "renamed to 'rs_2'" in capsys.readouterr().out
    entries = load_recipe(tmp_path / "elsewhere" / "m.json")
    assert [e.name for e in entries] == ["rs", "rs_2"]
    assert [len(read_jsonl(e.annotation).records) for e in entries] == [1, 2]
    rc = main(["recipe", "stats", str(tmp_path / "elsewhere" / "m.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "total: 3 records → 3 samples/epoch" in out and "presence 66.7%" in out


def test_recipe_stats_cli_errors_name_the_file(tmp_path, capsys):
    assert main(["recipe", "stats", str(tmp_path / "none.json")]) == 2
    assert "none.json" in capsys.readouterr().err


def test_default_corpus_is_deterministic_and_mixed(tmp_path):
    p1 = build_default_corpus(tmp_path / "a", seed=0, n_scenes=6, scene_size=128, tile_size=64)
    p2 = build_default_corpus(tmp_path / "b", seed=0, n_scenes=6, scene_size=128, tile_size=64)
    assert (p1.parent / "annotations.jsonl").read_bytes() == (p2.parent / "annotations.jsonl").read_bytes()
    assert (p1.parent / "alignment.jsonl").read_bytes() == (p2.parent / "alignment.jsonl").read_bytes()
    align, rest = load_recipe(p1)
    assert (align.name, align.repeat_time, rest.name, rest.repeat_time) == (
        "rs_default_align",
        4.0,
        "rs_default",
        1.0,
    )
    align_recs, recs = read_jsonl(align.annotation).records, read_jsonl(rest.annotation).records
    assert {r.task for r in align_recs} == {"classes", "classification"}
    tasks = {r.task for r in recs}
    assert {"counting", "grounding", "presence", "change_yesno", "area_share"} <= tasks
    assert not tasks & {"classes", "classification"}
    assert all((rest.root / i).exists() for r in recs + align_recs for i in r.images)
    per, _ = recipe_stats(p1)
    assert per[1].missing_images == 0 and per[1].records == len(recs) >= 100
    assert per[0].effective == 4 * per[0].records  # the one-look tasks weigh four times


def test_default_corpus_default_size_gives_a_few_thousand_records(tmp_path):
    n = sum(len(read_jsonl(e.annotation).records) for e in load_recipe(build_default_corpus(tmp_path / "d")))
    assert 1500 <= n <= 4000


def test_stats_flags_image_paths_outside_the_root(tmp_path, capsys):
    """Issue 20: ``recipe stats`` passed image paths that ``pretrain`` refuses (outside the root)."""
    recipe = _dataset(tmp_path / "a", "a", ["counting"] * 2)
    recs = read_jsonl(tmp_path / "a" / "annotations.jsonl").records
    recs[1].images = ["../../elsewhere/secret.png"]
    write_jsonl(tmp_path / "a" / "annotations.jsonl", recs)
    per, total = recipe_stats(recipe)
    assert per[0].outside_root == ["../../elsewhere/secret.png"] and total.outside_root == per[0].outside_root
    assert main(["recipe", "stats", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "warning: 1 image path(s) resolve outside the recipe root, which pretraining refuses" in out
    assert "'../../elsewhere/secret.png'" in out
