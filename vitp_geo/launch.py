"""Where this process stands among the ranks a launcher started: the one place that reads it.

torchrun and Lightning set ``RANK`` / ``WORLD_SIZE`` (and ``LOCAL_RANK``); SLURM sets
``SLURM_PROCID`` / ``SLURM_NTASKS``. Read before any process group exists (to let only the first
process check or write the run folder, or to join the ranks for inference); inside a running
group ask ``torch.distributed`` instead.
"""

from __future__ import annotations

import os

__all__ = ["launch_rank", "launch_world_size"]


def launch_rank() -> int | None:
    """This process's global rank from the launcher's environment (``RANK``, ``SLURM_PROCID``,
    then ``LOCAL_RANK``), or None when no launcher set one."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return None


def launch_world_size() -> int | None:
    """The number of ranks from the launcher's environment (``WORLD_SIZE``, ``SLURM_NTASKS``), or None."""
    for var in ("WORLD_SIZE", "SLURM_NTASKS"):
        if var in os.environ:
            return int(os.environ[var])
    return None
