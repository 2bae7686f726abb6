"""Medical volumes in one frame: arrays in RAS voxel order on load, the source frame on write.

A :class:`Volume` holds a voxel array whose axes point to patient Right, Anterior and Superior
(``nibabel.aff2axcodes(volume.affine) == ("R", "A", "S")``), the RAS affine that maps voxel indices
to world millimetres, and everything needed to write a prediction back in the file's own voxel
order: the source affine, the source orientation codes and (for NIfTI) the header with its
qform/sform codes.

NIfTI goes through nibabel here; DICOM series and single DICOM files through
:mod:`vitp_geo.medical.dicom`, and :func:`vitp_geo.medical.load.load_volume` dispatches between
them. The reorientation is a pure axis permutation/flip (nibabel's orientation utilities, the same operation
as ``nibabel.as_closest_canonical``), so no voxel is resampled and the inverse is exact.
"""

from __future__ import annotations

import copy
import gzip
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from vitp_geo.io.atomic import atomic_output
from vitp_geo.io.memory import check_fits

__all__ = [
    "Modality",
    "as_labels",
    "Volume",
    "check_same_grid",
    "check_voxel_affine",
    "is_dicom_file",
    "is_nifti_path",
    "load_nifti",
    "reorient_to_ras",
    "save_nifti_like",
]

RAS = ("R", "A", "S")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


class Modality(StrEnum):
    """Imaging modality, as DICOM spells it (``Modality`` tag); NIfTI files carry none."""

    CT = "CT"
    MR = "MR"
    XRAY = "DX"  # projection radiograph (DICOM DX / CR; PNG radiographs)
    UNKNOWN = "unknown"

    @classmethod
    def from_dicom(cls, value: str | None) -> Modality:
        """Map a DICOM ``Modality`` tag value (``CT``, ``MR``, ``DX``, ``CR``, ...) to a member."""
        v = (value or "").strip().upper()
        if v == "CT":
            return cls.CT
        if v in ("MR", "MRI"):
            return cls.MR
        if v in ("DX", "CR", "RG", "DR", "XR", "PX", "MG"):
            return cls.XRAY
        return cls.UNKNOWN


@dataclass
class Volume:
    """A 3D (or 3D + channels) medical image in RAS voxel order.

    Attributes:
        array: voxels, shape ``(X, Y, Z)`` or ``(X, Y, Z, C)``; axis 0 runs toward patient Right,
            axis 1 toward Anterior, axis 2 toward Superior. CT values are Hounsfield units for
            DICOM input (slope/intercept applied) and NIfTI scaled values (``scl_slope``/
            ``scl_inter`` applied) otherwise; integer files without scaling keep their dtype
            (in native byte order), so label volumes stay integer.
        affine: ``(4, 4)`` voxel index ``(i, j, k, 1)`` -> RAS world millimetres for ``array``.
        source_affine: ``(4, 4)`` RAS affine of the voxel order as stored in the file.
        source_axcodes: orientation codes of the stored voxel order, e.g. ``("L", "A", "S")``.
        spacing: voxel size in mm along the axes of ``array``, shape ``(3,)``.
        modality: CT, MR, X-ray or unknown (NIfTI does not record it).
        path: the file or DICOM folder this came from (None when built in memory).
        header: the NIfTI header to write predictions with (qform/sform codes and affines);
            None for DICOM input, in which case predictions get ``qform_code = sform_code = 1``
            (scanner anatomical).
    """

    array: np.ndarray
    affine: np.ndarray
    source_affine: np.ndarray
    source_axcodes: tuple[str, str, str]
    spacing: tuple[float, float, float]
    modality: Modality = Modality.UNKNOWN
    path: Path | None = None
    header: nib.Nifti1Header | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(X, Y, Z)`` in RAS order."""
        return (int(self.array.shape[0]), int(self.array.shape[1]), int(self.array.shape[2]))

    @property
    def source_shape(self) -> tuple[int, int, int]:
        """Spatial shape in the file's own voxel order."""
        back = _ras_to_source(self.source_affine)  # row i: where RAS axis i goes in the file
        out = [0, 0, 0]
        for i in range(3):
            out[int(back[i, 0])] = self.shape[i]
        return (out[0], out[1], out[2])

    @property
    def name(self) -> str:
        """Case name: the file name without ``.nii`` / ``.nii.gz`` / ``.dcm`` (or the folder name)."""
        if self.path is None:
            return "volume"
        return case_name(self.path)


def case_name(path: str | Path) -> str:
    """A case identifier from a file or folder name (NIfTI, DICOM, PNG suffixes stripped)."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".dcm", ".png"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def reorient_to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip the first three axes of ``array`` so that they point R, A, S.

    Args:
        array: voxels, shape ``(I, J, K, ...)``.
        affine: ``(4, 4)`` voxel -> RAS world affine of ``array``.

    Returns:
        ``(array_ras, affine_ras)``: the same voxels in RAS order (a view where possible) and the
        affine that maps their indices to the same world points.
    """
    src = ornt.io_orientation(affine)
    to_ras = ornt.ornt_transform(src, ornt.axcodes2ornt(RAS))
    out = ornt.apply_orientation(array, to_ras)
    new_affine = affine @ ornt.inv_ornt_aff(to_ras, array.shape[:3])
    return out, new_affine


def _ras_to_source(source_affine: np.ndarray) -> np.ndarray:
    return ornt.ornt_transform(ornt.axcodes2ornt(RAS), ornt.io_orientation(source_affine))


def is_nifti_path(path: str | Path) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_dicom_file(path: str | Path) -> bool:
    """True when the file carries the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _native(array: np.ndarray) -> np.ndarray:
    if not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="))
    return array


def _check_not_empty(shape: tuple[int, ...], path: str | Path) -> None:
    if len(shape) < 3 or any(int(s) == 0 for s in shape):
        raise ValueError(
            f"{path}: empty volume, shape {tuple(int(s) for s in shape)} (need 3 non-zero dimensions)"
        )


def check_voxel_affine(affine: np.ndarray, where: str, fix: str) -> None:
    """Refuse a voxel-to-world affine that is not finite or singular, naming where it came from.

    nibabel's orientation code would fail on it with "Unable to find out axis ..." or "SVD did not
    converge", naming neither the file nor the affine.

    Args:
        affine: (4, 4).
        where: the message's start, naming the file (``"<path>: the header's"``).
        fix: what the user should correct.

    Raises:
        ValueError: ``"<where> voxel-to-world affine is not finite / singular ...: [...]; <fix>"``.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if np.isfinite(affine).all() and np.linalg.matrix_rank(affine[:3, :3]) == 3:
        return
    what = "not finite" if not np.isfinite(affine).all() else "singular (voxels have no orientation)"
    raise ValueError(f"{where} voxel-to-world affine is {what}: {np.round(affine[:3], 4).tolist()}; {fix}")


def load_nifti(path: str | Path, modality: Modality | str = Modality.UNKNOWN) -> Volume:
    """Read a NIfTI-1/2 file (``.nii``/``.nii.gz``) and reorient it to RAS.

    Args:
        path: the file.
        modality: what the file holds (NIfTI does not say); recorded on the volume.

    Returns:
        the :class:`Volume`; ``source_affine`` and ``header`` keep the file's own frame.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a NIfTI file, fewer than 3 dimensions, a zero-length axis, or more
            than 4 dimensions.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such NIfTI file: {path}")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises ImageFileError, EOFError, zlib errors ...
        raise ValueError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err})") from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"{path}: {type(img).__name__} is not NIfTI (expected a .nii / .nii.gz file)")
    shape = tuple(int(s) for s in img.shape)
    _check_not_empty(shape, path)
    squeezable = len(shape) > 4 and all(s == 1 for s in shape[3:-1])
    if len(shape) > 4 and not squeezable:
        raise ValueError(f"{path}: {len(shape)}-D NIfTI shape {shape} is not supported (3D or 3D + channels)")
    affine = np.asarray(img.affine, dtype=np.float64)
    check_voxel_affine(affine, f"{path}: the header's", "fix its sform / qform before reading")
    # a small .nii.gz may declare 1024³ voxels: refuse before allocating them
    proxy = img.dataobj
    scaled = getattr(proxy, "slope", 1.0) != 1.0 or getattr(proxy, "inter", 0.0) != 0.0
    itemsize = 8 if scaled else np.dtype(img.get_data_dtype()).itemsize
    check_fits(
        int(np.prod(shape, dtype=np.int64)) * itemsize,
        f"{path}: reading its {'x'.join(map(str, shape))} {img.get_data_dtype()} voxels",
        "this volume cannot be read on this machine",
    )
    try:
        data = _native(np.asanyarray(img.dataobj))
    except Exception as err:
        raise ValueError(f"{path}: could not read the voxel data ({type(err).__name__}: {err})") from err
    if data.dtype == np.float64 and img.get_data_dtype() != np.float64:
        data = data.astype(np.float32)  # nibabel scales in float64; the stored values need no more
    while data.ndim > 3 and data.shape[-1] == 1:  # (X, Y, Z, 1) label files written by some tools
        data = data[..., 0]
    if data.ndim > 4:  # NIfTI vector layout (X, Y, Z, 1, C)
        data = data.reshape(data.shape[:3] + data.shape[-1:])
    source_affine = np.asarray(img.affine, dtype=np.float64)
    array, affine = reorient_to_ras(data, source_affine)
    return Volume(
        array=np.ascontiguousarray(array),
        affine=affine,
        source_affine=source_affine,
        source_axcodes=tuple(ornt.aff2axcodes(source_affine)),  # type: ignore[arg-type]
        spacing=_spacing(affine),
        modality=Modality(modality),
        path=path,
        header=copy.deepcopy(img.header),  # type: ignore[arg-type]
    )


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    s = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return (float(s[0]), float(s[1]), float(s[2]))


def check_same_grid(a: Volume, b: Volume, atol: float = 1e-3) -> None:
    """Raise unless ``a`` and ``b`` have the same RAS shape and affine (image vs label, pred vs gt).

    Args:
        a: first volume (e.g. the image).
        b: second volume (e.g. the label map).
        atol: tolerance on affine entries, in mm.

    Raises:
        ValueError: naming both files and the differing shapes or affines.
    """
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.path} has {a.shape}, {b.path} has {b.shape} (RAS order)")
    if not np.allclose(a.affine, b.affine, atol=atol):
        diff = float(np.abs(a.affine - b.affine).max())
        raise ValueError(
            f"affine mismatch (max difference {diff:.4g} mm): {a.path} has "
            f"{np.round(a.affine, 4).tolist()}, {b.path} has {np.round(b.affine, 4).tolist()}"
        )


def as_labels(array: np.ndarray, path: str | Path | None) -> np.ndarray:
    """``array`` as int64 labels; a fractional or negative value is an error naming ``path`` and the value."""
    array = np.asarray(array)
    if array.dtype.kind == "f":
        frac = array != np.round(array)
        if frac.any():
            raise ValueError(f"{path}: non-integer label value {float(array[frac].flat[0])}")
    out = array.astype(np.int64)
    if out.size and out.min() < 0:
        raise ValueError(f"{path}: negative label value {int(out.min())}")
    return out


def to_source_frame(array_ras: np.ndarray, reference: Volume) -> np.ndarray:
    """Undo the RAS reorientation of ``reference``: ``array_ras`` in the file's voxel order.

    Args:
        array_ras: shape ``reference.shape`` (+ optional trailing axes).
        reference: the volume ``array_ras`` is aligned with.
    """
    return np.ascontiguousarray(ornt.apply_orientation(array_ras, _ras_to_source(reference.source_affine)))


def save_nifti_like(labels_ras: np.ndarray, reference: Volume, path: str | Path) -> Path:
    """Write a label map aligned with ``reference`` as NIfTI in ``reference``'s source frame.

    The voxels go back to the file's own axis order, the affine is the source affine, and the qform
    and sform (with their codes) are those of the reference header, so the result overlays the
    input in any viewer. Labels are written as ``uint8`` when they fit, else ``int16``/``int32``,
    without intensity scaling. The file appears only when complete (write, then rename).

    Args:
        labels_ras: integer labels, shape ``reference.shape`` (RAS order).
        reference: the volume the labels were predicted on.
        path: output ``.nii`` or ``.nii.gz`` (gzip chosen from the name).

    Returns:
        ``path``.

    Raises:
        ValueError: shape mismatch, non-integer labels, or a path that is not ``.nii``/``.nii.gz``.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise ValueError(f"{path}: output must end in .nii or .nii.gz")
    labels_ras = np.asarray(labels_ras)
    if tuple(labels_ras.shape) != reference.shape:
        raise ValueError(
            f"{path}: labels have shape {tuple(labels_ras.shape)}, reference {reference.path} has {reference.shape}"
        )
    if labels_ras.dtype.kind not in "iub":
        if not np.all(np.isfinite(labels_ras)) or not np.all(labels_ras == np.round(labels_ras)):
            raise ValueError(
                f"{path}: labels must be integers, got dtype {labels_ras.dtype} with fractional values"
            )
    lo, hi = (int(labels_ras.min()), int(labels_ras.max())) if labels_ras.size else (0, 0)
    dtype: type[np.integer]
    if lo >= 0 and hi <= 255:
        dtype = np.uint8
    elif np.iinfo(np.int16).min <= lo and hi <= np.iinfo(np.int16).max:
        dtype = np.int16
    else:
        dtype = np.int32
    data = to_source_frame(labels_ras.astype(dtype), reference)

    if reference.header is not None:
        header = copy.deepcopy(reference.header)
        header.set_data_shape(data.shape)
        qform, qcode = header.get_qform(coded=True)
        sform, scode = header.get_sform(coded=True)
        image_type = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        img = image_type(data, reference.source_affine, header=header)
        # nibabel sets both forms from the affine; put the originals (and their codes) back.
        img.set_qform(qform if qform is not None else reference.source_affine, int(qcode))
        img.set_sform(sform if sform is not None else reference.source_affine, int(scode))
    else:
        img = nib.Nifti1Image(data, reference.source_affine)
        img.set_qform(reference.source_affine, 1)
        img.set_sform(reference.source_affine, 1)
        img.header.set_xyzt_units("mm")
    img.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"] = 0
    img.header["cal_max"] = 0
    img.header["intent_code"] = 1002  # NIFTI_INTENT_LABEL
    payload = img.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    with atomic_output(path) as tmp:
        tmp.write_bytes(payload)
    return path
