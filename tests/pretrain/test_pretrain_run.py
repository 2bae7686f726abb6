"""End-to-end pretraining: the CLI default, outputs, resume, bad data, DDP."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from vitp_geo.cli.main import main
from vitp_geo.instruct.recipe import RecipeEntry, save_recipe
from vitp_geo.instruct.records import InstructionRecord
from vitp_geo.pretrain.config import PretrainConfig
from vitp_geo.pretrain.metrics import read_metrics
from vitp_geo.pretrain.run import resolve_precision

# VRL on every sample (p = 1) so the kept-token counts below are exact; the default fires on 25 %.
FAST = ["--batch-size", "4", "--checkpoint-every", "3", "--vrl-prob", "1.0", "--reliance-records", "24"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> Path:
    """The CLI's embedded default, shortened to 6 steps."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    assert main(["pretrain", "--domain", "rs", "--max-steps", "6", "--output", str(out), *FAST]) == 0
    return out


def test_default_writes_every_output(default_run: Path, capsys):
    assert (default_run / "checkpoints" / "last.ckpt").is_file()
    assert (default_run / "checkpoints" / "step000003.ckpt").is_file()
    assert (default_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_metrics(default_run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:  # VRL at r = 0.75 keeps ceil(0.25 n) per sample, so about a quarter overall
        assert 0.2 * r["image_tokens"] <= r["kept_image_tokens"] <= 0.25 * r["image_tokens"] + 4
        assert math.isfinite(r["loss"]) and r["lr"] > 0 and r["images_per_s"] > 0
    # the image-reliance check ran at the last step only (every 200 steps by default)
    assert [int(r["step"]) for r in rows if math.isfinite(r["val/loss"])] == [6]
    last = rows[-1]
    assert last["val/image_gain"] == pytest.approx(last["val/loss_shuffled"] - last["val/loss"], abs=1e-4)
    lines = (default_run / "image_reliance.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["step"] == 6
    # the embedded default checks on an unseen world: all of it at the last step (--reliance-records
    # 24 is the sample of the checks along the way), with hundreds of closed-task records
    final = json.loads(lines[0])
    assert final["records_from"] == "unseen-world" and final["records"] > 1000
    assert final["per_task"]["presence"]["choice_records"] > 200
    # the accuracy gap's standard error: each record's difference is -1, 0 or 1, so its variance is
    # at most 1 and over 200+ records the standard error stays under 1 / sqrt(199) = 0.0709
    pres = final["per_task"]["presence"]
    assert 0.0 <= pres["accuracy_gap_se"] < 0.071 and 0.0 <= pres["gap_sq"] <= 1.0
    gap = pres["accuracy"] - pres["accuracy_shuffled"]
    assert pres["gap_sq"] >= gap * gap - 1e-9  # a mean square is at least the squared mean
    # the shuffled accuracy is the mean over the default's 4 derangements
    assert pres["shuffles"] == 4.0
    assert last["val/accuracy_gap_se_presence"] == pytest.approx(pres["accuracy_gap_se"], abs=1e-4)
    spec = json.loads((default_run / "backbone.json").read_text())
    assert spec["image_reliance"]["image_gain"] == pytest.approx(last["val/image_gain"], abs=1e-4)
    # the precision --precision auto chose on this machine is recorded with the backbone
    assert spec["pretraining"]["precision"] == resolve_precision(PretrainConfig())


def test_the_default_trains_on_every_record_and_checks_on_scenes_it_never_saw(default_run: Path):
    import hashlib

    assert _trained_samples(default_run) == len(_corpus(default_run)), "nothing is held out of training"

    def pixels(folder: Path) -> set[str]:
        return {hashlib.sha256(p.read_bytes()).hexdigest() for p in (folder / "images").rglob("*.png")}

    trained, unseen = pixels(default_run / "corpus"), pixels(default_run / "unseen")
    assert len(trained) > 200 and len(unseen) > 100
    assert not trained & unseen, "the unseen world shares an image with the training corpus"


def test_without_the_unseen_world_records_are_held_out_of_training(tmp_path: Path):
    out = tmp_path / "run"
    args = ["pretrain", "--max-steps", "2", "--output", str(out), "--no-unseen-world", *FAST]
    assert main(args) == 0
    assert not (out / "unseen").exists()
    final = json.loads((out / "image_reliance.jsonl").read_text().splitlines()[-1])
    assert final["records_from"] == "held-out" and 24 <= final["records"] < 60
    assert _trained_samples(out) <= len(_corpus(out)) - final["records"]  # they left the index


def test_reliance_data_is_checked_whole_and_nothing_is_held_out(default_run: Path, tmp_path: Path):
    """A user's split never trained on: --data trains on all of its corpus, the check reads the split."""
    out = tmp_path / "run"
    data, split = default_run / "corpus" / "recipe.json", default_run / "unseen" / "recipe.json"
    args = ["pretrain", "--data", str(data), "--reliance-data", str(split), "--output", str(out)]
    assert main([*args, "--max-steps", "2", *FAST]) == 0
    lines = [json.loads(line) for line in (out / "image_reliance.jsonl").read_text().splitlines()]
    assert lines[-1]["records_from"] == "reliance-data"
    assert lines[-1]["records"] == json.loads((default_run / "image_reliance.jsonl").read_text())["records"]
    assert _trained_samples(out) == _trained_samples(default_run) == len(_corpus(default_run))
    assert not (out / "unseen").exists()


def _trained_samples(run: Path) -> int:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    return int(ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["data_order"]["samples"])


def _corpus(run: Path):
    """The run's whole corpus as a dataset (every record, nothing held out)."""
    from vitp_geo.instruct.recipe import load_recipe
    from vitp_geo.pretrain.dataset import InstructionDataset
    from vitp_geo.vlm.template import tokenize_conversation
    from vitp_geo.vlm.tokenizer import load_tokenizer

    return InstructionDataset(
        load_recipe(run / "corpus" / "recipe.json"),
        load_tokenizer(run / "tokenizer"),
        tokenize_conversation,
        image_size=112,
        num_image_token=16,
    )


def test_backbone_loads_with_plain_timm_and_matches_the_trained_tower(default_run: Path):
    spec = json.loads((default_run / "backbone.json").read_text())
    vit = timm.create_model(spec["arch"], pretrained=False, **spec["model_kwargs"])
    weights = load_file(default_run / "backbone.safetensors")
    vit.load_state_dict(weights)  # strict: the file is a complete timm state dict
    assert spec["img_size"] == 112 and spec["patch_size"] == 14
    ckpt = torch.load(default_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    tower = {
        k.removeprefix("model.vision_model."): v
        for k, v in ckpt["state_dict"].items()
        if k.startswith("model.vision_model.")
    }
    assert set(tower) == set(weights)
    for key, value in weights.items():
        assert torch.equal(value, tower[key]), key
    features = vit.forward_features(torch.randn(1, 3, 112, 112))
    assert features.shape == (1, 1 + 8 * 8, spec["embed_dim"])


def test_resume_continues_exactly_like_an_uninterrupted_run(default_run: Path, tmp_path: Path):
    # Copy the run as it was at step 3 and resume it to step 6: the result must equal the original.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("corpus", "tokenizer"):
        shutil.copytree(default_run / name, resumed / name)
    # The interrupted run's log went further than its checkpoint: those rows must be replaced.
    shutil.copy(default_run / "metrics.csv", resumed / "metrics.csv")
    ckpt3 = default_run / "checkpoints" / "step000003.ckpt"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["pretrain", "--max-steps", "6", "--output", str(resumed), "--resume", str(ckpt3), *FAST])
    assert code == 0
    # the checkpoint carries the loader's state, so Lightning does not call the loader unresumable
    assert not [w for w in caught if "not resumable" in str(w.message)]
    state = torch.load(ckpt3, map_location="cpu", weights_only=True)
    (order,) = state["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert order["data_order"]["batch_size"] == 4 and order["data_order"]["seed"] == 0
    original = read_metrics(default_run / "metrics.csv")
    again = read_metrics(resumed / "metrics.csv")
    assert [r["step"] for r in again] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(original[3:], again[3:], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["kept_image_tokens"] == b["kept_image_tokens"]
    w0 = load_file(default_run / "backbone.safetensors")
    w1 = load_file(resumed / "backbone.safetensors")
    for key in w0:
        torch.testing.assert_close(w0[key], w1[key], rtol=1e-4, atol=1e-5)


ORDER = "cannot resume: the checkpoint's data order differs"


@pytest.mark.parametrize(
    ("flags", "refusal", "changed"),
    [
        (["--batch-size", "2"], ORDER, "batch_size 4 -> 2"),
        # another seed is another embedded world: refused before the data order is looked at
        (["--seed", "1"], "was built for --seed 0 and this run asks for --seed 1", "corpus"),
        (["--align-steps", "2"], ORDER, f"align_steps {PretrainConfig().align_steps} -> 2"),
    ],
)
def test_resume_with_another_data_order_is_refused_and_keeps_the_run(
    default_run: Path, tmp_path: Path, capsys, flags: list[str], refusal: str, changed: str
):
    """A resume that would draw other samples than the interrupted run (silently, before) stops."""
    run = tmp_path / "run"
    shutil.copytree(default_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    args = ["pretrain", "--max-steps", "9", "--output", str(run), "--resume", "last", *FAST, *flags]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert refusal in err and changed in err
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # checkpoints, metrics.csv, image_reliance.jsonl and backbone untouched


def _tiny_corpus(root: Path, lines: list[str]) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    Image.new("RGB", (112, 112), (90, 120, 60)).save(root / "images" / "a.png")
    (root / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    return save_recipe(root / "recipe.json", [RecipeEntry("tiny", root, root / "annotations.jsonl")])


def _line(image: str = "images/a.png") -> str:
    rec = InstructionRecord(
        "r",
        [image],
        [{"from": "human", "value": "<image>\nIs there water?"}, {"from": "gpt", "value": "No."}],
    )
    return json.dumps(rec.to_json())


def test_bad_jsonl_line_is_named_and_no_backbone_is_written(tmp_path: Path, capsys):
    recipe = _tiny_corpus(tmp_path / "data", [_line(), "{broken", _line()])
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(recipe), "--max-steps", "1", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'data' / 'annotations.jsonl'}:2" in err and "not valid JSON" in err
    assert not (out / "backbone.safetensors").exists()


def test_skip_bad_samples_counts_them(tmp_path: Path, capsys):
    recipe = _tiny_corpus(tmp_path / "data", [_line(), "{broken", _line("images/missing.png"), _line()])
    out = tmp_path / "run"
    code = main(
        [
            "pretrain",
            "--data",
            str(recipe),
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--output",
            str(out),
            "--skip-bad-samples",
        ]
    )
    assert code == 0
    assert "bad records    2 skipped" in capsys.readouterr().out
    assert (out / "backbone.safetensors").is_file()


@pytest.mark.parametrize(
    ("image", "message"),
    [("images/missing.png", "image not found"), ("../../outside.png", "outside the recipe root")],
)
def test_missing_or_escaping_image_is_refused(tmp_path: Path, capsys, image, message):
    (tmp_path / "outside.png").write_bytes(b"")
    recipe = _tiny_corpus(tmp_path / "data", [_line(image)])
    assert main(["pretrain", "--data", str(recipe), "--max-steps", "1", "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and image.split("/")[-1] in err


def test_domain_without_embedded_corpus_says_what_to_pass(tmp_path: Path, capsys):
    # rs and med have embedded defaults (generated scenes, phantoms); general has none
    assert main(["pretrain", "--domain", "general", "--max-steps", "1", "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--domain general has no embedded corpus" in err and "--data" in err


def test_invalid_flag_value_is_named(capsys):
    assert main(["pretrain", "--vrl-ratio", "1.5"]) == 2
    assert "vrl-ratio must be in [0, 1), got 1.5" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path: Path):
    out = tmp_path / "ddp"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    cmd = [
        sys.executable,
        "-m",
        "vitp_geo.cli.main",
        "pretrain",
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--accelerator",
        "cpu",
        "--output",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [int(r["step"]) for r in read_metrics(out / "metrics.csv")] == [1, 2, 3]
    assert (out / "backbone.safetensors").is_file()
    assert proc.stdout.count("ViTP pretraining finished") == 1  # one summary, from rank 0


def test_gradient_accumulation_logs_one_unscaled_row_per_step(default_run: Path, tmp_path: Path):
    out = tmp_path / "acc"
    recipe = default_run / "corpus" / "recipe.json"
    args = ["pretrain", "--data", str(recipe), "--max-steps", "2", "--batch-size", "2", "--output", str(out)]
    assert main([*args, "--accumulate", "3", "--lr", "1e-6"]) == 0
    rows = read_metrics(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2]  # not one row per micro-batch
    # At init the loss is about ln(vocabulary); Lightning's accumulated loss would be a third of it.
    vocab = len(json.loads((default_run / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"])
    assert all(r["loss"] > 0.6 * math.log(vocab) for r in rows)
    assert all(r["image_tokens"] >= 3 * 2 * 16 for r in rows)  # 3 micro-batches x 2 samples x >= 1 tile


def test_data_without_model_path_keeps_the_tiny_schedule_and_says_so(tmp_path):
    from vitp_geo.pretrain.config import PretrainConfig, describe_settings, resolve_config

    sources: dict[str, str] = {}
    cfg = resolve_config("rs", None, {"data": "recipe.json"}, sources=sources)
    assert cfg.lr == PretrainConfig().lr and not cfg.grad_checkpointing
    assert "(default)" in describe_settings(cfg, sources)
    real = resolve_config("rs", None, {"data": "r.json", "model_path": "/m"}, sources=sources)
    assert real.lr == 2e-5 and real.accumulate == 4 and real.grad_checkpointing
    assert "lr                 2e-05      (paper preset rs.yaml)" in describe_settings(real, sources)
    forced = resolve_config("rs", None, {"data": "r.json", "lr": 1e-4}, preset="paper", sources={})
    assert forced.lr == 1e-4 and forced.max_steps == 8000  # flags still win over the preset


def test_ranks_started_later_reuse_the_run_folder_rank_zero_chose(monkeypatch):
    from vitp_geo.pretrain.run import RUN_DIR_ENV, default_output

    monkeypatch.setenv(RUN_DIR_ENV, "runs/pretrain-rs-20260101-000000")
    assert default_output("rs") == Path("runs/pretrain-rs-20260101-000000")
    monkeypatch.delenv(RUN_DIR_ENV)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--output"):
        default_output("rs")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "inf"], "lr must be a finite"),
        (["--weight-decay", "nan"], "weight-decay must be a finite"),
        (["--grad-clip", "-1"], "grad-clip must be"),
        (["--drop-path", "2"], "drop-path must be in"),
        (["--checkpoint-every", "-1"], "checkpoint-every must be"),
        (["--reliance-every", "-3"], "reliance-every must be"),
        (["--loss-reduction", "mean"], "loss-reduction must be"),
        (["--reliance-data", "no/such/recipe.json"], "reliance-data: recipe not found: no/such/recipe.json"),
    ],
)
def test_bad_pretrain_flags_are_one_line_errors_and_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["pretrain", "--domain", "rs", "--output", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_resume_from_a_checkpoint_of_the_two_group_optimizer_is_refused_and_keeps_the_run(
    default_run: Path, tmp_path: Path, capsys
):
    """A checkpoint written before the ViT had AdamW groups of its own: a clear refusal, not torch's."""
    run = tmp_path / "run"
    shutil.copytree(default_run, run)
    ckpt = run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    (opt,) = state["optimizer_states"]
    assert [g["vision"] for g in opt["param_groups"]] == [False, False, True, True]
    # the earlier layout: one decayed and one undecayed group over every parameter
    merged = [dict(g) for g in opt["param_groups"][:2]]
    for g, v in zip(merged, opt["param_groups"][2:], strict=True):
        g["params"] = g["params"] + v["params"]
        del g["vision"]
    opt["param_groups"] = merged
    torch.save(state, ckpt)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["pretrain", "--max-steps", "9", "--output", str(run), "--resume", "last", *FAST]) == 2
    err = capsys.readouterr().err
    assert f"--resume {ckpt}: written by an earlier vitp-geo whose optimizer had 2 parameter groups" in err
    assert "Traceback" not in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resume_from_a_file_that_is_not_a_checkpoint_is_refused_naming_it(tmp_path, capsys):
    out = tmp_path / "run"
    bogus = tmp_path / "random.ckpt"
    bogus.write_bytes(os.urandom(256))
    rc = main(["pretrain", "--domain", "rs", "--output", str(out), "--resume", str(bogus)])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(bogus) in err and "not a readable Lightning checkpoint" in err


@pytest.mark.slow
def test_two_process_ddp_without_output_writes_one_run_folder(tmp_path: Path):
    """Rank 0 picks runs/pretrain-rs-<timestamp>; the rank Lightning starts later reuses it."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    env.pop("VITP_GEO_RUN_DIR", None)
    cmd = [sys.executable, "-m", "vitp_geo.cli.main", "pretrain", "--max-steps", "2", "--batch-size", "2"]
    cmd += ["--devices", "2", "--strategy", "ddp", "--accelerator", "cpu", "--reliance-records", "8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    assert (runs[0] / "backbone.safetensors").is_file()
    assert [int(r["step"]) for r in read_metrics(runs[0] / "metrics.csv")] == [1, 2]


def test_an_earlier_run_is_never_started_over_silently(tmp_path: Path, capsys):
    """Without --resume or --overwrite, a folder holding an earlier run is refused and left as it is
    (it used to lose metrics.csv and have its interrupted last.ckpt overwritten)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"interrupted run")
    (run / "metrics.csv").write_text("step,loss\n1,2.0\n")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["pretrain", "--max-steps", "1", "--output", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "holds an earlier run (checkpoints/last.ckpt, metrics.csv)" in err and "--resume last" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # --resume gets past the guard (and then names the file that is not a checkpoint)
    assert main(["pretrain", "--max-steps", "1", "--output", str(run), "--resume", "last"]) == 2
    assert "earlier run" not in capsys.readouterr().err


def test_full_disk_while_checkpointing_keeps_the_last_checkpoint_whole(
    default_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    """A full disk while last.ckpt is rewritten leaves the earlier last.ckpt whole and resumable."""
    import errno

    import vitp_geo.io.checkpoint_io as checkpoint_io

    run = tmp_path / "run"
    shutil.copytree(default_run, run)
    ckpts = run / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpts.iterdir()}
    real_save = torch.save

    def full_disk(obj, f):
        real_save(obj, f)
        f.truncate(1000)  # cut off, as a full disk leaves it
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(checkpoint_io.torch, "save", full_disk)
        code = main(["pretrain", "--max-steps", "9", "--output", str(run), "--resume", "last", *FAST])
    assert code != 0 and "No space left on device" in capsys.readouterr().err
    # nothing under a checkpoint name was cut off or replaced, and no temporary is left
    assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before
    # the kept last.ckpt (step 6) resumes once there is space again
    assert main(["pretrain", "--max-steps", "9", "--output", str(run), "--resume", "last", *FAST]) == 0
    assert [int(r["step"]) for r in read_metrics(run / "metrics.csv")] == list(range(1, 10))
