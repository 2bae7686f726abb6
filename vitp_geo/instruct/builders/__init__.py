"""Instruction builders: labelled rasters → InternVL/LLaVA conversation records.

Each source (``VectorSource``, ``MaskSource``, ``ClassFolderSource``, ``TorchGeoSource``,
``ChangeSource``) turns one kind of label into records; ``build_corpus`` runs sources into a
corpus folder (``images/``, ``annotations.jsonl``, ``recipe.json``) atomically.

The names below are imported on first use, so that builders without geospatial dependencies
(``context``, ``corpus``, ``tiles``; the medical builders in ``vitp_geo.medical.instructions``)
can be imported without rasterio or geopandas.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vitp_geo.instruct.builders.change import ChangeSource
    from vitp_geo.instruct.builders.classification import TORCHGEO_DATASETS, ClassFolderSource, TorchGeoSource
    from vitp_geo.instruct.builders.context import BuildContext, BuildSummary
    from vitp_geo.instruct.builders.corpus import ANNOTATION_NAME, RECIPE_NAME, CorpusResult, build_corpus
    from vitp_geo.instruct.builders.mask import MaskSource, load_class_names
    from vitp_geo.instruct.builders.vector import VectorSource

_WHERE: dict[str, str] = {
    "ChangeSource": "change",
    "TORCHGEO_DATASETS": "classification",
    "ClassFolderSource": "classification",
    "TorchGeoSource": "classification",
    "BuildContext": "context",
    "BuildSummary": "context",
    "ANNOTATION_NAME": "corpus",
    "RECIPE_NAME": "corpus",
    "CorpusResult": "corpus",
    "build_corpus": "corpus",
    "MaskSource": "mask",
    "load_class_names": "mask",
    "VectorSource": "vector",
}

__all__ = [
    "ANNOTATION_NAME",
    "RECIPE_NAME",
    "TORCHGEO_DATASETS",
    "BuildContext",
    "BuildSummary",
    "ChangeSource",
    "ClassFolderSource",
    "CorpusResult",
    "MaskSource",
    "TorchGeoSource",
    "VectorSource",
    "build_corpus",
    "load_class_names",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"vitp_geo.instruct.builders.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
