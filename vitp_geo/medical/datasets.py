"""Medical dataset folders: MSD / nnU-Net (``imagesTr``, ``labelsTr``, ``dataset.json``) and X-ray folders.

**MSD / nnU-Net.** ``dataset.json`` may be in nnU-Net v2 form (``channel_names``, ``labels`` as
name → value, ``file_ending``) or in the MSD / nnU-Net v1 form (``modality``, ``labels`` as
value → name). Images are ``imagesTr/<case>_<XXXX><file_ending>`` with one file per channel
(``_0000`` … in ``channel_names`` order, e.g. BraTS FLAIR, T1, T1ce, T2); a single-channel
dataset may also name them ``<case><file_ending>`` (the MSD and AMOS releases: ``amos_0001`` is a
case, only ``_0000`` is read as a channel suffix). Labels are
``labelsTr/<case><file_ending>``. Files whose name starts with ``.`` (macOS ``._*`` forks in the MSD
archives) are ignored. nnU-Net's region-based label entries (a list of values) and its ``ignore``
label are refused for training.

**Class ids.** Label values need not be contiguous: class id ``k`` is the ``k``-th smallest
value of ``dataset.json``'s table (``LabelTable``). BraTS' 0/1/2/4 become class ids 0/1/2/3
(4, enhancing tumour → 3); predictions are written back with the original values.

**X-ray folders** (``read_xray_folder``) in the CovidQU-Ex layout: every ``images/`` folder below
``<root>/<split>`` whose parent also holds ``lung masks/`` and / or ``infection masks/``, with masks
of the same file name (0 = outside, anything else = inside). Classes: 0 background, 1 lung,
2 infection (infection wins where both are set; a missing ``infection masks/`` folder means no
infection). The released dataset's root is ``Infection Segmentation Data/Infection Segmentation
Data`` (splits ``Train``, ``Val``, ``Test``; categories ``COVID-19``, ``Non-COVID``, ``Normal``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitp_geo.evaluation.medical_dice import load_dataset_labels
from vitp_geo.io.volume import Volume, as_labels, check_same_grid
from vitp_geo.medical.inputs import SliceInput, fill_non_finite
from vitp_geo.medical.load import load_volume

XRAY_CLASSES: tuple[str, ...] = ("background", "lung", "infection")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")


@dataclass(frozen=True)
class LabelTable:
    """Class names and the label value each has in the files; class id = position."""

    names: tuple[str, ...]
    values: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.values) or len(self.names) < 2:
            raise ValueError(f"a label table needs >= 2 classes, got names {self.names} values {self.values}")
        if list(self.values) != sorted(set(self.values)) or min(self.values) < 0:
            raise ValueError(f"label values must be distinct, sorted and >= 0, got {self.values}")

    @classmethod
    def from_names(cls, names: list[str] | tuple[str, ...]) -> LabelTable:
        return cls(tuple(names), tuple(range(len(names))))

    @property
    def contiguous(self) -> bool:
        return list(self.values) == list(range(len(self.values)))

    def to_class_ids(self, label: np.ndarray, where: str | Path) -> np.ndarray:
        """Label values → class ids (uint8 / int64 array of the same shape).

        Raises:
            ValueError: a value not in the table (names ``where`` and the values).
        """
        values = np.unique(label)
        unknown = sorted(set(values.tolist()) - set(self.values))
        if unknown:
            raise ValueError(
                f"{where}: label value(s) {unknown[:10]} not in the label table "
                f"{dict(zip(self.values, self.names, strict=True))}"
            )
        lut = np.zeros(max(self.values) + 1, np.int64)
        lut[list(self.values)] = np.arange(len(self.values))
        return lut[label.astype(np.int64)]

    def to_values(self, class_ids: np.ndarray) -> np.ndarray:
        """Class ids → label values (the inverse of ``to_class_ids``), smallest fitting dtype."""
        out = np.asarray(self.values)[class_ids.astype(np.int64)]
        return out.astype(np.uint8 if max(self.values) < 256 else np.int16)


@dataclass(frozen=True)
class MSDCase:
    """One case: its channel files (in ``channel_names`` order) and its label file (or None)."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


@dataclass
class MSDDataset:
    """A parsed MSD / nnU-Net folder."""

    root: Path
    name: str
    channel_names: tuple[str, ...]
    labels: LabelTable
    file_ending: str
    cases: list[MSDCase]

    @property
    def modality(self) -> str:
        """``CT`` when the only channel is called CT, else ``MRI`` (a guess; logged by callers)."""
        names = [c.upper() for c in self.channel_names]
        return "CT" if names == ["CT"] else "MRI"


def _load_json(path: Path) -> dict[str, object]:
    if not path.is_file():
        raise FileNotFoundError(f"dataset.json not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def label_table_from_json(path: str | Path) -> LabelTable:
    """``dataset.json``'s ``labels`` (v2 name → value, or v1 value → name) as a ``LabelTable``.

    Parsing is ``vitp_geo.evaluation.medical_dice.load_dataset_labels`` (one reader for training
    and evaluation); training needs one value per class, so region entries and nnU-Net's
    ``ignore`` label are refused here.
    """
    spec = load_dataset_labels(path)
    regions = [c.name for c in spec.classes if len(c.labels) != 1]
    if regions:
        raise ValueError(
            f"{path}: label(s) {regions} are region-based; give the plain label values "
            "(e.g. BraTS 0/1/2/4) to train on"
        )
    if spec.ignore is not None:
        raise ValueError(f"{path}: an 'ignore' label ({spec.ignore}) is not supported for training")
    entries = sorted(
        (c.labels[0], c.name) for c in ([spec.background] if spec.background else []) + spec.classes
    )
    return LabelTable(tuple(n for _, n in entries), tuple(v for v, _ in entries))


_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def read_msd_dataset(
    root: str | Path, images: str = "imagesTr", labels: str | None = "labelsTr"
) -> MSDDataset:
    """Parse an MSD / nnU-Net folder (module doc).

    Args:
        root: the folder holding ``dataset.json``.
        images: image sub-folder (``imagesTr``; ``imagesTs`` / AMOS' ``imagesVa`` for others).
        labels: label sub-folder, or None for unlabelled images.

    Raises:
        FileNotFoundError: no ``dataset.json``, image folder or a case's label file (named).
        ValueError: a malformed ``dataset.json`` or a case with missing / extra channels (named).
    """
    root = Path(root)
    meta_path = root / "dataset.json"
    meta = _load_json(meta_path)
    channels = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise ValueError(f"{meta_path}: needs 'channel_names' (nnU-Net v2) or 'modality' (MSD)")
    try:
        order = sorted(channels, key=lambda k: int(k))
    except ValueError as err:
        raise ValueError(f"{meta_path}: channel keys must be 0, 1, …, got {list(channels)}") from err
    if [int(k) for k in order] != list(range(len(order))):
        raise ValueError(f"{meta_path}: channel keys must be 0..{len(order) - 1}, got {order}")
    channel_names = tuple(str(channels[k]) for k in order)
    table = label_table_from_json(meta_path)
    ending = str(meta.get("file_ending", ".nii.gz"))
    folder = root / images
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(ending):
            continue
        stem = path.name[: -len(ending)]
        m = _CHANNEL.match(stem)
        if len(channel_names) == 1 and m and int(m["ch"]) != 0:
            m = None  # one channel: only _0000 is a channel suffix (AMOS names cases amos_0001 …)
        case, ch = (m["case"], int(m["ch"])) if m else (stem, 0)
        if not m and len(channel_names) > 1:
            raise ValueError(
                f"{path}: a {len(channel_names)}-channel dataset needs one file per channel "
                f"(<case>_0000{ending} …); split 4-D MSD files first (nnUNetv2_convert_MSD_dataset)"
            )
        if ch in found.setdefault(case, {}):
            raise ValueError(f"{path}: case {case!r} has channel {ch} twice")
        found[case][ch] = path
    if not found:
        raise FileNotFoundError(f"no *{ending} images in {folder}")
    cases: list[MSDCase] = []
    for case, files in sorted(found.items()):
        if sorted(files) != list(range(len(channel_names))):
            raise ValueError(
                f"{folder}: case {case!r} has channel file(s) {sorted(files)}, dataset.json lists "
                f"{len(channel_names)} ({', '.join(channel_names)})"
            )
        label: Path | None = None
        if labels is not None:
            label = root / labels / f"{case}{ending}"
            if not label.is_file():
                raise FileNotFoundError(f"no label for case {case!r}: {label} not found")
        cases.append(MSDCase(case, tuple(files[c] for c in range(len(channel_names))), label))
    return MSDDataset(root, str(meta.get("name", root.name)), channel_names, table, ending, cases)


def load_case(case: MSDCase, spec: SliceInput, channel_names: Sequence[str]) -> tuple[np.ndarray, Volume]:
    """A case's prepared array (``SliceInput.prepare``) and its first channel's ``Volume`` (the grid).

    Raises:
        ValueError: channels on different grids (names both files).
    """
    vols = [load_volume(p) for p in case.images]
    for v in vols[1:]:
        check_same_grid(vols[0], v)
    arrays, _ = fill_non_finite([v.array for v in vols], case.images[0])  # NaN / inf voxels: nodata
    return spec.prepare(arrays, channel_names), vols[0]


def load_case_label(case: MSDCase, reference: Volume, table: LabelTable) -> np.ndarray:
    """The case's label as RAS class ids on ``reference``'s grid (errors name the file)."""
    if case.label is None:
        raise ValueError(f"case {case.case_id!r} has no label file")
    lab = load_volume(case.label)
    if lab.array.ndim != 3:
        raise ValueError(f"{case.label}: a label map must be 3-D, got shape {lab.array.shape}")
    check_same_grid(reference, lab)
    return table.to_class_ids(as_labels(lab.array, case.label), case.label)


@dataclass(frozen=True)
class XrayItem:
    """One radiograph and its masks (``infection`` None: no infection mask folder)."""

    image: Path
    lung: Path | None
    infection: Path | None
    category: str


def read_xray_folder(root: str | Path, split: str | None = None) -> list[XrayItem]:
    """Radiographs with lung / infection masks below ``root/split`` (module doc), sorted by path.

    Raises:
        FileNotFoundError: the folder, no ``images/`` folder with masks, or a missing mask file.
    """
    base = Path(root) / split if split else Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"X-ray folder not found: {base}")
    items: list[XrayItem] = []
    for images in sorted(p for p in base.rglob("images") if p.is_dir()):
        lung_dir, inf_dir = images.parent / "lung masks", images.parent / "infection masks"
        if not lung_dir.is_dir() and not inf_dir.is_dir():
            continue
        for path in sorted(images.iterdir()):
            if path.name.startswith(".") or path.suffix.lower() not in _IMAGE_EXTS:
                continue
            masks: list[Path | None] = []
            for folder in (lung_dir, inf_dir):
                if not folder.is_dir():
                    masks.append(None)
                    continue
                mask = folder / path.name
                if not mask.is_file():
                    mask = next(
                        (m for m in folder.glob(f"{path.stem}.*") if not m.name.startswith(".")), mask
                    )
                if not mask.is_file():
                    raise FileNotFoundError(f"no mask for {path}: {folder / path.name} not found")
                masks.append(mask)
            category = images.parent.name if images.parent != base else ""
            items.append(XrayItem(path, masks[0], masks[1], category))
    if not items:
        raise FileNotFoundError(
            f"no radiographs in {base}: expected images/ next to 'lung masks/' or 'infection masks/'"
        )
    return items


def xray_label(item: XrayItem, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 class ids of ``XRAY_CLASSES`` for ``item`` (module doc)."""
    from vitp_geo.io.png_mask import read_png_mask

    out = np.zeros(shape, np.uint8)
    for mask_path, cls in ((item.lung, 1), (item.infection, 2)):
        if mask_path is None:
            continue
        mask = read_png_mask(mask_path) > 0
        if mask.shape != shape:
            raise ValueError(f"{mask_path}: mask is {mask.shape}, image {item.image} is {shape}")
        out[mask] = cls
    return out
