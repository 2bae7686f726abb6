"""Shared test fixtures: the real sample data folder and seeded synthetic scenes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VITP_GEO_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Keep tests on CPU, deterministic and offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (real sample files); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data folder not found: {SHARED_DATA}")
    return SHARED_DATA
