"""`vitp-geo pretrain --domain med` with no data: phantoms → slices → instruction corpus → the tiny VLM run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from vitp_geo.cli.main import main
from vitp_geo.instruct.recipe import load_recipe
from vitp_geo.instruct.records import read_jsonl


@pytest.mark.slow
def test_embedded_med_pretraining_exports_a_finite_backbone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["pretrain", "--domain", "med", "--max-steps", "4", "--batch-size", "4", "--output", str(out)]
    assert main([*args, "--reliance-records", "16", "--checkpoint-every", "4"]) == 0
    printed = capsys.readouterr()
    assert "medical (CT, MRI, X-ray phantoms)" in printed.err
    assert "image gain" in printed.out and "backbone.safetensors" in printed.out
    # the corpus came from the phantoms, through the medical builders, all three modalities
    entries = {e.name: e for e in load_recipe(out / "corpus" / "recipe.json")}
    assert (
        set(entries) == {"med_default_align", "med_default"}
        and entries["med_default_align"].repeat_time == 4.0
    )
    records = [r for e in entries.values() for r in read_jsonl(e.annotation).records]
    assert {r.modality for r in records} == {"ct", "mri", "xray"}
    assert {r.task for r in read_jsonl(entries["med_default_align"].annotation).records} == {
        "classes",
        "classification",
    }
    # the backbone: a complete timm state dict, finite, with the run's provenance and image reliance
    spec = json.loads((out / "backbone.json").read_text())
    vit = timm.create_model(spec["arch"], pretrained=False, **spec["model_kwargs"])
    weights = load_file(out / "backbone.safetensors")
    vit.load_state_dict(weights)
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert spec["pretraining"]["domain"] == "med" and spec["pretraining"]["data"] is None
    reliance = spec["image_reliance"]
    assert reliance is not None and math.isfinite(reliance["image_gain"])
    lines = (out / "image_reliance.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["step"] == 4
