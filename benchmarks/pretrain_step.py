"""One pretraining step of the embedded default, before and after each speed change, same batches.

Builds the embedded remote-sensing corpus, draws one seeded list of samples, and times the same
batches through the tiny ViTP model (optimizer step included) under cumulative settings:

1. ``before``: the offline tokenizer fitted on the conversations only (the InternVL2.5 system
   message stays 165 byte tokens of every sequence), logits over every position, every sample
   decoded from PNG, tiled and tokenised again each time it is drawn;
2. ``+ system message in the tokenizer``: the tokenizer is fitted on the system message too, so it
   takes 10 tokens (sequences 3.4x shorter);
3. ``+ LM head on answer positions``: the vocabulary projection and cross-entropy run on the
   labelled positions only (about 7 % of them), the loss and its gradients unchanged;
4. ``+ cached tiles and tokens``: each image's normalised tiles and each record's token ids are made
   once and reused (the default corpus is drawn about 13 times per run);
5. ``+ bf16 autocast``: forward (and so backward) under ``torch.autocast("cpu", torch.bfloat16)``,
   what ``--precision auto`` picks on a CPU with AVX512-BF16 or AMX (weights and AdamW stay fp32).
   On a CPU without them bf16 is emulated: the row is printed with a note and is slower there.
6. ``+ math attention kernel``: under CPU bf16 autocast, scaled-dot-product attention takes torch's
   math kernel instead of its fused CPU flash kernel, whose backward is slow in bf16
   (``vitp_geo.models.attention.training_attention``, what a pretraining step does now).

Data time (drawing and collating a batch) and compute time (forward, backward, clipping, AdamW)
are measured separately; steps/s and the speed-up over ``before`` are printed side by side.
Time things alone: another torch job on a 2-core machine slows both by 10-20x.

    python benchmarks/pretrain_step.py                 # about 1 min on 2 CPU cores
    python benchmarks/pretrain_step.py --batch-size 32 --steps 10   # the default's batch
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vitp_geo.instruct.default_corpus import build_default_corpus
from vitp_geo.models.attention import training_attention
from vitp_geo.pretrain.datamodule import InstructionDataModule
from vitp_geo.pretrain.dataset import collate
from vitp_geo.pretrain.module import step_tokens
from vitp_geo.pretrain.run import _corpus_texts, cpu_has_native_bf16
from vitp_geo.vlm import build_offline_tokenizer, build_tiny_vlm, tokenize_conversation
from vitp_geo.vlm.template import INTERNVL2_5_SYSTEM_MESSAGE


@dataclass
class Setting:
    name: str
    system_in_tokenizer: bool
    head_on_answers: bool
    cache: bool
    bf16: bool = False
    math_attention: bool = False


SETTINGS = (
    Setting("before", False, False, False),
    Setting("+ system message in the tokenizer", True, False, False),
    Setting("+ LM head on answer positions", True, True, False),
    Setting("+ cached tiles and tokens", True, True, True),
    Setting("+ bf16 autocast", True, True, True, bf16=True),
    Setting("+ math attention kernel", True, True, True, bf16=True, math_attention=True),
)


@dataclass
class Result:
    data_s: float
    compute_s: float
    tokens: float  # mean padded sequence length

    @property
    def step_s(self) -> float:
        return self.data_s + self.compute_s


def measure(setting: Setting, recipe: Path, indices: list[list[int]], warmup: int, seed: int) -> Result:
    texts = _corpus_texts(recipe)
    if not setting.system_in_tokenizer:
        texts = [t for t in texts if t != INTERNVL2_5_SYSTEM_MESSAGE]
    tok = build_offline_tokenizer(texts)
    model = build_tiny_vlm(tok, drop_path_rate=0.1, seed=seed)
    model.vrl_ratio, model.vrl_prob, model.loss_reduction = 0.75, 0.25, "sample"  # the default's
    dm = InstructionDataModule(
        recipe,
        tok,
        tokenize_conversation,
        image_size=112,
        num_image_token=model.num_image_token,
        max_length=1024,
        seed=seed,
        cache_mb=1024.0 if setting.cache else 0.0,
    )
    dm.setup("fit")
    ds = dm.dataset
    assert ds is not None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    data_t: list[float] = []
    compute_t: list[float] = []
    lengths: list[int] = []
    for k, batch_idx in enumerate(indices):
        t0 = time.perf_counter()
        batch = collate([ds[i] for i in batch_idx], pad_token_id=int(tok.pad_token_id))
        t1 = time.perf_counter()
        model.vrl_generator = torch.Generator().manual_seed(seed + k)
        attention = (
            training_attention(step_tokens(model, batch))
            if setting.math_attention
            else contextlib.nullcontext()
        )
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=setting.bf16), attention:
            out = model(
                pixel_values=batch["pixel_values"],
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
                return_logits=not setting.head_on_answers,
            )
        assert out.loss is not None
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        t2 = time.perf_counter()
        if k >= warmup:
            data_t.append(t1 - t0)
            compute_t.append(t2 - t1)
            lengths.append(int(batch["input_ids"].shape[1]))
    return Result(statistics.median(data_t), statistics.median(compute_t), statistics.mean(lengths))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per setting")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = build_default_corpus(Path(tmp) / "corpus", seed=args.seed)
        probe = InstructionDataModule(
            recipe,
            build_offline_tokenizer(_corpus_texts(recipe)),
            tokenize_conversation,
            image_size=112,
            num_image_token=16,
            seed=args.seed,
        )
        probe.setup("fit")
        assert probe.dataset is not None
        n = len(probe.dataset)
        g = torch.Generator().manual_seed(args.seed)
        # Each batch is drawn twice in a row (a cache pays from the second draw, as in a run that
        # sees its corpus about 13 times); the uncached settings pay the full price both times.
        draws = torch.randint(n, (args.warmup + args.steps, args.batch_size), generator=g).tolist()
        indices = [b for b in draws for _ in range(2)]
        print(
            f"{n} samples, batch {args.batch_size}, {args.steps} timed steps x 2 draws per setting "
            f"(medians); torch threads {torch.get_num_threads()}; native bf16: {cpu_has_native_bf16()}"
        )
        base: Result | None = None
        print(
            f"{'setting':<36} {'tokens':>7} {'data ms':>8} {'compute ms':>11} {'steps/s':>8} {'x before':>9}"
        )
        for setting in SETTINGS:
            r = measure(setting, recipe, indices, 2 * args.warmup, args.seed)
            base = base or r
            print(
                f"{setting.name:<36} {r.tokens:7.0f} {r.data_s * 1e3:8.1f} {r.compute_s * 1e3:11.1f} "
                f"{1 / r.step_s:8.2f} {base.step_s / r.step_s:8.2f}x"
            )


if __name__ == "__main__":
    main()
