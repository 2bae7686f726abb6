"""MONAI as the oracle for loading: LoadImage + Orientation("RAS") gives our arrays and affines."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from nibabel.testing import data_path
from pydicom.data import get_testdata_file

from vitp_geo.io.volume import load_nifti
from vitp_geo.medical.dicom import load_dicom_series

pytestmark = pytest.mark.slow  # importing MONAI takes ~10-25 s on a shared 2-core CPU
transforms = pytest.importorskip("monai.transforms", reason="MONAI (test extra) is the oracle")


def _monai_ras(path: str, reader: str) -> tuple[np.ndarray, np.ndarray]:
    img = transforms.LoadImage(image_only=True, reader=reader, ensure_channel_first=True)(path)
    out = transforms.Orientation(axcodes="RAS")(img)
    return out[0].numpy(), out.affine.numpy()


@pytest.mark.parametrize("name", ["anatomical.nii", "reoriented_anat_moved.nii"])
def test_nifti_matches_monai(name: str) -> None:
    path = os.path.join(data_path, name)
    array, affine = _monai_ras(path, "NibabelReader")
    vol = load_nifti(path)
    np.testing.assert_array_equal(vol.array, array)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-5)


def test_dicom_series_matches_monai() -> None:
    folder = Path(str(get_testdata_file("CT_small.dcm"))).parent / "dicomdirtests" / "98892001" / "CT5N"
    array, affine = _monai_ras(str(folder), "PydicomReader")
    vol = load_dicom_series(folder)
    np.testing.assert_array_equal(vol.array, array)  # HU, slice order, in-plane axes
    np.testing.assert_allclose(vol.affine, affine, atol=1e-5)
