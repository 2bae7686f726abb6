"""Backbone export under FSDP: from the gathered full state dict, never from a rank's shard.

Lightning's ``FSDPStrategy`` refuses the CPU accelerator, so the CPU test drives torch's FSDP
directly (2 processes, gloo) on the same module layout ``ViTPPretrainModule`` has
(``model.vision_model``) and runs the export path ``pretrain/run.py`` uses; the Lightning run
through the CLI needs two GPUs and is skipped without them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Holder(nn.Module):
    """The layout of ViTPPretrainModule: ``module.model.vision_model``."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.vision_model = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model.forward_features(x)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import timm
    from safetensors.torch import load_file
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    import vitp_geo.models  # noqa: F401  (registers vitp_tiny_*)
    from vitp_geo.models.vit import export_backbone
    from vitp_geo.pretrain.export import gather_vision_state

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        vit = timm.create_model("vitp_tiny_patch14_112", pretrained=False)
        initial = {k: v.clone() for k, v in vit.state_dict().items()}
        module = _Holder(vit)
        wrapped = FSDP(module, device_id=torch.device("cpu"), use_orig_params=True)
        opt = torch.optim.SGD(wrapped.parameters(), lr=0.5)
        torch.manual_seed(rank)
        wrapped(torch.rand(2, 3, 112, 112)).square().mean().backward()
        opt.step()
        with FSDP.summon_full_params(wrapped):  # an independent way to see the trained weights
            trained = {k: v.detach().clone() for k, v in vit.state_dict().items()}
        shard = vit.state_dict()["pos_embed"].shape
        assert len(shard) == 1  # each rank's module holds flat shards: (n,) on rank 0, (0,) on rank 1
        with pytest.raises(ValueError, match="not the ViT's full weights"):
            export_backbone(vit, Path(out) / f"naive{rank}")  # the old export refuses instead of writing them

        state = gather_vision_state(SimpleNamespace(strategy=SimpleNamespace(model=wrapped)), module)
        if rank != 0:
            assert state is None
            return
        assert state is not None
        weights, meta_path = export_backbone(vit, out, state=state)
        meta = json.loads(meta_path.read_text())
        rebuilt = timm.create_model(meta["arch"], pretrained=False, **meta["model_kwargs"])
        rebuilt.load_state_dict(load_file(str(weights)))  # strict: every key, every shape
        exported = rebuilt.state_dict()
        assert set(exported) == set(trained)
        for k, v in trained.items():
            torch.testing.assert_close(exported[k], v, rtol=0, atol=0)
        assert not torch.equal(exported["blocks.0.attn.qkv.weight"], initial["blocks.0.attn.qkv.weight"])
        (Path(out) / "ok").write_text("rank 0 exported the gathered weights")
    finally:
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_export_writes_the_gathered_trained_backbone(tmp_path: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "ok").is_file()


def test_deepspeed_stage_3_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vitp_geo.cli.main import main
    from vitp_geo.pretrain.export import check_export_strategy

    for ok in ("auto", "ddp", "fsdp", "deepspeed", "deepspeed_stage_2"):
        check_export_strategy(ok)
    out = tmp_path / "run"
    assert (
        main(["pretrain", "--strategy", "deepspeed_stage_3", "--max-steps", "1", "--output", str(out)]) == 2
    )
    assert "deepspeed_stage_3: ZeRO stage 3 partitions the ViT's weights" in capsys.readouterr().err
    assert not (out / "backbone.safetensors").exists()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="Lightning's FSDPStrategy needs 2 CUDA devices")
def test_fsdp_pretraining_through_the_cli_exports_a_loadable_backbone(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import load_file

    out = tmp_path / "fsdp"
    cmd = [sys.executable, "-m", "vitp_geo.cli.main", "pretrain", "--max-steps", "3", "--batch-size", "2"]
    cmd += ["--devices", "2", "--strategy", "fsdp", "--accelerator", "gpu", "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "backbone.json").read_text())
    model = timm.create_model(meta["arch"], pretrained=False, **meta["model_kwargs"])
    model.load_state_dict(load_file(str(out / "backbone.safetensors")))
