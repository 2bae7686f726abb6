"""``run_catalogue``: many scenes through one checkpoint, resumable, with run-wide outputs.

1. The checkpoint's model card says the task; the scenes are checked against it (pairs for change
   models, single scenes otherwise) and the settings against ``run.json`` in the output folder
   (another run's settings are refused before anything is touched).
2. The manifest decides what is left: a ``done`` scene whose outputs still have their recorded
   sizes and checksums is skipped; a ``failed`` one is retried only with ``retry_failed``; the
   rest (new, or ``running`` when a driver or worker was killed) run, an interrupted one resuming
   from its saved engine state.
3. Scenes run on the chosen engine (``engines``), at most one per worker in flight; every
   scene's start and end is appended to the manifest at once. Progress on stderr: a tqdm bar over
   scenes with done / failed / running and scenes per minute.
4. The run's outputs are written from the manifest (``outputs``): the STAC collection, the VRT
   mosaics of the class maps per CRS, and for detection the merged GeoPackage per CRS.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vitp_geo.catalogue.engines import Engine, LocalEngine, RayEngine, import_ray
from vitp_geo.catalogue.manifest import Manifest, claim_out_dir, outputs_problem
from vitp_geo.catalogue.sources import SceneTask
from vitp_geo.catalogue.worker import ModuleHook, WorkerSpec
from vitp_geo.inference import InferSettings
from vitp_geo.tiling.progress import ProgressMode, progress_bar

logger = logging.getLogger(__name__)


@dataclass
class EngineChoice:
    """Where scenes run.

    Attributes:
        engine: ``local`` (this machine, no Ray) or ``ray``.
        workers: workers (processes / actors), one scene and one loaded model each.
        address: Ray cluster address (``auto``: the running one; None: start a local one).
        gpus_per_worker: GPUs each Ray actor asks for (fractions share a GPU).
        threads: torch CPU threads per worker process (None: torch's default; local engine with
            one worker runs in this process and keeps its threads).
    """

    engine: str = "local"
    workers: int = 1
    address: str | None = None
    gpus_per_worker: float = 0.0
    threads: int | None = None


@dataclass
class CatalogueSummary:
    """What a catalogue run did. ``failed``: scene id → one-line error (also earlier failures)."""

    total: int
    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        ran = self.done - self.skipped
        rate = ran / self.seconds * 60 if self.seconds > 0 else 0.0
        out = [
            f"scenes:   {self.total} ({self.done} done, of which {self.skipped} already finished; "
            f"{len(self.failed)} failed)",
            f"time:     {self.seconds:.1f} s ({rate:.1f} scenes/min over the {ran} run)",
            *[f"output:   {p}" for p in self.outputs],
        ]
        out += [f"failed:   {sid}: {err}" for sid, err in sorted(self.failed.items())]
        return out


def read_card(checkpoint: Path) -> Any:
    """The checkpoint's ``ModelCard`` without building the model (the driver needs only the card)."""
    from vitp_geo.io.model_card import CARD_KEY, ModelCard
    from vitp_geo.tasks.loading import _read_checkpoint  # the card reader; tasks/ has no public one yet

    return ModelCard.from_dict(_read_checkpoint(checkpoint)[CARD_KEY])


def _check_tasks(tasks: Sequence[SceneTask], task: str, checkpoint: Path) -> None:
    for t in tasks:
        if task == "change" and t.after is None:
            raise ValueError(
                f"{checkpoint} is a change model: scene {t.scene_id!r} has no 'after' image (give pairs: "
                "a before/after CSV, or --asset and --after-asset of STAC items)"
            )
        if task != "change" and t.after is not None:
            raise ValueError(f"scene {t.scene_id!r} is a before/after pair; {checkpoint} is a {task} model")


def run_catalogue(
    tasks: Sequence[SceneTask],
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    settings: InferSettings = InferSettings(),
    probabilities: bool = False,
    vector: bool = False,
    engine: EngineChoice = EngineChoice(),
    retry_failed: bool = False,
    progress: ProgressMode = True,
    module_hook: ModuleHook | None = None,
) -> CatalogueSummary:
    """Run ``checkpoint`` over every scene of ``tasks`` into ``out_dir`` (module doc).

    Args:
        tasks: the scenes (``sources.read_source``).
        checkpoint: a checkpoint written by ``vitp-geo finetune``.
        out_dir: the run's folder: ``run.json``, ``manifest.jsonl``, ``scenes/<id>/``, ``stac/``,
            ``mosaics/``.
        settings: the ``infer`` settings of every scene (their ``progress`` is ignored: workers
            report scenes, not windows).
        probabilities, vector: also write class probabilities / polygons per scene
            (segmentation and change; detection always writes its boxes).
        engine: where scenes run.
        retry_failed: run scenes that failed in an earlier run again.
        progress: the scene progress bar (``tiling.progress`` modes).
        module_hook: applied to the model in each worker after loading (library use, e.g.
            instrumentation); a picklable top-level function for process and Ray workers.

    Returns:
        The summary; ``failed`` lists every scene without outputs and its error.

    Raises:
        ValueError: bad settings, scenes that do not fit the model, or an output folder holding
            a run with other settings (refused before anything is touched).
    """
    t0 = time.monotonic()
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    settings.check()
    if engine.engine not in ("local", "ray"):
        raise ValueError(f"--engine must be local or ray, got {engine.engine!r}")
    if engine.engine == "ray":
        import_ray()  # a clear error before the output folder is made
    elif engine.address is not None or engine.gpus_per_worker:
        raise ValueError("--address and --gpus-per-worker are for --engine ray")
    card = read_card(checkpoint)
    _check_tasks(tasks, card.task, checkpoint)
    if card.task == "detection" and (probabilities or vector):
        raise ValueError(
            f"{checkpoint} is a detection model: it writes its boxes; --probabilities / --vector are for segmentation and change"
        )
    st = checkpoint.stat()
    run_settings = {
        "checkpoint": [str(checkpoint.resolve()), st.st_size, st.st_mtime_ns],
        "task": card.task,
        **{k: v for k, v in asdict(settings).items() if k not in ("progress", "checkpoint_every_s")},
        "probabilities": probabilities,
        "vector": vector,
    }
    fingerprint = claim_out_dir(out_dir, run_settings)
    manifest = Manifest(out_dir)
    states = manifest.states()
    summary = CatalogueSummary(total=len(tasks))
    todo: list[SceneTask] = []
    for t in tasks:
        rec = states.get(t.scene_id)
        status = rec.get("status") if rec else None
        if status == "done":
            problem = outputs_problem(rec, out_dir)  # type: ignore[arg-type]
            if problem is None:
                summary.done += 1
                summary.skipped += 1
                continue
            logger.warning("scene %s: %s; running it again", t.scene_id, problem)
        elif status == "failed" and not retry_failed:
            summary.failed[t.scene_id] = f"{rec.get('error')} (an earlier run; --retry-failed runs it again)"  # type: ignore[union-attr]
            continue
        todo.append(t)
    spec = WorkerSpec(
        checkpoint=checkpoint,
        out_dir=out_dir,
        task=card.task,
        settings=_quiet(settings),
        probabilities=probabilities,
        vector=vector,
        threads=engine.threads,
        module_hook=module_hook,
    )
    if todo:
        _run(todo, spec, engine, manifest, fingerprint, summary, progress)
    summary.outputs = write_run_outputs(out_dir, tasks, Manifest(out_dir).states(), checkpoint, card)
    summary.seconds = time.monotonic() - t0
    return summary


def _quiet(settings: InferSettings) -> InferSettings:
    from dataclasses import replace

    return replace(settings, progress="none")


def _make_engine(spec: WorkerSpec, choice: EngineChoice) -> Engine:
    if choice.engine == "ray":
        return RayEngine(spec, choice.workers, address=choice.address, gpus_per_worker=choice.gpus_per_worker)
    return LocalEngine(spec, choice.workers)


def _run(
    todo: list[SceneTask],
    spec: WorkerSpec,
    choice: EngineChoice,
    manifest: Manifest,
    fingerprint: str,
    summary: CatalogueSummary,
    progress: ProgressMode,
) -> None:
    engine = _make_engine(spec, choice)
    bar = progress_bar(progress, total=len(todo), desc="scenes", unit="scene")
    pending, running, t0 = list(todo), 0, time.monotonic()
    ran = 0
    try:
        while pending or running:
            while pending and running < engine.capacity:
                task = pending.pop(0)
                manifest.append({"scene": task.scene_id, "status": "running", "fingerprint": fingerprint})
                engine.submit(task)
                running += 1
            task, record = engine.wait_one()
            running -= 1
            manifest.append({**record, "fingerprint": fingerprint})
            if record["status"] == "done":
                summary.done += 1
                ran += 1
            else:
                summary.failed[task.scene_id] = record.get("error", "")
                logger.warning("scene %s failed: %s", task.scene_id, record.get("error"))
            bar.update(1)
            minutes = (time.monotonic() - t0) / 60
            bar.set_postfix(
                done=summary.done, failed=len(summary.failed), running=running, per_min=f"{ran / minutes:.1f}"
            )
    finally:
        bar.close()
        engine.close()


def write_run_outputs(
    out_dir: Path, tasks: Sequence[SceneTask], states: dict[str, dict[str, Any]], checkpoint: Path, card: Any
) -> list[Path]:
    """The STAC collection and the per-CRS mosaics of the finished scenes (``outputs``)."""
    from vitp_geo import __version__
    from vitp_geo.catalogue.outputs import write_class_mosaics, write_detection_mosaics, write_stac_collection
    from vitp_geo.catalogue.worker import CLASS_MAP_NAME, DETECTIONS_NAME
    from vitp_geo.io.qgis_styles import ClassStyle
    from vitp_geo.tiling.box_merge import card_nms_threshold

    done = [(t, states[t.scene_id]) for t in tasks if states.get(t.scene_id, {}).get("status") == "done"]
    if not done:
        return []
    classes = ClassStyle(card.class_names, card.class_colors)
    written = [
        write_stac_collection(out_dir, done, checkpoint=checkpoint, task=card.task, version=__version__)
    ]

    def files(name: str) -> list[tuple[Path, Path]]:
        return [
            (out_dir / e["path"], t.scene)
            for t, rec in done
            for e in rec["outputs"]
            if Path(e["path"]).name == name
        ]

    if card.task == "detection":
        written += write_detection_mosaics(
            out_dir,
            files(DETECTIONS_NAME),
            classes,
            card_nms_threshold(card.arch),
            horizontal=str(card.arch.get("box_type", "hbb")) == "hbb",
        )
    else:
        written += write_class_mosaics(out_dir, [p for p, _ in files(CLASS_MAP_NAME)], classes)
    return written
