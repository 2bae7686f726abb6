"""Rank discovery in one place (``vitp_geo.launch``), used by pretraining and inference."""

from __future__ import annotations

import pytest

from vitp_geo.launch import launch_rank, launch_world_size

VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS")


@pytest.fixture
def env(monkeypatch):
    for var in VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_torchrun_wins_over_slurm_and_local_rank_is_the_last_resort(env):
    assert launch_rank() is None and launch_world_size() is None
    env.setenv("LOCAL_RANK", "3")
    assert launch_rank() == 3
    env.setenv("SLURM_PROCID", "5")
    env.setenv("SLURM_NTASKS", "8")
    assert (launch_rank(), launch_world_size()) == (5, 8)
    env.setenv("RANK", "1")
    env.setenv("WORLD_SIZE", "2")
    assert (launch_rank(), launch_world_size()) == (1, 2)


def test_pretraining_and_inference_read_the_same_ranks(env, tmp_path):
    """A SLURM rank other than 0 neither checks the run folder nor starts as the writer."""
    from vitp_geo.pretrain.config import PretrainConfig
    from vitp_geo.pretrain.run import check_earlier_run
    from vitp_geo.tiling.distributed import env_rank_info

    (tmp_path / "backbone.safetensors").write_bytes(b"earlier")
    cfg = PretrainConfig()
    with pytest.raises(ValueError, match="holds an earlier run"):
        check_earlier_run(cfg, tmp_path)  # rank 0 (no launcher) refuses
    env.setenv("SLURM_PROCID", "1")
    env.setenv("SLURM_NTASKS", "1")  # one task: no process group is started
    check_earlier_run(cfg, tmp_path)  # rank 1 leaves it to rank 0 (read RANK / LOCAL_RANK only before)
    info = env_rank_info()
    assert info is not None and (info.rank, info.world) == (1, 1) and not info.is_writer
