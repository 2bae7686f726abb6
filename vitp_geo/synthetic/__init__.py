"""The one seeded generator of georeferenced aerial-like scenes (see ``scene``)."""

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
