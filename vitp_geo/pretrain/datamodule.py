"""A LightningDataModule over an instruction recipe: the data path of ``vitp-geo pretrain``.

Ordering is a pure function of ``(seed, epoch, rank, world size)``: each epoch draws one seeded
permutation of the whole epoch, pads it to a multiple of the world size by wrapping around, and
gives rank ``r`` every ``world``-th sample starting at ``r``. So ranks see distinct samples, every
sample is seen once an epoch, and a resumed run skips exactly the batches this rank already
consumed in the interrupted epoch (read from Lightning's restored loop progress).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from vitp_geo.instruct.recipe import load_recipe
from vitp_geo.pretrain.dataset import InstructionDataset, Sample, Tokenize, collate


class EpochShuffleSampler(Sampler[int]):
    """Seeded, rank-aware, resumable sampler (see module doc).

    Args:
        length: samples in one epoch.
        seed: base seed; epoch ``e`` uses ``seed + e``.
        num_replicas: world size.
        rank: this process's rank.
        shuffle: permute (True) or keep order (False).
        align_pool: dataset indices of the alignment tasks' records.
        align_samples: the first ``align_samples`` draws of epoch 0 (all ranks together) come from
            ``align_pool``; epoch 0 keeps its length, so resume and epoch accounting are unchanged.
        ramp_samples: the next ``ramp_samples`` draws hand over from the alignment pool to the full
            mix gradually: draw ``k`` of the ramp comes from the pool with probability
            ``1 - k / ramp_samples``, otherwise from the epoch's permutation (0: a hard switch).
    """

    def __init__(
        self,
        length: int,
        *,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        align_pool: Sequence[int] = (),
        align_samples: int = 0,
        ramp_samples: int = 0,
    ):
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if align_samples < 0:
            raise ValueError(f"align_samples must be >= 0, got {align_samples}")
        if align_samples and not align_pool:
            raise ValueError("an alignment phase needs records of the alignment tasks; none were found")
        if ramp_samples < 0:
            raise ValueError(f"ramp_samples must be >= 0, got {ramp_samples}")
        self.align_pool = list(align_pool)
        self.align_samples = align_samples
        self.ramp_samples = ramp_samples if align_samples else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.length, self.seed, self.num_replicas, self.rank, self.shuffle = (
            length,
            seed,
            num_replicas,
            rank,
            shuffle,
        )
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, n: int) -> None:
        """Skip the first ``n`` samples of this rank in the next pass only (resume)."""
        if n < 0:
            raise ValueError(f"skip must be >= 0, got {n}")
        self._skip = n

    def epoch_indices(self) -> list[int]:
        """All indices this rank draws in the current epoch (before any skip)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        head_samples = self.align_samples + self.ramp_samples
        start = self.epoch * self.length  # global position of this epoch's first draw
        if start < head_samples:
            # Alignment phase: the first align_samples draws of the run (all ranks together) come
            # from the alignment pool (seeded, cycled), then a ramp hands over to the full mix.
            # Positions are counted over the run, so a phase longer than an epoch carries on into
            # the next one; every epoch keeps its length.
            coins = torch.rand(self.ramp_samples, generator=torch.Generator().manual_seed(self.seed - 2))
            share = 1.0 - torch.arange(self.ramp_samples, dtype=torch.float64) / max(1, self.ramp_samples)
            from_pool = [True] * self.align_samples + (coins.double() < share).tolist()  # share: 1 → 0
            g = torch.Generator().manual_seed(self.seed - 1)
            pool = torch.tensor(self.align_pool)
            reps = -(-sum(from_pool) // len(self.align_pool))
            cycled = torch.cat([pool[torch.randperm(len(pool), generator=g)] for _ in range(reps)]).tolist()
            pool_draws = iter(cycled[sum(from_pool[:start]) :])
            rest = iter(order)
            head = [
                next(pool_draws) if from_pool[pos] else next(rest)
                for pos in range(start, min(head_samples, start + self.length))
            ]
            order = (head + list(rest))[: self.length]
        per_rank = -(-self.length // self.num_replicas)
        total = per_rank * self.num_replicas
        order = (order * (total // self.length + 1))[:total]
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices()[self._skip :]
        self._skip = 0
        return iter(indices)

    def __len__(self) -> int:
        # Lightning sizes the epoch from this; keep it the full per-rank count so that a resumed
        # epoch (restored progress + skipped samples) ends exactly where an uninterrupted one would.
        return -(-self.length // self.num_replicas)


class DataOrderMismatchError(ValueError):
    """A checkpoint's data order differs from the order this run would draw."""


def check_data_order(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume when the interrupted run drew its samples in another order.

    A resumed epoch skips the batches that Lightning's restored progress says were consumed. That
    lands on the right sample only if corpus, seed, batch size, accumulation, world size and the
    alignment phase are those of the interrupted run; otherwise samples are repeated or skipped
    without a sign. The message names every value that changed.
    """
    changed = [
        f"{key} {saved[key]!r} -> {current.get(key)!r}"
        for key in sorted(saved)
        if saved[key] != current.get(key)
    ]
    if changed:
        raise DataOrderMismatchError(
            "cannot resume: the checkpoint's data order differs from this run's ("
            + "; ".join(changed)
            + "). Resuming would repeat or skip samples of the interrupted epoch. Resume with the "
            "interrupted run's settings (its log prints them at the start), or start a new run "
            "in another --output; the saved run is left as it was"
        )


class ResumableDataLoader(DataLoader):  # type: ignore[type-arg]
    """A DataLoader that Lightning checkpoints as stateful: its state is the identity of its order.

    The position inside an epoch needs no state of its own: ``EpochShuffleSampler`` is a pure
    function of ``(seed, epoch, rank, world)`` and skips what Lightning's restored loop progress
    says was consumed. What can go wrong is a resume that draws another order; ``load_state_dict``
    refuses that (:func:`check_data_order`) before any batch is drawn or any file is touched.

    Args:
        order: the values that fix the order (see ``InstructionDataModule.data_order``).
        *args, **kwargs: as for ``torch.utils.data.DataLoader``.
    """

    def __init__(self, *args: Any, order: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.order = dict(order)

    def state_dict(self) -> dict[str, Any]:
        return {"data_order": dict(self.order)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("data_order")
        if isinstance(saved, dict):
            check_data_order(saved, self.order)


class InstructionDataModule(L.LightningDataModule):
    """Serves an ``InstructionDataset`` built from a recipe file.

    Args:
        recipe: path to a meta-JSON or YAML recipe.
        tokenizer: tokenizer with the InternVL special tokens and a pad token.
        tokenize: chat-template function (``vitp_geo.vlm.template.tokenize_conversation``).
        image_size: tile side in pixels.
        num_image_token: LLM tokens per tile.
        batch_size: samples per batch on each device.
        num_workers: DataLoader worker processes.
        max_dynamic_patch: default tile budget per sample.
        max_length: token budget per sample.
        seed: ordering seed.
        skip_bad_samples: skip (and count) bad records instead of failing.
        align_tasks: tasks of the alignment phase (e.g. ``("classes", "classification")``).
        align_steps: optimizer steps at the start of training that draw only ``align_tasks``
            records (0: no alignment phase).
        align_ramp_steps: optimizer steps after the alignment phase over which the share of
            ``align_tasks`` records falls linearly from all to their share in the recipe (0: the
            full mix starts at once).
        cache_mb: memory for decoded tiles and token ids (``InstructionDataset``; 0 = none).
        accumulate: gradient accumulation (micro-batches per optimizer step).
    """

    def __init__(
        self,
        recipe: str | Path,
        tokenizer: object,
        tokenize: Tokenize,
        *,
        image_size: int,
        num_image_token: int,
        batch_size: int = 1,
        num_workers: int = 0,
        max_dynamic_patch: int = 6,
        max_length: int = 4096,
        seed: int = 0,
        skip_bad_samples: bool = False,
        align_tasks: Sequence[str] = (),
        align_steps: int = 0,
        accumulate: int = 1,
        align_ramp_steps: int = 0,
        cache_mb: float = 0.0,
    ) -> None:
        super().__init__()
        self.cache_mb = cache_mb
        self.align_tasks = tuple(align_tasks)
        self.align_steps = align_steps
        self.align_ramp_steps = align_ramp_steps
        self.accumulate = accumulate
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.recipe = Path(recipe)
        self.tokenizer = tokenizer
        self.tokenize = tokenize
        self.image_size = image_size
        self.num_image_token = num_image_token
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.max_dynamic_patch = max_dynamic_patch
        self.max_length = max_length
        self.seed = seed
        self.skip_bad_samples = skip_bad_samples
        self.dataset: InstructionDataset | None = None
        self.sampler: EpochShuffleSampler | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = InstructionDataset(
                load_recipe(self.recipe),
                self.tokenizer,
                self.tokenize,
                image_size=self.image_size,
                num_image_token=self.num_image_token,
                max_dynamic_patch=self.max_dynamic_patch,
                max_length=self.max_length,
                seed=self.seed,
                skip_bad=self.skip_bad_samples,
                cache_mb=self.cache_mb,
            )

    def data_order(self, world_size: int) -> dict[str, Any]:
        """The values that fix which sample each rank draws at each step (checked on resume).

        ``corpus`` is a digest of every sample's recipe entry and record id, in index order, so a
        changed recipe, ``repeat_time`` or record list counts as a different corpus.
        """
        self.setup("fit")
        assert self.dataset is not None
        digest = hashlib.sha256()
        names = [src.entry.name for src in self.dataset.sources]
        for src_id, rec_id in self.dataset.index:
            rec = self.dataset.sources[src_id].records[rec_id]
            digest.update(f"{names[src_id]}\x00{rec.id}\x01".encode())
        return {
            "samples": len(self.dataset),
            "corpus": digest.hexdigest()[:16],
            "seed": self.seed,
            "batch_size": self.batch_size,
            "accumulate": self.accumulate,
            "world_size": world_size,
            "align_steps": self.align_steps,
            "align_tasks": ",".join(self.align_tasks) if self.align_steps else "",
            "align_ramp_steps": self.align_ramp_steps if self.align_steps else 0,
        }

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _consumed_batches(self) -> int:
        """Batches this rank completed in the current epoch before a resume (0 on a fresh run)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        # A checkpoint written in on_train_batch_end holds the batch as processed but not yet
        # completed; Lightning resumes after it, so skip every processed batch.
        current = trainer.fit_loop.epoch_loop.batch_progress.current
        return int(max(getattr(current, "processed", 0), current.completed))

    def train_dataloader(self) -> DataLoader[Sample]:
        self.setup("fit")
        assert self.dataset is not None
        world, rank = self._world()
        pool: list[int] = []
        if self.align_steps:
            pool = [
                i
                for i, (src_id, rec_id) in enumerate(self.dataset.index)
                if self.dataset.sources[src_id].records[rec_id].task in self.align_tasks
            ]
            if not pool:
                warnings.warn(
                    f"align-steps {self.align_steps}: the recipe has no records of the alignment tasks "
                    f"{', '.join(self.align_tasks)}, so there is no alignment phase (choose others with "
                    "--align-tasks, or --align-steps 0 to silence this)",
                    stacklevel=2,
                )
        self.sampler = EpochShuffleSampler(
            len(self.dataset),
            seed=self.seed,
            num_replicas=world,
            rank=rank,
            align_pool=pool,
            align_samples=self.align_steps * self.batch_size * self.accumulate * world if pool else 0,
            ramp_samples=self.align_ramp_steps * self.batch_size * self.accumulate * world if pool else 0,
        )
        self.sampler.skip(self._consumed_batches() * self.batch_size)
        pad_id = getattr(self.tokenizer, "pad_token_id", None)
        if pad_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token")
        return ResumableDataLoader(
            self.dataset,
            order=self.data_order(world),
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            collate_fn=partial(collate, pad_token_id=int(pad_id)),
            persistent_workers=self.num_workers > 0,
        )
