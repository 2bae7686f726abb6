"""Rotated IoU and rotated NMS as tensor ops vs a shapely loop, on 2,000 and 20,000 boxes.

Boxes are detector-like: objects scattered over a scene (density of a DOTA 1024 px patch),
each seen by several jittered, rotated detections with random scores. Two measurements per size:

1. **IoU**: the IoU of every pair whose axis-aligned bounds overlap (the work NMS and matching
   need): ``rotated_iou_aligned`` on the pairs vs shapely ``intersection().area`` in a loop.
2. **NMS**: ``rotated_nms`` (IoU 0.1, the papers' final threshold) vs ``nms_polygons``
   (shapely polygons + STRtree, the previous scene-merge rule); the kept indices must agree.

Prints the times and the ratio ours / shapely (goal <= 0.1x). Times are the best of ``--repeat``
runs, after one warm-up. ``--device cuda`` times the tensor side on a GPU (synchronised).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rotated_iou_nms.py
    .venv/bin/python benchmarks/rotated_iou_nms.py --sizes 2000 20000 --device cuda
    .venv/bin/python benchmarks/rotated_iou_nms.py --part scene    # whole-scene detection (see below)

``--part scene`` runs ``benchmarks/detection_scene.py`` (whole-scene detection vs the bare
detector over the same windows, goal <= 1.15x) when that file exists: its ``main(argv)`` gets the
remaining arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from shapely.geometry import Polygon

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vitp_geo.geometry.obb import (  # noqa: E402
    _candidate_pairs,
    obb_to_hbb,
    obb_to_poly,
    rotated_iou_aligned,
    rotated_nms,
)
from vitp_geo.tiling.window_detections import nms_polygons  # noqa: E402


def detections(n: int, seed: int = 0, per_object: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 5) boxes and (n,) scores: n / per_object objects, per_object noisy views of each."""
    g = torch.Generator().manual_seed(seed)
    m = max(1, n // per_object)
    side = 1024 * math.sqrt(m / 150)  # ~150 objects per 1024 x 1024 patch
    obj = torch.cat(
        [
            torch.rand(m, 2, generator=g) * side,
            torch.rand(m, 1, generator=g) * 40 + 10,
            torch.rand(m, 1, generator=g) * 15 + 5,
            (torch.rand(m, 1, generator=g) - 0.5) * math.pi,
        ],
        1,
    )
    b = obj.repeat_interleave(per_object, 0)[:n]
    noise = torch.randn(n, 5, generator=g) * torch.tensor([2.0, 2.0, 3.0, 1.5, 0.08])
    b = b + noise
    b[:, 2:4] = b[:, 2:4].clamp_min(2.0)
    return b, torch.rand(n, generator=g)


def best_of(fn: Callable[[], object], repeat: int, sync: Callable[[], None]) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times)


def shapely_pair_iou(pa: list[Polygon], pb: list[Polygon]) -> list[float]:
    out = []
    for x, y in zip(pa, pb, strict=True):
        inter = x.intersection(y).area
        out.append(inter / (x.area + y.area - inter))
    return out


def run_size(n: int, device: str, repeat: int) -> None:
    boxes, scores = detections(n)
    polys = [Polygon(p.reshape(4, 2).tolist()) for p in obb_to_poly(boxes.double())]
    i, j = _candidate_pairs(obb_to_hbb(boxes))
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    bd, sd = boxes.to(dev), scores.to(dev)
    a, b = bd[i.to(dev)], bd[j.to(dev)]
    pa, pb = [polys[k] for k in i.tolist()], [polys[k] for k in j.tolist()]

    t_iou = best_of(lambda: rotated_iou_aligned(a, b), repeat, sync)
    t_iou_ref = best_of(lambda: shapely_pair_iou(pa, pb), 1, lambda: None)
    ours = rotated_iou_aligned(a.double(), b.double()).cpu()
    ref = torch.tensor(shapely_pair_iou(pa, pb), dtype=torch.float64)
    err = float((ours - ref).abs().max()) if len(ref) else 0.0

    t_nms = best_of(lambda: rotated_nms(bd, sd, 0.1), repeat, sync)
    t_nms_ref = best_of(lambda: nms_polygons(polys, scores.tolist(), 0.1), 1, lambda: None)
    same = rotated_nms(bd, sd, 0.1).cpu().tolist() == nms_polygons(polys, scores.tolist(), 0.1)

    print(f"{n:>6} boxes, {len(i):>7} overlapping pairs ({device})")
    print(
        f"   IoU   tensor {t_iou * 1e3:9.1f} ms   shapely {t_iou_ref * 1e3:9.1f} ms   ratio {t_iou / t_iou_ref:6.3f}x   max |diff| {err:.1e}"
    )
    print(
        f"   NMS   tensor {t_nms * 1e3:9.1f} ms   shapely {t_nms_ref * 1e3:9.1f} ms   ratio {t_nms / t_nms_ref:6.3f}x   same kept: {same}"
    )


def run_scene_part(argv: list[str]) -> None:
    path = Path(__file__).with_name("detection_scene.py")
    if not path.is_file():
        raise SystemExit(f"--part scene needs {path} (whole-scene detection benchmark), not present yet")
    spec = importlib.util.spec_from_file_location("detection_scene", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(argv)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--part", choices=["ops", "scene"], default="ops", help="ops: IoU/NMS (default); scene: whole scene"
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=3)
    args, rest = p.parse_known_args(argv)
    if args.part == "scene":
        run_scene_part(rest)
        return
    if rest:
        p.error(f"unrecognised arguments: {' '.join(rest)}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for n in args.sizes:
        run_size(n, args.device, args.repeat)


if __name__ == "__main__":
    main()
