"""The import that docs/finetune.md says registers the ``vitp_*`` backbones with timm does so."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "finetune.md"


def _registers(module: str) -> bool:
    """Whether importing ``module`` in a fresh interpreter (empty timm registry) registers the models."""
    code = (
        f"import {module}, timm; raise SystemExit(0 if 'vitp_tiny_patch14_112' in timm.list_models() else 1)"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_the_documented_import_registers_the_backbones_and_the_bare_package_does_not() -> None:
    text = " ".join(DOC.read_text().split())
    claim = re.search(r"Importing `([\w.]+)` (?:\([^)]*\) )?registers `vitp_tiny_patch14_112`", text)
    assert claim, "docs/finetune.md no longer says which import registers the backbones"
    assert _registers(claim.group(1)), f"the doc says `import {claim.group(1)}` registers them; it does not"
    assert _registers("vitp_geo.tasks")  # the doc's parenthesis
    # the doc says a bare import does not (it keeps `vitp-geo --help` fast): keep it true
    assert "a bare `import vitp_geo` does not" in text and not _registers("vitp_geo")
