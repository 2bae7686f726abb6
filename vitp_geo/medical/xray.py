"""Radiographs (chest X-ray PNG or DICOM DX/CR) as 2D images (their PNG label masks: :mod:`vitp_geo.io.png_mask`).

A radiograph is a projection: it has a pixel spacing (DICOM ``PixelSpacing`` /
``ImagerPixelSpacing``) but no voxel-to-patient affine, so it is an :class:`XrayImage`, not a
:class:`~vitp_geo.io.volume.Volume`. Arrays are ``(H, W)`` in display order (row 0 at the top), float32.
DICOM ``MONOCHROME1`` images (bright = low attenuation) are inverted so that bone is bright, as
in ``MONOCHROME2`` and PNG radiographs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitp_geo.io.png_mask import is_png
from vitp_geo.io.volume import Modality, is_dicom_file

__all__ = ["XrayImage", "load_xray"]

log = logging.getLogger(__name__)


@dataclass
class XrayImage:
    """One radiograph.

    Attributes:
        array: ``(H, W)`` float32 values (stored values after DICOM rescale; PNG grey levels).
        spacing: ``(row, column)`` pixel spacing in mm, None when the file does not say (PNG).
        modality: :attr:`Modality.XRAY` for radiographs (or what the DICOM ``Modality`` tag says).
        path: source file.
        bits: bits per stored sample (8 or 16 for PNG; ``BitsStored`` for DICOM).
    """

    array: np.ndarray
    spacing: tuple[float, float] | None
    modality: Modality
    path: Path
    bits: int

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.array.shape[0]), int(self.array.shape[1]))


def load_xray(path: str | Path) -> XrayImage:
    """Read a PNG radiograph (8/16-bit grey; RGB converted to grey) or a single-frame DICOM image.

    Raises:
        FileNotFoundError: no such file.
        ValueError: neither PNG nor DICOM, a multi-frame DICOM, or an empty image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such X-ray image: {path}")
    if is_png(path):
        from PIL import Image

        with Image.open(path) as im:
            mode = im.mode
            if mode in ("RGB", "RGBA", "P", "LA"):
                log.warning("%s: %s PNG converted to grey (radiographs are single-channel)", path, mode)
                arr = np.asarray(im.convert("L"))
            else:
                arr = np.asarray(im)
        bits = 16 if arr.dtype == np.uint16 or mode.startswith("I") else 8
        xr = XrayImage(arr.astype(np.float32), None, Modality.XRAY, path, bits)
    elif is_dicom_file(path):
        from vitp_geo.medical.dicom import _pixel_spacing, read_dicom, rescale

        ds = read_dicom(path)
        values = rescale(ds, path)
        if values.ndim != 2:
            raise ValueError(f"{path}: X-ray DICOM must hold one 2D frame, got pixel shape {values.shape}")
        if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
            values = values.max() + values.min() - values
        modality = Modality.from_dicom(ds.get("Modality"))
        spacing = _pixel_spacing(ds, path) if ("PixelSpacing" in ds or "ImagerPixelSpacing" in ds) else None
        xr = XrayImage(values.astype(np.float32), spacing, modality, path, int(ds.get("BitsStored", 16)))
    else:
        raise ValueError(f"{path}: neither PNG nor DICOM (no PNG signature, no 'DICM' marker at byte 128)")
    if 0 in xr.array.shape:
        raise ValueError(f"{path}: empty image, shape {xr.array.shape}")
    return xr
