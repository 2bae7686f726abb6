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
# Multiple-choice accuracy on the closed-task held-out records, true vs shuffled images, and what
# chance scores. Per task, ``val/accuracy_<task>``, ``val/accuracy_shuffled_<task>`` and
# ``val/accuracy_chance_<task>``, and the gap's standard error (``val/accuracy_gap_se`` and
# ``val/accuracy_gap_se_<task>``), join the header when a check first reports them (MetricsCSV
# widens the file for new columns).
ACCURACY_COLUMNS = ("val/accuracy", "val/accuracy_shuffled", "val/accuracy_chance")
ALL_COLUMNS = COLUMNS + VAL_COLUMNS + ACCURACY_COLUMNS


class MetricsCSV(L.Callback):
    """Appends one row per optimizer step to ``metrics.csv`` (rank 0 only).

    ``images_per_s`` counts image tiles through the vision tower per second on this rank, timed
    from the end of one step to the end of the next. A resumed run appends to the same file.

    The header starts as :data:`ALL_COLUMNS`. A row with a column the header lacks (e.g. a
    per-task accuracy) widens the file: the header gains it and earlier rows get empty cells. A
    file from an older version, without some of :data:`ALL_COLUMNS`, is widened the same way
    when a run resumes or appends to it, so rows never shift under a shorter header.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._t: float | None = None
        self._lr = 0.0
        self._step = -1
        self.rows: list[dict[str, float]] = []
        self.header: list[str] = list(ALL_COLUMNS)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t = time.perf_counter()
        self._step = trainer.global_step
        if not trainer.is_global_zero:
            return
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.header = list(ALL_COLUMNS)
            with self.path.open("w", newline="") as fh:
                csv.writer(fh).writerow(self.header)
            return
        with self.path.open(newline="") as fh:
            rows = list(csv.reader(fh))
        header, body = (rows[0], rows[1:]) if rows else ([], [])
        kept = body
        if trainer.global_step > 0:
            # Resumed: drop rows logged after the checkpoint (the interrupted run got further).
            kept = [r for r in body if r and int(float(r[0])) <= trainer.global_step]
        self.header = header + [c for c in ALL_COLUMNS if c not in header]
        if kept != body or self.header != header:
            self._rewrite(kept)

    def _rewrite(self, body: list[list[str]]) -> None:
        """Write ``self.header`` and ``body`` (rows padded to the header's width) atomically."""
        width = len(self.header)
        with atomic_output(self.path) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.header)
            writer.writerows(r + [""] * (width - len(r)) for r in body if r)

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
        new = [c for c in row if c not in self.header]
        if new:  # a column the file lacks (first check of a task): widen the file first
            with self.path.open(newline="") as fh:
                body = list(csv.reader(fh))[1:]
            self.header += new
            self._rewrite(body)
        with self.path.open("a", newline="") as fh:
            csv.writer(fh).writerow([_cell(row.get(c)) for c in self.header])


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


PER_TASK_PREFIX = "val/accuracy_shuffled_"


def per_task_accuracy(rows: list[dict[str, float]]) -> dict[str, dict[str, list[float]]]:
    """Per closed task, the steps of its checks and its accuracy with true and shuffled images and
    chance (NaN where a file written before ``val/accuracy_chance_<task>`` existed lacks it).

    A task is one with a ``val/accuracy_shuffled_<task>`` column and at least one value in it.
    """
    nan = float("nan")
    tasks = sorted({k[len(PER_TASK_PREFIX) :] for r in rows for k in r if k.startswith(PER_TASK_PREFIX)})
    out: dict[str, dict[str, list[float]]] = {}
    for task in tasks:
        checked = [r for r in rows if math.isfinite(r.get(f"val/accuracy_{task}", nan))]
        if checked:
            out[task] = {
                "step": [r["step"] for r in checked],
                "true": [r[f"val/accuracy_{task}"] for r in checked],
                "shuffled": [r.get(f"{PER_TASK_PREFIX}{task}", nan) for r in checked],
                "chance": [r.get(f"val/accuracy_chance_{task}", nan) for r in checked],
            }
    return out


def plot_loss(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Plot loss (raw and smoothed) against step, and the image-reliance checks if any ran.

    Panels: the training loss; the held-out answer loss with true / shuffled / blank images and
    the image gain (when ``val/loss`` has values); the closed-task multiple-choice accuracy with
    true / shuffled images against chance (when ``val/accuracy`` has values; files written before
    it existed have no such column and get no such panel); and a second row with the same
    accuracy for each closed task (:func:`per_task_accuracy`), when the file has per-task columns.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nan = float("nan")
    rows = read_metrics(metrics_csv)
    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    val = [r for r in rows if math.isfinite(r.get("val/loss", nan))]
    acc = [r for r in rows if math.isfinite(r.get("val/accuracy", nan))]
    tasks = per_task_accuracy(rows) if acc else {}
    n_panels = 1 + bool(val) + bool(acc)
    n_cols = max(n_panels, len(tasks))
    n_rows = 1 + bool(tasks)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(6 + 5 * (n_cols - 1), 3.5 * n_rows), dpi=100, squeeze=False
    )
    for spare in list(axes[0, n_panels:]) + list(axes[1, len(tasks) :] if tasks else []):
        spare.set_visible(False)
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
    if acc:
        ax3 = axes[0, n_panels - 1]
        ax_steps = [r["step"] for r in acc]
        for key, label, style in (
            ("val/accuracy", "true images", "-o"),
            ("val/accuracy_shuffled", "shuffled images", "-s"),
            ("val/accuracy_chance", "chance", ":"),
        ):
            ax3.plot(ax_steps, [r.get(key, nan) for r in acc], style, ms=3, label=label)
        ax3.set_ylim(0.0, 1.0)
        ax3.set_xlabel("step")
        ax3.set_ylabel("multiple-choice accuracy (closed tasks)")
        last = acc[-1]
        ax3.set_title(
            f"accuracy {last['val/accuracy']:.2f} true vs "
            f"{last.get('val/accuracy_shuffled', nan):.2f} shuffled images (end)"
        )
        ax3.legend()
    for ax4, (task, series) in zip(axes[1, : len(tasks)] if tasks else [], tasks.items(), strict=True):
        ax4.plot(series["step"], series["true"], "-o", ms=3, label="true images")
        ax4.plot(series["step"], series["shuffled"], "-s", ms=3, label="shuffled images")
        if any(math.isfinite(c) for c in series["chance"]):
            ax4.plot(series["step"], series["chance"], ":", label="chance")
        ax4.set_ylim(0.0, 1.0)
        ax4.set_xlabel("step")
        ax4.set_ylabel("multiple-choice accuracy")
        ax4.set_title(
            f"{task}: {series['true'][-1]:.2f} true vs {series['shuffled'][-1]:.2f} shuffled"
            + (f" (chance {series['chance'][-1]:.2f})" if math.isfinite(series["chance"][-1]) else "")
        )
        ax4.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_png
