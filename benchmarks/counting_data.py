"""How much data does the tiny ViT need to count? The ViT alone, trained directly on the counts.

The embedded default's VLM does not read counting questions (docs/pretraining-evidence.md §2).
The VLM route cannot do better than the ViT trained on the same answers with a direct head, so
this script measures that upper bound, as a function of the world's size: for each size it builds
the embedded remote-sensing world (``build_default_corpus``, ``--sizes`` scenes, one seed), takes
its counting questions about one class (``--cls``, buildings by default: 57 % of the default's
counting questions, and the only class whose counts vary much), and trains the tiny ViT of the
default (``vitp_tiny_patch14_112``, random init) with a linear head on its mean-pooled patch
tokens, cross-entropy over the counts 1, 2, ..., ``--max-count`` or more. Every size trains the
same number of steps (``--steps`` x ``--batch-size`` samples) and is scored on the same fresh world
(``--test-scenes`` scenes, another seed): accuracy on training and unseen tiles, against the
unseen world's prior (the most common count, what an answer that ignores the image scores).

    python benchmarks/counting_data.py                    # about 16 min alone on 2 CPU cores
    python benchmarks/counting_data.py --sizes 48,480 --steps 400   # a quick look

Time things alone: another torch job on a 2-core machine slows both by 10-20x.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

import vitp_geo.models  # noqa: F401  (registers the tiny ViTs with timm)
from vitp_geo.instruct.default_corpus import build_default_corpus
from vitp_geo.instruct.records import read_jsonl
from vitp_geo.synthetic import CLASS_NAMES
from vitp_geo.vlm.dynamic_tiles import to_pixel_values

TILE = 112


def counting_examples(world: str | Path, cls: str, max_count: int) -> tuple[Tensor, Tensor]:
    """Normalised 112 px tiles and count labels (``count - 1``, capped at ``max_count - 1``).

    Takes the world's ``counting`` records whose question names ``cls`` (singular or plural,
    whole word) and whose image is one 112 px tile; the label is the record's answer.
    """
    world = Path(world)
    word = re.compile(rf"\b{re.escape(cls)}s?\b", re.IGNORECASE)
    images: list[Tensor] = []
    labels: list[int] = []
    for record in read_jsonl(world / "annotations.jsonl").records:
        if record.task != "counting" or len(record.images) != 1:
            continue
        if not word.search(record.conversations[0]["value"]):
            continue
        answer = record.conversations[1]["value"].strip().rstrip(".")
        if not answer.isdigit() or int(answer) < 1:
            raise ValueError(f"{world / 'annotations.jsonl'}: record {record.id}: count {answer!r}")
        with Image.open(world / record.images[0]) as im:
            if im.size != (TILE, TILE):
                continue
            images.append(to_pixel_values([im])[0])  # InternVL's normalisation, as in training
        labels.append(min(int(answer), max_count) - 1)
    if not labels:
        raise ValueError(f"{world}: no counting question about {cls!r} on a {TILE} px tile")
    return torch.stack(images), torch.tensor(labels)


class CountingViT(nn.Module):
    """The default's tiny ViT and a linear head on its mean-pooled patch tokens."""

    def __init__(self, n_counts: int) -> None:
        super().__init__()
        vit = timm.create_model("vitp_tiny_patch14_112", num_classes=0, global_pool="")
        assert isinstance(vit, VisionTransformer)
        self.vit = vit
        self.head = nn.Linear(int(vit.embed_dim), n_counts)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens :]
        return self.head(tokens.mean(1))


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 256) -> float:
    was = model.training
    model.eval()
    hits = sum(
        int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(y), batch)
    )
    model.train(was)
    return hits / len(y)


def prior_accuracy(train_y: Tensor, test_y: Tensor) -> float:
    """Accuracy on ``test_y`` of always answering the most common training count."""
    return float((test_y == torch.bincount(train_y).argmax()).float().mean())


@dataclass
class Row:
    scenes: int
    examples: int
    train_acc: float
    unseen_acc: float
    prior: float
    build_s: float
    train_s: float


def train_and_score(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    *,
    n_counts: int,
    steps: int,
    batch_size: int,
    seed: int,
) -> tuple[float, float]:
    torch.manual_seed(seed)
    model = CountingViT(n_counts)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    warm = max(1, steps // 10)  # linear warm-up, then cosine to 0 (as the pretraining schedule)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
        ),
    )
    gen = torch.Generator().manual_seed(seed)
    x, y = train
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch_size,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return accuracy(model, x[:2048], y[:2048]), accuracy(model, *test)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="48,480,2400", help="scenes per training world (48: the default's)")
    p.add_argument("--test-scenes", type=int, default=240, help="scenes of the fresh test world")
    p.add_argument("--cls", default="building", choices=[c for c in CLASS_NAMES if c != "background"])
    p.add_argument("--max-count", type=int, default=6, help="counts of this or more share one label")
    p.add_argument("--steps", type=int, default=1600, help="optimizer steps per size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="world seed (the test world uses seed + 1000)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = p.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        p.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="counting-data-") as tmp:
        build_default_corpus(Path(tmp) / "test", seed=args.seed + 1000, n_scenes=args.test_scenes)
        test = counting_examples(Path(tmp) / "test", args.cls, args.max_count)
        print(
            f"test world: {args.test_scenes} scenes, {len(test[1])} {args.cls} counting questions", flush=True
        )
        for n in sizes:
            t0 = time.perf_counter()
            world = Path(tmp) / f"train{n}"
            build_default_corpus(world, seed=args.seed, n_scenes=n)
            train = counting_examples(world, args.cls, args.max_count)
            t1 = time.perf_counter()
            train_acc, unseen_acc = train_and_score(
                train,
                test,
                n_counts=args.max_count,
                steps=args.steps,
                batch_size=args.batch_size,
                seed=args.seed,
            )
            t2 = time.perf_counter()
            rows.append(
                Row(
                    n,
                    len(train[1]),
                    train_acc,
                    unseen_acc,
                    prior_accuracy(train[1], test[1]),
                    t1 - t0,
                    t2 - t1,
                )
            )
            r = rows[-1]
            print(
                f"  {n} scenes: {r.examples} examples, unseen {r.unseen_acc:.3f} (prior {r.prior:.3f})",
                flush=True,
            )
    print(
        f"\n{args.cls} counts, ViT + linear head, {args.steps} steps x {args.batch_size}, "
        f"tested on {len(test[1])} questions of a fresh {args.test_scenes}-scene world\n"
    )
    print(
        "| scenes | training questions | train acc | unseen acc | prior | unseen − prior | build s | train s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.scenes} | {r.examples} | {r.train_acc:.3f} | {r.unseen_acc:.3f} | {r.prior:.3f} | "
            f"{r.unseen_acc - r.prior:+.3f} | {r.build_s:.0f} | {r.train_s:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
