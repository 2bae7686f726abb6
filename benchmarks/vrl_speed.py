"""VRL speed and memory: training step time and peak memory at VRL ratio 0 vs 0.75, and batch scaling.

Runs the same seeded batches through the same tiny ViTP model (tiny InternViT-layout ViT + a
moderately sized Qwen2 so the LLM dominates) with the LLM seeing mostly image tokens (several tiles
per sample, a short answer). Prints each measurement and its ratio to the baseline side by side.

    python benchmarks/vrl_speed.py                      # ~1-2 min on 2 CPU cores
    python benchmarks/vrl_speed.py --img-size 448 --llm-hidden 896 --llm-layers 24 --steps 10 --device cuda

Memory is ``torch.cuda.max_memory_allocated`` above the pre-step level on CUDA; on CPU (where the
allocator caches and RSS says little) it is the activation memory: bytes of the non-parameter
tensors autograd saves for the backward pass. Timed steps of the two settings alternate, and the
median is reported, so background load affects both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from vitp_geo.vlm import build_offline_tokenizer, build_tiny_vlm, tokenize_conversation


@dataclass
class Measure:
    step_s: float  # median over the timed steps
    mem_mb: float  # CUDA: peak allocated above the pre-step level; CPU: activations saved for backward
    kept: int
    total: int
    seq_len: int


class _SavedActivations:
    """Bytes of non-parameter tensors autograd saves for the backward pass (the activation memory)."""

    def __init__(self, params: set[int]) -> None:
        self.params = params
        self.seen: set[int] = set()
        self.bytes = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in self.params and key not in self.seen:
            self.seen.add(key)
            self.bytes += t.untyped_storage().nbytes()
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t


def make_batches(tok, n_batches: int, batch: int, tiles: int, per_tile: int, img: int, seed: int):
    """Seeded batches: each sample has ``tiles`` tiles and a short question/answer."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(n_batches):
        seqs = []
        for i in range(batch):
            conv = [
                {"from": "human", "value": "<image>\nHow many buildings are there in the image?"},
                {"from": "gpt", "value": f"There are {(b + i) % 7} buildings."},
            ]
            seqs.append(
                tokenize_conversation(conv, tok, [tiles * per_tile], max_length=1 << 16, system_message="")
            )
        length = max(len(s[0]) for s in seqs)
        ids = torch.full((batch, length), tok.pad_token_id)
        labels = torch.full((batch, length), -100)
        mask = torch.zeros(batch, length, dtype=torch.long)
        for i, (a, lab) in enumerate(seqs):
            ids[i, : len(a)], labels[i, : len(a)], mask[i, : len(a)] = a, lab, 1
        px = torch.randn(batch * tiles, 3, img, img, generator=g)
        out.append((px, ids, mask, labels))
    return out


class Runner:
    """One model + optimizer + its seeded batches; ``step(i)`` times one training step."""

    def __init__(self, args: argparse.Namespace, ratio: float, batch: int) -> None:
        self.device = torch.device(args.device)
        tok = build_offline_tokenizer()
        self.model = build_tiny_vlm(
            tok,
            vision_arch=args.vision_arch,
            img_size=args.img_size,
            llm_hidden=args.llm_hidden,
            llm_layers=args.llm_layers,
            llm_heads=args.llm_heads,
            llm_kv_heads=args.llm_kv_heads,
            llm_intermediate=args.llm_intermediate,
            vrl_ratio=ratio,
            seed=0,
        ).to(self.device)
        self.model.vrl_generator = torch.Generator().manual_seed(0)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5)
        cfg = self.model.config
        raw = make_batches(
            tok, args.steps + 1, batch, args.tiles, self.model.num_image_token, cfg.img_size, args.seed
        )
        self.batches = [tuple(t.to(self.device) for t in b) for b in raw]
        self.params = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        self.times: list[float] = []
        self.mem = 0.0
        self.kept = self.total = self.seq = 0

    def step(self, i: int, timed: bool = True) -> None:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        saved = _SavedActivations(self.params)
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
            out = self.model(*self.batches[i])
        out.loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if not timed:
            return
        self.times.append(dt)
        mem = (torch.cuda.max_memory_allocated() - base) if cuda else saved.bytes
        self.mem = max(self.mem, mem / 2**20)
        self.kept += out.kept_image_tokens
        self.total += out.total_image_tokens
        self.seq = max(self.seq, out.logits.shape[1])

    def result(self) -> Measure:
        return Measure(statistics.median(self.times), self.mem, self.kept, self.total, self.seq)


def compare(args: argparse.Namespace, a: Runner, b: Runner) -> tuple[Measure, Measure]:
    """Warm both up, then alternate their timed steps so background load hits both alike."""
    a.step(0, timed=False)
    b.step(0, timed=False)
    for i in tqdm(range(1, args.steps + 1), desc="timed steps", leave=False):
        a.step(i)
        b.step(i)
    return a.result(), b.result()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vision-arch", default="vitp_tiny_patch14_224")
    p.add_argument(
        "--img-size", type=int, default=224, help="tile size (448 gives 256 image tokens per tile)"
    )
    p.add_argument("--tiles", type=int, default=4, help="tiles per sample")
    p.add_argument("--llm-hidden", type=int, default=384)
    p.add_argument("--llm-layers", type=int, default=4)
    p.add_argument("--llm-heads", type=int, default=6)
    p.add_argument("--llm-kv-heads", type=int, default=2)
    p.add_argument("--llm-intermediate", type=int, default=1024)
    p.add_argument("--batch", type=int, default=2, help="batch size for the ratio comparison")
    p.add_argument("--steps", type=int, default=3, help="timed steps per setting (after one warm-up)")
    p.add_argument("--ratio", type=float, default=0.75)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-batch-scaling", action="store_true")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    print(
        f"device={args.device} threads={torch.get_num_threads()} tiles/sample={args.tiles} img={args.img_size} "
        f"LLM {args.llm_layers}x{args.llm_hidden} steps={args.steps}"
    )

    base, vrl = compare(args, Runner(args, 0.0, args.batch), Runner(args, args.ratio, args.batch))
    print(f"\nVRL ratio 0 vs {args.ratio} (batch {args.batch}, same batches)")
    print(f"{'':22s}{'ratio 0':>12s}{f'ratio {args.ratio}':>14s}{'vrl/base':>10s}")
    print(f"{'step time (s)':22s}{base.step_s:12.3f}{vrl.step_s:14.3f}{vrl.step_s / base.step_s:10.2f}")
    mem_label = "peak memory (MiB)" if args.device.startswith("cuda") else "activations (MiB)"
    print(f"{mem_label:22s}{base.mem_mb:12.1f}{vrl.mem_mb:14.1f}{vrl.mem_mb / base.mem_mb:10.2f}")
    print(f"{'LLM sequence length':22s}{base.seq_len:12d}{vrl.seq_len:14d}{vrl.seq_len / base.seq_len:10.2f}")
    print(f"{'image tokens kept':22s}{base.kept:12d}{vrl.kept:14d}{vrl.kept / max(base.kept, 1):10.2f}")
    verdict = "meets" if vrl.step_s <= 0.7 * base.step_s else "misses"
    print(
        f"aim: ratio-{args.ratio} step time <= 0.70x ratio 0 -> {vrl.step_s / base.step_s:.2f}x ({verdict})"
    )

    if not args.skip_batch_scaling:
        one, four = compare(args, Runner(args, args.ratio, 1), Runner(args, args.ratio, 4))
        s1, s4 = 1 / one.step_s, 4 / four.step_s
        print(f"\nthroughput at VRL ratio {args.ratio}")
        print(f"{'':22s}{'batch 1':>12s}{'batch 4':>14s}{'b4/b1':>10s}")
        print(f"{'samples/s':22s}{s1:12.2f}{s4:14.2f}{s4 / s1:10.2f}")


if __name__ == "__main__":
    main()
