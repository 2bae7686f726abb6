"""A LightningDataModule over an instruction recipe: the data path of ``vitp-geo pretrain``.

Ordering is a pure function of ``(seed, epoch, rank, world size)``: each epoch draws one seeded
permutation of the whole epoch, pads it to a multiple of the world size by wrapping around, and
gives rank ``r`` every ``world``-th sample starting at ``r``. So ranks see distinct samples, every
sample is seen once an epoch, and a resumed run skips exactly the batches this rank already
consumed in the interrupted epoch (read from Lightning's restored loop progress).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

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
    """

    def __init__(
        self, length: int, *, seed: int = 0, num_replicas: int = 1, rank: int = 0, shuffle: bool = True
    ):
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
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
    ) -> None:
        super().__init__()
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
            )

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
        self.sampler = EpochShuffleSampler(len(self.dataset), seed=self.seed, num_replicas=world, rank=rank)
        self.sampler.skip(self._consumed_batches() * self.batch_size)
        pad_id = getattr(self.tokenizer, "pad_token_id", None)
        if pad_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token")
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            collate_fn=partial(collate, pad_token_id=int(pad_id)),
            persistent_workers=self.num_workers > 0,
        )
