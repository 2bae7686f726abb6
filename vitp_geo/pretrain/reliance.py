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

Held-out records are whole image groups removed from the training index (they are never trained
on). The check runs with the model in eval mode (no VRL, no drop-path) under the trainer's
precision context, and works under DDP/FSDP: every rank evaluates its share and the sums are
all-reduced (every rank runs the same number of forward passes).
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from vitp_geo.io.atomic import atomic_output
from vitp_geo.io.strict_json import json_safe
from vitp_geo.pretrain.dataset import InstructionDataset, Sample
from vitp_geo.vlm.model import token_losses

__all__ = [
    "IMAGE_DECIDED_TASKS",
    "ImageReliance",
    "RelianceResult",
    "RelianceSet",
    "answer_loss_per_sample",
    "evaluate_reliance",
    "hold_out",
    "vlm_forward",
]

log = logging.getLogger(__name__)

# Tasks whose answer is decided by the image: a question-only prior cannot get them right.
IMAGE_DECIDED_TASKS: tuple[str, ...] = ("presence", "classes", "classification", "counting", "grounding")
VARIANTS: tuple[str, ...] = ("true", "shuffled", "blank")
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
    """Held-out records and, for each, the images that replace its own in the shuffled pass."""

    records: list[HeldOut]
    shuffled_images: list[list[Path]]  # per record: images of another source tile

    def __len__(self) -> int:
        return len(self.records)


def hold_out(dataset: InstructionDataset, max_records: int, seed: int = 0) -> RelianceSet:
    """Remove a seeded set of whole image groups from ``dataset``'s training index.

    Groups (records that share the same image paths) are drawn in a seeded order until at least
    ``max_records`` records are held out, keeping at least half of the groups for training. The
    shuffled images come from a derangement of the held-out groups that tile alike (same number of
    images, same dynamic-tiling grid each, so the token sequence is unchanged but for the pixels),
    so no record sees its own tile. Groups with no partner that tiles alike, and text-only records,
    are left in training.

    Args:
        dataset: the training dataset; its ``index`` loses every held-out record.
        max_records: target size of the held-out set (0: hold out nothing).
        seed: seeds the choice of groups and the derangement.

    Returns:
        The :class:`RelianceSet` (empty when ``max_records`` is 0 or too few groups exist).
    """
    if max_records < 0:
        raise ValueError(f"max_records must be >= 0, got {max_records}")
    groups: dict[tuple[str, ...], list[tuple[int, int]]] = defaultdict(list)
    for src_id, src in enumerate(dataset.sources):
        for rec_id, paths in enumerate(src.image_paths):
            if paths:
                groups[tuple(str(p) for p in paths)].append((src_id, rec_id))
    keys = sorted(groups)
    if max_records == 0 or len(keys) < 4:
        return RelianceSet([], [])
    rng = np.random.default_rng(seed)
    order = [keys[int(i)] for i in rng.permutation(len(keys))]
    chosen: list[tuple[str, ...]] = []
    n = 0
    for key in order:
        if n >= max_records or len(chosen) >= len(keys) // 2:
            break
        chosen.append(key)
        n += len(groups[key])
    # Partners must tile the same way (same images, same grids), so the token sequence keeps its
    # length and positions and only the pixels differ.
    by_count: dict[tuple[tuple[int, int], ...], list[tuple[str, ...]]] = defaultdict(list)
    for key in chosen:
        by_count[dataset.tile_layout(*groups[key][0])].append(key)
    partner: dict[tuple[str, ...], tuple[str, ...]] = {}
    for same in by_count.values():
        if len(same) < 2:
            continue  # no other tile with this many images to swap in
        perm = [same[int(i)] for i in rng.permutation(len(same))]
        for i, key in enumerate(perm):
            partner[key] = perm[(i + 1) % len(perm)]  # a cyclic shift: never a fixed point
    records: list[HeldOut] = []
    shuffled: list[list[Path]] = []
    held: set[tuple[int, int]] = set()
    for g, key in enumerate(sorted(partner)):
        for src_id, rec_id in groups[key]:
            rec = dataset.sources[src_id].records[rec_id]
            records.append(HeldOut(src_id, rec_id, rec.task, g))
            shuffled.append([Path(p) for p in partner[key]])
            held.add((src_id, rec_id))
    dataset.index = [pair for pair in dataset.index if pair not in held]
    if not dataset.index:
        raise ValueError("holding out records for the image-reliance check left nothing to train on")
    return RelianceSet(records, shuffled)


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


@dataclass
class RelianceResult:
    """Answer losses (nats per answer) with true, shuffled and blank images, overall and per task."""

    loss: float
    loss_shuffled: float
    loss_blank: float
    records: int
    answer_tokens: float  # mean answer tokens per record
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)

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

    def columns(self) -> dict[str, float]:
        """The ``metrics.csv`` columns."""
        return {
            "val/loss": self.loss,
            "val/loss_shuffled": self.loss_shuffled,
            "val/loss_blank": self.loss_blank,
            "val/image_gain": self.image_gain,
            "val/image_gain_decided": self.image_gain_decided,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": "nats per answer (answer-token loss summed over each answer, mean over records)",
            "records": self.records,
            "answer_tokens_per_record": self.answer_tokens,
            "loss": self.loss,
            "loss_shuffled": self.loss_shuffled,
            "loss_blank": self.loss_blank,
            "image_gain": self.image_gain,
            "image_gain_decided": self.image_gain_decided,
            "image_decided_tasks": list(IMAGE_DECIDED_TASKS),
            "per_task": self.per_task,
        }

    def format(self) -> str:
        lines = [
            f"  image gain     {self.image_gain:+.3f} nats/answer overall, "
            f"{self.image_gain_decided:+.3f} on image-decided tasks "
            f"({self.records} held-out records; loss true {self.loss:.3f}, "
            f"shuffled {self.loss_shuffled:.3f}, blank {self.loss_blank:.3f})"
        ]
        for task, row in sorted(self.per_task.items()):
            lines.append(
                f"    {task:<14} {row['image_gain']:+.3f}  (true {row['loss']:.3f}, shuffled "
                f"{row['loss_shuffled']:.3f}, blank {row['loss_blank']:.3f}, n={int(row['records'])})"
            )
        return "\n".join(lines)


Forward = Callable[[dict[str, Tensor]], tuple[Tensor, Tensor]]


@torch.no_grad()
def evaluate_reliance(
    forward: Forward,
    dataset: InstructionDataset,
    held: RelianceSet,
    collate_fn: Callable[[Sequence[Sample]], dict[str, Tensor]],
    *,
    batch_size: int = 8,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> RelianceResult:
    """Answer losses of the held-out records with true, shuffled and blank images.

    Args:
        forward: batch → ``(loss_sum, n_tokens)`` per sample (see :func:`answer_loss_per_sample`).
        dataset: where the records live.
        held: from :func:`hold_out`.
        collate_fn: the training collate function.
        batch_size: records per forward pass.
        rank, world_size: this rank's share is ``records[rank::world_size]``; ranks pad to the same
            number of batches (padding carries weight 0) and sums are all-reduced.
        device: where batches go.
    """
    if not len(held):
        raise ValueError("the image-reliance set is empty")
    tasks = sorted({r.task for r in held.records})
    task_ix = {t: i for i, t in enumerate(tasks)}
    mine = list(range(rank, len(held), world_size))
    per_rank = -(-len(held) // world_size)
    n_batches = -(-per_rank // batch_size)
    # sums[task, k]: k = 0..2 loss per variant, 3 records, 4 answer tokens
    sums = torch.zeros(len(tasks), 5, dtype=torch.float64)
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
        per_task[task] = row
    return RelianceResult(
        loss=float(total[0]) / n,
        loss_shuffled=float(total[1]) / n,
        loss_blank=float(total[2]) / n,
        records=int(n),
        answer_tokens=float(total[4]) / n,
        per_task=per_task,
    )


def vlm_forward(model: Any, vision_dtype: torch.dtype | None = None) -> Forward:
    """A :data:`Forward` for a ``ViTPModel`` (eval mode is the caller's business)."""

    def forward(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        pv = batch["pixel_values"]
        if vision_dtype is not None:
            pv = pv.to(vision_dtype)
        out = model(
            pixel_values=pv,
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=None,
        )
        return answer_loss_per_sample(out.logits, batch["labels"])

    return forward


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
    ) -> None:
        if every < 0:
            raise ValueError(f"every must be >= 0, got {every}")
        self.dataset, self.held, self.collate_fn = dataset, held, collate_fn
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
        last = trainer.max_steps is not None and step >= trainer.max_steps
        if not (last or (self.every and step % self.every == 0)):
            return
        result = self.evaluate(trainer, pl_module)
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

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> RelianceResult:
        model: Any = getattr(pl_module, "model")  # noqa: B009 - ViTPPretrainModule.model
        was_training = model.training
        model.eval()
        try:
            dtype = next(model.vision_model.parameters()).dtype
            with torch.random.fork_rng(devices=[]), trainer.precision_plugin.forward_context():
                return evaluate_reliance(
                    vlm_forward(model, dtype),
                    self.dataset,
                    self.held,
                    self.collate_fn,
                    batch_size=self.batch_size,
                    rank=trainer.global_rank,
                    world_size=trainer.world_size,
                    device=pl_module.device,
                )
        finally:
            model.train(was_training)
