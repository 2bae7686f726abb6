"""Argument errors answer at once: the bad value is refused before torch, Lightning or torchgeo load."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
    (["pretrain", "--lr", "inf"], "lr must be a finite number > 0, got inf"),
    (["pretrain", "--checkpoint-every", "-1"], "checkpoint-every must be >= 1, got -1"),
    (["pretrain", "--reliance-shuffles", "0"], "reliance-shuffles must be >= 1, got 0"),
    (["pretrain", "--drop-path", "2"], "drop-path must be in [0, 1), got 2.0"),
    (
        ["finetune", "segmentation", "--batch-size", "0", "--output", "{tmp}/run"],
        "--batch-size must be >= 1, got 0",
    ),
    (["finetune", "change", "--max-steps", "-2", "--output", "{tmp}/run"], "--max-steps must be >= 1"),
    (
        ["finetune", "segmentation", "--task1-out", "{tmp}/t1", "--output", "{tmp}/run"],
        "--task1-out is for detection",
    ),
]


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(a[:3]) for a, _ in CASES])
def test_bad_flags_are_refused_before_the_heavy_imports(tmp_path, argv, message) -> None:  # noqa: ANN001
    code = (
        "import sys; from vitp_geo.cli.main import main; rc = main(sys.argv[1:]); "
        "print('loaded:', sorted(m for m in ('torch', 'lightning', 'torchgeo') if m in sys.modules)); "
        "sys.exit(rc)"
    )
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr.strip().splitlines()[-1]
    assert "loaded: []" in res.stdout, res.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written
