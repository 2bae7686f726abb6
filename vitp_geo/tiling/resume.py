"""The work folder of a streaming segmentation run and the state an interrupted run leaves in it.

``segment_scene`` (``tiling.engine``) writes everything under ``.<stem>.partial.work`` beside the
class map (``work_dir_for``). The folder holds ``meta.json`` (a fingerprint of the scene files,
model and settings) and, once a checkpoint has been taken, ``state.npz``: the next window row, the
raw rows already written, a CRC-32 per raw row file and the accumulator's open strip
(``SavedRun``). ``prepare_work`` starts a fresh folder or, with ``resume``, validates and loads
the saved state; ``save_state`` writes it atomically. A refused resume (other settings, damaged
state) raises before anything in the folder is touched, so the interrupted run stays resumable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitp_geo.io.atomic import atomic_output

STATE_FILE = "state.npz"  # the saved state inside the work folder
META_FILE = "meta.json"  # the run's fingerprint inside the work folder

logger = logging.getLogger(__name__)


@dataclass
class SavedRun:
    """Where an interrupted run stopped: what ``state.npz`` holds.

    Attributes:
        next_row: the first window row still to run.
        rows_written: scene rows already appended to every raw row file.
        accumulator: ``StripAccumulator.state()`` of the open strip.
        crcs: CRC-32 of the rows written, per raw row file (``class``, ``probs``, ``conf``).
    """

    next_row: int
    rows_written: int
    accumulator: dict[str, np.ndarray]
    crcs: dict[str, int]


def work_dir_for(class_map: str | Path) -> Path:
    """The work folder of the run that writes ``class_map``: ``.<stem>.partial.work`` beside it."""
    p = Path(class_map)
    return p.with_name(f".{p.stem}.partial.work")


def has_saved_state(work: Path) -> bool:
    """Whether ``work`` holds a saved state that ``--resume`` could continue from."""
    return (work / STATE_FILE).exists()


def run_fingerprint(paths: Sequence[Path], settings: dict[str, object]) -> str:
    """SHA-256 of the settings and each scene file's resolved path, size and mtime."""
    items: dict[str, object] = dict(settings)
    for i, p in enumerate(paths):
        st = p.stat()
        items[f"scene{i}"] = [str(p.resolve()), st.st_size, st.st_mtime_ns]
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()


def save_state(work: Path, run: SavedRun) -> None:
    """Write ``run`` to ``work/state.npz`` under a temporary name, renamed when complete."""
    state = dict(run.accumulator)
    state["next_row"] = np.asarray(run.next_row)
    state["rows_written"] = np.asarray(run.rows_written)
    for name, crc in run.crcs.items():
        state[f"crc_{name}"] = np.asarray(crc, dtype=np.uint32)
    with atomic_output(work / STATE_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **state)  # type: ignore[arg-type]


def prepare_work(work: Path, fingerprint: str, resume: bool) -> SavedRun | None:
    """The saved state of a resumed run, or None for a fresh run.

    A resumed run reuses ``work`` as it is; a fresh run has created ``work`` anew (and recorded
    ``fingerprint`` in it). A refused resume raises before anything in ``work`` is touched.

    Raises:
        ValueError: ``resume`` and the saved run's fingerprint differs, or its state is damaged.
    """
    meta, state_file = work / META_FILE, work / STATE_FILE
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
        crcs = {
            key.removeprefix("crc_"): int(state.pop(key)) for key in list(state) if key.startswith("crc_")
        }
        return SavedRun(next_row, rows_written, state, crcs)
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
    return None
