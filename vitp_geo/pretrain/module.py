"""The LightningModule for ViTP pretraining: end-to-end training of ViT + projector + LLM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import nn

from vitp_geo.models.attention import training_attention, vit_tokens
from vitp_geo.tasks.optim import decay_groups, lr_factor


@dataclass
class StepStats:
    """Per-optimizer-step sums over micro-batches (gradient accumulation): loss, tokens, tiles."""

    loss_sum: float = 0.0
    micro_batches: int = 0
    kept_image_tokens: int = 0
    image_tokens: int = 0
    tiles: int = 0

    def add(self, loss: float, kept: int, total: int) -> None:
        self.loss_sum += loss
        self.micro_batches += 1
        self.kept_image_tokens += kept
        self.image_tokens += total

    @property
    def loss(self) -> float:
        """Mean unscaled loss over the step's micro-batches (NaN if none was finite)."""
        return self.loss_sum / self.micro_batches if self.micro_batches else float("nan")


def step_tokens(model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """The longest sequence a training step attends over: its padded text, or one ViT tile's tokens."""
    return max(
        int(batch["input_ids"].shape[1]), vit_tokens(model.vision_model, batch["pixel_values"].shape[-2:])
    )


class NonFiniteLossError(RuntimeError):
    """Raised when too many consecutive steps produced a non-finite loss."""


class ViTPPretrainModule(L.LightningModule):
    """Trains a ``ViTPModel`` on batches from ``InstructionDataModule``.

    Args:
        model: the VLM (``vision_model``, ``mlp1``, ``language_model``).
        lr: peak learning rate.
        weight_decay: AdamW weight decay on matrices.
        warmup_ratio: share of ``max_steps`` for linear warm-up.
        max_steps: total optimizer steps (sets the cosine schedule).
        freeze_vision, freeze_projector, freeze_llm: keep these parts fixed.
        vision_frozen_steps: keep the ViT fixed for the first N optimizer steps (it stays in the
            optimizer; it gets no gradient, so no backward pass through it, until step N).
        vision_lr_scale: the ViT's learning rate as a share of ``lr`` (the schedule's shape is shared).
        vision_warmup_steps: after ``vision_frozen_steps``, the ViT's learning rate rises linearly
            from 0 over this many steps. Adam's first steps on fresh moments move every weight by
            about the learning rate whatever its gradient, which would shake a base ViT at once.
        max_nonfinite: consecutive non-finite losses tolerated before stopping.
        seed: every batch reseeds the RNGs from ``(seed, epoch, batch index, rank)``, so VRL drops and
            drop-path are reproducible and a resumed run continues exactly as an uninterrupted one.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float,
        weight_decay: float,
        warmup_ratio: float,
        max_steps: int,
        freeze_vision: bool = False,
        freeze_projector: bool = False,
        freeze_llm: bool = False,
        vision_frozen_steps: int = 0,
        vision_lr_scale: float = 1.0,
        vision_warmup_steps: int = 0,
        max_nonfinite: int = 10,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.model: Any = model  # ViTPModel (or any module with its parts and output fields)
        self.lr, self.weight_decay, self.warmup_ratio, self.max_steps = (
            lr,
            weight_decay,
            warmup_ratio,
            max_steps,
        )
        self.max_nonfinite = max_nonfinite
        self.seed = seed
        for part, frozen in (
            ("vision_model", freeze_vision),
            ("mlp1", freeze_projector),
            ("language_model", freeze_llm),
        ):
            for p in getattr(model, part).parameters():
                p.requires_grad_(not frozen)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("every part is frozen: nothing would train")
        self.freeze_vision = freeze_vision
        self.vision_frozen_steps = vision_frozen_steps
        if vision_lr_scale <= 0:
            raise ValueError(f"vision_lr_scale must be > 0, got {vision_lr_scale}")
        if vision_warmup_steps < 0:
            raise ValueError(f"vision_warmup_steps must be >= 0, got {vision_warmup_steps}")
        self.vision_lr_scale, self.vision_warmup_steps = vision_lr_scale, vision_warmup_steps
        self.nonfinite_steps = 0
        self._nonfinite_run = 0
        # Sums over the micro-batches of the current optimizer step (read and reset by MetricsCSV).
        self.step_stats = StepStats()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        step_seed = (
            ((self.seed * 1_000_003 + self.current_epoch) * 1_000_033 + batch_idx) * 65_537 + self.global_rank
        ) % (2**62)
        torch.manual_seed(step_seed)
        self.model.vrl_generator = torch.Generator().manual_seed(step_seed + 1)  # type: ignore[assignment]
        if self.vision_frozen_steps and not self.freeze_vision:
            # Set every step (not once at the switch), so that a run resumed in either part agrees.
            trains = self.global_step >= self.vision_frozen_steps
            for p in self.model.vision_model.parameters():
                p.requires_grad_(trains)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        with training_attention(step_tokens(self.model, batch)):  # models.attention
            out = self.model(
                pixel_values=batch["pixel_values"].to(self.dtype_for_vision()),
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
                return_logits=False,  # the LM head on answer positions only
            )
        loss = out.loss
        finite = torch.isfinite(loss.detach()).to(torch.float32)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # every rank skips together, or none
        self.step_stats.tiles += int(batch["pixel_values"].shape[0])
        if finite.item() < 1.0:
            self.nonfinite_steps += 1
            self._nonfinite_run += 1
            if self._nonfinite_run >= self.max_nonfinite:
                raise NonFiniteLossError(
                    f"the loss was non-finite for {self._nonfinite_run} steps in a row "
                    f"(step {self.global_step}); lower --lr, check the data, or use --precision 32-true"
                )
            return None  # Lightning skips backward and the optimizer step
        self._nonfinite_run = 0
        self.step_stats.add(float(loss.detach()), int(out.kept_image_tokens), int(out.total_image_tokens))
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=int(batch["input_ids"].shape[0]))
        return loss

    def dtype_for_vision(self) -> torch.dtype:
        return next(self.model.vision_model.parameters()).dtype

    def configure_optimizers(self) -> Any:
        # Biases, norms, layer-scale gammas, tokens and position embeddings are not decayed; warm-up
        # then cosine to 0: the fine-tuning tasks' rules (tasks.optim), without layer decay.
        # The ViT's groups come last and take vision_lr_scale and its own warm-up; the first group
        # carries the run's lr (what metrics.csv logs).
        vision = {id(p) for p in self.model.vision_model.parameters()}
        groups = decay_groups(self.model, self.weight_decay)
        split = [
            {**g, "params": [p for p in g["params"] if (id(p) in vision) == is_vision], "vision": is_vision}
            for is_vision in (False, True)
            for g in groups
        ]
        if not vision:
            # FSDP without use_orig_params replaces the ViT's parameters by views of one flat
            # parameter: the ViT's own rate (and its fixed steps' zero) would silently become the
            # run's. Lightning's FSDP strategy sets use_orig_params=True; anything else stops here.
            raise ValueError(
                "the ViT (vision_model) holds no parameters of its own here (a sharding wrapper with "
                "flat parameters, e.g. FSDP with use_orig_params=False?): its lr share and warm-up "
                "cannot be applied"
            )
        opt = torch.optim.AdamW([g for g in split if g["params"]], lr=self.lr, betas=(0.9, 0.999))
        warmup = int(self.warmup_ratio * self.max_steps)
        start, ramp = self.vision_frozen_steps, self.vision_warmup_steps

        def factor(step: int) -> float:
            return lr_factor(step, self.max_steps, warmup, "cosine")

        def vision_factor(step: int) -> float:
            rise = min(1.0, max(0, step - start) / ramp) if ramp else 1.0
            return factor(step) * self.vision_lr_scale * rise

        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, [vision_factor if g["vision"] else factor for g in opt.param_groups]
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vitp_geo_pretrain"] = {"nonfinite_steps": self.nonfinite_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_steps = int(checkpoint.get("vitp_geo_pretrain", {}).get("nonfinite_steps", 0))
