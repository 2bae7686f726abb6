"""Recipes: which annotation files to train on and how often (InternVL / ViTP meta-JSON).

A recipe maps dataset names to entries::

    {"rs_buildings": {"root": "data/buildings/", "annotation": "data/buildings/annotations.jsonl",
                      "repeat_time": 0.5, "max_dynamic_patch": 6}}

The same mapping in YAML is accepted. Relative ``root`` and ``annotation`` paths are resolved
against the recipe file's folder.

``repeat_time`` arithmetic (InternVL's, extended to fractions above 1): a dataset of ``n`` records
contributes ``floor(n · repeat_time)`` samples per epoch: ``floor(repeat_time)`` full passes plus
the first ``floor(n · frac)`` records of a seeded permutation, where ``frac`` is the fractional
part. ``repeat_time = 0.25`` keeps a seeded quarter; ``2`` repeats every record twice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml


class RecipeError(ValueError):
    """A malformed recipe; the message names the file and the entry."""


@dataclass
class RecipeEntry:
    """One dataset in a recipe (paths resolved)."""

    name: str
    root: Path
    annotation: Path
    repeat_time: float = 1.0
    max_dynamic_patch: int | None = None

    def to_json(self, relative_to: Path | None = None) -> dict[str, object]:
        def rel(p: Path) -> str:
            if relative_to is None:
                return str(p)
            try:
                return str(p.resolve().relative_to(relative_to.resolve()))
            except ValueError:
                return str(p)

        out: dict[str, object] = {
            "root": rel(self.root),
            "annotation": rel(self.annotation),
            "repeat_time": self.repeat_time,
        }
        if self.max_dynamic_patch is not None:
            out["max_dynamic_patch"] = self.max_dynamic_patch
        return out


def load_recipe(path: str | Path) -> list[RecipeEntry]:
    """Read a meta-JSON or YAML recipe.

    Raises:
        FileNotFoundError: the recipe does not exist.
        RecipeError: it does not parse, or an entry lacks ``root``/``annotation`` or has a bad value.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"recipe not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise RecipeError(f"{path}: cannot parse recipe: {err}") from err
    if isinstance(data, dict) and "datasets" in data and isinstance(data["datasets"], dict):
        data = data["datasets"]
    if not isinstance(data, dict) or not data:
        raise RecipeError(f"{path}: a recipe is a non-empty mapping of dataset name → entry")
    entries = []
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise RecipeError(f"{path}: entry {name!r} must be a mapping, got {entry!r}")
        missing = [k for k in ("root", "annotation") if not entry.get(k)]
        if missing:
            raise RecipeError(f"{path}: entry {name!r} lacks {', '.join(missing)}")
        repeat = entry.get("repeat_time", 1.0)
        if not _is_number(repeat) or not math.isfinite(repeat) or repeat <= 0:  # JSON allows Infinity, NaN
            raise RecipeError(
                f"{path}: entry {name!r} has repeat_time {repeat!r}; it must be a finite number > 0"
            )
        mdp = entry.get("max_dynamic_patch")
        if mdp is not None and (isinstance(mdp, bool) or not isinstance(mdp, int) or mdp < 1):
            raise RecipeError(f"{path}: entry {name!r} has max_dynamic_patch {mdp!r}; it must be an int >= 1")
        entries.append(
            RecipeEntry(
                name=str(name),
                root=(path.parent / str(entry["root"])),
                annotation=(path.parent / str(entry["annotation"])),
                repeat_time=float(repeat),
                max_dynamic_patch=mdp,
            )
        )
    return entries


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def save_recipe(path: str | Path, entries: list[RecipeEntry]) -> Path:
    """Write entries as meta-JSON with paths relative to the recipe's folder."""
    from vitp_geo.io.atomic import atomic_output

    path = Path(path)
    data = {e.name: e.to_json(relative_to=path.parent) for e in entries}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def effective_count(n_records: int, repeat_time: float) -> int:
    """Samples per epoch from ``n_records`` at ``repeat_time`` (see module doc)."""
    if not math.isfinite(repeat_time) or repeat_time <= 0:
        raise ValueError(f"repeat_time must be a finite number > 0, got {repeat_time}")
    return int(math.floor(n_records * repeat_time + 1e-9))


def repeat_indices(n_records: int, repeat_time: float, seed: int = 0) -> np.ndarray:
    """Record indexes one epoch draws from a dataset (length ``effective_count``)."""
    full = int(math.floor(repeat_time + 1e-9))
    total = effective_count(n_records, repeat_time)
    rest = total - full * n_records
    perm = np.random.default_rng(seed).permutation(n_records)
    parts = [np.arange(n_records)] * full + [np.sort(perm[:rest])]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
