"""Machine-readable progress (``--progress jsonl``) and the deferred Ctrl-C of a one-device run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from toy_models import PixelModel, write_test_scene

from vitp_geo.io.qgis_styles import ClassStyle
from vitp_geo.synthetic.scene import CLASS_COLORS, CLASS_NAMES
from vitp_geo.tiling.engine import EngineConfig, segment_scene
from vitp_geo.tiling.progress import RunInterrupted
from vitp_geo.tiling.resume import work_dir_for
from vitp_geo.tiling.segmentation_outputs import SegmentationOutputs

CLASSES = ClassStyle(CLASS_NAMES, CLASS_COLORS)
CFG = EngineConfig(tile_size=64, overlap=0.25, batch_size=2, activation="none", progress=False)


class SigintAt:
    """The model, sending this process ``times`` SIGINTs during its ``call``-th call (Ctrl-C)."""

    def __init__(self, model: torch.nn.Module, call: int, times: int = 1) -> None:
        self.model, self.call, self.times, self.calls = model, call, times, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.call:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)
        return self.model(x)


def _run(scene: Path, out: Path, model: object = None, **kw: object) -> object:
    outputs = SegmentationOutputs(out / "pred.tif", out / "probs.tif", out / "pred.gpkg")
    config = kw.pop("config", CFG)
    return segment_scene(scene, model or PixelModel(), CLASSES, outputs, config=config, **kw)  # type: ignore[arg-type]


def test_jsonl_progress_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_test_scene(tmp_path / "scene.tif", (200, 190))
    summary = _run(
        tmp_path / "scene.tif", tmp_path, config=EngineConfig(**{**CFG.__dict__, "progress": "jsonl"})
    )
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    phases = [r["phase"] for r in records]
    assert phases[0] == "infer" and phases[-1] == "write" and set(phases) == {"infer", "write"}
    windows = [r for r in records if r["phase"] == "infer"]
    done = [r["done"] for r in windows]
    assert done[0] == 0 and done == sorted(done) and done[-1] == windows[-1]["total"] == summary.windows_total
    assert all(r["unit"] == "window" for r in windows) and windows[-1]["eta_s"] == 0.0


def test_first_ctrl_c_stops_at_a_row_with_state_saved_and_resume_is_bit_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_test_scene(tmp_path / "scene.tif", (260, 200), nodata_box=(70, 140, 0, 60))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    _run(tmp_path / "scene.tif", a)
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    # the periodic checkpoint is off (one hour): only the stop itself can have saved the state
    cfg = EngineConfig(**{**CFG.__dict__, "checkpoint_every_s": 3600.0, "progress": "jsonl"})
    model = SigintAt(PixelModel(), call=5)
    with pytest.raises(RunInterrupted, match="--resume"):
        _run(tmp_path / "scene.tif", b, model=model, config=cfg)
    out = capsys.readouterr()
    assert "stopping after this row of windows" in out.err
    stop = json.loads(out.out.splitlines()[-1])
    assert stop == {"phase": "interrupted", "resumable": True, "state": str(work_dir_for(b / "pred.tif"))}
    assert (work_dir_for(b / "pred.tif") / "state.npz").exists()
    assert not (b / "pred.tif").exists()
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    summary = _run(tmp_path / "scene.tif", b, resume=True)
    assert summary.resumed_from_row > 0  # continued from the row where it stopped
    for name in ("pred.tif", "probs.tif"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    write_test_scene(tmp_path / "scene.tif", (200, 190))
    model = SigintAt(PixelModel(), call=2, times=2)
    with pytest.raises(KeyboardInterrupt) as info:
        _run(tmp_path / "scene.tif", tmp_path, model=model)
    assert not isinstance(info.value, RunInterrupted) and model.calls == 2  # inside the 2nd call
    assert not (tmp_path / "pred.tif").exists()
