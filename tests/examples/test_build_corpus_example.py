"""Smoke test of examples/build_corpus_and_pretrain.py (corpus → 3 pretraining steps)."""

from __future__ import annotations

import importlib.util
import runpy
from pathlib import Path

import pytest

from vitp_geo.instruct.records import read_jsonl

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "build_corpus_and_pretrain.py"


@pytest.mark.slow
def test_example_builds_a_corpus_and_pretrains(tmp_path):
    if importlib.util.find_spec("vitp_geo.cli.pretrain") is None:
        pytest.skip("vitp_geo.cli.pretrain is not written yet; the example's pretraining step needs it")
    module = runpy.run_path(str(EXAMPLE))
    rc = module["main"](["--workdir", str(tmp_path), "--max-steps", "3"])
    assert rc == 0
    recs = read_jsonl(tmp_path / "corpus" / "annotations.jsonl").records
    assert {"grounding", "counting", "area_share"} <= {r.task for r in recs}
    run = tmp_path / "run"
    assert (run / "backbone.safetensors").exists()
