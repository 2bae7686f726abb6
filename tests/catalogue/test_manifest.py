"""The manifest survives a writer killed mid-line; run.json refuses other settings untouched;
a scene folder is never written by two workers at once."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from pathlib import Path

import pytest

from vitp_geo.catalogue.manifest import Manifest, claim_out_dir
from vitp_geo.catalogue.worker import scene_lock


def test_a_torn_last_line_is_skipped_and_the_next_record_starts_a_new_line(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    m.append({"scene": "a", "status": "running"})
    m.append({"scene": "a", "status": "done"})
    with open(m.path, "ab") as f:  # a driver killed in the middle of a write
        f.write(b'{"scene": "b", "stat')
    assert [(r["scene"], r["status"]) for r in m.records()] == [("a", "running"), ("a", "done")]
    m.append({"scene": "b", "status": "running"})
    assert {k: v["status"] for k, v in m.states().items()} == {"a": "done", "b": "running"}
    lines = m.path.read_bytes().split(b"\n")
    assert lines[2] == b'{"scene": "b", "stat' and json.loads(lines[3])["status"] == "running"


def test_other_settings_are_refused_naming_what_differs(tmp_path: Path) -> None:
    fp = claim_out_dir(tmp_path, {"overlap": 0.25, "tile_size": None})
    before = (tmp_path / "run.json").read_bytes()
    assert claim_out_dir(tmp_path, {"overlap": 0.25, "tile_size": None}) == fp
    with pytest.raises(ValueError, match=r"overlap: 0.25 -> 0.5\); nothing was touched"):
        claim_out_dir(tmp_path, {"overlap": 0.5, "tile_size": None})
    assert (tmp_path / "run.json").read_bytes() == before
    assert json.loads(before)["fingerprint"] == fp


def test_a_scene_folder_held_by_another_worker_is_waited_for(tmp_path: Path) -> None:
    fd = os.open(tmp_path / ".worker.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a worker left over from a killed driver still runs the scene
    threading.Timer(0.5, os.close, [fd]).start()  # ... and dies half a second later
    t0 = time.monotonic()
    with scene_lock(tmp_path):
        waited = time.monotonic() - t0
    assert waited >= 0.45
