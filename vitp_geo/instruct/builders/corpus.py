"""Run builders into one corpus folder: ``images/``, ``annotations.jsonl``, ``recipe.json``.

The corpus is written into a temporary sibling folder (``.<name>.partial``) and renamed to the
output folder only when every source has been built and at least one record exists; on any error
the temporary folder is removed, so ``--out`` never holds a half-written corpus.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from vitp_geo.instruct.builders.context import BuildContext, BuildSummary
from vitp_geo.instruct.recipe import RecipeEntry, save_recipe
from vitp_geo.instruct.records import InstructionRecord, write_jsonl
from vitp_geo.io.atomic import atomic_output
from vitp_geo.io.paths import refuse_existing_outputs

ANNOTATION_NAME = "annotations.jsonl"
RECIPE_NAME = "recipe.json"


class Source(Protocol):
    """Anything that turns labels into records (``VectorSource``, ``MaskSource``, …)."""

    def build(self, ctx: BuildContext) -> list[InstructionRecord]: ...


@dataclass
class CorpusResult:
    """Where a corpus was written and what it holds."""

    out_dir: Path
    recipe: Path
    annotation: Path
    summary: BuildSummary


def build_corpus(
    out_dir: str | Path,
    sources: list[Source],
    *,
    seed: int = 0,
    name: str | None = None,
    repeat_time: float = 1.0,
    overwrite: bool = False,
    progress: bool = False,
    origin_base: str | Path | None = None,
) -> CorpusResult:
    """Build every source into ``out_dir`` (see module doc).

    Args:
        out_dir: the corpus folder; must not exist or be empty unless ``overwrite``.
        sources: builders, run in order with one seeded generator.
        seed: the only source of randomness (template choice, option shuffling, …).
        name: dataset name in ``recipe.json`` (default: the folder name).
        repeat_time: the recipe entry's ``repeat_time``.
        overwrite: replace an earlier corpus in ``out_dir`` (a folder holding anything a build does
            not write is refused, never deleted).
        progress: show a progress bar over sources.
        origin_base: record each tile's ``origin.scene`` relative to this folder (scenes outside it
            keep the path as given); ``None`` keeps the paths as given.

    Raises:
        ValueError: no sources, zero records, a non-finite or non-positive ``repeat_time``, or
            ``out_dir`` exists and is not empty.
    """
    out_dir = Path(out_dir)
    if not math.isfinite(repeat_time) or repeat_time <= 0:  # NaN fails too
        raise ValueError(f"--repeat-time must be a finite number > 0, got {repeat_time}")
    if not sources:
        raise ValueError(
            "no sources given: pass --image/--labels, --mask, --folders, --torchgeo or --before/--after"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a folder")
    refuse_existing_outputs({"--out": out_dir}, overwrite)
    if out_dir.is_dir():  # --overwrite replaces an earlier corpus, never what a build did not write
        foreign = next(_not_written_by_a_build(out_dir), None)
        if foreign is not None:
            raise ValueError(
                f"--out {out_dir} holds {foreign}, which build-instructions does not write; --overwrite "
                "replaces only an earlier corpus (images/, annotations.jsonl, recipe.json): move it or "
                "choose another --out"
            )
    name = name or out_dir.resolve().name
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        ctx = BuildContext(tmp, np.random.default_rng(seed), origin_base=origin_base)
        records: list[InstructionRecord] = []
        for source in tqdm(sources, desc="sources", disable=not progress or len(sources) < 2):
            records += source.build(ctx)
        if not records:
            raise ValueError(
                "the sources produced zero records ("
                + ", ".join(f"{why}: {n}" for why, n in sorted(ctx.summary.tiles_skipped.items()))
                + "); nothing written"
            )
        ctx.summary.add_records(records)
        write_jsonl(tmp / ANNOTATION_NAME, records)
        save_recipe(
            tmp / RECIPE_NAME,
            [RecipeEntry(name=name, root=tmp, annotation=tmp / ANNOTATION_NAME, repeat_time=repeat_time)],
        )
    return CorpusResult(out_dir, out_dir / RECIPE_NAME, out_dir / ANNOTATION_NAME, ctx.summary)


def _not_written_by_a_build(out_dir: Path) -> Iterator[Path]:
    """Entries of ``out_dir`` that no corpus build writes (anything but ``images/**.png``, the
    annotations and the recipe): replacing the folder would delete them."""
    for entry in sorted(out_dir.iterdir()):
        if entry.name in (ANNOTATION_NAME, RECIPE_NAME) and entry.is_file() and not entry.is_symlink():
            continue
        if entry.name == "images" and entry.is_dir() and not entry.is_symlink():
            for sub in sorted(entry.rglob("*")):
                if sub.is_symlink() or not (sub.is_dir() or sub.suffix.lower() == ".png"):
                    yield sub
            continue
        yield entry
