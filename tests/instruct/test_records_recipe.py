import json

import numpy as np
import pytest

from vitp_geo.instruct.recipe import (
    RecipeError,
    effective_count,
    load_recipe,
    repeat_indices,
    save_recipe,
)
from vitp_geo.instruct.records import (
    InstructionRecord,
    RecordError,
    denormalize_box,
    format_grounding,
    normalize_box,
    parse_boxes,
    read_jsonl,
    write_jsonl,
)


def _rec(i: int, images=("a.png",)) -> InstructionRecord:
    conv = [
        {"from": "human", "value": "<image>\n" * len(images) + "How many?"},
        {"from": "gpt", "value": str(i)},
    ]
    return InstructionRecord(id=f"r{i}", images=list(images), conversations=conv, task="counting")


def test_jsonl_round_trip_keeps_images_and_extra_keys(tmp_path):
    recs = [_rec(0), _rec(1, images=("b.png", "c.png"))]
    recs[0].extra["width"] = 112
    path = write_jsonl(tmp_path / "a.jsonl", recs)
    back = read_jsonl(path).records
    assert [r.images for r in back] == [["a.png"], ["b.png", "c.png"]]
    assert back[0].extra == {"width": 112} and back[1].task == "counting"
    assert json.loads(path.read_text().splitlines()[0])["image"] == "a.png"  # a single image stays a string


def test_bad_line_names_file_and_line_or_is_skipped(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(_rec(0).to_json())
    path.write_text(good + "\n{not json\n" + good + "\n")
    with pytest.raises(RecordError, match=rf"{path}:2: not valid JSON"):
        read_jsonl(path)
    result = read_jsonl(path, skip_bad=True)
    assert len(result.records) == 2 and len(result.skipped) == 1 and ":2:" in result.skipped[0]


def test_placeholder_count_must_match_images(tmp_path):
    obj = _rec(0, images=("a.png", "b.png")).to_json()
    obj["conversations"][0]["value"] = "<image>\nonly one placeholder"
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(obj) + "\n")
    with pytest.raises(RecordError, match="2 image\\(s\\) but 1"):
        read_jsonl(path)


def test_box_normalisation_round_trip_and_parse():
    box = normalize_box((28, 56, 84, 112), width=112, height=224)
    assert box == (250, 250, 750, 500)
    assert denormalize_box(box, 112, 224) == pytest.approx((28, 56, 84, 112))
    text = "Here: " + format_grounding("building", [box, (0, 0, 1000, 1000)])
    assert parse_boxes(text) == [[250, 250, 750, 500], [0, 0, 1000, 1000]]


@pytest.mark.parametrize(
    ("n", "repeat", "expected"), [(10, 1.0, 10), (10, 0.25, 2), (10, 2.0, 20), (10, 2.5, 25), (7, 0.5, 3)]
)
def test_repeat_arithmetic(n, repeat, expected):
    assert effective_count(n, repeat) == expected
    idx = repeat_indices(n, repeat, seed=3)
    assert idx.size == expected
    counts = np.bincount(idx, minlength=n)
    full = int(repeat)
    assert counts.min() >= full and counts.max() <= full + 1  # whole passes + a subsample without repeats


def test_subsample_is_seeded(tmp_path):
    assert np.array_equal(repeat_indices(100, 0.3, seed=1), repeat_indices(100, 0.3, seed=1))
    assert not np.array_equal(repeat_indices(100, 0.3, seed=1), repeat_indices(100, 0.3, seed=2))


def test_recipe_json_and_yaml_resolve_relative_paths(tmp_path):
    (tmp_path / "d").mkdir()
    meta = {"ds": {"root": "d/", "annotation": "d/a.jsonl", "repeat_time": 0.5, "max_dynamic_patch": 4}}
    (tmp_path / "r.json").write_text(json.dumps(meta))
    (tmp_path / "r.yaml").write_text(
        "ds:\n  root: d/\n  annotation: d/a.jsonl\n  repeat_time: 0.5\n  max_dynamic_patch: 4\n"
    )
    for name in ("r.json", "r.yaml"):
        (entry,) = load_recipe(tmp_path / name)
        assert entry.root == tmp_path / "d" and entry.annotation == tmp_path / "d" / "a.jsonl"
        assert entry.repeat_time == 0.5 and entry.max_dynamic_patch == 4
    out = save_recipe(tmp_path / "copy.json", load_recipe(tmp_path / "r.json"))
    assert json.loads(out.read_text())["ds"]["annotation"] == "d/a.jsonl"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"ds": {"root": "x"}}', "lacks annotation"),
        ('{"ds": {"root": "x", "annotation": "a", "repeat_time": 0}}', "repeat_time 0"),
        ("{not json", "cannot parse"),
    ],
)
def test_bad_recipe_is_named(tmp_path, body, message):
    path = tmp_path / "bad.json"
    path.write_text(body)
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)
