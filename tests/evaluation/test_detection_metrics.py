"""VOC07 / VOC12 AP with the DOTA devkit rules, and COCO mAP, on cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitp_geo.evaluation.detection_map import evaluate_coco, evaluate_voc, voc_ap
from vitp_geo.geometry.obb import hbb_to_obb, obb_to_poly


def sq(x: float, y: float, s: float = 10.0) -> list[float]:
    return [x, y, x + s, y + s]


def ranked_case() -> tuple[dict, dict]:
    """One image, 4 objects + 1 difficult; six ranked detections:
    TP (g1), FP (nothing), TP (g2), on the difficult object, duplicate of g1, TP (g3). g4 missed."""
    g = [sq(0, 0), sq(100, 0), sq(200, 0), sq(300, 0), sq(400, 0)]  # g5 = sq(400, 0) is difficult
    gt = {
        "img": {
            "bbox_xyxy": torch.tensor(g),
            "label": torch.zeros(5, dtype=torch.long),
            "difficult": torch.tensor([False, False, False, False, True]),
        }
    }
    d = [sq(1, 0), sq(600, 600), sq(100, 1), sq(401, 0), sq(0, 1), sq(201, 1)]
    pred = {
        "img": {
            "bbox_xyxy": torch.tensor(d),
            "label": torch.zeros(6, dtype=torch.long),
            "score": torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]),
        }
    }
    return gt, pred


def test_voc07_and_voc12_by_hand() -> None:
    gt, pred = ranked_case()
    # by hand: recall    .25 .25  .5  .5  .5 .75   (the difficult hit adds neither TP nor FP)
    #          precision  1  .5  2/3 2/3  .5  .6
    # VOC07: max precision at recall >= 0, .1, ..., 1: 1 1 1 2/3 2/3 2/3 .6 .6 0 0 0 -> 6.2 / 11
    # VOC12: .25 * (1 + 2/3 + .6 + 0)
    r07 = evaluate_voc(gt, pred, ["plane"], metric="voc07")
    r12 = evaluate_voc(gt, pred, ["plane"], metric="voc12")
    assert r07.per_class["plane"].ap == pytest.approx(6.2 / 11, abs=1e-12)
    assert r12.per_class["plane"].ap == pytest.approx(0.25 * (1 + 2 / 3 + 0.6), abs=1e-12)
    assert r07.mean_ap == r07.per_class["plane"].ap
    c = r07.per_class["plane"]
    assert c.recall == 0.75 and c.num_gt == 4 and c.num_pred == 6  # difficult not in the positives


def test_voc_ap_on_a_ranked_list_directly() -> None:
    rec = np.array([0.5, 0.5, 1.0])
    prec = np.array([1.0, 0.5, 2 / 3])
    assert voc_ap(rec, prec, "voc12") == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert voc_ap(rec, prec, "voc07") == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def test_difficult_objects_are_neither_tp_nor_fp() -> None:
    gt, pred = ranked_case()
    base = evaluate_voc(gt, pred, ["plane"], metric="voc12").per_class["plane"]
    # dropping the detection of the difficult object changes nothing
    keep = torch.tensor([0, 1, 2, 4, 5])
    pred2 = {"img": {k: v[keep] for k, v in pred["img"].items()}}
    assert evaluate_voc(gt, pred2, ["plane"], metric="voc12").per_class["plane"].ap == pytest.approx(base.ap)
    # without the flag the object counts: the 4th detection becomes a TP, 5 positives
    gt3 = {"img": {**gt["img"], "difficult": torch.zeros(5, dtype=torch.bool)}}
    c = evaluate_voc(gt3, pred, ["plane"], metric="voc12").per_class["plane"]
    assert c.num_gt == 5 and c.recall == pytest.approx(4 / 5)
    # recall .2 .2 .4 .6 .6 .8 ; precision 1 .5 2/3 3/4 3/5 2/3 -> envelope 1, 3/4, 3/4, 2/3, 0
    assert c.ap == pytest.approx(0.2 * 1 + 0.2 * 0.75 + 0.2 * 0.75 + 0.2 * 2 / 3)


def test_iou_exactly_at_the_threshold_is_a_miss() -> None:
    gt = {"a": {"bbox_xyxy": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "label": torch.tensor([0])}}
    half = {
        "a": {
            "bbox_xyxy": torch.tensor([[0.0, 0.0, 10.0, 5.0]]),
            "label": torch.tensor([0]),
            "score": torch.tensor([0.9]),
        }
    }
    assert evaluate_voc(gt, half, ["x"], iou_threshold=0.5).per_class["x"].ap == 0.0  # IoU 0.5 exactly
    more = {"a": {**half["a"], "bbox_xyxy": torch.tensor([[0.0, 0.0, 10.0, 5.01]])}}
    assert evaluate_voc(gt, more, ["x"], iou_threshold=0.5).per_class["x"].ap == 1.0


def _random_scene(seed: int, n_img: int = 6) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    gt, pred = {}, {}
    for i in range(n_img):
        n = int(torch.randint(0, 8, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 200
        wh = torch.rand(n, 2, generator=g) * 40 + 5
        gt[f"im{i}"] = {
            "bbox_xyxy": torch.cat([xy, xy + wh], 1),
            "label": torch.randint(0, 3, (n,), generator=g),
            "difficult": torch.rand(n, generator=g) < 0.2,
        }
        # noisy copies of the objects plus some clutter
        m = n + 4
        src = torch.randint(0, max(n, 1), (m,), generator=g)
        base = gt[f"im{i}"]["bbox_xyxy"][src] if n else torch.zeros(m, 4)
        noisy = base + torch.randn(m, 4, generator=g) * 4
        noisy[:, 2:] = torch.maximum(noisy[:, 2:], noisy[:, :2] + 1)
        lab = gt[f"im{i}"]["label"][src] if n else torch.zeros(m, dtype=torch.long)
        flip = torch.rand(m, generator=g) < 0.2
        pred[f"im{i}"] = {
            "bbox_xyxy": noisy,
            "label": torch.where(flip, (lab + 1) % 3, lab),
            "score": torch.rand(m, generator=g),
        }
    return gt, pred


def _as_oriented(samples: dict) -> dict:
    out = {}
    for k, s in samples.items():
        poly = obb_to_poly(hbb_to_obb(s["bbox_xyxy"].double()))  # angle 0 or -pi/2, other corner order
        out[k] = {**{n: v for n, v in s.items() if n != "bbox_xyxy"}, "bbox_xyxyxyxy": poly}
    return out


@pytest.mark.parametrize("metric", ["voc07", "voc12"])
def test_angle_zero_oriented_path_equals_horizontal_path(metric: str) -> None:
    gt, pred = _random_scene(1)
    names = ["a", "b", "c"]
    h = evaluate_voc(gt, pred, names, metric=metric)
    o = evaluate_voc(_as_oriented(gt), _as_oriented(pred), names, metric=metric)
    assert h.mean_ap is not None and 0.05 < h.mean_ap < 0.95  # neither trivial nor empty
    for n in names:
        assert o.per_class[n].ap == pytest.approx(h.per_class[n].ap, abs=1e-12)
        assert o.per_class[n].recall == pytest.approx(h.per_class[n].recall, abs=1e-12)


def test_oriented_boxes_use_polygon_iou_not_their_bounds() -> None:
    # a 45-degree square against its own bounding box: polygon IoU 0.5, bounds IoU 1
    s = 10 / math.sqrt(2)
    diamond = obb_to_poly(torch.tensor([[5.0, 5.0, 10.0, 10.0, math.pi / 4]]))
    assert float(diamond.reshape(4, 2)[:, 0].min()) == pytest.approx(5 - s)
    gt = {"a": {"bbox_xyxyxyxy": diamond, "label": torch.tensor([0])}}
    b = 5 - s, 5 + s
    pred = {
        "a": {
            "bbox_xyxy": torch.tensor([[b[0], b[0], b[1], b[1]]]),
            "label": torch.tensor([0]),
            "score": torch.tensor([1.0]),
        }
    }
    assert evaluate_voc(gt, pred, ["x"], iou_threshold=0.45).per_class["x"].ap == 1.0
    assert evaluate_voc(gt, pred, ["x"], iou_threshold=0.55).per_class["x"].ap == 0.0


def test_mean_skips_classes_without_positives_and_bad_inputs_are_named() -> None:
    gt, pred = ranked_case()
    r = evaluate_voc(gt, pred, ["plane", "ship"])
    assert r.per_class["ship"].ap is None and r.mean_ap == r.per_class["plane"].ap
    with pytest.raises(ValueError, match="without ground truth.*ghost"):
        evaluate_voc(gt, {**pred, "ghost": pred["img"]}, ["plane"])
    with pytest.raises(ValueError, match="label 3 outside"):
        evaluate_voc(gt, {"img": {**pred["img"], "label": torch.full((6,), 3)}}, ["plane"])


def test_coco_map_by_hand() -> None:
    # class 0: one object, one detection at IoU 0.82 -> matched at IoU 0.50 .. 0.80 (7 of 10): AP .7
    # class 1: one object; a false positive ranked above the exact detection: precision 1/2 at
    #          recall 1 at every threshold -> AP .5.  mAP = .6
    gt = {
        "a": {
            "bbox_xyxy": torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 70.0, 60.0]]),
            "label": torch.tensor([0, 1]),
        }
    }
    pred = {
        "a": {
            "bbox_xyxy": torch.tensor(
                [[0.0, 0.0, 10.0, 8.2], [100.0, 100.0, 110.0, 110.0], [50.0, 50.0, 70.0, 60.0]]
            ),
            "label": torch.tensor([0, 1, 1]),
            "score": torch.tensor([0.9, 0.8, 0.7]),
        }
    }
    r = evaluate_coco(gt, pred, ["car", "ship", "tank"])
    assert r.per_class["car"].ap == pytest.approx(0.7, abs=1e-6)
    assert r.per_class["ship"].ap == pytest.approx(0.5, abs=1e-6)
    assert r.per_class["tank"].ap is None
    assert r.mean_ap == pytest.approx(0.6, abs=1e-6)
    assert r.per_class["car"].recall == pytest.approx(0.7, abs=1e-6)  # AR: recalled at 7 of 10 thresholds
    d = r.to_dict()
    assert d["mAP"] == pytest.approx(0.6, abs=1e-6) and d["per_class"]["ship"]["num_gt"] == 1


def test_non_convex_annotations_use_exact_polygon_iou() -> None:
    from shapely.geometry import Polygon

    from vitp_geo.evaluation.detection_map import polygon_iou

    dart = np.array([[0, 0, 10, 0, 3, 3, 0, 10]], dtype=np.float64)  # one reflex corner
    square = np.array([[0, 0, 6, 0, 6, 6, 0, 6], [20, 20, 30, 20, 30, 30, 20, 30]], dtype=np.float64)
    got = polygon_iou(dart, square)
    d, s0 = Polygon(dart[0].reshape(4, 2)), Polygon(square[0].reshape(4, 2))
    want = d.intersection(s0).area / d.union(s0).area
    assert got[0, 0] == pytest.approx(want, abs=1e-12) and got[0, 1] == 0.0
    assert abs(want - quad_iou_of_hull(dart, square[:1])) > 0.05  # the convex path would be wrong here


def quad_iou_of_hull(a: np.ndarray, b: np.ndarray) -> float:
    from shapely.geometry import Polygon

    pa, pb = Polygon(a[0].reshape(4, 2)).convex_hull, Polygon(b[0].reshape(4, 2))
    return pa.intersection(pb).area / pa.union(pb).area


def test_accumulator_matches_evaluate_voc_and_takes_torchvision_style_dicts() -> None:
    from vitp_geo.evaluation.detection_map import VOCMeanAP

    gt, pred = _random_scene(3, n_img=5)
    names = ["a", "b", "c"]
    want = evaluate_voc(gt, pred, names, metric="voc12")
    acc = VOCMeanAP(names, "voc12")
    keys = list(gt)
    for lo in (0, 2):  # two batches, torchvision-style keys; oriented (N, 5) boxes for the second
        batch = keys[lo : lo + 3] if lo else keys[:2]
        preds, targets = [], []
        for k in batch:
            p, t = pred[k], gt[k]
            boxes = p["bbox_xyxy"] if not lo else hbb_to_obb(p["bbox_xyxy"].double())
            preds.append({"boxes": boxes, "labels": p["label"], "scores": p["score"]})
            targets.append({"boxes": t["bbox_xyxy"], "labels": t["label"], "difficult": t["difficult"]})
        acc.update(preds, targets)
    got = acc.compute()
    for n in names:
        assert got.per_class[n].ap == pytest.approx(want.per_class[n].ap, abs=1e-12)
    acc.reset()
    with pytest.raises(ValueError, match="2 predictions for 1 targets"):
        acc.update([pred["im0"], pred["im1"]], [gt["im0"]])
