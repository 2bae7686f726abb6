"""NIfTI volumes: RAS on load, the source frame on write, with nibabel's own test files."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from vitp_geo.io.volume import Volume, check_same_grid, load_nifti, save_nifti_like
from vitp_geo.medical.load import load_volume

ANAT = Path(data_path) / "anatomical.nii"  # LAS, big-endian int16
ANAT_RAS = Path(data_path) / "reoriented_anat_moved.nii"  # RAS, float32


def test_las_big_endian_file_is_reoriented_to_ras() -> None:
    raw = nib.load(str(ANAT))
    assert nib.aff2axcodes(raw.affine) == ("L", "A", "S")
    assert raw.get_data_dtype().byteorder == ">"
    vol = load_nifti(ANAT)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.source_axcodes == ("L", "A", "S")
    np.testing.assert_array_equal(vol.source_affine, raw.affine)
    assert vol.array.dtype == np.int16 and vol.array.dtype.isnative  # labels/ints stay integer
    # nibabel's own canonical reorientation is the oracle
    canon = nib.as_closest_canonical(raw)
    np.testing.assert_array_equal(vol.array, np.asanyarray(canon.dataobj))
    np.testing.assert_allclose(vol.affine, canon.affine)
    # LAS -> RAS flips the first axis only: voxel (i, j, k) of the file is (X-1-i, j, k) in RAS
    src = np.asanyarray(raw.dataobj)
    assert vol.array[0, 3, 4] == src[src.shape[0] - 1, 3, 4]
    # every voxel keeps its world position
    ijk = np.array([5, 7, 9, 1.0])
    world_src = raw.affine @ np.array([src.shape[0] - 1 - 5, 7, 9, 1.0])
    np.testing.assert_allclose(vol.affine @ ijk, world_src)
    assert vol.spacing == (2.0, 2.0, 2.0)


def test_ras_file_is_left_alone() -> None:
    raw = nib.load(str(ANAT_RAS))
    vol = load_volume(ANAT_RAS)
    assert vol.source_axcodes == ("R", "A", "S")
    np.testing.assert_allclose(vol.affine, raw.affine)
    np.testing.assert_allclose(vol.array, np.asanyarray(raw.dataobj))


@pytest.mark.parametrize("source", [ANAT, ANAT_RAS], ids=["LAS", "RAS"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_prediction_round_trip_lands_in_the_source_frame(tmp_path: Path, source: Path, suffix: str) -> None:
    vol = load_nifti(source)
    labels = np.zeros(vol.shape, dtype=np.int64)
    labels[vol.array > np.percentile(vol.array, 60)] = 1
    labels[: vol.shape[0] // 3] *= 2  # an asymmetric pattern: a flipped axis would show
    out = save_nifti_like(labels, vol, tmp_path / f"pred{suffix}")
    assert out.exists() and not list(tmp_path.glob(".*partial*"))
    if suffix == ".nii.gz":
        assert gzip.open(out).read(4)  # really gzip
    src = nib.load(str(source))
    back = nib.load(str(out))
    assert back.shape == src.shape
    np.testing.assert_allclose(back.affine, src.affine)
    assert int(back.header["qform_code"]) == int(src.header["qform_code"])
    assert int(back.header["sform_code"]) == int(src.header["sform_code"])
    np.testing.assert_allclose(back.header.get_qform(), src.header.get_qform(), atol=1e-5)
    np.testing.assert_allclose(back.header.get_sform(), src.header.get_sform(), atol=1e-5)
    assert back.get_data_dtype() == np.uint8
    # each stored voxel holds the label of the RAS voxel at the same world point (computed through
    # the affines, independently of the orientation utilities)
    stored = np.asanyarray(back.dataobj)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in src.shape], indexing="ij"), -1).reshape(-1, 3)
    world = src.affine @ np.c_[ijk, np.ones(len(ijk))].T
    ras = np.rint(np.linalg.inv(vol.affine) @ world).astype(int)[:3]
    np.testing.assert_array_equal(stored[tuple(ijk.T)], labels[tuple(ras)])
    assert len(np.unique(stored)) == 3
    # and reloading it through our loader gives the RAS labels back
    again = load_nifti(out)
    np.testing.assert_array_equal(again.array, labels)
    check_same_grid(again, vol)


def test_save_rejects_wrong_shape_and_leaves_nothing(tmp_path: Path) -> None:
    vol = load_nifti(ANAT)
    with pytest.raises(ValueError, match=r"\(2, 2, 2\)"):
        save_nifti_like(np.zeros((2, 2, 2), np.uint8), vol, tmp_path / "p.nii.gz")
    with pytest.raises(ValueError, match="integers"):
        save_nifti_like(np.full(vol.shape, 0.5), vol, tmp_path / "p.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_image_label_mismatch_names_both_files(tmp_path: Path) -> None:
    vol = load_nifti(ANAT)
    other = load_nifti(ANAT_RAS)
    with pytest.raises(ValueError, match="shape mismatch") as err:
        check_same_grid(vol, other)
    assert str(ANAT) in str(err.value) and str(ANAT_RAS) in str(err.value)
    shifted = Volume(
        vol.array,
        vol.affine + np.array([[0, 0, 0, 1.5]] * 3 + [[0, 0, 0, 0]]),
        vol.source_affine,
        vol.source_axcodes,
        vol.spacing,
        path=tmp_path / "shifted.nii",
    )
    with pytest.raises(ValueError, match=r"affine mismatch \(max difference 1.5 mm\).*shifted.nii"):
        check_same_grid(vol, shifted)


def test_not_nifti_not_dicom_and_empty_volume(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(ValueError, match=r"notes.txt: neither NIfTI .* nor DICOM"):
        load_volume(junk)
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match="fake.nii.gz: not a readable NIfTI"):
        load_volume(fake)
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 0, 3), np.int16), np.eye(4)), str(empty))
    with pytest.raises(ValueError, match=r"empty.nii.gz: empty volume, shape \(4, 0, 3\)"):
        load_volume(empty)
    with pytest.raises(FileNotFoundError, match="missing.nii"):
        load_volume(tmp_path / "missing.nii")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.nii.gz", "fake.nii.gz", "notes.txt"]


def test_four_d_volume_keeps_channels_last(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 100, size=(5, 6, 7, 4)).astype(np.float32)
    aff = np.diag([-1.0, -2.0, 3.0, 1.0])  # LPS
    nib.save(nib.Nifti1Image(data, aff), str(tmp_path / "mri.nii.gz"))
    vol = load_nifti(tmp_path / "mri.nii.gz", modality="MR")
    assert vol.array.shape == (5, 6, 7, 4) and vol.source_axcodes == ("L", "P", "S")
    np.testing.assert_array_equal(vol.array, data[::-1, ::-1, :, :])
    assert str(vol.modality) == "MR"
    assert os.path.basename(str(vol.path)) == "mri.nii.gz" and vol.name == "mri"


def test_image_and_labels_pair(tmp_path: Path) -> None:
    from vitp_geo.medical.load import load_image_and_labels

    raw = nib.load(str(ANAT))
    lab = (np.asanyarray(raw.dataobj) > 100).astype(np.float32)
    nib.save(nib.Nifti1Image(lab, raw.affine), str(tmp_path / "seg.nii.gz"))
    img, seg = load_image_and_labels(ANAT, tmp_path / "seg.nii.gz", modality="CT")
    assert seg.array.dtype == np.int64 and str(img.modality) == "CT"
    np.testing.assert_array_equal(seg.array, (img.array > 100).astype(np.int64))
    nib.save(nib.Nifti1Image(lab[:, :, :-1], raw.affine), str(tmp_path / "short.nii.gz"))
    with pytest.raises(ValueError, match=r"shape mismatch.*anatomical.nii.*\(33, 41, 25\).*short.nii.gz"):
        load_image_and_labels(ANAT, tmp_path / "short.nii.gz")
    moved = raw.affine.copy()
    moved[2, 3] += 4
    nib.save(nib.Nifti1Image(lab, moved), str(tmp_path / "moved.nii.gz"))
    with pytest.raises(ValueError, match=r"affine mismatch \(max difference 4 mm\).*moved.nii.gz"):
        load_image_and_labels(ANAT, tmp_path / "moved.nii.gz")
    nib.save(nib.Nifti1Image(lab + 0.5, raw.affine), str(tmp_path / "soft.nii.gz"))
    with pytest.raises(ValueError, match=r"soft.nii.gz: non-integer label value (0|1).5"):
        load_image_and_labels(ANAT, tmp_path / "soft.nii.gz")


def test_medical_package_has_no_geospatial_imports() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import vitp_geo.io.volume, vitp_geo.medical.dicom, vitp_geo.medical.xray\n"
        "import vitp_geo.medical.intensity, vitp_geo.medical.slicing, vitp_geo.evaluation.medical_dice\n"
        "bad = sorted(m for m in ('rasterio', 'geopandas', 'torchgeo', 'pyogrio', 'shapely', 'pyproj')"
        " if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_oblique_permuted_affine_round_trip(tmp_path: Path) -> None:
    """Axes stored as (S, R, A) and rotated 20 degrees: RAS on load, the exact file back on write."""
    t = np.deg2rad(20)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    perm = np.array([[0, -1.5, 0], [0, 0, 2.0], [3.0, 0, 0]])  # file axis 0 -> S, 1 -> L, 2 -> A
    aff = np.eye(4)
    aff[:3, :3] = rot @ perm
    aff[:3, 3] = [10, -20, 30]
    rng = np.random.default_rng(1)
    data = rng.integers(0, 5, size=(4, 5, 6)).astype(np.int16)
    img = nib.Nifti1Image(data, aff)
    img.set_qform(aff, 1)
    img.set_sform(aff, 4)
    nib.save(img, str(tmp_path / "obl.nii.gz"))
    vol = load_nifti(tmp_path / "obl.nii.gz")
    assert vol.source_axcodes == nib.aff2axcodes(aff)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S") and vol.shape == (5, 6, 4)
    assert vol.source_shape == (4, 5, 6)
    assert vol.spacing == pytest.approx((1.5, 2.0, 3.0))
    save_nifti_like(vol.array, vol, tmp_path / "back.nii.gz")
    back = nib.load(str(tmp_path / "back.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), data)
    np.testing.assert_allclose(back.affine, aff, atol=1e-6)
    assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == (1, 4)


def test_singleton_trailing_axes_are_squeezed(tmp_path: Path) -> None:
    data = np.arange(60, dtype=np.uint8).reshape(3, 4, 5, 1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "seg.nii.gz"))
    assert load_nifti(tmp_path / "seg.nii.gz").array.shape == (3, 4, 5)
    vec = np.zeros((3, 4, 5, 1, 2), np.float32)
    nib.save(nib.Nifti1Image(vec, np.eye(4)), str(tmp_path / "vec.nii.gz"))
    assert load_nifti(tmp_path / "vec.nii.gz").array.shape == (3, 4, 5, 2)
    scaled = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), np.eye(4))
    scaled.header.set_slope_inter(1.0, -1024.0)
    nib.save(scaled, str(tmp_path / "ct.nii.gz"))
    ct = load_nifti(tmp_path / "ct.nii.gz")
    assert ct.array.dtype == np.float32 and ct.array.min() == -1024.0


@pytest.mark.parametrize(
    ("row", "what"), [([0.0, 0.0, 0.0, 0.0], "singular"), ([0.0, 0.0, np.nan, 0.0], "not finite")]
)
def test_an_unusable_affine_is_named_with_the_file(tmp_path: Path, row: list[float], what: str) -> None:
    """Issue 20: a singular or NaN affine gave nibabel's "Unable to find out axis 0.0 in
    start_ornt" / numpy's "SVD did not converge", naming neither the file nor the affine."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4, 4, 4))
    hdr.set_data_dtype(np.float32)
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = [1, 0, 0, 0], [0, 1, 0, 0], row
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), None, hdr), str(tmp_path / "bad.nii.gz"))
    with pytest.raises(
        ValueError, match=rf"bad\.nii\.gz: the header.s voxel-to-world affine is {what}.*: \[\[1\.0"
    ):
        load_volume(tmp_path / "bad.nii.gz")
