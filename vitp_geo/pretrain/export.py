"""The trained ViT's full weights for export, whatever the distribution strategy.

Under DDP (or one device) every rank holds the whole model and ``vision_model.state_dict()`` is
the backbone. Under FSDP each rank holds a shard: the module's own ``state_dict()`` gives flat
or empty tensors (e.g. ``pos_embed`` as shape (12480,) on rank 0 and (0,) on rank 1 for the tiny
ViT), so the backbone must come from the gathered full state dict — a collective call that every
rank makes; rank 0 receives the weights on the CPU. DeepSpeed ZeRO stage 3 partitions the
parameters too and is refused before training (Lightning gathers its weights only into its own
checkpoint format); stages 1 and 2 keep whole parameters on every rank and export as DDP does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

VISION_PREFIX = "model.vision_model."  # the ViT inside ViTPPretrainModule (module.model.vision_model)


def check_export_strategy(strategy: str) -> None:
    """Refuse, before any training, strategies whose weights cannot be exported here.

    Raises:
        ValueError: DeepSpeed ZeRO stage 3 (names the strategy).
    """
    name = strategy.lower().replace("-", "_")
    if name.startswith("deepspeed") and ("stage_3" in name or "stage3" in name):
        raise ValueError(
            f"--strategy {strategy}: ZeRO stage 3 partitions the ViT's weights and the backbone export "
            "cannot gather them; use fsdp (exported from the gathered full state dict), deepspeed "
            "(stage 2) or ddp"
        )


def _is_fsdp(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return any(isinstance(m, FullyShardedDataParallel) for m in module.modules())


def _is_rank_zero() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def full_state_dict(module: nn.Module) -> dict[str, Tensor] | None:
    """The unsharded state dict of ``module`` on rank 0 (CPU tensors), ``None`` on other ranks.

    A collective call when ``module`` is (or contains) FSDP: every rank must call it.
    """
    if _is_fsdp(module):
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        config = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        with FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT, config):
            state = module.state_dict()
    else:
        state = module.state_dict()
    if not _is_rank_zero():
        return None
    return {k: v.detach().cpu() for k, v in state.items()}


def vision_state(state: dict[str, Tensor], prefix: str = VISION_PREFIX) -> dict[str, Tensor]:
    """The ViT's entries of a full module state dict, prefix removed.

    Raises:
        ValueError: no key starts with ``prefix``.
    """
    out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"no '{prefix}*' weights in the state dict (first keys: {list(state)[:3]})")
    return out


def gather_vision_state(trainer: Any, module: nn.Module) -> dict[str, Tensor] | None:
    """The pretrained ViT's full weights after ``trainer.fit`` (rank 0; ``None`` elsewhere).

    Every rank must call it (FSDP gathers collectively). Under FSDP the gathered module is
    ``trainer.strategy.model`` (the wrapped LightningModule, whose full state dict has the
    LightningModule's own keys); otherwise ``module`` itself (not the DDP wrapper, which adds
    ``module.`` to every key).
    """
    wrapped = getattr(trainer.strategy, "model", None)
    target = wrapped if isinstance(wrapped, nn.Module) and _is_fsdp(wrapped) else module
    state = full_state_dict(target)
    return None if state is None else vision_state(state)
