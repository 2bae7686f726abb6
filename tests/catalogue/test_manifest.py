"""The manifest survives a writer killed mid-line; run.json refuses other settings untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vitp_geo.catalogue.manifest import Manifest, claim_out_dir


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
