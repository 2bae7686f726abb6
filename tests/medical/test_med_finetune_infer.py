"""Medical fine-tuning on phantoms (per-case Dice rises) and slice-wise volume inference (= MONAI's SliceInferer)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SliceInferer
from PIL import Image
from vitp_geo.datamodules.sampling import SamplingArgs

from vitp_geo.cli.main import main
from vitp_geo.medical import phantoms as P
from vitp_geo.medical.datasets import LabelTable, read_msd_dataset
from vitp_geo.medical.inference import load_medical_model, predict_volume
from vitp_geo.medical.inputs import SliceInput


@pytest.fixture(scope="module")
def med_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The embedded ``--domain med`` run, shortened to 5 epochs."""
    out = tmp_path_factory.mktemp("medft") / "run"
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(
            [
                "finetune",
                "segmentation",
                "--domain",
                "med",
                "--output",
                str(out),
                "--max-epochs",
                "5",
                "--no-progress",
            ]
        )
    assert rc == 0
    return out, buf.getvalue()


@pytest.mark.slow
def test_phantom_finetune_raises_per_case_dice(med_run: tuple[Path, str]) -> None:
    out, printed = med_run
    summary = json.loads((out / "finetune_summary.json").read_text())
    start, end = summary["dice_start"], summary["dice"]
    assert end["empty_rule"] == "ignore"
    val_cases = sorted(end["per_case"])
    assert len(val_cases) == 2 and val_cases == sorted(start["per_case"])
    assert end["mean_dice"] > start["mean_dice"] + 0.2  # random init is near 0
    assert end["mean_per_class"]["liver"] > 0.7 and end["mean_per_class"]["spleen"] > 0.3
    assert "per-case Dice" in printed and "mean Dice before training" in printed
    for case in val_cases:
        assert case in printed
    card = load_medical_model(out / "model.ckpt")
    assert card.spec.rule == "ct-windows" and card.table.values == tuple(range(len(P.CT_CLASSES)))
    assert card.channel_names == ("CT",) and card.modality == "CT"


@pytest.mark.slow
def test_infer_writes_labels_on_the_inputs_grid_and_they_overlay_the_truth(
    med_run: tuple[Path, str], tmp_path: Path
) -> None:
    out, _ = med_run
    data = out / "data" / "phantom_ct"
    summary = json.loads((out / "finetune_summary.json").read_text())
    case = sorted(summary["dice"]["per_case"])[0]  # a validation case
    src = data / "imagesTr" / f"{case}_0000.nii.gz"
    pred_path = tmp_path / "pred.nii.gz"
    rc = main(
        ["infer", str(src), "--checkpoint", str(out / "model.ckpt"), "--out", str(pred_path), "--no-progress"]
    )
    assert rc == 0
    img, pred = nib.load(src), nib.load(pred_path)
    assert pred.shape == img.shape and np.allclose(pred.affine, img.affine)
    assert nib.aff2axcodes(pred.affine) == ("L", "P", "S")  # the input's own (non-RAS) frame
    assert np.allclose(pred.header.get_qform(), img.header.get_qform())
    assert np.allclose(pred.header.get_sform(), img.header.get_sform())
    # in the file's own voxel order the prediction overlays the label file (a flipped write would not)
    p = np.asarray(pred.dataobj)
    gt = np.asarray(nib.load(data / "labelsTr" / f"{case}.nii.gz").dataobj)
    liver = P.CT_CLASSES.index("liver")
    dice = 2 * np.sum((p == liver) & (gt == liver)) / (np.sum(p == liver) + np.sum(gt == liver))
    assert dice > 0.7
    assert dice == pytest.approx(summary["dice"]["per_case"][case]["liver"], abs=1e-6)


def test_slice_inference_equals_monai_slice_inferer() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 5, padding=2)
    ).eval()
    ct = P.generate_ct_phantom(5, shape=(20, 16, 6))
    spec = SliceInput()
    mean, std = spec.mean_std
    ours = predict_volume(net, spec.prepare([ct.image], ["CT"]), spec, mean, std, batch_size=4, logits=True)
    assert ours.shape == (20, 16, 6, 4)
    # MONAI: the same 3 windows per voxel, in display order (rows = anterior→posterior,
    # columns = patient right→left), slid over the axial axis.
    from vitp_geo.medical.intensity import normalise

    windows = np.stack([normalise(ct.image, w) for w in spec.windows])  # (3, X, Y, Z)
    display = np.flip(windows, axis=(1, 2)).transpose(0, 2, 1, 3)  # (3, Y, X, Z)
    x = (torch.from_numpy(display.copy())[None] - torch.tensor(mean).view(1, 3, 1, 1, 1)) / torch.tensor(
        std
    ).view(1, 3, 1, 1, 1)
    with torch.no_grad():
        theirs = SliceInferer(roi_size=(16, 20), sw_batch_size=4, spatial_dim=2)(x.float(), net)
    assert isinstance(theirs, torch.Tensor) and theirs.shape == (1, 4, 16, 20, 6)
    back = np.flip(theirs[0].numpy().transpose(0, 2, 1, 3), axis=(1, 2)).transpose(1, 2, 3, 0)  # (X, Y, Z, K)
    assert np.allclose(ours, back, atol=1e-5)
    ids = predict_volume(net, spec.prepare([ct.image], ["CT"]), spec, mean, std, batch_size=3)
    assert np.array_equal(ids, back.argmax(-1))


def test_brats_label_4_is_class_3_and_back(tmp_path: Path) -> None:
    root = P.write_brats_dataset(tmp_path / "brats", n_cases=2, shape=(24, 24, 6))
    table = read_msd_dataset(root).labels
    assert table.values == (0, 1, 2, 4) and table.names[3] == "enhancing tumour"
    labels = np.array([[0, 1], [2, 4]])
    ids = table.to_class_ids(labels, "x")
    assert ids.tolist() == [[0, 1], [2, 3]] and table.to_values(ids).tolist() == labels.tolist()
    with pytest.raises(ValueError, match=r"case_9.nii.gz: label value\(s\) \[3\]"):
        table.to_class_ids(np.array([0, 3]), root / "labelsTr" / "case_9.nii.gz")
    assert LabelTable.from_names(["a", "b"]).contiguous


def test_a_label_value_missing_from_dataset_json_names_the_file(tmp_path: Path) -> None:
    from vitp_geo.datamodules.medical import MedicalSliceDataModule

    root = P.write_ct_dataset(tmp_path / "ct", n_cases=2, shape=(24, 24, 6))
    meta = json.loads((root / "dataset.json").read_text())
    del meta["labels"]["liver lesion"], meta["labels"]["liver"]  # liver (4) is in every case
    (root / "dataset.json").write_text(json.dumps(meta))
    dm = MedicalSliceDataModule(str(root), sampling=SamplingArgs(patch_size=24, val_fraction=0.5))
    with pytest.raises(ValueError, match=r"labelsTr/case_00\d.nii.gz: label value\(s\) \[4"):
        dm.setup("fit")


def test_bad_infer_input_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tiny_checkpoints import save_tiny_segmentation_checkpoint

    text = tmp_path / "notes.txt"
    text.write_text("not a volume\n")
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(b"\x89PNG\r\n\x1a\nnot nifti")
    ckpt = tmp_path / "geo.ckpt"
    save_tiny_segmentation_checkpoint(ckpt)
    for src in (text, fake):
        out = tmp_path / "pred.nii.gz"
        assert main(["infer", str(src), "--checkpoint", str(ckpt), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert src.name in err or "not a medical" in err
        assert not out.exists() and not any(p.name.startswith(".pred") for p in tmp_path.iterdir())
    # a real volume with a GeoTIFF model: refused, naming the checkpoint
    P.write_ct_dataset(tmp_path / "ct", n_cases=1, shape=(16, 16, 4))
    vol = tmp_path / "ct" / "imagesTr" / "case_000_0000.nii.gz"
    assert main(["infer", str(vol), "--checkpoint", str(ckpt), "--out", str(tmp_path / "p.nii.gz")]) == 2
    assert "not a medical segmentation model" in capsys.readouterr().err
    assert not (tmp_path / "p.nii.gz").exists()


@pytest.mark.slow
def test_infer_on_a_dicom_series_folder(med_run: tuple[Path, str], tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    from vitp_geo.medical.load import load_volume

    series = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"
    out, _ = med_run
    pred_path = tmp_path / "dicom_pred.nii.gz"
    rc = main(
        [
            "infer",
            str(series),
            "--checkpoint",
            str(out / "model.ckpt"),
            "--out",
            str(pred_path),
            "--no-progress",
        ]
    )
    assert rc == 0
    vol = load_volume(series)
    pred = nib.load(pred_path)
    assert pred.shape == vol.source_shape and np.allclose(pred.affine, vol.source_affine)
    assert int(pred.header["qform_code"]) == int(pred.header["sform_code"]) == 1
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= set(range(len(P.CT_CLASSES)))


def test_a_model_with_the_wrong_class_count_is_refused_before_training(tmp_path: Path) -> None:
    import lightning as L
    from vitp_geo.datamodules.medical import MedicalSliceDataModule

    from vitp_geo.tasks import SegmentationTask
    from vitp_geo.tasks.args import BackboneArgs

    root = P.write_brats_dataset(tmp_path / "brats", n_cases=2, shape=(28, 28, 6))
    dm = MedicalSliceDataModule(
        str(root), channel_rule="mri-sequences", preset="mri-zscore", sampling=SamplingArgs(patch_size=28)
    )
    task = SegmentationTask(
        backbone=BackboneArgs(name="vitp_tiny_patch14_112", img_size=112), num_classes=5, head_channels=16
    )
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"num_classes is 5 but the data has 4 classes"):
        trainer.fit(task, datamodule=dm)


def test_xray_per_image_dice_is_computed_from_the_masks(tmp_path: Path) -> None:
    from vitp_geo.datamodules.medical import XraySegmentationDataModule

    from vitp_geo.medical.intensity import minmax

    root = P.write_xray_dataset(tmp_path / "cxr", n_images=2, size=64, splits=("Train", "Val"))
    dm = XraySegmentationDataModule(str(root), sampling=SamplingArgs(patch_size=64))

    class DarkIsLung(torch.nn.Module):  # lung where the normalised grey value is below ImageNet's mean
        def __init__(self) -> None:
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            zeros = torch.zeros_like(x[:, 0])
            return torch.stack([zeros, -x[:, 0], zeros - 10], dim=1)

    from vitp_geo.medical.finetune import report_to_json

    scores = report_to_json(dm.dice_report(DarkIsLung()))
    assert set(scores["per_case"]) == {
        f"{p.parent.parent.name}/{p.stem}" for p in (root / "Val").rglob("images/*.png")
    }
    for name, row in scores["per_case"].items():
        category, stem = name.split("/")
        img = np.asarray(Image.open(root / "Val" / category / "images" / f"{stem}.png"), np.float32)
        lung = np.asarray(Image.open(root / "Val" / category / "lung masks" / f"{stem}.png")) > 0
        inf = np.asarray(Image.open(root / "Val" / category / "infection masks" / f"{stem}.png")) > 0
        pred = minmax(img) < 0.485
        gt = lung & ~inf
        assert row["lung"] == pytest.approx(2 * (pred & gt).sum() / (pred.sum() + gt.sum()), abs=1e-9)
        assert row["infection"] == (0.0 if inf.any() else None)  # never predicted; absent -> left out


def test_non_finite_voxels_are_nodata_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 20: a 10x10 NaN patch turned each slice it touched wholly into background, and an
    all-inf volume came out 100 % liver, silently. Now: nodata, filled with the lowest finite
    value (the prediction equals that of the volume so filled), labelled background, and said."""
    from tiny_checkpoints import save_tiny_checkpoint

    spec = SliceInput()
    ckpt = save_tiny_checkpoint(
        tmp_path / "med.ckpt",
        num_classes=3,
        class_names=["background", "liver", "spleen"],
        mean=spec.mean_std[0],
        std=spec.mean_std[1],
        render={"raw": True, "medical": spec.to_dict(), "modality": "CT", "label_values": [0, 1, 2]},
    )
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 300, (40, 36, 3)).astype(np.float32)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    filled = hu.copy()
    filled[5:15, 5:15, 1] = hu.min()  # what the NaN patch must be read as
    hu[5:15, 5:15, 1] = np.nan
    nib.save(nib.Nifti1Image(hu, affine), str(tmp_path / "nan.nii.gz"))
    nib.save(nib.Nifti1Image(filled, affine), str(tmp_path / "filled.nii.gz"))
    for name in ("nan", "filled"):
        argv = ["infer", str(tmp_path / f"{name}.nii.gz"), "--checkpoint", str(ckpt), "--no-progress"]
        assert main([*argv, "--out", str(tmp_path / f"{name}_pred.nii.gz")]) == 0
    assert "nan.nii.gz: 100 non-finite voxel(s) (NaN / inf) treated as nodata" in caplog.text
    assert "labelled background (label 0)" in caplog.text and "filled.nii.gz" not in caplog.text
    got = np.asarray(nib.load(str(tmp_path / "nan_pred.nii.gz")).dataobj)
    want = np.asarray(nib.load(str(tmp_path / "filled_pred.nii.gz")).dataobj).copy()
    want[5:15, 5:15, 1] = 0
    assert np.array_equal(got, want)
    nib.save(nib.Nifti1Image(np.full((8, 8, 2), np.inf, np.float32), affine), str(tmp_path / "inf.nii.gz"))
    argv = ["infer", str(tmp_path / "inf.nii.gz"), "--checkpoint", str(ckpt), "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "inf_pred.nii.gz")]) == 2
    assert "inf.nii.gz: every voxel is NaN or infinite" in capsys.readouterr().err
    assert not (tmp_path / "inf_pred.nii.gz").exists()


def test_case_dice_scores_the_best_weights_on_the_trainers_device(tmp_path: Path, monkeypatch) -> None:
    """Issue 20: the DataModule scored on a hard-coded ``cuda`` (every DDP rank on ``cuda:0``; a
    CPU run on a machine with a GPU moved the model there). The CaseDice callback scores on the
    trainer's device: a CPU run stays on the CPU even where CUDA is reported available."""
    from vitp_geo.medical.finetune import default_config, report_to_json
    from vitp_geo.tasks.loading import load_inference_model
    from vitp_geo.tasks.run import fit

    P.write_ct_dataset(tmp_path / "data" / "phantom_ct", n_cases=3, seed=0, shape=(112, 112, 4))
    cfg = default_config(tmp_path / "data")
    cfg["trainer"].update(max_epochs=1, max_steps=2, enable_model_summary=False, logger=False)
    cfg["data"]["init_args"]["sampling"].update(val_fraction=0.34, batch_size=2)
    import types

    import vitp_geo.datamodules.medical

    # A machine with a GPU, a CPU run: the datamodule's module sees CUDA as available (patched
    # there only: the optimizer must not be fooled). Nothing may move the model to "cuda".
    gpu_torch = types.SimpleNamespace(**vars(torch))
    gpu_torch.cuda = types.SimpleNamespace(**vars(torch.cuda))
    gpu_torch.cuda.is_available = lambda: True
    monkeypatch.setattr(vitp_geo.datamodules.medical, "torch", gpu_torch)
    summary = fit(cfg, "segmentation", tmp_path / "run", progress=False, score_start=True)
    dice, start = summary["dice"], summary["dice_start"]
    assert dice is not None and start is not None and set(dice["per_case"]) == set(start["per_case"])
    monkeypatch.undo()
    network, _ = load_inference_model(tmp_path / "run" / "model.ckpt")  # the best weights
    dm = vitp_geo.datamodules.medical.MedicalSliceDataModule(**cfg["data"]["init_args"])
    expected = report_to_json(dm.dice_report(network.eval()))
    assert json.loads(json.dumps(dice)) == json.loads(json.dumps(expected))
