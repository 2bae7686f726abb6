"""Imports flow one way: ``cli`` → ``tasks``/``pretrain`` → ``vlm``/``models``/``tiling`` → ``io``.

The order is ``/work/shared/DESIGN.md`` §2 ("Imports flow downward only"). Each package is
imported with all its submodules in a fresh interpreter and the ``vitp_geo`` packages it loaded
are checked; a second check reads every import statement, those inside functions too, since a
function-local import hid the cycles issue 20 found (``tasks.run`` importing the CLI).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# DESIGN.md's order, top to bottom: a package may load its own level and those below it.
LEVEL = {"cli": 3, "tasks": 2, "pretrain": 2, "vlm": 1, "models": 1, "tiling": 1, "io": 0}
# The library never loads the command line (issue 20 §1).
NO_CLI = ("tasks", "pretrain", "evaluation")
CHECKED = (*NO_CLI, "vlm", "models", "tiling", "io", "geometry", "medical", "instruct")

_LOAD_ALL = """
import importlib, json, pkgutil, sys
pkg = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(pkg.__path__, sys.argv[1] + "."):
    importlib.import_module(info.name)
print(json.dumps(sorted(n for n in sys.modules if n.startswith("vitp_geo."))))
"""


def _forbidden(pkg: str, target: str) -> bool:
    """Whether package ``pkg`` may not import ``vitp_geo.<target>``."""
    if target == pkg:
        return False
    if target == "cli":
        return True
    if pkg == "geometry":  # torch + NumPy only (DESIGN.md's table)
        return True
    return pkg in LEVEL and target in LEVEL and LEVEL[target] > LEVEL[pkg]


@pytest.mark.parametrize("pkg", CHECKED)
def test_a_fresh_interpreter_importing_a_package_loads_nothing_above_it(pkg):
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_ALL, f"vitp_geo.{pkg}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert any(m.startswith(f"vitp_geo.{pkg}") for m in loaded)
    bad = [m for m in loaded if _forbidden(pkg, m.split(".")[1])]
    assert not bad, f"importing vitp_geo.{pkg} loads {bad}"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute import in ``path`` (module level and inside functions), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("pkg", CHECKED)
def test_no_import_statement_runs_back_up_not_even_inside_a_function(pkg):
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / "vitp_geo" / pkg).rglob("*.py"))
        for line, module in _imports(path)
        if module.startswith("vitp_geo.") and _forbidden(pkg, module.split(".")[1])
    ]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_function_local_import_of_the_cli(tmp_path):
    """The check itself: the import tasks.run used to make (inside default_config) is caught."""
    src = tmp_path / "run.py"
    src.write_text(
        "def default_config():\n    from vitp_geo.cli.finetune_detection import detection_default_config\n"
    )
    assert _imports(src) == [(2, "vitp_geo.cli.finetune_detection")]
    assert _forbidden("tasks", "cli") and _forbidden("io", "models") and not _forbidden("tasks", "models")
