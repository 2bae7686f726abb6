"""The state of a catalogue run that is never lost: ``run.json`` and ``manifest.jsonl`` in the out dir.

``run.json`` (written once, atomically) holds the settings fingerprint: the checkpoint (path,
size, mtime), the task and every setting that changes an output. A rerun with other settings is
refused before anything is touched.

``manifest.jsonl`` is append-only: one JSON object per line, written with a single ``write`` on a
file opened ``O_APPEND`` and flushed to disk, so a driver killed at any moment leaves at most a
torn last line (ignored on reading). The last record of a scene is its state::

    {"scene": "tile_03", "status": "running", "time": ...}
    {"scene": "tile_03", "status": "done", "outputs": [{"path": "scenes/tile_03/class_map.tif",
     "bytes": 8123, "sha256": "..."}], "seconds": 1.9, "worker": "host:1234", "resumed_from_row": 0,
     "fingerprint": "...", "time": ...}
    {"scene": "bad", "status": "failed", "error": "RasterReadError: ...", ...}

``running`` means a worker had it when the record was written: after a killed driver or worker
such a scene is resumed (the engine's own resume state) on the next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitp_geo.io.atomic import atomic_output

MANIFEST_NAME = "manifest.jsonl"
RUN_NAME = "run.json"
STATUSES = ("running", "done", "failed")

logger = logging.getLogger(__name__)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def output_entry(path: Path, root: Path) -> dict[str, Any]:
    """``{"path": relative to root, "bytes": size, "sha256": hex}`` of a written output."""
    return {"path": str(path.relative_to(root)), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def outputs_problem(record: Mapping[str, Any], root: Path) -> str | None:
    """Why a ``done`` record's outputs cannot be trusted (missing, other size or checksum), or None."""
    for entry in record.get("outputs", []):
        p = root / entry["path"]
        if not p.is_file():
            return f"{entry['path']} is missing"
        if p.stat().st_size != entry["bytes"]:
            return f"{entry['path']} has {p.stat().st_size} bytes, {entry['bytes']} were written"
        if sha256_file(p) != entry["sha256"]:
            return f"{entry['path']} changed since it was written (sha256)"
    return None


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def claim_out_dir(out_dir: Path, settings: Mapping[str, Any]) -> str:
    """Record ``settings`` in ``out_dir/run.json``, or refuse (ValueError) if it holds other ones.

    Nothing is written when the settings are refused. Returns the fingerprint.
    """
    fp = settings_fingerprint(settings)
    run_file = out_dir / RUN_NAME
    if run_file.exists():
        try:
            recorded = json.loads(run_file.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{run_file}: unreadable ({err}); it is kept: use another --out-dir") from err
        if recorded.get("fingerprint") != fp:
            old = recorded.get("settings", {})
            diff = [
                f"{k}: {old.get(k)!r} -> {settings.get(k)!r}"
                for k in sorted({*old, *settings})
                if old.get(k) != settings.get(k)
            ]
            raise ValueError(
                f"{out_dir} holds a run with other settings ({'; '.join(diff) or 'fingerprint differs'}); "
                "nothing was touched: rerun with the same settings, or use another --out-dir"
            )
        return fp
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(run_file) as tmp:
        tmp.write_text(json.dumps({"fingerprint": fp, "settings": dict(settings)}, indent=1, default=str))
    return fp


class Manifest:
    """The append-only JSONL record of a run's scenes (module doc)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / MANIFEST_NAME

    def records(self) -> list[dict[str, Any]]:
        """Every complete record in order (a torn line, from a killed writer, is skipped)."""
        if not self.path.exists():
            return []
        out = []
        for n, line in enumerate(self.path.read_bytes().split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:  # a write cut short by a kill: that scene's earlier state stands
                logger.warning("%s, line %d: a torn record (a killed run) is ignored", self.path, n)
        return out

    def states(self) -> dict[str, dict[str, Any]]:
        """The last record of each scene."""
        return {r["scene"]: r for r in self.records() if "scene" in r}

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record as one line (single write, O_APPEND, fsync)."""
        data = json.dumps({**record, "time": round(time.time(), 3)}, default=str).encode() + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size and not self._ends_with_newline():
                data = b"\n" + data  # a torn line from a killed writer stays on its own line
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
