"""Fine-tuning orchestration: configs, the embedded defaults, LightningCLI, training and outputs.

``vitp-geo finetune`` (``vitp_geo.cli.finetune``) only parses flags and calls these, so a
notebook user gets the same behaviour::

    from vitp_geo.tasks.run import default_config, fit
    summary = fit(default_config("segmentation", Path("run/data")), "segmentation", Path("run"))

``fit`` writes ``<out>/model.ckpt`` (best weights, hyper-parameters, model card; no optimizer
state), optionally ``<out>/checkpoints/last.ckpt`` (``save_last``) and
``<out>/finetune_summary.json`` (strict JSON).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from vitp_geo.io.strict_json import json_safe
from vitp_geo.tasks.detection_default import detection_default_config

log = logging.getLogger(__name__)

TASK_CLASSES = {
    "segmentation": "vitp_geo.tasks.SegmentationTask",
    "change": "vitp_geo.tasks.ChangeDetectionTask",
    "detection": "vitp_geo.tasks.detection.ObjectDetectionTask",
}
# What a finished (or --save-last) run leaves in --output: a new run there needs --overwrite.
FINETUNE_OUTPUTS = ("model.ckpt", "finetune_summary.json", "checkpoints/last.ckpt")
MONITOR = {"segmentation": "val_mIoU", "change": "val_F1", "detection": "val_map50"}


def default_config(task: str, data_dir: Path, seed: int = 0) -> dict[str, Any]:
    """The embedded run: a tiny ViTP backbone on generated scenes (writes them into ``data_dir``)."""
    from vitp_geo.datamodules.synthetic_geotiff import write_synthetic_change, write_synthetic_segmentation
    from vitp_geo.synthetic import CLASS_COLORS, CLASS_NAMES

    if task == "detection":
        return detection_default_config(data_dir, seed)

    model: dict[str, Any] = dict(
        backbone=dict(name="vitp_tiny_patch14_112", img_size=112, neck="sfp", drop_path_rate=0.0),
        head="upernet",
        head_channels=64,
        optim=dict(lr=1e-3, weight_decay=0.05, layer_decay=0.9, warmup_steps=10, schedule="poly"),
    )
    sampling = dict(patch_size=112, batch_size=8, length=96, val_fraction=0.25, seed=seed)
    if task == "segmentation":
        folders = write_synthetic_segmentation(data_dir, n_scenes=3, size=336, seed=seed)
        model.update(
            num_classes=len(CLASS_NAMES),
            class_names=list(CLASS_NAMES),
            class_colors=[list(c) for c in CLASS_COLORS],
            # Buildings cover a few % of the pixels: with CE alone their IoU stays 0 at this budget;
            # CE + Dice reaches mIoU 0.80 / building IoU 0.62 in 20 epochs (~1 min on 2 cores).
            loss="ce+dice",
        )
        data = {
            "class_path": "vitp_geo.datamodules.geotiff.GeoTiffSegmentationDataModule",
            "init_args": dict(images=str(folders.images), labels=str(folders.labels), sampling=sampling),
        }
    else:
        folders = write_synthetic_change(data_dir, n_pairs=3, size=336, seed=seed)
        model.update(class_weights=[1.0, 3.0])
        data = {
            "class_path": "vitp_geo.datamodules.geotiff.GeoTiffChangeDataModule",
            "init_args": dict(
                before=str(folders.images),
                after=str(folders.after),
                labels=str(folders.labels),
                sampling=sampling,
            ),
        }
    return {
        "seed_everything": seed,
        "trainer": {
            "max_epochs": 20 if task == "segmentation" else 10,
            "accelerator": "cpu",
            "log_every_n_steps": 4,
        },
        "model": {"class_path": TASK_CLASSES[task], "init_args": model},
        "data": data,
    }


def load_config(path: Path) -> dict[str, Any]:
    """A LightningCLI YAML as a dict (errors name the file)."""
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(cfg, dict) or "model" not in cfg or "data" not in cfg:
        raise ValueError(f"{path}: a finetune config needs 'model' and 'data' sections")
    if "FILL_ME" in json.dumps(cfg.get("data")):
        raise ValueError(f"{path}: set the dataset root (data.init_args.root is FILL_ME)")
    refuse_old_task_keys(cfg, str(path))
    refuse_old_data_keys(cfg, str(path))
    return cfg


def check_backbone_file(path: Path) -> None:
    """The backbone weights exist, are readable and finite (a NaN backbone trains a NaN model)."""
    from vitp_geo.models.convert import check_finite_weights, read_state_dict, refuse_reference_model

    if not path.is_file():
        raise FileNotFoundError(f"backbone not found: {path}")
    from vitp_geo.tasks.backbone import refuse_finetuned_checkpoint

    refuse_finetuned_checkpoint(path)  # a fine-tuned model.ckpt (any task) is not a backbone
    state = read_state_dict(path)
    refuse_reference_model(state, path)  # nor is a released fine-tuned reference model (vitp-geo convert)
    check_finite_weights(state, path)


def check_task1_source(datamodule: Any) -> None:
    """Refuse ``--task1-out`` for a datamodule whose test split cannot name its images.

    Task1 result lines start with the image name; only a test split of image files (DOTA, DIOR,
    COCO: ``vitp_geo.datamodules.detection.DetectionFilesDataModule``) has them.
    """
    name = type(datamodule).__name__
    try:
        datamodule.setup("test")
    except ValueError as err:
        raise ValueError(
            f"--task1-out writes the test split's predictions, but {name} has none: {err}"
        ) from err
    dataset = getattr(datamodule, "test_dataset", None)
    if dataset is None or len(dataset) == 0 or "image_id" not in dataset[0]:
        raise ValueError(
            f"--task1-out writes DOTA Task1 lines that name each image, but the test split of {name} "
            "gives no image names; use DetectionFilesDataModule (DOTA / DIOR / COCO files) with a test_split"
        )


def fit(
    cfg: dict[str, Any],
    task: str,
    out: Path,
    progress: bool = True,
    source: str = "config",
    save_last: bool = False,
    score_start: bool = False,
    task1_out: Path | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
) -> dict[str, Any]:
    """Instantiate through LightningCLI, train, validate the best checkpoint, write the outputs.

    Datamodules with a ``dice_report(predictor)`` method (the medical ones) also score whole
    validation cases (per-case Dice, :class:`vitp_geo.medical.finetune.CaseDice` on the trainer's
    device) with the best weights, and with ``score_start`` once before training too.

    ``<out>/model.ckpt`` holds the best weights, hyper-parameters and model card, no optimizer
    state; with ``save_last``, ``<out>/checkpoints/last.ckpt`` keeps the full training state of
    the last step (Lightning's ``ckpt_path`` resumes from it).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    from vitp_geo.medical.finetune import CaseDice
    from vitp_geo.models.convert import check_finite_weights
    from vitp_geo.tasks.loading import write_weights_checkpoint

    ckpt_dir = out / "checkpoints"
    monitor = MONITOR[task]
    resume_from = check_resume(cfg, out) if resume else None
    save_last = save_last or resume
    # The best weights only (no optimizer state: a paper-size run's full state is ~3x the weights).
    # A run killed and rerun in the same folder: its stale best weights must not stay beside the new
    # ones (Lightning would write best-v1.ckpt) nor outlive a run that never validates.
    # A resumed run keeps its best weights so far (the restored checkpoint callback points at them).
    for stale in () if resume_from else ("best.ckpt", "final.ckpt"):
        if (ckpt_dir / stale).is_file():
            log.warning("removing %s, left by an interrupted run", ckpt_dir / stale)
            (ckpt_dir / stale).unlink()
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=monitor,
        mode="max",
        save_weights_only=True,
        enable_version_counter=False,
    )
    case_dice = CaseDice(score_start)
    callbacks: list[Any] = [checkpoint, case_dice]
    if save_last:  # the full, resumable state: optional, in its own file, replaced as training goes
        when: dict[str, Any] = (
            {"every_n_train_steps": checkpoint_every}
            if checkpoint_every
            else {"every_n_epochs": 1}  # after the epoch's validation, which draws from torch's generator
        )
        callbacks += [
            RandomState(),
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="last",
                monitor=None,
                save_top_k=1,
                enable_version_counter=False,
                **when,
            ),
        ]
        if resume_from is None:
            write_summary(out / RUN_CONFIG, json_safe(_settings(cfg)))
    trainer_cfg = cfg.setdefault("trainer", {})
    trainer_cfg["enable_progress_bar"] = bool(trainer_cfg.get("enable_progress_bar", True)) and progress
    if resume_from is not None:  # see RandomState: the restored random state must not be drawn from
        trainer_cfg["num_sanity_val_steps"] = 0
    start = time.time()
    cli = build_cli(cfg, callbacks, out, source)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    if task1_out is not None:  # checked before training, not after it
        check_task1_source(datamodule)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
    except SystemExit as exit_:
        if not trainer.interrupted:
            raise
        # Lightning's answer to Ctrl-C is its own log line and sys.exit(1): say what is left instead
        hint = (
            f"; continue with --resume (state saved in {ckpt_dir / 'last.ckpt'})"
            if (ckpt_dir / "last.ckpt").is_file()
            else ""
        )
        raise KeyboardInterrupt(
            f"training stopped at step {trainer.global_step}; no {out / 'model.ckpt'} was written{hint}"
        ) from exit_
    best = checkpoint.best_model_path
    if not best:  # validation never ran (e.g. max_steps ends the first epoch): the final weights
        best = str(ckpt_dir / "final.ckpt")
        trainer.save_checkpoint(best, weights_only=True)
    results = trainer.validate(model, datamodule=datamodule, ckpt_path=best, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    final = out / "model.ckpt"
    try:  # the model now holds the best checkpoint's weights
        check_finite_weights(model.state_dict(), best)
    except ValueError as err:
        raise RuntimeError(
            f"training diverged: {err}; {final} not written (lower the learning rate, check the data)"
        ) from err
    write_weights_checkpoint(best, final)
    if Path(best).parent == ckpt_dir:  # model.ckpt holds the same weights: no second copy
        Path(best).unlink(missing_ok=True)
        if not any(ckpt_dir.iterdir()):
            ckpt_dir.rmdir()
    summary: dict[str, Any] = {
        "task": task,
        "checkpoint": str(final),
        "monitor": monitor,
        "best_score": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "validation": metrics,
        "steps": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "seconds": round(time.time() - start, 1),
    }
    if CaseDice.applies(trainer):  # scored by the callback in the last validate: the best weights
        summary["dice"] = case_dice.final
        summary["dice_start"] = case_dice.start
    if task1_out is not None and trainer.is_global_zero:  # DOTA server submission files, best weights
        from vitp_geo.io.annotations.dota import write_task_results
        from vitp_geo.tasks.detection import predict_task_results

        datamodule.setup("test")
        preds = predict_task_results(model, datamodule.test_dataloader(), progress=progress)
        files = write_task_results(task1_out, preds, list(model.class_names), task=1)
        summary["task1"] = dict(folder=str(task1_out), images=len(preds), files=len(files))
    summary = json_safe(summary)
    write_summary(out / "finetune_summary.json", summary)
    return summary


# LightningCLI warns when ``args`` is given while ``sys.argv`` holds arguments, and prints the
# whole config dict in the warning. Here ``sys.argv`` is the ``vitp-geo`` command line, which we
# parsed ourselves: the warning is always a false alarm.
_ARGS_AND_ARGV_WARNING = r"LightningCLI's args parameter is intended to run from within Python"


RUN_CONFIG = "finetune_config.json"


def _settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The parts of a run's config that a resumed run must share (not where it writes or shows)."""
    settings = json.loads(json.dumps(cfg, default=str))
    trainer = settings.get("trainer") or {}
    for key in ("default_root_dir", "enable_progress_bar", "logger", "callbacks"):
        trainer.pop(key, None)
    return settings


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    return None if a == b else f"{where or 'config'}: {a!r} then, {b!r} now"


def check_resume(cfg: dict[str, Any], out: Path) -> str:
    """The ``last.ckpt`` to resume from, after checking that the run in ``out`` had these settings.

    Raises:
        FileNotFoundError: no saved state in ``out``.
        ValueError: the saved run had other settings (names the first that differs).
    """
    last = out / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise FileNotFoundError(
            f"--resume: no saved training state in {out} ({last} is missing): a run saves it with "
            "--save-last or --resume"
        )
    saved = out / RUN_CONFIG
    if not saved.is_file():
        raise ValueError(
            f"--resume: {saved} is missing, so the settings of the run in {out} cannot be checked"
        )
    before = json.loads(saved.read_text())
    diff = _first_difference(before, _settings(cfg))
    if diff is not None:
        raise ValueError(
            f"--resume: the run in {out} had other settings ({diff}); resume with the same config and flags, "
            "or start a new run in another --output"
        )
    return str(last)


def _train_generators(trainer: Any) -> list[Any]:
    """The ``torch.Generator`` objects of the training dataloaders and their samplers (e.g.
    torchgeo's ``RandomBatchGeoSampler(generator=...)``), in a fixed order."""
    import torch

    loaders = trainer.train_dataloader
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    elif not isinstance(loaders, list | tuple):
        loaders = [loaders]
    found: list[Any] = []
    for loader in loaders:
        for owner in (
            loader,
            getattr(loader, "sampler", None),
            getattr(loader, "batch_sampler", None),
            getattr(getattr(loader, "batch_sampler", None), "sampler", None),
        ):
            gen = getattr(owner, "generator", None)
            if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
                found.append(gen)
    return found


class RandomState(Callback):
    """Keeps the random states in the training checkpoint and puts them back on resume (Python's,
    NumPy's, torch's, and the training samplers' own generators), so a resumed run draws the
    batches the uninterrupted run would have drawn.

    The global states are put back as the checkpoint is read, before the training dataloader's
    iterator draws its seed; a resumed run skips Lightning's sanity validation, which would draw
    in between (the uninterrupted run did not validate at that point). The samplers' own
    generators exist only once the dataloaders are built: they are set when training starts.
    """

    KEY = "vitp_random_state"

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        import random

        import numpy as np
        import torch

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        # plain containers and tensors only: the checkpoint loads with weights_only=True
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "generators": [g.get_state() for g in _train_generators(trainer)],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint[self.KEY] = state

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        import random

        import numpy as np
        import torch

        state = checkpoint.get(self.KEY)
        if state is None:
            return
        self._pending = state
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        generators = _train_generators(trainer)
        if len(generators) != len(state["generators"]):
            raise RuntimeError(
                f"--resume: the saved run had {len(state['generators'])} sampler generators, this one has "
                f"{len(generators)}: not the same data pipeline"
            )
        for gen, saved in zip(generators, state["generators"], strict=True):
            gen.set_state(saved)


# The DataModules were installed as the top-level package ``datamodules`` before they moved under
# our namespace; a config written then names them by the old path.
OLD_DATAMODULES = "datamodules."
DATAMODULES = "vitp_geo.datamodules."


def refuse_old_datamodule_paths(cfg: Any, source: str = "config", where: str = "") -> None:
    """Refuse a ``class_path`` that names the old top-level ``datamodules`` package, naming the new path.

    Raises:
        ValueError: ``"<source>: data.class_path 'datamodules.X' is the old path: ... use 'vitp_geo.datamodules.X'"``.
    """
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            here = f"{where}.{key}" if where else str(key)
            if key == "class_path" and isinstance(value, str) and value.startswith(OLD_DATAMODULES):
                new = DATAMODULES + value[len(OLD_DATAMODULES) :]
                raise ValueError(
                    f"{source}: {here} {value!r} is the old path: the DataModules are installed as "
                    f"vitp_geo.datamodules; use {new!r}"
                )
            refuse_old_datamodule_paths(value, source, here)
    elif isinstance(cfg, list):
        for i, value in enumerate(cfg):
            refuse_old_datamodule_paths(value, source, f"{where}[{i}]")


def refuse_old_task_keys(cfg: dict[str, Any], source: str = "config") -> None:
    """Refuse a task setting in the flat spelling of before the argument groups (``tasks.args``),
    naming the grouped key: ``model.init_args.lr`` is now ``model.init_args.optim.lr``.

    Raises:
        ValueError: ``"<source>: model.init_args.lr is the old spelling: ...; use model.init_args.optim.lr"``.
    """
    from vitp_geo.tasks.args import old_spelling

    model = cfg.get("model")
    init = model.get("init_args") if isinstance(model, dict) else None
    if not isinstance(init, dict):
        return
    for key, value in init.items():
        if key == "backbone" and isinstance(value, dict):
            continue  # the group itself
        message = old_spelling(str(key))
        if message is not None:
            raise ValueError(f"{source}: {message}")


def refuse_old_data_keys(cfg: dict[str, Any], source: str = "config") -> None:
    """Refuse a sampling setting in the flat spelling of before the group
    (``vitp_geo.datamodules.sampling``) for a DataModule that takes the group, naming the grouped
    key: ``data.init_args.batch_size`` is now ``data.init_args.sampling.batch_size``. (torchgeo's
    own DataModules take them flat.)

    Raises:
        ValueError: ``"<source>: data.init_args.batch_size is the old spelling: ...; use data.init_args.sampling.batch_size"``.
    """
    from vitp_geo.datamodules.sampling import old_spelling, takes_sampling

    data = cfg.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("init_args"), dict):
        return
    messages = [m for m in map(old_spelling, data["init_args"]) if m is not None]
    if messages and takes_sampling(data.get("class_path")):
        raise ValueError(f"{source}: {messages[0]}")


def build_cli(cfg: dict[str, Any], callbacks: list[Any], out: Path, source: str = "config") -> Any:
    """Instantiate trainer, model and datamodule from ``cfg`` through LightningCLI (``run=False``).

    Raises:
        ValueError: unknown or mistyped config keys (names ``source`` and the key); a
            ``class_path`` under the old top-level ``datamodules`` package (names the new one); a
            task or sampling setting in the flat spelling of before the argument groups (names the
            new key).
    """
    refuse_old_datamodule_paths(cfg, source)
    refuse_old_task_keys(cfg, source)
    refuse_old_data_keys(cfg, source)
    import warnings
    from argparse import ArgumentError

    from lightning.pytorch.cli import LightningCLI

    from vitp_geo.io.checkpoint_io import AtomicCheckpointIO

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_ARGS_AND_ARGV_WARNING, category=UserWarning)
            return LightningCLI(
                args=cfg,
                run=False,
                save_config_callback=None,
                trainer_defaults={
                    "callbacks": callbacks,
                    "plugins": [AtomicCheckpointIO()],  # no cut-off checkpoint on a full disk
                    "logger": {
                        "class_path": "lightning.pytorch.loggers.CSVLogger",
                        "init_args": {"save_dir": str(out)},
                    },
                },
                parser_kwargs={"exit_on_error": False},
            )
    except (ArgumentError, KeyError, ValueError, TypeError) as err:  # jsonargparse: keys, values, __init__
        raise ValueError(f"{source}: {concise_config_error(err)}") from err


def concise_config_error(err: BaseException) -> str:
    """The cause behind jsonargparse's "Does not validate against any of the Union subtypes" (and its
    dump of the whole section), with the section it concerns:
    ``invalid configuration (model section): <cause>``."""
    msg = str(err)
    if "Errors:" not in msg:
        return f"invalid configuration: {msg}"
    causes: list[str] = []
    item_indent = None
    for line in msg.splitlines():
        text, indent = line.strip(), len(line) - len(line.lstrip())
        if text.startswith("- "):
            item_indent = None
            if not text.startswith("- Expected a <class"):
                causes.append(text[2:])
                item_indent = indent
        elif item_indent is not None and indent > item_indent and text and causes:
            causes[-1] += " " + text  # the cause's own lines, e.g. "Option 'num_clases' is not accepted"
        else:
            item_indent = None
    section = "model" if "LightningModule" in msg else "data" if "LightningDataModule" in msg else "config"
    return f"invalid configuration ({section} section): {'; '.join(causes) or msg.splitlines()[0]}"


def write_summary(path: Path, summary: dict[str, Any]) -> Path:
    """Write the run summary as strict JSON (non-finite scores become null)."""
    from vitp_geo.io.atomic import atomic_output

    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")
    return path


def print_summary(summary: dict[str, Any]) -> None:
    print(
        f"\nfinetune {summary['task']}: {summary['steps']} steps, {summary['epochs']} epochs, {summary['seconds']} s"
    )
    print("validation (best checkpoint):")
    for key, value in sorted(summary["validation"].items()):
        print(f"  {key:<28} {'n/a' if value is None else f'{value:.4f}'}")
    if summary.get("dice"):
        from vitp_geo.medical.finetune import format_report

        print(format_report(summary["dice"]))
        start = (summary.get("dice_start") or {}).get("mean_dice")
        end = summary["dice"]["mean_dice"]
        if start is not None and end is not None:
            print(f"  mean Dice before training {start:.4f} -> after {end:.4f}")
    print(f"checkpoint: {summary['checkpoint']}  (vitp-geo infer reads its model card)")
