"""Recipe statistics and merging (the logic behind ``vitp-geo recipe stats|merge``).

Token counts: with no tokenizer, text tokens are estimated as ``ceil(characters / 4)`` per turn
(the common rule of thumb for English BPE vocabularies; ``<image>`` placeholders are not counted)
— good for comparing datasets, not for exact sequence budgets. Pass a ``tokenizers`` JSON file
(``tokenizer.json``, or a folder holding one) for exact counts. Image tokens come on top: 256
per 448-px tile for InternVL2.5 (pixel shuffle 0.5), times the dynamic tiles used.

Mixes in the total are weighted by ``repeat_time`` (what one epoch draws); per-dataset mixes are
over that dataset's records.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vitp_geo.instruct.recipe import RecipeEntry, effective_count, load_recipe, save_recipe
from vitp_geo.instruct.records import IMAGE_PLACEHOLDER, InstructionRecord, read_jsonl
from vitp_geo.io.paths import check_output_paths, refuse_existing_outputs

TokenCounter = Callable[[str], int]


def estimate_tokens(text: str) -> int:
    """``ceil(len(text) / 4)`` after removing ``<image>`` placeholders (see module doc)."""
    return math.ceil(len(text.replace(IMAGE_PLACEHOLDER, "")) / 4)


def tokenizer_counter(path: str | Path) -> TokenCounter:
    """A token counter from a ``tokenizers`` JSON file or a folder containing ``tokenizer.json``."""
    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as err:
        raise ValueError(f"cannot load tokenizer {path}: {err}") from err
    return lambda text: len(tok.encode(text.replace(IMAGE_PLACEHOLDER, ""), add_special_tokens=False).ids)


@dataclass
class DatasetStats:
    """Statistics of one recipe entry (or of the total, with ``name == "total"``)."""

    name: str
    records: int = 0
    repeat_time: float = 1.0
    effective: int = 0
    tasks: Counter[str] = field(default_factory=Counter)
    modalities: Counter[str] = field(default_factory=Counter)
    images: int = 0  # distinct image files referenced
    image_refs: int = 0  # image references (a change record references two)
    tokens: int = 0  # text tokens over all records (estimated or counted)
    missing_images: int = 0
    outside_root: list[str] = field(default_factory=list)  # image paths that escape the root

    @property
    def mean_tokens(self) -> float:
        return self.tokens / self.records if self.records else 0.0


def dataset_stats(entry: RecipeEntry, count_tokens: TokenCounter = estimate_tokens) -> DatasetStats:
    """Read one entry's annotation file and count (see module doc)."""
    records: list[InstructionRecord] = read_jsonl(entry.annotation).records
    st = DatasetStats(
        entry.name, len(records), entry.repeat_time, effective_count(len(records), entry.repeat_time)
    )
    seen: set[str] = set()
    for rec in records:
        st.tasks[rec.task] += 1
        st.modalities[rec.modality] += 1
        st.image_refs += len(rec.images)
        seen.update(rec.images)
        st.tokens += sum(count_tokens(t["value"]) for t in rec.conversations)
    st.images = len(seen)
    st.missing_images = sum(1 for i in seen if not (entry.root / i).exists())
    root = entry.root.resolve()  # pretraining refuses these (pretrain.dataset.resolve_image)
    st.outside_root = sorted(i for i in seen if not (entry.root / i).resolve().is_relative_to(root))
    return st


def recipe_stats(
    path: str | Path, count_tokens: TokenCounter = estimate_tokens
) -> tuple[list[DatasetStats], DatasetStats]:
    """Per-dataset statistics and the total (mixes weighted by ``repeat_time``)."""
    per = [dataset_stats(e, count_tokens) for e in load_recipe(path)]
    total = DatasetStats("total", repeat_time=float("nan"))
    for st in per:
        total.records += st.records
        total.effective += st.effective
        total.images += st.images
        total.image_refs += st.image_refs
        total.tokens += st.tokens
        total.missing_images += st.missing_images
        total.outside_root += st.outside_root
        for k, v in st.tasks.items():
            total.tasks[k] += v * st.repeat_time  # type: ignore[assignment]
        for k, v in st.modalities.items():
            total.modalities[k] += v * st.repeat_time  # type: ignore[assignment]
    return per, total


def _mix(counter: Counter[str]) -> str:
    n = sum(counter.values())
    if not n:
        return "-"
    return ", ".join(f"{k} {100 * v / n:.1f}%" for k, v in counter.most_common())


def format_stats(per: list[DatasetStats], total: DatasetStats) -> str:
    """A plain-text report."""
    lines = []
    for st in [*per, total]:
        head = f"{st.name}: {st.records} records"
        if st.name != "total":
            head += f" × repeat_time {st.repeat_time:g} → {st.effective} samples/epoch"
        else:
            head += f" → {st.effective} samples/epoch"
        lines.append(head)
        lines.append(
            f"  images: {st.images} distinct, {st.image_refs} references"
            + (f" ({st.missing_images} missing on disk)" if st.missing_images else "")
        )
        if st.outside_root:
            lines.append(
                f"  warning: {len(st.outside_root)} image path(s) resolve outside the recipe root, which "
                f"pretraining refuses, e.g. {st.outside_root[0]!r}"
            )
        lines.append(f"  mean text tokens/record: {st.mean_tokens:.1f}")
        lines.append(f"  tasks: {_mix(st.tasks)}")
        lines.append(f"  modalities: {_mix(st.modalities)}")
    return "\n".join(lines)


def merge_recipes(paths: list[str | Path], out: str | Path, overwrite: bool = False) -> tuple[Path, list[str]]:
    """Combine recipes into one meta-JSON at ``out``.

    Entries keep their ``repeat_time``; paths are made absolute before saving, then written
    relative to ``out``'s folder where possible. A name that is already taken becomes
    ``<name>_2``, ``<name>_3``, … An entry pointing at an annotation file already merged under
    another name is kept (it is a deliberate duplicate only if the user merged it twice) but reported.

    An existing ``out`` is replaced only with ``overwrite``.

    Returns:
        ``(out path, notes)``: one note per renamed or duplicated entry.
    """
    if not paths:
        raise ValueError("recipe merge needs at least one recipe")
    check_output_paths({f"recipe {i + 1}": p for i, p in enumerate(paths)}, {"--out": out})
    refuse_existing_outputs({"--out": out}, overwrite)
    merged: list[RecipeEntry] = []
    names: set[str] = set()
    annotations: dict[Path, str] = {}
    notes: list[str] = []
    for path in paths:
        for e in load_recipe(path):
            name = e.name
            k = 2
            while name in names:
                name = f"{e.name}_{k}"
                k += 1
            if name != e.name:
                notes.append(f"{path}: dataset {e.name!r} renamed to {name!r} (name already used)")
            ann = e.annotation.resolve()
            if ann in annotations:
                notes.append(
                    f"{path}: dataset {name!r} uses the same annotation file as {annotations[ann]!r}"
                )
            annotations.setdefault(ann, name)
            names.add(name)
            merged.append(RecipeEntry(name, e.root.resolve(), ann, e.repeat_time, e.max_dynamic_patch))
    return save_recipe(out, merged), notes
