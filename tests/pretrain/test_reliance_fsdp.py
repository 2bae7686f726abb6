"""``ImageReliance`` under torch's FSDP (2 CPU processes, gloo): the same figures as unsharded.

Lightning wraps the LightningModule in a root FSDP unit; the callback receives the bare module and
calls ``pl_module.model`` past that root, whose own parameters (embeddings, projector, norms) stay
sharded unless the callback gathers them. Lightning's ``FSDPStrategy`` refuses the CPU, so the
test wraps the module with torch's FSDP the way the strategy does (an auto-wrap policy over the
ViT blocks and LLM layers, the rest in the root) and hands the callback a real ``FSDPStrategy``
holding it; the figures must equal a single-process run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from colour_corpus import write_colour_corpus
from torch import nn

WORDS = ["what colour is this image", "red green blue yellow", "case 0 1 2 3 4 5 6 7 8 9"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_corpus(root: Path) -> None:
    write_colour_corpus(root, [112] * 12, ("classification", "description"))


class _Holder(nn.Module):
    """The layout of ViTPPretrainModule: ``module.model`` is the VLM."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


def _setup(corpus: Path):  # noqa: ANN202
    from vitp_geo.instruct.recipe import RecipeEntry
    from vitp_geo.pretrain.dataset import InstructionDataset, collate
    from vitp_geo.pretrain.reliance import ImageReliance, hold_out
    from vitp_geo.vlm.build import build_tiny_vlm
    from vitp_geo.vlm.template import tokenize_conversation
    from vitp_geo.vlm.tokenizer import build_offline_tokenizer

    tok = build_offline_tokenizer(WORDS)
    ds = InstructionDataset(
        [RecipeEntry("c", corpus, corpus / "annotations.jsonl")],
        tok,
        tokenize_conversation,
        image_size=112,
        num_image_token=16,
    )
    held = hold_out(ds, 8, seed=0)
    model = build_tiny_vlm(tok, llm_hidden=32, llm_layers=2, llm_intermediate=64, drop_path_rate=0.0, seed=0)
    cb = ImageReliance(
        ds, held, partial(collate, pad_token_id=0), corpus / "unused.jsonl", every=0, batch_size=3
    )
    return model, cb


def _figures(result) -> dict[str, float]:  # noqa: ANN001
    return {"loss": result.loss, "loss_shuffled": result.loss_shuffled, "loss_blank": result.loss_blank}


def _worker(rank: int, world: int, port: int, corpus: str, out: str) -> None:
    from lightning.pytorch.strategies import FSDPStrategy
    from timm.models.vision_transformer import Block
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, cb = _setup(Path(corpus))
        full_embed = model.language_model.get_input_embeddings().weight.shape
        module = _Holder(model)
        policy = ModuleWrapPolicy({Block, Qwen2DecoderLayer})
        wrapped = FSDP(module, auto_wrap_policy=policy, device_id=torch.device("cpu"), use_orig_params=True)
        strategy = FSDPStrategy()
        strategy.model = wrapped
        trainer = SimpleNamespace(
            strategy=strategy,
            precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext),
            global_rank=rank,
            world_size=world,
        )
        pl_module = SimpleNamespace(model=module.model, device=torch.device("cpu"))
        result = cb.evaluate(trainer, pl_module)  # type: ignore[arg-type]
        # the root's own parameters are sharded again afterwards (nothing left gathered)
        assert module.model.language_model.get_input_embeddings().weight.shape != full_embed
        Path(out, f"rank{rank}.json").write_text(json.dumps(_figures(result)))
    finally:
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.slow
def test_image_reliance_under_fsdp_gives_the_unsharded_figures(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    _write_corpus(corpus)
    model, cb = _setup(corpus)
    single = SimpleNamespace(
        strategy=SimpleNamespace(),
        precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext),
        global_rank=0,
        world_size=1,
    )
    expected = _figures(cb.evaluate(single, SimpleNamespace(model=model, device=torch.device("cpu"))))  # type: ignore[arg-type]
    assert all(np.isfinite(v) for v in expected.values())
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, _free_port(), str(corpus), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):  # every rank gets the all-reduced figures
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
