"""`vitp-geo finetune`: the embedded default writes a loadable checkpoint and a summary; bad input exits 2."""

from __future__ import annotations

import json

import pytest
import torch

from vitp_geo.cli.main import main
from vitp_geo.tasks import load_inference_model


@pytest.mark.slow
def test_embedded_segmentation_run_writes_checkpoint_and_summary(tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    rc = main(["finetune", "segmentation", "--output", str(out), "--max-steps", "2", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "val_mIoU" in printed and "model.ckpt" in printed
    summary = json.loads((out / "finetune_summary.json").read_text())
    assert summary["steps"] == 2 and 0.0 <= summary["validation"]["val_mIoU"] <= 1.0
    model, card = load_inference_model(out / "model.ckpt")
    assert card.class_names == ["background", "building", "road", "water", "field"]
    assert card.class_colors[1] == (220, 20, 60) and card.tile_size == 112
    assert card.render == {"raw": True, "dtype": "uint8"}  # trained on the rasters' own values
    assert card.bands == [1, 2, 3]
    assert model(torch.zeros(1, 3, 112, 112)).shape == (1, 5, 112, 112)
    # model.ckpt holds weights + card only; the weights-only best.ckpt it came from is not kept twice
    ckpt = torch.load(out / "model.ckpt", weights_only=True)
    assert not {"optimizer_states", "lr_schedulers", "loops", "callbacks"} & set(ckpt)
    assert ckpt["hyper_parameters"]["num_classes"] == 5
    assert not (out / "checkpoints").exists()  # no --save-last: no resumable state either
    scene = sorted((out / "data").rglob("*.tif"))[0]
    rc = main(["infer", str(scene), "--checkpoint", str(out / "model.ckpt"), "--out", str(out / "p.tif")])
    assert rc == 0
    import rasterio

    with rasterio.open(out / "p.tif") as pred, rasterio.open(scene) as src:
        classes = pred.read(1)
        assert classes.shape == (src.height, src.width) and int(classes.max()) < 5


def test_bad_config_and_backbone_exit_2_naming_the_file(tmp_path, capsys) -> None:  # noqa: ANN001
    assert (
        main(["finetune", "change", "--config", str(tmp_path / "nope.yaml"), "--output", str(tmp_path)]) == 2
    )
    assert "nope.yaml" in capsys.readouterr().err
    fill = tmp_path / "fill.yaml"
    fill.write_text(
        "model: {class_path: vitp_geo.tasks.ChangeDetectionTask}\ndata: {init_args: {root: FILL_ME}}\n"
    )
    assert main(["finetune", "change", "--config", str(fill), "--output", str(tmp_path)]) == 2
    assert "FILL_ME" in capsys.readouterr().err
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(
        "model: {class_path: vitp_geo.tasks.SegmentationTask}\ndata: {init_args: {root: /data}}\n"
    )
    assert main(["finetune", "change", "--config", str(wrong), "--output", str(tmp_path)]) == 2
    assert "ChangeDetectionTask" in capsys.readouterr().err


def test_missing_backbone_is_named_before_anything_is_written(tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    code = main(
        ["finetune", "segmentation", "--backbone", str(tmp_path / "none.safetensors"), "--output", str(out)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "backbone not found" in err and "none.safetensors" in err
    assert not out.exists()


def test_config_typo_is_a_clear_error_naming_the_file_and_key(tmp_path, capsys) -> None:  # noqa: ANN001
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        "model:\n  class_path: vitp_geo.tasks.SegmentationTask\n  init_args:\n"
        "    backbone: {name: vitp_tiny_patch14_112}\n    num_clases: 5\n"
        f"data:\n  class_path: vitp_geo.datamodules.geotiff.GeoTiffSegmentationDataModule\n"
        f"  init_args:\n    images: {tmp_path}\n"
    )
    assert main(["finetune", "segmentation", "--config", str(typo), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{typo}: invalid configuration (model section)" in err
    assert "Option 'num_clases' is not accepted" in err and "Given value" not in err  # no section dump


def test_a_config_naming_the_old_datamodules_package_is_refused_naming_the_new_path(tmp_path, capsys) -> None:  # noqa: ANN001
    """The DataModules install as vitp_geo.datamodules; a config written for the old top-level
    ``datamodules`` package gets one line naming the path to use, before anything is written."""
    old = tmp_path / "old.yaml"
    old.write_text(
        "model:\n  class_path: vitp_geo.tasks.SegmentationTask\n  init_args:\n"
        "    backbone: {name: vitp_tiny_patch14_112}\n    num_classes: 5\n"
        f"data:\n  class_path: datamodules.geotiff.GeoTiffSegmentationDataModule\n"
        f"  init_args:\n    images: {tmp_path}\n"
    )
    assert main(["finetune", "segmentation", "--config", str(old), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"vitp-geo finetune: error: {old}: data.class_path 'datamodules.geotiff.GeoTiffSegmentationDataModule' is the old path: "
        "the DataModules are installed as vitp_geo.datamodules; use "
        "'vitp_geo.datamodules.geotiff.GeoTiffSegmentationDataModule'"
    ]
    assert not (tmp_path / "o").exists()


def test_diverged_training_writes_no_model_ckpt(tmp_path, capsys) -> None:  # noqa: ANN001
    from vitp_geo.tasks.run import default_config, fit

    cfg = default_config("segmentation", tmp_path / "data")
    cfg["model"]["init_args"]["optim"].update(
        lr=float("inf"), warmup_steps=0
    )  # one step makes every weight NaN
    cfg["trainer"].update(max_steps=1, max_epochs=1, limit_val_batches=1, enable_model_summary=False)
    with pytest.raises(
        RuntimeError, match=r"training diverged: .*non-finite weights.*model\.ckpt not written"
    ):
        fit(cfg, "segmentation", tmp_path, progress=False)
    assert not (tmp_path / "model.ckpt").exists() and not (tmp_path / "finetune_summary.json").exists()


def test_summary_is_strict_json_with_null_for_nan(tmp_path) -> None:  # noqa: ANN001
    from vitp_geo.tasks.run import print_summary, write_summary

    summary = {
        "task": "change",
        "checkpoint": "model.ckpt",
        "best_score": float("nan"),  # e.g. F1 when no change pixel was seen yet
        "validation": {"val_F1": float("nan"), "val_loss": 0.5, "val_IoU": float("inf")},
        "steps": 2,
        "epochs": 0,
        "seconds": 1.0,
    }
    path = write_summary(tmp_path / "finetune_summary.json", summary)

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data["best_score"] is None and data["validation"] == {
        "val_F1": None,
        "val_loss": 0.5,
        "val_IoU": None,
    }
    print_summary(data)  # what `finetune` prints after a run reads it back


def test_config_run_does_not_print_lightningclis_args_warning(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    import sys
    import warnings

    from vitp_geo.tasks.run import build_cli, default_config

    # As under `vitp-geo finetune ... --config x.yaml`: sys.argv holds our own command line.
    monkeypatch.setattr(sys, "argv", ["vitp-geo", "finetune", "segmentation", "--config", "x.yaml"])
    cfg = default_config("segmentation", tmp_path / "data")
    cfg["trainer"].update(enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cli = build_cli(cfg, [], tmp_path)
    assert cli.model.hparams["num_classes"] == 5  # the config was applied
    messages = [str(w.message) for w in seen] + [capsys.readouterr().err]
    assert not [m for m in messages if "LightningCLI's args parameter" in m], messages


def test_finetune_checkpoints_survive_a_full_disk(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """The fine-tune trainer saves through AtomicCheckpointIO: a full disk while best.ckpt/last.ckpt
    is rewritten keeps the earlier file whole (Lightning's own IO stages in /tmp and copies across
    disks onto the final name)."""
    import errno

    import vitp_geo.io.checkpoint_io as checkpoint_io
    from vitp_geo.tasks.run import build_cli, default_config

    cfg = default_config("segmentation", tmp_path / "data")
    cfg["trainer"].update(enable_progress_bar=False, enable_model_summary=False, logger=False)
    trainer = build_cli(cfg, [], tmp_path).trainer
    assert isinstance(trainer.strategy.checkpoint_io, checkpoint_io.AtomicCheckpointIO)
    path = tmp_path / "checkpoints" / "last.ckpt"
    trainer.strategy.checkpoint_io.save_checkpoint({"global_step": 1}, path)
    saved = path.read_bytes()

    def full_disk(obj: object, f: object) -> None:
        f.write(b"cut")  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        trainer.strategy.checkpoint_io.save_checkpoint({"global_step": 2}, path)
    assert path.read_bytes() == saved and [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


@pytest.mark.slow
def test_save_last_keeps_a_resumable_full_checkpoint_apart(tmp_path) -> None:  # noqa: ANN001
    from lightning import Callback, Trainer

    from vitp_geo.tasks import SegmentationTask
    from vitp_geo.tasks.run import default_config, fit

    cfg = default_config("segmentation", tmp_path / "data")
    cfg["trainer"].update(max_steps=1, max_epochs=1, limit_val_batches=1, enable_model_summary=False)
    fit(cfg, "segmentation", tmp_path, progress=False, save_last=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["optimizer_states"] and last["lr_schedulers"] and last["global_step"] == 1
    assert "optimizer_states" not in torch.load(tmp_path / "model.ckpt", weights_only=True)
    from vitp_geo.tasks.run import build_cli

    cfg["trainer"].update(max_steps=2, max_epochs=3, logger=False, enable_progress_bar=False)
    cfg["trainer"]["default_root_dir"] = str(tmp_path / "resume")

    class CountSteps(Callback):
        steps = 0

        def on_train_batch_end(self, *args: object) -> None:
            self.steps += 1

    counter = CountSteps()
    cli = build_cli(cfg, [counter], tmp_path / "resume")
    assert isinstance(cli.model, SegmentationTask) and isinstance(cli.trainer, Trainer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    assert cli.trainer.global_step == 2 and counter.steps == 1  # resumed at step 1: one more step


def test_a_batch_larger_than_an_epoch_is_one_error_line(tmp_path, capsys) -> None:  # noqa: ANN001
    """Issue 20: ``--batch-size 100000`` was torchgeo's "train_batch_sampler has length 0"
    traceback after the data were generated."""
    out = tmp_path / "run"
    rc = main(["finetune", "segmentation", "--output", str(out), "--batch-size", "100000", "--no-progress"])
    # the error line (Lightning's info lines and its logging to a stream of an earlier test aside)
    err = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("vitp-geo finetune: error:")
    ]
    assert rc == 2 and len(err) == 1, err
    assert "batch_size 100000 is more than the" in err[0] and "lower --batch-size" in err[0]
    assert not (out / "model.ckpt").exists()


def test_ctrl_c_during_training_ends_in_our_line_not_lightnings(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    """Issue 20: a Ctrl-C in finetune ended in Lightning's "attempting graceful shutdown" and a
    bare exit 1; now exit 130 and a last line saying where training stopped and what is missing."""
    import signal

    from lightning.pytorch.trainer.trainer import Trainer

    def interrupted(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_fit_impl", interrupted)
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # Lightning ignores SIGINT from then on
    out = tmp_path / "run"
    rc = main(["finetune", "segmentation", "--output", str(out), "--max-steps", "1", "--no-progress"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 130, lines
    assert (
        lines[-1] == f"vitp-geo: interrupted; training stopped at step 0; no {out / 'model.ckpt'} was written"
    )
    assert not (out / "model.ckpt").exists()


def test_a_rerun_replaces_the_stale_best_checkpoint_of_a_killed_run(tmp_path, capsys) -> None:  # noqa: ANN001
    """Issue 20: a finetune killed and rerun in the same folder left the stale best.ckpt beside
    Lightning's best-v1.ckpt."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "best.ckpt").write_bytes(b"the killed run's best weights")
    argv = ["finetune", "segmentation", "--output", str(out), "--max-steps", "2", "--no-progress"]
    assert main(argv) == 0
    assert (out / "model.ckpt").is_file() and not (out / "checkpoints").exists()


@pytest.mark.slow
def test_resume_after_an_interruption_continues_exactly(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    """Stopped at the start of epoch 2 of 3: --resume ends with the weights of an uninterrupted run."""
    import copy

    from lightning import Callback

    from vitp_geo.tasks import run as run_mod
    from vitp_geo.tasks.run import default_config, fit

    def config(folder):  # noqa: ANN001, ANN202
        cfg = default_config("segmentation", folder / "data")
        cfg["trainer"].update(max_epochs=3, max_steps=-1, limit_val_batches=1, enable_model_summary=False)
        cfg["data"]["init_args"]["sampling"]["length"] = 8
        return cfg

    fit(config(tmp_path / "full"), "segmentation", tmp_path / "full", progress=False, save_last=True)

    class StopInEpoch2(Callback):
        def on_train_batch_start(self, trainer, *args: object) -> None:  # noqa: ANN001
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    real_build_cli = run_mod.build_cli
    monkeypatch.setattr(
        run_mod, "build_cli", lambda cfg, cbs, *a, **k: real_build_cli(cfg, [*cbs, StopInEpoch2()], *a, **k)
    )
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt, match=r"continue with --resume"):
        fit(config(part), "segmentation", part, progress=False, save_last=True)
    saved = torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 0 and len(saved["vitp_random_state"]["generators"]) == 1  # torchgeo's sampler
    monkeypatch.setattr(run_mod, "build_cli", real_build_cli)

    other = copy.deepcopy(config(part))
    other["model"]["init_args"]["optim"]["lr"] = 0.5
    with pytest.raises(
        ValueError, match=r"--resume: the run in .* had other settings \(model\.init_args\.optim\.lr: "
    ):
        fit(other, "segmentation", part, progress=False, resume=True)
    summary = fit(config(part), "segmentation", part, progress=False, resume=True)
    assert summary["epochs"] == 3
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"]
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    # the CLI: --resume with nothing saved names the missing state; with --overwrite it is refused
    assert main(["finetune", "segmentation", "--output", str(tmp_path / "none"), "--resume"]) == 2
    assert "no saved training state" in capsys.readouterr().err
