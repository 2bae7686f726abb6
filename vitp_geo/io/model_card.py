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

    @property
    def is_medical(self) -> bool:
        """Trained on slices of CT / MRI volumes (the card holds the slice rule)."""
        return "medical" in self.render

    @property
    def trained_dtype(self) -> str | None:
        """The value type a raw-band model was trained on, which a scene must share; ``None`` for
        models fed by the render rule. One rule for every model kind: the card's ``dtype``, or
        ``uint8`` for a card that says ``raw`` without one (checkpoints written before detection
        and tile-folder datamodules recorded it: they all fed 0–255 files)."""
        if not self.raw_input:
            return None
        dtype = self.render.get("dtype")
        if dtype is None and self.render.get("raw"):
            return "uint8"
        return None if dtype is None else str(dtype)

    def check_scene(
        self, path: str | Path, bands: Sequence[int], name: str = "the checkpoint", stretch: bool = False
    ) -> bool:
        """Refuse a scene the model cannot read before any work: a medical model, too few bands,
        or (raw-band models) band values of another type than the model was trained on.

        Args:
            path: the scene.
            bands: the 1-based bands read (``scene_bands``).
            name: the checkpoint, as the errors name it.
            stretch: the user's opt-in (``infer --stretch``) to feed a uint8-trained 3-band model a
                scene of another value type through the documented render rule
                (``vitp_geo.io.raster``: per-band percentile stretch to 0–255, the rule the
                instruction builders apply) instead of refusing it.

        Returns:
            Whether to feed the scene's raw band values (normalised by mean / std); ``False``: the
            3-channel render rule.

        Raises:
            ValueError: naming the scene, the checkpoint and the values.
        """
        if self.is_medical:
            raise ValueError(
                f"{name} is a medical model (trained on {self.render.get('modality', 'CT/MRI')} slices): "
                f"give it a NIfTI volume or a DICOM series folder, not the raster {path}"
            )
        with open_raster(path) as src:
            count = src.count
            dtypes = [src.dtypes[b - 1] for b in bands if b <= count]
        if max(bands) > count:
            raise ValueError(
                f"{path} has {count} band(s) but {name} reads bands {list(bands)} (pick others with --bands)"
            )
        trained = self.trained_dtype
        if trained is None or all(d == trained for d in dtypes):
            return self.raw_input
        renderable = trained == "uint8" and len(bands) == 3
        if stretch and renderable:
            return False  # the documented 3-channel rule: uint8 kept, other types stretched to 0-255
        found = "/".join(sorted(set(dtypes)))
        if stretch:
            raise ValueError(
                f"--stretch renders 3 bands to 0-255 for a model trained on uint8 values; {name} takes "
                f"{len(bands)} raw {trained} band(s), so {path} ({found}) must be converted to {trained}"
            )
        hint = (
            "pass --stretch to render it with the documented rule (each band stretched from its 2-98 % "
            "percentiles to 0-255, as build-instructions does), or "
            if renderable
            else ""
        )
        assumed = " (its card records no value type: taken as uint8)" if "dtype" not in self.render else ""
        raise ValueError(
            f"{path} holds {found} band values but {name} was trained on raw {trained} values{assumed}, so its "
            f"scores would be meaningless; {hint}convert the scene to {trained} (gdal_translate -ot ... "
            "-scale) or fine-tune on this data type"
        )
