"""Medical instruction data for ViTP-med: labelled volumes and radiographs → conversation records.

Sources (each has ``build(ctx) -> list[InstructionRecord]``, so ``build_corpus`` runs them like
the remote-sensing builders):

* ``VolumeSource``: one image volume (NIfTI / DICOM; one file per channel for MRI) and its label
  NIfTI, on the same grid (checked).
* ``MSDSource``: every case of an MSD / nnU-Net folder (``imagesTr``, ``labelsTr``,
  ``dataset.json``).
* ``XraySource``: radiographs with lung / infection masks (CovidQU-Ex layout, see
  ``medical.datasets``).

Volumes are cut into axial slices (``SliceInput``: CT windows, MRI FLAIR / T1ce / T2, …) and
every slice with foreground is used plus a seeded share ``empty_fraction`` of the empty ones;
each slice is written as a PNG (``SliceInput.to_uint8``) and gets, from its label map (classes
with at least ``min_pixels`` pixels count as present, classes with none as absent, the rest are
not asked about):

- ``presence``: one present and one absent structure, yes / no;
- ``grounding``: boxes of the connected regions of one present structure,
  ``<ref>liver</ref><box>[[x1, y1, x2, y2]]</box>`` in 0–1000 image coordinates;
- ``counting``: how many separate regions of one structure (4-connected, ``min_pixels``);
- ``classes``: which structures are visible (asked only when none is ambiguous);
- ``dominant``: the structure covering the largest area (a 5-point lead needed);
- ``region`` and ``position``: which structures appear in a named part of the image, and where
  (3 × 3 grid of the image) one structure lies — "what is where";
- ``classification``: for radiographs, whether the lungs show infection (yes / no).

Positions are in image terms (slices are in radiological display order: the patient's right on
the image's left). Every record carries its ``modality`` (``ct``, ``mri`` or ``xray``). No
geospatial package is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitp_geo.instruct import templates as T
from vitp_geo.instruct.builders.context import BuildContext
from vitp_geo.instruct.builders.tiles import REGIONS, position_word, region_slices
from vitp_geo.instruct.records import InstructionRecord, format_grounding, normalize_box
from vitp_geo.medical.datasets import (
    XRAY_CLASSES,
    LabelTable,
    MSDCase,
    load_case,
    load_case_label,
    read_msd_dataset,
    read_xray_folder,
    xray_label,
)
from vitp_geo.medical.inputs import CT_DEFAULT, MRI_DEFAULT, XRAY_DEFAULT, SliceInput
from vitp_geo.medical.intensity import ChannelRule, IntensityPreset, select_sequences
from vitp_geo.medical.slicing import choose_slices, take_slice

log = logging.getLogger(__name__)

BACKGROUND = "background"
MEDICAL_MODALITIES = ("ct", "mri", "xray")

# Medical wording (the remote-sensing phrasings in ``instruct.templates`` speak of land cover).
QUESTIONS: dict[str, tuple[str, ...]] = {
    "presence": (
        "Is the {cls} visible in this image?",
        "Does this {image} show the {cls}? Answer yes or no.",
        "Can you see any {cls} in this {image}?",
    ),
    "grounding": (
        "Locate the {cls} in the image.",
        "Give the bounding box of each {cls} region.",
        "Where is the {cls}? Answer with bounding boxes.",
        "Detect the {cls} and output its box.",
    ),
    "counting": (
        "How many separate {cls} regions are visible in this image?",
        "Count the distinct regions of {cls} in this {image}.",
        "How many {cls} regions can you see? Answer with a number.",
    ),
    "classes": (
        "Which labelled structures are visible in this {image}?",
        "List the anatomical structures and findings present in this image.",
        "What structures can you see in this {image}?",
    ),
    "dominant": (
        "Which structure covers the largest area in this {image}?",
        "What is the largest labelled structure in the image?",
    ),
    "region": (
        "Which structures appear in the {region} of the image?",
        "What lies in the {region} of this {image}?",
        "List the structures present in the {region}.",
    ),
    "position": (
        "Where in the image is the {cls}?",
        "In which part of the image does the {cls} lie?",
    ),
    "classification": (
        "Does this chest radiograph show signs of lung infection?",
        "Is there an infection visible in the lungs of this X-ray? Answer yes or no.",
        "Are the lungs in this radiograph clear of infection?",
    ),
}
_IMAGE_WORD = {"ct": "CT slice", "mri": "MRI slice", "xray": "radiograph"}


def _pick(rng: np.random.Generator, task: str, **fields: object) -> str:
    options = QUESTIONS[task]
    return options[int(rng.integers(len(options)))].format(**fields)


def connected_regions(mask: np.ndarray, min_pixels: int = 1) -> list[tuple[int, int, int, int, int]]:
    """4-connected regions of a boolean (H, W) mask as ``(x1, y1, x2, y2, pixels)``, largest first.

    ``x2`` / ``y2`` are exclusive pixel edges (a one-pixel region at (3, 5) is ``(3, 5, 4, 6, 1)``).
    Regions smaller than ``min_pixels`` are dropped.
    """
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    big = h * w + 1
    while True:  # propagate the smallest id through each region (min over 4 neighbours)
        cur = np.where(mask, labels, big)
        nb = cur.copy()
        nb[1:] = np.minimum(nb[1:], cur[:-1])
        nb[:-1] = np.minimum(nb[:-1], cur[1:])
        nb[:, 1:] = np.minimum(nb[:, 1:], cur[:, :-1])
        nb[:, :-1] = np.minimum(nb[:, :-1], cur[:, 1:])
        new = np.where(mask, nb, 0)
        if np.array_equal(new, labels):
            break
        labels = new
    out: list[tuple[int, int, int, int, int]] = []
    for rid in np.unique(labels[mask]):
        ys, xs = np.nonzero(labels == rid)
        if ys.size >= min_pixels:
            out.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, int(ys.size)))
    out.sort(key=lambda r: -r[4])
    return out


def slice_records(
    ctx: BuildContext,
    ids: np.ndarray,
    names: Sequence[str],
    image: str,
    stem: str,
    modality: str,
    min_pixels: int = 8,
) -> list[InstructionRecord]:
    """The records of one labelled slice (module doc).

    Args:
        ctx: the corpus build context (seeded RNG, record ids).
        ids: (H, W) class ids indexing ``names``.
        names: class names; ``background`` is never asked about.
        image: the slice's image path relative to the corpus root.
        stem: record id prefix.
        modality: ``ct``, ``mri`` or ``xray``.
        min_pixels: pixels for a structure to count as present (and a region to be counted).
    """
    if modality not in MEDICAL_MODALITIES:
        raise ValueError(f"modality must be one of {MEDICAL_MODALITIES}, got {modality!r}")
    rng = ctx.rng
    h, w = ids.shape
    word = _IMAGE_WORD[modality]
    out: list[InstructionRecord] = []

    def rec(question: str, answer: str, task: str) -> None:
        out.append(ctx.record(stem, [image], question, answer, task, modality))

    counts = np.bincount(ids.ravel(), minlength=len(names))
    askable = [j for j, n in enumerate(names) if n != BACKGROUND]
    present = [j for j in askable if counts[j] >= min_pixels]
    absent = [j for j in askable if counts[j] == 0]
    for pool, yes in ((present, True), (absent, False)):
        if pool:
            j = pool[int(rng.integers(len(pool)))]
            rec(_pick(rng, "presence", cls=names[j], image=word), T.yes_no(rng, yes), "presence")
    if all(j in present or j in absent for j in askable):
        listed = [names[j] for j in present]
        rec(_pick(rng, "classes", image=word), (T.join_words(listed) + ".") if listed else "None.", "classes")
    if present:
        j = present[int(rng.integers(len(present)))]
        regions = connected_regions(ids == j, min_pixels)
        if regions:
            boxes = [normalize_box(r[:4], w, h) for r in regions]
            rec(_pick(rng, "grounding", cls=names[j]), format_grounding(names[j], boxes), "grounding")
            rec(_pick(rng, "counting", cls=names[j], image=word), str(len(regions)), "counting")
            ys, xs = np.nonzero(ids == j)
            where = position_word(float(xs.mean()) + 0.5, float(ys.mean()) + 0.5, w, h)
            rec(_pick(rng, "position", cls=names[j]), f"In the {where} of the image.", "position")
        fg = sorted(present, key=lambda k: -counts[k])
        lead = counts[fg[0]] - (counts[fg[1]] if len(fg) > 1 else 0)
        if lead >= 0.05 * h * w or len(fg) == 1:
            rec(_pick(rng, "dominant", image=word), f"The {names[fg[0]]}.", "dominant")
        region = list(REGIONS)[int(rng.integers(len(REGIONS)))]
        sub = ids[region_slices(region, h, w)]
        sub_counts = np.bincount(sub.ravel(), minlength=len(names))
        touching = [names[k] for k in askable if sub_counts[k] >= min_pixels]
        answer = (T.join_words(touching) + ".") if touching else "None."
        rec(_pick(rng, "region", region=region, image=word), answer, "region")
    return out


def default_spec(channel_names: Sequence[str], modality: str) -> SliceInput:
    """CT: 3 windows; MRI: FLAIR / T1ce / T2 when present, else the first sequence z-scored and repeated."""
    if modality == "ct":
        return CT_DEFAULT
    try:
        select_sequences(list(channel_names), MRI_DEFAULT.sequences)
        return MRI_DEFAULT
    except ValueError:
        log.warning(
            "MRI channels %s lack FLAIR/T1ce/T2: using the first, z-scored, as 3 channels", channel_names
        )
        return SliceInput(rule=ChannelRule.REPEAT, preset=IntensityPreset.MRI_ZSCORE)


def _volume_records(
    ctx: BuildContext,
    case: MSDCase,
    channel_names: Sequence[str],
    table: LabelTable,
    spec: SliceInput,
    modality: str,
    empty_fraction: float,
    min_pixels: int,
    seed: int,
) -> list[InstructionRecord]:
    prepared, ref = load_case(case, spec, channel_names)
    ids = load_case_label(case, ref, table)
    keep, _ = choose_slices(ids, spec.axis, empty_fraction, seed=seed)
    records: list[InstructionRecord] = []
    for k in keep:
        pixels = spec.to_uint8(spec.slice(prepared, k))
        img = ctx.save_image(f"{case.case_id}/slice_{spec.axis}_{k:04d}.png", pixels)
        ctx.summary.tiles_written += 1
        label = take_slice(ids, spec.axis, k)
        records += slice_records(
            ctx, label, table.names, img, f"{case.case_id}_s{k:04d}", modality, min_pixels
        )
    skipped = ids.shape[spec.axis] - len(keep)
    if skipped:
        ctx.summary.tiles_skipped["empty slices left out"] += skipped
    return records


def _modality_of(dataset_modality: str) -> str:
    return "ct" if dataset_modality.upper() == "CT" else "mri"


@dataclass
class VolumeSource:
    """One labelled volume (module doc).

    Args:
        image: the image file (NIfTI, DICOM file or series folder), or one file per channel.
        labels: the label NIfTI on the image's grid.
        classes: label value → name (``dataset.json``'s table or a ``names.yaml`` read by the caller).
        channel_names: channel names (default ``CT``; for several files the last ``_`` part of each
            file name, e.g. ``flair``, ``t1ce``).
        modality: ``ct`` or ``mri``.
        spec: the slice rule (default: ``default_spec``).
        empty_fraction, min_pixels, seed: see the module doc.
    """

    image: Path | Sequence[Path]
    labels: Path
    classes: dict[int, str]
    channel_names: Sequence[str] | None = None
    modality: str = "ct"
    spec: SliceInput | None = None
    empty_fraction: float = 0.1
    min_pixels: int = 8
    seed: int = 0

    def build(self, ctx: BuildContext) -> list[InstructionRecord]:
        images = (
            (Path(self.image),) if isinstance(self.image, str | Path) else tuple(Path(p) for p in self.image)
        )
        # Sequence names from the file names' last part (BraTS2021_00000_t1ce.nii.gz → t1ce).
        names = self.channel_names or (
            ("CT",) if len(images) == 1 else tuple(_case_name(p).rsplit("_", 1)[-1] for p in images)
        )
        values = sorted(self.classes)
        table = LabelTable(tuple(self.classes[v] for v in values), tuple(values))
        spec = self.spec or default_spec(names, self.modality)
        if spec.rule is ChannelRule.REPEAT and len(images) > 1:
            log.warning("%s: the slice rule reads one channel; using %s only", self.labels, images[0])
            images, names = images[:1], tuple(names[:1])
        case = MSDCase(_case_name(images[0]), images, Path(self.labels))
        return _volume_records(
            ctx, case, names, table, spec, self.modality, self.empty_fraction, self.min_pixels, self.seed
        )


def _case_name(path: Path) -> str:
    from vitp_geo.io.volume import case_name

    return case_name(path)


@dataclass
class MSDSource:
    """Every case of an MSD / nnU-Net folder (module doc); modality from ``dataset.json``'s channels."""

    root: Path
    images: str = "imagesTr"
    labels: str = "labelsTr"
    spec: SliceInput | None = None
    empty_fraction: float = 0.1
    min_pixels: int = 8
    seed: int = 0
    limit_cases: int | None = None

    def build(self, ctx: BuildContext) -> list[InstructionRecord]:
        ds = read_msd_dataset(self.root, self.images, self.labels)
        modality = _modality_of(ds.modality)
        spec = self.spec or default_spec(ds.channel_names, modality)
        records: list[InstructionRecord] = []
        for i, case in enumerate(ds.cases[: self.limit_cases]):
            records += _volume_records(
                ctx,
                case,
                ds.channel_names,
                ds.labels,
                spec,
                modality,
                self.empty_fraction,
                self.min_pixels,
                self.seed + i,
            )
        return records


@dataclass
class XraySource:
    """Radiographs with lung / infection masks (module doc)."""

    root: Path
    split: str | None = None
    min_pixels: int = 8
    spec: SliceInput = field(default_factory=lambda: XRAY_DEFAULT)

    def build(self, ctx: BuildContext) -> list[InstructionRecord]:
        from vitp_geo.medical.xray import load_xray

        records: list[InstructionRecord] = []
        for item in read_xray_folder(self.root, self.split):
            xr = load_xray(item.image)
            ids = xray_label(item, xr.shape)
            rel = item.image.relative_to(Path(self.root)).with_suffix(".png").as_posix()
            img = ctx.save_image(rel, self.spec.to_uint8(self.spec.image_2d(xr.array)))
            ctx.summary.tiles_written += 1
            stem = rel.removesuffix(".png").replace("/", "_").replace(" ", "_")
            records += slice_records(ctx, ids, XRAY_CLASSES, img, stem, "xray", self.min_pixels)
            if item.infection is not None:  # the infection masks say whether the lungs are infected
                infected = bool((ids == XRAY_CLASSES.index("infection")).sum() >= self.min_pixels)
                q = _pick(ctx.rng, "classification")
                answer = not infected if "clear" in q else infected
                records.append(
                    ctx.record(stem, [img], q, T.yes_no(ctx.rng, answer), "classification", "xray")
                )
        return records
