"""Shared machinery of the dense ViTP tasks (segmentation, change): a torchgeo ``BaseTask``.

Subclasses set ``KIND`` and say what their model is in ``model_fields``; the one
``configure_models`` here builds backbone → neck → (fusion →) head from it. This class also gives
them the loss, the confusion-matrix metrics, layer-wise lr decay, freezing, the learning-rate
schedule and the ``ModelCard`` written into every checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR
from torchgeo.trainers import BaseTask

from vitp_geo.io.model_card import CARD_KEY, ModelCard
from vitp_geo.models.attention import training_attention, vit_tokens
from vitp_geo.tasks.args import BackboneArgs, InputArgs, OptimArgs, as_group, flat_hparams, nest_flat_hparams
from vitp_geo.tasks.backbone import build_backbone
from vitp_geo.tasks.losses import build_loss
from vitp_geo.tasks.metrics import confusion_metric
from vitp_geo.tasks.models import arch_for, assemble
from vitp_geo.tasks.optim import lr_factor, param_groups

BACKBONE_PREFIX = "model.neck.backbone."
# Distinct default colours for up to 12 classes (class 0 black, as for background / no change).
DEFAULT_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
)


def check_class_lists(
    num_classes: int, class_names: Sequence[Any] | None, class_colors: Sequence[Any] | None
) -> None:
    """``class_names`` / ``class_colors`` (when given) have one entry per class."""
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class_names for num_classes={num_classes}")
    if class_colors is not None and len(class_colors) != num_classes:
        raise ValueError(f"{len(class_colors)} class_colors for num_classes={num_classes}")


class DenseTask(BaseTask):
    """Base for ``SegmentationTask`` and ``ChangeDetectionTask`` (not used directly)."""

    KIND = "segmentation"
    monitor = "val_mIoU"
    mode = "max"
    STEP_SCHEDULE = False  # the ``step`` lr schedule counts epochs: detection's

    @classmethod
    def grouped(
        cls,
        backbone: BackboneArgs | dict[str, Any] | None,
        optim: OptimArgs | dict[str, Any] | None,
        inputs: InputArgs | dict[str, Any] | None,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """The three shared groups (``tasks.args``) as the plain dicts the hyper-parameters record.

        Raises:
            TypeError: a group given as anything but its dataclass, its dict or None (a flat
                ``backbone="vitp_..."`` is the old spelling; the message names the new one).
            ValueError: the ``step`` schedule on a task without it.
        """
        groups = (
            as_group(BackboneArgs, backbone, "backbone"),
            as_group(OptimArgs, optim, "optim"),
            as_group(InputArgs, inputs, "inputs"),
        )
        if groups[1]["schedule"] == "step" and not cls.STEP_SCHEDULE:
            raise ValueError(
                f"optim.schedule 'step' is for detection, not {cls.KIND}: use poly, cosine or constant"
            )
        return groups

    @property
    def hp(self) -> dict[str, Any]:
        """The hyper-parameters under their flat names (``backbone_weights``, ``lr``, ...; see
        ``tasks.args.flat_hparams``)."""
        return flat_hparams(self.hparams)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Lightning's, also for a checkpoint saved before the argument groups (flat hyper-parameters:
        regrouped by ``tasks.args.nest_flat_hparams``)."""
        ckpt = torch.load(str(checkpoint_path), map_location="cpu", weights_only=True)
        saved = ckpt.get("hyper_parameters") or {}
        nested = nest_flat_hparams(saved)
        if nested != saved:
            kwargs = {**{k: v for k, v in nested.items() if k in ("backbone", "optim", "inputs")}, **kwargs}
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    # ------------------------------------------------------------------ configure_*
    def model_fields(self) -> dict[str, Any]:
        """The task's model description for ``tasks.models.assemble`` (kind, neck, head, classes, ...)."""
        raise NotImplementedError

    def configure_models(self) -> None:
        """Backbone (loaded or random) → neck → head, one path for every dense task; records
        ``self.arch`` for the card."""
        hp = self.hp
        vit = build_backbone(
            hp["backbone"],
            weights=hp["backbone_weights"],
            img_size=hp["img_size"],
            in_channels=hp["in_channels"],
            rgb_channels=hp["rgb_channels"],
            drop_path_rate=hp["drop_path_rate"],
        )
        fields = self.model_fields()
        self.model = assemble(vit, fields)
        self.arch = arch_for(vit, self.model, **fields)
        self._apply_freezing()

    def configure_losses(self) -> None:
        """The loss named by ``loss`` with ``ignore_index`` and ``class_weights``."""
        self.criterion = build_loss(self.hp["loss"], self.hp["ignore_index"], self.hp["class_weights"])

    def configure_metrics(self) -> None:
        """A confusion matrix per stage; all scores are derived from it (see ``tasks.metrics``)."""
        k, ignore = self.num_classes, self.hp["ignore_index"]
        self.train_confusion = confusion_metric(k, ignore)
        self.val_confusion = confusion_metric(k, ignore)
        self.test_confusion = confusion_metric(k, ignore)

    def _apply_freezing(self) -> None:
        vit = self.backbone
        if self.hp["freeze_backbone"]:
            vit.requires_grad_(False)
            return
        n = int(self.hp["freeze_blocks"])
        if not 0 <= n <= len(vit.blocks):
            raise ValueError(f"freeze_blocks must be in [0, {len(vit.blocks)}], got {n}")
        if n > 0:
            for part in (vit.patch_embed, *vit.blocks[:n]):
                part.requires_grad_(False)
            for name in ("cls_token", "pos_embed", "reg_token"):
                p = getattr(vit, name, None)
                if isinstance(p, torch.nn.Parameter):
                    p.requires_grad_(False)

    # ------------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        return int(self.hp["num_classes"])

    @property
    def backbone(self) -> Any:
        """The timm ViT inside the model."""
        return self.model.neck.backbone

    @property
    def class_names(self) -> list[str]:
        names = self.hp.get("class_names")
        if names is None:
            return [f"class_{i}" for i in range(self.num_classes)]
        return list(names)

    # ------------------------------------------------------------------ steps
    def _inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch["image"], batch["mask"]
        if y.ndim == 4 and y.shape[1] == 1:  # (B, 1, H, W) → (B, H, W)
            y = y[:, 0]
        return x.float(), y.long()

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        x, y = self._inputs(batch)
        logits = self(x)  # (B, K, H, W)
        loss: Tensor = self.criterion(logits, y)
        self.log(
            f"{stage}_loss",
            loss,
            batch_size=x.shape[0],
            prog_bar=stage != "test",
            on_epoch=True,
            on_step=stage == "train",
        )
        getattr(self, f"{stage}_confusion").update(logits.argmax(dim=1), y)
        return loss

    def training_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        # the math kernel under CPU bf16 for short sequences (models.attention)
        with training_attention(vit_tokens(self.backbone, batch["image"].shape[-2:])):
            return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Class probabilities (B, K, H, W)."""
        return self(batch["image"].float()).softmax(dim=1)

    def _log_scores(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_confusion")
        if not metric.update_called:
            return
        scores = self.compute_scores(metric.compute())
        self.log_dict({f"{stage}_{k}": v for k, v in scores.items()}, sync_dist=False)
        metric.reset()

    def compute_scores(self, cm: Tensor) -> dict[str, float]:
        """Loggable scores from a confusion matrix (per task; see subclasses)."""
        raise NotImplementedError

    def on_train_epoch_end(self) -> None:
        self._log_scores("train")

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> OptimizerLRScheduler:
        """AdamW with layer-wise lr decay, linear warm-up then poly / cosine / constant per step."""
        groups = param_groups(
            self,
            lr=self.hp["lr"],
            weight_decay=self.hp["weight_decay"],
            layer_decay=self.hp["layer_decay"],
            depth=len(self.backbone.blocks),
            backbone_prefix=BACKBONE_PREFIX,
        )
        optimizer = AdamW(groups, lr=self.hp["lr"], betas=(0.9, 0.999))
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        scheduler = LambdaLR(optimizer, self.lr_lambda(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_lambda(self, total: int) -> Callable[[int], float]:
        """The lr multiplier by optimiser step (``tasks.optim.lr_factor``) over ``total`` steps."""
        warmup, schedule = int(self.hp["warmup_steps"]), str(self.hp["schedule"])
        lr_factor(0, total, warmup, schedule)  # validates the schedule name early
        return lambda step: lr_factor(step, total, warmup, schedule)

    # ------------------------------------------------------------------ the model card
    def _datamodule_attr(self, name: str) -> Any:
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        return getattr(dm, name, None)

    def _channel_stats(self, key: str, default: float, channels: int) -> list[float]:
        value = self.hp.get(key)
        if value is None:
            value = self._datamodule_attr(key)
        if value is None:
            if self._datamodule_attr("setup") is not None:  # trained on a datamodule that does not say
                import warnings

                warnings.warn(
                    f"model card: neither the task nor the datamodule sets {key}; recording {default} "
                    f"(x / 255) — set model.init_args.inputs.{key} to what the datamodule feeds, or infer will "
                    "normalise differently",
                    stacklevel=2,
                )
            return [default] * channels
        values = torch.as_tensor(value, dtype=torch.float64).flatten().tolist()
        if len(values) == 1:
            values = values * channels
        if len(values) != channels:
            raise ValueError(f"{key} has {len(values)} values but the model takes {channels} channels")
        return [float(v) for v in values]

    def model_card(self) -> ModelCard:
        """What ``vitp-geo infer`` needs: classes, colours, bands, statistics, tile size, arch."""
        c = int(self.hp["in_channels"])
        colors = self.hp.get("class_colors")
        if colors is None:
            colors = [DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(self.num_classes)]
        tile = (
            self.hp.get("img_size")
            or self._datamodule_attr("patch_size")
            or self.backbone.patch_embed.img_size[0]
        )
        if isinstance(tile, tuple | list):
            tile = tile[0]
        return ModelCard(
            task=self.KIND,
            class_names=self.class_names,
            class_colors=[(int(col[0]), int(col[1]), int(col[2])) for col in colors],
            bands=list(self.hp.get("bands") or self._datamodule_attr("bands") or range(1, c + 1)),
            # what the datamodule fed (vitp_geo.datamodules.geotiff.default_stats: ImageNet x 255 for 3 bands);
            # unknown: x / 255, with a warning when a datamodule was attached
            mean=self._channel_stats("mean", 0.0, c),
            std=self._channel_stats("std", 255.0, c),
            tile_size=int(tile),
            arch=dict(self.arch),  # type: ignore[arg-type]
            render=self._render_spec(),
        )

    def _render_spec(self) -> dict[str, Any]:
        """How inference must turn scene bands into model input (``raw``: as trained, no render rule)."""
        render = dict(self.hp.get("render") or {})
        if "raw" not in render and self._datamodule_attr("raw_bands"):
            render["raw"] = True
        if render.get("raw") and "dtype" not in render and self._datamodule_attr("raw_dtype"):
            render["dtype"] = str(self._datamodule_attr("raw_dtype"))  # infer refuses other value types
        # Datamodules whose inputs need more than bands (the medical slice rule, label values).
        for key, value in (self._datamodule_attr("render_spec") or {}).items():
            render.setdefault(key, value)
        return render

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CARD_KEY] = self.model_card().to_dict()
