"""The medical phantoms: seeded, CT-like HU, written non-RAS in the MSD / nnU-Net and CovidQU-Ex layouts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from vitp_geo.medical import phantoms as P


def test_same_seed_same_phantom_and_another_seed_differs() -> None:
    a, b, c = (P.generate_ct_phantom(s, shape=(48, 48, 12)) for s in (3, 3, 4))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)


def test_ct_tissues_have_their_hounsfield_values() -> None:
    ct = P.generate_ct_phantom(0, noise_hu=0.0, max_lesions=3)
    for name, tissue in (
        ("liver", "liver"),
        ("spleen", "spleen"),
        ("right kidney", "kidney"),
        ("left kidney", "kidney"),
    ):
        values = ct.image[ct.label == P.CT_CLASSES.index(name)]
        mean, jitter = P.HU[tissue]
        assert values.size > 100, name
        assert np.all(np.abs(values - mean) <= jitter), name  # one value per organ, within its range
    assert ct.image.min() == -1000.0  # air outside the body
    assert 600 <= ct.image.max() <= 780  # the vertebral body (bone)
    # the kidneys are two separate organs on either side of the spine (RAS: +x is patient right)
    xs_right = np.argwhere(ct.label == P.CT_CLASSES.index("right kidney"))[:, 0]
    xs_left = np.argwhere(ct.label == P.CT_CLASSES.index("left kidney"))[:, 0]
    assert xs_right.min() > ct.image.shape[0] / 2 > xs_left.max()
    # some slices hold no organ at all (slicing must keep a share of empty slices)
    per_slice = (ct.label > 0).any(axis=(0, 1))
    assert 0 < (~per_slice).sum() < per_slice.size / 2


def test_ct_dataset_is_written_non_ras_and_reorients_back(tmp_path: Path) -> None:
    root = P.write_ct_dataset(tmp_path / "ct", n_cases=2, seed=1, shape=(40, 36, 10), orientation="LPS")
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {n: i for i, n in enumerate(P.CT_CLASSES)} and meta["numTraining"] == 2
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == [
        "case_000_0000.nii.gz",
        "case_001_0000.nii.gz",
    ]
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == ["case_000.nii.gz", "case_001.nii.gz"]
    expected = P.generate_ct_phantom(1001, shape=(40, 36, 10))  # case 1 of seed 1
    img = nib.load(root / "imagesTr" / "case_001_0000.nii.gz")
    lab = nib.load(root / "labelsTr" / "case_001.nii.gz")
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")  # stored non-RAS
    assert img.header.get_data_dtype() == np.int16 and img.shape == (40, 36, 10)
    assert np.allclose(img.affine, lab.affine)
    assert int(img.header["qform_code"]) == int(img.header["sform_code"]) == 1
    assert np.allclose(img.header.get_qform(), img.affine)
    ras_img, ras_lab = nib.as_closest_canonical(img), nib.as_closest_canonical(lab)
    assert np.array_equal(np.asarray(ras_lab.dataobj), expected.label)
    assert np.array_equal(np.asarray(ras_img.dataobj), np.round(expected.image).astype(np.int16))
    assert np.allclose(ras_img.affine, expected.affine)
    # the same voxel in both arrays maps to the same millimetres
    ijk = np.array([3, 5, 7, 1.0])
    lps_ijk = np.array([40 - 1 - 3, 36 - 1 - 5, 7, 1.0])
    assert np.allclose(expected.affine @ ijk, img.affine @ lps_ijk)


def test_permuted_orientation_and_amos_label_table(tmp_path: Path) -> None:
    table = {n: i for i, n in enumerate(P.AMOS_CLASSES)}
    root = P.write_ct_dataset(
        tmp_path / "amos", n_cases=1, shape=(32, 30, 8), orientation="PIL", label_table=table, max_lesions=0
    )
    lab = nib.load(root / "labelsTr" / "case_000.nii.gz")
    assert nib.aff2axcodes(lab.affine) == ("P", "I", "L") and lab.shape == (30, 8, 32)
    ras = np.asarray(nib.as_closest_canonical(lab).dataobj)
    phantom = P.generate_ct_phantom(0, shape=(32, 30, 8), max_lesions=0)
    for name in ("spleen", "right kidney", "left kidney", "liver"):  # remapped to the AMOS ids by name
        assert np.array_equal(ras == table[name], phantom.label == P.CT_CLASSES.index(name)), name
    assert json.loads((root / "dataset.json").read_text())["labels"]["prostate/uterus"] == 15


def test_brats_dataset_has_four_sequences_and_labels_0_1_2_4(tmp_path: Path) -> None:
    root = P.write_brats_dataset(tmp_path / "brats", n_cases=1, shape=(32, 32, 8))
    names = sorted(p.name for p in (root / "imagesTr").iterdir())
    assert names == [f"case_000_{c:04d}.nii.gz" for c in range(4)]
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "FLAIR", "1": "T1", "2": "T1ce", "3": "T2"}
    lab = np.asarray(nib.load(root / "labelsTr" / "case_000.nii.gz").dataobj)
    assert set(np.unique(lab).tolist()) == {0, 1, 2, 4}
    t1 = np.asarray(nib.load(root / "imagesTr" / "case_000_0001.nii.gz").dataobj)
    t1ce = np.asarray(nib.load(root / "imagesTr" / "case_000_0002.nii.gz").dataobj)
    # contrast enhancement: the enhancing rim is brighter on T1ce than on T1 (relative to brain)
    et = lab == 4
    assert t1ce[et].mean() / np.median(t1ce[t1ce > 0]) > 1.4 * t1[et].mean() / np.median(t1[t1 > 0])


def test_xray_dataset_in_the_covidqu_ex_layout(tmp_path: Path) -> None:
    root = P.write_xray_dataset(tmp_path / "cxr", n_images=4, size=64, splits=("Train", "Val"))
    for split in ("Train", "Val"):
        for category in ("COVID-19", "Normal"):
            folder = root / split / category
            stems = [
                sorted(p.name for p in (folder / sub).iterdir())
                for sub in ("images", "lung masks", "infection masks")
            ]
            assert stems[0] == stems[1] == stems[2] and len(stems[0]) == 2
            for name in stems[0]:
                image = np.asarray(Image.open(folder / "images" / name))
                lung = np.asarray(Image.open(folder / "lung masks" / name))
                infection = np.asarray(Image.open(folder / "infection masks" / name))
                assert image.shape == lung.shape == (64, 64) and image.dtype == np.uint8
                assert set(np.unique(lung).tolist()) <= {0, 255} and lung.mean() > 10
                assert not np.any((infection > 0) & (lung == 0))  # infection lies inside the lungs
                assert (infection.max() > 0) == (category == "COVID-19")
                # lungs are darker than the surrounding body on a radiograph
                assert image[lung > 0].mean() < image[(lung == 0) & (image > 60)].mean()


def test_writers_refuse_a_non_empty_folder_and_leave_nothing_on_failure(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        P.write_ct_dataset(tmp_path / "full", n_cases=1, shape=(16, 16, 4))
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    calls = {"n": 0}
    real = P._save_nifti

    def failing(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        real(path, data, affine)

    monkeypatch.setattr(P, "_save_nifti", failing)
    with pytest.raises(OSError, match="disk full"):
        P.write_ct_dataset(tmp_path / "new", n_cases=2, shape=(16, 16, 4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no half-written dataset


def test_importing_the_phantoms_pulls_in_no_geospatial_package() -> None:
    code = (
        "import sys, vitp_geo.medical.phantoms\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'rasterio', 'geopandas', 'torchgeo', 'shapely', 'pyproj'})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    # and the scene generator is still reachable through the package
    code = "from vitp_geo.synthetic import CLASS_NAMES, generate_scene; print(CLASS_NAMES[1], callable(generate_scene))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "building True"
