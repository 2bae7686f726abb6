"""Medical instruction records: what each says is true of its slice's labels; the CLI reads volumes, MSD and X-ray folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from vitp_geo.cli.main import main
from vitp_geo.instruct.builders.context import BuildContext
from vitp_geo.instruct.builders.tiles import position_word
from vitp_geo.instruct.records import normalize_box, parse_boxes, read_jsonl
from vitp_geo.medical import phantoms as P
from vitp_geo.medical.instructions import connected_regions, slice_records


def test_connected_regions_are_4_connected_with_exclusive_edges() -> None:
    m = np.zeros((6, 8), bool)
    m[0:2, 0:2] = True  # 4 px
    m[4:6, 3:7] = True  # 8 px
    m[3, 7] = True  # touches the second block only diagonally: its own region
    assert connected_regions(m) == [(3, 4, 7, 6, 8), (0, 0, 2, 2, 4), (7, 3, 8, 4, 1)]
    assert connected_regions(m, min_pixels=2) == [(3, 4, 7, 6, 8), (0, 0, 2, 2, 4)]
    ring = np.ones((5, 5), bool)
    ring[2, 2] = False  # a region with a hole is one region
    assert connected_regions(ring) == [(0, 0, 5, 5, 24)]


def _hand_made() -> tuple[np.ndarray, list[str]]:
    names = ["background", "liver", "kidney", "lesion", "spleen"]
    ids = np.zeros((40, 50), np.int64)
    ids[2:14, 3:20] = 1  # liver, top-left
    ids[25:33, 30:36] = 2  # two kidneys
    ids[25:33, 40:46] = 2
    ids[5, 30] = 4  # a 1-pixel speck of spleen: ambiguous (present below min_pixels)
    return ids, names


def test_every_slice_record_is_true_of_the_labels(tmp_path: Path) -> None:
    ids, names = _hand_made()
    h, w = ids.shape
    tasks: set[str] = set()
    for seed in range(12):
        ctx = BuildContext(tmp_path, np.random.default_rng(seed))
        for rec in slice_records(ctx, ids, names, "images/x.png", "x", "ct", min_pixels=4):
            q, a = rec.conversations[0]["value"], rec.conversations[1]["value"]
            assert rec.modality == "ct" and rec.images == ["images/x.png"] and q.startswith("<image>\n")
            tasks.add(rec.task)
            named = [n for n in names[1:] if f" {n}" in q]
            if rec.task == "presence":
                assert len(named) == 1
                assert a.startswith("Yes") == (named[0] in ("liver", "kidney"))
                assert named[0] != "spleen"  # the ambiguous speck is never asked about
            elif rec.task == "grounding":
                cls = re.match(r"<ref>(.*?)</ref>", a)[1]  # type: ignore[index]
                expected = [
                    list(normalize_box(r[:4], w, h)) for r in connected_regions(ids == names.index(cls), 4)
                ]
                assert parse_boxes(a) == expected
            elif rec.task == "counting":
                assert a == {"liver": "1", "kidney": "2"}[named[0]]
            elif rec.task == "position":
                ys, xs = np.nonzero(ids == names.index(named[0]))
                assert a == f"In the {position_word(xs.mean() + 0.5, ys.mean() + 0.5, w, h)} of the image."
            elif rec.task == "dominant":
                assert a == "The liver."
            elif rec.task == "region":
                assert a.endswith(".")
    # "classes" is never asked: the spleen speck makes the list ambiguous
    assert tasks == {"presence", "grounding", "counting", "position", "dominant", "region"}
    ids[5, 30] = 0
    ctx = BuildContext(tmp_path, np.random.default_rng(0))
    classes = [r for r in slice_records(ctx, ids, names, "i.png", "x", "mri") if r.task == "classes"]
    assert len(classes) == 1 and classes[0].conversations[1]["value"] == "liver and kidney."
    assert classes[0].modality == "mri"
    with pytest.raises(ValueError, match="modality"):
        slice_records(ctx, ids, names, "i.png", "x", "optical")


def test_cli_builds_a_corpus_from_msd_and_xray_folders(tmp_path: Path) -> None:
    ct = P.write_ct_dataset(tmp_path / "ct", n_cases=2, seed=2, shape=(64, 56, 12))
    xr = P.write_xray_dataset(tmp_path / "xr", n_images=2, size=64, splits=("Train",))
    out = tmp_path / "corpus"
    assert main(["build-instructions", "--msd", str(ct), "--xray", str(xr), "--out", str(out)]) == 0
    records = read_jsonl(out / "annotations.jsonl").records
    assert {r.modality for r in records} == {"ct", "xray"}
    assert {"presence", "grounding", "counting", "classes", "region", "position", "classification"} <= {
        r.task for r in records
    }
    assert json.loads((out / "recipe.json").read_text())
    # the PNG and the boxes agree: inside a liver box the pixels are liver in the abdomen window
    phantom = P.generate_ct_phantom(2000, shape=(64, 56, 12))  # case 0 of seed 2
    liver_u8 = (P.HU["liver"][0] + 160) / 400 * 255
    checked = 0
    for rec in records:
        a = rec.conversations[1]["value"]
        if rec.task != "grounding" or not a.startswith("<ref>liver</ref>") or "case_000" not in rec.id:
            continue
        png = np.asarray(Image.open(out / rec.images[0]))
        assert png.shape == (56, 64, 3)  # display order: (H, W) = (Y, X)
        x1, y1, x2, y2 = parse_boxes(a)[0]
        hgt, wid = png.shape[:2]
        cy, cx = int((y1 + y2) / 2000 * hgt), int((x1 + x2) / 2000 * wid)
        assert abs(float(png[cy - 1 : cy + 2, cx - 1 : cx + 2, 0].mean()) - liver_u8) < 25
        checked += 1
    assert checked >= 3 and phantom.label.any()
    infected = [r for r in records if r.task == "classification"]
    assert len(infected) == 2 and all(r.modality == "xray" for r in infected)


def test_cli_volume_with_labels_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ct = P.write_ct_dataset(tmp_path / "ct", n_cases=1, shape=(48, 40, 8))
    image, labels = ct / "imagesTr" / "case_000_0000.nii.gz", ct / "labelsTr" / "case_000.nii.gz"
    out = tmp_path / "corpus"
    args = [
        "build-instructions",
        "--volume",
        str(image),
        "--labels",
        str(labels),
        "--classes",
        str(ct / "dataset.json"),
    ]
    assert main([*args, "--out", str(out)]) == 0
    assert {r.modality for r in read_jsonl(out / "annotations.jsonl").records} == {"ct"}
    # a label map on another grid: exit 2 naming both files, nothing written
    other = tmp_path / "other.nii.gz"
    lab = nib.load(labels)
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj)[:, :, :6], lab.affine), str(other))
    bad = tmp_path / "bad"
    assert main([*args[:4], str(other), *args[5:], "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "shape mismatch" in err and "other.nii.gz" in err and "case_000_0000" in err
    assert not bad.exists() and not any(p.name.startswith(".bad") for p in tmp_path.iterdir())
    # a label value missing from the class table names the file and the value
    names = tmp_path / "names.yaml"
    names.write_text("0: background\n1: spleen\n")
    assert main([*args[:6], str(names), "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "case_000.nii.gz" in err and "label value(s) [" in err
    assert main(["build-instructions", "--volume", str(image), "--out", str(bad)]) == 2
    assert "--volume needs --labels" in capsys.readouterr().err


def test_cli_volume_with_one_file_per_mri_sequence(tmp_path: Path) -> None:
    root = P.write_brats_dataset(tmp_path / "brats", n_cases=1, shape=(32, 32, 8))
    seqs = [tmp_path / f"BraTS2021_00000_{s}.nii.gz" for s in ("flair", "t1", "t1ce", "t2")]
    for c, dst in enumerate(seqs):  # BraTS 2021's own file names
        (root / "imagesTr" / f"case_000_{c:04d}.nii.gz").rename(dst)
    names = tmp_path / "names.yaml"
    names.write_text("0: background\n1: necrotic tumour core\n2: peritumoral edema\n4: enhancing tumour\n")
    out = tmp_path / "corpus"
    args = [
        "build-instructions",
        "--volume",
        *map(str, seqs),
        "--labels",
        str(root / "labelsTr" / "case_000.nii.gz"),
    ]
    assert main([*args, "--classes", str(names), "--out", str(out)]) == 0
    records = read_jsonl(out / "annotations.jsonl").records
    assert {r.modality for r in records} == {"mri"}
    answers = " ".join(r.conversations[1]["value"] for r in records)
    assert "enhancing tumour" in answers and "peritumoral edema" in answers
    png = np.asarray(Image.open(out / records[0].images[0]))
    assert png.shape[2] == 3 and not np.array_equal(png[..., 0], png[..., 1])  # 3 different sequences
