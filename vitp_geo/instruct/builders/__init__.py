"""Instruction builders: labelled rasters → InternVL/LLaVA conversation records.

Each source (``VectorSource``, ``MaskSource``, ``ClassFolderSource``, ``TorchGeoSource``,
``ChangeSource``) turns one kind of label into records; ``build_corpus`` runs sources into a
corpus folder (``images/``, ``annotations.jsonl``, ``recipe.json``) atomically.
"""

from vitp_geo.instruct.builders.change import ChangeSource
from vitp_geo.instruct.builders.classification import TORCHGEO_DATASETS, ClassFolderSource, TorchGeoSource
from vitp_geo.instruct.builders.context import BuildContext, BuildSummary
from vitp_geo.instruct.builders.corpus import ANNOTATION_NAME, RECIPE_NAME, CorpusResult, build_corpus
from vitp_geo.instruct.builders.mask import MaskSource, load_class_names
from vitp_geo.instruct.builders.vector import VectorSource

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
