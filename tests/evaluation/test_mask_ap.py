"""COCO mask AP (``segm``): ``evaluate_coco(iou_type="segm")`` against pycocotools' own COCOeval,
and COCO ``segmentation`` polygons / RLEs read as COCO rasterises them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vitp_geo.evaluation.detection import evaluate_coco, masks_to_rle
from vitp_geo.io.annotations.coco import read_coco, read_coco_results
from vitp_geo.io.annotations.samples import ParseError

H, W = 24, 32


def _ground_truth() -> dict:
    """Two images, two classes; objects given as polygons (one with two rings)."""
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "height": H, "width": W},
            {"id": 2, "file_name": "b.png", "height": H, "width": W},
        ],
        "categories": [{"id": 5, "name": "ship"}, {"id": 9, "name": "tank"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 2, 10, 6], "iscrowd": 0,
             "segmentation": [[2, 2, 12, 2, 12, 8, 2, 8]]},
            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [15, 10, 10, 10], "iscrowd": 0,
             "segmentation": [[15, 10, 25, 10, 15, 20]]},
            {"id": 3, "image_id": 2, "category_id": 5, "bbox": [4, 4, 22, 12], "iscrowd": 0,
             "segmentation": [[4, 4, 10, 4, 10, 16, 4, 16], [20, 4, 26, 4, 26, 10, 20, 10]]},
        ],
    }  # fmt: skip


def _detections() -> list[dict]:
    """Masks that overlap the objects more or less well, and a false positive, with scores."""

    def rle(y1: int, y2: int, x1: int, x2: int) -> dict:
        m = np.zeros((H, W), np.uint8)
        m[y1:y2, x1:x2] = 1
        r = mask_utils.encode(np.asfortranarray(m))
        return {"size": r["size"], "counts": r["counts"].decode("ascii")}

    return [
        {"image_id": 1, "category_id": 5, "bbox": [2, 2, 10, 6], "score": 0.9, "segmentation": rle(2, 8, 2, 12)},
        {"image_id": 1, "category_id": 9, "bbox": [15, 10, 10, 10], "score": 0.8, "segmentation": rle(10, 20, 15, 21)},
        {"image_id": 2, "category_id": 5, "bbox": [4, 4, 6, 12], "score": 0.7, "segmentation": rle(4, 16, 4, 10)},
        {"image_id": 2, "category_id": 5, "bbox": [0, 18, 8, 4], "score": 0.95, "segmentation": rle(18, 22, 0, 8)},
        {"image_id": 2, "category_id": 9, "bbox": [20, 4, 6, 6], "score": 0.3, "segmentation": rle(4, 10, 20, 26)},
    ]  # fmt: skip


def _pycocotools_segm_ap(gt: dict, dets: list[dict]) -> float:
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    for a in coco.dataset["annotations"]:  # the mask's own area (COCO's small / medium / large)
        a["area"] = float(mask_utils.area(coco.annToRLE(a)))
    res = coco.loadRes(copy.deepcopy(dets))
    ev = COCOeval(coco, res, iouType="segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[0])


def test_mask_ap_matches_pycocotools_cocoeval(tmp_path: Path) -> None:
    gt, dets = _ground_truth(), _detections()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(dets))
    expected = _pycocotools_segm_ap(gt, dets)
    assert 0.2 < expected < 0.9  # neither perfect nor nothing: the test can tell rankings apart
    truth = read_coco(tmp_path / "gt.json", masks=True)
    found = read_coco_results(tmp_path / "res.json", tmp_path / "gt.json", masks=True)
    result = evaluate_coco(truth, found, ["ship", "tank"], iou_type="segm")
    assert result.mean_ap == pytest.approx(expected, abs=1e-6)
    assert result.to_dict()["iou_type"] == "segm"
    # box AP of the same detections differs (the boxes are exact where the masks are not)
    assert evaluate_coco(truth, found, ["ship", "tank"]).mean_ap != pytest.approx(expected, abs=1e-3)


def test_polygon_rasterised_as_coco_does(tmp_path: Path) -> None:
    """COCO's polygon rule: a pixel is in when its centre lies strictly inside. The rectangle
    (2, 2)–(12, 8) covers columns 2..11 of rows 2..7; the two-ring object is the union of its two
    rectangles; the triangle's pixels whose centres lie on its hypotenuse are out."""
    (tmp_path / "gt.json").write_text(json.dumps(_ground_truth()))
    truth = read_coco(tmp_path / "gt.json", masks=True)
    rect = mask_utils.decode(truth["a"]["segmentation"][0])
    expected = np.zeros((H, W), np.uint8)
    expected[2:8, 2:12] = 1
    np.testing.assert_array_equal(rect, expected)
    two = mask_utils.decode(truth["b"]["segmentation"][0])
    expected = np.zeros((H, W), np.uint8)
    expected[4:16, 4:10] = 1
    expected[4:10, 20:26] = 1
    np.testing.assert_array_equal(two, expected)
    # the triangle (15, 10), (25, 10), (15, 20), inside where x + y < 35: row 10 + k (centre
    # y = 10.5 + k) holds the columns c with c + 0.5 < 24.5 - k, i.e. 15 .. 23 - k
    tri = mask_utils.decode(truth["a"]["segmentation"][1])
    for k in range(10):
        assert tri[10 + k].nonzero()[0].tolist() == list(range(15, 24 - k)), k
    assert not tri[20:].any() and not tri[:10].any()


def test_masks_to_rle_round_trip() -> None:
    m = torch.zeros(2, 5, 7, dtype=torch.bool)
    m[0, 1:3, 2:6] = True
    m[1, 4, 0] = True
    rles = masks_to_rle(m)
    assert [int(mask_utils.area(r)) for r in rles] == [8, 1]
    np.testing.assert_array_equal(mask_utils.decode(rles).transpose(2, 0, 1), m.numpy())


def test_bad_segmentation_names_the_annotation(tmp_path: Path) -> None:
    gt = _ground_truth()
    gt["annotations"][1]["segmentation"] = []
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    read_coco(tmp_path / "gt.json")  # boxes alone do not need it
    with pytest.raises(ParseError, match=r"annotations\[1\] \(id 2\).*non-empty list of polygons"):
        read_coco(tmp_path / "gt.json", masks=True)
