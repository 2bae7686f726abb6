"""Multiple-choice accuracy of the image-reliance check: candidate sets, picks, chance, DDP shares,
the shared-prefix forward, and the metrics.csv / loss.png / summary outputs."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vitp_geo.instruct.recipe import RecipeEntry
from vitp_geo.instruct.records import InstructionRecord, write_jsonl
from vitp_geo.io.strict_json import json_safe
from vitp_geo.pretrain.dataset import InstructionDataset, collate
from vitp_geo.pretrain.metrics import (
    ALL_COLUMNS,
    COLUMNS,
    VAL_COLUMNS,
    MetricsCSV,
    per_task_accuracy,
    plot_loss,
    read_metrics,
)
from vitp_geo.pretrain.reliance import (
    CLOSED_TASKS,
    HeldOut,
    RelianceResult,
    RelianceSet,
    canonical_answer,
    choice_candidates,
    evaluate_reliance,
    expand_choice_batch,
    gap_standard_error,
    lettered_options,
    unseen_set,
    vlm_forward,
)
from vitp_geo.vlm.build import build_tiny_vlm
from vitp_geo.vlm.template import tokenize_conversation
from vitp_geo.vlm.tokenizer import build_offline_tokenizer

MC_1 = "Which scene category best describes this image?\nA. residential\nB. lakeside\nC. farmland\nAnswer with the option's letter."
MC_2 = "Classify this scene. Choose one:\nA. farmland\nB. residential\nC. lakeside\nD. forest\nReply with the letter only."


def _rec(rid: str, task: str, *turns: str, image: int = 0) -> InstructionRecord:
    convs = [{"from": "human" if k % 2 == 0 else "gpt", "value": v} for k, v in enumerate(turns)]
    convs[0]["value"] = "<image>\n" + convs[0]["value"]
    return InstructionRecord(id=rid, images=[f"images/{image}.png"], conversations=convs, task=task)


# Source "a": lettered and free-form classification, yes/no phrasings, a two-turn record whose
# first answer must not become a candidate, counts with a frequency order, an open task, and a
# closed task with one distinct answer only. Source "b" adds answers found nowhere else.
SOURCE_A = [
    _rec("mc1", "classification", MC_1, "C", image=0),
    _rec("mc2", "classification", MC_2, "A", image=1),
    _rec("open1", "classification", "What type of scene is this?", "farmland", image=2),
    _rec("open2", "classification", "Name the scene category of this image.", "lakeside", image=3),
    _rec("p1", "presence", "Is there any building in the image?", "Yes", image=4),
    _rec("p2", "presence", "Are there roads in the image?", "No, there is not.", image=5),
    _rec("p3", "presence", "Can you see a field in this image?", "Yes.", image=6),
    _rec("p4", "presence", "Is there any building?", "Perhaps.", "And any water body?", "No.", image=7),
    *[_rec(f"c{n}_{k}", "counting", "How many buildings are in the image?", str(n), image=8) for n, k in
      [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), *[(n, 0) for n in range(3, 41)]]],
    _rec("d1", "description", "Describe the objects in this image.", "Three buildings.", image=9),
    _rec("dom1", "dominant", "What is the dominant land cover in the image?", "background", image=10),
]  # fmt: skip
SOURCE_B = [
    _rec("open3", "classification", "Classify the scene in one or two words.", "residential", image=11),
    _rec("p5", "presence", "Are there fields in the image?", "No", image=11),
]
PRESENCE = ("No", "No, there is not.", "No.", "Yes", "Yes.")


@pytest.fixture(scope="module")
def tokenizer():
    texts = [t["value"] for r in SOURCE_A + SOURCE_B for t in r.conversations]
    return build_offline_tokenizer(texts)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("choice")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):  # all 112 px: one tile each, so any image can stand in for any other
        Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(
            root / "images" / f"{i}.png"
        )
    write_jsonl(root / "a.jsonl", SOURCE_A)
    write_jsonl(root / "b.jsonl", SOURCE_B)
    return root


def _dataset(corpus: Path, tokenizer) -> InstructionDataset:
    return InstructionDataset(
        [RecipeEntry("a", corpus, corpus / "a.jsonl"), RecipeEntry("b", corpus, corpus / "b.jsonl")],
        tokenizer,
        tokenize_conversation,
        image_size=112,
        num_image_token=16,
    )


def _where(ds: InstructionDataset) -> dict[str, HeldOut]:
    return {
        rec.id: HeldOut(s, r, rec.task, group=s * 1000 + r)
        for s, src in enumerate(ds.sources)
        for r, rec in enumerate(src.records)
    }


def _held(ds: InstructionDataset, ids: list[str], max_candidates: int = 32) -> RelianceSet:
    """A hand-made held-out set: each record's shuffled image is the next record's image."""
    where = _where(ds)
    records = [where[i] for i in ids]
    images = [ds.record_at(r.src_id, r.rec_id)[1] for r in records]
    shuffled = [images[(k + 1) % len(images)] for k in range(len(images))]
    return RelianceSet(records, shuffled, choice_candidates(ds, records, max_candidates))


def test_option_letters_and_canonical_answers():
    assert lettered_options(MC_1) == ("A", "B", "C")
    assert lettered_options(MC_2) == ("A", "B", "C", "D")
    assert lettered_options("Pick one:\nA) sea\nB) land") == ("A", "B")
    assert lettered_options("What type of scene is this?") == ()
    assert lettered_options("A. only one option") == ()
    assert lettered_options("Options:\nA. sea\nC. land") == ()  # a gap: not an option block
    assert lettered_options("Is it A. sea or B. land?") == ()  # not at line starts
    assert canonical_answer("Yes, there is.") == canonical_answer("yes") == "yes"
    assert canonical_answer("No.") == canonical_answer("No, there is not.") == "no"
    assert canonical_answer("None.") == "none" and canonical_answer("Nothing") == "nothing"
    assert canonical_answer("Building and  road.") == "building and road"
    assert canonical_answer("C") != canonical_answer("A")


def test_candidates_follow_the_question_and_the_whole_recipe(corpus, tokenizer):
    ds = _dataset(corpus, tokenizer)
    where = _where(ds)
    ids = ["mc1", "mc2", "open1", "open3", "p1", "p4", "p5", "c40_0", "c1_0", "d1", "dom1"]
    cands = dict(zip(ids, choice_candidates(ds, [where[i] for i in ids], max_candidates=5), strict=True))
    # lettered questions: exactly their letters
    assert cands["mc1"] == ("A", "B", "C") and cands["mc2"] == ("A", "B", "C", "D")
    # free-form: the free-form answers of the task in every source (residential only in "b"), no letters
    assert cands["open1"] == cands["open3"] == ("farmland", "lakeside", "residential")
    # final answers only: the two-turn record's first answer ("Perhaps.") is no candidate
    assert cands["p1"] == cands["p4"] == cands["p5"] == PRESENCE
    # above the cap: its own answer + the most frequent others (1 three times, 2 twice, then by text)
    assert cands["c40_0"] == ("1", "10", "11", "2", "40")
    assert cands["c1_0"] == ("1", "10", "11", "12", "2")
    assert cands["d1"] == ()  # open task
    assert cands["dom1"] == ()  # one distinct answer: nothing to choose
    for i in ids:
        answer = ds.record_at(where[i].src_id, where[i].rec_id)[0].conversations[-1]["value"]
        assert not cands[i] or answer in cands[i]
    with pytest.raises(ValueError, match="max_candidates must be >= 2, got 1"):
        choice_candidates(ds, [where["p1"]], max_candidates=1)
    assert set(CLOSED_TASKS) >= {"presence", "classification", "counting", "dominant"}


def test_answers_that_name_the_class_compete_within_their_question(tmp_path):
    """ "Is there any road?" is answered among "Roads: yes." and "Roads: no.", not other classes'."""
    road, building = "Is there any road in the image?", "Is there any building in the image?"
    records = [
        _rec("r1", "presence", road, "Roads: yes.", image=0),
        _rec("r2", "presence", road, "Roads: no.", image=1),
        _rec("b1", "presence", building, "Buildings: yes.", image=2),
        _rec("b2", "presence", building, "Buildings: no.", image=3),
        _rec("f1", "presence", "Are there fields in the image?", "Fields: yes.", image=0),
        _rec("n1", "counting", "How many roads are in the image?", "Roads: 1.", image=1),
        _rec("n2", "counting", "How many roads are in the image?", "Roads: 2.", image=2),
    ]
    records[3].conversations[0]["value"] = building + "\n<image>"  # image after the question: same question
    (tmp_path / "images").mkdir()
    for i in range(4):
        Image.fromarray(np.full((112, 112, 3), 40 * i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
    write_jsonl(tmp_path / "a.jsonl", records)
    tok = build_offline_tokenizer([t["value"] for r in records for t in r.conversations])
    ds = InstructionDataset(
        [RecipeEntry("a", tmp_path, tmp_path / "a.jsonl")], tok, tokenize_conversation,
        image_size=112, num_image_token=16,
    )  # fmt: skip
    where = _where(ds)
    ids = ["r1", "r2", "b1", "b2", "f1", "n1"]
    cands = dict(zip(ids, choice_candidates(ds, [where[i] for i in ids]), strict=True))
    assert cands["r1"] == cands["r2"] == ("Roads: no.", "Roads: yes.")
    assert cands["b1"] == cands["b2"] == ("Buildings: no.", "Buildings: yes.")
    # a question asked once has one answer to choose from: the task's answers stand in
    assert cands["f1"] == ("Buildings: no.", "Buildings: yes.", "Fields: yes.", "Roads: no.", "Roads: yes.")
    assert cands["n1"] == ("Roads: 1.", "Roads: 2.")


def _scripted_forward(tokenizer, prefer: dict[str, int], calls: list[int] | None = None):
    """A model that ignores the image: each row's loss is its final answer's rank in ``prefer``
    (99 for any other answer)."""

    def forward(batch):
        if calls is not None:
            calls.append(int(batch["input_ids"].shape[0]))
        losses = []
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
            answers = tokenizer.decode(ids[labels != -100]).split("<|im_end|>")  # every answer, then ""
            losses.append(float(prefer.get(answers[-2].strip(), 99)))
        return torch.tensor(losses), torch.ones(len(losses))

    return forward


CHOICE_IDS = ["mc1", "mc2", "open1", "open2", "open3", "p1", "p2", "p3", "p4", "p5", "c1_0", "c7_0", "d1"]


def test_picks_accuracy_and_chance_are_counted_right(corpus, tokenizer):
    ds = _dataset(corpus, tokenizer)
    held = _held(ds, CHOICE_IDS, max_candidates=5)
    collate_fn = partial(collate, pad_token_id=int(tokenizer.pad_token_id))
    forward = _scripted_forward(tokenizer, {"A": 0, "farmland": 0, "Yes": 0, "1": 0})
    result = evaluate_reliance(forward, ds, held, collate_fn, batch_size=4)
    cls, pres, cnt = (result.per_task[t] for t in ("classification", "presence", "counting"))
    # classification picks A / farmland: right for mc2 and open1 of 5
    assert cls["accuracy"] == pytest.approx(2 / 5) and cls["choice_records"] == 5
    assert cls["chance"] == pytest.approx((1 / 3 + 1 / 4 + 3 * (1 / 3)) / 5)
    assert cls["candidates"] == pytest.approx((3 + 4 + 3 * 3) / 5)
    # presence picks "Yes", which is right for "Yes." too: p1, p3 of 5; yes/no phrasings count alike
    assert pres["accuracy"] == pytest.approx(2 / 5)
    assert pres["chance"] == pytest.approx((2 / 5 * 2 + 3 / 5 * 3) / 5) and pres["candidates"] == 5.0
    assert cnt["accuracy"] == pytest.approx(1 / 2) and cnt["chance"] == pytest.approx(1 / 5)
    assert "accuracy" not in result.per_task["description"]
    # the forward ignores the image: shuffled picks are the same
    for row in (cls, pres, cnt):
        assert row["accuracy_shuffled"] == row["accuracy"]
    assert result.choice_records == 12 and result.accuracy == pytest.approx((2 + 2 + 1) / 12)
    assert result.accuracy_chance == pytest.approx(
        (cls["chance"] * 5 + pres["chance"] * 5 + cnt["chance"] * 2) / 12
    )
    assert result.accuracy_gap == 0.0
    # the same picks with either image: every difference is 0, the gap has no spread
    assert all(row["gap_sq"] == 0.0 and row["accuracy_gap_se"] == 0.0 for row in (cls, pres, cnt))
    assert result.accuracy_gap_se == 0.0


def _tile_key(tiles) -> tuple[int, ...]:
    """Which image these tiles are: their first pixels, rounded (each test image is random noise)."""
    return tuple(int(v) for v in (tiles.flatten()[:16] * 1000).round().tolist())


def _image_forward(tokenizer, ds, answer_of: dict[tuple[int, int], str]):
    """A model that reads only the image: it answers yes/no as ``answer_of[(src, rec)]`` says for
    the record whose own image it is shown (rows are told apart by their tiles' pixels)."""
    key = {
        _tile_key(ds.load_variant(s, r)["pixel_values"]): canonical_answer(a)
        for (s, r), a in answer_of.items()
    }

    def forward(batch):
        losses, start = [], 0
        for ids, labels, n in zip(batch["input_ids"], batch["labels"], batch["num_tiles"], strict=True):
            seen = key.get(_tile_key(batch["pixel_values"][start : start + int(n)]))  # None: blank
            start += int(n)
            answer = tokenizer.decode(ids[labels != -100]).split("<|im_end|>")[-2].strip()
            losses.append(0.0 if canonical_answer(answer) == seen else 1.0)
        return torch.tensor(losses), torch.ones(len(losses))

    return forward


def test_shuffled_accuracy_is_the_mean_over_derangements_and_the_gap_has_its_standard_error(
    corpus, tokenizer
):
    ds = _dataset(corpus, tokenizer)
    where = _where(ds)
    ids = ["p1", "p2", "p3", "p5"]  # answers Yes, No, Yes, No; images 4, 5, 6, 11
    records = [where[i] for i in ids]
    images = [ds.record_at(r.src_id, r.rec_id)[1] for r in records]
    shift = [[images[(k + j) % 4] for k in range(4)] for j in (1, 2)]  # two derangements
    # what the model answers when shown each image: right for p2, p3, p5; wrong ("No") for p1's
    shown = {(r.src_id, r.rec_id): a for r, a in zip(records, ["No", "No", "Yes", "No"], strict=True)}
    forward = _image_forward(tokenizer, ds, shown)
    collate_fn = partial(collate, pad_token_id=int(tokenizer.pad_token_id))
    cands = choice_candidates(ds, records, 32)

    true = np.array([0, 1, 1, 1])  # p1 is shown its own image 4 and answers No: wrong
    # shift by 1 shows images 5, 6, 11, 4 → No, Yes, No, No: right only for p5
    first = np.array([0, 0, 0, 1])
    # shift by 2 shows images 6, 11, 4, 5 → Yes, No, No, No: right for p1, p2, p5
    second = np.array([1, 1, 0, 1])

    one = evaluate_reliance(forward, ds, RelianceSet(records, shift[0], cands), collate_fn, batch_size=4)
    row = one.per_task["presence"]
    d = true - first
    assert row["accuracy"] == 0.75 and row["accuracy_shuffled"] == 0.25 and row["shuffles"] == 1.0
    assert row["gap_sq"] == pytest.approx(float((d**2).mean()))
    assert row["accuracy_gap_se"] == pytest.approx(float(d.std(ddof=1) / 2))

    both = RelianceSet(records, shift[0], cands, more_shuffled=[shift[1]])
    two = evaluate_reliance(forward, ds, both, collate_fn, batch_size=4)
    row = two.per_task["presence"]
    # per record the shuffled pick is the mean over the two derangements
    d = true - (first + second) / 2
    assert row["accuracy"] == 0.75 and row["accuracy_shuffled"] == pytest.approx(0.5)
    assert row["shuffles"] == 2.0
    assert row["gap_sq"] == pytest.approx(float((d**2).mean()))
    assert row["accuracy_gap_se"] == pytest.approx(float(d.std(ddof=1) / 2))
    assert two.accuracy_gap_se == pytest.approx(row["accuracy_gap_se"])
    # the losses (nats) keep reading the first derangement only
    assert two.per_task["presence"]["loss_shuffled"] == pytest.approx(
        one.per_task["presence"]["loss_shuffled"]
    )


def test_more_derangements_leave_the_first_as_it_was_and_never_give_a_record_its_own_image(corpus, tokenizer):
    single = unseen_set(_dataset(corpus, tokenizer), 0, seed=3)
    many = unseen_set(_dataset(corpus, tokenizer), 0, seed=3, shuffles=4)
    assert many.records == single.records and many.shuffled_images == single.shuffled_images
    assert len(many.more_shuffled) == 3 and len(many.shuffled_draws()) == 4
    ds = _dataset(corpus, tokenizer)
    own = [ds.record_at(r.src_id, r.rec_id)[1] for r in many.records]
    for draw in many.shuffled_draws():
        assert len(draw) == len(many)
        assert all(
            set(map(str, mine)).isdisjoint(map(str, other)) for mine, other in zip(own, draw, strict=True)
        )
    assert any(draw != many.shuffled_images for draw in many.more_shuffled)  # other tiles, not copies


def test_ranks_split_the_records_and_run_the_same_number_of_passes(corpus, tokenizer):
    ds = _dataset(corpus, tokenizer)
    held = _held(ds, CHOICE_IDS, max_candidates=5)
    collate_fn = partial(collate, pad_token_id=int(tokenizer.pad_token_id))
    prefer = {"C": 0, "lakeside": 0, "No": 0, "7": 0}
    whole = evaluate_reliance(
        _scripted_forward(tokenizer, prefer), ds, held, collate_fn, batch_size=4, choice_rows=8
    )
    parts, calls = [], []
    for rank in range(3):
        calls.append([])
        forward = _scripted_forward(tokenizer, prefer, calls[-1])
        parts.append(
            evaluate_reliance(
                forward, ds, held, collate_fn, batch_size=4, choice_rows=8, rank=rank, world_size=3
            )
        )
    # collectives stay in step: every rank makes as many forward passes
    assert len({len(c) for c in calls}) == 1
    # no pass has more than choice_rows candidate rows, except a record that has more on its own
    assert max(calls[0] + calls[1] + calls[2]) <= 8
    # the ranks' sums make the whole (what the all-reduce adds up)
    for task, row in whole.per_task.items():
        if "accuracy" not in row:
            continue
        for key in ("accuracy", "chance", "candidates"):
            rows = [p.per_task[task] for p in parts if "accuracy" in p.per_task.get(task, {})]
            total = sum(r[key] * r["choice_records"] for r in rows)
            assert total == pytest.approx(row[key] * row["choice_records"]), (task, key)
    assert sum(p.choice_records for p in parts) == whole.choice_records == 12


def test_shared_prefix_forward_equals_the_plain_pass(corpus, tokenizer):
    """The tiny VLM scores choice batches (prefix and images once, cache reused) exactly as full rows."""
    ds = _dataset(corpus, tokenizer)
    held = _held(ds, CHOICE_IDS)
    model = build_tiny_vlm(tokenizer, seed=0).eval()
    collate_fn = partial(collate, pad_token_id=int(tokenizer.pad_token_id))
    fwd = vlm_forward(model)
    seen: list[dict[str, torch.Tensor]] = []

    class Recorder:
        shares_prefix = True

        def __call__(self, batch):
            if "choice_group" in batch:
                seen.append(batch)
            return fwd(batch)

    shared = evaluate_reliance(Recorder(), ds, held, collate_fn, batch_size=4, choice_rows=12)
    plain = evaluate_reliance(lambda b: fwd(b), ds, held, collate_fn, batch_size=4, choice_rows=12)
    for task, row in plain.per_task.items():
        for key in ("accuracy", "accuracy_shuffled", "chance", "candidates"):
            assert shared.per_task[task].get(key) == row.get(key), (task, key)
    assert seen, "VLMForward must be offered choice batches"
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    earlier_answers = False
    with torch.no_grad():
        for batch in seen:
            assert batch["num_tiles"].sum() == len(
                set(batch["choice_group"].tolist())
            )  # tiles once per record
            fast, n_fast = fwd(batch)
            assert not calls, "the shared-prefix path must not fall back to the full model pass"
            full, n_full = fwd(expand_choice_batch(batch))
            assert calls == [1]
            calls.clear()
            torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-4)
            assert torch.equal(n_fast, n_full)
            pos = torch.arange(batch["labels"].shape[1])
            earlier_answers |= bool(
                ((batch["labels"] != -100) & (pos < batch["choice_prefix"][:, None])).any()
            )
    assert earlier_answers, "the two-turn record's first answer lies in the shared prefix and is scored too"


def _result(with_accuracy: bool = True) -> RelianceResult:
    per_task = {
        "presence": {"loss": 2.0, "loss_shuffled": 2.5, "loss_blank": 2.4, "image_gain": 0.5, "records": 4.0},
        "counting": {"loss": 3.0, "loss_shuffled": 3.0, "loss_blank": 3.1, "image_gain": 0.0, "records": 2.0},
        "grounding": {
            "loss": 9.0,
            "loss_shuffled": 9.5,
            "loss_blank": 9.5,
            "image_gain": 0.5,
            "records": 2.0,
        },
    }
    if with_accuracy:
        # per record, right with true - right with shuffled images: presence [1, 0, 0, 0] (true
        # [1, 1, 1, 0], shuffled [0, 1, 1, 0]), counting [1, 0] (true [1, 0], shuffled [0, 0])
        keys = ("accuracy", "accuracy_shuffled", "chance", "candidates", "choice_records", "gap_sq")
        per_task["presence"].update(zip(keys, (0.75, 0.5, 0.5, 6.0, 4.0, 0.25), strict=True))
        per_task["counting"].update(zip(keys, (0.5, 0.0, 0.2, 5.0, 2.0, 0.5), strict=True))
        for row, d in ((per_task["presence"], [1, 0, 0, 0]), (per_task["counting"], [1, 0])):
            row["accuracy_gap_se"] = float(np.std(d, ddof=1) / np.sqrt(len(d)))
    return RelianceResult(4.0, 4.375, 4.35, 8, 3.0, per_task)


@pytest.mark.parametrize(
    "d", [[1, 1, 0, -1], [1, 0, 0, 0, 0, 0, 0, 1], [0, 0, 0], [1, 1], [-1, 1, 0], [0.5, -0.25, 1, 0.75]]
)
def test_gap_standard_error_is_the_paired_differences_sample_std_over_root_n(d):
    d = np.asarray(d, float)
    se = gap_standard_error(float(d.mean()), float((d**2).mean()), len(d))
    assert se == pytest.approx(float(d.std(ddof=1) / np.sqrt(len(d))))


def test_gap_standard_error_needs_two_records():
    assert math.isnan(gap_standard_error(1.0, 1.0, 1))
    assert math.isnan(gap_standard_error(0.0, 0.0, 0))


def test_result_overall_accuracy_columns_json_and_summary():
    r = _result()
    assert r.choice_records == 6
    assert r.accuracy == pytest.approx((0.75 * 4 + 0.5 * 2) / 6)
    assert r.accuracy_shuffled == pytest.approx((0.5 * 4 + 0.0 * 2) / 6)
    assert r.accuracy_chance == pytest.approx((0.5 * 4 + 0.2 * 2) / 6)
    assert r.accuracy_gap == pytest.approx(r.accuracy - r.accuracy_shuffled)
    cols = r.columns()
    assert cols["val/accuracy"] == r.accuracy and cols["val/accuracy_shuffled"] == r.accuracy_shuffled
    assert cols["val/accuracy_chance"] == r.accuracy_chance
    assert cols["val/accuracy_presence"] == 0.75 and cols["val/accuracy_shuffled_presence"] == 0.5
    assert cols["val/accuracy_counting"] == 0.5 and cols["val/accuracy_shuffled_counting"] == 0.0
    assert cols["val/accuracy_chance_presence"] == 0.5 and cols["val/accuracy_chance_counting"] == 0.2
    # the gap's standard error: the six records' paired differences [1, 0, 0, 0, 1, 0], pooled
    assert r.accuracy_gap_se == pytest.approx(np.std([1, 0, 0, 0, 1, 0], ddof=1) / np.sqrt(6))
    assert cols["val/accuracy_gap_se"] == r.accuracy_gap_se
    assert cols["val/accuracy_gap_se_presence"] == pytest.approx(0.25)  # std 0.5 over sqrt(4)
    assert not any("grounding" in k for k in cols)
    data = json.loads(json.dumps(json_safe(r.to_json()), allow_nan=False))
    assert data["accuracy"] == pytest.approx(r.accuracy) and data["accuracy_gap"] == pytest.approx(
        r.accuracy_gap
    )
    assert data["choice_records"] == 6 and data["per_task"]["presence"]["chance"] == 0.5
    assert data["closed_tasks"] == list(CLOSED_TASKS)
    text = r.format()
    assert "acc true 0.75 shuffled 0.50 chance 0.50 (gap +0.25 ± 0.25, n=4)" in text
    assert "acc true 0.50 shuffled 0.00 chance 0.20 (gap +0.50 ± 0.50, n=2)" in text
    assert "accuracy       0.67 true images, 0.33 shuffled, 0.40 chance" in text
    assert f"closed-task records; gap +0.33 ± {r.accuracy_gap_se:.2f})" in text
    assert data["accuracy_gap_se"] == pytest.approx(r.accuracy_gap_se)
    # without closed-task records: no accuracy columns or lines, NaN figures (null in JSON)
    bare = _result(with_accuracy=False)
    assert not any("accuracy" in k for k in bare.columns()) and "acc true" not in bare.format()
    assert math.isnan(bare.accuracy) and json_safe(bare.to_json())["accuracy"] is None


@dataclass
class _Stats:
    loss: float = 1.0
    micro_batches: int = 1
    kept_image_tokens: int = 4
    image_tokens: int = 16
    tiles: int = 2


def _drive(cb: MetricsCSV, start: int, steps: list[int], val: dict[int, dict[str, float]]) -> None:
    """Run the callback's hooks as a trainer would, from ``start`` for ``steps``."""
    trainer = SimpleNamespace(
        global_step=start, is_global_zero=True, optimizers=[SimpleNamespace(param_groups=[{"lr": 0.1}])]
    )
    module = SimpleNamespace(step_stats=_Stats(), pending_val=None)
    cb.on_train_start(trainer, module)  # type: ignore[arg-type]
    for step in steps:
        cb.on_train_batch_start(trainer, module, None, 0)  # type: ignore[arg-type]
        trainer.global_step = step
        module.step_stats = _Stats(loss=float(step))
        module.pending_val = val.get(step)
        cb.on_train_batch_end(trainer, module, None, None, 0)  # type: ignore[arg-type]


def test_metrics_csv_gains_accuracy_columns_and_keeps_rows_aligned(tmp_path):
    path = tmp_path / "metrics.csv"
    _drive(MetricsCSV(path), 0, [1, 2, 3, 4], {2: _result().columns(), 4: _result().columns()})
    with path.open(newline="") as fh:
        header = next(csv.reader(fh))
    assert header[: len(ALL_COLUMNS)] == list(ALL_COLUMNS)
    assert {"val/accuracy_presence", "val/accuracy_shuffled_counting"} <= set(header)
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and [r["loss"] for r in rows] == [1, 2, 3, 4]
    assert rows[1]["val/accuracy"] == pytest.approx(_result().accuracy, rel=1e-5)
    assert rows[1]["val/accuracy_presence"] == 0.75 and rows[3]["val/accuracy_shuffled_counting"] == 0.0
    assert math.isnan(rows[0]["val/accuracy_presence"]) and math.isnan(rows[2]["val/accuracy"])
    # every row as wide as the header (rows written before a column existed are padded)
    with path.open(newline="") as fh:
        assert {len(r) for r in csv.reader(fh)} == {len(header)}
    # a resume from step 2 drops the later rows and appends under the same header
    _drive(MetricsCSV(path), 2, [3], {})
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert read_metrics(path)[1]["val/accuracy_counting"] == 0.5


def test_an_old_metrics_csv_is_widened_on_resume(tmp_path):
    path = tmp_path / "metrics.csv"
    old = list(COLUMNS + VAL_COLUMNS)  # the header before the accuracy columns existed
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(old)
        for step in (1, 2, 3):
            w.writerow([step, 5.0, 0.1, 4, 16, 2.0, *([1.0, 1.5, 1.4, 0.5, 0.5] if step == 2 else [""] * 5)])
    _drive(MetricsCSV(path), 2, [3], {3: _result().columns()})
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[1]["val/image_gain"] == 0.5 and math.isnan(rows[1]["val/accuracy"])
    assert rows[2]["loss"] == 3.0 and rows[2]["val/loss"] == 4.0
    assert rows[2]["val/accuracy_presence"] == 0.75


@pytest.mark.parametrize(("accuracy", "width", "height"), [(True, 1600, 700), (False, 1100, 350)])
def test_loss_png_shows_the_accuracy_panels_when_the_csv_has_them(tmp_path, accuracy, width, height):
    path = tmp_path / "metrics.csv"
    if accuracy:
        _drive(MetricsCSV(path), 0, list(range(1, 9)), {4: _result().columns(), 8: _result().columns()})
    else:  # a file written before the accuracy columns existed
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(COLUMNS + VAL_COLUMNS)
            for step in range(1, 9):
                val = [4.0, 4.4, 4.3, 0.4, 0.3] if step in (4, 8) else [""] * 5
                w.writerow([step, 9 - step, 0.1, 4, 16, 2.0, *val])
    png = plot_loss(path, tmp_path / "loss.png")
    with Image.open(png) as img:
        # one panel more with the accuracy, and a second row with one panel per closed task
        assert img.format == "PNG" and (img.width, img.height) == (width, height)


def test_per_task_accuracy_series(tmp_path):
    path = tmp_path / "metrics.csv"
    _drive(MetricsCSV(path), 0, list(range(1, 9)), {4: _result().columns(), 8: _result().columns()})
    series = per_task_accuracy(read_metrics(path))
    assert sorted(series) == ["counting", "presence"]  # grounding has no closed answers
    assert series["presence"] == {
        "step": [4.0, 8.0],
        "true": [0.75, 0.75],
        "shuffled": [0.5, 0.5],
        "chance": [0.5, 0.5],
    }
    assert series["counting"]["true"] == [0.5, 0.5] and series["counting"]["chance"] == [0.2, 0.2]
    # a file written before the per-task chance column existed: the chance is NaN, the rest stays
    rows = [
        {k: v for k, v in r.items() if not k.startswith("val/accuracy_chance_")} for r in read_metrics(path)
    ]
    old = per_task_accuracy(rows)
    assert old["presence"]["true"] == [0.75, 0.75] and all(math.isnan(c) for c in old["presence"]["chance"])
    # five closed tasks: the second row is five panels wide
    many = {**_result().columns()}
    for task in ("classification", "dominant", "change_yesno"):
        many.update(
            {
                f"val/accuracy_{task}": 0.6,
                f"val/accuracy_shuffled_{task}": 0.4,
                f"val/accuracy_chance_{task}": 0.3,
            }
        )
    wide = tmp_path / "wide.csv"
    _drive(MetricsCSV(wide), 0, [1, 2], {2: many})
    assert len(per_task_accuracy(read_metrics(wide))) == 5
    with Image.open(plot_loss(wide, tmp_path / "wide.png")) as img:
        assert (img.width, img.height) == (2600, 700)
