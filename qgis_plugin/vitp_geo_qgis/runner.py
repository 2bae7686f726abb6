"""Run the ``vitp-geo`` command as a subprocess and follow it: progress, cancel, errors.

Plain Python (standard library only): no ``qgis``, no ``torch``, no ``vitp_geo``. QGIS runs the
plugin in its own Python; the model runs in the environment ``vitp-geo`` was installed into.

``vitp-geo infer --progress jsonl`` prints one JSON object per line on stdout (``phase``,
``done``/``total`` windows, ``eta_s``); its errors are one line on stderr
(``vitp-geo infer: error: ...``, exit code 2). A cancel sends SIGINT first: a segmentation run then
stops at the next window-row boundary, saves its state and says so on stdout
(``{"phase": "interrupted", "resumable": true, "state": ...}``), so ``--resume`` continues it.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# Where the progress bar stands when a phase starts; the window phases fill WINDOWS_FROM..WINDOWS_TO.
PHASE_AT = {"load": 1.0, "write": 92.0, "done": 100.0}
WINDOW_PHASES = ("infer", "detect")
WINDOWS_FROM, WINDOWS_TO = 4.0, 92.0
PHASE_TEXT = {
    "load": "loading the model",
    "infer": "running the model over the scene",
    "detect": "detecting objects over the scene",
    "write": "writing the outputs (COG, GeoPackage, QGIS styles)",
    "done": "done",
    "interrupted": "stopped",
}
# Environment variables of QGIS's own Python that must not leak into the environment's Python.
PYTHON_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "PYTHONNOUSERSITE")


class ExecutableNotFound(ValueError):
    """The configured ``vitp-geo`` executable does not exist (message: one line)."""


def find_executable(configured: str | None) -> str:
    """The ``vitp-geo`` to run: the configured path (a file, or an environment folder holding
    ``bin/vitp-geo``), else ``vitp-geo`` on ``PATH``.

    Raises:
        ExecutableNotFound: naming the configured path, or saying none is on ``PATH``.
    """
    value = (configured or "").strip()
    if value:
        path = os.path.expanduser(value)
        if os.path.isdir(path):
            for rel in ("bin/vitp-geo", "Scripts/vitp-geo.exe", "vitp-geo", "vitp-geo.exe"):
                cand = os.path.join(path, rel)
                if os.path.isfile(cand) and os.access(cand, os.X_OK):
                    return cand
            raise ExecutableNotFound(
                f"vitp-geo executable not found in the folder {path} (set 'vitp-geo executable' in "
                "Processing > Options > Providers > vitp-geo to the vitp-geo of your environment)"
            )
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ExecutableNotFound(
                f"vitp-geo executable not found: {path} (set 'vitp-geo executable' in "
                "Processing > Options > Providers > vitp-geo to the vitp-geo of your environment)"
            )
        return path
    found = shutil.which("vitp-geo")
    if found is None:
        raise ExecutableNotFound(
            "vitp-geo executable not found on PATH; set 'vitp-geo executable' in Processing > Options > "
            "Providers > vitp-geo to the vitp-geo of the environment it is installed in"
        )
    return found


def child_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The subprocess's environment: QGIS's, less the variables that steer QGIS's Python."""
    env = dict(os.environ if base is None else base)
    for name in PYTHON_ENV:
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ProgressMap:
    """JSON progress records → a percentage that never goes down and phase texts."""

    def __init__(self) -> None:
        self.percent = 0.0
        self.phase: str | None = None

    def update(self, record: dict) -> tuple[float, str | None]:
        """(percent, phase text when the phase changed, else None) for one record."""
        phase = str(record.get("phase", ""))
        text = None
        if phase != self.phase:
            self.phase = phase
            text = PHASE_TEXT.get(phase, phase)
        value = PHASE_AT.get(phase, self.percent)
        if phase in WINDOW_PHASES:
            total, done = record.get("total") or 0, record.get("done") or 0
            share = min(done, total) / total if total else 0.0
            value = WINDOWS_FROM + (WINDOWS_TO - WINDOWS_FROM) * share
        self.percent = max(self.percent, value)
        return self.percent, text


@dataclass
class RunResult:
    returncode: int
    canceled: bool = False
    resumable: bool = False
    state: str | None = None
    error: str | None = None  # the one-line error of vitp-geo, when it failed
    stderr: list[str] = field(default_factory=list)
    pid: int = 0


def error_line(stderr_lines: Sequence[str], returncode: int) -> str:
    """The one line that says why ``vitp-geo`` failed."""
    lines = [ln.strip() for ln in stderr_lines if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("vitp-geo") and ": error:" in ln:
            return ln
    for ln in reversed(lines):
        if not ln.startswith("{"):
            return ln
    return f"vitp-geo exited with code {returncode} and printed no error"


def _reader(stream, tag: str, out: queue.Queue) -> None:
    try:
        for line in iter(stream.readline, ""):
            out.put((tag, line.rstrip("\r\n")))
    finally:
        out.put((tag, None))


def run_vitp(
    argv: Sequence[str],
    *,
    is_canceled: Callable[[], bool],
    on_progress: Callable[[float], None],
    on_phase: Callable[[str], None],
    on_output: Callable[[str], None],
    on_started: Callable[[int], None] | None = None,
    stop_grace_s: float = 120.0,
    poll_s: float = 0.05,
) -> RunResult:
    """Run ``argv`` (``vitp-geo infer ... --progress jsonl``) and follow it to its end.

    Args:
        argv: the command line.
        is_canceled: polled; once True, SIGINT is sent (then SIGTERM after ``stop_grace_s`` and
            SIGKILL 10 s later).
        on_progress: percent 0..100, never decreasing, 100 only on success.
        on_phase: a phase's text when it starts.
        on_output: every other line the command prints (stderr, and non-JSON stdout).
        on_started: called with the subprocess id.

    Returns:
        The result; the subprocess has exited (and been reaped) when this returns.
    """
    kwargs: dict = {}
    if sys.platform == "win32":  # a console control event instead of SIGINT
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        env=child_environment(),
        **kwargs,
    )
    if on_started is not None:
        on_started(proc.pid)
    lines: queue.Queue = queue.Queue()
    threads = [
        threading.Thread(target=_reader, args=(proc.stdout, "out", lines), daemon=True),
        threading.Thread(target=_reader, args=(proc.stderr, "err", lines), daemon=True),
    ]
    for t in threads:
        t.start()
    progress = ProgressMap()
    result = RunResult(returncode=0, pid=proc.pid)
    open_streams = 2
    stop_sent = term_sent = kill_sent = 0.0
    try:
        while open_streams or proc.poll() is None:
            if is_canceled() and not stop_sent and proc.poll() is None:
                result.canceled = True
                stop_sent = time.monotonic()
                _interrupt(proc)
            now = time.monotonic()
            if stop_sent and not term_sent and now - stop_sent > stop_grace_s and proc.poll() is None:
                term_sent = now
                proc.terminate()
            if term_sent and not kill_sent and now - term_sent > 10 and proc.poll() is None:
                kill_sent = now
                proc.kill()
            try:
                tag, line = lines.get(timeout=poll_s)
            except queue.Empty:
                continue
            if line is None:
                open_streams -= 1
                continue
            if tag == "out" and line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict) and "phase" in record:
                    if record["phase"] == "interrupted":
                        result.resumable = bool(record.get("resumable"))
                        result.state = record.get("state")
                    pct, text = progress.update(record)
                    if record["phase"] != "done":
                        on_progress(pct)
                    if text:
                        on_phase(text)
                    continue
            if tag == "err":
                result.stderr.append(line)
            on_output(line)
    finally:
        if proc.poll() is None:  # an exception in a callback: leave no process behind
            proc.kill()
        result.returncode = proc.wait()
        for t in threads:
            t.join(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    if result.returncode == 0:  # also when a cancel came too late to stop it: the outputs are complete
        result.canceled = False
        on_progress(100.0)
    elif not result.canceled:
        result.error = error_line(result.stderr, result.returncode)
    return result


def _interrupt(proc: subprocess.Popen) -> None:
    try:
        if sys.platform == "win32":
            proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        else:
            proc.send_signal(signal.SIGINT)
    except OSError:
        pass
