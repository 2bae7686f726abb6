"""Intensity presets, the 3-channel rule, slices <-> volumes, the manifest, radiographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from vitp_geo.io.png_mask import read_png_mask, write_png_mask
from vitp_geo.io.volume import load_nifti
from vitp_geo.medical.intensity import (
    ChannelRule,
    CTNormStats,
    IntensityPreset,
    ct_foreground_stats,
    minmax,
    normalise,
    select_sequences,
    zscore_nonzero,
)
from vitp_geo.medical.slicing import (
    SliceManifest,
    slice_volume,
    slices_to_volume,
    take_slice,
    three_channel_slice,
)
from vitp_geo.medical.xray import load_xray

ANAT = Path(data_path) / "anatomical.nii"


def test_nnunet_ct_stats_and_normalisation() -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(50, 20, size=(20, 20, 20)).astype(np.float32)
    img[0, 0, 0] = 5000  # an outlier inside the foreground
    lab = np.zeros(img.shape, np.uint8)
    lab[:10] = 1
    stats = ct_foreground_stats([(img, lab)], max_voxels_per_case=10**6)
    fg = img[lab > 0].astype(np.float64)
    assert stats.lower == pytest.approx(np.percentile(fg, 0.5))
    assert stats.upper == pytest.approx(np.percentile(fg, 99.5))
    assert stats.mean == pytest.approx(fg.mean()) and stats.std == pytest.approx(fg.std())
    out = normalise(img, IntensityPreset.CT_NNUNET, stats)
    assert out.max() == pytest.approx((stats.upper - stats.mean) / stats.std, rel=1e-5)  # outlier clipped
    with pytest.raises(ValueError, match="CTNormStats"):
        normalise(img, "ct-nnunet")
    with pytest.raises(ValueError, match="no foreground"):
        ct_foreground_stats([(img, np.zeros_like(lab))])
    with pytest.raises(ValueError, match="std must be > 0"):
        CTNormStats(0, 1, 0, 0)


def test_mri_zscore_over_nonzero_and_xray_minmax() -> None:
    a = np.zeros((4, 4, 4), np.float32)
    a[1:3, 1:3, 1:3] = np.arange(8, dtype=np.float32).reshape(2, 2, 2) + 1
    z = zscore_nonzero(a)
    assert (z[a == 0] == 0).all()
    vals = a[a != 0]
    np.testing.assert_allclose(z[a != 0], (vals - vals.mean()) / vals.std(), rtol=1e-6)
    with pytest.raises(ValueError, match="every voxel is zero"):
        zscore_nonzero(np.zeros((2, 2)))
    x = np.array([[10.0, 20.0], [30.0, 50.0]])
    np.testing.assert_allclose(minmax(x), [[0, 0.25], [0.5, 1]])
    assert set(IntensityPreset) >= {IntensityPreset("ct-abdomen"), IntensityPreset("xray-minmax")}


def test_select_sequences_brats_default() -> None:
    # MSD Task01 BrainTumour spelling
    assert select_sequences(["FLAIR", "T1w", "t1gd", "T2w"]) == (0, 2, 3)
    assert select_sequences(["t1", "t1ce", "t2", "flair"]) == (3, 1, 2)
    with pytest.raises(ValueError, match="'T1ce' not among"):
        select_sequences(["T1", "T2", "FLAIR"])


def test_three_channel_rules() -> None:
    vol = load_nifti(ANAT)
    hu = vol.array.astype(np.float32) - 500
    k = 10
    ct = three_channel_slice(hu, 2, k, ChannelRule.CT_WINDOWS)
    assert ct.shape == (3, vol.shape[1], vol.shape[0]) and ct.dtype == np.float32
    np.testing.assert_allclose(ct[1], normalise(take_slice(hu, 2, k), "ct-lung"))
    nb = three_channel_slice(hu, 2, k, "neighbours")
    for c, kk in enumerate((k - 1, k, k + 1)):
        np.testing.assert_array_equal(nb[c], take_slice(hu, 2, kk))
    edge = three_channel_slice(hu, 2, 0, "neighbours")  # edge replication: 0, 0, 1
    np.testing.assert_array_equal(edge[0], edge[1])
    np.testing.assert_array_equal(edge[2], take_slice(hu, 2, 1))
    last = three_channel_slice(hu, 2, vol.shape[2] - 1, "neighbours")
    np.testing.assert_array_equal(last[1], last[2])
    mri = np.stack([hu + i for i in range(4)], -1)
    seq = three_channel_slice(mri, 2, k, ChannelRule.MRI_SEQUENCES, channels=(3, 0, 2))
    np.testing.assert_array_equal(seq[0], take_slice(hu, 2, k) + 3)
    np.testing.assert_array_equal(seq[2], take_slice(hu, 2, k) + 2)


def test_display_orientation_is_radiological() -> None:
    a = np.zeros((5, 6, 7))
    a[4, 0, 3] = 1  # most Right, most Posterior
    img = take_slice(a, 2, 3)
    assert img.shape == (6, 5)
    assert img[5, 0] == 1  # bottom (posterior) row, left column (patient's right)
    a = np.zeros((5, 6, 7))
    a[0, 2, 6] = 1  # most Left, most Superior
    img = take_slice(a, 1, 2)  # coronal
    assert img.shape == (7, 5) and img[0, 4] == 1  # top row, right column (patient's left)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_volume_slices_identity(axis: int) -> None:
    vol = load_nifti(ANAT)
    labels = np.zeros(vol.shape, np.uint8)
    labels[10:20, 12:30, 5:15] = 1
    labels[12:14, 20:22, 8:10] = 4
    images, lab_slices, manifest = slice_volume(vol, axis=axis, labels=labels, empty_fraction=1.0)
    assert lab_slices is not None and len(images) == vol.shape[axis] == len(manifest)
    np.testing.assert_array_equal(slices_to_volume(images, manifest), vol.array)
    np.testing.assert_array_equal(slices_to_volume(lab_slices, manifest), labels)
    again, again_lab, manifest2 = slice_volume(
        slices_to_volume(images, manifest), axis=axis, affine=vol.affine, case=vol.name, labels=labels
    )
    assert all(np.array_equal(x, y) for x, y in zip(images, again, strict=True))
    assert manifest2.records == manifest.records
    # the slice affine places each pixel where the volume affine places its voxel
    rec = manifest.records[len(manifest) // 2]
    s_aff = np.asarray(rec.slice_affine)
    probe = np.zeros(vol.shape)
    r, c = rec.height - 2, 1
    marker = np.zeros((rec.height, rec.width))
    marker[r, c] = 1
    from vitp_geo.medical.slicing import put_slice

    put_slice(probe, axis, rec.index, marker)
    ijk = np.argwhere(probe == 1)[0]
    np.testing.assert_allclose(s_aff @ [c, r, 0, 1], vol.affine @ [*ijk, 1])


def test_empty_slice_share_is_seeded_and_subset_round_trips(tmp_path: Path) -> None:
    vol = load_nifti(ANAT)
    labels = np.zeros(vol.shape, np.uint8)
    labels[:, :, 10:14] = 2  # 4 labelled axial slices, 21 empty
    _, lab1, m1 = slice_volume(vol, labels=labels, empty_fraction=0.25, seed=3)
    _, _, m2 = slice_volume(vol, labels=labels, empty_fraction=0.25, seed=3)
    _, _, m3 = slice_volume(vol, labels=labels, empty_fraction=0.25, seed=4)
    assert [r.index for r in m1.records] == [r.index for r in m2.records]
    assert [r.index for r in m1.records] != [r.index for r in m3.records]
    assert sum(r.empty is False for r in m1.records) == 4
    assert sum(r.empty is True for r in m1.records) == round(0.25 * 21)
    _, _, m0 = slice_volume(vol, labels=labels, empty_fraction=0.0)
    assert [r.index for r in m0.records] == [10, 11, 12, 13]
    # a subset goes back into the volume, missing slices filled with background
    assert lab1 is not None
    back = slices_to_volume(lab1, m1)
    np.testing.assert_array_equal(back, labels)
    # manifest survives JSON and CSV
    for name in ("m.json", "m.csv"):
        m1.save_json(tmp_path / name) if name.endswith("json") else m1.save_csv(tmp_path / name)
        assert SliceManifest.load(tmp_path / name).records == m1.records
    _, none_lab, m_all = slice_volume(vol, axis=0)  # no labels: every slice, "empty" unknown
    assert none_lab is None and len(m_all) == vol.shape[0] and all(r.empty is None for r in m_all.records)
    m_all.save_csv(tmp_path / "all.csv")
    assert SliceManifest.load(tmp_path / "all.csv").records == m_all.records
    with pytest.raises(ValueError, match="empty_fraction"):
        slice_volume(vol, labels=labels, empty_fraction=1.5)
    with pytest.raises(ValueError, match="labels have shape"):
        slice_volume(vol, labels=labels[:-1])


def _radiograph(path: Path, photometric: str) -> np.ndarray:
    pixels = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 50).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = "DX"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [0.143, 0.139]
    ds.PixelData = pixels.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return pixels


def test_xray_png_and_dicom(tmp_path: Path) -> None:
    pixels = _radiograph(tmp_path / "cxr2.dcm", "MONOCHROME2")
    xr = load_xray(tmp_path / "cxr2.dcm")
    assert xr.spacing == (0.143, 0.139) and str(xr.modality) == "DX" and xr.shape == (6, 8)
    np.testing.assert_array_equal(xr.array, pixels)
    _radiograph(tmp_path / "cxr1.dcm", "MONOCHROME1")
    inv = load_xray(tmp_path / "cxr1.dcm")
    np.testing.assert_array_equal(inv.array, pixels.max() + pixels.min() - pixels.astype(np.float32))
    mask = np.zeros((6, 8), np.int64)
    mask[1:4, 2:5] = 2
    write_png_mask(mask, tmp_path / "cxr.png")
    np.testing.assert_array_equal(read_png_mask(tmp_path / "cxr.png"), mask)
    png = load_xray(tmp_path / "cxr.png")
    assert png.spacing is None and png.bits == 8
    np.testing.assert_array_equal(png.array, mask)
    (tmp_path / "bad.png").write_text("not a png")
    with pytest.raises(ValueError, match="bad.png: neither PNG nor DICOM"):
        load_xray(tmp_path / "bad.png")
    assert pydicom.dcmread(tmp_path / "cxr1.dcm").PhotometricInterpretation == "MONOCHROME1"
