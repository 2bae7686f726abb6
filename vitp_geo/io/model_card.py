"""What a fine-tuned checkpoint must record so that inference needs nothing else.

``vitp-geo finetune`` stores a ``ModelCard`` in the Lightning checkpoint under the key
``"vitp_geo_card"`` (a plain dict, see ``to_dict``); ``vitp-geo infer`` reads it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vitp_geo.io.raster import RenderRule, open_raster

CARD_KEY = "vitp_geo_card"
TASK_KINDS = ("segmentation", "change", "detection")  # what a card (and `vitp-geo finetune`) can be


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
        if self.task not in TASK_KINDS:
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

    # -------------------------------------------------------- how inference reads a scene
    @property
    def raw_input(self) -> bool:
        """Whether the model takes the scene's own band values (normalised by mean / std) rather than
        the documented 3-channel render rule: models trained on raw bands, and any model whose
        channel count is not 3."""
        return len(self.bands) != 3 or bool(self.render.get("raw", False))

    def scene_bands(self, override: Sequence[int] | None = None, name: str = "the model") -> tuple[int, ...]:
        """The 1-based scene bands to read: ``override`` (``--bands``) or the card's.

        Raises:
            ValueError: a raw-band model given another number of bands.
        """
        bands = tuple(override) if override else tuple(self.bands)
        if self.raw_input and len(bands) != len(self.bands):
            raise ValueError(
                f"{name} takes {len(self.bands)} band(s) {self.bands}, --bands gives {len(bands)}"
            )
        return bands

    def render_rule(self, bands: Sequence[int]) -> RenderRule:
        """The render rule inference applies (percentiles and SAR settings as trained)."""
        render = {k: v for k, v in self.render.items() if k in ("percentiles", "sar_db")}
        if "percentiles" in render:
            render["percentiles"] = tuple(render["percentiles"])
        return RenderRule(bands=tuple(bands), **render)

    def check_scene(self, path: str | Path, bands: Sequence[int], name: str = "the checkpoint") -> None:
        """Refuse a scene the model cannot read before any work: too few bands, or (raw-band
        models) band values of another type than the model was trained on.

        Raises:
            ValueError: naming the scene, the checkpoint and the values.
        """
        with open_raster(path) as src:
            count = src.count
            dtypes = [src.dtypes[b - 1] for b in bands if b <= count]
        if max(bands) > count:
            raise ValueError(
                f"{path} has {count} band(s) but {name} reads bands {list(bands)} (pick others with --bands)"
            )
        trained = self.render.get("dtype") if self.raw_input else None
        if trained is not None and any(d != trained for d in dtypes):
            raise ValueError(
                f"{path} holds {'/'.join(sorted(set(dtypes)))} band values but {name} was trained on raw "
                f"{trained} values, so its scores would be meaningless; convert the scene to {trained} "
                "(gdal_translate -ot ... -scale) or fine-tune on this data type"
            )
