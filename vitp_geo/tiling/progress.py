"""Progress of a scene run: a tqdm bar for people, JSON lines for programs, or nothing.

``progress`` settings (``EngineConfig.progress``, ``DetectionRunConfig.progress``, ``vitp-geo
infer --progress``) take ``True``/``"bar"`` (a tqdm bar on stderr), ``False``/``"none"`` or
``"jsonl"``: one JSON object per line on **stdout**, flushed at once, for a program that runs
``vitp-geo infer`` as a subprocess (the QGIS plugin)::

    {"phase": "load"}
    {"phase": "infer", "done": 12, "total": 90, "unit": "window", "eta_s": 3.4, "skipped": 0}
    {"phase": "write"}
    {"phase": "interrupted", "resumable": true, "state": "/data/.pred.partial.work"}
    {"phase": "done"}

``phase`` is always there; ``done``/``total`` (windows) and ``eta_s`` (seconds, from this
process's own rate; ``null`` until one step is done) come with the window phases (``infer`` for
segmentation and change, ``detect`` for detection). Window lines are sent at most every 0.2 s,
the last one always.

``stop_requested`` / ``defer_sigint``: a first Ctrl-C (SIGINT) while a segmentation run holds
``defer_sigint`` only asks the run to stop at the next window-row boundary, where its state is
saved for ``--resume``; a second one interrupts at once.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Protocol

from tqdm.auto import tqdm

ProgressMode = bool | str
MODES = ("bar", "jsonl", "none")
JSONL_MIN_INTERVAL_S = 0.2


def _mode(progress: ProgressMode) -> str:
    if progress is True:
        return "bar"
    if progress is False or progress is None:
        return "none"
    if progress not in MODES:
        raise ValueError(f"progress must be one of {', '.join(MODES)}, got {progress!r}")
    return str(progress)


def emit_jsonl(record: dict[str, Any]) -> None:
    """Write one progress record as a JSON line on stdout and flush it."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def report_phase(progress: ProgressMode, phase: str, **fields: Any) -> None:
    """Announce a phase (``load``, ``write``, ``done``, ...) in ``jsonl`` mode; nothing otherwise."""
    if _mode(progress) == "jsonl":
        emit_jsonl({"phase": phase, **fields})


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, **kwargs: Any) -> Any: ...
    def close(self) -> Any: ...


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlProgress:
    """A tqdm-like counter that prints JSON lines (module doc)."""

    def __init__(self, phase: str, total: int, initial: int = 0, unit: str = "window") -> None:
        self.phase, self.total, self.unit = phase, int(total), unit
        self.done = self._start = int(initial)
        self._t0 = time.monotonic()
        self._last = 0.0
        self._extra: dict[str, Any] = {}
        self._closed = False
        self._emit()

    def _emit(self) -> None:
        now = time.monotonic()
        ran = self.done - self._start
        eta = None
        if ran > 0:
            eta = round((now - self._t0) / ran * max(self.total - self.done, 0), 2)
        emit_jsonl(
            {
                "phase": self.phase,
                "done": self.done,
                "total": self.total,
                "unit": self.unit,
                "eta_s": eta,
                **self._extra,
            }
        )
        self._last = now

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        if self.done >= self.total or time.monotonic() - self._last >= JSONL_MIN_INTERVAL_S:
            self._emit()

    def set_postfix(self, **kwargs: Any) -> None:
        self._extra.update(kwargs)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._emit()


def progress_bar(
    progress: ProgressMode, *, total: int, initial: int = 0, desc: str, unit: str = "window"
) -> ProgressBar:
    """A bar for ``progress`` (module doc): tqdm on stderr, JSON lines on stdout, or a no-op."""
    mode = _mode(progress)
    if mode == "bar":
        return tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True)  # type: ignore[no-any-return]
    if mode == "jsonl":
        return JsonlProgress(desc, total, initial, unit)
    return _Silent()


_stop = threading.Event()


def stop_requested() -> bool:
    """Whether a deferred Ctrl-C (``defer_sigint``) asked the running job to stop."""
    return _stop.is_set()


@contextmanager
def defer_sigint(message: str) -> Iterator[None]:
    """Within the block, a first SIGINT sets ``stop_requested()`` (printing ``message``) instead
    of raising; a second raises ``KeyboardInterrupt`` at once. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if _stop.is_set():
            raise KeyboardInterrupt
        _stop.set()
        print(message, file=sys.stderr, flush=True)

    _stop.clear()
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _stop.clear()


class RunInterrupted(KeyboardInterrupt):
    """Stopped on request (Ctrl-C / SIGINT); the message says whether and how it can be resumed."""
