"""What a streaming segmentation run writes: raw rows during the window pass, then COGs and styles.

``RowWriter`` is the writing rank's side of ``tiling.engine.segment_scene``: it owns the
``StripAccumulator``, turns finalised blocks into the class map (argmax, ``CLASS_NODATA`` where
no valid pixel), the optional probabilities and the confidence the vector layer needs, appends
them to raw row files in the work folder (``tiling.rowsink``) and saves the resume state
(``tiling.resume``). When every row is done ``write_outputs`` turns the raw files into COGs with
overviews (``vitp_geo.io.cog``), writes the QGIS styles and polygonises the optional vector layer
strip by strip, all as one output set.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitp_geo.io.atomic import output_set
from vitp_geo.io.cog import raw_vrt, write_cog
from vitp_geo.io.polygonize import polygonize_rows
from vitp_geo.io.qgis_styles import ClassStyle, write_raster_qml, write_styled_gpkg
from vitp_geo.tiling.accumulator import FinalBlock, StripAccumulator
from vitp_geo.tiling.planner import WindowPlan
from vitp_geo.tiling.reader import SceneWindowReader
from vitp_geo.tiling.resume import SavedRun, save_state
from vitp_geo.tiling.rowsink import RawRowSink

CLASS_NODATA = 255  # class-map nodata (class ids are 0..K-1, K ≤ 255)


@dataclass
class SegmentationOutputs:
    """Where results go. ``class_map`` is required, the rest optional."""

    class_map: Path
    probabilities: Path | None = None
    vector: Path | None = None
    probability_dtype: str = "float32"  # or float16
    min_area_px: int = 0  # drop polygons smaller than this many pixels


class RowWriter:
    """Rank 0's side: accumulator, raw row sinks and resume checkpoints.

    Args:
        work: the run's work folder (``tiling.resume.work_dir_for``).
        plan: the window plan.
        n_classes: K, the model's class count.
        outputs: which raw files to keep (probabilities, confidence for the vector layer).
        saved: the interrupted run to continue (``tiling.resume.prepare_work``), or None.
    """

    def __init__(
        self,
        work: Path,
        plan: WindowPlan,
        n_classes: int,
        outputs: SegmentationOutputs,
        saved: SavedRun | None,
    ) -> None:
        self.work, self.plan = work, plan
        self.acc = StripAccumulator(plan.width, n_classes)
        crcs: dict[str, int | None] = {"class": None, "probs": None, "conf": None}
        rows_written = 0
        if saved is not None:
            crcs.update({name: saved.crcs[name] for name in crcs if name in saved.crcs})
            rows_written = saved.rows_written
            self.acc.load_state(saved.accumulator)
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
        self.next_row = saved.next_row if saved is not None else 0
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
        crcs = {
            name: sink.crc
            for name, sink in (("class", self.classes), ("probs", self.probs), ("conf", self.conf))
            if sink is not None
        }
        save_state(self.work, SavedRun(self.next_row, self.classes.rows_written, self.acc.state(), crcs))
        self.last_checkpoint = time.monotonic()

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def write_outputs(
    writer: RowWriter, reader: SceneWindowReader, classes: ClassStyle, outputs: SegmentationOutputs
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
    writer: RowWriter, reader: SceneWindowReader, classes: ClassStyle, outputs: SegmentationOutputs
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
