"""The recipe dataset, collation and the Lightning module's step logic."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from PIL import Image

from vitp_geo.instruct.recipe import RecipeEntry
from vitp_geo.instruct.records import InstructionRecord
from vitp_geo.pretrain.dataset import IGNORE_INDEX, InstructionDataset, collate, load_image
from vitp_geo.pretrain.module import NonFiniteLossError, ViTPPretrainModule
from vitp_geo.vlm.template import tokenize_conversation
from vitp_geo.vlm.tokenizer import IMG_CONTEXT_TOKEN, build_offline_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_offline_tokenizer(["how many buildings are there", "two", "is there water", "yes no"])


def _write_tif(path: Path, array: np.ndarray) -> None:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        count=array.shape[0],
        height=array.shape[1],
        width=array.shape[2],
        dtype=array.dtype,
        crs="EPSG:32633",
        transform=Affine(1, 0, 0, 0, -1, 0),
    ) as dst:
        dst.write(array)


def _corpus(root: Path, records: list[InstructionRecord]) -> RecipeEntry:
    ann = root / "ann.jsonl"
    ann.write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))
    return RecipeEntry("t", root, ann, repeat_time=1.0, max_dynamic_patch=6)


def _conv(n_images: int, answer: str = "two") -> list[dict[str, str]]:
    return [
        {"from": "human", "value": "<image>\n" * n_images + "how many buildings are there"},
        {"from": "gpt", "value": answer},
    ]


def test_rasters_of_any_dtype_become_rgb(tmp_path: Path):
    rng = np.random.default_rng(0)
    _write_tif(tmp_path / "u16.tif", rng.integers(0, 4000, (1, 30, 30)).astype(np.uint16))
    _write_tif(
        tmp_path / "sar.tif",
        (rng.normal(size=(1, 30, 30)) + 1j * rng.normal(size=(1, 30, 30))).astype(np.complex64),
    )
    for name in ("u16.tif", "sar.tif"):
        img = np.asarray(load_image(tmp_path / name))
        assert img.shape == (30, 30, 3) and img.dtype == np.uint8
        assert np.array_equal(img[..., 0], img[..., 1])  # one band is repeated over three channels
        assert img.std() > 10  # stretched, not flat


def test_items_hold_tiles_and_matching_image_tokens(tmp_path: Path, tokenizer):
    Image.new("RGB", (56, 28), (200, 10, 10)).save(tmp_path / "wide.png")  # 2x1 grid + thumbnail
    Image.new("RGB", (28, 28), (10, 200, 10)).save(tmp_path / "sq.png")
    recs = [
        InstructionRecord("a", ["wide.png"], _conv(1)),
        InstructionRecord("b", ["sq.png", "sq.png"], _conv(2, "yes")),
    ]
    ds = InstructionDataset(
        [_corpus(tmp_path, recs)], tokenizer, tokenize_conversation, image_size=28, num_image_token=4
    )
    a, b = ds[0], ds[1]
    ctx = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    assert a["num_tiles"] == 3 and a["pixel_values"].shape == (3, 3, 28, 28)
    assert int((a["input_ids"] == ctx).sum()) == 3 * 4
    assert b["num_tiles"] == 2 and int((b["input_ids"] == ctx).sum()) == 2 * 4
    assert (a["labels"][a["input_ids"] == ctx] == IGNORE_INDEX).all()  # no loss on image tokens
    batch = collate([a, b], pad_token_id=tokenizer.pad_token_id)
    assert batch["pixel_values"].shape[0] == 5
    la, lb = len(a["input_ids"]), len(b["input_ids"])
    assert batch["input_ids"].shape == (2, max(la, lb))
    short = 0 if la < lb else 1
    n_short = min(la, lb)
    assert (batch["attention_mask"][short, n_short:] == 0).all() and (
        batch["attention_mask"][short, :n_short] == 1
    ).all()
    assert (batch["labels"][short, n_short:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][short, n_short:] == tokenizer.pad_token_id).all()


def test_repeat_time_sets_epoch_length(tmp_path: Path, tokenizer):
    Image.new("RGB", (28, 28)).save(tmp_path / "x.png")
    entry = _corpus(tmp_path, [InstructionRecord(str(i), ["x.png"], _conv(1)) for i in range(10)])
    entry.repeat_time = 2.5
    ds = InstructionDataset([entry], tokenizer, tokenize_conversation, image_size=28, num_image_token=4)
    assert len(ds) == 25 and ds.report.samples == {"t": 25}


class _FakeVLM(torch.nn.Module):
    """Stands in for ViTPModel: a loss that is a function of one weight, or NaN on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.vision_model = torch.nn.Linear(1, 1)
        self.mlp1 = torch.nn.Linear(1, 1)
        self.language_model = torch.nn.Linear(1, 1)
        self.nan = False

    def forward(self, pixel_values, input_ids, attention_mask, labels, return_logits=True):
        loss = (self.vision_model.weight**2).sum() + self.language_model.weight.sum() * 0
        if self.nan:
            loss = loss * float("nan")
        return SimpleNamespace(loss=loss, kept_image_tokens=1, total_image_tokens=4)


def _batch():
    return {
        "pixel_values": torch.zeros(1, 3, 2, 2),
        "input_ids": torch.zeros(1, 3, dtype=torch.long),
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
        "labels": torch.zeros(1, 3, dtype=torch.long),
    }


def test_non_finite_loss_skips_then_stops():
    fake = _FakeVLM()
    module = ViTPPretrainModule(
        fake, lr=1e-3, weight_decay=0.0, warmup_ratio=0.0, max_steps=10, max_nonfinite=3
    )
    module.log = lambda *a, **k: None  # no trainer attached
    assert module.training_step(_batch(), 0) is not None
    fake.nan = True
    assert module.training_step(_batch(), 1) is None and module.training_step(_batch(), 2) is None
    assert module.nonfinite_steps == 2
    with pytest.raises(NonFiniteLossError, match="3 steps in a row"):
        module.training_step(_batch(), 3)
    # A finite step resets the run of bad steps: two more bad steps then do not stop the run.
    module2 = ViTPPretrainModule(
        _FakeVLM(), lr=1e-3, weight_decay=0.0, warmup_ratio=0.0, max_steps=10, max_nonfinite=3
    )
    module2.log = lambda *a, **k: None
    module2.model.nan = True
    assert module2.training_step(_batch(), 0) is None and module2.training_step(_batch(), 1) is None
    module2.model.nan = False
    assert module2.training_step(_batch(), 2) is not None
    module2.model.nan = True
    assert module2.training_step(_batch(), 3) is None and module2.training_step(_batch(), 4) is None
    assert module2.nonfinite_steps == 4  # the total; only the run of consecutive ones stops training
    with pytest.raises(NonFiniteLossError, match="3 steps in a row"):
        module2.training_step(_batch(), 5)


def test_freeze_flags_and_all_frozen_is_refused():
    fake = _FakeVLM()
    ViTPPretrainModule(fake, lr=1e-3, weight_decay=0.0, warmup_ratio=0.0, max_steps=5, freeze_vision=True)
    assert not any(p.requires_grad for p in fake.vision_model.parameters())
    assert all(p.requires_grad for p in fake.language_model.parameters())
    with pytest.raises(ValueError, match="nothing would train"):
        ViTPPretrainModule(
            _FakeVLM(),
            lr=1e-3,
            weight_decay=0.0,
            warmup_ratio=0.0,
            max_steps=5,
            freeze_vision=True,
            freeze_projector=True,
            freeze_llm=True,
        )


def test_schedule_warms_up_then_decays_to_zero():
    module = ViTPPretrainModule(_FakeVLM(), lr=1e-3, weight_decay=0.01, warmup_ratio=0.2, max_steps=100)
    conf = module.configure_optimizers()
    opt, factor = conf["optimizer"], conf["lr_scheduler"]["scheduler"].lr_lambdas[0]
    values = [factor(s) for s in range(101)]
    assert values[0] == pytest.approx(1 / 20) and values[19] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[19:], values[20:], strict=False))
    assert values[60] == pytest.approx(0.5) and values[100] == pytest.approx(0.0)
    # weights are decayed, biases are not; the ViT's parameters in groups of their own, after the rest
    decayed, plain, vit_decayed, vit_plain = opt.param_groups
    assert not decayed["vision"] and not plain["vision"] and vit_decayed["vision"] and vit_plain["vision"]
    assert decayed["weight_decay"] == vit_decayed["weight_decay"] == 0.01
    assert plain["weight_decay"] == vit_plain["weight_decay"] == 0.0
    rest = (module.model.mlp1, module.model.language_model)
    assert {id(p) for p in decayed["params"]} == {id(m.weight) for m in rest}
    assert {id(p) for p in plain["params"]} == {id(m.bias) for m in rest}
    assert [id(p) for p in vit_decayed["params"]] == [id(module.model.vision_model.weight)]
    assert [id(p) for p in vit_plain["params"]] == [id(module.model.vision_model.bias)]


def test_config_file_values_get_field_types_and_real_weights_pull_in_the_domain_preset(tmp_path: Path):
    from vitp_geo.pretrain.config import PretrainConfig, resolve_config

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 1e-4\nmodel_path: /models/x\nbatch_size: 2\n")  # YAML reads 1e-4 as text
    cfg = resolve_config("rs", cfg_file, {})
    assert cfg.lr == 1e-4 and cfg.batch_size == 2 and cfg.model_path == "/models/x"
    assert cfg.max_steps == 8000 and cfg.accumulate == 4  # rs.yaml applies: the file names real weights
    tiny = PretrainConfig().max_steps
    assert resolve_config("rs", None, {}).max_steps == tiny  # no real parts: the tiny default
    data_only = tmp_path / "d.yaml"
    data_only.write_text("data: corpus/recipe.json\n")
    assert resolve_config("rs", data_only, {}).max_steps == tiny  # a tiny model on user data
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: lots\n")
    with pytest.raises(ValueError, match=r"bad.yaml: max_steps must be of type int, got 'lots'"):
        resolve_config("rs", bad, {})


def test_cache_decodes_each_image_once_and_gives_the_same_samples(tmp_path: Path, tokenizer, monkeypatch):
    import vitp_geo.pretrain.dataset as dataset_mod

    Image.new("RGB", (56, 28), (200, 10, 10)).save(tmp_path / "wide.png")
    Image.new("RGB", (28, 28), (10, 200, 10)).save(tmp_path / "sq.png")
    recs = [
        InstructionRecord("a", ["wide.png"], _conv(1)),
        InstructionRecord("b", ["sq.png", "sq.png"], _conv(2, "yes")),
        InstructionRecord("c", ["sq.png"], _conv(1, "two")),
    ]
    entry = _corpus(tmp_path, recs)
    kwargs = dict(image_size=28, num_image_token=4)
    plain = InstructionDataset([entry], tokenizer, tokenize_conversation, **kwargs)
    cached = InstructionDataset([entry], tokenizer, tokenize_conversation, cache_mb=1.0, **kwargs)
    decoded: list[str] = []
    real_load = dataset_mod.load_image
    monkeypatch.setattr(dataset_mod, "load_image", lambda p: decoded.append(p.name) or real_load(p))
    for _ in range(3):  # three epochs
        for i in range(3):
            want, got = plain[i], cached[i]
            for key in ("pixel_values", "input_ids", "labels"):
                assert torch.equal(want[key], got[key]), key
    # plain: 4 image reads per epoch. Cached: each (image, tile budget) once: wide.png once, sq.png
    # once for b (two images share its budget of 6 tiles; the second read is a hit) and once for c
    assert decoded.count("wide.png") == 3 + 1 and decoded.count("sq.png") == 9 + 2
    # other answers (the reliance check's candidates) and blank images bypass the cache
    other = cached.load_variant(0, 2, conversations=_conv(1, "yes"))
    assert not torch.equal(other["labels"], cached[2]["labels"])
    blank = cached.load_variant(0, 0, blank=True)
    assert float(blank["pixel_values"].abs().max()) < 0.05 < float(cached[0]["pixel_values"].abs().max())
    assert float(cached[0]["pixel_values"].abs().max()) > 0.05  # the blank did not overwrite the cache
    # a budget too small for one entry caches nothing, and a negative one is refused
    tiny = InstructionDataset([entry], tokenizer, tokenize_conversation, cache_mb=1e-6, **kwargs)
    decoded.clear()
    tiny[2], tiny[2]
    assert decoded == ["sq.png", "sq.png"]
    with pytest.raises(ValueError, match="cache_mb must be >= 0, got -1"):
        InstructionDataset([entry], tokenizer, tokenize_conversation, cache_mb=-1, **kwargs)


def test_the_medical_default_keeps_its_own_tiny_schedule_and_flags_still_win():
    from vitp_geo.pretrain.config import PretrainConfig, resolve_config

    sources: dict[str, str] = {}
    med = resolve_config("med", None, {}, sources=sources)
    assert (med.max_steps, med.batch_size, med.align_steps, med.align_ramp_steps) == (450, 8, 150, 0)
    assert med.align_tasks == "classes,classification" and sources["max_steps"] == "med tiny default"
    rs = resolve_config("rs", None, {})
    assert (
        (rs.max_steps, rs.batch_size, rs.align_ramp_steps)
        == (
            PretrainConfig().max_steps,
            PretrainConfig().batch_size,
            PretrainConfig().align_ramp_steps,
        )
        != (450, 8, 0)
    )
    assert resolve_config("med", None, {"max_steps": 7}).max_steps == 7
    paper = resolve_config("med", None, {"model_path": "/models/x"})
    assert paper.max_steps == 8000 and paper.align_steps == 0  # the paper preset, not the tiny one


def test_the_offline_tokenizer_learns_the_system_message(tmp_path: Path):
    """Fitted on the corpus only, the tiny tokenizer spelled InternVL2.5's system message in bytes."""
    from vitp_geo.instruct.recipe import save_recipe
    from vitp_geo.pretrain.run import _corpus_texts
    from vitp_geo.vlm.template import INTERNVL2_5_SYSTEM_MESSAGE

    Image.new("RGB", (28, 28)).save(tmp_path / "a.png")
    entry = _corpus(tmp_path, [InstructionRecord(f"r{i}", ["a.png"], _conv(1)) for i in range(4)])
    recipe = save_recipe(tmp_path / "recipe.json", [entry])
    texts = _corpus_texts(recipe)
    assert texts.count(INTERNVL2_5_SYSTEM_MESSAGE) == 4  # once per record, as in every sequence
    tok = build_offline_tokenizer(texts)
    without = build_offline_tokenizer([t for t in texts if t != INTERNVL2_5_SYSTEM_MESSAGE])
    n_with = len(tok(INTERNVL2_5_SYSTEM_MESSAGE)["input_ids"])
    n_without = len(without(INTERNVL2_5_SYSTEM_MESSAGE)["input_ids"])
    assert n_with <= 12 < 100 < n_without
    assert tok.decode(tok(INTERNVL2_5_SYSTEM_MESSAGE)["input_ids"]) == INTERNVL2_5_SYSTEM_MESSAGE


def test_the_run_summary_prints_peak_memory(tmp_path: Path):
    from vitp_geo.pretrain.run import PretrainSummary, peak_rss_mb

    big = np.ones(64 * 2**20 // 8)  # 64 MiB touched: the peak is at least that
    assert big.sum() > 0
    peak = peak_rss_mb()
    assert peak is not None and peak > 64
    summary = PretrainSummary(tmp_path, 3, 1.0, 0.5, 10.0, 0, 0, None, 2.0, peak_rss_mb=peak)
    assert f"peak memory    {peak / 1024:.2f} GB resident" in summary.format()
    assert "peak memory" not in PretrainSummary(tmp_path, 3, 1.0, 0.5, 10.0, 0, 0, None, 2.0).format()
