"""Sharding windows across ranks with one writer (rank 0).

Every rank reads and runs its share of each group of windows; the scores travel to rank 0 with
``torch.distributed.gather_object`` (gloo works on CPU and GPU hosts alike), and only rank 0
blends and writes. ``spawn_ranks`` starts N local processes; under ``torchrun`` the ranks come
from the environment instead.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from vitp_geo.launch import launch_rank, launch_world_size


@dataclass(frozen=True)
class RankInfo:
    """This process's place among the inference ranks."""

    rank: int = 0
    world: int = 1

    @property
    def is_writer(self) -> bool:
        return self.rank == 0


def gather_to_writer(obj: Any, info: RankInfo) -> list[Any] | None:
    """Rank 0 gets ``[obj of rank 0, obj of rank 1, …]``; other ranks get None."""
    if info.world == 1:
        return [obj]
    out: list[Any] | None = [None] * info.world if info.is_writer else None
    torch_dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_writer(obj: Any, info: RankInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if info.world == 1:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, world: int, port: int, fn: Callable[[RankInfo], Any]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch_dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        fn(RankInfo(rank, world))
        # every rank leaves the group together: a rank that tore gloo down while another still
        # had its last collective in flight aborted that one ("terminate called without an
        # active exception", SIGABRT after its outputs were written; seen once under load in CI).
        # A rank that failed never gets here; the barrier then fails on the others, and that
        # error is not raised, so that the failed rank's own error is the one reported.
        try:
            torch_dist.barrier()
        except RuntimeError:
            pass
    finally:
        torch_dist.destroy_process_group()


def spawn_ranks(fn: Callable[[RankInfo], Any], world: int) -> None:
    """Run ``fn(RankInfo)`` in ``world`` local processes (``fn`` must be picklable).

    Raises:
        RuntimeError: if any rank fails (the message carries the rank's error).
    """
    if world < 1:
        raise ValueError(f"devices must be >= 1, got {world}")
    try:
        mp.spawn(_entry, args=(world, _free_port(), fn), nprocs=world, join=True)
    except mp.ProcessRaisedException as err:  # re-raise with the child's message, no traceback noise
        raise RuntimeError(f"an inference rank failed: {str(err).strip().splitlines()[-1]}") from None


def env_rank_info() -> RankInfo | None:
    """The ranks a launcher set (``vitp_geo.launch``: torchrun's RANK / WORLD_SIZE, SLURM's),
    initialising gloo; None when absent."""
    rank, world = launch_rank(), launch_world_size()
    if rank is None or world is None:
        return None
    info = RankInfo(rank, world)
    if info.world > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group("gloo", rank=info.rank, world_size=info.world)
    return info
