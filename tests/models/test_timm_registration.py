"""Importing ``vitp_geo.models`` (or ``vitp_geo.tasks``) registers the ``vitp_*`` backbones with timm."""

from __future__ import annotations

import subprocess
import sys


def _registers(module: str) -> bool:
    """Whether importing ``module`` in a fresh interpreter (empty timm registry) registers the models."""
    code = (
        f"import {module}, timm; raise SystemExit(0 if 'vitp_tiny_patch14_112' in timm.list_models() else 1)"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_the_models_and_tasks_imports_register_the_backbones_and_the_bare_package_does_not() -> None:
    """What docs/finetune.md promises, checked as behaviour (not by reading the doc's wording)."""
    assert _registers("vitp_geo.models")
    assert _registers("vitp_geo.tasks")
    # a bare import does not (it keeps `vitp-geo --help` fast)
    assert not _registers("vitp_geo")
