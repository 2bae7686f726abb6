"""DICOM through pydicom's own test files: HU, windowing, slice order, the LPS->RAS affine, gaps."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from vitp_geo.io.volume import Modality, save_nifti_like
from vitp_geo.medical.dicom import load_dicom_series
from vitp_geo.medical.intensity import IntensityPreset, apply_window, normalise
from vitp_geo.medical.load import load_volume

CT_SMALL = Path(str(get_testdata_file("CT_small.dcm")))
CT5N = CT_SMALL.parent / "dicomdirtests" / "98892001" / "CT5N"
CT2_GAPPED = CT_SMALL.parent / "dicomdirtests" / "77654033" / "CT2"


def test_ct_small_hounsfield_units_and_windows() -> None:
    ds = pydicom.dcmread(CT_SMALL)
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
    raw = ds.pixel_array
    vol = load_volume(CT_SMALL)
    assert vol.modality is Modality.CT and vol.shape == (128, 128, 1)
    # HU = stored * slope + intercept; stored range 128..2191 in this file
    assert (float(vol.array.min()), float(vol.array.max())) == (raw.min() - 1024.0, raw.max() - 1024.0)
    assert (vol.array.min(), vol.array.max()) == (-896.0, 1167.0)
    # abdomen W400/L40 spans [-160, 240] HU: known values land on known outputs
    hu = np.array([-1000.0, -160.0, 40.0, 140.0, 240.0, 1167.0])
    np.testing.assert_allclose(normalise(hu, IntensityPreset.CT_ABDOMEN), [0, 0, 0.5, 0.75, 1, 1])
    np.testing.assert_allclose(
        normalise(hu, IntensityPreset.CT_LUNG), np.clip((hu + 1350) / 1500, 0, 1), rtol=1e-6
    )
    np.testing.assert_allclose(normalise(np.array([0.0, 40.0, 80.0]), IntensityPreset.CT_BRAIN), [0, 0.5, 1])
    # on the file itself: a voxel's window value is its HU placed in the window
    win = apply_window(vol.array, 40, 400)
    stored = int(raw[64, 64])
    expected = np.clip((stored - 1024 - (-160)) / 400, 0, 1)
    ras_voxel = np.rint(np.linalg.inv(vol.affine) @ _world_of_pixel(ds, 64, 64)).astype(int)[:3]
    assert win[tuple(ras_voxel)] == pytest.approx(expected)
    assert ((win == 0) | (win == 1)).mean() < 1  # some tissue falls inside the window
    assert win[vol.array < -160].max() == 0 and win[vol.array > 240].min() == 1


def _world_of_pixel(ds: pydicom.Dataset, row: int, col: int) -> np.ndarray:
    """RAS world point of pixel (row, col), straight from the DICOM tags (LPS, then x, y negated)."""
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    lps = ipp + col * dc * iop[:3] + row * dr * iop[3:]
    return np.array([-lps[0], -lps[1], lps[2], 1.0])


def test_ct5n_series_sorted_by_position_with_the_right_affine() -> None:
    files = sorted(CT5N.iterdir())
    datasets = [pydicom.dcmread(f) for f in files]
    # InstanceNumber runs opposite to position here: sorting by it would flip the volume
    by_instance = sorted(datasets, key=lambda d: int(d.InstanceNumber))
    z_by_instance = [float(d.ImagePositionPatient[2]) for d in by_instance]
    assert z_by_instance == sorted(z_by_instance, reverse=True)

    vol = load_dicom_series(CT5N)
    assert vol.shape == (16, 16, 5) and vol.modality is Modality.CT
    assert vol.spacing[2] == pytest.approx(2.5)
    assert vol.spacing[:2] == pytest.approx((0.488281, 0.488281))
    assert vol.source_axcodes == ("L", "P", "S")
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")

    # expected affine from the tags: slice normal = row x col cosines; slices ascend along it
    iop = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    ordered = sorted(
        datasets, key=lambda d: float(np.dot(normal, [float(v) for v in d.ImagePositionPatient]))
    )
    ipp0 = np.array([float(v) for v in ordered[0].ImagePositionPatient])
    ipp1 = np.array([float(v) for v in ordered[1].ImagePositionPatient])
    dr, dc = (float(v) for v in ordered[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = iop[:3] * dc, iop[3:] * dr, ipp1 - ipp0, ipp0
    expected_source = np.diag([-1.0, -1, 1, 1]) @ lps
    np.testing.assert_allclose(vol.source_affine, expected_source, atol=1e-6)
    assert np.linalg.norm(ipp1 - ipp0) == pytest.approx(2.5)

    # every pixel of every slice sits where its tags say, with HU = stored * slope + intercept
    inv = np.linalg.inv(vol.affine)
    for d in datasets:
        hu = d.pixel_array.astype(np.float64) * float(d.RescaleSlope) + float(d.RescaleIntercept)
        for row, col in [(0, 0), (3, 11), (15, 15)]:
            ijk = np.rint(inv @ _world_of_pixel(d, row, col)).astype(int)[:3]
            assert vol.array[tuple(ijk)] == hu[row, col]


def test_gapped_series_names_the_gap(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        load_dicom_series(CT2_GAPPED)
    msg = str(err.value)
    assert "non-uniform slice spacing" in msg and str(CT2_GAPPED) in msg
    # the two slices either side of the gap, their positions and the distance
    assert "17106" in msg and "17136" in msg
    assert "-99.4800" in msg and "103.0200" in msg and "202.5000 mm apart" in msg and "1.2500 mm" in msg


def test_two_series_in_one_folder_is_an_error_naming_both(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in CT5N.iterdir():
        shutil.copy(f, mixed / f"a_{f.name}")
    for f in CT2_GAPPED.iterdir():
        shutil.copy(f, mixed / f"b_{f.name}")
    uids = {
        str(pydicom.dcmread(next(CT5N.iterdir())).SeriesInstanceUID),
        str(pydicom.dcmread(next(CT2_GAPPED.iterdir())).SeriesInstanceUID),
    }
    with pytest.raises(ValueError, match="holds 2 DICOM series") as err:
        load_volume(mixed)
    assert all(uid in str(err.value) for uid in uids)


def test_empty_folder_and_non_dicom_files(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("not dicom")
    with pytest.raises(ValueError, match="no DICOM image slices"):
        load_volume(tmp_path)


def test_dicom_prediction_written_in_source_order(tmp_path: Path) -> None:
    vol = load_dicom_series(CT5N)
    labels = (vol.array > vol.array.mean()).astype(np.uint8)
    labels[:, :, 0] = 3  # the inferior-most slice
    out = save_nifti_like(labels, vol, tmp_path / "pred.nii.gz")
    img = nib.load(str(out))
    np.testing.assert_allclose(img.affine, vol.source_affine)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_array_equal(nib.as_closest_canonical(img).get_fdata(), labels)


@pytest.mark.parametrize(
    ("tag", "value", "what"),
    [
        ("ImageOrientationPatient", [1, 0, 0, 1, 0, 0], "singular"),  # rows and columns parallel
        ("PixelSpacing", ["nan", "0.5"], "not finite"),
        ("PixelSpacing", [0, 0.5], "singular"),
    ],
)
def test_a_singular_or_non_finite_dicom_geometry_names_the_file_and_the_affine(
    tmp_path: Path, tag: str, value: list, what: str
) -> None:
    """Issue 20: nibabel's 'Unable to find out axis 1.0 in start_ornt' / 'SVD did not converge'."""
    ds = pydicom.dcmread(CT_SMALL)
    setattr(ds, tag, value)
    path = tmp_path / "bad.dcm"
    ds.save_as(path)
    with pytest.raises(
        ValueError, match=rf"bad\.dcm: the DICOM geometry's voxel-to-world affine is {what}"
    ) as err:
        load_volume(path)
    assert "ImageOrientationPatient, PixelSpacing" in str(err.value)
    series = tmp_path / "series"
    series.mkdir()
    for i, z in enumerate((0.0, 5.0)):  # a two-slice series with the same bad tag
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.SOPInstanceUID = f"1.2.3.{i}"
        ds.save_as(series / f"{i}.dcm")
    with pytest.raises(ValueError, match=rf"0\.dcm: the DICOM geometry's voxel-to-world affine is {what}"):
        load_volume(series)  # the slice that holds it is named
