"""Scene classification → multiple-choice and open questions.

Two inputs:

- a folder per class (``ClassFolderSource``): ``ROOT/<class name>/<image>`` for any raster format
  GDAL reads (GeoTIFF, PNG, JPEG); georeferencing is not needed.
- a torchgeo classification dataset (``TorchGeoSource``): EuroSAT, UCMerced or RESISC45 already on
  disk under ``root`` (torchgeo 0.8 layout, ``download=False``). torchgeo's dataset class validates
  the layout and lists the samples of the split; pixels are read with our raster rule (EuroSAT's
  13 Sentinel-2 bands are rendered from B04, B03, B02 with the percentile stretch).

Per image: one multiple-choice question (the true class and up to ``n_options − 1`` distractors
drawn from the other classes, shuffled, lettered A, B, …; the answer is the letter) and one open
question (the answer is the class name with underscores as spaces).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vitp_geo.instruct import templates as T
from vitp_geo.instruct.builders.context import BuildContext
from vitp_geo.instruct.builders.raster_scene import open_scene
from vitp_geo.instruct.records import InstructionRecord
from vitp_geo.io.raster import RenderRule

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")

# name → (torchgeo class, render rule, modality)
TORCHGEO_DATASETS: dict[str, tuple[str, RenderRule, str]] = {
    "EuroSAT": ("EuroSAT", RenderRule(bands=(4, 3, 2)), "multispectral"),
    "UCMerced": ("UCMerced", RenderRule(), "optical"),
    "RESISC45": ("RESISC45", RenderRule(), "optical"),
}
# What torchgeo 0.8's classes read under ``root``: (split file, image folder, archive it extracts).
TORCHGEO_LAYOUTS: dict[str, tuple[str, str, str]] = {
    "EuroSAT": (
        "eurosat-{split}.txt",
        "ds/images/remote_sensing/otherDatasets/sentinel_2/tif",
        "EuroSATallBands.zip",
    ),
    "UCMerced": ("uc_merced-{split}.txt", "UCMerced_LandUse/Images", "UCMerced_LandUse.zip"),
    "RESISC45": ("resisc45-{split}.txt", "NWPU-RESISC45", "NWPU-RESISC45.zip"),
}


def torchgeo_layout_error(name: str, root: Path, split: str) -> str:
    """Which files of dataset ``name`` are missing under ``root``, and what to do (we never download)."""
    split_file, images, archive = TORCHGEO_LAYOUTS[name]
    split_path, images_path, archive_path = (
        root / split_file.format(split=split),
        root / images,
        root / archive,
    )
    missing = [f"the split file {split_path}"] if not split_path.is_file() else []
    if not images_path.is_dir() and not archive_path.is_file():
        missing.append(f"the image folder {images_path} (or the archive {archive_path})")
    what = " and ".join(missing) if missing else "files torchgeo reads"
    return (
        f"{name} under {root} lacks {what}. build-instructions never downloads: put the dataset there in "
        f"torchgeo's layout, e.g. fetch it once in Python with "
        f"torchgeo.datasets.{TORCHGEO_DATASETS[name][0]}(root={str(root)!r}, split={split!r}, download=True), "
        "then pass that folder as --root"
    )


def _readable(name: str) -> str:
    return name.replace("_", " ").strip()


def classification_records(
    ctx: BuildContext,
    samples: list[tuple[Path, str]],
    classes: list[str],
    *,
    prefix: str,
    rule: RenderRule,
    modality: str | None,
    n_options: int = 4,
) -> list[InstructionRecord]:
    """Render each ``(path, class name)`` sample and write its two records."""
    if len(classes) < 2:
        raise ValueError(f"scene classification needs at least two classes, got {classes}")
    rng = ctx.rng
    records: list[InstructionRecord] = []
    for path, cls in samples:
        with open_scene(path, rule, require_georef=False, modality=modality) as raster:
            rgb, _ = raster.read()
        img = ctx.save_image(f"{prefix}/{cls}/{path.stem}.png", rgb, key=(str(path.resolve()), rule))
        ctx.summary.tiles_written += 1
        stem = f"{prefix}_{cls}_{path.stem}"
        others = [c for c in classes if c != cls]
        k = min(n_options, len(classes)) - 1
        distractors = [others[int(i)] for i in rng.choice(len(others), size=k, replace=False)]
        options = [cls, *distractors]
        options = [options[int(i)] for i in rng.permutation(len(options))]
        letters = "ABCDEFGHIJ"
        block = "\n".join(f"{letters[i]}. {_readable(o)}" for i, o in enumerate(options))
        answer = letters[options.index(cls)]
        records.append(
            ctx.record(
                stem,
                [img],
                T.pick(rng, "classification_mc", options=block),
                answer,
                "classification",
                raster.modality,
            )
        )
        records.append(
            ctx.record(
                stem,
                [img],
                T.pick(rng, "classification_open"),
                _readable(cls),
                "classification",
                raster.modality,
            )
        )
    return records


@dataclass
class ClassFolderSource:
    """``root/<class>/<image>`` folders."""

    root: Path
    rule: RenderRule = field(default_factory=RenderRule)
    modality: str | None = None
    n_options: int = 4
    limit_per_class: int | None = None

    def build(self, ctx: BuildContext) -> list[InstructionRecord]:
        root = Path(self.root)
        if not root.is_dir():
            raise FileNotFoundError(f"class folder root not found: {root}")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        samples: list[tuple[Path, str]] = []
        for cls in classes:
            files = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            samples += [(p, cls) for p in files[: self.limit_per_class]]
        if len(classes) < 2 or not samples:
            raise ValueError(
                f"{root} must hold at least two class folders with images "
                f"({', '.join(IMAGE_SUFFIXES)}); found classes {classes}"
            )
        return classification_records(
            ctx,
            samples,
            classes,
            prefix=root.name,
            rule=self.rule,
            modality=self.modality,
            n_options=self.n_options,
        )


@dataclass
class TorchGeoSource:
    """A torchgeo classification dataset already on disk (see module doc)."""

    name: str
    root: Path
    split: str = "train"
    n_options: int = 4
    limit_per_class: int | None = None

    def build(self, ctx: BuildContext) -> list[InstructionRecord]:
        if self.name not in TORCHGEO_DATASETS:
            raise ValueError(f"--torchgeo must be one of {sorted(TORCHGEO_DATASETS)}, got {self.name!r}")
        import torchgeo.datasets as tgd

        cls_name, rule, modality = TORCHGEO_DATASETS[self.name]
        try:
            dataset = getattr(tgd, cls_name)(root=str(self.root), split=self.split, download=False)
        except (tgd.DatasetNotFoundError, FileNotFoundError) as err:  # e.g. the split file is missing
            # torchgeo's own message suggests download=True, which this command does not have
            raise FileNotFoundError(torchgeo_layout_error(self.name, self.root, self.split)) from err
        classes = list(dataset.classes)
        per_class: dict[str, int] = {}
        samples: list[tuple[Path, str]] = []
        for path, label in dataset.samples:
            cls = classes[label]
            per_class[cls] = per_class.get(cls, 0) + 1
            if self.limit_per_class is None or per_class[cls] <= self.limit_per_class:
                samples.append((Path(path), cls))
        if not samples:
            raise ValueError(f"{self.name} under {self.root} has no images in split {self.split!r}")
        return classification_records(
            ctx, samples, classes, prefix=self.name, rule=rule, modality=modality, n_options=self.n_options
        )
