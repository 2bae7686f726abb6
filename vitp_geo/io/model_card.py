"""What a fine-tuned checkpoint must record so that inference needs nothing else.

``vitp-geo finetune`` stores a ``ModelCard`` in the Lightning checkpoint under the key
``"vitp_geo_card"`` (a plain dict, see ``to_dict``); ``vitp-geo infer`` reads it back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CARD_KEY = "vitp_geo_card"


@dataclass
class ModelCard:
    """Everything inference needs besides the weights.

    Attributes:
        task: ``segmentation``, ``change`` or ``detection``.
        class_names: one name per output class (index = class id).
        class_colors: RGB per class, 0–255.
        bands: 1-based input bands read from the scene, in model channel order.
        mean, std: per-channel normalisation applied to the 0–255 rendered input.
        tile_size: the window size the model was trained on (pixels).
        arch: how to rebuild the model (task-specific keys, e.g. backbone name, image size).
        render: how scene bands become model input: ``{"raw": True, "dtype": "uint8"}`` when the
            model was trained on the raster's own band values (normalised by mean / std; ``dtype``
            is the training rasters' value type, which a scene must share), else the ``RenderRule``
            fields.
    """

    task: str
    class_names: list[str]
    class_colors: list[tuple[int, int, int]]
    bands: list[int]
    mean: list[float]
    std: list[float]
    tile_size: int
    arch: dict[str, Any] = field(default_factory=dict)
    render: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in ("segmentation", "change", "detection"):
            raise ValueError(f"task must be segmentation, change or detection, got {self.task!r}")
        if len(self.class_colors) != len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names but {len(self.class_colors)} colours")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values, std {len(self.std)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        data = dict(data)
        data["class_colors"] = [tuple(c) for c in data["class_colors"]]
        return cls(**data)
