"""Image reliance: does the VLM being pretrained actually read the image?

ViTP only teaches the ViT when the LLM's answers depend on the image: otherwise the loss falls on
text priors alone and the ViT receives no task-relevant gradient. This module measures it on a
seeded set of held-out records, three times over:

- ``loss``: the answer loss with the true images;
- ``loss_shuffled``: the same conversations with images of *other* source tiles (a derangement
  over whole image groups, so no record ever gets its own tile back, even when many records share
  one tile);
- ``loss_blank``: the same conversations with blank images (the normalisation mean: all zeros).

All losses are in **nats per answer**: the cross-entropy summed over each record's answer tokens
(the tokens with a label), then averaged over records. ``image_gain = loss_shuffled - loss``: how
much the true image helps over a plausible but wrong one. A model that ignores the image reads 0;
a model that reads the image reads > 0. ``image_gain_decided`` averages it over the records of
image-decided tasks (:data:`IMAGE_DECIDED_TASKS`), whose answers cannot come from the question.

For tasks with a closed answer set (:data:`CLOSED_TASKS`: yes/no, a scene class, a count, a class
list) the check also reads a **multiple-choice accuracy**: every candidate answer of a record (see
:func:`choice_candidates`) is scored by its summed answer loss, with the true and with the shuffled
images, and the lowest-loss candidate is the model's pick. ``accuracy`` is the share of records
whose pick is right, ``accuracy_shuffled`` the same with another tile's images, ``chance`` what a
uniform guess among the candidates scores. A model that reads the image picks better with its own
image than with another one: ``accuracy_gap = accuracy - accuracy_shuffled > 0``. Which other
tile a record gets moves the shuffled accuracy by several points on a few hundred records, so the
multiple-choice pass can average it over several derangements (``shuffles`` of :func:`hold_out`
and :func:`unseen_set`; the losses keep the first). ``accuracy_gap_se`` is the gap's standard
error over the same records, paired: with 48 scene-class questions a gap of 0.2 is about two.

Held-out records are whole image groups removed from the training index (they are never trained
on), or (:func:`unseen_set`) records of a corpus that training never sees: the embedded defaults
check on a fresh synthetic world, a sample of it along the way and all of it at the last step, so
that each closed task has hundreds of records instead of the 8 to 30 a 128-record hold-out gave.
The check runs with the model in eval mode (no VRL, no drop-path) under the trainer's
precision context, and works under DDP/FSDP: every rank evaluates its share and the sums are
all-reduced (every rank runs the same number of forward passes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import Tensor, nn

from vitp_geo.constants import IGNORE_INDEX
from vitp_geo.instruct.records import IMAGE_PLACEHOLDER
from vitp_geo.io.atomic import atomic_output
from vitp_geo.io.strict_json import json_safe
from vitp_geo.pretrain.dataset import InstructionDataset, Sample
from vitp_geo.vlm.model import labelled_token_ce, token_losses

__all__ = [
    "CLOSED_TASKS",
    "IMAGE_DECIDED_TASKS",
    "MAX_CANDIDATES",
    "ImageReliance",
    "RelianceResult",
    "RelianceSet",
    "VLMForward",
    "answer_loss_per_sample",
    "canonical_answer",
    "choice_candidates",
    "evaluate_reliance",
    "hold_out",
    "unseen_set",
    "lettered_options",
    "vlm_forward",
]

log = logging.getLogger(__name__)

# Tasks whose answer is decided by the image: a question-only prior cannot get them right.
IMAGE_DECIDED_TASKS: tuple[str, ...] = ("presence", "classes", "classification", "counting", "grounding")
VARIANTS: tuple[str, ...] = ("true", "shuffled", "blank")
# Tasks whose answer is one pick from a closed set (yes/no, a scene class or its option letter, a
# count, a class): the check scores them as multiple choice. Lists of classes (``classes``,
# ``region``) are left out: ranked by summed loss, a one-class list beats a longer right one (a
# run reading "which classes" at +1.9 nats per answer scored 0 % on them).
CLOSED_TASKS: tuple[str, ...] = (
    "presence",
    "classification",
    "counting",
    "dominant",
    "change_yesno",
)
# At most this many candidate answers per record (the true one always among them).
MAX_CANDIDATES = 32
# Seeded draws of the derangement before a group whose every partner shares an image is left out.
SHUFFLE_TRIES = 20
T = TypeVar("T")
# Below this many nats per answer on image-decided records after the warm-up, the run warns.
NEAR_ZERO_GAIN = 0.05


@dataclass(frozen=True)
class HeldOut:
    """One held-out record: recipe entry ``src_id``, record ``rec_id``, its task and image group."""

    src_id: int
    rec_id: int
    task: str
    group: int  # index of its image group (records about the same image(s))


@dataclass
class RelianceSet:
    """Held-out records and, for each, the images that replace its own in the shuffled pass.

    ``candidates`` holds, per record, the answers it is scored against as multiple choice (empty:
    not scored; e.g. an open-ended task). :func:`hold_out` fills it with :func:`choice_candidates`.
    """

    records: list[HeldOut]
    shuffled_images: list[list[Path]]  # per record: images of another source tile
    candidates: list[tuple[str, ...]] = field(default_factory=list)
    origin: str = "held-out"  # where the records come from, as the summary names them
    # Further derangements for the multiple-choice pass only, each per record like
    # ``shuffled_images``: the accuracy with shuffled images is the mean over all of them, so it
    # depends less on which other tile a record happened to get (the losses use the first).
    more_shuffled: list[list[list[Path]]] = field(default_factory=list)

    def shuffled_draws(self) -> list[list[list[Path]]]:
        """Every derangement the multiple-choice pass scores: the first, then ``more_shuffled``."""
        return [self.shuffled_images, *self.more_shuffled]

    def __len__(self) -> int:
        return len(self.records)


_OPTION = re.compile(r"^[ \t]*([A-Z])[.)][ \t]+\S", re.MULTILINE)
_YES_NO = re.compile(r"(yes|no)\b")


def lettered_options(question: str) -> tuple[str, ...]:
    """The option letters a question lists ("A. residential\\nB. lakeside" → ``("A", "B")``).

    Only an option block counts: at least two lines that start with ``A.``, ``B.``, … (or ``A)``)
    in order from A, without gaps. Anything else gives ``()``.
    """
    letters = _OPTION.findall(question)
    expected = [chr(ord("A") + i) for i in range(len(letters))]
    return tuple(letters) if len(letters) >= 2 and letters == expected else ()


def canonical_answer(text: str) -> str:
    """The form in which two answers count as the same pick.

    Case, surrounding white space and a final full stop do not matter, and a yes/no answer is its
    first word: "Yes, there is." and "yes" are the same answer (the corpus phrases yes/no three ways
    at random, which the image cannot decide).
    """
    flat = " ".join(text.split()).lower().rstrip(" .!")
    m = _YES_NO.match(flat)
    return m.group(1) if m else flat


def _final_turn(conversations: Sequence[Mapping[str, str]]) -> tuple[int, str] | None:
    """``(index, question)`` of the last assistant turn and the user turn before it."""
    for i in range(len(conversations) - 1, -1, -1):
        if conversations[i].get("from") == "gpt":
            question = next(
                (str(t.get("value", "")) for t in reversed(conversations[:i]) if t.get("from") == "human"),
                "",
            )
            return i, question
    return None


def choice_candidates(
    dataset: InstructionDataset, records: Sequence[HeldOut], max_candidates: int = MAX_CANDIDATES
) -> list[tuple[str, ...]]:
    """The candidate answers of each record of a closed task (:data:`CLOSED_TASKS`).

    The rule: a question that lists lettered options ("A. residential\\nB. lakeside ...") has
    exactly those letters as candidates. Any other record of task ``t`` has the distinct final
    answers (the last assistant turn) of every record of task ``t`` in ``dataset`` (all recipe
    entries, training and held-out alike) that asks the same question (images aside), when they
    hold at least two different picks (:func:`canonical_answer`): "Is there a road?" is answered
    among "Roads: yes." and "Roads: no.", not among other classes' answers. Otherwise the answers
    of every question of task ``t`` that lists no options; so a lettered and a free-form
    classification question never mix their answers. The record's own answer is always
    among its candidates. Above ``max_candidates`` the most frequent answers are kept (ties by
    text), plus the record's own. Candidates are sorted by text, so the right one holds no
    special place when losses tie.

    Args:
        dataset: all records of the recipe (``dataset.sources``; the training index does not matter).
        records: the held-out records.
        max_candidates: cap on candidates per record (>= 2).

    Returns:
        Per record, its candidates; ``()`` for a record that is not scored (an open task, no
        assistant turn, or fewer than two candidates).
    """
    if max_candidates < 2:
        raise ValueError(f"max_candidates must be >= 2, got {max_candidates}")
    # One pass over the recipe: the free-form answers of each closed task and of each of its
    # questions, with their counts.
    pools: dict[tuple[str, str | None], Counter[str]] = defaultdict(Counter)
    for src in dataset.sources:
        for rec in src.records:
            if rec.task not in CLOSED_TASKS:
                continue
            final = _final_turn(rec.conversations)
            if final is None or lettered_options(final[1]):
                continue
            answer = str(rec.conversations[final[0]].get("value", ""))
            if answer.strip():
                pools[(rec.task, None)][answer] += 1
                pools[(rec.task, _question_key(final[1]))][answer] += 1
    ranked = {
        key: [a for a, _ in sorted(pool.items(), key=lambda kv: (-kv[1], kv[0]))]
        for key, pool in pools.items()
        if key[1] is None or len({canonical_answer(a) for a in pool}) >= 2
    }
    out: list[tuple[str, ...]] = []
    for held in records:
        rec, _ = dataset.record_at(held.src_id, held.rec_id)
        final = _final_turn(rec.conversations) if rec.task in CLOSED_TASKS else None
        answer = str(rec.conversations[final[0]].get("value", "")) if final is not None else ""
        if final is None or not answer.strip():
            out.append(())
            continue
        options = lettered_options(final[1])
        if options:
            pool = list(options)
        else:
            pool = ranked.get((rec.task, _question_key(final[1]))) or ranked.get((rec.task, None), [])
        others = [a for a in pool if a != answer][: max_candidates - 1]
        cands = tuple(sorted({answer, *others}))
        out.append(cands if len(cands) >= 2 else ())
    return out


def _question_key(question: str) -> str:
    """A question's text without its image placeholders and with white space folded."""
    return " ".join(question.replace(IMAGE_PLACEHOLDER, " ").split())


def image_derangement(
    items: Sequence[T],
    paths: Callable[[T], Iterable[str]],
    rng: np.random.Generator,
    tries: int = SHUFFLE_TRIES,
) -> dict[T, T]:
    """Partners for items that carry images: each maps to another sharing none of its image paths.

    The one derangement of the image-reliance check and the shuffled-image control of
    ``benchmarks/pretrain_gain.py``. A cyclic shift of a seeded permutation (never a fixed point)
    is drawn up to ``tries`` times until no item's partner shares an image with it (change pairs
    (A, B) and (A, C) share A); the largest such map found is returned, so items without a
    partner are left out (callers that need every item check the size).

    Args:
        items: distinct items (e.g. image-path tuples) that may be swapped with one another.
        paths: the image paths of an item.
        rng: the seeded generator the permutations are drawn from.
        tries: permutations drawn at most.
    """
    if len(items) < 2:
        return {}
    own = [set(paths(item)) for item in items]
    best: dict[T, T] = {}
    for _ in range(tries):
        perm = [int(i) for i in rng.permutation(len(items))]
        ok = {
            items[i]: items[j] for i, j in zip(perm, perm[1:] + perm[:1], strict=True) if not own[i] & own[j]
        }
        if len(ok) > len(best):
            best = ok
        if len(best) == len(items):
            break
    return best


def _checked_groups(
    dataset: InstructionDataset, max_records: int, max_candidates: int
) -> tuple[dict[tuple[str, ...], list[tuple[int, int]]], list[tuple[str, ...]]]:
    """Records that share the same image paths, by those paths, and the paths sorted.

    Text-only records are left out. The arguments of :func:`hold_out` and :func:`unseen_set` are
    checked first.
    """
    if max_records < 0:
        raise ValueError(f"max_records must be >= 0, got {max_records}")
    if max_candidates < 2:
        raise ValueError(f"max_candidates must be >= 2, got {max_candidates}")
    groups: dict[tuple[str, ...], list[tuple[int, int]]] = defaultdict(list)
    for src_id, src in enumerate(dataset.sources):
        for rec_id, paths in enumerate(src.image_paths):
            if paths:
                groups[tuple(str(p) for p in paths)].append((src_id, rec_id))
    return groups, sorted(groups)


def _draw_groups(
    keys: Sequence[tuple[str, ...]],
    groups: Mapping[tuple[str, ...], Sequence[tuple[int, int]]],
    max_records: int,
    max_groups: int,
    rng: np.random.Generator,
) -> list[tuple[str, ...]]:
    """Groups in a seeded order until at least ``max_records`` records (or ``max_groups`` groups)."""
    order = [keys[int(i)] for i in rng.permutation(len(keys))]
    chosen: list[tuple[str, ...]] = []
    n = 0
    for key in order:
        if n >= max_records or len(chosen) >= max_groups:
            break
        chosen.append(key)
        n += len(groups[key])
    return chosen


def _partnered_set(
    dataset: InstructionDataset,
    groups: Mapping[tuple[str, ...], Sequence[tuple[int, int]]],
    chosen: Sequence[tuple[str, ...]],
    rng: np.random.Generator,
    max_candidates: int,
    shuffles: int = 1,
) -> RelianceSet:
    """The records of the ``chosen`` groups that find a shuffled partner, with their partners' images.

    Partners must tile the same way (same images, same grids), so the token sequence keeps its
    length and positions and only the pixels differ. The grid depends on each record's source
    (its max_dynamic_patch), so records of one image group are split by their tile budget and
    each part is matched with parts of the same budget and layout. A group is taken whole or not
    at all (a held-out group's images must never be trained on). ``shuffles`` > 1 draws that many
    derangements (after the first, from the same generator, so the first does not change); a part
    a later draw leaves without a partner keeps its first partner there.
    """
    parts: dict[tuple[tuple[str, ...], int], list[tuple[int, int]]] = defaultdict(list)
    for key in chosen:
        for src_id, rec_id in groups[key]:
            parts[(key, dataset.tile_budget(src_id, rec_id))].append((src_id, rec_id))
    by_layout: dict[tuple[object, ...], list[tuple[tuple[str, ...], int]]] = defaultdict(list)
    for part, members in parts.items():
        by_layout[(part[1], dataset.tile_layout(*members[0]))].append(part)
    partners: list[dict[tuple[tuple[str, ...], int], tuple[str, ...]]] = []
    for draw in range(max(shuffles, 1)):
        partner: dict[tuple[tuple[str, ...], int], tuple[str, ...]] = {}
        for same in by_layout.values():
            # A change pair (A, C) next to (A, B) must not get (A, B)'s images: it would keep image
            # A and read a gain biased low; parts left without a partner are left out.
            found = image_derangement(same, lambda part: part[0], rng)
            partner.update({part: other[0] for part, other in found.items()})
        partners.append(partner if draw == 0 else {**partners[0], **partner})
    first = partners[0]
    whole = {key for key, _ in first} - {key for key, budget in parts if (key, budget) not in first}
    records: list[HeldOut] = []
    shuffled: list[list[list[Path]]] = [[] for _ in partners]
    for g, key in enumerate(sorted(whole)):
        for src_id, rec_id in groups[key]:
            rec = dataset.sources[src_id].records[rec_id]
            records.append(HeldOut(src_id, rec_id, rec.task, g))
            part = (key, dataset.tile_budget(src_id, rec_id))
            for draw, partner in enumerate(partners):
                shuffled[draw].append([Path(p) for p in partner[part]])
    return RelianceSet(
        records, shuffled[0], choice_candidates(dataset, records, max_candidates), more_shuffled=shuffled[1:]
    )


def hold_out(
    dataset: InstructionDataset,
    max_records: int,
    seed: int = 0,
    max_candidates: int = MAX_CANDIDATES,
    shuffles: int = 1,
) -> RelianceSet:
    """Remove a seeded set of whole image groups from ``dataset``'s training index.

    Groups (records that share the same image paths) are drawn in a seeded order until at least
    ``max_records`` records are held out, keeping at least half of the groups for training. The
    shuffled images come from a derangement of the held-out groups that tile alike (same number of
    images, same dynamic-tiling grid each under the record's own tile budget, so the token sequence is
    unchanged but for the pixels),
    so no record sees its own tile. Groups with no partner that tiles alike, and text-only records,
    are left in training.

    Args:
        dataset: the training dataset; its ``index`` loses every held-out record.
        max_records: target size of the held-out set (0: hold out nothing).
        seed: seeds the choice of groups and the derangement.
        max_candidates: cap on the multiple-choice candidates per record (see
            :func:`choice_candidates`, which fills ``candidates``).
        shuffles: derangements the multiple-choice pass averages its shuffled accuracy over
            (``RelianceSet.more_shuffled`` holds all but the first).

    Returns:
        The :class:`RelianceSet` (empty when ``max_records`` is 0 or too few groups exist).
    """
    groups, keys = _checked_groups(dataset, max_records, max_candidates)
    if max_records == 0 or len(keys) < 4:
        return RelianceSet([], [])
    rng = np.random.default_rng(seed)
    chosen = _draw_groups(keys, groups, max_records, len(keys) // 2, rng)
    held = _partnered_set(dataset, groups, chosen, rng, max_candidates, shuffles)
    taken = {(r.src_id, r.rec_id) for r in held.records}
    dataset.index = [pair for pair in dataset.index if pair not in taken]
    if not dataset.index:
        raise ValueError("holding out records for the image-reliance check left nothing to train on")
    return held


def unseen_set(
    dataset: InstructionDataset,
    max_records: int = 0,
    seed: int = 0,
    max_candidates: int = MAX_CANDIDATES,
    origin: str = "unseen-world",
    shuffles: int = 1,
) -> RelianceSet:
    """A reliance set from a corpus that training never sees (e.g. a fresh synthetic world).

    Nothing is removed from any training index. The groups are drawn as by :func:`hold_out`, but
    from the whole corpus: all of them when ``max_records`` is 0, else (seeded, whole groups)
    until at least ``max_records`` records.

    Args:
        dataset: the unseen corpus.
        max_records: target size (0: every group that finds a partner).
        seed: seeds the choice of groups and the derangement.
        max_candidates: as for :func:`hold_out`.
        origin: how the summary names the records (``RelianceSet.origin``).
        shuffles: as for :func:`hold_out`.
    """
    groups, keys = _checked_groups(dataset, max_records, max_candidates)
    if len(keys) < 2:
        return RelianceSet([], [])
    rng = np.random.default_rng(seed)
    chosen = _draw_groups(keys, groups, max_records or sum(map(len, groups.values())), len(keys), rng)
    found = _partnered_set(dataset, groups, chosen, rng, max_candidates, shuffles)
    found.origin = origin
    return found


def answer_loss_per_sample(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed next-token cross-entropy over each sample's labelled tokens.

    Args:
        logits: (B, L, V) LM logits.
        labels: (B, L) targets with -100 where no loss (the same convention as the LM's loss).

    Returns:
        ``(loss_sum, n_tokens)``, both (B,) float: nats per answer and answer tokens per sample.
    """
    ce, valid = token_losses(logits, labels)
    return (ce * valid).sum(dim=1), valid.sum(dim=1)


def gap_standard_error(gap: float, gap_sq: float, n: float) -> float:
    """Standard error of a paired accuracy gap over ``n`` records (NaN below 2 records).

    Each record gives ``d = right with true images - right with shuffled ones`` (the latter a mean
    over derangements, so ``d`` lies in [-1, 1]); ``gap`` is the mean of ``d`` and ``gap_sq`` the
    mean of ``d²``. The sample standard deviation of ``d`` over the square root of ``n``.
    """
    if n < 2:
        return float("nan")
    var = max(gap_sq - gap * gap, 0.0) * n / (n - 1)
    return math.sqrt(var / n)


@dataclass
class RelianceResult:
    """Answer losses (nats per answer) with true, shuffled and blank images, overall and per task.

    ``per_task[t]`` holds ``loss``, ``loss_shuffled``, ``loss_blank``, ``image_gain`` and ``records``;
    for a closed task (:data:`CLOSED_TASKS`) also ``accuracy``, ``accuracy_shuffled``, ``chance``,
    ``candidates`` (mean candidates per record), ``choice_records`` (records scored as multiple
    choice), ``shuffles`` (derangements ``accuracy_shuffled`` is the mean over), ``gap_sq`` (the mean
    squared per-record difference true − shuffled) and ``accuracy_gap_se``
    (:func:`gap_standard_error`).
    """

    loss: float
    loss_shuffled: float
    loss_blank: float
    records: int
    answer_tokens: float  # mean answer tokens per record
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    origin: str = "held-out"  # RelianceSet.origin of the records checked

    @property
    def image_gain(self) -> float:
        return self.loss_shuffled - self.loss

    @property
    def image_gain_decided(self) -> float:
        """Gain averaged over the records of image-decided tasks (NaN when there are none)."""
        n = sum(self.per_task[t]["records"] for t in IMAGE_DECIDED_TASKS if t in self.per_task)
        if n == 0:
            return float("nan")
        return (
            sum(
                self.per_task[t]["image_gain"] * self.per_task[t]["records"]
                for t in IMAGE_DECIDED_TASKS
                if t in self.per_task
            )
            / n
        )

    def _choice_mean(self, key: str) -> float:
        """``per_task[t][key]`` averaged over the multiple-choice records of all tasks (NaN if none)."""
        rows = [r for r in self.per_task.values() if r.get("choice_records", 0) > 0]
        n = sum(r["choice_records"] for r in rows)
        return sum(r[key] * r["choice_records"] for r in rows) / n if n else float("nan")

    @property
    def choice_records(self) -> int:
        """Records scored as multiple choice (closed tasks)."""
        return int(sum(r.get("choice_records", 0) for r in self.per_task.values()))

    @property
    def accuracy(self) -> float:
        """Multiple-choice accuracy with the true images over all closed-task records (NaN if none)."""
        return self._choice_mean("accuracy")

    @property
    def accuracy_shuffled(self) -> float:
        """The same with another tile's images."""
        return self._choice_mean("accuracy_shuffled")

    @property
    def accuracy_chance(self) -> float:
        """What a uniform guess among each record's candidates scores, on the same records."""
        return self._choice_mean("chance")

    @property
    def accuracy_gap(self) -> float:
        """``accuracy - accuracy_shuffled``: how much the true image helps the pick."""
        return self.accuracy - self.accuracy_shuffled

    @property
    def accuracy_gap_se(self) -> float:
        """Standard error of :attr:`accuracy_gap` over all closed-task records (NaN if unknown)."""
        rows = [r for r in self.per_task.values() if r.get("choice_records", 0) > 0]
        if not rows or any("gap_sq" not in r for r in rows):
            return float("nan")
        return gap_standard_error(self.accuracy_gap, self._choice_mean("gap_sq"), self.choice_records)

    def columns(self) -> dict[str, float]:
        """The ``metrics.csv`` columns (the accuracy ones only when closed-task records were scored)."""
        cols = {
            "val/loss": self.loss,
            "val/loss_shuffled": self.loss_shuffled,
            "val/loss_blank": self.loss_blank,
            "val/image_gain": self.image_gain,
            "val/image_gain_decided": self.image_gain_decided,
        }
        if self.choice_records:
            cols["val/accuracy"] = self.accuracy
            cols["val/accuracy_shuffled"] = self.accuracy_shuffled
            cols["val/accuracy_chance"] = self.accuracy_chance
            cols["val/accuracy_gap_se"] = self.accuracy_gap_se
            for task, row in sorted(self.per_task.items()):
                if row.get("choice_records", 0) > 0:
                    cols[f"val/accuracy_{task}"] = row["accuracy"]
                    cols[f"val/accuracy_shuffled_{task}"] = row["accuracy_shuffled"]
                    cols[f"val/accuracy_chance_{task}"] = row["chance"]
                    cols[f"val/accuracy_gap_se_{task}"] = row.get("accuracy_gap_se", float("nan"))
        return cols

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": "nats per answer (answer-token loss summed over each answer, mean over records)",
            "records": self.records,
            "records_from": self.origin,
            "answer_tokens_per_record": self.answer_tokens,
            "loss": self.loss,
            "loss_shuffled": self.loss_shuffled,
            "loss_blank": self.loss_blank,
            "image_gain": self.image_gain,
            "image_gain_decided": self.image_gain_decided,
            "image_decided_tasks": list(IMAGE_DECIDED_TASKS),
            "accuracy_unit": (
                "share of closed-task records whose lowest-loss candidate answer is right "
                "(true / shuffled images); chance: a uniform guess among the candidates"
            ),
            "choice_records": self.choice_records,
            "accuracy": self.accuracy,
            "accuracy_shuffled": self.accuracy_shuffled,
            "accuracy_chance": self.accuracy_chance,
            "accuracy_gap": self.accuracy_gap,
            "accuracy_gap_se": self.accuracy_gap_se,
            "closed_tasks": list(CLOSED_TASKS),
            "per_task": self.per_task,
        }

    def format(self) -> str:
        lines = [
            f"  image gain     {self.image_gain:+.3f} nats/answer overall, "
            f"{self.image_gain_decided:+.3f} on image-decided tasks "
            f"({self.records} {self.origin} records; loss true {self.loss:.3f}, "
            f"shuffled {self.loss_shuffled:.3f}, blank {self.loss_blank:.3f})"
        ]
        if self.choice_records:
            lines.append(
                f"  accuracy       {self.accuracy:.2f} true images, {self.accuracy_shuffled:.2f} shuffled, "
                f"{self.accuracy_chance:.2f} chance (multiple choice, {self.choice_records} closed-task "
                f"records; gap {_gap_text(self.accuracy_gap, self.accuracy_gap_se)})"
            )
        for task, row in sorted(self.per_task.items()):
            lines.append(
                f"    {task:<14} {row['image_gain']:+.3f}  (true {row['loss']:.3f}, shuffled "
                f"{row['loss_shuffled']:.3f}, blank {row['loss_blank']:.3f}, n={int(row['records'])})"
            )
            if row.get("choice_records", 0) > 0:
                gap = _gap_text(
                    row["accuracy"] - row["accuracy_shuffled"], row.get("accuracy_gap_se", math.nan)
                )
                lines.append(
                    f"    {'':<14} acc true {row['accuracy']:.2f} shuffled {row['accuracy_shuffled']:.2f} "
                    f"chance {row['chance']:.2f} (gap {gap}, n={int(row['choice_records'])})"
                )
        return "\n".join(lines)


def _gap_text(gap: float, se: float) -> str:
    return f"{gap:+.2f}" + (f" ± {se:.2f}" if math.isfinite(se) else "")


# batch → ``(loss_sum, n_tokens)`` per sample (see :func:`answer_loss_per_sample`). A forward that
# sets ``shares_prefix = True`` (:class:`VLMForward`) also takes *choice batches*: the rows of one
# record (one per candidate answer) are adjacent and share the record's images and the tokens before
# the answer; ``choice_group`` (B,) numbers each row's record, ``choice_prefix`` (B,) is how many
# leading tokens the rows of its record share, and only the first row of each record carries its
# tiles (``num_tiles`` 0 for the others). Any other forward gets plain batches, tiles on every row.
Forward = Callable[[dict[str, Tensor]], tuple[Tensor, Tensor]]
CHOICE_KEYS: tuple[str, ...] = ("choice_group", "choice_prefix")


@torch.no_grad()
def evaluate_reliance(
    forward: Forward,
    dataset: InstructionDataset,
    held: RelianceSet,
    collate_fn: Callable[[Sequence[Sample]], dict[str, Tensor]],
    *,
    batch_size: int = 8,
    choice_rows: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> RelianceResult:
    """Held-out answer losses (true, shuffled, blank images) and closed-task accuracy (true, shuffled).

    Args:
        forward: batch → ``(loss_sum, n_tokens)`` per sample (see :data:`Forward`).
        dataset: where the records live.
        held: from :func:`hold_out` (records with ``candidates`` are scored as multiple choice).
        collate_fn: the training collate function.
        batch_size: records per forward pass of the loss passes.
        choice_rows: candidate rows per forward pass of the multiple-choice scoring (default
            ``4 * batch_size``); a record's candidates are never split, so a record with more
            candidates than that goes alone.
        rank, world_size: this rank's share is ``records[rank::world_size]``; ranks pad to the same
            number of batches (padding carries weight 0) and sums are all-reduced.
        device: where batches go.
    """
    if not len(held):
        raise ValueError("the image-reliance set is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    choice_rows = 4 * batch_size if choice_rows is None else choice_rows
    if choice_rows < 1:
        raise ValueError(f"choice_rows must be >= 1, got {choice_rows}")
    tasks = sorted({r.task for r in held.records})
    task_ix = {t: i for i, t in enumerate(tasks)}
    mine = list(range(rank, len(held), world_size))
    per_rank = -(-len(held) // world_size)
    n_batches = -(-per_rank // batch_size)
    # sums[task, k]: k = 0..2 loss per variant, 3 records, 4 answer tokens; 5..10 multiple choice
    # (right picks with true, with shuffled images, chance, candidates, records, squared differences)
    sums = torch.zeros(len(tasks), 11, dtype=torch.float64)
    for b in range(n_batches):
        idx = mine[b * batch_size : (b + 1) * batch_size]
        weight = [1.0] * len(idx)
        if not idx:  # this rank ran out: repeat a record with weight 0 to keep collectives in step
            idx, weight = [mine[0] if mine else 0], [0.0]
        for k, variant in enumerate(VARIANTS):
            samples = []
            for i in idx:
                rec = held.records[i]
                if variant == "true":
                    samples.append(dataset.load_variant(rec.src_id, rec.rec_id))
                elif variant == "shuffled":
                    samples.append(
                        dataset.load_variant(rec.src_id, rec.rec_id, images=held.shuffled_images[i])
                    )
                else:
                    samples.append(dataset.load_variant(rec.src_id, rec.rec_id, blank=True))
            batch = {key: v.to(device) for key, v in collate_fn(samples).items()}
            loss_sum, n_tok = forward(batch)
            for j, i in enumerate(idx):
                t = task_ix[held.records[i].task]
                sums[t, k] += weight[j] * float(loss_sum[j])
                if k == 0:
                    sums[t, 3] += weight[j]
                    sums[t, 4] += weight[j] * float(n_tok[j])
    sums[:, 5:] = _choice_sums(
        forward,
        dataset,
        held,
        collate_fn,
        task_ix,
        rows=choice_rows,
        rank=rank,
        world_size=world_size,
        device=device,
    )
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        reduced = sums.to(device)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        sums = reduced.cpu()
    total = sums.sum(dim=0)
    n = float(total[3])
    per_task: dict[str, dict[str, float]] = {}
    for task, i in task_ix.items():
        m = float(sums[i, 3])
        if m == 0:
            continue
        row = {name: float(sums[i, k]) / m for k, name in enumerate(("loss", "loss_shuffled", "loss_blank"))}
        row["image_gain"] = row["loss_shuffled"] - row["loss"]
        row["records"] = m
        c = float(sums[i, 9])
        if c > 0:
            for k, name in enumerate(("accuracy", "accuracy_shuffled", "chance", "candidates"), start=5):
                row[name] = float(sums[i, k]) / c
            row["choice_records"] = c
            row["shuffles"] = float(len(held.shuffled_draws()))
            row["gap_sq"] = float(sums[i, 10]) / c
            row["accuracy_gap_se"] = gap_standard_error(
                row["accuracy"] - row["accuracy_shuffled"], row["gap_sq"], c
            )
        per_task[task] = row
    return RelianceResult(
        loss=float(total[0]) / n,
        loss_shuffled=float(total[1]) / n,
        loss_blank=float(total[2]) / n,
        records=int(n),
        answer_tokens=float(total[4]) / n,
        per_task=per_task,
        origin=held.origin,
    )


def _choice_sums(
    forward: Forward,
    dataset: InstructionDataset,
    held: RelianceSet,
    collate_fn: Callable[[Sequence[Sample]], dict[str, Tensor]],
    task_ix: dict[str, int],
    *,
    rows: int,
    rank: int,
    world_size: int,
    device: torch.device | str,
) -> Tensor:
    """This rank's multiple-choice sums per task.

    Returns:
        (n_tasks, 6) float64: right picks with the true images, with the shuffled ones (each
        record's mean over the derangements of ``held.shuffled_draws()``), chance (the share of a
        record's candidates that count as right), candidates, records, and the sum of each
        record's squared difference true − shuffled.
    """
    sums = torch.zeros(len(task_ix), 6, dtype=torch.float64)
    draws = held.shuffled_draws()
    cands = held.candidates if len(held.candidates) == len(held) else [()] * len(held)
    closed = [i for i, c in enumerate(cands) if len(c) >= 2]
    if not closed:  # the same on every rank: no one runs a pass
        return sums
    # Every rank packs every rank's share: all agree on the number of passes without a collective.
    packs = [_pack(closed[r::world_size], [len(c) for c in cands], rows) for r in range(world_size)]
    mine = packs[rank]
    shares = bool(getattr(forward, "shares_prefix", False))
    for b in range(max(len(p) for p in packs)):
        chunk, live = (mine[b], True) if b < len(mine) else ([closed[0]], False)  # padding: weight 0
        # Shuffled tiles come out alike, so the token rows serve both variants: tokenise once.
        tokens = [_candidate_tokens(dataset, held.records[i], cands[i]) for i in chunk]
        scores: list[Tensor] = []
        for images in (None, *draws):  # the true images, then every derangement
            tiles = [_variant_tiles(dataset, held, i, images) for i in chunk]
            batch = _choice_batch(tokens, tiles, collate_fn, shared=shares)
            loss_sum, _ = forward({key: v.to(device) for key, v in batch.items()})
            scores.append(loss_sum.detach().to("cpu", torch.float64))
        if not live:
            continue
        start = 0
        for i in chunk:
            rec = held.records[i]
            record, _ = dataset.record_at(rec.src_id, rec.rec_id)
            final = _final_turn(record.conversations)
            answer = canonical_answer(record.conversations[final[0]]["value"]) if final else ""
            right = [canonical_answer(c) == answer for c in cands[i]]
            k, t = len(right), task_ix[rec.task]
            picks = [float(right[int(torch.argmin(score[start : start + k]))]) for score in scores]
            shuffled = sum(picks[1:]) / len(draws)  # the mean over the derangements
            sums[t, 0] += picks[0]
            sums[t, 1] += shuffled
            sums[t, 2] += sum(right) / k
            sums[t, 3] += k
            sums[t, 4] += 1
            sums[t, 5] += (picks[0] - shuffled) ** 2
            start += k
    return sums


def _pack(indices: Sequence[int], sizes: Sequence[int], rows: int) -> list[list[int]]:
    """Records in order, ``rows`` candidate rows per pass at most (a larger record goes alone)."""
    packs: list[list[int]] = []
    used = rows
    for i in indices:
        if used + sizes[i] > rows:
            packs.append([])
            used = 0
        packs[-1].append(i)
        used += sizes[i]
    return packs


def _candidate_tokens(
    dataset: InstructionDataset, rec: HeldOut, candidates: Sequence[str]
) -> list[tuple[Tensor, Tensor]]:
    """``(input_ids, labels)`` of the record with each candidate as its final answer, each (L_k,)."""
    record, _ = dataset.record_at(rec.src_id, rec.rec_id)
    final = _final_turn(record.conversations)
    if final is None:
        raise ValueError(f"record {record.id!r} has no assistant turn to score candidates on")
    out = []
    for cand in candidates:
        turns = [dict(t) for t in record.conversations]
        turns[final[0]]["value"] = cand
        # Blank images tile like the real ones and decode no file; only the tokens are kept.
        sample = dataset.load_variant(rec.src_id, rec.rec_id, blank=True, conversations=turns)
        out.append((sample["input_ids"], sample["labels"]))
    return out


def _variant_tiles(
    dataset: InstructionDataset, held: RelianceSet, i: int, draw: list[list[Path]] | None
) -> Tensor:
    """(T, 3, S, S) tiles of held-out record ``i``: its own images (``draw`` None) or its images in
    one derangement (``draw`` = a list like ``held.shuffled_images``)."""
    rec = held.records[i]
    return dataset.load_variant(rec.src_id, rec.rec_id, images=None if draw is None else draw[i])[
        "pixel_values"
    ]


def _shared_prefix(rows: Sequence[Tensor]) -> int:
    """Leading tokens common to all rows, leaving at least one token of each row after them."""
    n = min(int(r.shape[0]) for r in rows) - 1
    first = rows[0]
    for r in rows[1:]:
        diff = (r[:n] != first[:n]).nonzero()
        if len(diff):
            n = int(diff[0, 0])
    return max(n, 0)


def _choice_batch(
    tokens: Sequence[Sequence[tuple[Tensor, Tensor]]],
    tiles: Sequence[Tensor],
    collate_fn: Callable[[Sequence[Sample]], dict[str, Tensor]],
    *,
    shared: bool,
) -> dict[str, Tensor]:
    """One batch with every candidate row of some records (see :data:`Forward`).

    Args:
        tokens: per record, ``(input_ids, labels)`` of each candidate.
        tiles: per record, its (T, 3, S, S) tiles (the same for all its candidates).
        collate_fn: the training collate function.
        shared: a choice batch (tiles on a record's first row only, ``choice_group`` and
            ``choice_prefix``) instead of a plain one.
    """
    samples: list[Sample] = []
    group: list[int] = []
    prefix: list[int] = []
    for g, (rows, pix) in enumerate(zip(tokens, tiles, strict=True)):
        p = _shared_prefix([ids for ids, _ in rows])
        for k, (ids, labels) in enumerate(rows):
            px = pix if k == 0 or not shared else pix[:0]
            samples.append(
                {"pixel_values": px, "input_ids": ids, "labels": labels, "num_tiles": int(px.shape[0])}
            )
            group.append(g)
            prefix.append(p)
    batch = dict(collate_fn(samples))
    if shared:
        batch["choice_group"] = torch.tensor(group, dtype=torch.long)
        batch["choice_prefix"] = torch.tensor(prefix, dtype=torch.long)
    return batch


def expand_choice_batch(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """A choice batch as a plain one: every row gets its record's tiles, the choice keys go."""
    group, n_tiles = batch["choice_group"], batch["num_tiles"]
    first = torch.ones_like(group, dtype=torch.bool)
    first[1:] = group[1:] != group[:-1]
    head = first.nonzero(as_tuple=True)[0][first.long().cumsum(0) - 1]  # (B,) first row of each row's record
    starts = n_tiles.cumsum(0) - n_tiles
    tile_ix = [torch.arange(int(starts[h]), int(starts[h] + n_tiles[h])) for h in head.tolist()]
    out = {k: v for k, v in batch.items() if k not in CHOICE_KEYS}
    out["pixel_values"] = batch["pixel_values"][torch.cat(tile_ix).to(group.device)]
    out["num_tiles"] = n_tiles[head]
    return out


def _head_losses(head: nn.Module, hidden: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy summed per row over the labelled positions, the LM head run on those only.

    Args:
        head: the LM's output embedding (hidden → vocabulary logits).
        hidden: (N, T, H) the hidden state that predicts each target.
        targets: (N, T) token ids, -100 where no loss.

    Returns:
        ``(loss_sum, n_tokens)``, both (N,) float32.
    """
    ce, rows = labelled_token_ce(head, hidden, targets)
    valid = targets != IGNORE_INDEX
    loss_sum = torch.zeros(targets.shape[0], dtype=ce.dtype, device=ce.device).index_add_(0, rows, ce)
    return loss_sum, valid.sum(dim=1).to(ce.dtype)


class VLMForward:
    """A :data:`Forward` for a ``ViTPModel`` (eval mode is the caller's business).

    Plain batches go through the model as in training. Choice batches (eval mode) run each
    record's tiles through the ViT and its shared prefix through the LLM once, keep the LLM's
    key/value cache, and then run only the candidate answers, the LM head on the labelled positions
    only. The losses are those of the plain pass over full rows (up to float rounding). A model in
    training mode, an LLM without a separate decoder and head, or an image token after the shared
    prefix falls back to the plain pass.

    Args:
        model: a ``ViTPModel``.
        vision_dtype: the ViT's parameter dtype (pixels are cast to it), or ``None``.
        share_prefix: take choice batches (``shares_prefix``). Off for a sharded model (FSDP): its
            submodules may only run through the wrapped forward, as in the plain pass.
    """

    def __init__(
        self, model: Any, vision_dtype: torch.dtype | None = None, *, share_prefix: bool = True
    ) -> None:
        self.model = model
        self.vision_dtype = vision_dtype
        self.shares_prefix = share_prefix and not _is_sharded(model)

    def __call__(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if "choice_group" in batch:
            if self.shares_prefix and self._can_share(batch):
                return self._choices(batch)
            batch = expand_choice_batch(batch)
        return self._plain(batch)

    def _pixels(self, batch: dict[str, Tensor]) -> Tensor:
        pv = batch["pixel_values"]
        return pv.to(self.vision_dtype) if self.vision_dtype is not None else pv

    def _plain(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        out = self.model(
            pixel_values=self._pixels(batch),
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=None,
        )
        return answer_loss_per_sample(out.logits, batch["labels"])

    def _can_share(self, batch: dict[str, Tensor]) -> bool:
        lm = self.model.language_model
        if self.model.training or lm.get_decoder() is None or lm.get_output_embeddings() is None:
            return False
        ids, mask, prefix = batch["input_ids"], batch["attention_mask"], batch["choice_prefix"]
        lengths = mask.sum(dim=1)
        pos = torch.arange(ids.shape[1], device=ids.device)
        right_padded = bool((mask.bool() == (pos[None] < lengths[:, None])).all())
        late_image = (ids == self.model.img_context_token_id) & (pos[None] >= prefix[:, None])
        return (
            right_padded and bool(((prefix >= 1) & (prefix < lengths)).all()) and not bool(late_image.any())
        )

    def _choices(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        model = self.model
        lm = model.language_model
        decoder, head, embed = lm.get_decoder(), lm.get_output_embeddings(), lm.get_input_embeddings()
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        group, prefix = batch["choice_group"], batch["choice_prefix"]
        width = ids.shape[1]
        first = torch.ones_like(group, dtype=torch.bool)
        first[1:] = group[1:] != group[:-1]
        heads = first.nonzero(as_tuple=True)[0]  # (G,) first row of each record
        gi = first.long().cumsum(0) - 1  # (B,) record of each row, 0..G-1
        plen = prefix[heads]  # (G,)
        pos = torch.arange(width, device=ids.device)
        if bool((prefix != plen[gi]).any()) or bool(
            ((ids != ids[heads][gi]) & (pos[None] < prefix[:, None])).any()
        ):
            raise ValueError(
                "a choice batch's rows of one record must share their first choice_prefix tokens"
            )

        # 1. Each record's prefix once, left-padded so that all of them end in the last column.
        pmax = int(plen.max())
        src = torch.arange(pmax, device=ids.device)[None] - (pmax - plen)[:, None]  # (G, pmax); < 0: pad
        real = src >= 0
        src = src.clamp(min=0)
        head_ids = ids[heads]
        pre_ids = torch.where(real, head_ids.gather(1, src), head_ids[:, :1])
        pre_mask = real.long()
        # A row's first token is never predicted (nothing comes before it).
        pre_labels = torch.where(real & (src > 0), labels[heads].gather(1, src), IGNORE_INDEX)
        x = embed(pre_ids)  # (G, pmax, H)
        image = (pre_ids == model.img_context_token_id) & real
        n_tiles = int(batch["pixel_values"].shape[0])
        if int(image.sum()) != n_tiles * model.num_image_token:
            raise ValueError(
                f"the prefixes hold {int(image.sum())} <IMG_CONTEXT> tokens but {n_tiles} tiles give "
                f"{n_tiles * model.num_image_token}"
            )
        if n_tiles:
            feats = model.extract_feature(self._pixels(batch)).to(x.dtype)  # (T, n, H)
            x = x.masked_scatter(image.unsqueeze(-1), feats.reshape(-1, feats.shape[-1]))
        out = decoder(
            inputs_embeds=x,
            attention_mask=pre_mask,
            position_ids=(pre_mask.cumsum(dim=1) - 1).clamp(min=0),
            use_cache=True,
        )
        hidden = out.last_hidden_state  # (G, pmax, H)
        cache = getattr(out, "cache", None)  # transformers >= 5.2x; earlier: past_key_values
        cache = cache if cache is not None else getattr(out, "past_key_values", None)
        if cache is None:
            raise RuntimeError("the language model returned no key/value cache with use_cache=True")
        pre_sum, pre_n = _head_losses(head, hidden[:, :-1], pre_labels[:, 1:])  # earlier answers, if any

        # 2. The answers: each row continues its record's cache.
        span = mask.sum(dim=1) - prefix  # (B,) >= 1
        cols = torch.arange(int(span.max()), device=ids.device)
        at = (prefix[:, None] + cols[None]).clamp(max=width - 1)
        kept = cols[None] < span[:, None]
        suf_ids = torch.where(kept, ids.gather(1, at), ids[:, :1])
        suf_labels = torch.where(kept, labels.gather(1, at), IGNORE_INDEX)
        cache.batch_select_indices(gi)
        out = decoder(
            inputs_embeds=embed(suf_ids),
            attention_mask=torch.cat([pre_mask[gi], kept.long()], dim=1),
            position_ids=prefix[:, None] + cols[None],
            cache=cache,
            use_cache=True,
        )
        # Answer token s is predicted by the hidden state before it: the prefix's last one for s = 0.
        pred = torch.cat([hidden[gi, -1:], out.last_hidden_state[:, :-1]], dim=1)
        suf_sum, suf_n = _head_losses(head, pred, suf_labels)
        return pre_sum[gi] + suf_sum, pre_n[gi] + suf_n


def _is_sharded(model: Any) -> bool:
    """Whether ``model`` holds FSDP units (FSDP1 wrappers or FSDP2 ``fully_shard`` modules)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    kinds: tuple[type, ...] = (FullyShardedDataParallel,)
    try:
        from torch.distributed.fsdp import FSDPModule

        kinds += (FSDPModule,)
    except ImportError:  # older torch: FSDP1 only
        pass
    return isinstance(model, nn.Module) and any(isinstance(m, kinds) for m in model.modules())


def vlm_forward(
    model: Any, vision_dtype: torch.dtype | None = None, *, share_prefix: bool = True
) -> VLMForward:
    """A :data:`Forward` for a ``ViTPModel`` (eval mode is the caller's business); see :class:`VLMForward`."""
    return VLMForward(model, vision_dtype, share_prefix=share_prefix)


@contextlib.contextmanager
def root_params_gathered(root: Any) -> Iterator[None]:
    """Gather the root FSDP unit's own parameters while a callback runs ``pl_module.model``.

    Lightning wraps the LightningModule in a root unit; a callback gets the bare module, and a call
    to ``pl_module.model`` bypasses the root's forward, which is what unshards the parameters no
    child unit owns (embeddings, projector, norms). Child units still gather their own in their
    forward. FSDP1 (``FullyShardedDataParallel``) and FSDP2 (``fully_shard``) roots; anything
    else (no strategy model, DDP, one device) needs nothing.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(root, FullyShardedDataParallel):
        with FullyShardedDataParallel.summon_full_params(root, recurse=False, writeback=False):
            yield
        return
    fsdp2: tuple[type, ...] = ()
    try:
        from torch.distributed.fsdp import FSDPModule

        fsdp2 = (FSDPModule,)
    except ImportError:  # older torch: FSDP1 only
        pass
    if fsdp2 and isinstance(root, fsdp2):
        unit: Any = root
        unit.unshard()
        try:
            yield
        finally:
            unit.reshard()
        return
    yield


class ImageReliance(L.Callback):
    """Runs :func:`evaluate_reliance` every ``every`` optimizer steps and at the last step.

    The result goes to ``pl_module.pending_val`` (``MetricsCSV`` writes it into the step's row),
    one JSON line per check to ``jsonl_path`` (per-task figures), and ``self.results``. After the
    warm-up, a gain on image-decided tasks below :data:`NEAR_ZERO_GAIN` logs a warning once.

    Args:
        dataset, held, collate_fn: as for :func:`evaluate_reliance`.
        jsonl_path: ``image_reliance.jsonl`` in the run folder.
        every: steps between checks (0: only at the last step).
        warmup_steps: checks before this step never warn.
        batch_size: records per forward pass.
        final: the set of the last check (records of ``dataset``), e.g. every record of an unseen
            world where ``held`` is a sample of it for the checks along the way; None: ``held``.
    """

    def __init__(
        self,
        dataset: InstructionDataset,
        held: RelianceSet,
        collate_fn: Callable[[Sequence[Sample]], dict[str, Tensor]],
        jsonl_path: str | Path,
        *,
        every: int,
        warmup_steps: int = 0,
        batch_size: int = 8,
        final: RelianceSet | None = None,
    ) -> None:
        if every < 0:
            raise ValueError(f"every must be >= 0, got {every}")
        self.dataset, self.held, self.collate_fn = dataset, held, collate_fn
        self.final = final if final is not None and len(final) else held
        self.path = Path(jsonl_path)
        self.every, self.warmup_steps, self.batch_size = every, warmup_steps, batch_size
        self.results: list[tuple[int, RelianceResult]] = []
        self.warned = False
        self._step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step = trainer.global_step
        if not trainer.is_global_zero or not self.path.exists():
            return
        # A fresh run starts a fresh log; a resumed one drops lines after its checkpoint.
        lines = self.path.read_text().splitlines() if trainer.global_step > 0 else []
        kept = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= trainer.global_step]
        with atomic_output(self.path) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in kept))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._step:
            return  # still inside an accumulated optimizer step
        self._step = step
        # max_steps -1 (Lightning's default; the run ends by epochs): on_train_end checks instead.
        last = trainer.max_steps is not None and trainer.max_steps > 0 and step >= trainer.max_steps
        if not (last or (self.every and step % self.every == 0)):
            return
        self._check(trainer, pl_module, step, final=last)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A run that ended by epochs (``max_steps`` -1) gets its final check here."""
        step = trainer.global_step
        if step > 0 and (not self.results or self.results[-1][0] != step):
            self._check(trainer, pl_module, step, final=True)

    def _check(
        self, trainer: L.Trainer, pl_module: L.LightningModule, step: int, final: bool = False
    ) -> None:
        result = self.evaluate(trainer, pl_module, self.final if final else self.held)
        self.results.append((step, result))
        setattr(pl_module, "pending_val", result.columns())  # noqa: B010 - read by MetricsCSV
        if not trainer.is_global_zero:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps({"step": step, **json_safe(result.to_json())}) + "\n")
        gain = result.image_gain_decided
        if math.isnan(gain):
            gain = result.image_gain
        if step > self.warmup_steps and gain < NEAR_ZERO_GAIN and not self.warned:
            self.warned = True
            log.warning(
                "step %d: image gain %.3f nats/answer on held-out records: the VLM barely uses the "
                "image, so the ViT gets little task-relevant gradient (see docs/pretraining-evidence.md)",
                step,
                gain,
            )

    def evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule, held: RelianceSet | None = None
    ) -> RelianceResult:
        """One check on ``held`` (default: the set of the checks along the way)."""
        model: Any = getattr(pl_module, "model")  # noqa: B009 - ViTPPretrainModule.model
        was_training = model.training
        model.eval()
        try:
            dtype = next(model.vision_model.parameters()).dtype
            # Sharded strategies wrap the module from outside: only the model's own forward is safe.
            sharded = isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy))
            with (
                torch.random.fork_rng(devices=[]),
                trainer.precision_plugin.forward_context(),
                root_params_gathered(getattr(trainer.strategy, "model", None)),
            ):
                return evaluate_reliance(
                    vlm_forward(model, dtype, share_prefix=not sharded),
                    self.dataset,
                    self.held if held is None else held,
                    self.collate_fn,
                    batch_size=self.batch_size,
                    rank=trainer.global_rank,
                    world_size=trainer.world_size,
                    device=pl_module.device,
                )
        finally:
            model.train(was_training)
