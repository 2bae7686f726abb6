"""``vitp-geo evaluate segmentation`` on NIfTI and PNG folders, dataset.json v1/v2, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vitp_geo.cli.main import main
from vitp_geo.io.png_mask import write_png_mask
from vitp_geo.io.volume import load_nifti, save_nifti_like

LAS = np.array([[-2.0, 0, 0, 32], [0, 2, 0, -40], [0, 0, 2, -16], [0, 0, 0, 1]])  # anatomical.nii's affine


def _save(labels: np.ndarray, path: Path, affine: np.ndarray = LAS) -> Path:
    img = nib.Nifti1Image(labels.astype(np.uint8), affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 2)
    nib.save(img, str(path))
    return path


def _dice(p: np.ndarray, g: np.ndarray, labels: tuple[int, ...]) -> float:
    pm, gm = np.isin(p, labels), np.isin(g, labels)
    return 2 * float((pm & gm).sum()) / float(pm.sum() + gm.sum())


@pytest.fixture
def msd(tmp_path: Path) -> dict[str, object]:
    """Two cases: gt in LAS; one prediction written back by save_nifti_like, one stored in RAS order."""
    rng = np.random.default_rng(0)
    gt_dir, pred_dir = tmp_path / "labelsTr", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gts, preds = {}, {}
    for n, case in enumerate(["amos_0001", "amos_0002"]):
        g = np.zeros((12, 10, 8), np.uint8)
        g[2:8, 2:7, 1:6] = 1
        g[8:11, 5:9, 3:7] = 2
        p = g.copy()
        flip = rng.random(g.shape) < 0.1
        p[flip] = rng.integers(0, 3, size=int(flip.sum()))
        _save(g, gt_dir / f"{case}.nii.gz")
        gts[case], preds[case] = g, p
        if n == 0:
            ref = load_nifti(gt_dir / f"{case}.nii.gz")
            p_ras = nib.as_closest_canonical(nib.Nifti1Image(p, LAS)).get_fdata().astype(np.uint8)
            save_nifti_like(p_ras, ref, pred_dir / f"{case}.nii.gz")
        else:  # stored in RAS voxel order: the grid is the same once both are in RAS
            nib.save(nib.as_closest_canonical(nib.Nifti1Image(p, LAS)), str(pred_dir / f"{case}.nii.gz"))
    (tmp_path / "dataset.json").write_text(
        json.dumps({"name": "AMOS-mini", "labels": {"0": "background", "1": "spleen", "2": "liver"}})
    )
    return {
        "gt": gt_dir,
        "pred": pred_dir,
        "dj": tmp_path / "dataset.json",
        "gts": gts,
        "preds": preds,
        "root": tmp_path,
    }


def _run(argv: list[str]) -> int:
    return main(["evaluate", "segmentation", *[str(a) for a in argv], "--no-progress"])


def test_nifti_folders_with_v1_dataset_json(msd: dict, capsys: pytest.CaptureFixture[str]) -> None:
    out = msd["root"] / "eval"
    assert _run(["--pred", msd["pred"], "--gt", msd["gt"], "--dataset-json", msd["dj"], "--out", out]) == 0
    table = capsys.readouterr().out
    assert "spleen" in table and "liver" in table and "pooled" in table
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert [(r["case"], r["class"]) for r in rows] == [
        ("amos_0001", "spleen"),
        ("amos_0001", "liver"),
        ("amos_0002", "spleen"),
        ("amos_0002", "liver"),
    ]
    for r in rows:
        labels = (1,) if r["class"] == "spleen" else (2,)
        expected = _dice(msd["preds"][r["case"]], msd["gts"][r["case"]], labels)
        assert float(r["dice"]) == pytest.approx(expected, abs=1e-6)
        assert int(r["gt_voxels"]) == int(np.isin(msd["gts"][r["case"]], labels).sum())
    s = json.loads((out / "summary.json").read_text())
    assert s["n_cases"] == 2 and s["empty_rule"] == "ignore"
    spleen = [_dice(msd["preds"][c], msd["gts"][c], (1,)) for c in msd["gts"]]
    assert s["per_case_mean"]["spleen"] == pytest.approx(np.mean(spleen))
    allp = np.concatenate([msd["preds"][c].ravel() for c in msd["gts"]])
    allg = np.concatenate([msd["gts"][c].ravel() for c in msd["gts"]])
    assert s["pooled"]["liver"] == pytest.approx(_dice(allp, allg, (2,)))
    assert s["mean_dice"] == pytest.approx(np.mean(list(s["per_case_mean"].values())))
    assert s["pooled_mdice_with_background"] is not None


def test_v2_dataset_json_regions_and_ignore_label(msd: dict) -> None:
    dj = msd["root"] / "dataset_v2.json"
    dj.write_text(json.dumps({"labels": {"background": 0, "spleen": 1, "liver": 2, "organs": [1, 2]}}))
    out = msd["root"] / "eval2"
    assert _run(["--pred", msd["pred"], "--gt", msd["gt"], "--dataset-json", dj, "--out", out]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert [c["name"] for c in s["classes"]] == ["spleen", "liver", "organs"]
    organs = [_dice(msd["preds"][c], msd["gts"][c], (1, 2)) for c in msd["gts"]]
    assert s["per_case_mean"]["organs"] == pytest.approx(np.mean(organs))
    # background left implicit (label 0 not listed): still accepted as background
    dj0 = msd["root"] / "dataset_nobg.json"
    dj0.write_text(json.dumps({"labels": {"spleen": 1, "liver": 2}}))
    out0 = msd["root"] / "eval0"
    assert _run(["--pred", msd["pred"], "--gt", msd["gt"], "--dataset-json", dj0, "--out", out0]) == 0
    s0 = json.loads((out0 / "summary.json").read_text())
    assert s0["per_case_mean"]["liver"] == s["per_case_mean"]["liver"]
    allp = np.concatenate([msd["preds"][c].ravel() for c in msd["gts"]])
    allg = np.concatenate([msd["gts"][c].ravel() for c in msd["gts"]])
    with_bg = np.mean([_dice(allp, allg, (v,)) for v in (0, 1, 2)])
    assert s0["pooled_mdice_with_background"] == pytest.approx(with_bg)
    # an "ignore" label: those ground-truth voxels leave every count
    gt_dir = msd["root"] / "gt_ignore"
    gt_dir.mkdir()
    for c, g in msd["gts"].items():
        g2 = g.copy()
        g2[:, :, 0] = 9
        _save(g2, gt_dir / f"{c}.nii.gz")
    dj3 = msd["root"] / "dataset_ignore.json"
    dj3.write_text(json.dumps({"labels": {"background": 0, "spleen": 1, "liver": 2, "ignore": 9}}))
    out3 = msd["root"] / "eval3"
    assert _run(["--pred", msd["pred"], "--gt", gt_dir, "--dataset-json", dj3, "--out", out3]) == 0
    s3 = json.loads((out3 / "summary.json").read_text())
    keep = [(msd["preds"][c][:, :, 1:], msd["gts"][c][:, :, 1:]) for c in msd["gts"]]
    assert s3["per_case_mean"]["liver"] == pytest.approx(np.mean([_dice(p, g, (2,)) for p, g in keep]))
    assert s3["ignore_label"] == 9


def test_brats_regions_and_empty_rule(tmp_path: Path) -> None:
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    g = np.zeros((6, 6, 4), np.uint8)
    g[1:5, 1:5, 1:3] = 2
    g[2:4, 2:4, 1:3] = 1
    g[2, 2, 1] = 4
    _save(g, gt_dir / "BraTS2021_00001.nii.gz")
    _save(g, pred_dir / "BraTS2021_00001.nii.gz")
    g2 = np.where(g == 4, 1, g)  # no enhancing tumour in case 2, none predicted
    _save(g2, gt_dir / "BraTS2021_00002.nii.gz")
    _save(g2, pred_dir / "BraTS2021_00002.nii.gz")
    for rule, et_mean, counted in (("brats", 1.0, 2), ("ignore", 1.0, 1)):
        out = tmp_path / f"out_{rule}"
        assert (
            _run(["--pred", pred_dir, "--gt", gt_dir, "--regions", "brats", "--empty", rule, "--out", out])
            == 0
        )
        s = json.loads((out / "summary.json").read_text())
        assert [c["name"] for c in s["classes"]] == ["ET", "TC", "WT"]
        assert s["per_case_mean"]["ET"] == et_mean and s["cases_counted"]["ET"] == counted
        assert s["pooled_mdice_with_background"] is None
    # a false-positive ET in the case without ET: brats scores it 0
    bad = g2.copy()
    bad[0, 0, 0] = 4
    _save(bad, pred_dir / "BraTS2021_00002.nii.gz")
    out = tmp_path / "out_fp"
    assert (
        _run(["--pred", pred_dir, "--gt", gt_dir, "--regions", "brats", "--empty", "brats", "--out", out])
        == 0
    )
    rows = {(r["case"], r["class"]): r for r in csv.DictReader(open(out / "per_case.csv"))}
    assert float(rows[("BraTS2021_00002", "ET")]["dice"]) == 0.0
    assert json.loads((out / "summary.json").read_text())["per_case_mean"]["ET"] == 0.5


def test_png_masks(tmp_path: Path) -> None:
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    g = np.zeros((16, 12), np.int64)
    g[2:10, 1:5] = 1  # left lung
    g[2:10, 7:11] = 1  # right lung
    g[4:6, 2:4] = 2  # infection
    p = g.copy()
    p[2:4, 7:11] = 0
    write_png_mask(g, gt_dir / "covid_1.png")
    write_png_mask(p, pred_dir / "covid_1.png")
    dj = tmp_path / "dataset.json"
    dj.write_text(json.dumps({"labels": {"background": 0, "lung": 1, "infection": 2}}))
    out = tmp_path / "out"
    assert _run(["--pred", pred_dir, "--gt", gt_dir, "--dataset-json", dj, "--out", out]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["per_case_mean"]["lung"] == pytest.approx(_dice(p, g, (1,)))
    assert s["per_case_mean"]["infection"] == 1.0


def _bad(msd: dict, capsys: pytest.CaptureFixture[str], argv: list, *needles: str) -> None:
    out = msd["root"] / "bad_out"
    assert _run([*argv, "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for n in needles:
        assert str(n) in err[0], (n, err[0])
    assert not out.exists()


def test_bad_input(msd: dict, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root: Path = msd["root"]
    base = ["--pred", msd["pred"], "--gt", msd["gt"]]
    # a label value missing from dataset.json: the file and the value
    dj = root / "dj_small.json"
    dj.write_text(json.dumps({"labels": {"0": "background", "1": "spleen"}}))
    _bad(msd, capsys, [*base, "--dataset-json", dj], "amos_0001.nii.gz", "label value 2", "dj_small.json")
    # shape mismatch
    shape_dir = root / "pred_shape"
    shape_dir.mkdir()
    for c in msd["gts"]:
        _save(np.zeros((12, 10, 7), np.uint8), shape_dir / f"{c}.nii.gz")
    _bad(
        msd, capsys, ["--pred", shape_dir, "--gt", msd["gt"]], "shape mismatch", "pred_shape/amos_0001.nii.gz"
    )
    # affine mismatch
    aff_dir = root / "pred_affine"
    aff_dir.mkdir()
    moved = LAS.copy()
    moved[0, 3] += 3.0
    for c, p in msd["preds"].items():
        _save(p, aff_dir / f"{c}.nii.gz", moved)
    _bad(
        msd,
        capsys,
        ["--pred", aff_dir, "--gt", msd["gt"]],
        "affine mismatch",
        "3 mm",
        "pred_affine/amos_0001",
    )
    # a missing prediction
    few = root / "pred_few"
    few.mkdir()
    (few / "amos_0001.nii.gz").write_bytes((msd["pred"] / "amos_0001.nii.gz").read_bytes())
    _bad(msd, capsys, ["--pred", few, "--gt", msd["gt"]], "no prediction for 1", "amos_0002")
    # not NIfTI under a NIfTI name
    junk = root / "pred_junk"
    junk.mkdir()
    for c in msd["gts"]:
        (junk / f"{c}.nii.gz").write_text("not a volume")
    _bad(
        msd, capsys, ["--pred", junk, "--gt", msd["gt"]], "pred_junk/amos_0001.nii.gz", "not a readable NIfTI"
    )
    # an empty volume
    empty = root / "pred_empty"
    empty.mkdir()
    for c in msd["gts"]:
        nib.save(nib.Nifti1Image(np.zeros((12, 0, 8), np.uint8), LAS), str(empty / f"{c}.nii.gz"))
    _bad(msd, capsys, ["--pred", empty, "--gt", msd["gt"]], "empty volume", "(12, 0, 8)")
    # float labels with fractions
    frac = root / "pred_frac"
    frac.mkdir()
    for c, p in msd["preds"].items():
        nib.save(nib.Nifti1Image(p.astype(np.float32) + 0.25, LAS), str(frac / f"{c}.nii.gz"))
    _bad(
        msd,
        capsys,
        ["--pred", frac, "--gt", msd["gt"]],
        "pred_frac/amos_0001.nii.gz",
        "non-integer label value",
    )
    # --regions brats against a dataset.json without label 4
    _bad(msd, capsys, [*base, "--dataset-json", msd["dj"], "--regions", "brats"], "label 4", "dataset.json")
    # a folder with no label files, and a dataset.json that is not one
    nothing = root / "nothing"
    nothing.mkdir()
    _bad(msd, capsys, ["--pred", msd["pred"], "--gt", nothing], "no ground-truth label files", "nothing")
    notjson = root / "broken.json"
    notjson.write_text("{labels: ")
    _bad(msd, capsys, [*base, "--dataset-json", notjson], "broken.json", "not JSON")


def test_out_never_replaces_an_input_or_an_earlier_result(
    msd: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 20: ``evaluate segmentation`` replaced an existing ``--out`` without ``--overwrite``
    and wrote into the input folders: the rule ``infer`` follows."""
    base = ["--pred", msd["pred"], "--gt", msd["gt"], "--dataset-json", msd["dj"]]
    for folder, flag in ((msd["gt"], "--gt"), (msd["pred"], "--pred")):
        assert _run([*base, "--out", folder, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert f"lies inside the input folder {flag} {folder}" in err, err
        assert not (folder / "summary.json").exists() and not (folder / "per_case.csv").exists()
    out = msd["root"] / "eval"
    out.mkdir()
    (out / "summary.json").write_text("an earlier result")
    assert _run([*base, "--out", out]) == 2
    err = capsys.readouterr().err
    assert f"--out {out / 'summary.json'} exists; pass --overwrite" in err, err
    assert (out / "summary.json").read_text() == "an earlier result" and not (out / "per_case.csv").exists()
    assert _run([*base, "--out", out, "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["n_cases"] == 2
