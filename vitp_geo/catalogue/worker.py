"""One catalogue worker: the model loaded once, each scene through ``inference.infer_scene``.

``SceneWorker(spec)`` loads the checkpoint when it is made; ``run(task)`` writes that scene's
files under ``<out_dir>/scenes/<scene_id>/`` (the files ``vitp-geo infer`` writes) and returns a
manifest record: ``done`` with the outputs' sizes and checksums, or ``failed`` with the one-line
error (any exception: a bad file, out of memory). A scene whose engine state was saved by an
interrupted run (a killed worker or driver) resumes from it. A scene folder is locked while its
scene runs (``scene_lock``), so a worker left over from a killed driver and the rerun's worker never
write the same scene at once.
"""

from __future__ import annotations

import fcntl
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

if TYPE_CHECKING:
    import torch

CLASS_MAP_NAME = "class_map.tif"
PROBABILITIES_NAME = "probabilities.tif"
VECTOR_NAME = "vectors.gpkg"
DETECTIONS_NAME = "detections.gpkg"

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
        from vitp_geo.tiling.engine import work_dir_for

        t0, started = time.monotonic(), time.time()
        outputs = scene_outputs(self.spec, task.scene_id)
        record: dict[str, Any] = {"scene": task.scene_id, "worker": self.name, "started": round(started, 3)}
        try:
            folder = self.spec.out_dir / "scenes" / task.scene_id
            folder.mkdir(parents=True, exist_ok=True)
            with scene_lock(folder):
                resume = (
                    outputs.class_map is not None and (work_dir_for(outputs.class_map) / "state.npz").exists()
                )
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
