"""Read any medical volume: the dispatcher between NIfTI (:mod:`vitp_geo.io.volume`) and DICOM.

:func:`load_volume` takes a NIfTI file, a folder of DICOM slices or one DICOM file and returns a
RAS :class:`~vitp_geo.io.volume.Volume`; :func:`load_image_and_labels` reads an image with its
label map and checks that they share one voxel grid.
"""

from __future__ import annotations

from pathlib import Path

from vitp_geo.io.volume import (
    Modality,
    Volume,
    as_labels,
    check_same_grid,
    is_dicom_file,
    is_nifti_path,
    load_nifti,
)
from vitp_geo.medical import dicom

__all__ = ["load_image_and_labels", "load_volume"]


def load_volume(path: str | Path, modality: Modality | str | None = None) -> Volume:
    """Read a NIfTI file, a DICOM series folder or a single DICOM file as a RAS :class:`Volume`.

    Args:
        path: ``.nii`` / ``.nii.gz`` file, folder of DICOM slices of one series, or one DICOM file.
        modality: overrides the modality (DICOM records its own; NIfTI defaults to unknown).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: neither NIfTI nor DICOM, or the data is bad (see :func:`load_nifti`,
            :func:`vitp_geo.medical.dicom.load_dicom_series`).
    """
    path = Path(path)
    if path.is_dir():
        vol = dicom.load_dicom_series(path)
    elif not path.exists():
        raise FileNotFoundError(f"no such volume file or DICOM folder: {path}")
    elif is_nifti_path(path):
        vol = load_nifti(path)
    elif is_dicom_file(path):
        vol = dicom.load_dicom_file_as_volume(path)
    else:
        hint = " (radiographs: vitp_geo.medical.xray.load_xray)" if path.suffix.lower() == ".png" else ""
        raise ValueError(
            f"{path}: neither NIfTI (.nii / .nii.gz) nor DICOM (no 'DICM' marker at byte 128); "
            f"pass a NIfTI file, a DICOM file or a folder of DICOM slices{hint}"
        )
    if modality is not None:
        vol.modality = Modality(modality)
    return vol


def load_image_and_labels(
    image: str | Path, labels: str | Path, modality: Modality | str | None = None
) -> tuple[Volume, Volume]:
    """Read an image and its label map and check that they share one voxel grid.

    Args:
        image: NIfTI file, DICOM folder or DICOM file.
        labels: NIfTI label file (integer values).
        modality: overrides the image's modality.

    Returns:
        ``(image, labels)`` as RAS volumes; ``labels.array`` is int64, shape ``image.shape``.

    Raises:
        ValueError: different shapes or affines (both files named), a 4D label file, or
            non-integer / negative label values (file and value named).
    """
    img = load_volume(image, modality)
    lab = load_volume(labels)
    if lab.array.ndim != 3:
        raise ValueError(f"{lab.path}: label map must be 3D, got shape {lab.array.shape}")
    check_same_grid(img, lab)
    lab.array = as_labels(lab.array, lab.path)
    return img, lab
