"""Settings of a ViTP pretraining run, and how YAML files and flags fill them.

The defaults are the embedded tiny run (a tiny ViT + tiny Qwen2-shaped LLM on the built-in
synthetic corpus) that finishes on a 2-core CPU in a few minutes. ``configs/pretrain/<domain>.yaml``
hold the paper's full-scale settings and apply as soon as real parts (``--model-path`` or
``--data``) are given.
"""

from __future__ import annotations

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

    # Optimisation. Tiny default: a high lr so a few hundred CPU steps visibly learn.
    # Paper (configs/pretrain/rs.yaml): lr 2e-5, 8000 steps, global batch 128, warmup 0.2, wd 0.01.
    lr: float = 1e-3
    max_steps: int = 200
    batch_size: int = 8  # per device
    accumulate: int = 1  # gradient accumulation; global batch = batch_size · accumulate · devices
    warmup_ratio: float = 0.1  # share of max_steps spent in linear warm-up before the cosine decay
    weight_decay: float = 0.01  # AdamW, on matrices only (not biases, norms, layer-scale)
    grad_clip: float = 1.0  # max global grad norm; VLM training diverges without it
    max_nonfinite: int = 10  # this many non-finite losses in a row stop the run

    # Model and data geometry.
    vision_arch: str = "vitp_tiny_patch14_112"  # tiny default only; real runs read model_path
    drop_path: float = 0.1  # stochastic depth in the ViT, as in the paper
    max_dynamic_patch: int = 6  # tile budget per sample (InternVL dynamic tiling)
    max_length: int = 1024  # tokens per sample
    num_workers: int = 0  # DataLoader workers; 0 keeps tiny CPU runs simple

    # Visual Robustness Learning.
    vrl_ratio: float = 0.75  # share of projected image tokens dropped before the LLM (paper r)
    vrl_prob: float = 1.0  # probability that VRL fires for a sample
    vrl_reference: bool = False  # reproduce the reference code (fires with probability 1 - r)

    # What trains.
    freeze_vision: bool = False
    freeze_projector: bool = False
    freeze_llm: bool = False
    grad_checkpointing: bool = False  # trade compute for memory in ViT and LLM

    # Runtime.
    devices: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp | deepspeed (Lightning strategies)
    precision: str = "auto"  # auto = bf16-mixed on CUDA, 32-true on CPU
    accelerator: str = "auto"
    seed: int = 0
    skip_bad_samples: bool = False
    checkpoint_every: int = 50  # steps between checkpoints (last.ckpt is always written at the end)

    def validate(self) -> PretrainConfig:
        if self.domain not in DOMAINS:
            raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, got {self.domain!r}")
        for name in ("vrl_ratio", "vrl_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0 or (name == "vrl_ratio" and value >= 1.0):
                bound = "[0, 1)" if name == "vrl_ratio" else "[0, 1]"
                raise ValueError(f"{name.replace('_', '-')} must be in {bound}, got {value}")
        for name in ("max_steps", "batch_size", "accumulate", "devices", "max_dynamic_patch", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        return self

    @property
    def embedded(self) -> bool:
        """True when neither real weights nor real data were given: the tiny built-in run."""
        return self.model_path is None and self.data is None


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


def resolve_config(domain: str, config_file: str | Path | None, overrides: dict[str, Any]) -> PretrainConfig:
    """Defaults ← domain YAML (only for real parts) ← ``--config`` file ← explicit flags."""
    cfg = PretrainConfig(domain=domain)
    from_file = read_yaml_config(config_file) if config_file is not None else {}
    given = {**from_file, **overrides}
    merged: dict[str, Any] = {}
    if given.get("model_path") is not None or given.get("data") is not None:  # real parts
        domain_file = CONFIG_DIR / f"{domain}.yaml"
        if domain_file.is_file():
            merged.update(read_yaml_config(domain_file))
    merged.update(from_file)
    merged.update(overrides)
    merged["domain"] = domain
    return replace(cfg, **merged).validate()
