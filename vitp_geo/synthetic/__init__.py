"""Seeded synthetic aerial-like scenes (``scene``); the medical phantoms are :mod:`vitp_geo.medical.phantoms`.

The scene names below are imported lazily, on first use, so that ``import vitp_geo.synthetic``
does not pull in the geospatial stack (shapely, rasterio) before a scene is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vitp_geo.synthetic.scene import (
        CLASS_COLORS,
        CLASS_NAMES,
        SCENE_CLASSES,
        ChangePair,
        SyntheticScene,
        generate_change_pair,
        generate_scene,
        write_change_pair,
        write_scene,
    )

__all__ = [
    "CLASS_COLORS",
    "CLASS_NAMES",
    "SCENE_CLASSES",
    "ChangePair",
    "SyntheticScene",
    "generate_change_pair",
    "generate_scene",
    "write_change_pair",
    "write_scene",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("vitp_geo.synthetic.scene"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
