"""Per-step metrics for pretraining: ``metrics.csv`` while training, ``loss.png`` at the end."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import lightning as L

from vitp_geo.io.atomic import atomic_output

COLUMNS = ("step", "loss", "lr", "kept_image_tokens", "image_tokens", "images_per_s")
# Image reliance on held-out records (nats per answer; vitp_geo.pretrain.reliance), filled on the
# steps where the check ran and empty elsewhere.
VAL_COLUMNS = ("val/loss", "val/loss_shuffled", "val/loss_blank", "val/image_gain", "val/image_gain_decided")
ALL_COLUMNS = COLUMNS + VAL_COLUMNS


class MetricsCSV(L.Callback):
    """Appends one row per optimizer step to ``metrics.csv`` (rank 0 only).

    ``images_per_s`` counts image tiles through the vision tower per second on this rank, timed
    from the end of one step to the end of the next. A resumed run appends to the same file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._t: float | None = None
        self._lr = 0.0
        self._step = -1
        self.rows: list[dict[str, float]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t = time.perf_counter()
        self._step = trainer.global_step
        if not trainer.is_global_zero:
            return
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("w", newline="") as fh:
                csv.writer(fh).writerow(ALL_COLUMNS)
        elif trainer.global_step > 0:
            # Resumed: drop rows logged after the checkpoint (the interrupted run got further).
            with self.path.open(newline="") as fh:
                rows = list(csv.reader(fh))
            kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= trainer.global_step]
            with atomic_output(self.path) as tmp, tmp.open("w", newline="") as fh:
                csv.writer(fh).writerows(kept)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # The scheduler steps after the optimizer: read the lr this step actually uses now.
        self._lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # One row per optimizer step: with gradient accumulation several micro-batches make a step.
        if trainer.global_step == self._step:
            return
        self._step = trainer.global_step
        now = time.perf_counter()
        elapsed = max(now - (self._t or now), 1e-9)
        self._t = now
        stats = getattr(pl_module, "step_stats", None)
        if stats is None:
            return
        val: dict[str, float] = getattr(pl_module, "pending_val", None) or {}
        setattr(pl_module, "pending_val", None)  # noqa: B010 - consumed
        setattr(pl_module, "step_stats", type(stats)())  # noqa: B010 - reset for the next step
        if not trainer.is_global_zero or stats.micro_batches == 0:
            return
        row: dict[str, float] = {
            "step": trainer.global_step,
            "loss": stats.loss,  # unscaled mean over micro-batches (Lightning divides by accumulate)
            "lr": self._lr,
            "kept_image_tokens": stats.kept_image_tokens,
            "image_tokens": stats.image_tokens,
            "images_per_s": stats.tiles / elapsed,
            **val,
        }
        self.rows.append(row)
        with self.path.open("a", newline="") as fh:
            csv.writer(fh).writerow([_cell(row.get(c)) for c in ALL_COLUMNS])


def _cell(value: float | int | None) -> str | int:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``metrics.csv`` as floats (an empty cell, e.g. a step without a check, is NaN)."""
    with Path(path).open(newline="") as fh:
        return [
            {k: float(v) if v not in ("", None) else float("nan") for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]


def plot_loss(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Plot loss (raw and smoothed) against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)
    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    val = [r for r in rows if math.isfinite(r.get("val/loss", float("nan")))]
    fig, axes = plt.subplots(1, 2 if val else 1, figsize=(11 if val else 6, 3.5), dpi=100, squeeze=False)
    ax = axes[0, 0]
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
    if len(losses) >= 5:
        k = max(2, len(losses) // 20)
        smooth = [
            sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1])
            for i in range(len(losses))
        ]
        ax.plot(steps, smooth, lw=1.8, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("ViTP pretraining loss")
    ax.legend()
    if val:
        vx = [r["step"] for r in val]
        ax2 = axes[0, 1]
        for key, label in (
            ("val/loss", "true images"),
            ("val/loss_shuffled", "shuffled images"),
            ("val/loss_blank", "blank images"),
        ):
            ax2.plot(vx, [r[key] for r in val], marker="o", ms=3, label=label)
        ax2.set_xlabel("step")
        ax2.set_ylabel("held-out answer loss (nats / answer)")
        gain_ax = ax2.twinx()  # the gain is small next to the losses: its own axis
        gain_ax.plot(vx, [r["val/image_gain"] for r in val], "k--", marker="s", ms=3, label="image gain")
        gain_ax.axhline(0.0, color="grey", lw=0.6)
        gain_ax.set_ylabel("image gain = shuffled − true (nats / answer)")
        gain_ax.legend(loc="lower left")
        gain = val[-1]["val/image_gain_decided"]
        if not math.isfinite(gain):
            gain = val[-1]["val/image_gain"]
        ax2.set_title(f"image reliance: gain {gain:+.2f} nats/answer at the end")
        ax2.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_png
