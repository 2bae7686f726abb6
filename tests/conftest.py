"""Shared test fixtures: the real sample data folder and seeded synthetic scenes."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VITP_GEO_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Keep tests on CPU, deterministic and offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# The synthetic base ViT of the rs default (vitp_geo.pretrain.base) is built once per test session
# in a folder of its own, never in the user's cache.
_BASE_CACHE = tempfile.mkdtemp(prefix="vitp-geo-test-cache-")
atexit.register(shutil.rmtree, _BASE_CACHE, ignore_errors=True)
os.environ["VITP_GEO_CACHE"] = _BASE_CACHE


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (real sample files); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data folder not found: {SHARED_DATA}")
    return SHARED_DATA


def _load_generator(name: str) -> ModuleType:
    """``tests/data/<name>/data.py`` as a module (the seeded fake-dataset generators)."""
    import importlib.util

    path = ROOT / "tests" / "data" / name / "data.py"
    spec = importlib.util.spec_from_file_location(f"fake_{name}_data", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def torchgeo_layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fake LoveDA, Potsdam and LEVIR-CD roots in torchgeo 0.8.1's on-disk layouts (written once)."""
    base = tmp_path_factory.mktemp("torchgeo_layouts")
    return {name: _load_generator(name).write(base / name) for name in ("loveda", "potsdam", "levircd")}
