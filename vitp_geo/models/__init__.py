"""Vision backbones: timm-registered InternViT-layout ViTs (``vit``), weight conversion (``convert``), export.

Importing this package registers ``vitp_tiny_patch14_112`` and ``vitp_tiny_patch14_224`` with timm.
"""

from vitp_geo.models.convert import convert_internvit_state_dict, resize_pos_embed
from vitp_geo.models.vit import (
    INTERN_LAYOUT_ARCH,
    build_vision_tower,
    export_backbone,
    load_backbone,
)

__all__ = [
    "INTERN_LAYOUT_ARCH",
    "build_vision_tower",
    "convert_internvit_state_dict",
    "export_backbone",
    "load_backbone",
    "resize_pos_embed",
]
