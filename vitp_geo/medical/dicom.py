"""DICOM series and single DICOM images through pydicom, as RAS :class:`~.volume.Volume` s.

DICOM places each slice in the patient's LPS frame (x to the patient's Left, y Posterior, z
Superior): pixel ``(row r, column c)`` of a slice lies at

    ``ImagePositionPatient + c * PixelSpacing[1] * row_cosine + r * PixelSpacing[0] * col_cosine``

where ``ImageOrientationPatient = row_cosine (3) + col_cosine (3)``; ``row_cosine`` is the direction
in which the column index grows along a row. Slices are ordered by their position along the
slice normal ``row_cosine x col_cosine`` (``InstanceNumber`` is not reliable: scanners number in
acquisition order, which may run head-to-feet). The source voxel order is ``(column, row,
slice)``, like dcm2niix / ITK, and the source affine is the LPS affine with x and y negated (RAS).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nibabel import orientations as ornt

from vitp_geo.io.volume import Modality, Volume, check_voxel_affine, is_dicom_file, reorient_to_ras

__all__ = [
    "DicomSlice",
    "LPS_TO_RAS",
    "load_dicom_file_as_volume",
    "load_dicom_series",
    "read_dicom",
    "rescale",
    "slice_affine_lps",
]

log = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# relative tolerance on slice spacing before a series is called non-uniform (1 %, with a floor of
# 0.01 mm): scanners write positions rounded to ~1e-3 mm; real gaps are whole missing slices.
SPACING_RTOL = 0.01
GEOMETRY_FIX = "check ImageOrientationPatient, PixelSpacing and the slice positions (ImagePositionPatient)"
SPACING_ATOL_MM = 0.01


def read_dicom(path: str | Path, stop_before_pixels: bool = False) -> Any:
    """``pydicom.dcmread`` with a :class:`ValueError` naming the file when it is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such DICOM file: {path}")
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from err


def rescale(ds: Any, path: str | Path) -> np.ndarray:
    """Stored pixels -> real values: ``pixel * RescaleSlope + RescaleIntercept`` (HU for CT).

    Args:
        ds: a pydicom dataset with pixel data.
        path: the file, for error messages.

    Returns:
        float32 array, shape ``(rows, columns)`` (or ``(frames, rows, columns)``).
    """
    try:
        pixels = ds.pixel_array
    except Exception as err:  # missing PixelData, unsupported transfer syntax without a decoder
        raise ValueError(f"{path}: cannot decode pixel data ({type(err).__name__}: {err})") from err
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def slice_affine_lps(
    position: np.ndarray,
    row_cosine: np.ndarray,
    col_cosine: np.ndarray,
    pixel_spacing: tuple[float, float],
    slice_step: np.ndarray,
) -> np.ndarray:
    """The LPS affine of voxel ``(column, row, slice, 1)``.

    Args:
        position: ``ImagePositionPatient`` of the first slice, shape ``(3,)``.
        row_cosine: direction of increasing column index, shape ``(3,)``.
        col_cosine: direction of increasing row index, shape ``(3,)``.
        pixel_spacing: ``PixelSpacing`` = (distance between rows, distance between columns), mm.
        slice_step: vector from one slice origin to the next, shape ``(3,)``, mm.
    """
    aff = np.eye(4)
    aff[:3, 0] = row_cosine * pixel_spacing[1]
    aff[:3, 1] = col_cosine * pixel_spacing[0]
    aff[:3, 2] = slice_step
    aff[:3, 3] = position
    return aff


@dataclass
class DicomSlice:
    """One image of a series with the geometry needed to place it."""

    path: Path
    dataset: Any
    position: np.ndarray  # ImagePositionPatient, (3,)
    orientation: np.ndarray  # ImageOrientationPatient, (6,)
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) mm

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])

    @property
    def distance(self) -> float:
        """Position along the slice normal, mm."""
        return float(np.dot(self.normal, self.position))


def _geometry(ds: Any, path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    try:
        position = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    except AttributeError as err:
        raise ValueError(f"{path}: missing ImagePositionPatient / ImageOrientationPatient ({err})") from err
    if position.shape != (3,) or orientation.shape != (6,):
        raise ValueError(
            f"{path}: bad geometry tags ImagePositionPatient={position.tolist()} "
            f"ImageOrientationPatient={orientation.tolist()}"
        )
    spacing = _pixel_spacing(ds, path)
    axes = np.eye(4)  # columns: along a row, down a column, the slice normal; then the position
    axes[:3, 0] = orientation[:3] * spacing[1]
    axes[:3, 1] = orientation[3:] * spacing[0]
    axes[:3, 2] = np.cross(orientation[:3], orientation[3:])
    axes[:3, 3] = position
    check_voxel_affine(axes, f"{path}: the DICOM geometry's", GEOMETRY_FIX)  # per slice, before sorting
    return position, orientation, spacing


def _pixel_spacing(ds: Any, path: Path) -> tuple[float, float]:
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(tag)
        if value is not None and len(value) == 2:
            return (float(value[0]), float(value[1]))
    log.warning("%s: no PixelSpacing tag; assuming 1 x 1 mm pixels", path)
    return (1.0, 1.0)


def _series_files(folder: Path) -> dict[str, list[Path]]:
    """SeriesInstanceUID -> image files in ``folder`` (non-image DICOM such as DICOMDIR skipped)."""
    series: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if not is_dicom_file(path):
            try:
                ds = read_dicom(path, stop_before_pixels=True)
            except ValueError:
                log.info("skipping %s: not DICOM", path)
                continue
        else:
            ds = read_dicom(path, stop_before_pixels=True)
        if "SeriesInstanceUID" not in ds or "ImagePositionPatient" not in ds:
            log.info("skipping %s: not an image slice (no SeriesInstanceUID / ImagePositionPatient)", path)
            continue
        series[str(ds.SeriesInstanceUID)].append(path)
    return series


def load_dicom_series(folder: str | Path) -> Volume:
    """Read one DICOM series from a folder of slice files, in HU, as a RAS :class:`Volume`.

    Args:
        folder: a folder holding the slices of exactly one series.

    Returns:
        the volume; ``source_affine`` / ``source_axcodes`` describe the ``(column, row, slice)``
        order with slices sorted by position along the normal.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: no DICOM images, more than one series (both UIDs named), slices with
            different orientation or size, two slices at one position, or non-uniform spacing
            (the gap named: which slices, which files, which distances).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such DICOM folder: {folder}")
    groups = _series_files(folder)
    if not groups:
        subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir())
        hint = f" (subfolders are not searched: {', '.join(subdirs[:3])})" if subdirs else ""
        raise ValueError(f"{folder}: no DICOM image slices found{hint}")
    if len(groups) > 1:
        described = "; ".join(
            f"{uid} ({len(files)} files, e.g. {files[0].name})" for uid, files in groups.items()
        )
        raise ValueError(f"{folder}: holds {len(groups)} DICOM series, expected one: {described}")
    ((uid, files),) = groups.items()

    slices: list[DicomSlice] = []
    for path in files:
        ds = read_dicom(path)
        position, orientation, spacing = _geometry(ds, path)
        slices.append(DicomSlice(path, ds, position, orientation, spacing))
    first = slices[0]
    for s in slices[1:]:
        if not np.allclose(s.orientation, first.orientation, atol=1e-4):
            raise ValueError(
                f"{folder}: series {uid} mixes orientations: {first.path.name} has "
                f"{first.orientation.tolist()}, {s.path.name} has {s.orientation.tolist()}"
            )
        if (int(s.dataset.Rows), int(s.dataset.Columns)) != (
            int(first.dataset.Rows),
            int(first.dataset.Columns),
        ):
            raise ValueError(
                f"{folder}: series {uid} mixes image sizes: {first.path.name} is "
                f"{first.dataset.Rows}x{first.dataset.Columns}, {s.path.name} is {s.dataset.Rows}x{s.dataset.Columns}"
            )
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-4):
            raise ValueError(
                f"{folder}: series {uid} mixes pixel spacings: {first.path.name} has {first.pixel_spacing}, "
                f"{s.path.name} has {s.pixel_spacing}"
            )
    slices.sort(key=lambda s: s.distance)
    distances = np.asarray([s.distance for s in slices])

    if len(slices) == 1:
        thickness = float(
            first.dataset.get("SpacingBetweenSlices") or first.dataset.get("SliceThickness") or 1.0
        )
        step = first.normal * thickness
    else:
        gaps = np.diff(distances)
        for i, g in enumerate(gaps):
            if g < SPACING_ATOL_MM:
                raise ValueError(
                    f"{folder}: slices {slices[i].path.name} and {slices[i + 1].path.name} lie at the same "
                    f"position {distances[i]:.4f} mm along the normal (duplicate or multi-phase series {uid})"
                )
        typical = float(np.median(gaps))
        bad = np.flatnonzero(np.abs(gaps - typical) > max(SPACING_ATOL_MM, SPACING_RTOL * typical))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{folder}: non-uniform slice spacing in series {uid}: slices {i} and {i + 1} "
                f"({slices[i].path.name} at {distances[i]:.4f} mm, {slices[i + 1].path.name} at "
                f"{distances[i + 1]:.4f} mm along the normal) are {gaps[i]:.4f} mm apart, the median "
                f"spacing is {typical:.4f} mm ({bad.size} gap(s) in {len(slices)} slices)"
            )
        step = (slices[-1].position - slices[0].position) / (len(slices) - 1)

    planes = [rescale(s.dataset, s.path) for s in slices]
    if any(p.ndim != 2 for p in planes):
        raise ValueError(f"{folder}: multi-frame images inside a series are not supported")
    source = np.stack([p.T for p in planes], axis=-1)  # (columns, rows, slices)
    lps = slice_affine_lps(
        slices[0].position, first.orientation[:3], first.orientation[3:], first.pixel_spacing, step
    )
    source_affine = LPS_TO_RAS @ lps
    return _volume(source, source_affine, Modality.from_dicom(first.dataset.get("Modality")), folder)


def _volume(source: np.ndarray, source_affine: np.ndarray, modality: Modality, path: Path) -> Volume:
    if any(int(s) == 0 for s in source.shape):
        raise ValueError(f"{path}: empty volume, shape {source.shape}")
    check_voxel_affine(source_affine, f"{path}: the DICOM geometry's", GEOMETRY_FIX)
    array, affine = reorient_to_ras(source, source_affine)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return Volume(
        array=np.ascontiguousarray(array),
        affine=affine,
        source_affine=source_affine,
        source_axcodes=tuple(ornt.aff2axcodes(source_affine)),  # type: ignore[arg-type]
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        modality=modality,
        path=path,
        header=None,
    )


def load_dicom_file_as_volume(path: str | Path) -> Volume:
    """One DICOM file (a single CT/MR slice, or a multi-frame image) as a RAS :class:`Volume`.

    A file without patient geometry (a radiograph) is placed on an identity-oriented grid with its
    pixel spacing; use :func:`vitp_geo.medical.xray.load_xray` for radiographs as 2D images.
    """
    path = Path(path)
    ds = read_dicom(path)
    values = rescale(ds, path)
    if values.ndim == 2:
        values = values[None]
    frames = values.shape[0]
    source = np.ascontiguousarray(np.transpose(values, (2, 1, 0)))  # (columns, rows, frames)
    if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
        position, orientation, spacing = _geometry(ds, path)
        normal = np.cross(orientation[:3], orientation[3:])
        thickness = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
        if frames > 1:
            log.warning(
                "%s: %d frames placed %g mm apart along the normal (per-frame geometry not read)",
                path,
                frames,
                thickness,
            )
        lps = slice_affine_lps(position, orientation[:3], orientation[3:], spacing, normal * thickness)
    else:
        spacing = _pixel_spacing(ds, path)
        lps = slice_affine_lps(
            np.zeros(3), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), spacing, np.array([0, 0, 1.0])
        )
    return _volume(source, LPS_TO_RAS @ lps, Modality.from_dicom(ds.get("Modality")), path)
