"""From a recipe to model inputs: records → image tiles + token ids + labels, and their collation.

One dataset covers every entry of a recipe. Its index space is one epoch: each entry contributes
``repeat_indices(n, repeat_time, seed)`` records (see ``vitp_geo.instruct.recipe``). Bad records are
found when the recipe is loaded, not halfway through training: a line that does not parse, an image
that is missing, or an image path that resolves outside the entry's ``root`` raises an error that
names the file (or, with ``skip_bad=True``, is skipped and counted in ``skipped``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vitp_geo.constants import IGNORE_INDEX
from vitp_geo.instruct.recipe import RecipeEntry, repeat_indices
from vitp_geo.instruct.records import InstructionRecord, RecordError, read_jsonl
from vitp_geo.io.raster import read_rgb
from vitp_geo.vlm.dynamic_tiles import choose_grid, dynamic_tiles, to_pixel_values

# The normalisation mean as 8-bit RGB: a "blank" image normalises to (about) zero everywhere.
BLANK_RGB: tuple[int, int, int] = (124, 116, 104)  # round(255 * IMAGENET_MEAN)
_RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2"}

# (conversations, tokenizer, num_image_tokens per image, max_length) -> (input_ids, labels)
Tokenize = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class Sample(TypedDict):
    """One training sample (see ``InstructionDataset``)."""

    pixel_values: torch.Tensor  # (T, 3, S, S)
    input_ids: torch.Tensor  # (L,)
    labels: torch.Tensor  # (L,)
    num_tiles: int


@dataclass
class _Source:
    entry: RecipeEntry
    records: list[InstructionRecord]
    image_paths: list[list[Path]]


@dataclass
class LoadReport:
    """What loading a recipe found: kept records per dataset and skipped lines/records."""

    records: dict[str, int] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def resolve_image(root: Path, relative: str, where: str) -> Path:
    """Resolve an image path against its recipe root, refusing escapes and missing files."""
    root_resolved = root.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root_resolved):
        raise RecordError(f"{where}: image path {relative!r} resolves outside the recipe root {root}")
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image not found: {path}")
    return path


def load_image(path: Path) -> Image.Image:
    """Read an image as RGB; rasters of any band count and dtype go through ``render_rgb``."""
    if path.suffix.lower() in _RASTER_SUFFIXES:
        rgb, _ = read_rgb(path)
        return Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0)))
    with Image.open(path) as img:
        return img.convert("RGB")


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image or raster, from its header only."""
    if path.suffix.lower() in _RASTER_SUFFIXES:
        import rasterio

        with rasterio.open(path) as src:
            return int(src.width), int(src.height)
    with Image.open(path) as img:
        return int(img.width), int(img.height)


class InstructionDataset(Dataset[Sample]):
    """Samples of one epoch over a recipe.

    Each item is a dict with ``pixel_values`` (T, 3, S, S) float, ``input_ids`` (L,) long,
    ``labels`` (L,) long (−100 outside assistant turns) and ``num_tiles`` (number of tiles, all images
    of the sample together).

    Args:
        entries: recipe entries (``load_recipe``).
        tokenizer: a transformers tokenizer with the InternVL special tokens.
        tokenize: the chat-template function (``vitp_geo.vlm.template.tokenize_conversation``).
        image_size: tile side S in pixels.
        num_image_token: LLM tokens per tile after pixel shuffle.
        max_dynamic_patch: default tile budget per sample (an entry's own value wins).
        max_length: token budget per sample.
        seed: seeds the repeat/subsample permutation.
        skip_bad: skip bad lines/records (listed in ``report.skipped``) instead of raising.
        cache_mb: keep up to this many MiB of decoded, tiled and normalised images and of token
            ids in memory, so a record drawn again (a run sees the embedded corpus about 13 times)
            skips the PNG decode, the tiling and the tokenizer; 0 turns the cache off. Entries are
            kept first come, first served until the budget is full. Cached tensors are shared:
            treat a sample as read-only (``collate`` copies).
    """

    def __init__(
        self,
        entries: Sequence[RecipeEntry],
        tokenizer: object,
        tokenize: Tokenize,
        *,
        image_size: int,
        num_image_token: int,
        max_dynamic_patch: int = 6,
        max_length: int = 4096,
        use_thumbnail: bool = True,
        seed: int = 0,
        skip_bad: bool = False,
        cache_mb: float = 0.0,
    ) -> None:
        if not entries:
            raise ValueError("a recipe needs at least one dataset entry")
        if cache_mb < 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self._cache_budget = int(cache_mb * 2**20)
        self._cache_bytes = 0
        self._tile_cache: dict[tuple[str, int], torch.Tensor] = {}
        self._token_cache: dict[tuple[int, int, tuple[int, ...]], tuple[torch.Tensor, torch.Tensor]] = {}
        self.tokenizer = tokenizer
        self.tokenize = tokenize
        self.image_size = image_size
        self.num_image_token = num_image_token
        self.max_dynamic_patch = max_dynamic_patch
        self.max_length = max_length
        self.use_thumbnail = use_thumbnail
        self.seed, self.skip_bad, self.cache_mb = seed, skip_bad, cache_mb
        self.report = LoadReport()
        self.sources: list[_Source] = []
        index: list[tuple[int, int]] = []
        for entry in entries:
            result = read_jsonl(entry.annotation, skip_bad=skip_bad)
            self.report.skipped.extend(result.skipped)
            records, paths = [], []
            for rec in result.records:
                where = f"{entry.annotation}: record {rec.id!r}"
                try:
                    paths.append([resolve_image(entry.root, rel, where) for rel in rec.images])
                except (RecordError, FileNotFoundError) as err:
                    if not skip_bad:
                        raise
                    self.report.skipped.append(str(err))
                    continue
                records.append(rec)
            if not records:
                raise ValueError(f"{entry.annotation}: no usable records for dataset {entry.name!r}")
            src_id = len(self.sources)
            self.sources.append(_Source(entry, records, paths))
            picks = repeat_indices(len(records), entry.repeat_time, seed=seed + src_id)
            index.extend((src_id, int(i)) for i in picks)
            self.report.records[entry.name] = len(records)
            self.report.samples[entry.name] = int(picks.size)
        self.index = index

    def read_alike(self, entries: Sequence[RecipeEntry]) -> InstructionDataset:
        """Another recipe's records, read as this dataset reads its own.

        The same tokenizer, chat template, tiling, token budget, seed, bad-record rule and cache
        budget (a cache of its own): e.g. the records of an image-reliance check beside training.
        """
        return InstructionDataset(
            entries,
            self.tokenizer,
            self.tokenize,
            image_size=self.image_size,
            num_image_token=self.num_image_token,
            max_dynamic_patch=self.max_dynamic_patch,
            max_length=self.max_length,
            use_thumbnail=self.use_thumbnail,
            seed=self.seed,
            skip_bad=self.skip_bad,
            cache_mb=self.cache_mb,
        )

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Sample:
        return self.load_variant(*self.index[i])

    def record_at(self, src_id: int, rec_id: int) -> tuple[InstructionRecord, list[Path]]:
        """The record ``rec_id`` of recipe entry ``src_id`` and its resolved image paths."""
        src = self.sources[src_id]
        return src.records[rec_id], src.image_paths[rec_id]

    def tile_layout(self, src_id: int, rec_id: int) -> tuple[tuple[int, int], ...]:
        """The dynamic-tiling grid ``(cols, rows)`` of each image of a record (read from headers)."""
        src = self.sources[src_id]
        paths = src.image_paths[rec_id]
        per_image = self._tiles_per_image(src, len(paths))
        return tuple(choose_grid(*image_size(p), self.image_size, max_tiles=per_image) for p in paths)

    def tile_budget(self, src_id: int, rec_id: int) -> int:
        """Tiles each image of a record may use (its source's ``max_dynamic_patch`` split over them)."""
        src = self.sources[src_id]
        return self._tiles_per_image(src, len(src.image_paths[rec_id]))

    def _tiles_per_image(self, src: _Source, n_images: int) -> int:
        """Tile budget of each image: InternVL splits a sample's budget over its images."""
        budget = src.entry.max_dynamic_patch or self.max_dynamic_patch
        return max(1, budget // max(1, n_images))

    def load_variant(
        self,
        src_id: int,
        rec_id: int,
        images: Sequence[Path] | None = None,
        blank: bool = False,
        conversations: Sequence[Mapping[str, str]] | None = None,
    ) -> Sample:
        """A record as a sample, optionally with other images (``images``) or blank ones.

        Used by the image-reliance check (``vitp_geo.pretrain.reliance``): the conversation stays
        the same, only the pixels change. ``blank=True`` replaces every image with a uniform one of
        the same size at the normalisation mean, so it becomes all zeros and tiles like the original.
        ``conversations`` replaces the record's turns (same image placeholders), e.g. to score
        another answer.
        """
        src = self.sources[src_id]
        try:
            return self._load(src, rec_id, images=images, blank=blank, conversations=conversations)
        except (ValueError, OSError) as err:  # name the record behind a failure mid-training
            raise ValueError(f"{src.entry.annotation}: record {src.records[rec_id].id!r}: {err}") from err

    def _load(
        self,
        src: _Source,
        rec_id: int,
        images: Sequence[Path] | None = None,
        blank: bool = False,
        conversations: Sequence[Mapping[str, str]] | None = None,
    ) -> Sample:
        rec = src.records[rec_id]
        turns = [dict(t) for t in conversations] if conversations is not None else rec.conversations
        paths = list(images) if images is not None else src.image_paths[rec_id]
        per_image = self._tiles_per_image(src, len(paths))
        tiles_per_image: list[torch.Tensor] = []
        for path in paths:
            key = (str(path), per_image)
            cached = None if blank else self._tile_cache.get(key)
            if cached is None:
                img = Image.new("RGB", image_size(path), BLANK_RGB) if blank else load_image(path)
                tiles = dynamic_tiles(img, self.image_size, max_tiles=per_image, thumbnail=self.use_thumbnail)
                cached = to_pixel_values(tiles)  # (t, 3, S, S)
                if not blank and self._fits(cached.numel() * cached.element_size()):
                    self._tile_cache[key] = cached
            tiles_per_image.append(cached)
        num_tokens = [t.shape[0] * self.num_image_token for t in tiles_per_image]
        token_key = (id(src), rec_id, tuple(num_tokens))
        tokens = self._token_cache.get(token_key) if conversations is None else None
        if tokens is None:
            tokens = self.tokenize(turns, self.tokenizer, num_tokens, self.max_length)
            if conversations is None and self._fits(2 * tokens[0].numel() * tokens[0].element_size()):
                self._token_cache[token_key] = tokens
        input_ids, labels = tokens
        pixel_values = (
            torch.cat(tiles_per_image)
            if tiles_per_image
            else torch.zeros(0, 3, self.image_size, self.image_size)
        )
        return {
            "pixel_values": pixel_values,
            "input_ids": input_ids,
            "labels": labels,
            "num_tiles": int(pixel_values.shape[0]),
        }

    def _fits(self, nbytes: int) -> bool:
        """Take ``nbytes`` from the cache budget if they fit (see ``cache_mb``)."""
        if self._cache_bytes + nbytes > self._cache_budget:
            return False
        self._cache_bytes += nbytes
        return True


def collate(batch: Sequence[Sample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token sequences and concatenate all tiles of the batch in order.

    Returns:
        ``pixel_values`` (T, 3, S, S), ``input_ids`` (B, L), ``attention_mask`` (B, L),
        ``labels`` (B, L) with −100 on padding, ``num_tiles`` (B,).
    """
    length = max(int(b["input_ids"].shape[0]) for b in batch)
    n = len(batch)
    input_ids = torch.full((n, length), pad_token_id, dtype=torch.long)
    attention = torch.zeros((n, length), dtype=torch.long)
    labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
    for row, sample in enumerate(batch):
        k = int(sample["input_ids"].shape[0])
        input_ids[row, :k] = sample["input_ids"]
        attention[row, :k] = 1
        labels[row, :k] = sample["labels"]
    return {
        "pixel_values": torch.cat([b["pixel_values"] for b in batch]),
        "input_ids": input_ids,
        "attention_mask": attention,
        "labels": labels,
        "num_tiles": torch.tensor([b["num_tiles"] for b in batch]),
    }
