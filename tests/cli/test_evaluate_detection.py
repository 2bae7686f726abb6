"""``vitp-geo evaluate detection`` on the DOTA / DIOR / COCO fixtures, and its bad-input paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vitp_geo.cli.main import main
from vitp_geo.io.annotations import (
    DIOR_CLASSES,
    DOTA_V2_CLASSES,
    read_coco,
    read_dior,
    read_dota_labels,
    write_coco_results,
    write_task_results,
)

DATA = Path(__file__).resolve().parents[1] / "data"
DOTA_GT = DATA / "dota" / "DOTA-v1.0" / "train" / "labelTxt"


def _copies(gt: dict, score: float = 0.9) -> dict:
    """Predictions that are exactly the ground truth (difficult objects included)."""
    out = {}
    for k, s in gt.items():
        p = {n: v for n, v in s.items() if n != "difficult"}
        p["score"] = torch.full((len(s["label"]),), score)
        out[k] = p
    return out


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["evaluate", "detection", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_dota_perfect_predictions_score_one_and_a_ranked_false_positive_costs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt = read_dota_labels(DOTA_GT, DOTA_V2_CLASSES)
    preds = _copies(gt)
    # a false positive ranked below everything costs nothing...
    extra = {
        "bbox_xyxyxyxy": torch.tensor([[0.0, 0, 4, 0, 4, 4, 0, 4]]),
        "label": torch.tensor([0]),
        "score": torch.tensor([0.1]),
    }
    preds["P0002"] = extra
    write_task_results(tmp_path / "pred", preds, DOTA_V2_CLASSES)
    out = tmp_path / "metrics.json"
    rc, stdout, _ = _run(
        [
            "--gt",
            str(DOTA_GT),
            "--pred",
            str(tmp_path / "pred"),
            "--format",
            "dota",
            "--metric",
            "voc07",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["mAP"] == pytest.approx(1.0)
    seen = {
        DOTA_V2_CLASSES[i]
        for s in gt.values()
        for i, d in zip(s["label"].tolist(), s["difficult"].tolist(), strict=True)
        if not d
    }
    for name, c in m["per_class"].items():
        n = sum(
            int(((s["label"] == DOTA_V2_CLASSES.index(name)) & ~s["difficult"]).sum()) for s in gt.values()
        )
        assert c["num_gt"] == n
        assert (c["ap"] is None) == (name not in seen)  # classes without positives: no AP, not in the mean
    assert "plane" in stdout and "mAP" in stdout and "100.00" in stdout
    # ...one ranked above a class's only true positives halves that class's precision
    preds["P0002"] = {**extra, "score": torch.tensor([0.99])}
    write_task_results(tmp_path / "pred2", preds, DOTA_V2_CLASSES)
    rc, _, _ = _run(
        [
            "--gt",
            str(DOTA_GT),
            "--pred",
            str(tmp_path / "pred2"),
            "--format",
            "dota",
            "--metric",
            "voc12",
            "--out",
            str(out),
            "--overwrite",
        ],
        capsys,
    )
    m = json.loads(out.read_text())
    plane = m["per_class"]["plane"]
    assert rc == 0 and plane["num_gt"] >= 1 and plane["ap"] < 1.0 and plane["recall"] == 1.0
    n = plane["num_gt"]  # precision k/(k+1) at recall k/n rises with k: the envelope is n/(n+1)
    assert plane["ap"] == pytest.approx(n / (n + 1))
    others = [c["ap"] for k, c in m["per_class"].items() if k != "plane" and c["ap"] is not None]
    assert others and all(a == pytest.approx(1.0) for a in others)


@pytest.mark.parametrize(("fmt", "task"), [("dior", 2), ("dior-r", 1)])
def test_dior_split_with_task_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str, task: int
) -> None:
    gt = read_dior(DATA / "dior", "train", DIOR_CLASSES, oriented=fmt == "dior-r")
    preds = _copies(gt)
    preds["00004"] = preds["00001"]  # a test image: outside the split, dropped with a log line
    write_task_results(tmp_path / "pred", preds, DIOR_CLASSES, task=task)
    out = tmp_path / "m.json"
    rc, _, _ = _run(
        [
            "--gt",
            str(DATA / "dior"),
            "--pred",
            str(tmp_path / "pred"),
            "--format",
            fmt,
            "--split",
            "train",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["mAP"] == pytest.approx(1.0) and m["format"] == fmt
    assert sum(c["num_gt"] for c in m["per_class"].values()) == sum(len(s["label"]) for s in gt.values())


def test_class_presets_and_image_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = read_dota_labels(DOTA_GT, DOTA_V2_CLASSES)
    preds = _copies(gt)
    preds["P0001"] = {k: v[:0] for k, v in preds["P0001"].items()}  # P0001's objects all missed
    write_task_results(tmp_path / "pred", preds, DOTA_V2_CLASSES)
    out = tmp_path / "m.json"
    common = ["--gt", str(DOTA_GT), "--pred", str(tmp_path / "pred"), "--format", "dota", "--out", str(out)]
    common.append("--overwrite")  # each run replaces the last one's metrics
    assert _run([*common, "--classes", "dota1.0"], capsys)[0] == 0
    m = json.loads(out.read_text())
    assert len(m["per_class"]) == 15 and m["mAP"] < 1.0
    (tmp_path / "ids.txt").write_text("P0000\nP0002\n")  # without P0001: perfect again
    assert _run([*common, "--classes", "dota1.0", "--image-list", str(tmp_path / "ids.txt")], capsys)[0] == 0
    assert json.loads(out.read_text())["mAP"] == pytest.approx(1.0)


def test_coco_results_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_file = DATA / "coco" / "annotations" / "instances_train.json"
    gt = read_coco(gt_file)
    write_coco_results(tmp_path / "results.json", _copies(gt), gt_file)
    out = tmp_path / "m.json"
    rc, stdout, _ = _run(
        [
            "--gt",
            str(DATA / "coco"),
            "--pred",
            str(tmp_path / "results.json"),
            "--format",
            "coco",
            "--metric",
            "coco",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["mAP"] == pytest.approx(1.0) and m["iou_threshold"] is None and "(coco)" in stdout
    assert set(m["per_class"]) == {"aircraft", "ship", "car"}


def test_bad_inputs_exit_2_with_the_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.json"
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "Task1_plane.txt").write_text("P0000 0.9 1 2 3 4 5 6 7 8\nP0000 0.8 1 2 3 4 5 6 7\n")
    base = ["--gt", str(DOTA_GT), "--pred", str(pred), "--format", "dota", "--out", str(out)]
    rc, _, err = _run(base, capsys)
    assert rc == 2 and "Task1_plane.txt:2" in err and "P0000 0.8 1 2 3 4 5 6 7" in err
    assert not out.exists()
    (pred / "Task1_plane.txt").write_text("P9999 0.9 1 2 3 4 5 6 7 8\n")
    rc, _, err = _run(base, capsys)
    assert rc == 2 and "P9999" in err and "without ground truth" in err
    rc, _, err = _run(["--gt", str(tmp_path / "nowhere"), *base[2:]], capsys)
    assert rc == 2 and "nowhere" in err
    bad_gt = tmp_path / "labelTxt"
    bad_gt.mkdir()
    (bad_gt / "P0000.txt").write_text("imagesource:GoogleEarth\n1 2 3 4 5 6 7 8 spaceship 0\n")
    rc, _, err = _run(["--gt", str(bad_gt), *base[2:]], capsys)
    assert rc == 2 and "P0000.txt:2" in err and "spaceship" in err
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "detection", *base, "--iou", "1.5"])
    assert e.value.code == 2 and "--iou must be in [0, 1), got 1.5" in capsys.readouterr().err
    assert not out.exists()


def test_out_never_replaces_an_input_or_an_earlier_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 20: ``--out`` inside the ground truth overwrote a label file with the metrics (exit 0),
    ``--out`` equal to the COCO predictions replaced them, and an existing ``--out`` was replaced
    without ``--overwrite``: the rule ``infer`` follows."""
    import shutil

    gt = tmp_path / "ev" / "gt" / "labelTxt"
    shutil.copytree(DOTA_GT, gt)
    write_task_results(tmp_path / "pred", _copies(read_dota_labels(gt, DOTA_V2_CLASSES)), DOTA_V2_CLASSES)
    label = next(iter(sorted(gt.glob("*.txt"))))
    before = label.read_bytes()
    base = ["--gt", str(gt), "--pred", str(tmp_path / "pred"), "--format", "dota"]
    for out in (label, gt / "metrics.json"):  # a ground-truth file, or a new file among them
        for extra in ([], ["--overwrite"]):
            rc, _, err = _run([*base, "--out", str(out), *extra], capsys)
            assert rc == 2 and f"--out {out}" in err and f"input folder --gt {gt}" in err, err
    assert label.read_bytes() == before and not (gt / "metrics.json").exists()
    # an earlier result is replaced only with --overwrite
    out = tmp_path / "m.json"
    out.write_text("an earlier result")
    rc, _, err = _run([*base, "--out", str(out)], capsys)
    assert (
        rc == 2 and f"--out {out} exists; pass --overwrite" in err and out.read_text() == "an earlier result"
    )
    assert _run([*base, "--out", str(out), "--overwrite"], capsys)[0] == 0
    assert json.loads(out.read_text())["mAP"] == pytest.approx(1.0)
    # the COCO predictions file itself
    gt_file = DATA / "coco" / "annotations" / "instances_train.json"
    results = tmp_path / "results.json"
    write_coco_results(results, _copies(read_coco(gt_file)), gt_file)
    kept = results.read_bytes()
    coco = ["--gt", str(gt_file), "--pred", str(results), "--format", "coco", "--out", str(results)]
    rc, _, err = _run([*coco, "--overwrite"], capsys)
    assert rc == 2 and "same file as the input --pred" in err and results.read_bytes() == kept
    # a folder as --out: refused before scoring, no .partial left behind
    rc, _, err = _run([*base, "--out", str(tmp_path / "pred")], capsys)
    assert rc == 2 and "is a directory" in err
    assert not list(tmp_path.glob(".*partial*"))


def test_one_class_in_two_files_or_one_category_id_twice_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 20: ``Task1_plane.txt`` and ``Task1_Plane.txt`` both counted as plane (mAP 100 → 92.4)
    and a duplicate COCO category id relabelled objects, both silently; a category without a
    name was a traceback."""
    preds = _copies(read_dota_labels(DOTA_GT, DOTA_V2_CLASSES))
    write_task_results(tmp_path / "pred", preds, DOTA_V2_CLASSES)
    plane = tmp_path / "pred" / "Task1_plane.txt"
    (tmp_path / "pred" / "Task1_Plane.txt").write_text(plane.read_text())
    out = tmp_path / "m.json"
    base = ["--gt", str(DOTA_GT), "--pred", str(tmp_path / "pred"), "--format", "dota", "--out", str(out)]
    rc, _, err = _run(base, capsys)
    assert rc == 2 and "Task1_Plane.txt and " in err and "Task1_plane.txt both hold class 'plane'" in err, err
    assert not out.exists()
    gt_file = DATA / "coco" / "annotations" / "instances_train.json"
    data = json.loads(gt_file.read_text())
    results = tmp_path / "results.json"
    write_coco_results(results, _copies(read_coco(gt_file)), gt_file)
    for k, category, needle in (
        (2, {"id": 3, "name": "car"}, "(categories[2]): category id 3 is given twice ('ship' and 'car')"),
        (1, {"id": 1}, "(categories[1]): a category needs an 'id' and a 'name'"),
        (1, {"id": [1], "name": "aircraft"}, "(categories[1]): category id must be an integer"),
        (1, {"id": "1", "name": "aircraft"}, "category ids mix integers and strings"),
        (2, {"id": 9, "name": "Ship"}, "two categories are named 'Ship' (ids 3 and 9)"),
    ):
        bad = json.loads(json.dumps(data))
        bad["categories"][k] = category
        (tmp_path / "gt.json").write_text(json.dumps(bad))
        coco = ["--gt", str(tmp_path / "gt.json"), "--pred", str(results), "--format", "coco"]
        rc, _, err = _run([*coco, "--out", str(out)], capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and "gt.json" in lines[0] and needle in lines[0], err
        assert not out.exists()


def test_malformed_values_are_one_error_line_naming_the_file_and_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 20: tracebacks (a string image, list-valued ids, an int annotation, DOTA coordinates
    of 1e200: a GEOSException) and silent changes (a NaN ground-truth coordinate dropped, mAP
    81.8 -> 100; NaN scores accepted) become one line naming the file and the line or element."""
    out = tmp_path / "m.json"
    preds = _copies(read_dota_labels(DOTA_GT, DOTA_V2_CLASSES))
    write_task_results(tmp_path / "pred", preds, DOTA_V2_CLASSES)

    def refused(args: list[str], *needles: str) -> None:
        rc, _, err = _run([*args, "--out", str(out)], capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and all(n in lines[0] for n in needles), err
        assert not out.exists()

    gt, one = tmp_path / "labelTxt", tmp_path / "one"
    gt.mkdir()
    one.mkdir()
    (one / "Task1_plane.txt").write_text("P0000 0.9 0 0 9 0 9 9 0 9\n")
    for value in ("nan", "1e200", "-inf"):
        (gt / "P0000.txt").write_text(
            f"imagesource:GoogleEarth\n0 0 9 0 9 9 0 9 plane 0\n1 2 3 4 5 {value} 7 8 plane 0\n"
        )
        refused(["--gt", str(gt), "--pred", str(one), "--format", "dota"], "P0000.txt:3", value)
    bad_pred = tmp_path / "bad_pred"
    bad_pred.mkdir()
    (bad_pred / "Task1_plane.txt").write_text("P0000 nan 1 2 3 4 5 6 7 8\n")
    refused(["--gt", str(DOTA_GT), "--pred", str(bad_pred), "--format", "dota"], "Task1_plane.txt:1", "nan")

    gt_file = DATA / "coco" / "annotations" / "instances_train.json"
    data = json.loads(gt_file.read_text())
    results = tmp_path / "results.json"
    write_coco_results(results, _copies(read_coco(gt_file)), gt_file)
    good_results = json.loads(results.read_text())
    for edit, needles in (
        (lambda d: d["images"].__setitem__(0, "P0000.png"), ("images[0]", "without 'id'")),
        (
            lambda d: d["images"][0].__setitem__("id", [100]),
            ("images[0]", "id must be an integer, got [100]"),
        ),
        (lambda d: d["annotations"].__setitem__(0, 7), ("annotations[0]", "expected an object, got 7")),
        (lambda d: d["annotations"][0].__setitem__("image_id", [100]), ("annotations[0]", "image_id must")),
        (lambda d: d["annotations"][0].__setitem__("bbox", [1e200, 0, 4, 4]), ("annotations[0]", "finite")),
    ):
        bad = json.loads(json.dumps(data))
        edit(bad)
        (tmp_path / "gt.json").write_text(json.dumps(bad))
        refused(
            ["--gt", str(tmp_path / "gt.json"), "--pred", str(results), "--format", "coco"],
            "gt.json",
            *needles,
        )
    for key, value, needle in (
        ("score", float("nan"), "score must be a finite number"),
        ("category_id", [1], ""),
    ):
        bad_results = json.loads(json.dumps(good_results))
        bad_results[0][key] = value
        (tmp_path / "res.json").write_text(json.dumps(bad_results))
        refused(
            ["--gt", str(gt_file), "--pred", str(tmp_path / "res.json"), "--format", "coco"],
            "res.json ([0])",
            needle,
        )


def test_coco_mask_ap_from_rle_and_polygon_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--iou-type segm``: SSDD-style ground truth polygons; results as RLE (written by
    ``write_coco_results``) or as polygons score mask AP; a coarser mask costs; bad input exits 2."""
    from pycocotools import mask as mask_utils
    from ssdd_fixture import write_ssdd

    root = write_ssdd(tmp_path / "ssdd")
    gt_file = root / "Annotations" / "trainval.json"
    gt = read_coco(gt_file, masks=True)
    write_coco_results(tmp_path / "rle.json", _copies(gt), gt_file)
    assert all("segmentation" in d for d in json.loads((tmp_path / "rle.json").read_text()))
    base = ["--gt", str(gt_file), "--format", "coco", "--metric", "coco", "--iou-type", "segm"]
    rc, stdout, _ = _run(
        [*base, "--pred", str(tmp_path / "rle.json"), "--out", str(tmp_path / "a.json")], capsys
    )
    m = json.loads((tmp_path / "a.json").read_text())
    assert rc == 0 and m["mAP"] == pytest.approx(1.0) and m["iou_type"] == "segm" and "(coco segm)" in stdout
    # polygons as results: the boxes' own rectangles, which cover the ships only partly
    data = json.loads(gt_file.read_text())
    dets = []
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        poly = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        dets.append(
            {
                "image_id": a["image_id"],
                "category_id": 1,
                "bbox": a["bbox"],
                "score": 0.9,
                "segmentation": poly,
            }
        )
    (tmp_path / "poly.json").write_text(json.dumps(dets))
    rc, _, _ = _run([*base, "--pred", str(tmp_path / "poly.json"), "--out", str(tmp_path / "b.json")], capsys)
    segm = json.loads((tmp_path / "b.json").read_text())["mAP"]
    rc_box, _, _ = _run(
        [*base[:-2], "--pred", str(tmp_path / "poly.json"), "--out", str(tmp_path / "c.json")], capsys
    )
    assert rc == rc_box == 0 and json.loads((tmp_path / "c.json").read_text())["mAP"] == pytest.approx(1.0)
    ious = [
        mask_utils.iou([mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], 64, 80))],
                       [mask_utils.merge(mask_utils.frPyObjects(d["segmentation"], 64, 80))], [0])[0][0]
        for a, d in zip(data["annotations"], dets, strict=True)
    ]  # fmt: skip
    assert min(ious) < 0.75 and segm < 1.0  # the rectangle of a slanted ship is a poor mask
    # bad input: a result without a segmentation, a non-COCO format
    del dets[1]["segmentation"]
    (tmp_path / "bad.json").write_text(json.dumps(dets))
    rc, _, err = _run(
        [*base, "--pred", str(tmp_path / "bad.json"), "--out", str(tmp_path / "d.json")], capsys
    )
    assert (
        rc == 2
        and "bad.json" in err
        and "[1]" in err
        and "segmentation" in err
        and len(err.strip().splitlines()) == 1
    )
    rc, _, err = _run(
        ["--gt", str(DOTA_GT), "--pred", str(tmp_path / "rle.json"), "--format", "dota", "--metric", "coco", "--iou-type", "segm",
         "--out", str(tmp_path / "e.json")], capsys,
    )  # fmt: skip
    assert rc == 2 and "--format coco" in err
    assert not (tmp_path / "d.json").exists() and not (tmp_path / "e.json").exists()
