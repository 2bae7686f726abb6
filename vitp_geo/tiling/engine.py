"""Streaming segmentation over a whole scene: plan → read → model → blend → write → COG.

The functional core is ``segment_scene``. It works with any callable that maps a normalised
window batch (B, C, T, T) to class scores (B, K, T, T); it never holds a scene-sized array:

1. windows are planned row of windows by row of windows (``planner``);
2. each group of windows is read, rendered and normalised (``reader``), all-nodata windows are
   skipped, the rest run through the model in batches (sharded across ranks when there are
   several, see ``distributed``);
3. scores are weighted (``blending``; nodata pixels weigh 0) into a ``StripAccumulator``; rows
   that no later window touches are finalised and appended to raw row files (``rowsink``), by
   the writing rank's ``segmentation_outputs.RowWriter``;
4. at the end GDAL turns the raw files into COGs with overviews (``vitp_geo.io.cog``), QGIS
   styles are written beside them, and the optional vector layer is polygonised strip by strip
   (``segmentation_outputs.write_outputs``).

Everything is written under a work folder ``.<stem>.partial.work`` beside the class map; the
final names appear only when each file is complete. With ``resume=True`` an interrupted run
continues from its last checkpoint (accumulator + rows written) and produces the same bytes; the
work folder and its saved state are ``tiling.resume``'s.

``SegmentationOutputs`` (the ``outputs`` argument), ``work_dir_for`` (where a run keeps its state)
and ``CLASS_NODATA`` (the class map's nodata value) stay importable from here: they describe what
``segment_scene`` takes and writes.
"""

from __future__ import annotations

import resource
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import torch

from vitp_geo.constants import GDAL_CACHE_MB
from vitp_geo.io.paths import check_output_paths
from vitp_geo.io.qgis_styles import ClassStyle, qml_path
from vitp_geo.io.raster import RasterReadError, RenderRule
from vitp_geo.tiling.blending import BlendMode, blend_weights
from vitp_geo.tiling.distributed import RankInfo, broadcast_from_writer, gather_to_writer
from vitp_geo.tiling.planner import WindowPlan, plan_windows
from vitp_geo.tiling.progress import (
    RunInterrupted,
    defer_sigint,
    progress_bar,
    report_phase,
    stop_requested,
)
from vitp_geo.tiling.reader import SceneWindowReader
from vitp_geo.tiling.resume import has_saved_state, prepare_work, run_fingerprint, work_dir_for
from vitp_geo.tiling.segmentation_outputs import CLASS_NODATA, RowWriter, SegmentationOutputs, write_outputs

__all__ = [
    "CLASS_NODATA",
    "EngineConfig",
    "InferenceSummary",
    "Predictor",
    "SegmentationOutputs",
    "segment_scene",
    "work_dir_for",
]

Predictor = Callable[[torch.Tensor], torch.Tensor]  # (B, C, T, T) float → (B, K, T, T) scores


@dataclass
class EngineConfig:
    """How the scene is cut and blended."""

    tile_size: int = 512  # window side the model runs on (the checkpoint's tile size)
    overlap: float = 0.25  # fraction of a tile shared by neighbours: enough context at seams
    batch_size: int = 8  # windows per model call (per rank)
    blend: BlendMode = BlendMode.COSINE  # cosine ramps sum to 1 on a regular grid
    activation: str = "softmax"  # applied to model output: softmax (logits in) or none
    checkpoint_every_s: float = 60.0  # resume checkpoint period; 0 = after every window row
    progress: bool | str = True  # True / "bar", "jsonl" or False / "none" (tiling.progress)


@dataclass
class InferenceSummary:
    pixels: int
    windows_total: int
    windows_run: int
    windows_skipped: int
    seconds: float
    peak_rss_mb: float
    outputs: list[str] = field(default_factory=list)
    resumed_from_row: int = 0

    def lines(self) -> list[str]:
        return [
            f"pixels:   {self.pixels:,}",
            f"windows:  {self.windows_run} run, {self.windows_skipped} skipped (all nodata), "
            f"{self.windows_total} planned"
            + (f", resumed at window row {self.resumed_from_row}" if self.resumed_from_row else ""),
            f"time:     {self.seconds:.1f} s",
            f"peak mem: {self.peak_rss_mb:.0f} MB (resident, this process)",
            *[f"output:   {o}" for o in self.outputs],
        ]


@dataclass(frozen=True)
class _SceneRun:
    """One ``segment_scene`` call, its arguments checked (see ``segment_scene`` for each)."""

    paths: list[Path]
    predictor: Predictor
    classes: ClassStyle
    outputs: SegmentationOutputs
    rule: RenderRule
    mean: Sequence[float]
    std: Sequence[float]
    config: EngineConfig
    raw_input: bool
    resume: bool
    model_id: str
    rank: RankInfo

    @property
    def n_classes(self) -> int:
        return len(self.classes.names)

    def settings(self) -> dict[str, object]:
        """Everything besides the scene files that must match for ``--resume`` to continue."""
        return {
            **asdict(self.config),
            "progress": None,
            "checkpoint_every_s": None,
            "classes": self.n_classes,
            "rule": asdict(self.rule),
            "mean": list(self.mean),
            "std": list(self.std),
            "outputs": {k: str(v) for k, v in asdict(self.outputs).items()},
            "model": self.model_id,
            "raw": self.raw_input,
            "world": self.rank.world,
        }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _run_windows(
    reader: SceneWindowReader,
    predictor: Predictor,
    windows: Sequence[tuple[int, int]],
    plan: WindowPlan,
    cfg: EngineConfig,
    n_classes: int,
) -> list[tuple[int, np.ndarray, np.ndarray] | None]:
    """Read and run ``windows`` [(row0, col0)]: per window ``(col0, scores (K,h,w), valid (h,w))``
    or None when the window is entirely nodata."""
    h, w = plan.tile_h, plan.tile_w
    results: list[tuple[int, np.ndarray, np.ndarray] | None] = []
    batch, keep = [], []
    for row0, col0 in windows:
        x, valid = reader.read(row0, col0, h, w)
        if not valid.any():
            results.append(None)
            continue
        if (h, w) != (cfg.tile_size, cfg.tile_size):  # scene smaller than a tile: pad with the mean
            x = np.pad(x, ((0, 0), (0, cfg.tile_size - h), (0, cfg.tile_size - w)))
        batch.append(x)
        keep.append((len(results), col0, valid))
        results.append(None)
    if batch:
        with torch.inference_mode():
            out = predictor(torch.from_numpy(np.stack(batch)))
            if out.ndim != 4 or out.shape[1] != n_classes or out.shape[-2:] != (cfg.tile_size, cfg.tile_size):
                raise ValueError(
                    f"model output has shape {tuple(out.shape)}, expected (B, {n_classes}, "
                    f"{cfg.tile_size}, {cfg.tile_size})"
                )
            out = out[:, :, :h, :w].float()
            if cfg.activation == "softmax":
                out = torch.softmax(out, dim=1)
            scores = out.cpu().numpy()
        for j, (slot, col0, valid) in enumerate(keep):
            results[slot] = (col0, scores[j], valid)
    return results


def segment_scene(
    scene: str | Path | Sequence[str | Path],
    predictor: Predictor,
    classes: ClassStyle,
    outputs: SegmentationOutputs,
    *,
    rule: RenderRule = RenderRule(),
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (255.0, 255.0, 255.0),
    config: EngineConfig | None = None,
    raw_input: bool = False,
    resume: bool = False,
    model_id: str = "",
    rank: RankInfo = RankInfo(),
) -> InferenceSummary | None:
    """Run ``predictor`` over a whole scene and write the outputs (rank 0 returns the summary).

    Args:
        scene: the GeoTIFF, or ``[before, after]`` for a change model.
        predictor: (B, C, T, T) normalised float32 → (B, K, T, T) scores (logits for ``softmax``).
        classes: K class names and colours.
        outputs: output paths and options.
        rule: render rule (bands, stretch, SAR) from the checkpoint.
        mean, std: normalisation of the rendered 0–255 input.
        config: tiling and blending settings.
        raw_input: feed raw band values instead of the 3-channel render (models whose channel
            count is not 3).
        resume: continue an interrupted run with the same settings if one is found.
        model_id: identifies the model for the resume check (e.g. checkpoint path and mtime).
        rank: this process's rank (several devices) — all ranks must call this.
    """
    cfg = config or EngineConfig()
    if cfg.activation not in ("softmax", "none"):
        raise ValueError(f"activation must be softmax or none, got {cfg.activation!r}")
    if outputs.probability_dtype not in ("float32", "float16"):
        raise ValueError(f"probability dtype must be float32 or float16, got {outputs.probability_dtype!r}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    n_classes = len(classes.names)
    if not 1 <= n_classes < CLASS_NODATA:
        raise ValueError(f"need 1..254 classes, got {n_classes}")
    paths = [Path(scene)] if isinstance(scene, str | Path) else [Path(p) for p in scene]
    check_output_paths(  # before anything is written: no output may replace a scene or another output
        {"scene" if len(paths) == 1 else f"scene {i + 1}": p for i, p in enumerate(paths)},
        {
            "class map": outputs.class_map,
            "probabilities": outputs.probabilities,
            "vector": outputs.vector,
            "class map style": qml_path(outputs.class_map),
            "probabilities style": qml_path(outputs.probabilities) if outputs.probabilities else None,
        },
    )
    # GDAL's default block cache (5 % of RAM) would end up holding most of a big input scene.
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        return _segment(
            _SceneRun(
                paths=paths,
                predictor=predictor,
                classes=classes,
                outputs=outputs,
                rule=rule,
                mean=mean,
                std=std,
                config=cfg,
                raw_input=raw_input,
                resume=resume,
                model_id=model_id,
                rank=rank,
            )
        )


def _segment(job: _SceneRun) -> InferenceSummary | None:
    t0 = time.monotonic()
    cfg, rank, outputs, n_classes = job.config, job.rank, job.outputs, job.n_classes
    reader = SceneWindowReader(job.paths, job.rule, job.mean, job.std, raw=job.raw_input)
    work = work_dir_for(outputs.class_map)
    writer: RowWriter | None = None
    created_work = False  # True once this call has made ``work`` (a resumed run reuses it)
    finishing = False  # the window pass is over: the error of write_outputs says how to go on
    sigint = ExitStack()  # one device: a first Ctrl-C stops at a window-row boundary, state saved
    try:
        plan = plan_windows(reader.height, reader.width, cfg.tile_size, cfg.overlap)
        weight = blend_weights(plan.tile_h, plan.tile_w, cfg.blend, overlap_px=plan.overlap_px)
        start = None
        if rank.is_writer:
            saved = prepare_work(work, run_fingerprint(job.paths, job.settings()), job.resume)
            created_work = saved is None
            writer = RowWriter(work, plan, n_classes, outputs, saved)
            start = writer.next_row
        start_row = int(broadcast_from_writer(start, rank))
        n_cols = len(plan.col_offsets)
        bar = progress_bar(
            cfg.progress if rank.is_writer else False,
            total=plan.n_windows,
            initial=start_row * n_cols,
            unit="window",
            desc="infer",
        )
        run = skipped = 0
        group = cfg.batch_size * rank.world
        if rank.world == 1:
            sigint.enter_context(
                defer_sigint(
                    "vitp-geo: stopping after this row of windows to save the state for --resume "
                    "(Ctrl-C again to stop at once)"
                )
            )
        for i in range(start_row, len(plan.row_offsets)):
            if writer is not None and stop_requested():
                writer.checkpoint()
                report_phase(cfg.progress, "interrupted", resumable=True, state=str(work))
                raise RunInterrupted(
                    f"state saved in {work}: rerun the same command with --resume to continue"
                )
            r0 = plan.row_offsets[i]
            for g in range(0, n_cols, group):
                cols = plan.col_offsets[g : g + group]
                mine = cols[rank.rank * cfg.batch_size : (rank.rank + 1) * cfg.batch_size]
                res = _run_windows(reader, job.predictor, [(r0, c) for c in mine], plan, cfg, n_classes)
                gathered = gather_to_writer(res, rank)
                if writer is None or gathered is None:
                    continue
                for part in gathered:
                    for item in part:
                        if item is None:
                            skipped += 1
                            continue
                        col0, scores, valid = item
                        writer.acc.add(r0, col0, scores, weight * valid)
                        run += 1
                if g + group < n_cols:
                    writer.emit(
                        list(writer.acc.finalize(plan.row_end(i), before_col=plan.col_offsets[g + group]))
                    )
                bar.update(len(cols))
                bar.set_postfix(skipped=skipped)
            if writer is not None:
                writer.end_row(i, cfg.checkpoint_every_s)
        bar.close()
        sigint.close()
        if writer is None:
            return None
        writer.checkpoint()  # every row is done: a failure while writing the outputs resumes here
        writer.close()
        report_phase(cfg.progress, "write")
        finishing = True
        try:
            written = write_outputs(writer, reader, job.classes, outputs)
        except OSError as err:
            raise OSError(
                err.errno,
                f"writing the outputs failed ({err.strerror or err}); no output was written or replaced. "
                f"The finished inference is kept in {work}: free space and rerun with --resume to write "
                "the outputs without running the model again",
            ) from err
    except OSError as err:
        if finishing or not rank.is_writer:
            raise
        # a full disk in the window pass ("[Errno 28]" without a path): name the work folder, and
        # keep it only when it holds a saved state to resume from
        if has_saved_state(work):
            raise OSError(
                err.errno,
                f"writing {work} failed ({err.strerror or err}); the rows done are saved there: free "
                "space and rerun with --resume to continue",
            ) from err
        if created_work:
            shutil.rmtree(work, ignore_errors=True)
        raise OSError(
            err.errno,
            f"writing {work} failed ({err.strerror or err}) before any state was saved; it was "
            "removed, nothing was written: free space and rerun",
        ) from err
    except (RasterReadError, ValueError):
        # Bad input in a fresh run: nothing worth resuming, leave nothing behind. A refused or
        # failed resume keeps the interrupted run's state: this call did not create it.
        if rank.is_writer and created_work:
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        sigint.close()
        if writer is not None:
            writer.close()  # the raw row files, also when the run stops early (closing twice is fine)
        reader.close()
    shutil.rmtree(work, ignore_errors=True)
    return InferenceSummary(
        pixels=plan.height * plan.width,
        windows_total=plan.n_windows,
        windows_run=run,
        windows_skipped=skipped,
        seconds=time.monotonic() - t0,
        peak_rss_mb=_peak_rss_mb(),
        outputs=[str(p) for p in written],
        resumed_from_row=start_row,
    )
