"""Settings of a ViTP pretraining run, and how YAML files and flags fill them.

The defaults are the embedded tiny run (a tiny ViT + tiny Qwen2-shaped LLM on the built-in
synthetic corpus) that finishes on a 2-core CPU in about 5 minutes (the medical default keeps a
shorter schedule: ``TINY_DOMAIN_DEFAULTS``). ``configs/pretrain/<domain>.yaml``
hold the paper's full-scale settings and apply as soon as real parts (``--model-path`` or
``--data``) are given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

DOMAINS = ("rs", "med", "general")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "pretrain"


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run. Field comments say why each default is what it is."""

    domain: str = "rs"  # selects configs/pretrain/<domain>.yaml for full-scale runs
    model_path: str | None = None  # InternVL2.5-1B directory; None = tiny model built in code
    data: str | None = None  # recipe (meta-JSON / YAML); None = the embedded synthetic corpus
    output: str | None = None  # None = runs/pretrain-<domain>-<timestamp>
    resume: str | None = None  # a .ckpt path, or "last" for <output>/checkpoints/last.ckpt
    overwrite: bool = False  # an --output that holds an earlier run is refused unless this (or resume)

    # Optimisation. Tiny default: a high lr so a few hundred CPU steps visibly learn (2e-3 delays
    # image reading, docs/pretraining-evidence.md). 1,000 steps of 32 samples: the tiny VLM starts
    # reading the image only after about 20,000 samples (batch 8 read nothing at 450 steps and
    # +0.24 nats at 2,000); under bf16 autocast (--precision auto on a CPU with AVX512-BF16) they
    # take about 5 min alone on 2 cores, within the 6-minute budget (fp32: about 6.5 min).
    # Paper (configs/pretrain/rs.yaml): lr 2e-5, 8000 steps, global batch 128, warmup 0.2, wd 0.01.
    lr: float = 1e-3
    max_steps: int = 1000
    batch_size: int = 32  # per device; 8 and 16 read less for the same samples (docs/pretraining-evidence.md)
    accumulate: int = 1  # gradient accumulation; global batch = batch_size · accumulate · devices
    warmup_ratio: float = 0.1  # share of max_steps spent in linear warm-up before the cosine decay
    weight_decay: float = 0.01  # AdamW, on matrices only (not biases, norms, layer-scale)
    grad_clip: float = 1.0  # max global grad norm; VLM training diverges without it
    max_nonfinite: int = 10  # this many non-finite losses in a row stop the run
    # token | sample | square (InternVL2.5's loss reweighting). "token" lets 40-token box lists
    # drown one-word answers, the ones that only the image decides.
    loss_reduction: str = "sample"

    # Model and data geometry.
    vision_arch: str = "vitp_tiny_patch14_112"  # tiny default only; real runs read model_path
    llm_layers: int = 2  # tiny default only: decoder layers of the Qwen2-shaped LLM (hidden 128)
    drop_path: float = 0.1  # stochastic depth in the ViT, as in the paper
    max_dynamic_patch: int = 6  # tile budget per sample (InternVL dynamic tiling)
    max_length: int = 1024  # tokens per sample
    num_workers: int = 0  # DataLoader workers; 0 keeps tiny CPU runs simple
    # Decoded tiles and token ids kept in memory (per worker): the embedded corpus needs about
    # 250 MiB and is drawn about a dozen times, so its PNGs are decoded once, not every draw.
    data_cache_mb: float = 1024.0

    # Alignment phase: the first align_steps steps draw only align_tasks records (one-hop
    # questions that only the image answers), so the LLM learns to read image tokens before the
    # text priors of the other tasks win (as LLaVA's stage 1 aligns on captions). 0 = off.
    # 600 of the tiny default's 1,000 steps: with 200, presence read in one seed of three on the
    # unseen world; with 600, in two (docs/pretraining-evidence.md §2). The paper preset sets 0.
    align_steps: int = 600
    # The one-look tasks plus presence and counting: with these in the phase, presence and
    # counting start reading too (the image, not the question, decides them).
    align_tasks: str = "classes,classification,presence,counting"  # comma-separated task names
    # Steps after the phase over which the alignment tasks' share falls linearly to their recipe
    # share: a hard switch let the long answers' large losses wash out what the phase built. In the
    # tiny default the ramp ends with the run, so its last steps still favour the phase's tasks.
    align_ramp_steps: int = 400
    # Embedded rs corpus only: share of records whose images follow the question instead of
    # opening it (instruct.default_corpus.images_after_question), so image tokens can attend to
    # the class a presence or counting question names. 0 = InternVL's usual images-first layout.
    question_first: float = 0.0
    # Embedded rs corpus only: scenes of the generated world (None: the builder's 48, about 3,400
    # records). A larger world is a GPU setting: the tiny ViT needs about 2,400 scenes to learn to
    # count even when trained on the counts alone (benchmarks/counting_data.py), and at the tiny
    # default's 1,000 steps a 240-scene world read less than 48 (docs/pretraining-evidence.md §2);
    # the VLM trained on counting alone did not count on 2,400 scenes in 1,600 steps.
    world_scenes: int | None = None

    # Visual Robustness Learning.
    vrl_ratio: float = 0.75  # share of projected image tokens dropped before the LLM (paper r)
    # Probability that VRL fires for a sample (1 - r, as the reference code). Differs on purpose
    # from the library model (ViTPConfig.vrl_prob, build_tiny_vlm, load_internvl) and the paper
    # preset, which keep 1.0, the paper text: a notebook run gets 1.0 unless it passes this value
    # (docs/pretraining-evidence.md §6 measured 0.25 on the embedded corpus).
    vrl_prob: float = 0.25
    vrl_reference: bool = False  # reproduce the reference code (fires with probability 1 - r)

    # Where the tiny model's ViT starts. auto: the synthetic base (vitp_geo.pretrain.base: a ViT trained
    # on per-patch classes and building counts of a general synthetic world, never on the corpus's
    # labels; built once per machine, about 2 min, then cached) for the embedded rs corpus, random
    # init otherwise. synthetic | random | a backbone.safetensors path force one. From random init
    # the default read presence in one seed of three; from the base, in every seed
    # (docs/pretraining-evidence.md §2). --model-path runs start from InternViT's own weights.
    vision_init: str = "auto"
    base_scenes: int = 480  # scenes of the synthetic base's world (240 gave a base no better than random)
    base_steps: int = 800  # its training steps of 32 tiles
    # Steps the ViT stays fixed at the start while the LLM learns to read it. None: the alignment
    # phase (align_steps) when the ViT starts from a base, 0 from random init. A base whose ViT
    # trained from step 0 lost what made it worth reading before the LLM read it.
    vision_frozen_steps: int | None = None
    # The ViT's learning rate as a share of lr. None: 0.1 when it starts from a base (the base's
    # probe mIoU fell 0.034 at 16 tiles under the full lr, 0.006 at 0.1x), 1 from random init or
    # InternViT's weights.
    vision_lr_scale: float | None = None
    # After the fixed steps, the ViT's lr rises from 0 over this many steps (Adam's first steps on
    # fresh moments move every weight by about the lr). None: 100 when the ViT was fixed, else 0.
    vision_warmup_steps: int | None = None

    # What trains.
    freeze_vision: bool = False
    freeze_projector: bool = False
    freeze_llm: bool = False
    grad_checkpointing: bool = False  # trade compute for memory in ViT and LLM

    # Runtime.
    devices: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp | deepspeed (Lightning strategies)
    precision: str = "auto"  # auto = bf16-mixed on CUDA and on a CPU with AVX512-BF16/AMX, else 32-true
    accelerator: str = "auto"
    seed: int = 0
    skip_bad_samples: bool = False
    checkpoint_every: int = 50  # steps between checkpoints (last.ckpt is always written at the end)

    # Image reliance (vitp_geo.pretrain.reliance): held-out answer loss with true / shuffled / blank
    # images, the only signal that says the VLM reads the image and so teaches the ViT.
    reliance_records: int = 128  # held-out records (whole image groups; never trained on); 0 = off
    reliance_every: int = 200  # steps between checks; it always runs at the last step; 0 = last only
    # Derangements the closed-task accuracy with shuffled images is averaged over (which other tile
    # a record gets moved a seed's presence gap by 0.07 on 318 records; the losses use the first).
    reliance_shuffles: int = 4
    # Embedded corpora only: check on a fresh synthetic world (another seed, never trained on)
    # instead of holding records out of training: reliance_records of it along the way, all of it
    # (about 1,300 records for rs) at the last step, so that per-task accuracies are decidable
    # (128 held-out records gave 8 to 30 per closed task; docs/pretraining-evidence.md §2).
    unseen_world: bool = True
    # A recipe of records never trained on (e.g. a validation split) to check on instead: all of
    # it at the last step, reliance_records of it along the way; nothing is held out of --data.
    reliance_data: str | None = None

    def validate(self) -> PretrainConfig:
        if self.domain not in DOMAINS:
            raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, got {self.domain!r}")
        if not 0.0 <= self.question_first <= 1.0:
            raise ValueError(f"question-first must be in [0, 1], got {self.question_first}")
        for name, given in (
            ("question_first", bool(self.question_first)),
            ("world_scenes", self.world_scenes is not None),
        ):
            if given and (self.data is not None or self.domain != "rs"):
                raise ValueError(
                    f"{name.replace('_', '-')} applies to the embedded rs corpus only (no --data, --domain rs); "
                    f"got --domain {self.domain}" + (f" --data {self.data}" if self.data else "")
                )
        if self.world_scenes is not None:
            from vitp_geo.synthetic import SCENE_CLASSES

            if self.world_scenes < len(SCENE_CLASSES):
                raise ValueError(
                    f"world-scenes must be >= {len(SCENE_CLASSES)} (one scene per scene class), "
                    f"got {self.world_scenes}"
                )
        for name in ("vrl_ratio", "vrl_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0 or (name == "vrl_ratio" and value >= 1.0):
                bound = "[0, 1)" if name == "vrl_ratio" else "[0, 1]"
                raise ValueError(f"{name.replace('_', '-')} must be in {bound}, got {value}")
        for name in (
            "max_steps",
            "batch_size",
            "accumulate",
            "devices",
            "max_dynamic_patch",
            "max_length",
            "llm_layers",
            "reliance_shuffles",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("reliance_records", "reliance_every", "align_steps", "align_ramp_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.loss_reduction not in ("token", "sample", "square"):
            raise ValueError(f"loss-reduction must be token, sample or square, got {self.loss_reduction!r}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        for name in ("weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop-path must be in [0, 1), got {self.drop_path}")
        for name in ("checkpoint_every", "max_nonfinite"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not math.isfinite(self.data_cache_mb) or self.data_cache_mb < 0:
            raise ValueError(f"data-cache-mb must be a finite number >= 0, got {self.data_cache_mb}")
        if self.num_workers < 0:
            raise ValueError(f"num-workers must be >= 0, got {self.num_workers}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.reliance_data is not None and not Path(self.reliance_data).is_file():
            raise ValueError(f"reliance-data: recipe not found: {self.reliance_data}")
        if self.vision_init not in VISION_INITS and not Path(self.vision_init).is_file():
            raise ValueError(
                f"vision-init must be {', '.join(VISION_INITS)} or a backbone .safetensors file; "
                f"{self.vision_init!r} is neither"
            )
        if self.model_path is not None and self.vision_init != "auto":
            raise ValueError(
                f"vision-init {self.vision_init} applies to the tiny model only; --model-path starts from "
                "the ViT weights in that directory"
            )
        for name in ("base_scenes", "base_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.vision_lr_scale is not None and not self.vision_lr_scale > 0:
            raise ValueError(f"vision-lr-scale must be > 0, got {self.vision_lr_scale}")
        if self.vision_warmup_steps is not None and self.vision_warmup_steps < 0:
            raise ValueError(f"vision-warmup-steps must be >= 0, got {self.vision_warmup_steps}")
        if self.vision_frozen_steps is not None and self.vision_frozen_steps < 0:
            raise ValueError(f"vision-frozen-steps must be >= 0, got {self.vision_frozen_steps}")
        if self.vision_frozen_steps and self.strategy.lower().startswith(("fsdp", "deepspeed")):
            raise ValueError(
                f"vision-frozen-steps {self.vision_frozen_steps} needs --strategy auto or ddp: {self.strategy} "
                "shards the parameters it is given and cannot start training the ViT mid-run"
            )
        return self

    @property
    def vision_start(self) -> str:
        """Where the ViT starts: ``internvl`` (--model-path), ``synthetic``, ``random`` or a file path."""
        if self.model_path is not None:
            return "internvl"
        if self.vision_init == "auto":
            return "synthetic" if self.data is None and self.domain == "rs" else "random"
        return self.vision_init

    @property
    def frozen_vision_steps(self) -> int:
        """Steps the ViT stays fixed at the start (``vision_frozen_steps``, resolved)."""
        if self.vision_frozen_steps is not None:
            return self.vision_frozen_steps
        if self.strategy.lower().startswith(("fsdp", "deepspeed")):
            return 0  # they shard the parameters they were given: no switching them on mid-run
        return self.align_steps if self.vision_start not in ("random", "internvl") else 0

    @property
    def vision_lr_share(self) -> float:
        """The ViT's lr as a share of ``lr`` (``vision_lr_scale``, resolved)."""
        if self.vision_lr_scale is not None:
            return self.vision_lr_scale
        return 1.0 if self.vision_start in ("random", "internvl") else 0.1

    @property
    def vision_warmup(self) -> int:
        """Steps of the ViT's own warm-up after its fixed steps (``vision_warmup_steps``, resolved)."""
        if self.vision_warmup_steps is not None:
            return self.vision_warmup_steps
        return 100 if self.frozen_vision_steps else 0

    @property
    def reliance_quiet_steps(self) -> int:
        """Checks up to this step never warn of a near-zero image gain: the lr warm-up, and the
        alignment phase, which exists because the LLM has not learnt to read yet (a default seed
        read +0.02 nats at step 200 and +0.46 at step 600). The run's summary warns at the end."""
        return max(int(self.warmup_ratio * self.max_steps), self.align_steps)

    @property
    def embedded(self) -> bool:
        """True when neither real weights nor real data were given: the tiny built-in run."""
        return self.model_path is None and self.data is None


VISION_INITS: tuple[str, ...] = ("auto", "synthetic", "random")


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML file of ``PretrainConfig`` fields; unknown keys are an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: cannot parse YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    known = {f.name: f for f in fields(PretrainConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    defaults = PretrainConfig()
    return {key: _coerce(path, key, value, getattr(defaults, key)) for key, value in data.items()}


def _coerce(path: Path, key: str, value: Any, default: Any) -> Any:
    """Give a YAML value its field's type (YAML reads ``1e-4`` as a string), naming bad values."""
    if value is None or default is None:
        return None if value is None else str(value)
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{path}: {key} must be true or false, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {key} must be of type {kind.__name__}, got {value!r}") from err


PRESETS = ("auto", "paper", "tiny")

# The tiny schedule of a domain whose embedded corpus reads the image sooner than the remote-sensing
# one (the ``PretrainConfig`` defaults): the medical phantoms' default reads the image at 450 steps
# of 8 (+0.73 nats per answer on image-decided tasks, docs/medical.md), in a quarter of the time.
TINY_DOMAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "med": {
        "max_steps": 450,
        "batch_size": 8,
        "align_steps": 150,
        "align_ramp_steps": 0,
        "align_tasks": "classes,classification",
    },
}


def resolve_config(
    domain: str,
    config_file: str | Path | None,
    overrides: dict[str, Any],
    preset: str = "auto",
    sources: dict[str, str] | None = None,
) -> PretrainConfig:
    """Defaults ← domain YAML (the paper preset) ← ``--config`` file ← explicit flags.

    The paper preset (``configs/pretrain/<domain>.yaml``: lr 2e-5, global batch 128, gradient
    checkpointing…) is meant for the real InternVL2.5-1B on a full instruction mixture. Without it,
    a domain in :data:`TINY_DOMAIN_DEFAULTS` (``med``) gets its own tiny schedule first. ``auto``
    applies it when ``--model-path`` is given; a tiny model on a user's ``--data`` keeps the tiny
    schedule, which is what a small corpus needs. ``paper`` and ``tiny`` force either.

    Args:
        domain: ``rs``, ``med`` or ``general``.
        config_file: a ``--config`` YAML of settings, or None.
        overrides: explicit flags (field name → value).
        preset: ``auto``, ``paper`` or ``tiny``.
        sources: if given, filled with field name → where its value came from (for printing).
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    cfg = PretrainConfig(domain=domain)
    from_file = read_yaml_config(config_file) if config_file is not None else {}
    given = {**from_file, **overrides}
    domain_file = CONFIG_DIR / f"{domain}.yaml"
    use_paper = preset == "paper" or (preset == "auto" and given.get("model_path") is not None)
    layers: list[tuple[str, dict[str, Any]]] = []
    if use_paper and domain_file.is_file():
        layers.append((f"paper preset {domain_file.name}", read_yaml_config(domain_file)))
    elif not use_paper and domain in TINY_DOMAIN_DEFAULTS:
        layers.append((f"{domain} tiny default", TINY_DOMAIN_DEFAULTS[domain]))
    layers += [(f"--config {config_file}", from_file), ("flag", overrides)]
    merged: dict[str, Any] = {}
    for name, layer in layers:
        merged.update(layer)
        if sources is not None:
            sources.update({k: name for k in layer})
    merged["domain"] = domain
    return replace(cfg, **merged).validate()


# The settings a user should see before a long run starts.
SHOWN = (
    "lr",
    "max_steps",
    "batch_size",
    "accumulate",
    "warmup_ratio",
    "weight_decay",
    "loss_reduction",
    "align_steps",
    "align_ramp_steps",
    "vrl_ratio",
    "vrl_prob",
    "vrl_reference",
    "grad_checkpointing",
    "precision",
)


def describe_settings(cfg: PretrainConfig, sources: dict[str, str]) -> str:
    """One line per key setting with its value and origin (default, paper preset, --config, flag)."""
    lines = []
    for name in SHOWN:
        origin = sources.get(name, "default")
        lines.append(f"  {name:<18} {getattr(cfg, name)!s:<10} ({origin})")
    return "\n".join(lines)
