"""The ViTP vision-language model: vision tower, pixel-shuffle projector, causal LM, VRL,
tokenizer and chat template."""

from vitp_geo.vlm.build import build_tiny_vlm, load_internvl
from vitp_geo.vlm.model import ViTPConfig, ViTPModel, ViTPOutput
from vitp_geo.vlm.projector import build_projector, pixel_shuffle
from vitp_geo.vlm.template import tokenize_conversation
from vitp_geo.vlm.tokenizer import build_offline_tokenizer, load_tokenizer
from vitp_geo.vlm.vrl import VRLResult, visual_robustness_drop

__all__ = [
    "VRLResult",
    "ViTPConfig",
    "ViTPModel",
    "ViTPOutput",
    "build_offline_tokenizer",
    "build_projector",
    "build_tiny_vlm",
    "load_internvl",
    "load_tokenizer",
    "pixel_shuffle",
    "tokenize_conversation",
    "visual_robustness_drop",
]
