"""The sampling settings the DataModules share: tile size, batch, epoch length, loading, split, seed.

Every LightningDataModule of ``vitp_geo.datamodules`` takes them as one nested dataclass, as the
tasks take theirs (``vitp_geo.tasks.args``), so a config names each setting once, under
``sampling``::

    data:
      class_path: vitp_geo.datamodules.geotiff.GeoTiffSegmentationDataModule
      init_args:
        images: /data/scenes
        labels: /data/labels
        sampling: {patch_size: 224, batch_size: 8, val_fraction: 0.2}

A field left out (None) takes the module's own default, its ``SAMPLING`` (112 px tiles for the
GeoTIFF modules, 512 for LoveDA, ...). The flat spelling of before the group
(``init_args: {batch_size: 8}``, ``GeoTiffSegmentationDataModule(..., batch_size=8)``) is refused
naming the grouped key (:func:`old_spelling`); so is a field the module does not use.

torchgeo's own DataModules take these settings flat; ``vitp-geo finetune --batch-size`` sets
``sampling.batch_size`` for ours and ``batch_size`` for theirs (:func:`takes_sampling`).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

__all__ = ["FIELDS", "SamplingArgs", "TakesSampling", "old_spelling", "takes_sampling"]


@dataclass(frozen=True)
class SamplingArgs:
    """How a DataModule draws and loads its samples; None: the module's default (``SAMPLING``).

    Args:
        patch_size: tile side in pixels: the training crop or window, for the GeoTIFF modules
            and Potsdam the validation grid too (the others validate on whole images).
        batch_size: samples per training batch (the tile-folder and medical modules validate
            one image at a time).
        length: training samples per epoch (the GeoTIFF modules and Potsdam; default about one
            pass over the training area, or as many as Potsdam's grid has windows).
        val_fraction: share held out for validation: the eastern strip of each scene's width for
            the GeoTIFF modules, the share of cases for ``MedicalSliceDataModule``.
        num_workers: DataLoader worker processes.
        seed: seed of the training tile positions (GeoTIFF modules; detection: and the flips), or
            of the case split, slice choice and case order (``MedicalSliceDataModule``). The
            tile-folder modules (``folders``, LoveDA, Potsdam, LEVIR-CD) and the X-ray one record
            it, but their shuffle and crops come from torch's generator, which ``seed_everything``
            seeds.

    What each module uses (it refuses the others):

    * ``geotiff`` (segmentation, change) and ``GeoTiffDetectionDataModule``: all six;
    * ``folders``, LoveDA, LEVIR-CD, ``XraySegmentationDataModule``: ``patch_size``,
      ``batch_size``, ``num_workers``, ``seed``; Potsdam also ``length``,
      ``MedicalSliceDataModule`` also ``val_fraction``;
    * ``DetectionFilesDataModule`` (images at their own size, augmentations from torch's
      generator): ``batch_size``, ``num_workers``.
    """

    patch_size: int | None = None
    batch_size: int | None = None
    length: int | None = None
    val_fraction: float | None = None
    num_workers: int | None = None
    seed: int | None = None


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(SamplingArgs))


def old_spelling(key: str, where: str = "data.init_args") -> str | None:
    """The message for a flat pre-group key (``batch_size`` → ``sampling.batch_size``), None for
    any other key."""
    if key not in FIELDS:
        return None
    return f"{where}.{key} is the old spelling: the sampling settings are grouped; use {where}.sampling.{key}"


class TakesSampling:
    """Mixin of the DataModules that take ``sampling``: their defaults and the group's checks.

    ``SAMPLING`` maps each field the module uses to its default (``length: None`` is a default:
    about one pass). ``__new__`` sees the call's keywords before ``__init__`` binds them, so a
    flat ``batch_size=8`` is refused naming ``sampling.batch_size`` rather than as an unexpected
    keyword.
    """

    SAMPLING: ClassVar[Mapping[str, Any]] = {}

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        flat = [key for key in kwargs if key in FIELDS]
        if flat:
            raise TypeError(
                f"{cls.__name__}({flat[0]}=...) is the old spelling: the sampling settings are grouped; "
                f"use sampling.{flat[0]}: {cls.__name__}(..., sampling=SamplingArgs({flat[0]}=...))"
            )
        return super().__new__(cls)

    def sampling_settings(self, value: SamplingArgs | dict[str, Any] | None) -> dict[str, Any]:
        """``value`` (the dataclass, its dict, or None) over this module's ``SAMPLING``: each field
        the module uses with its value. Also kept, whole, as ``self.sampling``.

        Raises:
            TypeError: anything but the dataclass, its dict or None; a dict with an unknown field.
            ValueError: a field this module does not use (named with those it does).
        """
        if value is None:
            value = SamplingArgs()
        elif isinstance(value, dict):
            unknown = sorted(set(value) - set(FIELDS))
            if unknown:
                raise TypeError(f"sampling has no field {unknown[0]!r} (SamplingArgs takes {list(FIELDS)})")
            value = SamplingArgs(**value)
        elif not isinstance(value, SamplingArgs):
            raise TypeError(
                f"sampling takes a SamplingArgs (or its dict), got {value!r}: e.g. sampling=SamplingArgs(...)"
            )
        given = {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
        unused = sorted(set(given) - set(self.SAMPLING))
        if unused:
            raise ValueError(
                f"{type(self).__name__} does not use sampling.{unused[0]} (it takes {', '.join(self.SAMPLING)})"
            )
        settings = {**self.SAMPLING, **given}
        self.sampling = SamplingArgs(**settings)
        return settings


def takes_sampling(class_path: Any) -> bool:
    """Whether the DataModule ``class_path`` (``package.module.Class``) takes ``sampling``; False
    for a class that cannot be imported (LightningCLI then says what is wrong with it)."""
    if not isinstance(class_path, str) or "." not in class_path:
        return False
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return "sampling" in inspect.signature(cls.__init__).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return False
