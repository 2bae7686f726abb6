"""One catalogue worker: the model loaded once, each scene through ``inference.infer_scene``.

``SceneWorker(spec)`` loads the checkpoint when it is made; ``run(task)`` writes that scene's
files under ``<out_dir>/scenes/<scene_id>/`` (the files ``vitp-geo infer`` writes) and returns a
manifest record: ``done`` with the outputs' sizes and checksums, or ``failed`` with the one-line
error (any exception: a bad file, out of memory). A scene whose engine state was saved by an
interrupted run (a killed worker or driver) resumes from it. A scene folder is locked while its
scene runs (``scene_lock``), so a worker left over from a killed driver and the rerun's worker never
write the same scene at once.

A scene whose file (or "after" file) changed since its interrupted run cannot resume: its saved
state describes the old file. The worker records the files it started from (``.source.json``:
path, size, mtime, what the engine's resume check compares) and, when they no longer match, sets
the stale state aside beside it (``.class_map.partial.work.stale-N``, nothing is deleted), starts
the scene afresh and says so in its record (``stale_state``, ``stale_reason``).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitp_geo.catalogue.manifest import output_entry
from vitp_geo.catalogue.sources import SceneTask
from vitp_geo.inference import InferSettings, SceneOutputs
from vitp_geo.io.atomic import atomic_output

if TYPE_CHECKING:
    import torch

CLASS_MAP_NAME = "class_map.tif"
PROBABILITIES_NAME = "probabilities.tif"
VECTOR_NAME = "vectors.gpkg"
DETECTIONS_NAME = "detections.gpkg"
SOURCE_NAME = ".source.json"  # the files a scene's engine state was started from

ModuleHook = Callable[["torch.nn.Module"], "torch.nn.Module"]


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, picklable (sent to processes and Ray actors).

    Attributes:
        checkpoint: the fine-tuned checkpoint.
        out_dir: the run's output folder.
        task: the model's task (``segmentation``, ``change`` or ``detection``).
        settings: the ``infer`` settings (progress is off in workers).
        probabilities: also write class probabilities (segmentation / change).
        vector: also write polygons (segmentation / change; detection always writes its boxes).
        threads: torch CPU threads per worker (None: torch's default).
        module_hook: applied to the loaded module (instrumentation, compilation); a picklable
            top-level function.
    """

    checkpoint: Path
    out_dir: Path
    task: str
    settings: InferSettings
    probabilities: bool = False
    vector: bool = False
    threads: int | None = None
    module_hook: ModuleHook | None = None


def scene_outputs(spec: WorkerSpec, scene_id: str) -> SceneOutputs:
    """The files one scene writes, under ``<out_dir>/scenes/<scene_id>/``."""
    folder = spec.out_dir / "scenes" / scene_id
    if spec.task == "detection":
        return SceneOutputs(vector=folder / DETECTIONS_NAME)
    return SceneOutputs(
        class_map=folder / CLASS_MAP_NAME,
        probabilities=folder / PROBABILITIES_NAME if spec.probabilities else None,
        vector=folder / VECTOR_NAME if spec.vector else None,
    )


def one_line(err: BaseException) -> str:
    """``Type: first line of the message`` (what the manifest and the summary show)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


@contextmanager
def scene_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.worker.lock`` exclusively while a scene runs.

    A worker of a killed driver may still be finishing the scene when the rerun's worker starts
    it; the second waits for the first (the lock dies with its process) instead of writing the
    same files at the same time.
    """
    fd = os.open(folder / ".worker.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def source_identity(task: SceneTask) -> dict[str, Any]:
    """The scene's files as the engine's resume check sees them: resolved path, size, mtime (ns)."""
    out: dict[str, Any] = {}
    for key, p in (("scene", task.scene), ("after", task.after)):
        if p is not None:
            st = p.stat()
            out[key] = [str(p.resolve()), st.st_size, st.st_mtime_ns]
    return out


def stale_reason(folder: Path, task: SceneTask) -> str | None:
    """Why the engine state in ``folder`` was saved for other files than ``task``'s, or None.

    None too when ``folder`` has no record of its files (a state from an older vitp-geo): the
    engine's own check then decides.
    """
    try:
        recorded = json.loads((folder / SOURCE_NAME).read_text())
    except (OSError, ValueError):
        return None
    now = source_identity(task)
    for key in ("scene", "after"):
        old, new = recorded.get(key), now.get(key)
        if old != new:
            what = new[0] if new else (old[0] if old else key)
            return (
                f"{what} changed since the scene's interrupted run "
                f"(size {old[1] if old else None} -> {new[1] if new else None} bytes, "
                f"mtime {'equal' if old and new and old[2] == new[2] else 'differs'})"
            )
    return None


def set_aside(work: Path) -> Path:
    """Rename ``work`` to the first free ``<work>.stale-N`` beside it; returns the new path."""
    n = 1
    while (aside := work.with_name(f"{work.name}.stale-{n}")).exists():
        n += 1
    work.rename(aside)
    return aside


class SceneWorker:
    """A model loaded once (module doc)."""

    def __init__(self, spec: WorkerSpec) -> None:
        import torch

        from vitp_geo.inference import load_model

        if spec.threads is not None:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        self.model = load_model(spec.checkpoint)
        if spec.module_hook is not None:
            self.model.module = spec.module_hook(self.model.module)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.loaded_at = time.time()

    def run(self, task: SceneTask) -> dict[str, Any]:
        """Run one scene; a manifest record (``done`` or ``failed``), never an exception."""
        from vitp_geo.inference import infer_scene
        from vitp_geo.tiling.resume import work_dir_for

        t0, started = time.monotonic(), time.time()
        outputs = scene_outputs(self.spec, task.scene_id)
        record: dict[str, Any] = {"scene": task.scene_id, "worker": self.name, "started": round(started, 3)}
        try:
            folder = self.spec.out_dir / "scenes" / task.scene_id
            folder.mkdir(parents=True, exist_ok=True)
            with scene_lock(folder):
                resume = False
                if outputs.class_map is not None:
                    work = work_dir_for(outputs.class_map)
                    resume = (work / "state.npz").exists()
                    reason = stale_reason(folder, task) if resume else None
                    if reason is not None:  # the state describes the old file: keep it, start afresh
                        aside = set_aside(work)
                        (folder / SOURCE_NAME).rename(aside / "source.json")
                        record.update(
                            stale_state=str(aside.relative_to(self.spec.out_dir)), stale_reason=reason
                        )
                        resume = False
                    if not resume:
                        with atomic_output(folder / SOURCE_NAME) as tmp:
                            tmp.write_text(json.dumps(source_identity(task)))
                summary = infer_scene(
                    task.scene,
                    self.model,
                    outputs,
                    after=task.after,
                    settings=self.spec.settings,
                    resume=resume,
                )
            assert summary is not None  # one rank: the writer always returns its summary
            record.update(
                status="done",
                outputs=[output_entry(p, self.spec.out_dir) for p in summary.outputs],
                resumed_from_row=summary.engine.resumed_from_row if summary.engine else 0,
                detections=summary.detections,
                peak_rss_mb=round(summary.engine.peak_rss_mb, 1) if summary.engine else None,
            )
        except Exception as err:  # one scene's failure (bad file, OOM) must not stop the others
            record.update(status="failed", error=one_line(err))
        record["seconds"] = round(time.monotonic() - t0, 3)
        return record
