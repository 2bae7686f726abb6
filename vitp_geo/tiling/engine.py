"""Streaming segmentation over a whole scene: plan → read → model → blend → write → COG.

The functional core is ``segment_scene``. It works with any callable that maps a normalised
window batch (B, C, T, T) to class scores (B, K, T, T); it never holds a scene-sized array:

1. windows are planned row of windows by row of windows (``planner``);
2. each group of windows is read, rendered and normalised (``reader``), all-nodata windows are
   skipped, the rest run through the model in batches (sharded across ranks when there are
   several, see ``distributed``);
3. scores are weighted (``blending``; nodata pixels weigh 0) into a ``StripAccumulator``; rows
   that no later window touches are finalised and appended to raw row files (``rowsink``);
4. at the end GDAL turns the raw files into COGs with overviews (``vitp_geo.io.cog``), QGIS
   styles are written beside them, and the optional vector layer is polygonised strip by strip.

Everything is written under a work folder ``.<stem>.partial.work`` beside the class map; the
final names appear only when each file is complete. With ``resume=True`` an interrupted run
continues from its last checkpoint (accumulator + rows written) and produces the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import shutil
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import torch

from vitp_geo.constants import GDAL_CACHE_MB
from vitp_geo.io.atomic import atomic_output, output_set
from vitp_geo.io.cog import raw_vrt, write_cog
from vitp_geo.io.paths import check_output_paths
from vitp_geo.io.polygonize import polygonize_rows
from vitp_geo.io.qgis_styles import ClassStyle, qml_path, write_raster_qml, write_styled_gpkg
from vitp_geo.io.raster import RasterReadError, RenderRule
from vitp_geo.tiling.accumulator import FinalBlock, StripAccumulator
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
from vitp_geo.tiling.rowsink import RawRowSink

Predictor = Callable[[torch.Tensor], torch.Tensor]  # (B, C, T, T) float → (B, K, T, T) scores
CLASS_NODATA = 255  # class-map nodata (class ids are 0..K-1, K ≤ 255)

logger = logging.getLogger(__name__)


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
class SegmentationOutputs:
    """Where results go. ``class_map`` is required, the rest optional."""

    class_map: Path
    probabilities: Path | None = None
    vector: Path | None = None
    probability_dtype: str = "float32"  # or float16
    min_area_px: int = 0  # drop polygons smaller than this many pixels


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


def work_dir_for(class_map: str | Path) -> Path:
    p = Path(class_map)
    return p.with_name(f".{p.stem}.partial.work")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _fingerprint(paths: Sequence[Path], settings: dict[str, object]) -> str:
    items: dict[str, object] = dict(settings)
    for i, p in enumerate(paths):
        st = p.stat()
        items[f"scene{i}"] = [str(p.resolve()), st.st_size, st.st_mtime_ns]
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()


class _Writer:
    """Rank 0's side: accumulator, raw row sinks and resume checkpoints."""

    def __init__(
        self,
        work: Path,
        plan: WindowPlan,
        n_classes: int,
        outputs: SegmentationOutputs,
        start_row: int,
        rows_written: int,
        acc_state: dict[str, np.ndarray] | None,
    ) -> None:
        self.work, self.plan = work, plan
        self.acc = StripAccumulator(plan.width, n_classes)
        crcs: dict[str, int | None] = {"class": None, "probs": None, "conf": None}
        if acc_state is not None:
            acc_state = dict(acc_state)
            for name in crcs:
                if f"crc_{name}" in acc_state:
                    crcs[name] = int(acc_state.pop(f"crc_{name}"))
            self.acc.load_state(acc_state)
        w = plan.width
        self.classes = RawRowSink(
            work / "class.raw", w, 1, "uint8", CLASS_NODATA, rows_written, crcs["class"]
        )
        self.probs = (
            RawRowSink(
                work / "probs.raw",
                w,
                n_classes,
                outputs.probability_dtype,
                np.nan,
                rows_written,
                crcs["probs"],
            )
            if outputs.probabilities
            else None
        )
        self.conf = (
            RawRowSink(work / "conf.raw", w, 1, "float32", np.nan, rows_written, crcs["conf"])
            if outputs.vector
            else None
        )
        self.sinks = [s for s in (self.classes, self.probs, self.conf) if s is not None]
        self.next_row = start_row
        self.last_checkpoint = time.monotonic()

    def emit(self, blocks: Iterable[FinalBlock]) -> None:
        for blk in blocks:
            cls = np.argmax(blk.scores, axis=0).astype(np.uint8)
            cls[~blk.valid] = CLASS_NODATA
            self.classes.put(blk.row0, blk.col0, cls[None])
            if self.probs is not None:
                p = blk.scores.astype(self.probs.dtype)
                p[:, ~blk.valid] = np.nan
                self.probs.put(blk.row0, blk.col0, p)
            if self.conf is not None:
                c = blk.scores.max(axis=0)
                c[~blk.valid] = np.nan
                self.conf.put(blk.row0, blk.col0, c[None])

    def end_row(self, row: int, every_s: float) -> None:
        upto = self.plan.row_end(row)
        self.emit(list(self.acc.finalize(upto)))
        for s in self.sinks:
            s.commit(upto)
        self.next_row = row + 1
        if every_s <= 0 or time.monotonic() - self.last_checkpoint >= every_s:
            self.checkpoint()

    def checkpoint(self) -> None:
        for s in self.sinks:
            s.sync()
        state = self.acc.state()
        state["next_row"] = np.asarray(self.next_row)
        state["rows_written"] = np.asarray(self.classes.rows_written)
        for name, sink in (("class", self.classes), ("probs", self.probs), ("conf", self.conf)):
            if sink is not None:
                state[f"crc_{name}"] = np.asarray(sink.crc, dtype=np.uint32)
        with atomic_output(self.work / "state.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **state)  # type: ignore[arg-type]
        self.last_checkpoint = time.monotonic()

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def _prepare_work(
    work: Path, fingerprint: str, resume: bool
) -> tuple[int, int, dict[str, np.ndarray] | None]:
    """(start window row, rows already written, accumulator state) for a fresh or resumed run.

    A resumed run (state returned) reuses ``work`` as it is; a fresh run (state None) has created
    ``work`` anew. A refused resume raises before anything in ``work`` is touched.
    """
    meta, state_file = work / "meta.json", work / "state.npz"
    if resume and meta.exists() and state_file.exists():
        recorded = json.loads(meta.read_text()).get("fingerprint")
        if recorded != fingerprint:
            raise ValueError(
                f"cannot resume from {work}: the scene, model or settings differ from the interrupted run "
                "(its saved state is kept); rerun with the same settings, or without --resume to "
                "discard it and start over"
            )
        try:
            with np.load(state_file) as z:
                state = {k: z[k] for k in z.files}
            next_row, rows_written = int(state.pop("next_row")), int(state.pop("rows_written"))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(
                f"cannot resume from {work}: its saved state {state_file} is damaged ({err}); it is kept — "
                "rerun without --resume to discard it and start over"
            ) from err
        return next_row, rows_written, state
    if resume:  # nothing to continue: say so rather than start over silently
        logger.warning("--resume: no interrupted run to continue in %s; starting from the beginning", work)
    if work.exists():
        if state_file.exists():  # an interrupted run that could have been resumed
            logger.warning(
                "discarding the partial run in %s and starting over (pass --resume to continue it)", work
            )
        shutil.rmtree(work)
    work.mkdir(parents=True)
    meta.write_text(json.dumps({"fingerprint": fingerprint}))
    return 0, 0, None


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
            paths,
            predictor,
            classes,
            outputs,
            rule,
            mean,
            std,
            cfg,
            raw_input,
            resume,
            model_id,
            rank,
            n_classes,
        )


def _segment(
    paths: list[Path],
    predictor: Predictor,
    classes: ClassStyle,
    outputs: SegmentationOutputs,
    rule: RenderRule,
    mean: Sequence[float],
    std: Sequence[float],
    cfg: EngineConfig,
    raw_input: bool,
    resume: bool,
    model_id: str,
    rank: RankInfo,
    n_classes: int,
) -> InferenceSummary | None:
    t0 = time.monotonic()
    reader = SceneWindowReader(paths, rule, mean, std, raw=raw_input)
    work = work_dir_for(outputs.class_map)
    writer: _Writer | None = None
    created_work = False  # True once this call has made ``work`` (a resumed run reuses it)
    finishing = False  # the window pass is over: _finish's errors already say how to go on
    sigint = ExitStack()  # one device: a first Ctrl-C stops at a window-row boundary, state saved
    try:
        plan = plan_windows(reader.height, reader.width, cfg.tile_size, cfg.overlap)
        weight = blend_weights(plan.tile_h, plan.tile_w, cfg.blend, overlap_px=plan.overlap_px)
        start = None
        if rank.is_writer:
            settings = {
                **asdict(cfg),
                "progress": None,
                "checkpoint_every_s": None,
                "classes": n_classes,
                "rule": asdict(rule),
                "mean": list(mean),
                "std": list(std),
                "outputs": {k: str(v) for k, v in asdict(outputs).items()},
                "model": model_id,
                "raw": raw_input,
                "world": rank.world,
            }
            start_row, rows_written, acc_state = _prepare_work(work, _fingerprint(paths, settings), resume)
            created_work = acc_state is None
            writer = _Writer(work, plan, n_classes, outputs, start_row, rows_written, acc_state)
            start = start_row
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
                res = _run_windows(reader, predictor, [(r0, c) for c in mine], plan, cfg, n_classes)
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
            written = _finish(writer, reader, classes, outputs)
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
        if (work / "state.npz").exists():
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


def _finish(
    writer: _Writer, reader: SceneWindowReader, classes: ClassStyle, outputs: SegmentationOutputs
) -> list[Path]:
    """Raw row files → COGs, QGIS styles and the optional vector layer, as one output set.

    Every output is written under a temporary name and all are renamed when the last is complete
    (``io.atomic.output_set``): a failure here (a full disk while the GeoPackage is written)
    leaves no class map without its vector and no orphan style, and the work folder stays for
    ``--resume``, which then only repeats this step.
    """
    with output_set():
        return _write_outputs(writer, reader, classes, outputs)


def _write_outputs(
    writer: _Writer, reader: SceneWindowReader, classes: ClassStyle, outputs: SegmentationOutputs
) -> list[Path]:
    prof = reader.profile
    geo = dict(width=reader.width, height=reader.height, transform=prof["transform"], crs=prof.get("crs"))
    work, written = writer.work, []
    vrt = work / "class.vrt"
    vrt.write_text(
        raw_vrt(
            work / "class.raw",
            bands=1,
            dtype="uint8",
            nodata=CLASS_NODATA,
            colors=classes.colors,
            category_names=classes.names,
            **geo,
        )
    )
    written.append(write_cog(vrt, outputs.class_map, resampling="nearest", category_names=classes.names))
    write_raster_qml(outputs.class_map, classes)  # the style once the raster exists (nodata: in the COG)
    if outputs.probabilities is not None and writer.probs is not None:
        vrt = work / "probs.vrt"
        vrt.write_text(
            raw_vrt(
                work / "probs.raw",
                bands=len(classes.names),
                dtype=outputs.probability_dtype,
                nodata=float("nan"),
                band_descriptions=classes.names,
                **geo,
            )
        )
        written.append(write_cog(vrt, outputs.probabilities, resampling="average"))
        write_raster_qml(outputs.probabilities, None)
    if outputs.vector is not None and writer.conf is not None:
        cls_sink, conf_sink = writer.classes, writer.conf

        def rows(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
            return cls_sink.read_rows(r0, r1)[0], conf_sink.read_rows(r0, r1)[0]

        frame = polygonize_rows(
            rows,
            height=reader.height,
            width=reader.width,
            transform=prof["transform"],
            crs=prof.get("crs"),
            class_names=classes.names,
            nodata=CLASS_NODATA,
            min_area_px=outputs.min_area_px,
        )
        vec = outputs.vector
        rasters = {outputs.class_map.stem, outputs.probabilities.stem if outputs.probabilities else None}
        # QGIS auto-loads <stem>.qml for a raster of that stem: the vector's style goes elsewhere
        qml = vec.with_name(f"{vec.stem}_vector.qml") if vec.stem in rasters else None
        written.append(write_styled_gpkg(vec, frame, classes, qml=qml))
    return written
