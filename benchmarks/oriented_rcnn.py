"""Oriented R-CNN against Rotated Faster R-CNN on the embedded detection default, side by side.

Both detectors train the embedded ``vitp-geo finetune detection`` run (oriented buildings in
generated scenes, the same data, seed and schedule); only ``rpn`` differs (``horizontal`` vs
``oriented``). Printed per detector: wall time of the training run, validation mAP50 on oriented
and on horizontal boxes, and the RPN's recall of the validation buildings with its best
``--proposals`` proposals (a building counts as found when a proposal overlaps it by rotated IoU
≥ 0.5; horizontal proposals are scored as angle-0 boxes, which is all they can be). Then the ratios
oriented / horizontal.

Run alone (torch jobs on a shared CPU slow each other many times over):

    python benchmarks/oriented_rcnn.py --out /tmp/orcnn [--epochs 8] [--proposals 300]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _recall(ckpt: Path, cfg: dict, proposals: int, iou: float = 0.5) -> tuple[float, int]:
    """Share of validation buildings covered (rotated IoU ≥ ``iou``) by the RPN's best proposals."""
    from vitp_geo.datamodules.detection import GeoTiffDetectionDataModule

    from vitp_geo.geometry.obb import poly_to_obb, rotated_iou
    from vitp_geo.models.detection.oriented_heads import hbb_rois
    from vitp_geo.tasks import load_inference_model

    model, _card = load_inference_model(ckpt)
    model.eval()
    model.rpn._post_nms_top_n["testing"] = proposals  # type: ignore[union-attr,index]
    dm = GeoTiffDetectionDataModule(**cfg["data"]["init_args"])
    dm.setup("fit")
    found = total = 0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            images = batch["image"]  # normalised by the dataset
            image_list, _ = model.transform(list(images), None)  # type: ignore[union-attr]
            props, _ = model.rpn(image_list, model.features(image_list.tensors))  # type: ignore[union-attr]
            for p, polys in zip(props, batch["bbox_xyxyxyxy"], strict=True):
                gt = poly_to_obb(torch.as_tensor(polys).float().reshape(-1, 8))
                if len(gt) == 0:
                    continue
                boxes = p[:proposals]
                boxes = boxes if boxes.shape[-1] == 5 else hbb_rois(boxes)
                total += len(gt)
                if len(boxes):
                    found += int((rotated_iou(gt, boxes).max(dim=1).values >= iou).sum())
    return found / max(total, 1), total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="work folder (data and the two runs)")
    p.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: the embedded default's)"
    )
    p.add_argument("--proposals", type=int, default=300, help="proposals per image for the recall")
    args = p.parse_args()

    from vitp_geo.tasks.detection_default import detection_default_config
    from vitp_geo.tasks.run import fit

    base = detection_default_config(args.out / "data")
    if args.epochs is not None:
        base["trainer"]["max_epochs"] = args.epochs
    rows = {}
    for rpn in ("horizontal", "oriented"):
        cfg = copy.deepcopy(base)
        cfg["model"]["init_args"]["rpn"] = rpn
        out = args.out / rpn
        start = time.perf_counter()
        summary = fit(cfg, "detection", out, progress=False, source="benchmark")
        wall = time.perf_counter() - start
        recall, n = _recall(out / "model.ckpt", cfg, args.proposals)
        val = summary["validation"]
        rows[rpn] = (wall, float(val["val_map50"]), float(val["val_map50_hbb"]), recall)
        print(
            f"{rpn:<10} train {wall:6.1f} s   mAP50 obb {rows[rpn][1]:.3f}   hbb {rows[rpn][2]:.3f}   "
            f"RPN recall@{args.proposals} (rotated IoU 0.5, {n} buildings) {recall:.3f}",
            flush=True,
        )
    h, o = rows["horizontal"], rows["oriented"]
    print(
        f"oriented / horizontal: time {o[0] / h[0]:.2f}x   mAP50 obb {o[1] / max(h[1], 1e-9):.2f}x   "
        f"hbb {o[2] / max(h[2], 1e-9):.2f}x   recall {o[3] / max(h[3], 1e-9):.2f}x"
    )


if __name__ == "__main__":
    main()
