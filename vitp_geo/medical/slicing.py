"""Volumes -> 2D / 2.5D slices with a manifest, and slices -> the identical volume.

Slices are cut from the RAS array of a :class:`~.volume.Volume` along one axis (2 = axial,
1 = coronal, 0 = sagittal) and shown in radiological display order: image rows run from
anterior (axial) or superior (coronal, sagittal) at the top, image columns from the patient's
right (axial, coronal) or anterior (sagittal) at the left, as a radiologist reads them. For the two
in-plane axes ``p < q`` of the RAS array that is

    ``image[r, c] = array[..., p = P-1-c, ..., q = Q-1-r, ...]``, i.e. ``image = flip(take(array, k, axis)).T``

so ``(H, W) = (Q, P)``. Each :class:`SliceRecord` carries the ``slice_affine`` that maps pixel
``(column, row, 0, 1)`` to RAS world millimetres, so a slice is placed without its volume.
:func:`slices_to_volume` inverts the cut exactly.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vitp_geo.io.atomic import atomic_output
from vitp_geo.io.volume import Volume
from vitp_geo.medical.intensity import (
    CT_WINDOWS,
    DEFAULT_CT_WINDOW_TRIPLET,
    ChannelRule,
    IntensityPreset,
    apply_window,
    repeat_to_three,
)

__all__ = [
    "SliceManifest",
    "SliceRecord",
    "choose_slices",
    "put_slice",
    "slice_volume",
    "slices_to_volume",
    "take_slice",
    "three_channel_slice",
]


def _check_axis(axis: int) -> int:
    if axis not in (0, 1, 2):
        raise ValueError(f"slice axis must be 0 (sagittal), 1 (coronal) or 2 (axial), got {axis}")
    return axis


def take_slice(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """One slice in display order.

    Args:
        array: RAS volume, shape ``(X, Y, Z)`` or ``(X, Y, Z, C)``.
        axis: 0, 1 or 2.
        index: slice index along ``axis``.

    Returns:
        ``(H, W)`` for a 3D array, ``(C, H, W)`` for a 4D one.
    """
    _check_axis(axis)
    n = array.shape[axis]
    if not 0 <= index < n:
        raise ValueError(f"slice index {index} out of range [0, {n}) along axis {axis}")
    plane = np.take(array, index, axis=axis)  # (P, Q) or (P, Q, C)
    plane = np.flip(plane, axis=(0, 1))
    if plane.ndim == 2:
        return np.ascontiguousarray(plane.T)
    return np.ascontiguousarray(np.transpose(plane, (2, 1, 0)))


def put_slice(array: np.ndarray, axis: int, index: int, image: np.ndarray) -> None:
    """Write a display-order slice back into ``array`` in place (inverse of :func:`take_slice`).

    Args:
        array: RAS volume, ``(X, Y, Z)`` or ``(X, Y, Z, C)``.
        axis: 0, 1 or 2.
        index: slice index.
        image: ``(H, W)`` or ``(C, H, W)`` as :func:`take_slice` returns it.
    """
    _check_axis(axis)
    plane = image.T if image.ndim == 2 else np.transpose(image, (2, 1, 0))
    plane = np.flip(plane, axis=(0, 1))
    index_tuple: list[slice | int] = [slice(None)] * array.ndim
    index_tuple[axis] = index
    target = array[tuple(index_tuple)]
    if target.shape != plane.shape:
        raise ValueError(
            f"slice {index} along axis {axis}: image shape {image.shape} does not fit the volume {array.shape}"
        )
    array[tuple(index_tuple)] = plane


def three_channel_slice(
    array: np.ndarray,
    axis: int,
    index: int,
    rule: ChannelRule | str,
    windows: Sequence[IntensityPreset] = DEFAULT_CT_WINDOW_TRIPLET,
    channels: Sequence[int] = (0, 1, 2),
) -> np.ndarray:
    """The ViT's ``(3, H, W)`` float32 input for slice ``index`` under a :class:`ChannelRule`.

    Args:
        array: ``(X, Y, Z)`` HU for ``ct-windows``; a normalised ``(X, Y, Z)`` volume for
            ``neighbours`` and ``repeat``; normalised ``(X, Y, Z, C)`` sequences for
            ``mri-sequences``.
        axis: slicing axis.
        index: slice index.
        rule: the channel rule.
        windows: three CT window presets for ``ct-windows``.
        channels: three channel indices for ``mri-sequences`` (see
            :func:`vitp_geo.medical.intensity.select_sequences`).
    """
    rule = ChannelRule(rule)
    if rule is ChannelRule.MRI_SEQUENCES:
        if array.ndim != 4 or len(channels) != 3:
            raise ValueError(
                f"mri-sequences needs an (X, Y, Z, C) volume and 3 channels, got {array.shape}, {channels}"
            )
        if max(channels) >= array.shape[3]:
            raise ValueError(
                f"mri-sequences: channel {max(channels)} not in a volume with {array.shape[3]} channels"
            )
        return take_slice(array[..., list(channels)], axis, index).astype(np.float32)
    if array.ndim != 3:
        raise ValueError(f"{rule} needs an (X, Y, Z) volume, got shape {array.shape}")
    if rule is ChannelRule.CT_WINDOWS:
        if len(windows) != 3:
            raise ValueError(f"ct-windows needs 3 windows, got {list(windows)}")
        hu = take_slice(array, axis, index)
        out = []
        for w in windows:
            level, width = CT_WINDOWS[IntensityPreset(w)]
            out.append(apply_window(hu, level, width))
        return np.stack(out)
    if rule is ChannelRule.NEIGHBOURS:
        n = array.shape[axis]
        ks = [min(max(index + d, 0), n - 1) for d in (-1, 0, 1)]  # edge replication
        return np.stack([take_slice(array, axis, k) for k in ks]).astype(np.float32)
    return repeat_to_three(take_slice(array, axis, index)).astype(np.float32)


@dataclass(frozen=True)
class SliceRecord:
    """Where one slice came from; JSON/CSV-serialisable.

    Attributes:
        case: case identifier (file name without suffix).
        axis: slicing axis of the RAS array (0 sagittal, 1 coronal, 2 axial).
        index: slice index along ``axis``.
        height: image rows.
        width: image columns.
        volume_shape: RAS spatial shape ``(X, Y, Z)``.
        spacing: ``(row, column, between-slices)`` spacing, mm.
        volume_affine: the volume's RAS affine, 4x4 nested lists.
        slice_affine: pixel ``(column, row, 0, 1)`` -> RAS world mm, 4x4 nested lists.
        empty: True when the slice has no foreground label (None when no labels were given).
        image: where the slice image was saved, if it was.
        label: where the slice label was saved, if it was.
    """

    case: str
    axis: int
    index: int
    height: int
    width: int
    volume_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    volume_affine: list[list[float]]
    slice_affine: list[list[float]]
    empty: bool | None = None
    image: str | None = None
    label: str | None = None


CSV_FIELDS = [f for f in SliceRecord.__dataclass_fields__]


def _slice_affine(affine: np.ndarray, shape: tuple[int, int, int], axis: int, index: int) -> np.ndarray:
    p, q = [a for a in range(3) if a != axis]
    out = np.zeros((4, 4))
    out[:, 0] = -affine[:, p]
    out[:, 1] = -affine[:, q]
    out[:, 2] = affine[:, axis]
    out[:, 3] = (
        affine[:, 3] + affine[:, p] * (shape[p] - 1) + affine[:, q] * (shape[q] - 1) + affine[:, axis] * index
    )
    out[3] = [0, 0, 0, 1]
    return out


def _record(
    case: str, affine: np.ndarray, shape: tuple[int, int, int], axis: int, index: int, empty: bool | None
) -> SliceRecord:
    p, q = [a for a in range(3) if a != axis]
    sp = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return SliceRecord(
        case=case,
        axis=axis,
        index=index,
        height=int(shape[q]),
        width=int(shape[p]),
        volume_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        spacing=(float(sp[q]), float(sp[p]), float(sp[axis])),
        volume_affine=np.asarray(affine, dtype=float).tolist(),
        slice_affine=_slice_affine(np.asarray(affine, dtype=float), shape, axis, index).tolist(),
        empty=empty,
    )


@dataclass
class SliceManifest:
    """The slices cut from one or more volumes, in order."""

    records: list[SliceRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def extend(self, other: SliceManifest) -> None:
        self.records.extend(other.records)

    def to_dicts(self) -> list[dict[str, object]]:
        return [asdict(r) for r in self.records]

    def save_json(self, path: str | Path) -> Path:
        """Write ``{"slices": [...]}`` atomically."""
        path = Path(path)
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps({"slices": self.to_dicts()}, indent=1) + "\n")
        return path

    def save_csv(self, path: str | Path) -> Path:
        """One row per slice; tuples and matrices as JSON strings. Written atomically."""
        path = Path(path)
        with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for d in self.to_dicts():
                writer.writerow(
                    {
                        k: json.dumps(v) if isinstance(v, list | tuple) else ("" if v is None else v)
                        for k, v in d.items()
                    }
                )
        return path

    @classmethod
    def from_dicts(cls, rows: Sequence[dict[str, object]], source: str = "<memory>") -> SliceManifest:
        records = []
        for i, row in enumerate(rows):
            try:
                records.append(
                    SliceRecord(
                        case=str(row["case"]),
                        axis=int(row["axis"]),  # type: ignore[call-overload]
                        index=int(row["index"]),  # type: ignore[call-overload]
                        height=int(row["height"]),  # type: ignore[call-overload]
                        width=int(row["width"]),  # type: ignore[call-overload]
                        volume_shape=tuple(int(v) for v in row["volume_shape"]),  # type: ignore[arg-type, attr-defined]
                        spacing=tuple(float(v) for v in row["spacing"]),  # type: ignore[arg-type, attr-defined]
                        volume_affine=[[float(v) for v in r] for r in row["volume_affine"]],  # type: ignore[attr-defined]
                        slice_affine=[[float(v) for v in r] for r in row["slice_affine"]],  # type: ignore[attr-defined]
                        empty=None if row.get("empty") is None else bool(row["empty"]),
                        image=None if row.get("image") in (None, "") else str(row["image"]),
                        label=None if row.get("label") in (None, "") else str(row["label"]),
                    )
                )
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"{source}: slice {i}: bad manifest row ({type(err).__name__}: {err})"
                ) from err
        return cls(records)

    @classmethod
    def load(cls, path: str | Path) -> SliceManifest:
        """Read a manifest written by :meth:`save_json` (``.json``) or :meth:`save_csv` (``.csv``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such slice manifest: {path}")
        if path.suffix.lower() == ".csv":
            rows: list[dict[str, object]] = []
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    parsed: dict[str, object] = dict(row)
                    for k in ("volume_shape", "spacing", "volume_affine", "slice_affine"):
                        parsed[k] = json.loads(row[k])
                    parsed["empty"] = None if row["empty"] == "" else row["empty"] == "True"
                    rows.append(parsed)
            return cls.from_dicts(rows, str(path))
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON (line {err.lineno}: {err.msg})") from err
        if not isinstance(data, dict) or not isinstance(data.get("slices"), list):
            raise ValueError(f"{path}: expected an object with a 'slices' list")
        return cls.from_dicts(data["slices"], str(path))


def choose_slices(
    labels: np.ndarray, axis: int, empty_fraction: float = 1.0, seed: int = 0
) -> tuple[list[int], list[bool | None]]:
    """Slice indices to keep: every slice with foreground, plus a seeded share of empty ones.

    Args:
        labels: RAS label volume ``(X, Y, Z)``.
        axis: slicing axis.
        empty_fraction: share of label-free slices kept, in [0, 1] (rounded to whole slices).
        seed: which empty slices are kept.

    Returns:
        ``(indices, empty_flags)`` in increasing index order.
    """
    _check_axis(axis)
    if not 0.0 <= empty_fraction <= 1.0:
        raise ValueError(f"empty_fraction must be in [0, 1], got {empty_fraction}")
    other = tuple(a for a in range(3) if a != axis)
    has_fg: np.ndarray = np.asarray(np.asarray(labels != 0).any(axis=other))
    full = np.flatnonzero(has_fg).tolist()
    empty = np.flatnonzero(~has_fg)
    n_keep = int(round(empty_fraction * empty.size))
    kept_empty = (
        np.random.default_rng(seed).choice(empty, size=n_keep, replace=False).tolist() if n_keep else []
    )
    indices = sorted(int(i) for i in [*full, *kept_empty])
    return indices, [not bool(has_fg[i]) for i in indices]


def slice_volume(
    volume: Volume | np.ndarray,
    case: str | None = None,
    axis: int = 2,
    labels: np.ndarray | None = None,
    empty_fraction: float = 1.0,
    seed: int = 0,
    affine: np.ndarray | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray] | None, SliceManifest]:
    """Cut a volume (and its labels) into display-order slices.

    Args:
        volume: a :class:`Volume`, or a RAS array ``(X, Y, Z[, C])`` with ``affine`` given.
        case: case name (default: the volume's file name).
        axis: slicing axis (2 = axial).
        labels: RAS labels ``(X, Y, Z)`` aligned with the volume; decides which slices are empty.
        empty_fraction: share of label-free slices kept (1 keeps all).
        seed: seed for the choice of empty slices.
        affine: RAS affine when ``volume`` is a bare array.

    Returns:
        ``(images, label_slices, manifest)``: images ``(H, W)`` / ``(C, H, W)``, label slices
        ``(H, W)`` (None without labels) and one :class:`SliceRecord` per slice.
    """
    if isinstance(volume, Volume):
        array, aff, name = volume.array, volume.affine, case or volume.name
    else:
        if affine is None:
            raise ValueError("slice_volume: pass the RAS affine with a bare array")
        array, aff, name = np.asarray(volume), np.asarray(affine, dtype=float), case or "volume"
    if array.ndim not in (3, 4) or 0 in array.shape:
        raise ValueError(
            f"{name}: cannot slice an array of shape {array.shape} (need (X, Y, Z[, C]), non-empty)"
        )
    shape = (int(array.shape[0]), int(array.shape[1]), int(array.shape[2]))
    if labels is not None and tuple(labels.shape) != shape:
        raise ValueError(f"{name}: labels have shape {tuple(labels.shape)}, image has {shape}")
    if labels is None:
        indices: list[int] = list(range(shape[_check_axis(axis)]))
        flags: list[bool | None] = [None] * len(indices)
    else:
        indices, flags = choose_slices(labels, axis, empty_fraction, seed)
    images = [take_slice(array, axis, k) for k in indices]
    label_slices = None if labels is None else [take_slice(labels, axis, k) for k in indices]
    records = [_record(name, aff, shape, axis, k, e) for k, e in zip(indices, flags, strict=True)]
    return images, label_slices, SliceManifest(records)


def slices_to_volume(
    slices: Sequence[np.ndarray],
    manifest: SliceManifest | Sequence[SliceRecord],
    fill: float = 0,
    dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """Put slices of ONE case back into its RAS volume (inverse of :func:`slice_volume`).

    Slices the manifest does not list (e.g. empty slices left out) are filled with ``fill``.

    Args:
        slices: ``(H, W)`` or ``(C, H, W)`` arrays, one per record.
        manifest: the records they were cut with (one case, one axis).
        fill: value for slices not given.
        dtype: output dtype (default: the slices').

    Returns:
        ``(X, Y, Z)`` or ``(X, Y, Z, C)`` array.
    """
    records = manifest.records if isinstance(manifest, SliceManifest) else list(manifest)
    if len(records) != len(slices):
        raise ValueError(f"{len(slices)} slices for {len(records)} manifest records")
    if not records:
        raise ValueError("slices_to_volume: no slices")
    cases = {r.case for r in records}
    axes = {r.axis for r in records}
    if len(cases) != 1 or len(axes) != 1:
        raise ValueError(
            f"slices_to_volume: one case and one axis at a time, got cases {sorted(cases)} axes {sorted(axes)}"
        )
    shape = records[0].volume_shape
    first = np.asarray(slices[0])
    extra = () if first.ndim == 2 else (first.shape[0],)
    out = np.full((*shape, *extra), fill, dtype=dtype or first.dtype)
    for rec, img in zip(records, slices, strict=True):
        if (int(np.shape(img)[-2]), int(np.shape(img)[-1])) != (rec.height, rec.width):
            raise ValueError(
                f"{rec.case} slice {rec.index}: image is {np.shape(img)}, manifest says {rec.height}x{rec.width}"
            )
        put_slice(out, rec.axis, rec.index, np.asarray(img))
    return out
