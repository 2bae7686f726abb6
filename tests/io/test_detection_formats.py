"""Detection annotation readers/writers against fixtures in the datasets' real on-disk layouts."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from vitp_geo.io.annotations import (
    DIOR_CLASSES,
    DOTA_V1_CLASSES,
    DOTA_V2_CLASSES,
    DOTA_V15_CLASSES,
    coco_classes,
    dota_header,
    read_coco,
    read_coco_results,
    read_dior,
    read_dior_r_xml,
    read_dota_label,
    read_dota_labels,
    read_task_results,
    read_voc_xml,
    write_coco_results,
    write_dior_r_xml,
    write_dota_label,
    write_task_results,
    write_voc_xml,
)

DATA = Path(__file__).resolve().parents[1] / "data"


def generator(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{name}_data", DATA / name / "data.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["dota", "dior", "coco"])
def test_committed_fixtures_are_what_the_generator_writes(name: str, tmp_path: Path) -> None:
    generator(name).main(tmp_path)
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert made
    for rel in made:
        committed = DATA / name / rel
        assert committed.is_file(), rel
        if rel.suffix in (".txt", ".xml", ".json"):
            assert committed.read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_class_lists() -> None:
    assert len(DOTA_V1_CLASSES) == 15 and len(DOTA_V15_CLASSES) == 16 and len(DOTA_V2_CLASSES) == 18
    assert DOTA_V15_CLASSES[-1] == "container-crane" and DOTA_V2_CLASSES[-2:] == ("airport", "helipad")
    assert len(DIOR_CLASSES) == 20 and len(set(DIOR_CLASSES)) == 20
    assert DIOR_CLASSES[6:9] == ("dam", "Expressway-Service-area", "Expressway-toll-station")


# ---------------------------------------------------------------- DOTA


def test_dota_v1_labels_match_the_truth() -> None:
    truth = generator("dota").objects()
    root = DATA / "dota" / "DOTA-v1.0" / "train"
    samples = read_dota_labels(root, DOTA_V1_CLASSES)  # the split folder: labelTxt/ found inside
    assert sorted(samples) == ["P0000", "P0001", "P0002"]
    for image, s in samples.items():
        t = truth[f"DOTA-v1.0/train/{image}"]
        np.testing.assert_allclose(s["bbox_xyxyxyxy"].numpy(), np.asarray(t["polys"]).reshape(-1, 8))
        assert s["label"].tolist() == [DOTA_V1_CLASSES.index(n) for n in t["names"]]
        assert s["difficult"].tolist() == t["difficult"]
        assert s["label"].dtype == torch.int64 and s["difficult"].dtype == torch.bool
        xy = np.asarray(t["polys"]).reshape(-1, 4, 2)
        if len(xy):
            np.testing.assert_allclose(s["bbox_xyxy"].numpy(), np.concatenate([xy.min(1), xy.max(1)], 1))
    assert samples["P0002"]["bbox_xyxyxyxy"].shape == (0, 8)  # the empty file: no objects
    assert any(any(s["difficult"].tolist()) for s in samples.values())
    assert dota_header(root / "labelTxt" / "P0000.txt") == {
        "imagesource": "GoogleEarth",
        "gsd": "0.146343590398",
    }


def test_dota_v2_floats_headers_and_a_degenerate_object(caplog: pytest.LogCaptureFixture) -> None:
    truth = generator("dota").objects()["DOTA-v2.0/val/P0003"]
    path = DATA / "dota" / "DOTA-v2.0" / "val" / "labelTxt" / "P0003.txt"
    with caplog.at_level(logging.WARNING):
        s = read_dota_label(path, DOTA_V2_CLASSES)
    assert "dropped 1 of 6 degenerate" in caplog.text and "P0003.txt" in caplog.text
    np.testing.assert_allclose(s["bbox_xyxyxyxy"].numpy(), np.asarray(truth["polys"][:5]), atol=1e-4)
    assert s["label"].tolist() == [DOTA_V2_CLASSES.index(n) for n in truth["names"][:5]]
    assert s["difficult"].tolist() == truth["difficult"][:5]
    assert dota_header(path)["acquisition dates"] == "2016-08-19"
    # class ids follow the list given, by name
    mine = ["helipad", "plane", "airport", "small-vehicle", "container-crane"]
    assert read_dota_label(path, mine)["label"].tolist() == [mine.index(n) for n in truth["names"][:5]]
    # v2.0 classes are unknown to v1.0: the error names the file, the line and the class
    with pytest.raises(ValueError, match=r"P0003\.txt:4: unknown class 'container-crane'"):
        read_dota_label(path, DOTA_V1_CLASSES)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("1 2 3 4 5 6 7 plane 0", r"bad\.txt:3: expected 8 coordinates .*got 7: '1 2 3 4 5 6 7 plane 0'"),
        (
            "1 2 3 4 5 6 7 8 plane 0 extra",
            r"bad\.txt:3: expected .*10 fields.*'1 2 3 4 5 6 7 8 plane 0 extra'",
        ),
        (
            "1 2 3 4 5 6 7 x8 plane 0",
            r"bad\.txt:3: expected 8 coordinates .*got 7: '1 2 3 4 5 6 7 x8 plane 0'",
        ),
        ("1 2 3 4 5 6 7 8 9 plane 0", r"bad\.txt:3: expected 8 coordinates .*got 9"),
        ("1 2 3 4 5 6 7 8 plane 3", r"bad\.txt:3: difficult flag must be 0, 1 or 2, got '3'"),
        ("1 2 3 4 5 6 7 8 aeroplane 0", r"bad\.txt:3: unknown class 'aeroplane'"),
    ],
)
def test_dota_malformed_lines_name_file_line_and_value(tmp_path: Path, line: str, match: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(f"imagesource:GoogleEarth\ngsd:0.5\n{line}\n")
    with pytest.raises(ValueError, match=match):
        read_dota_label(path, DOTA_V1_CLASSES)


def test_dota_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_dota_label(tmp_path / "nope.txt", DOTA_V1_CLASSES)
    (tmp_path / "e.txt").write_text("")
    assert read_dota_label(tmp_path / "e.txt", DOTA_V1_CLASSES)["label"].numel() == 0


def test_dota_label_write_read_round_trip(tmp_path: Path) -> None:
    s = read_dota_label(DATA / "dota" / "DOTA-v1.0" / "train" / "labelTxt" / "P0000.txt", DOTA_V1_CLASSES)
    out = write_dota_label(
        tmp_path / "labelTxt" / "P0000.txt", s, DOTA_V1_CLASSES, {"imagesource": "x", "gsd": "0.5"}
    )
    back = read_dota_label(out, DOTA_V1_CLASSES)
    for k in ("bbox_xyxyxyxy", "label", "difficult"):
        assert torch.equal(back[k], s[k]), k
    assert dota_header(out) == {"imagesource": "x", "gsd": "0.5"}
    assert not list(tmp_path.rglob(".*partial*"))


def _predictions() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for image, n in [("P0000", 4), ("P0001", 2)]:
        xy = torch.rand(n, 2, generator=g) * 100
        poly = torch.cat([xy, xy + torch.tensor([10.0, 0]), xy + 10, xy + torch.tensor([0, 10.0])], 1)
        out[image] = {
            "bbox_xyxyxyxy": poly.round(decimals=2),
            "label": torch.tensor([0, 4, 14, 4][:n]),
            "score": torch.rand(n, generator=g).round(decimals=4),
        }
    return out


def test_task1_and_task2_write_read_round_trip(tmp_path: Path) -> None:
    preds = _predictions()
    files = write_task_results(tmp_path / "task1", preds, DOTA_V1_CLASSES)
    assert len(files) == 15 and (tmp_path / "task1" / "Task1_small-vehicle.txt").is_file()
    line = (tmp_path / "task1" / "Task1_plane.txt").read_text().splitlines()[0].split()
    assert line[0] == "P0000" and len(line) == 10  # image score x1 y1 ... x4 y4
    back = read_task_results(tmp_path / "task1", DOTA_V1_CLASSES)
    assert sorted(back) == ["P0000", "P0001"]
    for image, p in preds.items():
        b = back[image]
        order_p = np.lexsort((p["score"].numpy(), p["label"].numpy()))
        order_b = np.lexsort((b["score"].numpy(), b["label"].numpy()))
        np.testing.assert_allclose(
            b["bbox_xyxyxyxy"].numpy()[order_b], p["bbox_xyxyxyxy"].numpy()[order_p], atol=1e-4
        )
        assert b["label"].numpy()[order_b].tolist() == p["label"].numpy()[order_p].tolist()
        np.testing.assert_allclose(b["score"].numpy()[order_b], p["score"].numpy()[order_p], atol=1e-6)
    write_task_results(tmp_path / "task2", preds, DOTA_V1_CLASSES, task=2)
    t2 = read_task_results(tmp_path / "task2", DOTA_V1_CLASSES)
    assert "bbox_xyxyxyxy" not in t2["P0000"] and t2["P0000"]["bbox_xyxy"].shape == (4, 4)


def test_task1_bad_files(tmp_path: Path) -> None:
    (tmp_path / "Task1_aeroplane.txt").write_text("P0000 0.5 0 0 1 0 1 1 0 1\n")
    with pytest.raises(ValueError, match=r"Task1_aeroplane\.txt \(file name\): unknown class 'aeroplane'"):
        read_task_results(tmp_path, DOTA_V1_CLASSES)
    (tmp_path / "Task1_aeroplane.txt").unlink()
    (tmp_path / "Task1_plane.txt").write_text("P0000 0.5 0 0 1 0 1 1 0 1\nP0001 high 0 0 1 0 1 1 0 1\n")
    with pytest.raises(ValueError, match=r"Task1_plane\.txt:2: expected a number, got 'high'"):
        read_task_results(tmp_path, DOTA_V1_CLASSES)
    with pytest.raises(FileNotFoundError, match="no Task1"):
        read_task_results(tmp_path / "..", DOTA_V1_CLASSES)


# ---------------------------------------------------------------- DIOR / DIOR-R


def test_dior_splits_horizontal_and_oriented_match_the_truth() -> None:
    truth = generator("dior").objects()
    root = DATA / "dior"
    train = read_dior(root, "train", DIOR_CLASSES)
    assert sorted(train) == ["00001", "00002"]
    test_r = read_dior(root, "test", DIOR_CLASSES, oriented=True)
    assert sorted(test_r) == ["00004"]
    for image in ["00001", "00002", "00003", "00004"]:
        t = truth[image]
        h = read_voc_xml(root / "Annotations" / "Horizontal Bounding Boxes" / f"{image}.xml", DIOR_CLASSES)
        o = read_dior_r_xml(root / "Annotations" / "Oriented Bounding Boxes" / f"{image}.xml", DIOR_CLASSES)
        np.testing.assert_allclose(h["bbox_xyxy"].numpy(), np.asarray(t["boxes"]).reshape(-1, 4))
        np.testing.assert_allclose(
            o["bbox_xyxyxyxy"].numpy(), np.asarray(t["polys"]).reshape(-1, 8), atol=1e-5
        )
        expected = [DIOR_CLASSES.index(n) for n in t["names"]]
        assert h["label"].tolist() == expected and o["label"].tolist() == expected
        assert "bbox_xyxyxyxy" not in h
    assert read_dior(root, "val", DIOR_CLASSES)["00003"]["label"].numel() == 0  # no objects
    # names match ignoring case (some exports lower-case the expressway classes)
    lower = [c.lower() for c in DIOR_CLASSES]
    assert (
        read_dior(root, "train", lower)["00001"]["label"].tolist()
        == read_dior(root, "train", DIOR_CLASSES)["00001"]["label"].tolist()
    )


def _xml(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "00009.xml"
    p.write_text(f"<annotation>\n<filename>00009.jpg</filename>\n{body}</annotation>\n")
    return p


def test_dior_bad_xml_names_file_line_and_value(tmp_path: Path) -> None:
    ok = "<object><name>ship</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>\n"
    bad = ok.replace("<xmax>5</xmax>", "<xmax>five</xmax>")
    with pytest.raises(ValueError, match=r"00009\.xml:4: <bndbox><xmax> must be a number, got 'five'"):
        read_voc_xml(_xml(tmp_path, ok + bad), DIOR_CLASSES)
    with pytest.raises(ValueError, match=r"00009\.xml:3: unknown class 'boat'"):
        read_voc_xml(_xml(tmp_path, ok.replace("ship", "boat")), DIOR_CLASSES)
    with pytest.raises(ValueError, match=r"00009\.xml:3: object without <robndbox><x_left_top>"):
        read_dior_r_xml(_xml(tmp_path, ok), DIOR_CLASSES)
    p = tmp_path / "broken.xml"
    p.write_text("<annotation>\n<object><name>ship</name>\n</annotation>\n")
    with pytest.raises(ValueError, match=r"broken\.xml:3: malformed XML \(mismatched tag, column 2\)$"):
        read_voc_xml(p, DIOR_CLASSES)  # the column said once (issue 20: "column 2, column 2")


def test_dior_zero_area_box_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    body = "<object><name>ship</name><bndbox><xmin>4</xmin><ymin>1</ymin><xmax>4</xmax><ymax>5</ymax></bndbox></object>\n"
    with caplog.at_level(logging.WARNING):
        s = read_voc_xml(_xml(tmp_path, body), DIOR_CLASSES)
    assert s["bbox_xyxy"].shape == (0, 4) and "dropped 1 of 1" in caplog.text


def test_dior_writers_round_trip(tmp_path: Path) -> None:
    root = DATA / "dior" / "Annotations"
    h = read_voc_xml(root / "Horizontal Bounding Boxes" / "00001.xml", DIOR_CLASSES)
    o = read_dior_r_xml(root / "Oriented Bounding Boxes" / "00001.xml", DIOR_CLASSES)
    h2 = read_voc_xml(write_voc_xml(tmp_path / "h.xml", h, DIOR_CLASSES, "00001.jpg", (64, 64)), DIOR_CLASSES)
    o2 = read_dior_r_xml(write_dior_r_xml(tmp_path / "o.xml", o, DIOR_CLASSES, "00001.jpg"), DIOR_CLASSES)
    assert torch.equal(h2["bbox_xyxy"], h["bbox_xyxy"]) and torch.equal(h2["label"], h["label"])
    torch.testing.assert_close(o2["bbox_xyxyxyxy"], o["bbox_xyxyxyxy"])


# ---------------------------------------------------------------- COCO


def test_coco_ground_truth_matches_the_truth() -> None:
    truth = generator("coco").objects()
    path = DATA / "coco" / "annotations" / "instances_train.json"
    assert coco_classes(path) == ["aircraft", "ship", "car"]  # by category id 1, 3, 7
    names = ["car", "ship", "aircraft"]
    s = read_coco(path, names)
    assert sorted(s) == ["000001", "000002", "000003"]
    for image, t in truth.items():
        b = np.asarray(t["boxes"]).reshape(-1, 4)
        np.testing.assert_allclose(
            s[image]["bbox_xyxy"].numpy(), np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1)
        )
        assert s[image]["label"].tolist() == [names.index(n) for n in t["names"]]
        assert s[image]["difficult"].tolist() == t["crowd"]
    assert s["000002"]["label"].numel() == 0


def test_coco_results_round_trip_and_errors(tmp_path: Path) -> None:
    gt_path = DATA / "coco" / "annotations" / "instances_train.json"
    gt = read_coco(gt_path)
    preds = {
        k: {
            "bbox_xyxy": v["bbox_xyxy"],
            "label": v["label"],
            "score": torch.linspace(0.9, 0.1, len(v["label"])),
        }
        for k, v in gt.items()
    }
    out = write_coco_results(tmp_path / "res.json", preds, gt_path)
    rows = json.loads(out.read_text())
    assert {r["category_id"] for r in rows} <= {1, 3, 7} and {r["image_id"] for r in rows} <= {100, 101, 102}
    back = read_coco_results(out, gt_path)
    for k, v in back.items():
        torch.testing.assert_close(v["bbox_xyxy"], preds[k]["bbox_xyxy"])
        assert torch.equal(v["label"], preds[k]["label"])
    rows[1]["bbox"] = [1, 2, 3]
    (tmp_path / "bad.json").write_text(json.dumps(rows))
    with pytest.raises(
        ValueError, match=r"bad\.json \(\[1\]\): bbox must be \[x, y, width, height\], got \[1, 2, 3\]"
    ):
        read_coco_results(tmp_path / "bad.json", gt_path)
    with pytest.raises(ValueError, match=r"category id 7\): unknown class 'car'"):
        read_coco(gt_path, ["aircraft", "ship"])
    (tmp_path / "trunc.json").write_text('{"images": [\n')
    with pytest.raises(ValueError, match=r"trunc\.json:2: malformed JSON"):
        read_coco(tmp_path / "trunc.json")
