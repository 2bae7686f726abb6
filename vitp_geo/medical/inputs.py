"""How a medical case becomes the ViT's 3-channel slices: one spec shared by training, inference and instructions.

A ``SliceInput`` names the channel rule (``intensity.ChannelRule``), the CT windows or the
normalisation preset (``intensity.IntensityPreset``), the MRI sequences and the slicing axis. It is
stored in the fine-tuned checkpoint's model card (``card.render["medical"]``) so ``vitp-geo infer``
prepares a new volume exactly as training did, and the instruction builder renders its PNGs with
it (``to_uint8``).

Value ranges: CT windows and min–max give [0, 1] (``unit_range``: the datamodule then normalises
with ImageNet's mean / std, as for RGB photographs); z-score presets (``mri-zscore``,
``ct-nnunet``) are fed as they are (mean 0, std 1). For PNG rendering z-scores are mapped from
[-3, 3] to 0–255.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitp_geo.constants import IMAGENET_MEAN, IMAGENET_STD
from vitp_geo.medical.intensity import (
    BRATS_DEFAULT_SEQUENCES,
    DEFAULT_CT_WINDOW_TRIPLET,
    ChannelRule,
    IntensityPreset,
    normalise,
    select_sequences,
)
from vitp_geo.medical.slicing import three_channel_slice

Z_RANGE = 3.0  # z-scores in [-Z_RANGE, Z_RANGE] span the PNG's 0-255

log = logging.getLogger(__name__)


def fill_non_finite(
    arrays: Sequence[np.ndarray], name: str | Path, note: str = ""
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Non-finite voxels (NaN, inf) are nodata: each array's are filled with its lowest finite value
    (air in CT, background in MRI), and a warning names the file and the count.

    Left in, one NaN voxel turns its whole slice into NaN logits (all background), and inf
    saturates every CT window (an all-inf volume came out 100 % liver).

    Args:
        arrays: a case's channel volumes, (X, Y, Z) or (X, Y, Z, C), on one grid.
        name: the case, as the warning and errors name it.
        note: appended to the warning (what the caller does with the nodata voxels).

    Returns:
        ``(arrays, nodata)``: the filled arrays and the (X, Y, Z) nodata mask, or the arrays as
        given and ``None`` when every voxel is finite.

    Raises:
        ValueError: no finite voxel at all (in some channel).
    """
    finite = [np.isfinite(a) if np.issubdtype(a.dtype, np.floating) else None for a in arrays]
    if all(f is None or bool(f.all()) for f in finite):
        return list(arrays), None
    nodata = np.zeros(arrays[0].shape[:3], bool)
    out = []
    for a, f in zip(arrays, finite, strict=True):
        if f is None or bool(f.all()):
            out.append(a)
            continue
        if not f.any():
            raise ValueError(f"{name}: every voxel is NaN or infinite; there is nothing to segment")
        out.append(np.where(f, a, a[f].min()))
        nodata |= ~f.reshape(*f.shape[:3], -1).all(axis=-1)
    log.warning(
        "%s: %d non-finite voxel(s) (NaN / inf) treated as nodata: filled with the lowest finite value%s",
        name,
        int(nodata.sum()),
        note,
    )
    return out, nodata


@dataclass(frozen=True)
class SliceInput:
    """The rule turning a case into (3, H, W) float32 slices (module doc).

    Attributes:
        rule: ``ct-windows`` (3 CT windows), ``neighbours`` (2.5D: k-1, k, k+1), ``mri-sequences``
            (3 of the case's sequences) or ``repeat`` (one channel three times: X-ray).
        windows: the three CT windows of ``ct-windows``.
        preset: the normalisation for the other rules (``ct-abdomen`` for 2.5D CT,
            ``mri-zscore`` for MRI, ``xray-minmax`` for radiographs).
        sequences: the MRI sequences kept by ``mri-sequences``, in channel order.
        axis: slicing axis of the RAS volume (2 = axial).
    """

    rule: ChannelRule = ChannelRule.CT_WINDOWS
    windows: tuple[str, str, str] = tuple(str(w) for w in DEFAULT_CT_WINDOW_TRIPLET)  # type: ignore[assignment]
    preset: IntensityPreset = IntensityPreset.CT_ABDOMEN
    sequences: tuple[str, ...] = field(default=BRATS_DEFAULT_SEQUENCES)
    axis: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "rule", ChannelRule(self.rule))
        object.__setattr__(self, "preset", IntensityPreset(self.preset))
        if self.rule is ChannelRule.CT_WINDOWS:
            if len(self.windows) != 3:
                raise ValueError(f"ct-windows needs 3 windows, got {list(self.windows)}")
            for w in self.windows:
                IntensityPreset(w)  # names a bad window
        if self.preset is IntensityPreset.CT_NNUNET:
            raise ValueError("ct-nnunet needs training-set statistics; use a CT window preset here")
        if self.axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {self.axis}")
        if self.rule is ChannelRule.MRI_SEQUENCES and len(self.sequences) != 3:
            raise ValueError(f"mri-sequences needs 3 sequences, got {list(self.sequences)}")

    @property
    def unit_range(self) -> bool:
        """True when slices lie in [0, 1] (CT windows, min–max); False for z-scores."""
        if self.rule is ChannelRule.CT_WINDOWS:
            return True
        return self.preset is not IntensityPreset.MRI_ZSCORE

    @property
    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel normalisation the datamodule applies after this rule (module doc)."""
        if self.unit_range:
            return list(IMAGENET_MEAN), list(IMAGENET_STD)
        return [0.0] * 3, [1.0] * 3

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(rule=str(self.rule), preset=str(self.preset), windows=list(self.windows))
        d["sequences"] = list(self.sequences)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SliceInput:
        return cls(
            rule=ChannelRule(data["rule"]),
            windows=tuple(data.get("windows", cls.windows)),  # type: ignore[arg-type]
            preset=IntensityPreset(data.get("preset", IntensityPreset.CT_ABDOMEN)),
            sequences=tuple(data.get("sequences", BRATS_DEFAULT_SEQUENCES)),
            axis=int(data.get("axis", 2)),
        )

    def prepare(self, channels: Sequence[np.ndarray], channel_names: Sequence[str]) -> np.ndarray:
        """A case's RAS channel volumes → the array ``slice`` cuts from.

        Args:
            channels: one (X, Y, Z) RAS array per channel (CT: HU).
            channel_names: their names (``dataset.json``'s ``channel_names``).

        Returns:
            (X, Y, Z) (HU for ``ct-windows``, normalised otherwise) or (X, Y, Z, 3) for
            ``mri-sequences``.
        """
        if not channels:
            raise ValueError("no channels given")
        if self.rule is ChannelRule.MRI_SEQUENCES:
            idx = select_sequences(list(channel_names), self.sequences)
            return np.stack([normalise(channels[i], IntensityPreset.MRI_ZSCORE) for i in idx], axis=-1)
        if len(channels) != 1:
            raise ValueError(
                f"channel rule {self.rule} reads one channel, the case has {len(channels)} "
                f"({', '.join(channel_names)}); use mri-sequences"
            )
        if self.rule is ChannelRule.CT_WINDOWS:
            return np.asarray(channels[0], dtype=np.float32)
        return normalise(channels[0], self.preset)

    def n_slices(self, prepared: np.ndarray) -> int:
        return int(prepared.shape[self.axis])

    def slice(self, prepared: np.ndarray, index: int) -> np.ndarray:
        """(3, H, W) float32 model input of slice ``index`` (display order, see ``slicing``)."""
        return three_channel_slice(
            prepared, self.axis, index, self.rule, windows=[IntensityPreset(w) for w in self.windows]
        )

    def image_2d(self, image: np.ndarray) -> np.ndarray:
        """A 2D image (X-ray, (H, W)) → (3, H, W) float32 with ``preset``, repeated 3 times."""
        if image.ndim != 2:
            raise ValueError(f"expected an (H, W) image, got {image.shape}")
        return np.repeat(normalise(image, self.preset)[None], 3, axis=0).astype(np.float32)

    def to_uint8(self, slice3: np.ndarray) -> np.ndarray:
        """(3, H, W) model input → (3, H, W) uint8 for PNGs (module doc)."""
        x = slice3 if self.unit_range else (slice3 + Z_RANGE) / (2 * Z_RANGE)
        return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


CT_DEFAULT = SliceInput()
MRI_DEFAULT = SliceInput(rule=ChannelRule.MRI_SEQUENCES, preset=IntensityPreset.MRI_ZSCORE)
XRAY_DEFAULT = SliceInput(rule=ChannelRule.REPEAT, preset=IntensityPreset.XRAY_MINMAX)
