"""One pretraining run, start to finish: build parts, train with Lightning, export the backbone.

Outputs in the run folder:

- ``backbone.safetensors`` + ``backbone.json``: the pretrained ViT as a plain timm state dict;
- ``checkpoints/last.ckpt`` (and periodic ones): Lightning checkpoints, ``--resume`` reads them;
- ``metrics.csv`` and ``loss.png``;
- for the embedded default, ``corpus/`` (the generated instruction data) and ``tokenizer/``.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

from vitp_geo.io.atomic import atomic_output
from vitp_geo.io.checkpoint_io import AtomicCheckpointIO
from vitp_geo.io.strict_json import json_safe
from vitp_geo.launch import launch_rank, launch_world_size
from vitp_geo.pretrain.config import PretrainConfig
from vitp_geo.pretrain.datamodule import InstructionDataModule
from vitp_geo.pretrain.dataset import InstructionDataset, collate
from vitp_geo.pretrain.metrics import MetricsCSV, plot_loss, read_metrics
from vitp_geo.pretrain.module import ViTPPretrainModule
from vitp_geo.pretrain.reliance import (
    NEAR_ZERO_GAIN,
    ImageReliance,
    RelianceResult,
    RelianceSet,
    hold_out,
    unseen_set,
)
from vitp_geo.vlm.model import LossReduction, ViTPModel


@dataclass
class PretrainSummary:
    """What a run did and where its outputs are."""

    output: Path
    steps: int
    first_loss: float
    last_loss: float
    images_per_s: float
    nonfinite_steps: int
    skipped_records: int
    backbone: Path | None
    seconds: float
    reliance: RelianceResult | None = None
    peak_rss_mb: float | None = None  # this process's peak resident memory (Linux/macOS), None elsewhere
    precision: str | None = None  # the trainer's precision (what --precision auto chose)
    vision_init: str | None = None  # where the ViT started (the synthetic base's file and settings)

    @property
    def reliance_near_zero(self) -> bool:
        if self.reliance is None:
            return False
        gain = self.reliance.image_gain_decided
        return (gain if math.isfinite(gain) else self.reliance.image_gain) < NEAR_ZERO_GAIN

    def format(self) -> str:
        lines = [
            "ViTP pretraining finished",
            f"  steps          {self.steps}",
            f"  loss           {self.first_loss:.4f} (mean of first steps) -> {self.last_loss:.4f} (mean of last steps)",
            f"  images/s       {self.images_per_s:.1f} (image tiles through the ViT, per device)",
            f"  time           {self.seconds:.0f} s",
        ]
        if self.vision_init is not None:
            lines.append(f"  ViT start      {self.vision_init}")
        if self.precision is not None:
            lines.append(f"  precision      {self.precision}")
        if self.peak_rss_mb is not None:
            lines.append(f"  peak memory    {self.peak_rss_mb / 1024:.2f} GB resident (this process)")
        if self.reliance is not None:
            lines.append(self.reliance.format())
            if self.reliance_near_zero:
                lines.append(
                    f"  WARNING        the image gain is below {NEAR_ZERO_GAIN} nats/answer: the VLM barely "
                    "uses the image, so the ViT learned little from the instructions"
                )
        if self.nonfinite_steps:
            lines.append(f"  skipped steps  {self.nonfinite_steps} with a non-finite loss")
        if self.skipped_records:
            lines.append(f"  bad records    {self.skipped_records} skipped (--skip-bad-samples)")
        lines.append(f"  outputs        {self.output}")
        if self.backbone is not None:
            lines.append(
                f"  backbone       {self.backbone} (+ backbone.json; timm.create_model + load_state_dict)"
            )
        lines.append(
            f"  checkpoints    {self.output / 'checkpoints' / 'last.ckpt'} (continue with --resume last)"
        )
        lines.append(f"  metrics        {self.output / 'metrics.csv'}, {self.output / 'loss.png'}")
        return "\n".join(lines)


RUN_DIR_ENV = "VITP_GEO_RUN_DIR"


def default_output(domain: str) -> Path:
    """``runs/pretrain-<domain>-<timestamp>``, chosen once and shared with every rank.

    The first process picks the folder and records it in ``$VITP_GEO_RUN_DIR``; processes that
    Lightning starts for the other ranks inherit the variable, so all ranks write to one folder
    (a per-second timestamp taken again by a later rank would name another one). Launchers that
    start every rank at once (torchrun, SLURM) cannot share it this way: they need ``--output``.
    """
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if (launch_world_size() or 1) > 1:
        raise ValueError(
            "under torchrun or SLURM every rank starts on its own: pass --output DIR so that all "
            "ranks write to the same run folder"
        )
    return Path("runs") / f"pretrain-{domain}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX).

    On such a CPU bf16 autocast makes the tiny default's step about 1.5x faster
    (``benchmarks/pretrain_step.py``); elsewhere bf16 is emulated and slower than fp32. torch
    exposes the check only privately: an older or newer torch without it reads as "no".
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(bool(getattr(torch.cpu, name)()) for name in checks if hasattr(torch.cpu, name))
    except RuntimeError:
        return False


def resolve_precision(cfg: PretrainConfig) -> str:
    """``--precision auto``: bf16-mixed where the device computes bf16 natively, else 32-true.

    CUDA (as the paper's runs), and a CPU with AVX512-BF16 or AMX: the tiny default's 1,000
    steps were chosen, and measured to read the image, under bf16 autocast on such a CPU
    (docs/pretraining-evidence.md §2). ``--precision 32-true`` keeps fp32 anywhere.
    """
    if cfg.precision != "auto":
        return cfg.precision
    on_cuda = torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")
    on_cpu = cfg.accelerator == "cpu" or (cfg.accelerator == "auto" and not torch.cuda.is_available())
    return "bf16-mixed" if on_cuda or (on_cpu and cpu_has_native_bf16()) else "32-true"


def default_corpus_builder(domain: str) -> Callable[..., Path]:
    """The function that builds ``domain``'s embedded corpus (``rs``: the synthetic world, ``med``: phantoms)."""
    if domain == "med":  # phantoms: CT, MRI and radiographs (vitp_geo.medical.default_corpus)
        from vitp_geo.medical.default_corpus import build_medical_default_corpus

        return build_medical_default_corpus
    if domain == "rs":
        from vitp_geo.instruct.default_corpus import build_default_corpus

        return build_default_corpus
    raise ValueError(
        f"--domain {domain} has no embedded corpus; pass --data RECIPE (see configs/recipes/ for templates)"
    )


WORLD_SETTINGS = "world.json"  # beside an embedded corpus: the settings it was built with


def _world_settings(cfg: PretrainConfig) -> dict[str, Any]:
    """The settings an embedded corpus depends on (what ``build_default_corpus`` is called with)."""
    settings: dict[str, Any] = {"domain": cfg.domain, "seed": cfg.seed}
    if cfg.domain == "rs":
        from vitp_geo.instruct.default_corpus import DEFAULT_N_SCENES

        settings["question_first"] = cfg.question_first
        settings["world_scenes"] = cfg.world_scenes if cfg.world_scenes is not None else DEFAULT_N_SCENES
    return settings


def _check_reused_world(cfg: PretrainConfig, corpus: Path) -> None:
    """Refuse a run folder whose embedded corpus was built with other settings.

    The corpus (and the tokenizer and unseen world made from it) of a run folder is reused, on
    ``--resume`` and on ``--overwrite``: a run with another seed, ``--question-first`` or
    ``--world-scenes`` would otherwise train on the earlier run's world without a word. The
    corpus's :data:`WORLD_SETTINGS` says what it was built with; a corpus from before that file
    existed is checked on its number of scenes. Nothing is written before the check.
    """
    if not (corpus / "recipe.json").is_file():
        return
    asked = _world_settings(cfg)
    recorded = corpus / WORLD_SETTINGS
    if recorded.is_file():
        built = json.loads(recorded.read_text())
    else:  # built before world.json existed: its scene folders still say its size
        images = corpus / "images"
        if cfg.domain != "rs" or not images.is_dir():
            return
        scenes = sum(1 for d in images.iterdir() if d.is_dir() and re.fullmatch(r"scene_\d+", d.name))
        built = {**asked, "world_scenes": scenes}
    differ = [k for k in asked if k in built and built[k] != asked[k]]
    if differ:
        was = ", ".join(f"--{k.replace('_', '-')} {built[k]}" for k in differ)
        now = ", ".join(f"--{k.replace('_', '-')} {asked[k]}" for k in differ)
        raise ValueError(
            f"{corpus} was built for {was} and this run asks for {now}: the corpus of a run folder is "
            "reused (--resume, --overwrite), so run with the settings it was built for, or choose "
            "another --output"
        )


def build_parts(cfg: PretrainConfig, output: Path) -> tuple[ViTPModel, object, Path, str]:
    """Model, tokenizer, recipe path and how the summary names the ViT's start (embedded default or real parts)."""
    from vitp_geo.vlm.build import build_tiny_vlm, load_internvl
    from vitp_geo.vlm.tokenizer import build_offline_tokenizer, load_tokenizer

    if cfg.data is None:
        build_default_corpus = default_corpus_builder(cfg.domain)
        corpus = output / "corpus"
        recipe = corpus / "recipe.json"
        # Resumed runs reuse the corpus they trained on; under torchrun only rank 0 builds it.
        extra: dict[str, Any] = {"question_first": cfg.question_first} if cfg.question_first else {}
        if cfg.world_scenes is not None:
            extra["n_scenes"] = cfg.world_scenes
        _check_reused_world(cfg, corpus)

        def build_world() -> None:
            build_default_corpus(corpus, seed=cfg.seed, **extra)
            with atomic_output(corpus / WORLD_SETTINGS) as tmp:
                tmp.write_text(json.dumps(_world_settings(cfg), indent=2) + "\n")

        _made_by_rank_zero(recipe, build_world)
    else:
        recipe = Path(cfg.data)
        if not recipe.is_file():
            raise FileNotFoundError(f"recipe not found: {recipe}")

    if cfg.model_path is not None:
        model, tokenizer = load_internvl(cfg.model_path, drop_path_rate=cfg.drop_path)
        vision_init = "InternViT weights of --model-path"
    else:
        tok_dir = output / "tokenizer"

        def save_tokenizer() -> None:
            with atomic_output(tok_dir) as tmp:
                build_offline_tokenizer(_corpus_texts(recipe)).save_pretrained(str(tmp))

        _made_by_rank_zero(tok_dir, save_tokenizer)
        tokenizer = load_tokenizer(tok_dir)  # every rank (and a resumed run) reads the same files
        model = build_tiny_vlm(
            tokenizer,
            vision_arch=cfg.vision_arch,
            llm_layers=cfg.llm_layers,
            drop_path_rate=cfg.drop_path,
            seed=cfg.seed,
        )
        start = vision_start(cfg)
        vision_init = "random init" if start is None else start[1]
        if start is not None:
            load_start_weights(model, start[0])
    model.vrl_ratio = cfg.vrl_ratio
    model.vrl_prob = cfg.vrl_prob
    model.vrl_reference_mode = cfg.vrl_reference
    model.loss_reduction = LossReduction(cfg.loss_reduction)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model, tokenizer, recipe, vision_init


def vision_start(cfg: PretrainConfig, log: Callable[[str], None] | None = None) -> tuple[Path, str] | None:
    """The weights the tiny model's ViT starts from and how the summary names them; None: random init.

    ``synthetic``: the cached base of :mod:`vitp_geo.pretrain.base` for ``cfg.vision_arch``,
    ``base_scenes`` and ``base_steps``, trained first when this machine has none (under torchrun
    by rank 0 only). A file path: that backbone.
    """
    from vitp_geo.pretrain.base import BaseSpec, base_cache_dir, synthetic_base

    start = cfg.vision_start
    if start in ("random", "internvl"):
        return None
    if start != "synthetic":
        return Path(start), f"{start} (--vision-init)"
    spec = BaseSpec(arch=cfg.vision_arch, scenes=cfg.base_scenes, steps=cfg.base_steps)
    folder = base_cache_dir() / f"synthetic-{spec.key()}"
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    _made_by_rank_zero(folder, lambda: synthetic_base(spec, log=say))
    weights, meta, _ = synthetic_base(spec, log=say)  # made: reads the cache
    took = f"; built in {meta['world_s'] + meta['train_s']:.0f} s" if "train_s" in meta else ""
    return weights, (
        f"synthetic base {weights} ({spec.scenes} scenes of a general synthetic world, {spec.steps} steps of "
        f"per-patch classes and building counts; no corpus labels{took})"
    )


def load_start_weights(model: ViTPModel, path: Path) -> None:
    """Load a backbone file into ``model.vision_model``: every key, every shape, or an error naming the file."""
    from vitp_geo.models.vit import load_backbone

    vit = load_backbone(path)
    want = model.vision_model.state_dict()
    got = vit.state_dict()
    if set(got) != set(want) or any(got[k].shape != want[k].shape for k in want):
        missing = sorted(set(want) - set(got))[:3]
        odd = sorted(k for k in set(want) & set(got) if got[k].shape != want[k].shape)[:3]
        raise ValueError(
            f"{path}: not a backbone of this run's ViT ({type(model.vision_model).__name__}); "
            f"missing {missing}, other shapes {odd}"
        )
    model.vision_model.load_state_dict(got)


# The unseen world of an embedded corpus: its builder's size arguments, and the offset added to the
# run's seed, so that its scenes are none of a training world's (rs scene seeds are seed * 1000 + i).
UNSEEN_WORLD: dict[str, dict[str, Any]] = {
    "rs": {"n_scenes": 24},
    "med": {"n_ct": 4, "n_mri": 2, "n_xray": 16},
}
UNSEEN_SEED_OFFSET = 1_000_003


def write_unseen_world(domain: str, seed: int, out_dir: Path, question_first: float = 0.0) -> Path:
    """Build the unseen world of ``domain``'s embedded corpus for a run of ``seed`` into ``out_dir``.

    The same builders as the training corpus with ``seed + UNSEEN_SEED_OFFSET``, at the size of
    :data:`UNSEEN_WORLD`; returns its ``recipe.json``. ``benchmarks/pretrain_gain.py`` builds it
    once per seed and passes it to every arm as ``reliance_data``.
    """
    build = default_corpus_builder(domain)
    sizes = dict(UNSEEN_WORLD[domain])
    if question_first:  # the layout the run trains on
        sizes["question_first"] = question_first
    return build(out_dir, seed=seed + UNSEEN_SEED_OFFSET, **sizes)


def reliance_recipe(cfg: PretrainConfig, output: Path) -> Path | None:
    """The corpus the image-reliance check reads instead of held-out records, or None.

    ``--reliance-data`` when given; else, for an embedded corpus, ``<output>/unseen/recipe.json``
    (:func:`write_unseen_world`, built once: a resumed run reads it again; under torchrun only
    rank 0 builds it). None when the check is off, with ``--no-unseen-world``, or for ``--data``
    without ``--reliance-data``.
    """
    if not cfg.reliance_records:
        return None
    if cfg.reliance_data is not None:  # PretrainConfig.validate checked that it exists
        return Path(cfg.reliance_data)
    if not (cfg.embedded and cfg.unseen_world) or cfg.domain not in UNSEEN_WORLD:
        return None
    world = output / "unseen"
    recipe = world / "recipe.json"
    _made_by_rank_zero(recipe, lambda: write_unseen_world(cfg.domain, cfg.seed, world, cfg.question_first))
    return recipe


def _reliance_sets(
    cfg: PretrainConfig, output: Path, train_data: InstructionDataset
) -> tuple[InstructionDataset, RelianceSet, RelianceSet | None]:
    """Where the image-reliance check reads: ``(dataset, set along the way, set of the last check)``.

    With ``--reliance-data``, or an embedded corpus (a fresh world, :func:`reliance_recipe`), the
    check reads that corpus: ``reliance_records`` of its records along the way, every one at the
    end; nothing is taken from training. Otherwise ``reliance_records`` records are held out of
    ``train_data``'s index and checked on.
    """
    from vitp_geo.instruct.recipe import load_recipe

    recipe = reliance_recipe(cfg, output)
    k = cfg.reliance_shuffles
    if recipe is None:
        return train_data, hold_out(train_data, cfg.reliance_records, seed=cfg.seed, shuffles=k), None
    world = train_data.read_alike(load_recipe(recipe))
    origin = "unseen-world" if cfg.reliance_data is None else "reliance-data"
    return (
        world,
        unseen_set(world, cfg.reliance_records, seed=cfg.seed, origin=origin, shuffles=k),
        unseen_set(world, 0, seed=cfg.seed, origin=origin, shuffles=k),
    )


def _made_by_rank_zero(path: Path, make: Callable[[], object], timeout_s: float = 1800.0) -> None:
    """Run ``make`` on rank 0 unless ``path`` exists; other ranks wait for ``path`` to appear.

    ``make`` must create ``path`` atomically (write under a temporary name, then rename).
    """
    if path.exists():
        return
    rank = launch_rank() or 0
    if rank == 0:
        make()
        return
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank {rank}: waited {timeout_s:.0f} s for rank 0 to write {path}")
        time.sleep(0.5)


def _corpus_texts(recipe: Path) -> list[str]:
    """The text of every sequence of a recipe, to fit the offline tokenizer of the tiny default.

    That is each record's conversation and, once per record, the chat template's system message,
    which opens every sequence. Fitted on the conversations alone, the byte-level BPE left the
    (Chinese) InternVL2.5 system message as 165 byte tokens of a 206-token presence question;
    fitted on it too, it takes 10 tokens (the real Qwen2 tokenizer needs about 40), so the tiny
    LLM spends its compute and attention on the image and the question instead.
    """
    from vitp_geo.instruct.recipe import load_recipe
    from vitp_geo.instruct.records import read_jsonl
    from vitp_geo.vlm.template import INTERNVL2_5_SYSTEM_MESSAGE

    texts: list[str] = []
    for entry in load_recipe(recipe):
        for rec in read_jsonl(entry.annotation, skip_bad=True).records:
            texts.extend(t["value"] for t in rec.conversations)
            texts.append(INTERNVL2_5_SYSTEM_MESSAGE)
    return texts


def _resume_path(cfg: PretrainConfig, output: Path) -> str | None:
    if cfg.resume is None:
        return None
    path = output / "checkpoints" / "last.ckpt" if cfg.resume == "last" else Path(cfg.resume)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
    try:  # safe loading only: a checkpoint is data, never code
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear error
        raise ValueError(
            f"--resume {path}: not a readable Lightning checkpoint ({type(err).__name__})"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "loops" not in ckpt:
        raise ValueError(
            f"--resume {path}: not a Lightning checkpoint of a pretraining run (no state_dict/loops)"
        )
    groups = [g for opt in ckpt.get("optimizer_states") or [] for g in opt.get("param_groups", [])]
    if any("vision" not in g for g in groups):
        # Written before the ViT had AdamW groups of its own (--vision-lr-scale): its optimizer
        # state has other groups, which torch would refuse halfway into the run.
        raise ValueError(
            f"--resume {path}: written by an earlier vitp-geo whose optimizer had {len(groups)} parameter "
            "groups; this version gives the ViT groups of its own (--vision-lr-scale), so the run cannot "
            "continue from it. The checkpoint is kept; start a new run in another --output"
        )
    return str(path)


def run_pretrain(cfg: PretrainConfig) -> PretrainSummary:
    """Run pretraining as configured and return its summary (printed by the CLI on rank 0)."""
    if cfg.output is not None or os.environ.get(RUN_DIR_ENV):
        return _run_pretrain(cfg)
    output = default_output(cfg.domain)
    os.environ[RUN_DIR_ENV] = str(output)  # ranks that Lightning starts inherit the folder
    try:
        return _run_pretrain(replace(cfg, output=str(output)))
    finally:
        os.environ.pop(RUN_DIR_ENV, None)


EARLIER_RUN_FILES = ("checkpoints/last.ckpt", "metrics.csv", "backbone.safetensors")


def check_earlier_run(cfg: PretrainConfig, output: Path) -> None:
    """Refuse to start over in a folder that holds an earlier run, unless asked (one rule for all commands).

    Only the process that starts the run checks (ranks that Lightning or torchrun start later see
    rank 0's fresh files).
    """
    if cfg.resume is not None or cfg.overwrite:
        return
    if (launch_rank() or 0) != 0:
        return
    found = [name for name in EARLIER_RUN_FILES if (output / name).exists()]
    if found:
        raise ValueError(
            f"--output {output} holds an earlier run ({', '.join(found)}); pass --resume last to continue "
            "it, --overwrite to replace it, or choose another --output"
        )


def _run_pretrain(cfg: PretrainConfig) -> PretrainSummary:
    from vitp_geo.models.convert import check_finite_weights
    from vitp_geo.models.vit import export_backbone
    from vitp_geo.pretrain.export import check_export_strategy, gather_vision_state
    from vitp_geo.vlm.template import tokenize_conversation

    start = time.perf_counter()
    cfg.validate()
    check_export_strategy(cfg.strategy)
    if cfg.resume is not None and cfg.output is None:
        raise ValueError("--resume needs --output: the run folder to continue")
    output = Path(cfg.output) if cfg.output else default_output(cfg.domain)
    check_earlier_run(cfg, output)
    output.mkdir(parents=True, exist_ok=True)
    ckpt_path = _resume_path(cfg, output)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    model, tokenizer, recipe, vision_init = build_parts(cfg, output)
    if cfg.frozen_vision_steps:
        vision_init += f"; fixed for the first {min(cfg.frozen_vision_steps, cfg.max_steps)} steps"
    if cfg.vision_lr_share != 1.0 or cfg.vision_warmup:
        vision_init += f"; trained at {cfg.vision_lr_share:g}x the lr"
        if cfg.vision_warmup:
            vision_init += f", warmed up over {cfg.vision_warmup} steps"
    image_size = int(model.vision_model.patch_embed.img_size[0])  # type: ignore[index]
    datamodule = InstructionDataModule(
        recipe,
        tokenizer,
        tokenize_conversation,
        image_size=image_size,
        num_image_token=int(model.num_image_token),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        max_dynamic_patch=cfg.max_dynamic_patch,
        max_length=cfg.max_length,
        seed=cfg.seed,
        skip_bad_samples=cfg.skip_bad_samples,
        align_tasks=[t.strip() for t in cfg.align_tasks.split(",") if t.strip()],
        align_steps=cfg.align_steps,
        align_ramp_steps=cfg.align_ramp_steps,
        accumulate=cfg.accumulate,
        cache_mb=cfg.data_cache_mb,
    )
    datamodule.setup("fit")  # fail on bad data before any training starts
    assert datamodule.dataset is not None
    check_data, held, final_set = _reliance_sets(cfg, output, datamodule.dataset)
    reliance: ImageReliance | None = None
    if len(held):
        reliance = ImageReliance(
            check_data,
            held,
            partial(collate, pad_token_id=int(tokenizer.pad_token_id)),  # type: ignore[attr-defined]
            output / "image_reliance.jsonl",
            every=cfg.reliance_every,
            warmup_steps=cfg.reliance_quiet_steps,
            batch_size=max(cfg.batch_size, 8),
            final=final_set,
        )
    module = ViTPPretrainModule(
        model,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        max_steps=cfg.max_steps,
        freeze_vision=cfg.freeze_vision,
        freeze_projector=cfg.freeze_projector,
        freeze_llm=cfg.freeze_llm,
        vision_frozen_steps=cfg.frozen_vision_steps,
        vision_lr_scale=cfg.vision_lr_share,
        vision_warmup_steps=cfg.vision_warmup,
        max_nonfinite=cfg.max_nonfinite,
        seed=cfg.seed,
    )
    metrics = MetricsCSV(output / "metrics.csv")
    if ckpt_path is None and metrics.path.exists() and (launch_rank() or 0) == 0:
        metrics.path.unlink()  # a fresh run in an existing folder starts a fresh log
    precision = resolve_precision(cfg)
    trainer = L.Trainer(
        max_steps=cfg.max_steps,
        accumulate_grad_batches=cfg.accumulate,
        gradient_clip_val=cfg.grad_clip,
        devices=cfg.devices,
        accelerator=cfg.accelerator,
        strategy=_strategy(cfg),
        precision=precision,  # type: ignore[arg-type]
        plugins=[AtomicCheckpointIO()],  # no cut-off last.ckpt on a full disk
        callbacks=[
            *([reliance] if reliance is not None else []),  # before MetricsCSV: it fills the row
            ModelCheckpoint(
                dirpath=output / "checkpoints",
                filename="step{step:06d}",
                auto_insert_metric_name=False,
                every_n_train_steps=cfg.checkpoint_every,
                save_top_k=-1,
                save_last=True,
            ),
            metrics,
            TQDMProgressBar(refresh_rate=1),
        ],
        logger=False,
        use_distributed_sampler=False,  # InstructionDataModule shards by rank itself
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    # The final state goes to last.ckpt even when max_steps is not a checkpoint multiple
    # (a collective call: every rank takes part, rank 0 writes).
    trainer.save_checkpoint(output / "checkpoints" / "last.ckpt", weights_only=False)  # full, resumable
    vision_weights = gather_vision_state(trainer, module)  # collective under FSDP: every rank
    if not trainer.is_global_zero:
        return PretrainSummary(output, trainer.global_step, float("nan"), float("nan"), 0.0, 0, 0, None, 0.0)
    final = reliance.results[-1][1] if reliance is not None and reliance.results else None
    # A diverged run (e.g. --lr too high) must not leave a NaN backbone that looks finished.
    assert vision_weights is not None  # rank 0 holds the gathered weights
    check_finite_weights(vision_weights, f"{output / 'checkpoints' / 'last.ckpt'} (the trained ViT)")
    backbone, backbone_json = export_backbone(model.vision_model, output, state=vision_weights)
    _annotate_backbone_json(backbone_json, cfg, final, precision, vision_init)
    rows = read_metrics(metrics.path)
    if rows:
        plot_loss(metrics.path, output / "loss.png")
    losses = [r["loss"] for r in rows]
    k = max(1, min(10, len(losses) // 5))
    return PretrainSummary(
        output=output,
        steps=trainer.global_step,
        first_loss=sum(losses[:k]) / k if losses else float("nan"),
        last_loss=sum(losses[-k:]) / k if losses else float("nan"),
        images_per_s=(sum(r["images_per_s"] for r in rows[1:]) / max(1, len(rows) - 1)) if rows else 0.0,
        nonfinite_steps=module.nonfinite_steps,
        skipped_records=len(datamodule.dataset.report.skipped),
        backbone=backbone,
        seconds=time.perf_counter() - start,
        reliance=final,
        peak_rss_mb=peak_rss_mb(),
        precision=precision,
        vision_init=vision_init,
    )


def _strategy(cfg: PretrainConfig) -> str:
    """DDP is told that the ViT has no gradients while it is fixed (``vision_frozen_steps``)."""
    if cfg.strategy.lower() == "ddp" and cfg.frozen_vision_steps:
        return "ddp_find_unused_parameters_true"
    return cfg.strategy


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process in MiB (``None`` where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _annotate_backbone_json(
    path: Path, cfg: PretrainConfig, reliance: RelianceResult | None, precision: str, vision_init: str
) -> None:
    """Record how the backbone was made, next to what timm needs to rebuild it."""
    data = json.loads(path.read_text())
    data["pretraining"] = {
        k: v
        for k, v in asdict(cfg).items()
        if k
        in (
            "domain",
            "model_path",
            "data",
            "max_steps",
            "lr",
            "vrl_ratio",
            "vrl_prob",
            "vrl_reference",
            "seed",
        )
    }
    data["pretraining"]["precision"] = precision
    data["pretraining"]["vision_init"] = vision_init  # the base it started from, named
    data["pretraining"]["vision_frozen_steps"] = cfg.frozen_vision_steps
    data["pretraining"]["vision_lr_scale"] = cfg.vision_lr_share
    data["pretraining"]["vision_warmup_steps"] = cfg.vision_warmup
    if cfg.data is None and cfg.domain == "rs":  # the embedded world's size (--world-scenes)
        data["pretraining"]["world_scenes"] = _world_settings(cfg)["world_scenes"]
    # How much the VLM read the image at the end: the evidence that pretraining taught the ViT.
    data["image_reliance"] = json_safe(reliance.to_json()) if reliance is not None else None
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
