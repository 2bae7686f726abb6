"""Where catalogue scenes run: this machine (``LocalEngine``) or a Ray cluster (``RayEngine``).

Both hold at most ``capacity`` scenes in flight, one per worker, with the model loaded once per
worker (``worker.SceneWorker``). ``submit(task)`` hands a scene to an idle worker; ``wait_one()``
blocks until some scene finishes and returns ``(task, manifest record)``.

A worker that dies (killed, out of memory, a hard crash in native code) loses only the scene it
held: the scene goes to a fresh worker (a restarted Ray actor, a new process pool) and resumes
from the engine state saved so far, up to ``MAX_WORKER_DEATHS`` times; then it is recorded failed.

* ``LocalEngine(spec, workers=1)`` runs scenes in this process; ``workers > 1`` runs a pool of
  spawned processes. No Ray needed.
* ``RayEngine(spec, workers, address, gpus_per_worker)``: Ray Core actors (the pattern Ray
  recommends for batch inference with a stateful model), on the cluster at ``address``
  (``auto``: the running one) or, when Ray is not started yet and no address is given, a local
  one. Needs ``pip install 'vitp-geo[cluster]'``.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from vitp_geo.catalogue.sources import SceneTask
from vitp_geo.catalogue.worker import SceneWorker, WorkerSpec

MAX_WORKER_DEATHS = 2  # a scene whose worker dies this many times more is recorded failed


class Engine(Protocol):
    capacity: int

    def submit(self, task: SceneTask) -> None: ...
    def wait_one(self) -> tuple[SceneTask, dict[str, Any]]: ...
    def close(self) -> None: ...


def _died(task: SceneTask, deaths: int, why: str) -> dict[str, Any]:
    return {
        "scene": task.scene_id,
        "status": "failed",
        "error": f"WorkerDied: the worker running it exited {deaths} times ({why})",
        "seconds": 0.0,
    }


class LocalEngine:
    """Scenes on this machine: in this process (one worker) or a pool of spawned processes."""

    def __init__(self, spec: WorkerSpec, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        self.spec, self.capacity = spec, workers
        self._worker: SceneWorker | None = None
        self._queue: list[SceneTask] = []
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[Future[dict[str, Any]], SceneTask] = {}
        self._deaths: dict[str, int] = {}
        self._ready: list[tuple[SceneTask, dict[str, Any]]] = []

    def submit(self, task: SceneTask) -> None:
        if self.capacity == 1:
            self._queue.append(task)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.capacity,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_process,
                initargs=(self.spec,),
            )
        self._futures[self._pool.submit(_run_in_process, task)] = task

    def wait_one(self) -> tuple[SceneTask, dict[str, Any]]:
        if self.capacity == 1:
            task = self._queue.pop(0)
            if self._worker is None:
                self._worker = SceneWorker(self.spec)
            return task, self._worker.run(task)
        while not self._ready:
            done, _ = wait(list(self._futures), return_when=FIRST_COMPLETED)
            fut = next(iter(done))
            task = self._futures.pop(fut)
            try:
                self._ready.append((task, fut.result()))
            except BrokenProcessPool as err:  # a worker died: every scene in flight is lost
                lost = [task, *self._futures.values()]
                self._futures.clear()
                if self._pool is not None:
                    self._pool.shutdown(wait=True, cancel_futures=True)
                    self._pool = None
                for t in lost:
                    deaths = self._deaths[t.scene_id] = self._deaths.get(t.scene_id, 0) + 1
                    if deaths <= MAX_WORKER_DEATHS:
                        self.submit(t)  # a fresh pool; the scene resumes from its saved engine state
                    else:
                        self._ready.append((t, _died(t, deaths, str(err))))
        return self._ready.pop(0)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


_PROCESS_WORKER: SceneWorker | None = None


def _init_process(spec: WorkerSpec) -> None:
    global _PROCESS_WORKER
    _PROCESS_WORKER = SceneWorker(spec)


def _run_in_process(task: SceneTask) -> dict[str, Any]:
    assert _PROCESS_WORKER is not None, "the pool initializer loads the model"
    return _PROCESS_WORKER.run(task)


class RayWorker:
    """The Ray actor's class: one ``SceneWorker`` (the model loaded once per actor)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.worker = SceneWorker(spec)

    def run(self, task: SceneTask) -> dict[str, Any]:
        return self.worker.run(task)


def import_ray() -> Any:
    # Ray's driver replaces builtins.print by its tqdm_ray.safe_print as soon as a progress bar
    # manager starts; a library call must not change the caller's print (it leaked into every
    # later test of the process), so that patch is off unless the user asks for it.
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--engine ray needs Ray: pip install 'vitp-geo[cluster]' (or use --engine local)"
        ) from None
    return ray


class RayEngine:
    """Scenes on Ray actors, one scene per task (module doc)."""

    def __init__(
        self,
        spec: WorkerSpec,
        workers: int = 2,
        *,
        address: str | None = None,
        gpus_per_worker: float = 0.0,
        cpus_per_worker: float = 1.0,
    ) -> None:
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        if gpus_per_worker < 0:
            raise ValueError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
        ray = import_ray()
        self.ray, self.capacity = ray, workers
        self._started = False
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
            self._started = True
        # a dead actor is restarted (its model loaded again) and Ray runs the scene there again,
        # which resumes from the engine state saved so far
        actor = ray.remote(
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
            max_restarts=-1,
            max_task_retries=MAX_WORKER_DEATHS,
        )(RayWorker)
        self._actors = [actor.remote(spec) for _ in range(workers)]
        self._idle = list(self._actors)
        self._inflight: dict[Any, tuple[Any, SceneTask]] = {}

    def submit(self, task: SceneTask) -> None:
        actor = self._idle.pop()
        self._inflight[actor.run.remote(task)] = (actor, task)

    def wait_one(self) -> tuple[SceneTask, dict[str, Any]]:
        ready, _ = self.ray.wait(list(self._inflight), num_returns=1)
        actor, task = self._inflight.pop(ready[0])
        try:
            record = self.ray.get(ready[0])
        except self.ray.exceptions.RayActorError as err:  # the actor died with the scene, every retry
            lines = str(err).strip().splitlines()
            record = _died(task, MAX_WORKER_DEATHS + 1, lines[0] if lines else "")
        self._idle.append(actor)
        return task, record

    def close(self) -> None:
        for a in self._actors:
            self.ray.kill(a)
        if self._started:
            self.ray.shutdown()
