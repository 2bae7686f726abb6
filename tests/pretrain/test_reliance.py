"""Image reliance: held-out split, the shuffle that never returns a record's own tile, the metric."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from colour_corpus import COLOURS, write_colour_corpus
from PIL import Image

from vitp_geo.instruct.recipe import RecipeEntry
from vitp_geo.instruct.records import InstructionRecord, write_jsonl
from vitp_geo.pretrain.dataset import InstructionDataset, collate
from vitp_geo.pretrain.reliance import (
    IMAGE_DECIDED_TASKS,
    answer_loss_per_sample,
    evaluate_reliance,
    hold_out,
    unseen_set,
    vlm_forward,
)
from vitp_geo.vlm.build import build_tiny_vlm
from vitp_geo.vlm.dynamic_tiles import IMAGENET_MEAN, IMAGENET_STD
from vitp_geo.vlm.model import answer_loss
from vitp_geo.vlm.template import tokenize_conversation
from vitp_geo.vlm.tokenizer import IMG_CONTEXT_TOKEN, build_offline_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_offline_tokenizer(
        ["what colour is this image", "red green blue yellow", "case 0 1 2 3 4 5 6 7 8 9"]
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """24 images (16 tiles of 112 px, 8 scenes of 224 px that tile 2x2 + thumbnail), 3 records each."""
    sizes = [112] * 16 + [224] * 8
    return write_colour_corpus(
        tmp_path_factory.mktemp("reliance"), sizes, ("classification", "presence", "description")
    )


def _dataset(corpus: Path, tokenizer, image_size: int = 112) -> InstructionDataset:
    return InstructionDataset(
        [RecipeEntry("c", corpus, corpus / "annotations.jsonl")],
        tokenizer,
        tokenize_conversation,
        image_size=image_size,
        num_image_token=16,
    )


def test_hold_out_removes_whole_images_and_never_shuffles_a_tile_back(corpus, tokenizer):
    ds = _dataset(corpus, tokenizer)
    n_before = len(ds)
    held = hold_out(ds, max_records=30, seed=3)
    assert len(held) >= 30
    held_pairs = {(r.src_id, r.rec_id) for r in held.records}
    assert not held_pairs & set(ds.index), "held-out records must not be trained on"
    assert len(ds) == n_before - len(held)
    where = {tuple(p): (i, j) for i, src in enumerate(ds.sources) for j, p in enumerate(src.image_paths)}
    own_images = {}
    for rec, shuffled in zip(held.records, held.shuffled_images, strict=True):
        _, paths = ds.record_at(rec.src_id, rec.rec_id)
        own_images.setdefault(rec.group, paths)
        assert shuffled != paths, "a record got its own tile back"
        # the swapped-in image tiles alike, so the token sequence only differs in pixels
        assert ds.tile_layout(*where[tuple(shuffled)]) == ds.tile_layout(rec.src_id, rec.rec_id)
    assert {ds.tile_layout(r.src_id, r.rec_id) for r in held.records} == {((1, 1),), ((2, 2),)}
    # every held-out image group is whole: all its records are held out, none stays in training
    for paths in own_images.values():
        for src_id, src in enumerate(ds.sources):
            for rec_id, p in enumerate(src.image_paths):
                if p == paths:
                    assert (src_id, rec_id) in held_pairs
    # the same seed holds out the same records
    again = hold_out(_dataset(corpus, tokenizer), max_records=30, seed=3)
    assert [(r.src_id, r.rec_id) for r in again.records] == [(r.src_id, r.rec_id) for r in held.records]


def test_a_model_that_ignores_the_image_reads_zero_gain(corpus, tokenizer):
    model = build_tiny_vlm(tokenizer, seed=0).eval()
    with torch.no_grad():  # image tokens become one constant vector whatever the pixels
        model.mlp1[3].weight.zero_()
        model.mlp1[3].bias.normal_()
    ds = _dataset(corpus, tokenizer)
    held = hold_out(ds, max_records=40, seed=1)
    collate_fn = partial(collate, pad_token_id=int(tokenizer.pad_token_id))
    result = evaluate_reliance(vlm_forward(model), ds, held, collate_fn, batch_size=5)
    # 112 px tiles and 224 px scenes (5 tiles) are both held out: a shuffle that changed the
    # token count would move the loss even for this model.
    assert result.records == len(held) and result.loss > 0.5
    assert abs(result.image_gain) < 1e-4
    assert abs(result.loss_blank - result.loss) < 1e-4
    for row in result.per_task.values():
        assert abs(row["image_gain"]) < 1e-4
    # The multiple choice sees the same image tokens either way: the very same picks, bit for bit
    # (classification and presence are closed tasks here; description is not scored).
    assert {t for t, r in result.per_task.items() if "accuracy" in r} == {"classification", "presence"}
    assert result.choice_records == sum(len(c) >= 2 for c in held.candidates) > 0
    assert result.accuracy_shuffled == result.accuracy and result.accuracy_gap == 0.0
    for task in ("classification", "presence"):
        row = result.per_task[task]
        assert row["accuracy_shuffled"] == row["accuracy"]
        assert row["chance"] == pytest.approx(0.25) and row["candidates"] == 4.0


def _colour_forward(tokenizer, targets: dict[tuple[int, ...], np.ndarray]):
    """A model built to depend on the image: its answer loss is the distance of the image's mean
    colour from the colour its record is about (looked up from the record's text)."""
    img_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]

    def forward(batch):
        losses = []
        start = 0
        for j, n in enumerate(batch["num_tiles"].tolist()):
            tiles = batch["pixel_values"][start : start + n] * std + mean  # back to [0, 1]
            start += n
            ids = batch["input_ids"][j][batch["attention_mask"][j].bool()]
            key = tuple(int(t) for t in ids if int(t) != img_id)
            rgb = tiles[-1].mean(dim=(1, 2)).numpy() * 255  # the thumbnail (or the only tile)
            losses.append(float(np.abs(rgb - targets[key]).sum()) / 100.0)
        return torch.tensor(losses), torch.ones(len(losses))

    return forward


def _colour_targets(ds: InstructionDataset, held, tokenizer) -> dict[tuple[int, ...], np.ndarray]:
    """The colour each token row is about: its record's answer, or the candidate it carries."""
    img_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    targets = {}
    for rec, cands in zip(held.records, held.candidates, strict=True):
        record, _ = ds.record_at(rec.src_id, rec.rec_id)
        for answer in (record.conversations[-1]["value"], *cands):
            turns = [*record.conversations[:-1], {"from": "gpt", "value": answer}]
            sample = ds.load_variant(rec.src_id, rec.rec_id, conversations=turns)
            key = tuple(int(t) for t in sample["input_ids"] if int(t) != img_id)
            targets[key] = np.array(COLOURS[answer], dtype=np.float64)
    return targets


def test_a_model_that_reads_the_image_reads_a_clearly_positive_gain(corpus, tokenizer):
    ds = _dataset(corpus, tokenizer)
    held = hold_out(ds, max_records=40, seed=1)
    targets = _colour_targets(ds, held, tokenizer)
    collate_fn = partial(collate, pad_token_id=int(tokenizer.pad_token_id))
    result = evaluate_reliance(_colour_forward(tokenizer, targets), ds, held, collate_fn, batch_size=4)
    # true images sit near their colour (noise only); shuffled ones are other colours at least
    # half of the time (4 colours, groups deranged); blank ones are the normalisation mean
    assert result.loss < 0.5
    assert result.image_gain > 1.0 and result.loss_blank - result.loss > 1.0
    assert set(result.per_task) == {"classification", "presence", "description"}
    assert result.image_gain_decided == pytest.approx(
        np.average(
            [result.per_task[t]["image_gain"] for t in ("classification", "presence")],
            weights=[result.per_task[t]["records"] for t in ("classification", "presence")],
        )
    )
    assert "description" not in IMAGE_DECIDED_TASKS
    # Multiple choice: with its own image the model picks the image's colour, always right; with
    # another tile's image it picks that tile's colour, right only where the two colours agree.
    closed = [i for i, c in enumerate(held.candidates) if c]
    colour = {i: list(COLOURS)[i % 4] for i in range(24)}  # images/<i>.png, as the corpus draws them
    own = [
        colour[int(ds.record_at(held.records[i].src_id, held.records[i].rec_id)[1][0].stem)] for i in closed
    ]
    other = [colour[int(held.shuffled_images[i][0].stem)] for i in closed]
    expected = np.mean([a == b for a, b in zip(own, other, strict=True)])
    assert result.choice_records == len(closed) == sum(r.task != "description" for r in held.records)
    assert result.accuracy == 1.0
    assert result.accuracy_shuffled == pytest.approx(expected) and expected < 0.5
    assert result.accuracy_chance == pytest.approx(0.25)  # 4 colours, one right
    assert result.accuracy_gap > 0.5


def test_answer_loss_is_summed_per_answer_and_matches_the_lm_convention():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[-100, -100, 3, 4, -100, -100], [-100, 1, 2, 3, 4, 5]])
    loss_sum, n_tok = answer_loss_per_sample(logits, labels)
    logp = torch.log_softmax(logits, dim=-1)
    manual = [
        -sum(float(logp[b, t - 1, labels[b, t]]) for t in range(6) if labels[b, t] >= 0) for b in range(2)
    ]
    assert loss_sum.tolist() == pytest.approx(manual, rel=1e-5)
    assert n_tok.tolist() == [2.0, 5.0]
    # token: mean over all 7 answer tokens; sample: mean of the per-answer means; square: 1/sqrt(n)
    assert float(answer_loss(logits, labels, "token")) == pytest.approx(sum(manual) / 7, rel=1e-5)
    assert float(answer_loss(logits, labels, "sample")) == pytest.approx(
        (manual[0] / 2 + manual[1] / 5) / 2, rel=1e-5
    )
    w = [2 / 2**0.5, 5 / 5**0.5]
    assert float(answer_loss(logits, labels, "square")) == pytest.approx(
        (manual[0] / 2**0.5 + manual[1] / 5**0.5) / sum(w), rel=1e-5
    )
    with pytest.raises(ValueError, match="mean"):
        answer_loss(logits, labels, "mean")


def test_token_loss_equals_the_language_models_own_loss(tokenizer):
    model = build_tiny_vlm(tokenizer, seed=0).eval()
    ids = torch.randint(0, 50, (2, 9))
    labels = ids.clone()
    labels[:, :4] = -100
    out = model.language_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    assert float(answer_loss(out.logits, labels, "token")) == pytest.approx(float(out.loss), rel=1e-5)


def test_reliance_jsonl_and_backbone_json_are_strict_json(tmp_path):
    from vitp_geo.io.strict_json import json_safe
    from vitp_geo.pretrain.reliance import RelianceResult

    r = RelianceResult(1.0, 1.5, float("nan"), 3, 2.0, {"presence": {"image_gain": 0.5, "records": 3.0}})
    text = json.dumps(json_safe(r.to_json()), allow_nan=False)
    assert json.loads(text)["loss_blank"] is None and json.loads(text)["image_gain"] == 0.5


def test_a_shuffled_partner_never_shares_an_image_with_the_record(tmp_path, tokenizer):
    """Change pairs (A, B) and (A, C): a cyclic shift could hand (A, C) to (A, B), keeping A."""
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        arr = rng.integers(0, 255, (112, 112, 3)).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / "images" / f"{i}.png")
    # every pair shares its first image with another pair: (0,1) (0,2) (3,4) (3,5) (6,7) (6,1)
    pairs = [(0, 1), (0, 2), (3, 4), (3, 5), (6, 7), (6, 1)]
    recs = [
        InstructionRecord(
            id=f"p{a}_{b}_{k}",
            images=[f"images/{a}.png", f"images/{b}.png"],
            conversations=[
                {
                    "from": "human",
                    "value": f"Image-1: <image>\nImage-2: <image>\nWhat colour is this image? case {k}",
                },
                {"from": "gpt", "value": "red"},
            ],
            task="change_yesno",
        )
        for a, b in pairs
        for k in range(2)
    ]
    write_jsonl(tmp_path / "annotations.jsonl", recs)
    for seed in range(10):
        ds = InstructionDataset(
            [RecipeEntry("c", tmp_path, tmp_path / "annotations.jsonl")],
            tokenizer,
            tokenize_conversation,
            image_size=112,
            num_image_token=16,
        )
        held = hold_out(ds, 6, seed=seed)
        assert len(held) > 0
        for rec, images in zip(held.records, held.shuffled_images, strict=True):
            own = set(ds.record_at(rec.src_id, rec.rec_id)[1])
            assert not own & set(images), (seed, rec, images)


def test_each_record_gets_a_partner_that_tiles_like_its_own_images_under_its_own_budget(corpus, tokenizer):
    """One image group read by two sources with different tile budgets tiles two ways."""
    from vitp_geo.pretrain.dataset import image_size
    from vitp_geo.vlm.dynamic_tiles import choose_grid

    ann = corpus / "annotations.jsonl"
    for seed in range(4):
        ds = InstructionDataset(
            [RecipeEntry("one_tile", corpus, ann, max_dynamic_patch=1), RecipeEntry("six", corpus, ann)],
            tokenizer,
            tokenize_conversation,
            image_size=112,
            num_image_token=16,
            max_dynamic_patch=6,
        )
        held = hold_out(ds, 100, seed=seed)
        assert {r.src_id for r in held.records} == {0, 1}
        layouts = set()
        for rec, images in zip(held.records, held.shuffled_images, strict=True):
            budget = ds.tile_budget(rec.src_id, rec.rec_id)
            swapped = tuple(choose_grid(*image_size(p), 112, max_tiles=budget) for p in images)
            assert swapped == ds.tile_layout(rec.src_id, rec.rec_id), (seed, rec, images)
            layouts.add((rec.src_id, swapped))
        assert (1, ((2, 2),)) in layouts  # the 224 px scenes tile 2x2 under the six-tile budget


def test_a_run_that_ends_by_epochs_checks_once_at_the_end_not_every_step(corpus, tokenizer, tmp_path):
    from types import SimpleNamespace

    from vitp_geo.pretrain.reliance import ImageReliance

    ds = _dataset(corpus, tokenizer)
    held = hold_out(ds, 12, seed=0)
    cb = ImageReliance(ds, held, partial(collate, pad_token_id=0), tmp_path / "r.jsonl", every=0)
    calls: list[int] = []
    cb.evaluate = lambda trainer, module, held=None: calls.append(trainer.global_step) or _fake_result()  # type: ignore[method-assign]
    module = SimpleNamespace()
    for step in range(1, 6):  # Lightning's default max_steps is -1
        trainer = SimpleNamespace(global_step=step, max_steps=-1, is_global_zero=True)
        cb.on_train_batch_end(trainer, module, None, None, step - 1)
    assert calls == []
    cb.on_train_end(trainer, module)
    assert calls == [5] and [s for s, _ in cb.results] == [5]
    cb.on_train_end(trainer, module)  # already checked at this step: not again
    assert calls == [5]
    stepped = SimpleNamespace(global_step=5, max_steps=5, is_global_zero=True)
    cb2 = ImageReliance(ds, held, partial(collate, pad_token_id=0), tmp_path / "r2.jsonl", every=0)
    cb2.evaluate = lambda trainer, module, held=None: calls.append(-trainer.global_step) or _fake_result()  # type: ignore[method-assign]
    cb2.on_train_batch_end(stepped, module, None, None, 4)
    cb2.on_train_end(stepped, module)
    assert calls == [5, -5]  # max_steps runs check at their last step, once


def test_a_near_zero_gain_warns_after_the_alignment_phase_not_during_it(corpus, tokenizer, tmp_path, caplog):
    import logging
    from types import SimpleNamespace

    from vitp_geo.pretrain.config import PretrainConfig
    from vitp_geo.pretrain.reliance import ImageReliance, RelianceResult

    cfg = PretrainConfig()  # the default: 1,000 steps, a 600-step alignment phase, 100 warm-up steps
    assert cfg.reliance_quiet_steps == cfg.align_steps == 600
    assert PretrainConfig(align_steps=0).reliance_quiet_steps == 100  # no phase: the lr warm-up
    ds = _dataset(corpus, tokenizer)
    held = hold_out(ds, 12, seed=0)
    cb = ImageReliance(
        ds, held, partial(collate, pad_token_id=0), tmp_path / "r.jsonl", every=200,
        warmup_steps=cfg.reliance_quiet_steps,
    )  # fmt: skip
    flat = RelianceResult(loss=1.0, loss_shuffled=1.01, loss_blank=1.0, records=4, answer_tokens=2.0)
    cb.evaluate = lambda trainer, module, held=None: flat  # type: ignore[method-assign]
    warned: list[int] = []
    with caplog.at_level(logging.WARNING, logger="vitp_geo.pretrain.reliance"):
        for step in (200, 400, 600, 800, 1000):
            trainer = SimpleNamespace(global_step=step, max_steps=cfg.max_steps, is_global_zero=True)
            cb.on_train_batch_end(trainer, SimpleNamespace(), None, None, step - 1)
            if any("barely uses the image" in r.getMessage() for r in caplog.records):
                warned.append(step)
                caplog.clear()
    assert [s for s, _ in cb.results] == [200, 400, 600, 800, 1000]
    assert warned == [800]  # once, at the first check after the phase


def test_unseen_set_checks_a_whole_corpus_without_touching_any_training_index(corpus, tokenizer):
    ds = _dataset(corpus, tokenizer)
    index = list(ds.index)
    full = unseen_set(ds, 0, seed=3)
    assert ds.index == index, "an unseen corpus is not trained on: nothing to remove"
    # every image group finds a partner that tiles alike (16 tiles, 8 scenes): all 72 records
    assert len(full) == 72 and full.origin == "unseen-world"
    where = {tuple(p): (i, j) for i, src in enumerate(ds.sources) for j, p in enumerate(src.image_paths)}
    for rec, shuffled in zip(full.records, full.shuffled_images, strict=True):
        _, paths = ds.record_at(rec.src_id, rec.rec_id)
        assert shuffled != paths, "a record got its own tile back"
        assert ds.tile_layout(*where[tuple(shuffled)]) == ds.tile_layout(rec.src_id, rec.rec_id)
    # the multiple-choice candidates are filled as for a held-out set
    scored = [
        c
        for r, c in zip(full.records, full.candidates, strict=True)
        if r.task in ("presence", "classification")
    ]
    assert scored and all(len(c) >= 2 for c in scored)
    # a sample of it: whole groups, seeded, at least the records asked for
    part = unseen_set(ds, 20, seed=3)
    assert 20 <= len(part) < len(full)
    groups = {}
    for r in part.records:
        groups.setdefault(tuple(ds.record_at(r.src_id, r.rec_id)[1]), set()).add(r.rec_id)
    for paths, rec_ids in groups.items():
        assert rec_ids == {j for j, p in enumerate(ds.sources[0].image_paths) if tuple(p) == paths}
    again = unseen_set(ds, 20, seed=3)
    assert [(r.src_id, r.rec_id) for r in again.records] == [(r.src_id, r.rec_id) for r in part.records]
    assert [(r.src_id, r.rec_id) for r in unseen_set(ds, 20, seed=4).records] != [
        (r.src_id, r.rec_id) for r in part.records
    ]


def test_the_last_check_reads_the_final_set_and_the_others_the_sample(corpus, tokenizer, tmp_path):
    from types import SimpleNamespace

    from vitp_geo.pretrain.reliance import ImageReliance

    ds = _dataset(corpus, tokenizer)
    sample, full = unseen_set(ds, 12, seed=0), unseen_set(ds, 0, seed=0)
    cb = ImageReliance(
        ds, sample, partial(collate, pad_token_id=0), tmp_path / "r.jsonl", every=2, final=full
    )
    seen: list[tuple[int, int]] = []
    cb.evaluate = lambda trainer, module, held=None: (
        seen.append((trainer.global_step, len(held))) or _fake_result()
    )  # type: ignore[method-assign]
    for step in range(1, 7):
        trainer = SimpleNamespace(global_step=step, max_steps=6, is_global_zero=True)
        cb.on_train_batch_end(trainer, SimpleNamespace(), None, None, step - 1)
    assert seen == [(2, len(sample)), (4, len(sample)), (6, len(full))]
    assert len(sample) < len(full)


def _fake_result():
    from vitp_geo.pretrain.reliance import RelianceResult

    return RelianceResult(loss=1.0, loss_shuffled=1.5, loss_blank=1.5, records=4, answer_tokens=2.0)
