"""Does ViTP pretraining teach the ViT? A fair protocol: same pretraining compute for every arm.

Arms (one backbone each per pretraining seed; every pretrained arm gets the same optimizer steps,
batch size and learning-rate schedule — the ``PretrainConfig`` defaults — only the arm's own
settings, the step count and the seed differ):

  1. ``random``      random init: the tiny ViT of the seeded build (a reference row).
  1b. ``base``       the synthetic base every pretrained arm and the supervised arm start from
     (``vitp_geo.pretrain.base``: a general synthetic world's per-patch classes and building counts,
     never the corpus's labels): the ViT ViTP must improve on, as the paper compares against the ViT
     it starts from. The ViTP arms keep it fixed for the alignment phase, as the default does.
  2. ``vitp_r0``     ViTP on the embedded default corpus, VRL off (r = 0).
  3. ``vitp_r075_p1``   ViTP, VRL r = 0.75 on every sample (p = 1, the paper text).
  4. ``vitp_r075_p025`` ViTP, VRL r = 0.75 on a quarter of the samples (p = 0.25, the reference
     code fires with probability 1 - r).
  5. ``shuffled``    shuffled-image control: the same corpus, but every record's images replaced by
     those of another source tile (a derangement over distinct image-path tuples of equal image
     count and size), pretrained with the default VRL settings. It has the same text, the same
     optimiser and the same images, only not the image the instruction is about: it separates
     "instructions about this image" from optimiser drift.
  6. ``supervised``  a non-instruction baseline on the same images: multi-label classification of
     the classes present in each scene tile of the corpus (BCE, mean-pooled ViT patch tokens +
     linear head), from the same base, same steps, batch, lr, weight decay, warm-up + cosine schedule
     and clipping.

Read-out, on tiles of generated evaluation scenes whose seeds no pretraining run used:

- a frozen-backbone patch-level linear probe (closed-form ridge, ``vitp_geo.evaluation.probe``) on
  the ViT's patch tokens (``forward_features`` without the class token, 8 x 8 per 112 px tile)
  at 1, 4 and 16 labelled tiles drawn from a labelled pool, tested on 64 held-out tiles, for every
  label draw x pretraining seed; a raw-pixel probe as the reference row, and an oracle row (each
  patch's true class as its feature) that says whether the rule can be met at all with these
  label draws (``rule_power``);
- a short fine-tune at 4 labelled tiles (ViT + linear head on patch tokens, patch-level CE,
  ``vitp_geo.tasks.patch_head``), the
  learning rate picked per arm and run from {1e-4, 3e-4, 1e-3} by mIoU on a separate validation
  split, reporting the test mIoU of the chosen one;
- robustness: the drop in probe mIoU (16 tiles, probe fitted on clean tiles) when the test tiles
  get gaussian noise, blur, haze or occlusion (grey squares).

The pass rule is fixed before anything runs (``PASS_RULE``) and computed from the paired
differences (same seed, same label draw) by :func:`pass_rule`.

    python benchmarks/pretrain_gain.py --work runs/pretrain-gain --out gain.md   # full, ~50 min
    python benchmarks/pretrain_gain.py --quick --work /tmp/gain-quick           # CI smoke, ~1-2 min

Time on a 2-core CPU (AVX512-BF16), alone: the full protocol 3,057 s (51 min, on a machine about
1.4x slower than the one of the earlier figures; 8 pretraining runs of the default's 1,000 steps x 32
in bf16 at 263-360 s each, the unseen world's last check included, 2 supervised runs at 176 s in fp32,
fine-tunes 111 s, probes 9 s, the rule's power 12 s), plus about 2 min on a machine's first run to
build the synthetic base. Lower ``--steps`` if it must fit a slower machine (the alignment phase and its
ramp scale with it). Results: docs/pretraining-evidence.md.

Finished runs in ``--work`` are reused when their settings and corpus match (``--fresh`` redoes
them), so a rerun only repeats the read-out. A finished run that no longer matches is moved to
``<arm>.previous`` and deleted only when its replacement is finished, so an interrupted rerun loses
nothing (and a rerun with the old settings moves it back). Run with ``OMP_NUM_THREADS`` set on shared machines.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

# --------------------------------------------------------------------------------------------------
# The protocol, fixed in advance

ARMS: tuple[str, ...] = (
    "random",
    "base",
    "vitp_r0",
    "vitp_r075_p1",
    "vitp_r075_p025",
    "shuffled",
    "supervised",
)
RAW = "raw"  # the raw-pixel reference row (no backbone)
# The power reference: each patch's true class (one-hot) as its feature, the most a linear probe
# can be given. When it does not beat a rival by the rule at a tile count, no backbone can be
# expected to: the label draws, not the features, decide that comparison (rule_power).
ORACLE = "oracle"
REFERENCES: tuple[str, ...] = (RAW, ORACLE)
LABELS: dict[str, str] = {
    "random": "random init",
    "base": "synthetic base (where ViTP starts)",
    "vitp_r0": "ViTP r=0",
    "vitp_r075_p1": "ViTP r=0.75 p=1",
    "vitp_r075_p025": "ViTP r=0.75 p=0.25",
    "shuffled": "shuffled-image control",
    "supervised": "supervised multi-label",
    RAW: "raw pixels (reference)",
    ORACLE: "true patch classes (oracle)",
}
# The arms' own PretrainConfig settings (everything else is the PretrainConfig default).
VITP_ARMS: dict[str, dict[str, Any]] = {
    "vitp_r0": {"vrl_ratio": 0.0, "vrl_prob": 1.0, "vrl_reference": False},
    "vitp_r075_p1": {"vrl_ratio": 0.75, "vrl_prob": 1.0, "vrl_reference": False},
    "vitp_r075_p025": {"vrl_ratio": 0.75, "vrl_prob": 0.25, "vrl_reference": False},
    "shuffled": {},  # the default VRL settings, on the deranged corpus
}
CANDIDATES: tuple[str, ...] = ("vitp_r075_p1", "vitp_r075_p025")  # the ViTP r = 0.75 arms under test
# What they must beat: the ViT they start from (the default starts from the synthetic base of
# vitp_geo.pretrain.base, so the base takes random init's place, as the paper compares against the
# ViT it starts from), the shuffled-image control and the supervised baseline (from the same base).
RIVALS: tuple[str, ...] = ("base", "shuffled", "supervised")
RULE_SHOTS: tuple[int, ...] = (1, 4)  # "at <= 4 labelled tiles"
RULE_SIGMAS = 2.0
PASS_RULE = (
    "PASS if ViTP r=0.75 beats the ViT it starts from (the synthetic base), the shuffled control and the "
    "supervised baseline by more "
    "than 2 std (std of the paired differences) at <= 4 tiles. Checked on the frozen-probe mIoU at 1 "
    "and at 4 labelled tiles, for the p=1 and the p=0.25 arm separately: an arm passes when, at both "
    "tile counts and against all three rivals, mean(paired difference) > 2 x std(paired differences) "
    "(sample std over seed x draw pairs; fewer than 2 pairs cannot pass). The protocol passes when "
    "at least one of the two arms does; the verdict names which."
)

SHOTS: tuple[int, ...] = (1, 4, 16)
FT_SHOTS = 4
FT_LRS: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
ROBUST_SHOTS = 16
CORRUPTIONS: tuple[str, ...] = ("noise", "blur", "haze", "occlusion")
PRESENT_SHARE = 0.01  # a class is "present" in a tile (supervised target) from 1 % of its pixels
EVAL_SEED_BASE = 7_000_000  # evaluation scenes: EVAL_SEED_BASE + k (pretraining uses seed*1000 + i)
PROTOCOL_VERSION = 4  # bump when reused runs in --work go stale (3: the base; 4: the ViT lr share)


def _default_steps() -> int:
    from vitp_geo.pretrain.config import PretrainConfig

    return PretrainConfig().max_steps


@dataclass(frozen=True)
class Settings:
    """One invocation's sizes. ``full()`` is the protocol; ``quick()`` the CI smoke test."""

    seeds: tuple[int, ...] = (0, 1)
    draws: int = 3
    # every arm at the PretrainConfig default's steps (8 runs of the default: about 50 min on 2 cores)
    steps: int = field(default_factory=_default_steps)
    pool_scenes: int = 8  # labelled pool (4 tiles a scene): the draws pick from these 32 tiles
    val_scenes: int = 4  # fine-tune lr selection: 16 tiles
    test_scenes: int = 16  # held-out test: 64 tiles
    ft_steps: int = 60
    ft_draws: int = 1  # label draws fine-tuned per seed (each: one run per lr)
    reliance_records: int | None = None  # None = the PretrainConfig default
    # the rule's power: label sets redrawn (other draw seeds, the same backbones) to count how often
    # the oracle and each candidate meet the rule at each tile count (seconds for 100)
    power_sets: int = 100
    quick: bool = False

    @staticmethod
    def full() -> Settings:
        return Settings()

    @staticmethod
    def quick_smoke() -> Settings:
        return Settings(
            seeds=(0,), draws=1, steps=10, ft_steps=4, reliance_records=24, power_sets=2, quick=True
        )


# --------------------------------------------------------------------------------------------------
# Small statistics


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof = 1; 0 for a single value); NaN for no values."""
    a = np.asarray(list(xs), dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def fmt(xs: Sequence[float] | None, signed: bool = False) -> str:
    if not xs:
        return "—"
    m, s = mean_std(xs)
    if not math.isfinite(m):
        return "nan"
    sign = "+" if signed else ""
    return f"{m:{sign}.3f} ± {s:.3f}"


def beats(diffs: Sequence[float], sigmas: float = RULE_SIGMAS) -> bool:
    """True when mean(diffs) > sigmas x std(diffs) (sample std); needs >= 2 finite pairs."""
    a = np.asarray(list(diffs), dtype=np.float64)
    if a.size < 2 or not np.all(np.isfinite(a)):
        return False
    return bool(a.mean() > sigmas * a.std(ddof=1))


def paired(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Element-wise a - b over the same (seed, draw) pairs."""
    if len(a) != len(b):
        raise ValueError(f"paired differences need equal lengths, got {len(a)} and {len(b)}")
    return [float(x) - float(y) for x, y in zip(a, b, strict=True)]


@dataclass
class Verdict:
    passed: bool
    per_arm: dict[str, bool]
    lines: list[str] = field(default_factory=list)

    def format(self) -> str:
        head = "PASS" if self.passed else "FAIL"
        winners = [LABELS[a] for a, ok in self.per_arm.items() if ok]
        why = f" ({', '.join(winners)} met the rule)" if winners else " (no ViTP r=0.75 arm met the rule)"
        return "\n".join([f"**{head}**{why}", *[f"- {line}" for line in self.lines]])


def compare(probe: dict[str, dict[int, list[float]]], cand: str, rival: str, k: int) -> tuple[bool, str]:
    """One comparison of the rule: does ``cand`` beat ``rival`` at ``k`` tiles, and the line saying so."""
    d = paired(probe[cand][k], probe[rival][k])
    m, s = mean_std(d)
    won = beats(d)
    return won, (
        f"{LABELS[cand]} − {LABELS[rival]} at {k} tile{'s' if k > 1 else ''}: {m:+.3f} (std {s:.3f}, "
        f"n={len(d)}) → {'beats' if won else 'does not beat'} by > {RULE_SIGMAS:g} std"
    )


def pass_rule(probe: dict[str, dict[int, list[float]]]) -> Verdict:
    """Apply :data:`PASS_RULE` to probe mIoUs ``probe[arm][shots] = [value per (seed, draw)]``."""
    per_arm: dict[str, bool] = {}
    lines: list[str] = []
    for cand in CANDIDATES:
        ok = True
        for rival in RIVALS:
            for k in RULE_SHOTS:
                won, line = compare(probe, cand, rival, k)
                ok &= won
                lines.append(line)
        per_arm[cand] = ok
    return Verdict(any(per_arm.values()), per_arm, lines)


@dataclass
class Power:
    """Can :data:`PASS_RULE` be met in this run at all? The rule applied to the oracle's features."""

    attainable: dict[int, bool]  # tile count → the oracle beats every rival by the rule
    lines: list[str] = field(default_factory=list)

    def format(self) -> str:
        out = []
        for k, ok in self.attainable.items():
            tiles = f"{k} tile{'s' if k > 1 else ''}"
            out.append(
                f"- At {tiles} the rule **can** be met: the oracle beats every rival by > {RULE_SIGMAS:g} std."
                if ok
                else f"- At {tiles} the rule **cannot** be met in this run: not even the oracle (each "
                f"patch's true class as its feature) beats every rival by > {RULE_SIGMAS:g} std, so the "
                "label draws, not the backbone, decide that comparison."
            )
        return "\n".join(out + [f"  - {line}" for line in self.lines])


def beats_every_rival(probe: dict[str, dict[int, list[float]]], cand: str, k: int) -> tuple[bool, list[str]]:
    """Does ``cand`` beat all of :data:`RIVALS` at ``k`` tiles by the rule, and the lines saying so."""
    results = [compare(probe, cand, rival, k) for rival in RIVALS]
    return all(won for won, _ in results), [line for _, line in results]


def rule_power(probe: dict[str, dict[int, list[float]]]) -> Power:
    """The pass rule's comparisons with :data:`ORACLE` as the candidate (same seed x draw pairs)."""
    attainable: dict[int, bool] = {}
    lines: list[str] = []
    for k in RULE_SHOTS:
        attainable[k], k_lines = beats_every_rival(probe, ORACLE, k)
        lines += k_lines
    return Power(attainable, lines)


def oracle_patch_features(labels: np.ndarray, n_classes: int) -> Tensor:
    """(N, P) patch class ids → (N, P, n_classes) one-hot float features."""
    return torch.nn.functional.one_hot(torch.from_numpy(labels).long(), n_classes).float()


# --------------------------------------------------------------------------------------------------
# Shuffled-image control: derange the images of a corpus


def _image_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        return img.size


def _corpus_files(recipe: Path) -> list[tuple[Path, Path]]:
    """(annotation, image root) of every recipe entry, checked to lie inside the recipe's folder."""
    from vitp_geo.instruct.recipe import load_recipe

    base = recipe.parent.resolve()
    out = []
    for entry in load_recipe(recipe):
        for p in (entry.annotation, entry.root):
            if not p.resolve().is_relative_to(base):
                raise ValueError(f"{recipe}: {p} lies outside the recipe folder; cannot copy the corpus")
        out.append((entry.annotation, entry.root))
    return out


def derangement_map(
    groups: dict[Any, list[tuple[str, ...]]], seed: int, tries: int = 1000
) -> dict[tuple[str, ...], tuple[str, ...]]:
    """Map every image tuple to another one of its group, sharing no path with it.

    ``groups`` holds distinct image-path tuples by signature (image count and sizes). Within each
    group of >= 2 tuples the library's derangement (``vitp_geo.pretrain.reliance.image_derangement``,
    the one the image-reliance check uses) must find a partner for every tuple. Groups of one tuple
    cannot be deranged and are left out of the map.
    """
    from vitp_geo.pretrain.reliance import image_derangement

    rng = np.random.default_rng(seed)
    mapping: dict[tuple[str, ...], tuple[str, ...]] = {}
    for sig in sorted(groups, key=repr):
        tuples = sorted(set(groups[sig]))
        if len(tuples) < 2:
            continue
        found = image_derangement(tuples, lambda t: t, rng, tries)
        if len(found) < len(tuples):
            raise RuntimeError(f"no derangement of {len(tuples)} image tuples {sig} in {tries} tries")
        mapping.update(found)
    return mapping


@dataclass
class ShuffleReport:
    records: int
    image_tuples: int
    groups: int
    dropped_records: int  # records whose image tuple had no partner of the same signature
    own_image_records: int  # must be 0

    def format(self) -> str:
        return (
            f"shuffled control: {self.records} records over {self.image_tuples} distinct image tuples in "
            f"{self.groups} (count, size) groups; {self.own_image_records} records keep an own image; "
            f"{self.dropped_records} records dropped (no partner of the same image count and size)"
        )


def write_shuffled_corpus(recipe: Path, out_dir: Path, seed: int) -> tuple[Path, ShuffleReport]:
    """Copy the corpus of ``recipe`` to ``out_dir`` with images permuted across records.

    Every record's image-path tuple is replaced by another source tile's tuple with the same image
    count and image sizes (one mapping for all recipe entries, so the records of one tile all move
    to the same other tile). Records with text only keep no image. Returns the new recipe path
    and a report; raises if any record kept one of its own image paths.
    """
    recipe = Path(recipe)
    src_dir = recipe.parent
    files = _corpus_files(recipe)
    entries: list[tuple[Path, Path, list[dict[str, Any]]]] = []
    sizes: dict[Path, tuple[int, int]] = {}
    groups: dict[Any, list[tuple[str, ...]]] = {}
    for annotation, root in files:
        rows = [
            json.loads(line) for line in annotation.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
        entries.append((annotation, root, rows))
        for row in rows:
            imgs = _image_tuple(row.get("image"))
            if not imgs:
                continue
            sig = []
            for rel in imgs:
                p = (root / rel).resolve()
                if p not in sizes:
                    sizes[p] = _image_size(p)
                sig.append(sizes[p])
            groups.setdefault((len(imgs), tuple(sig)), []).append(imgs)
    # Paths are relative to each entry's root; the default corpus has one root for all entries.
    mapping = derangement_map(groups, seed)

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _copy_tree(src_dir, tmp)
    n_records = dropped = own = 0
    for annotation, _root, rows in entries:
        kept = []
        for row in rows:
            imgs = _image_tuple(row.get("image"))
            if imgs:
                new = mapping.get(imgs)
                if new is None:
                    dropped += 1
                    continue
                own += bool(set(new) & set(imgs))
                row = {**row, "image": new[0] if isinstance(row["image"], str) else list(new)}
            kept.append(row)
        n_records += len(kept)
        dst = tmp / annotation.relative_to(src_dir)
        dst.unlink()  # never write through a link to the original
        dst.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
    if own:
        raise RuntimeError(f"shuffled corpus: {own} records kept an image of their own")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    report = ShuffleReport(n_records, sum(len(set(v)) for v in groups.values()), len(groups), dropped, own)
    return out_dir / recipe.name, report


def records_with_own_image(original: Path, shuffled: Path) -> int:
    """Records (matched by id, in order) of two corpora that share an image path."""
    count = 0
    for (a, _), (b, _) in zip(_corpus_files(original), _corpus_files(shuffled), strict=True):
        ra = {json.loads(x)["id"]: x for x in a.read_text(encoding="utf-8").splitlines() if x.strip()}
        for line in b.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            mine = _image_tuple(json.loads(ra[row["id"]]).get("image"))
            count += bool(set(mine) & set(_image_tuple(row.get("image"))))
    return count


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a folder, hard-linking images where the file system allows it (text files are copied,
    so that rewriting one in the copy never changes the original)."""

    def link_or_copy(s: str, d: str) -> None:
        if Path(s).suffix.lower() in (".json", ".jsonl", ".yaml", ".yml", ".txt"):
            shutil.copy2(s, d)
            return
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link_or_copy)


def corpus_fingerprint(recipe: Path) -> str:
    """sha256 over a corpus's recipe, annotation files and images (to know when a run is stale)."""
    h = hashlib.sha256()
    folder = Path(recipe).parent
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Tiles: the corpus's scene tiles (supervised arm) and the evaluation scenes


def corpus_defaults() -> dict[str, Any]:
    """The keyword defaults of ``build_default_corpus`` (n_scenes, scene_size, tile_size, ...)."""
    from vitp_geo.instruct.default_corpus import build_default_corpus

    return {
        k: p.default
        for k, p in inspect.signature(build_default_corpus).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def cut_tiles(
    image: np.ndarray, mask: np.ndarray, tile: int
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Non-overlapping ``tile`` x ``tile`` windows of a (3, H, W) image and its (H, W) mask."""
    _, h, w = image.shape
    for r in range(0, h - tile + 1, tile):
        for c in range(0, w - tile + 1, tile):
            yield r, c, image[:, r : r + tile, c : c + tile], mask[r : r + tile, c : c + tile]


def corpus_scene_tiles(seed: int, corpus: Path | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """The scene tiles of the default corpus for ``seed``, regenerated with their masks.

    Mirrors ``build_default_corpus``'s scenes (seed * 1000 + i, scene classes cycling, distinct
    origins). When ``corpus`` is given, every regenerated tile is compared with the corpus's
    image file of the same window; the returned note says how many matched.
    """
    from vitp_geo.synthetic.scene import DEFAULT_ORIGIN, SCENE_CLASSES, generate_scene

    d = corpus_defaults()
    n_scenes, size, tile = int(d["n_scenes"]), int(d["scene_size"]), int(d["tile_size"])
    images, masks, checked, matched = [], [], 0, 0
    for i in range(n_scenes):
        origin = (DEFAULT_ORIGIN[0] + i * 10_000.0, DEFAULT_ORIGIN[1])
        scene = generate_scene(seed * 1000 + i, size, origin=origin, scene_class=i % len(SCENE_CLASSES))
        for r, c, img, msk in cut_tiles(scene.image, scene.mask, tile):
            images.append(img)
            masks.append(msk)
            if corpus is not None:
                path = corpus / "images" / f"scene_{i:03d}" / f"r{r:05d}_c{c:05d}.png"
                if path.is_file():
                    checked += 1
                    matched += bool(np.array_equal(_read_png(path), img))
    note = f"{len(images)} scene tiles from {n_scenes} regenerated scenes"
    if corpus is not None:
        note += f"; {matched}/{len(images)} identical to the corpus's image files ({checked} found)"
        if matched < len(images):
            note += " — WARNING: the supervised arm's tiles differ from the corpus's"
    return np.stack(images), np.stack(masks), note


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1)


@dataclass
class EvalData:
    pool_x: np.ndarray  # (N, 3, T, T) uint8 labelled pool
    pool_y: np.ndarray  # (N, T, T) class ids
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    seeds: list[int]


def eval_data(s: Settings) -> EvalData:
    """Evaluation tiles from scenes seeded EVAL_SEED_BASE + k: pool, validation and test by scene."""
    from vitp_geo.synthetic.scene import SCENE_CLASSES, generate_scene

    d = corpus_defaults()
    size, tile = int(d["scene_size"]), int(d["tile_size"])
    splits: list[tuple[np.ndarray, np.ndarray]] = []
    seeds: list[int] = []
    k = 0
    for n in (s.pool_scenes, s.val_scenes, s.test_scenes):
        xs, ys = [], []
        for _ in range(n):
            seeds.append(EVAL_SEED_BASE + k)
            scene = generate_scene(EVAL_SEED_BASE + k, size, scene_class=k % len(SCENE_CLASSES))
            for _r, _c, img, msk in cut_tiles(scene.image, scene.mask, tile):
                xs.append(img)
                ys.append(msk)
            k += 1
        splits.append((np.stack(xs), np.stack(ys).astype(np.int64)))
    (px, py), (vx, vy), (tx, ty) = splits
    return EvalData(px, py, vx, vy, tx, ty, seeds)


def check_seeds_disjoint(eval_seeds: Sequence[int], pretrain_seeds: Sequence[int]) -> None:
    """Pretraining scenes of seed s use seeds s*1000 + [0, 1000); evaluation must not."""
    used = {s * 1000 + i for s in pretrain_seeds for i in range(1000)}
    clash = sorted(set(eval_seeds) & used)
    if clash:
        raise ValueError(f"evaluation scene seeds {clash[:5]} are also pretraining scene seeds")


# --------------------------------------------------------------------------------------------------
# Corruptions (robustness read-out)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    x = nn.functional.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = nn.functional.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return nn.functional.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def corrupt(images: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """A corrupted copy of (N, 3, H, W) uint8 tiles: noise, blur, haze or occlusion (seeded)."""
    rng = np.random.default_rng(seed)
    x = images.astype(np.float32)
    if kind == "noise":  # gaussian, sigma = 10 % of the range
        x = x + rng.normal(0.0, 25.5, size=x.shape).astype(np.float32)
    elif kind == "blur":  # gaussian blur, sigma 1.5 px
        x = _gaussian_blur(torch.from_numpy(x), 1.5).numpy()
    elif kind == "haze":  # blend halfway towards a bright, slightly blue-grey veil
        veil = np.asarray([205.0, 210.0, 220.0], np.float32)[None, :, None, None]
        x = 0.5 * x + 0.5 * veil
    elif kind == "occlusion":  # three grey 28 px squares a tile (~19 % of its area)
        _, _, h, w = x.shape
        side = max(1, h // 4)
        for i in range(len(x)):
            for _ in range(3):
                r, c = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
                x[i, :, r : r + side, c : c + side] = 128.0
    else:
        raise ValueError(f"unknown corruption {kind!r}; one of {', '.join(CORRUPTIONS)}")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Backbones and features


def fresh_vit(cfg: Any, seed: int) -> VisionTransformer:
    """The random-init ViT of a ViTP run of ``seed`` (``build_tiny_vlm`` seeds, then builds it)."""
    from vitp_geo.models.vit import build_vision_tower

    torch.manual_seed(seed)
    return build_vision_tower(cfg.vision_arch, drop_path_rate=cfg.drop_path)


def base_weights(cfg: Any) -> Path:
    """The synthetic base the default's runs start from (built once, cached: ``vitp_geo.pretrain.base``)."""
    from vitp_geo.pretrain.run import vision_start

    start = vision_start(replace(cfg, data=None, domain="rs", vision_init="synthetic"))
    assert start is not None
    return start[0]


def start_vit(cfg: Any, seed: int) -> VisionTransformer:
    """The ViT a run of ``cfg`` starts from: random init of ``seed``, with the base's weights when it has one."""
    vit = fresh_vit(cfg, seed)
    if cfg.vision_start == "synthetic":
        vit.load_state_dict(load(base_weights(cfg)).state_dict())
    return vit


def load(path: Path) -> VisionTransformer:
    from vitp_geo.models.vit import load_backbone

    return load_backbone(path)


def _progress(iterable: Any, desc: str, total: int | None = None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr, mininterval=1.0)


def train_supervised(
    cfg: Any, seed: int, images: np.ndarray, masks: np.ndarray, steps: int
) -> VisionTransformer:
    """Multi-label classification of the classes present: ViT mean-pooled patch tokens + linear.

    Same start (the synthetic base when ``cfg`` has one), optimiser (AdamW, decay groups), lr, warm-up + cosine schedule, clipping, batch
    and optimizer steps as a pretraining run of ``cfg`` (``tasks.patch_head.train_vit_head``).
    """
    from vitp_geo.synthetic.scene import CLASS_NAMES
    from vitp_geo.tasks.patch_head import normalise, patch_tokens, train_vit_head

    n_classes = len(CLASS_NAMES)
    shares = np.stack([(masks == c).mean(axis=(1, 2)) for c in range(n_classes)], axis=1)
    targets = torch.from_numpy((shares >= PRESENT_SHARE).astype(np.float32))
    vit = start_vit(cfg, seed)
    head = nn.Linear(int(vit.embed_dim), n_classes)
    batch = cfg.batch_size * cfg.accumulate
    rng = np.random.default_rng(seed)
    order: list[int] = []

    def loss() -> Tensor:
        nonlocal order
        while len(order) < batch:  # epochs of shuffled tiles
            order.extend(rng.permutation(len(images)).tolist())
        idx, order = order[:batch], order[batch:]
        logits = head(patch_tokens(vit, normalise(images[idx])).mean(1))
        return nn.functional.binary_cross_entropy_with_logits(logits, targets[idx])

    train_vit_head(
        vit,
        head,
        loss,
        steps=steps,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        grad_clip=cfg.grad_clip,
        progress=lambda it: _progress(it, f"supervised seed {seed}"),
    )
    return vit


# --------------------------------------------------------------------------------------------------
# Read-outs


def draw_orders(seed: int, draws: int, pool: int, redraw: int = 0) -> list[np.ndarray]:
    """Label draws of a seed: permutations of the pool; the first k tiles are the k labelled ones.

    ``redraw`` > 0 gives another set of draws for the same seed (the rule's power over label sets).
    """
    key = [seed, 17] if redraw == 0 else [seed, 17, 1_000_003, redraw]
    return [np.random.default_rng([*key, d]).permutation(pool) for d in range(draws)]


def power_over_label_sets(
    features: dict[tuple[str, int], tuple[Tensor, Tensor]],
    pool_y: np.ndarray,
    test_y: np.ndarray,
    seeds: Sequence[int],
    draws: int,
    sets: int,
    n_classes: int,
) -> dict[int, dict[str, float]]:
    """Share of ``sets`` redrawn label sets in which each candidate (and the oracle) meets the rule.

    ``features[arm, seed]`` = (pool, test) patch features of the candidates, the rivals and
    :data:`ORACLE`. Each set redraws every seed's ``draws`` label draws; the backbones stay. Returns
    ``share[k][arm]`` for the rule's tile counts: where the oracle's share is low, the rule at that
    tile count is a lottery over label draws for any backbone.
    """
    arms = (*CANDIDATES, ORACLE)
    wins = {k: dict.fromkeys(arms, 0) for k in RULE_SHOTS}
    for j in range(1, sets + 1):
        probe: dict[str, dict[int, list[float]]] = {a: {k: [] for k in RULE_SHOTS} for a in (*arms, *RIVALS)}
        for seed in seeds:
            orders = draw_orders(seed, draws, len(pool_y), redraw=j)
            for arm in probe:
                pool_f, test_f = features[arm, seed]
                scores = probe_scores(pool_f, pool_y, {"t": (test_f, test_y)}, orders, RULE_SHOTS, n_classes)
                for k in RULE_SHOTS:
                    probe[arm][k].extend(scores["t"][k])
        for k in RULE_SHOTS:
            for arm in arms:
                wins[k][arm] += beats_every_rival(probe, arm, k)[0]
    return {k: {a: n / sets for a, n in by_arm.items()} for k, by_arm in wins.items()}


def probe_scores(
    pool_f: Tensor,
    pool_y: np.ndarray,
    tests: dict[str, tuple[Tensor, np.ndarray]],
    orders: list[np.ndarray],
    shots: Sequence[int],
    n_classes: int,
) -> dict[str, dict[int, list[float]]]:
    """Ridge-probe mIoU per test set, shots and draw: ``out[test][k] = [draw 0, draw 1, ...]``."""
    from vitp_geo.evaluation.probe import fit_ridge_probe, miou, predict_probe

    out: dict[str, dict[int, list[float]]] = {name: {k: [] for k in shots} for name in tests}
    c = pool_f.shape[-1]
    for order in orders:
        for k in shots:
            idx = order[:k]
            w = fit_ridge_probe(
                pool_f[idx].reshape(-1, c), torch.from_numpy(pool_y[idx].reshape(-1)), n_classes
            )
            for name, (f, y) in tests.items():
                pred = predict_probe(w, f.reshape(-1, c))
                out[name][k].append(miou(pred, torch.from_numpy(y.reshape(-1)), n_classes))
    return out


def finetune(
    backbone: Path,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    lr: float,
    steps: int,
    seed: int,
    n_classes: int,
) -> tuple[float, float]:
    """Fine-tune ViT + linear head on patch tokens (``tasks.patch_head``); (val mIoU, test mIoU)."""
    from vitp_geo.tasks.patch_head import finetune_patch_head, patch_head_miou

    torch.manual_seed(seed)  # before loading: the head's init follows the backbone build's draws
    vit = load(backbone)
    head = finetune_patch_head(vit, *train, n_classes=n_classes, lr=lr, steps=steps, seed=seed)
    val_miou, test_miou = (patch_head_miou(vit, head, x, y, n_classes) for x, y in (val, test))
    return val_miou, test_miou


# --------------------------------------------------------------------------------------------------
# Pretraining runs (reused from --work when their settings and corpus match)


def arm_config(
    arm: str, seed: int, s: Settings, out: Path, data: Path | None, reliance_data: Path | None = None
) -> Any:
    """The PretrainConfig of a ViTP arm: defaults except the arm's settings, steps and seed.

    ``reliance_data``: the unseen world every arm of a seed is checked on (the shuffled control
    trains on ``data``, so it would otherwise hold records out of its deranged corpus).

    ``align_steps``, ``align_ramp_steps`` and the ViT's own warm-up (absolute counts) scale with
    the step count so that the schedule keeps the default's shape. Built directly (not through ``resolve_config``) so that ``data`` does not pull
    in the full-scale YAML schedule.
    """
    from vitp_geo.pretrain.config import PretrainConfig

    base = PretrainConfig()
    extra: dict[str, Any] = dict(VITP_ARMS[arm])
    extra["vision_init"] = base.vision_start  # the shuffled control (its own --data) starts there too
    for name in ("align_steps", "align_ramp_steps"):  # the phase and its ramp keep their share
        if getattr(base, name):
            extra[name] = int(round(getattr(base, name) * s.steps / base.max_steps))
    if base.vision_warmup:
        extra["vision_warmup_steps"] = int(round(base.vision_warmup * s.steps / base.max_steps))
    if s.reliance_records is not None:
        extra["reliance_records"] = min(s.reliance_records, base.reliance_records)
    if reliance_data is not None:
        extra["reliance_data"] = str(reliance_data)
    return replace(
        base, max_steps=s.steps, seed=seed, output=str(out), data=str(data) if data else None, **extra
    ).validate()


def _stamp(out: Path) -> dict[str, Any] | None:
    p = out / "protocol_run.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except json.JSONDecodeError:
        return None


def _write_stamp(out: Path, data: dict[str, Any]) -> None:
    tmp = out / "protocol_run.json.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(out / "protocol_run.json")


def _previous(out: Path) -> Path:
    return out.with_name(out.name + ".previous")


def reuse_or_set_aside(out: Path, want: dict[str, Any], fresh: bool) -> bool:
    """Reuse the finished run in ``out`` when its stamp is ``want``; else make room for a new one.

    A finished run (stamped) that does not match is moved to ``<out>.previous``, not deleted, and
    :func:`drop_previous` removes it only once the new run is stamped: an interrupted rerun loses no
    finished run. A folder without a stamp is an interrupted run and is cleared; when the run it
    interrupted set a finished one aside that matches ``want``, that one is moved back and reused.
    Returns True when ``out`` holds a finished run to reuse.
    """
    prev = _previous(out)
    if not fresh and (out / "backbone.safetensors").is_file() and _stamp(out) == want:
        return True
    if out.exists() and _stamp(out) is None:
        shutil.rmtree(out)  # an interrupted run: nothing finished to keep
    if not fresh and not out.exists() and (prev / "backbone.safetensors").is_file() and _stamp(prev) == want:
        prev.rename(out)
        return True
    if out.exists():
        shutil.rmtree(prev, ignore_errors=True)
        out.rename(prev)
    out.mkdir(parents=True)
    return False


def drop_previous(out: Path) -> None:
    """The new run in ``out`` is finished and stamped: the one it replaced can go."""
    shutil.rmtree(_previous(out), ignore_errors=True)


def _reliance_from_json(backbone: Path) -> dict[str, Any] | None:
    meta = backbone.with_name("backbone.json")
    try:
        return json.loads(meta.read_text()).get("image_reliance")
    except (OSError, json.JSONDecodeError):
        return None


def pretrain_arm(
    cfg: Any, corpus: Path, fingerprint: str, fresh: bool
) -> tuple[Path, dict[str, Any] | None, bool]:
    """Run (or reuse) one ViTP pretraining; returns (backbone, image reliance JSON, reused?)."""
    from vitp_geo.pretrain.run import run_pretrain

    out = Path(cfg.output)
    want = json.loads(json.dumps({"version": PROTOCOL_VERSION, "config": asdict(cfg), "corpus": fingerprint}))
    backbone = out / "backbone.safetensors"
    if reuse_or_set_aside(out, want, fresh):
        return backbone, _reliance_from_json(backbone), True
    if cfg.data is None:  # the embedded run builds the default corpus here unless present: give it ours
        _copy_tree(corpus, out / "corpus")
    summary = run_pretrain(cfg)
    if summary.backbone is None:
        raise RuntimeError(f"pretraining in {out} wrote no backbone")
    _write_stamp(out, want)
    drop_previous(out)
    return summary.backbone, _reliance_from_json(summary.backbone), False


# --------------------------------------------------------------------------------------------------
# The whole protocol


@dataclass
class Results:
    settings: Settings
    probe: dict[str, dict[int, list[float]]]  # arm → shots → per (seed, draw)
    finetune: dict[str, list[float]]  # arm → test mIoU per (seed, ft draw)
    finetune_lr: dict[str, list[float]]
    drops: dict[str, dict[str, list[float]]]  # arm → corruption → per (seed, draw)
    gains: dict[str, list[float]]  # arm → final image_gain per seed
    gains_decided: dict[str, list[float]]
    # arm → per seed: closed-task accuracy {task or "all": (true images, shuffled images, chance)}
    accuracies: dict[str, list[dict[str, tuple[float, float, float]]]]
    verdict: Verdict
    power: Power
    power_sets: dict[int, dict[str, float]]  # tile count → arm → share of redrawn label sets passing
    phases: list[tuple[str, float]]
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("verdict", "power", "power_sets")}
        d["verdict"] = {
            "passed": self.verdict.passed,
            "per_arm": self.verdict.per_arm,
            "lines": self.verdict.lines,
        }
        d["rule_power"] = {
            "attainable": {str(k): v for k, v in self.power.attainable.items()},
            "lines": self.power.lines,
            "share_of_label_sets": {str(k): v for k, v in self.power_sets.items()},
        }
        d["pass_rule"] = PASS_RULE
        return d


class Phases:
    def __init__(self) -> None:
        self.done: list[tuple[str, float]] = []

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        print(f"\n== {name}", flush=True)
        start = time.perf_counter()
        yield
        took = time.perf_counter() - start
        self.done.append((name, took))
        print(f"== {name}: {took:.1f} s", flush=True)


def run_protocol(s: Settings, work: Path, fresh: bool = False, log: Callable[[str], None] = print) -> Results:
    from vitp_geo.instruct.default_corpus import build_default_corpus
    from vitp_geo.models.vit import export_backbone
    from vitp_geo.pretrain.config import PretrainConfig
    from vitp_geo.pretrain.run import resolve_precision, write_unseen_world
    from vitp_geo.synthetic.scene import CLASS_NAMES

    n_classes = len(CLASS_NAMES)
    base = PretrainConfig()
    phase = Phases()
    notes: list[str] = []
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    log("pass rule (fixed in advance): " + PASS_RULE)
    example = arm_config("shuffled", s.seeds[0], s, work, None)
    notes.append(
        f"every pretrained arm: {s.steps} steps (PretrainConfig default {base.max_steps}), batch "
        f"{base.batch_size} x {base.accumulate}, lr {base.lr:g}, warm-up {base.warmup_ratio:g} + cosine, "
        f"align_steps {example.align_steps} + ramp {example.align_ramp_steps} (default {base.align_steps} + "
        f"{base.align_ramp_steps}, scaled with the steps), align tasks {base.align_tasks}; the shuffled "
        f"control uses the default VRL: r={base.vrl_ratio:g} p={base.vrl_prob:g}"
        + (" (reference mode)" if base.vrl_reference else "")
        + f"; precision {resolve_precision(base)} (--precision {base.precision}; the multi-label arm, "
        "probes and fine-tunes run in fp32)"
        + (
            f"; every pretrained arm and the supervised arm start from the synthetic base ({base.base_scenes} "
            f"scenes, {base.base_steps} steps; vitp_geo.pretrain.base), the ViTP arms and the shuffled "
            f"control with the ViT fixed for the first {example.frozen_vision_steps} steps, then trained at "
            f"{example.vision_lr_share:g}x the lr, warmed up over {example.vision_warmup} steps"
            if base.vision_start == "synthetic"
            else ""
        )
    )
    log(notes[-1])

    with phase("evaluation tiles"):
        ev = eval_data(s)
        check_seeds_disjoint(ev.seeds, s.seeds)
        patch = int(fresh_vit(base, 0).patch_embed.patch_size[0])
        log(
            f"pool {len(ev.pool_x)} tiles, validation {len(ev.val_x)}, test {len(ev.test_x)} "
            f"({ev.pool_x.shape[-1]} px, patch {patch}); scene seeds {ev.seeds[0]}..{ev.seeds[-1]}"
        )
        corrupted = {kind: corrupt(ev.test_x, kind, seed=i) for i, kind in enumerate(CORRUPTIONS)}

    backbones: dict[tuple[str, int], Path] = {}
    gains: dict[str, list[float]] = {a: [] for a in VITP_ARMS}
    gains_decided: dict[str, list[float]] = {a: [] for a in VITP_ARMS}
    accuracies: dict[str, list[dict[str, tuple[float, float, float]]]] = {a: [] for a in VITP_ARMS}
    for seed in s.seeds:
        sdir = work / f"seed{seed}"
        with phase(f"seed {seed}: default corpus + shuffled copy"):
            corpus = sdir / "corpus"
            shutil.rmtree(corpus, ignore_errors=True)
            recipe = build_default_corpus(corpus, seed=seed)
            fp = corpus_fingerprint(recipe)
            shuffled_recipe, report = write_shuffled_corpus(recipe, sdir / "corpus_shuffled", seed=seed)
            own = records_with_own_image(recipe, shuffled_recipe)
            if own:
                raise RuntimeError(f"shuffled corpus has {own} records with an own image")
            fp_shuffled = corpus_fingerprint(shuffled_recipe)
            # Every arm of the seed is checked on the same unseen world (the true images of scenes
            # none of them trained on), the one the default's own run would build.
            shutil.rmtree(sdir / "unseen", ignore_errors=True)
            unseen = write_unseen_world("rs", seed, sdir / "unseen")
            fp_unseen = corpus_fingerprint(unseen)
            notes.append(f"seed {seed}: " + report.format())
            log(notes[-1])
        with phase(f"seed {seed}: random init"):
            out = sdir / "random"
            out.mkdir(parents=True, exist_ok=True)
            backbones["random", seed], _ = export_backbone(fresh_vit(base, seed), out)
        with phase("the synthetic base (built once per machine)"):
            backbones["base", seed] = base_weights(base)
        for arm in VITP_ARMS:
            shuffled = arm == "shuffled"
            cfg = arm_config(arm, seed, s, sdir / arm, shuffled_recipe if shuffled else None, unseen)
            with phase(
                f"seed {seed}: pretrain {arm} ({cfg.max_steps} steps, vrl r={cfg.vrl_ratio} p={cfg.vrl_prob}"
                f"{' reference' if cfg.vrl_reference else ''})"
            ):
                fingerprint = f"{fp_shuffled if shuffled else fp}+{fp_unseen}"
                path, rel, reused = pretrain_arm(cfg, corpus, fingerprint, fresh)
                if reused:
                    log(f"reusing the finished run in {path.parent}")
            backbones[arm, seed] = path
            rel = rel or {}
            gains[arm].append(float("nan") if rel.get("image_gain") is None else float(rel["image_gain"]))
            g = rel.get("image_gain_decided")
            gains_decided[arm].append(float("nan") if g is None else float(g))
            accuracies[arm].append(_accuracies(rel))
        with phase(f"seed {seed}: supervised multi-label ({s.steps} steps)"):
            out = sdir / "supervised"
            want = {
                "version": PROTOCOL_VERSION,
                "steps": s.steps,
                "seed": seed,
                "config": asdict(base),
                "corpus": fp,
            }
            want = json.loads(json.dumps(want))
            path = out / "backbone.safetensors"
            if reuse_or_set_aside(out, want, fresh):
                notes.append(f"seed {seed}: supervised arm reused from {path}")
                log(notes[-1])
            else:
                images, masks, note = corpus_scene_tiles(seed, corpus)
                notes.append(f"seed {seed}: supervised arm: {note}")
                log(notes[-1])
                export_backbone(train_supervised(base, seed, images, masks, s.steps), out)
                _write_stamp(out, want)
                drop_previous(out)
            backbones["supervised", seed] = path

    probe: dict[str, dict[int, list[float]]] = {a: {k: [] for k in SHOTS} for a in (*ARMS, *REFERENCES)}
    # the oracle reads labels, not pixels: it has no corrupted tiles to drop on
    drops: dict[str, dict[str, list[float]]] = {a: {c: [] for c in CORRUPTIONS} for a in (*ARMS, RAW)}
    features: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}  # clean (pool, test) for the rule's arms
    with phase("frozen probes (clean and corrupted)"):
        from vitp_geo.evaluation.probe import patch_labels, raw_patch_features
        from vitp_geo.tasks.patch_head import patch_features

        pool_y = patch_labels(ev.pool_y, patch, n_classes)
        test_y = patch_labels(ev.test_y, patch, n_classes)
        for seed in s.seeds:
            orders = draw_orders(seed, s.draws, len(ev.pool_x))
            for arm in (*ARMS, RAW):
                fx: Callable[[np.ndarray], Tensor]
                if arm == RAW:
                    fx = lambda x: torch.from_numpy(raw_patch_features(x, patch))  # noqa: E731
                else:
                    fx = partial(patch_features, load(backbones[arm, seed]))
                tests = {
                    "clean": (fx(ev.test_x), test_y),
                    **{c: (fx(corrupted[c]), test_y) for c in CORRUPTIONS},
                }
                pool_f = fx(ev.pool_x)
                if arm in (*CANDIDATES, *RIVALS):
                    features[arm, seed] = (pool_f, tests["clean"][0])
                scores = probe_scores(pool_f, pool_y, tests, orders, SHOTS, n_classes)
                for k in SHOTS:
                    probe[arm][k].extend(scores["clean"][k])
                for c in CORRUPTIONS:
                    drops[arm][c].extend(paired(scores["clean"][ROBUST_SHOTS], scores[c][ROBUST_SHOTS]))
            features[ORACLE, seed] = (
                oracle_patch_features(pool_y, n_classes),
                oracle_patch_features(test_y, n_classes),
            )
            oracle = probe_scores(
                features[ORACLE, seed][0],
                pool_y,
                {"clean": (features[ORACLE, seed][1], test_y)},
                orders,
                SHOTS,
                n_classes,
            )
            for k in SHOTS:
                probe[ORACLE][k].extend(oracle["clean"][k])
            log(
                f"seed {seed}: "
                + ", ".join(f"{a} {np.mean(probe[a][4][-s.draws :]):.3f}" for a in (*ARMS, *REFERENCES))
                + " (probe @4)"
            )

    ft: dict[str, list[float]] = {a: [] for a in ARMS}
    ft_lr: dict[str, list[float]] = {a: [] for a in ARMS}
    with phase(
        f"fine-tune at {FT_SHOTS} tiles ({s.ft_steps} steps, lr grid {', '.join(f'{lr:g}' for lr in FT_LRS)})"
    ):
        jobs = [(seed, d, arm) for seed in s.seeds for d in range(min(s.ft_draws, s.draws)) for arm in ARMS]
        for seed, d, arm in _progress(jobs, "fine-tune"):
            idx = draw_orders(seed, s.draws, len(ev.pool_x))[d][:FT_SHOTS]
            runs = [
                finetune(
                    backbones[arm, seed],
                    (ev.pool_x[idx], ev.pool_y[idx]),
                    (ev.val_x, ev.val_y),
                    (ev.test_x, ev.test_y),
                    lr,
                    s.ft_steps,
                    seed * 100 + d,
                    n_classes,
                )
                for lr in FT_LRS
            ]
            best = max(range(len(FT_LRS)), key=lambda i: (runs[i][0], -i))  # ties: the smaller lr
            ft[arm].append(runs[best][1])
            ft_lr[arm].append(FT_LRS[best])

    verdict = pass_rule(probe)
    power = rule_power(probe)
    with phase(f"the rule's power over {s.power_sets} redrawn label sets"):
        shares = power_over_label_sets(features, pool_y, test_y, s.seeds, s.draws, s.power_sets, n_classes)
    return Results(
        s,
        probe,
        ft,
        ft_lr,
        drops,
        gains,
        gains_decided,
        accuracies,
        verdict,
        power,
        shares,
        phase.done,
        notes,
    )


# --------------------------------------------------------------------------------------------------
# Report


ACCURACY_TASKS: tuple[str, ...] = ("presence", "classification", "counting")


def _accuracies(rel: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    """Closed-task accuracy (true, shuffled, chance) of a run's final reliance check, overall and per task."""

    def num(x: Any) -> float:
        return float("nan") if x is None else float(x)

    out = {
        "all": (num(rel.get("accuracy")), num(rel.get("accuracy_shuffled")), num(rel.get("accuracy_chance")))
    }
    for task, row in (rel.get("per_task") or {}).items():
        if "accuracy" in row:
            out[task] = (num(row.get("accuracy")), num(row.get("accuracy_shuffled")), num(row.get("chance")))
    return out


def _accuracy_cell(r: Results, arm: str, task: str) -> str:
    rows = [acc[task] for acc in r.accuracies.get(arm, []) if task in acc]
    if not rows:
        return "—"
    true, shuffled, chance = (float(np.nanmean([row[k] for row in rows])) for k in range(3))
    return f"{true:.2f} / {shuffled:.2f} ({chance:.2f})"


def _gain_cell(r: Results, arm: str) -> str:
    if arm not in r.gains:
        return "—"
    g = [x for x in r.gains[arm] if math.isfinite(x)]
    gd = [x for x in r.gains_decided[arm] if math.isfinite(x)]
    if not g:
        return "n/a"
    cell = f"{np.mean(g):+.3f}"
    return cell + (f" ({np.mean(gd):+.3f})" if gd else "")


def markdown(r: Results) -> str:
    s = r.settings
    pairs = len(s.seeds) * s.draws
    lines = [
        "## Pretraining gain: fair protocol" + (" (--quick smoke run: too small to read)" if s.quick else ""),
        "",
        f"{len(s.seeds)} pretraining seed(s) ({', '.join(map(str, s.seeds))}) x {s.draws} label draw(s) = "
        f"{pairs} pairs; {s.steps} pretraining steps per arm (PretrainConfig defaults otherwise); probe: "
        f"ridge on frozen patch tokens, {s.pool_scenes * 4}-tile labelled pool, {s.test_scenes * 4} test tiles; "
        f"fine-tune: {s.ft_steps} steps at {FT_SHOTS} tiles, lr from {{{', '.join(f'{x:g}' for x in FT_LRS)}}} "
        f"by validation mIoU on {s.val_scenes * 4} tiles, {min(s.ft_draws, s.draws)} draw(s) per seed; "
        f"robustness: probe mIoU drop at {ROBUST_SHOTS} tiles (clean − corrupted).",
        "",
        "| arm | probe@1 | probe@4 | probe@16 | fine-tune@4 | drop noise | drop blur | drop haze | drop occlusion "
        "| image_gain (decided) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    acc_lines = [
        "",
        "Closed-task accuracy of each ViTP arm's final reliance check (all of the seed's unseen world, the same records for every arm; true images / "
        "shuffled images (chance), mean over seeds):",
        "",
        "| arm | all closed tasks | " + " | ".join(ACCURACY_TASKS) + " |",
        "|---|---|" + "---|" * len(ACCURACY_TASKS),
    ]
    for arm in VITP_ARMS:
        cells = [_accuracy_cell(r, arm, t) for t in ("all", *ACCURACY_TASKS)]
        acc_lines.append(f"| {LABELS[arm]} | " + " | ".join(cells) + " |")
    for arm in (*ARMS, *REFERENCES):
        cells = [fmt(r.probe[arm][k]) for k in SHOTS]
        cells.append(fmt(r.finetune.get(arm)))
        cells += [fmt(r.drops.get(arm, {}).get(c), signed=True) for c in CORRUPTIONS]
        cells.append(_gain_cell(r, arm))
        lines.append(f"| {LABELS[arm]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "mIoU as mean ± std over seed x draw pairs (fine-tune: over seed x fine-tune draw); image_gain: the "
        "run's final shuffled − true answer loss on the seed's unseen world in nats per answer (image-decided tasks in brackets), "
        "mean over seeds. Chosen fine-tune lr per arm: "
        + "; ".join(f"{LABELS[a]} {', '.join(f'{x:g}' for x in r.finetune_lr[a])}" for a in ARMS)
        + ".",
        *acc_lines,
        "",
        "### Paired differences (probe mIoU, same seed and label draw)",
        "",
        "| difference | @1 | @4 | @16 | > 2 std at 1 and 4 |",
        "|---|---|---|---|---|",
    ]
    for cand in CANDIDATES:
        for other in (*ARMS, RAW):
            if other == cand:
                continue
            diffs = {k: paired(r.probe[cand][k], r.probe[other][k]) for k in SHOTS}
            ok = all(beats(diffs[k]) for k in RULE_SHOTS)
            mark = ("yes" if ok else "no") + ("" if other in RIVALS else " (not in the rule)")
            lines.append(
                f"| {LABELS[cand]} − {LABELS[other]} | "
                + " | ".join(fmt(diffs[k], signed=True) for k in SHOTS)
                + f" | {mark} |"
            )
    lines += ["", "### Pass rule", "", PASS_RULE, "", r.verdict.format(), ""]
    lines += [
        "### Can the rule be met at all? The oracle",
        "",
        "The same comparisons with each patch's true class (one-hot) as the candidate's features: a "
        "linear probe cannot be given more, so where the oracle fails the rule, no backbone can be "
        "expected to pass it with these label draws.",
        "",
        r.power.format(),
        "",
        f"Share of {s.power_sets} redrawn label sets (other draws of the same tiles, the same backbones) "
        "in which each meets the rule against all three rivals:",
        "",
        "| | " + " | ".join(f"@{k}" for k in RULE_SHOTS) + " |",
        "|---|" + "---|" * len(RULE_SHOTS),
        *(
            f"| {LABELS[a]} | " + " | ".join(f"{r.power_sets[k][a]:.2f}" for k in RULE_SHOTS) + " |"
            for a in (ORACLE, *CANDIDATES)
        ),
        "",
    ]
    lines += ["### Run", ""]
    lines += [f"- {n}" for n in r.notes]
    lines += [f"- {name}: {took:.0f} s" for name, took in r.phases]
    lines.append(f"- total: {sum(t for _, t in r.phases):.0f} s")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="CI smoke: 1 seed, 1 draw, 10 pretraining steps, tiny fine-tune"
    )
    p.add_argument(
        "--work", type=Path, default=None, help="folder for pretraining runs (reused when they match)"
    )
    p.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    p.add_argument(
        "--json", type=Path, default=None, help="write every number here (default: WORK/results.json)"
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="pretraining seeds (default 0 1; quick: 0)"
    )
    p.add_argument("--draws", type=int, default=None, help="label draws per seed (default 3; quick: 1)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="pretraining steps of every arm (default: the pretraining default's; quick: 10)",
    )
    p.add_argument("--ft-steps", type=int, default=None, help="fine-tune steps (default 60; quick: 4)")
    p.add_argument("--ft-draws", type=int, default=None, help="label draws fine-tuned per seed (default 1)")
    p.add_argument(
        "--power-sets",
        type=int,
        default=None,
        help="label sets redrawn to measure the rule's power (default 100; quick: 2)",
    )
    p.add_argument("--fresh", action="store_true", help="redo pretraining runs even when --work has them")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)

    s = Settings.quick_smoke() if args.quick else Settings.full()
    given = {
        "seeds": tuple(args.seeds) if args.seeds else None,
        "draws": args.draws,
        "steps": args.steps,
        "ft_steps": args.ft_steps,
        "ft_draws": args.ft_draws,
        "power_sets": args.power_sets,
    }
    s = replace(s, **{k: v for k, v in given.items() if v is not None})
    for name in ("draws", "steps", "ft_steps", "ft_draws", "power_sets"):
        if getattr(s, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or Path("runs") / ("pretrain-gain-quick" if s.quick else "pretrain-gain")
    start = time.perf_counter()
    results = run_protocol(s, work, fresh=args.fresh)
    report = markdown(results)
    print("\n" + report)
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
    json_path = args.json or work / "results.json"
    json_path.write_text(json.dumps(results.to_json(), indent=2, default=str, allow_nan=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
