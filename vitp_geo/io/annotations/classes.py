"""Class lists of the detection benchmarks, in their official order, and name → id mapping.

Annotations are mapped to class ids **by name** (never by position in a file), so a dataset read
with another list keeps its objects' meaning. Matching ignores case (DIOR's XML writes
``Expressway-Service-area`` where some exports write ``expressway-service-area``).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "DIOR_CLASSES",
    "DOTA_V1_CLASSES",
    "DOTA_V15_CLASSES",
    "DOTA_V2_CLASSES",
    "DOTA_CLASSES",
    "class_index",
]

# DOTA devkit order (``wordname_15``); v1.5 adds container-crane, v2.0 adds airport and helipad.
DOTA_V1_CLASSES: tuple[str, ...] = (
    "plane",
    "baseball-diamond",
    "bridge",
    "ground-track-field",
    "small-vehicle",
    "large-vehicle",
    "ship",
    "tennis-court",
    "basketball-court",
    "storage-tank",
    "soccer-ball-field",
    "roundabout",
    "harbor",
    "swimming-pool",
    "helicopter",
)
DOTA_V15_CLASSES: tuple[str, ...] = (*DOTA_V1_CLASSES, "container-crane")
DOTA_V2_CLASSES: tuple[str, ...] = (*DOTA_V15_CLASSES, "airport", "helipad")
DOTA_CLASSES: dict[str, tuple[str, ...]] = {
    "1.0": DOTA_V1_CLASSES,
    "1.5": DOTA_V15_CLASSES,
    "2.0": DOTA_V2_CLASSES,
}

# DIOR (Li et al. 2020) in the paper's order, spelled as in the dataset's XML files. mmrotate lists
# the two expressway classes before "dam"; ids differ from ours there, names do not.
DIOR_CLASSES: tuple[str, ...] = (
    "airplane",
    "airport",
    "baseballfield",
    "basketballcourt",
    "bridge",
    "chimney",
    "dam",
    "Expressway-Service-area",
    "Expressway-toll-station",
    "golffield",
    "groundtrackfield",
    "harbor",
    "overpass",
    "ship",
    "stadium",
    "storagetank",
    "tenniscourt",
    "trainstation",
    "vehicle",
    "windmill",
)


def class_index(classes: Sequence[str]) -> dict[str, int]:
    """Case-insensitive name → id map of ``classes``; two names equal but for case are an error."""
    index: dict[str, int] = {}
    for i, name in enumerate(classes):
        key = name.lower()
        if key in index:
            raise ValueError(
                f"class names must differ (ignoring case), got {classes[index[key]]!r} and {name!r}"
            )
        index[key] = i
    return index
