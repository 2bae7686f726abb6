"""Intensity presets for CT, MRI and X-ray, and the rule that makes the ViT's 3 input channels.

Presets (:class:`IntensityPreset`, one ``StrEnum``):

- CT windows map Hounsfield units to [0, 1] linearly between ``level - width/2`` and
  ``level + width/2`` and clip outside (the DICOM "window centre/width" display, without its
  half-unit offsets): abdomen soft tissue W400/L40, lung W1500/L-600, brain W80/L40.
- ``ct-nnunet``: nnU-Net's CT normalisation: clip to the 0.5 and 99.5 percentiles of foreground
  (labelled) voxels over the training set, then subtract the foreground mean and divide by the
  foreground standard deviation. The four numbers come from :func:`ct_foreground_stats`.
- ``mri-zscore``: z-score over the non-zero voxels of each volume and channel (the brain mask of
  skull-stripped MRI such as BraTS); zero voxels stay 0.
- ``xray-minmax``: (x - min) / (max - min) per image.

Three channels for the ViT (:class:`ChannelRule`):

- ``ct-windows``: three CT windows of the same slice as R, G, B (default abdomen, lung, brain).
- ``neighbours`` (2.5D): slices k-1, k, k+1 of one normalised volume as R, G, B, edges replicated
  (slice 0 uses 0, 0, 1); the centre channel is the slice the label belongs to.
- ``mri-sequences``: three normalised MRI sequences of the same slice. BraTS has four (T1, T1ce,
  T2, FLAIR); the default keeps FLAIR, T1ce, T2: FLAIR shows the peritumoral oedema (the whole
  tumour), T1ce the enhancing rim and the necrotic core (ET, TC), T2 the oedema and core extent
  again with different contrast; native T1 mostly serves as the pre-contrast reference for T1ce and
  adds the least to the three BraTS regions.
- a single-channel image (X-ray, one window) is repeated 3 times (:func:`repeat_to_three`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

__all__ = [
    "BRATS_DEFAULT_SEQUENCES",
    "CT_WINDOWS",
    "CTNormStats",
    "ChannelRule",
    "DEFAULT_CT_WINDOW_TRIPLET",
    "IntensityPreset",
    "apply_window",
    "ct_foreground_stats",
    "minmax",
    "normalise",
    "nnunet_ct",
    "repeat_to_three",
    "select_sequences",
    "zscore_nonzero",
]

log = logging.getLogger(__name__)


class IntensityPreset(StrEnum):
    """How raw voxel values become network input."""

    CT_ABDOMEN = "ct-abdomen"  # W400 / L40: soft-tissue abdomen (liver, kidneys, pancreas...)
    CT_LUNG = "ct-lung"  # W1500 / L-600: lung parenchyma, airways
    CT_BRAIN = "ct-brain"  # W80 / L40: brain parenchyma, haemorrhage
    CT_NNUNET = "ct-nnunet"  # clip to foreground 0.5/99.5 percentiles, foreground z-score
    MRI_ZSCORE = "mri-zscore"  # z-score over non-zero voxels
    XRAY_MINMAX = "xray-minmax"  # per-image min-max to [0, 1]


# preset -> (level, width) in HU
CT_WINDOWS: dict[IntensityPreset, tuple[float, float]] = {
    IntensityPreset.CT_ABDOMEN: (40.0, 400.0),
    IntensityPreset.CT_LUNG: (-600.0, 1500.0),
    IntensityPreset.CT_BRAIN: (40.0, 80.0),
}
DEFAULT_CT_WINDOW_TRIPLET: tuple[IntensityPreset, IntensityPreset, IntensityPreset] = (
    IntensityPreset.CT_ABDOMEN,
    IntensityPreset.CT_LUNG,
    IntensityPreset.CT_BRAIN,
)


class ChannelRule(StrEnum):
    """How one slice becomes the ViT's 3 input channels (see the module docstring)."""

    CT_WINDOWS = "ct-windows"
    NEIGHBOURS = "neighbours"  # 2.5D: k-1, k, k+1
    MRI_SEQUENCES = "mri-sequences"
    REPEAT = "repeat"  # one channel (X-ray, or one window) copied 3 times


# BraTS sequences kept by default (see the module docstring for why), in channel order.
BRATS_DEFAULT_SEQUENCES: tuple[str, str, str] = ("FLAIR", "T1ce", "T2")
# names the same sequence goes by in dataset.json files (MSD Task01: FLAIR, T1w, t1gd, T2w)
_SEQUENCE_ALIASES: dict[str, str] = {
    "flair": "flair",
    "t2flair": "flair",
    "t2-flair": "flair",
    "t1": "t1",
    "t1w": "t1",
    "t1n": "t1",
    "t1ce": "t1ce",
    "t1gd": "t1ce",
    "t1c": "t1ce",
    "t1-ce": "t1ce",
    "t1post": "t1ce",
    "t2": "t2",
    "t2w": "t2",
}


@dataclass(frozen=True)
class CTNormStats:
    """Foreground intensity statistics for nnU-Net's CT normalisation (HU)."""

    lower: float  # 0.5th percentile of foreground HU
    upper: float  # 99.5th percentile
    mean: float  # mean of foreground HU
    std: float  # standard deviation of foreground HU

    def __post_init__(self) -> None:
        if not self.upper >= self.lower:
            raise ValueError(f"CTNormStats: upper {self.upper} < lower {self.lower}")
        if not self.std > 0:
            raise ValueError(f"CTNormStats: std must be > 0, got {self.std}")


def apply_window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map HU to [0, 1]: ``level - width/2`` -> 0, ``level + width/2`` -> 1, clipped.

    Args:
        hu: any shape, Hounsfield units.
        level: window centre, HU.
        width: window width, HU (> 0).

    Returns:
        float32 array of the same shape.
    """
    if not width > 0:
        raise ValueError(f"window width must be > 0, got {width}")
    lo = level - width / 2.0
    out = (np.asarray(hu, dtype=np.float32) - np.float32(lo)) / np.float32(width)
    return np.clip(out, 0.0, 1.0)


def ct_foreground_stats(
    cases: Iterable[tuple[np.ndarray, np.ndarray]], max_voxels_per_case: int = 10_000, seed: int = 0
) -> CTNormStats:
    """nnU-Net-style foreground statistics over a training set.

    Args:
        cases: ``(image_hu, labels)`` pairs of the same shape; voxels with ``labels > 0`` count.
        max_voxels_per_case: foreground voxels sampled per case (uniformly, seeded) so that large
            organs do not dominate; nnU-Net samples 10,000.
        seed: sampling seed.

    Raises:
        ValueError: shape mismatch, or no foreground voxel in any case.
    """
    rng = np.random.default_rng(seed)
    samples: list[np.ndarray] = []
    for i, (image, labels) in enumerate(cases):
        if image.shape[: labels.ndim] != labels.shape:
            raise ValueError(f"case {i}: image shape {image.shape} != label shape {labels.shape}")
        fg = np.asarray(image)[np.asarray(labels) > 0].astype(np.float64)
        if fg.size > max_voxels_per_case:
            fg = rng.choice(fg, size=max_voxels_per_case, replace=False)
        samples.append(fg)
    values = np.concatenate(samples) if samples else np.empty(0)
    if values.size == 0:
        raise ValueError("ct_foreground_stats: no foreground (label > 0) voxel in any case")
    std = float(values.std())
    return CTNormStats(
        lower=float(np.percentile(values, 0.5)),
        upper=float(np.percentile(values, 99.5)),
        mean=float(values.mean()),
        std=std if std > 0 else 1.0,
    )


def nnunet_ct(hu: np.ndarray, stats: CTNormStats) -> np.ndarray:
    """Clip HU to ``[stats.lower, stats.upper]`` and z-score with the foreground mean/std (float32)."""
    out = np.clip(np.asarray(hu, dtype=np.float32), stats.lower, stats.upper)
    return ((out - np.float32(stats.mean)) / np.float32(stats.std)).astype(np.float32)


def zscore_nonzero(array: np.ndarray) -> np.ndarray:
    """Z-score over the non-zero voxels; zero voxels stay 0.

    Args:
        array: one MRI volume/channel, any shape.

    Raises:
        ValueError: when every voxel is zero.
    """
    a = np.asarray(array, dtype=np.float32)
    mask = a != 0
    if not mask.any():
        raise ValueError(f"mri-zscore: every voxel is zero (shape {a.shape}); nothing to normalise over")
    values = a[mask].astype(np.float64)
    std = float(values.std())
    if std == 0:
        warnings.warn("mri-zscore: non-zero voxels are constant; using std = 1", stacklevel=2)
        std = 1.0
    out = np.zeros_like(a)
    out[mask] = (a[mask] - np.float32(values.mean())) / np.float32(std)
    return out


def minmax(array: np.ndarray) -> np.ndarray:
    """(x - min) / (max - min) to [0, 1] (float32); a constant image becomes all zeros."""
    a = np.asarray(array, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    if hi == lo:
        return np.zeros_like(a)
    return (a - np.float32(lo)) / np.float32(hi - lo)


def normalise(
    array: np.ndarray, preset: IntensityPreset | str, stats: CTNormStats | None = None
) -> np.ndarray:
    """Apply one preset to an array (a volume, a channel or an image).

    For ``mri-zscore`` on a multi-sequence volume, call it per channel (``array[..., c]``).

    Args:
        array: raw values (HU for CT presets).
        preset: which preset.
        stats: required for ``ct-nnunet``.

    Returns:
        float32 array of the same shape.
    """
    preset = IntensityPreset(preset)
    if preset in CT_WINDOWS:
        level, width = CT_WINDOWS[preset]
        return apply_window(array, level, width)
    if preset is IntensityPreset.CT_NNUNET:
        if stats is None:
            raise ValueError("ct-nnunet needs CTNormStats (compute them with ct_foreground_stats)")
        return nnunet_ct(array, stats)
    if preset is IntensityPreset.MRI_ZSCORE:
        return zscore_nonzero(array)
    return minmax(array)


def repeat_to_three(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` -> ``(3, H, W)`` by repetition (one-channel inputs such as radiographs)."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"repeat_to_three expects an (H, W) image, got shape {image.shape}")
    return np.repeat(image[None], 3, axis=0)


def select_sequences(
    names: Sequence[str], wanted: Sequence[str] = BRATS_DEFAULT_SEQUENCES
) -> tuple[int, ...]:
    """Channel indices of the wanted MRI sequences, matching common spellings.

    Args:
        names: the channel names in file order, e.g. MSD Task01's ``["FLAIR", "T1w", "t1gd", "T2w"]``.
        wanted: the sequences to keep, in output order (default FLAIR, T1ce, T2).

    Raises:
        ValueError: a wanted sequence is not among ``names`` (all names listed).
    """

    def key(name: str) -> str:
        k = name.strip().lower().replace("_", "").replace(" ", "")
        return _SEQUENCE_ALIASES.get(k, k)

    keys = [key(n) for n in names]
    out: list[int] = []
    for w in wanted:
        kw = key(w)
        if kw not in keys:
            raise ValueError(f"MRI sequence {w!r} not among the channels {list(names)}")
        out.append(keys.index(kw))
    return tuple(out)
