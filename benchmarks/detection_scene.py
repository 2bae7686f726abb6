"""Whole-scene detection vs the bare detector over the same windows (goal: <= 1.15x).

The bare run calls the detector on every window of the scene, already read into memory, batch by
batch; the whole-scene run is ``vitp_geo.tiling.detection_outputs.detect_scene_to_vector`` on the
same scene (window reading, cross-window merge in map coordinates, rotated NMS, styled GeoPackage
writing). The detector is a real checkpoint in the finetune format (the tiny ViT with a Rotated
Faster R-CNN; ``--checkpoint`` takes a trained one); untrained, it returns many low-confidence
boxes, so ``--min-score 0`` gives the merge a heavy load. The cross-window merge alone
(``tiling.window_detections.DetectionMerger``, the ``tiling.box_merge`` rule: cut boxes joined across
seams, then class-wise rotated NMS at the checkpoint's threshold) is also timed on the bare run's
window outputs, which on a loaded machine is steadier than the difference of two long runs.
Prints seconds and the ratio::

    .venv/bin/python benchmarks/detection_scene.py [--size 1344] [--tile 224] [--checkpoint det.ckpt] [--repeat 3]
    .venv/bin/python benchmarks/rotated_iou_nms.py --part scene      # the same, through the ops benchmark
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import torch


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1344, help="scene side in pixels")
    p.add_argument("--tile", type=int, default=224, help="window side")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeat", type=int, default=1, help="best of N interleaved runs of each")
    p.add_argument("--min-score", type=float, default=0.0, help="0 keeps every detection (heaviest merge)")
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="a detection model.ckpt (default: tiny, untrained)"
    )
    args = p.parse_args(argv)

    from vitp_geo.io.qgis_styles import ClassStyle
    from vitp_geo.io.raster import RenderRule
    from vitp_geo.synthetic.scene import generate_scene, write_scene

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny checkpoint writer
    from tiny_checkpoints import save_tiny_checkpoint

    from vitp_geo.tasks import load_inference_model
    from vitp_geo.tiling.box_merge import card_nms_threshold
    from vitp_geo.tiling.detection_outputs import DetectionRunConfig, ModuleDetector, detect_scene_to_vector
    from vitp_geo.tiling.planner import plan_windows
    from vitp_geo.tiling.reader import SceneWindowReader
    from vitp_geo.tiling.window_detections import DetectionMerger

    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ckpt = args.checkpoint or save_tiny_checkpoint(
            d / "det.ckpt", task="detection", num_classes=1, tile_size=args.tile, class_names=["building"]
        )
        module, card = load_inference_model(ckpt)
        scene = write_scene(generate_scene(0, args.size, scene_class=0), d, stem="scene").image
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        detector = ModuleDetector(module, device)
        rule = RenderRule(bands=tuple(card.bands))
        raw = bool(card.render.get("raw", False))

        with SceneWindowReader([scene], rule, card.mean, card.std, raw=raw) as reader:
            plan = plan_windows(reader.height, reader.width, args.tile, args.overlap)
            transform, height, width = reader.profile["transform"], reader.height, reader.width
            windows = [
                reader.read(r, c, plan.tile_h, plan.tile_w)[0]
                for r in plan.row_offsets
                for c in plan.col_offsets
            ]
        batches = [
            torch.from_numpy(np.stack(windows[i : i + args.batch_size]))
            for i in range(0, len(windows), args.batch_size)
        ]
        detector(batches[0])  # warm-up (allocator, kernels)

        def run_bare() -> tuple[float, list[dict[str, torch.Tensor]]]:
            t0 = time.perf_counter()
            outs = [o for b in batches for o in detector(b)]
            return time.perf_counter() - t0, outs

        bare, outs = run_bare()
        n_boxes = sum(len(o["boxes"]) for o in outs)

        iou = card_nms_threshold(card.arch)
        t0 = time.perf_counter()
        merger = DetectionMerger(transform, height, width, iou)
        positions = [(r, c) for r in plan.row_offsets for c in plan.col_offsets]
        for (r, c), o in zip(positions, outs, strict=True):
            keep = o["scores"].numpy() >= args.min_score
            merger.add(
                r,
                c,
                plan.tile_h,
                plan.tile_w,
                o["boxes"].numpy()[keep],
                o["scores"].numpy()[keep],
                o["labels"].numpy()[keep],
            )
        merged = merger.merged()
        merge = time.perf_counter() - t0
        n_joined = int((merged.source < 0).sum())

        def run_whole() -> tuple[float, gpd.GeoDataFrame]:
            t0 = time.perf_counter()
            frame = detect_scene_to_vector(
                scene,
                module,
                ClassStyle(card.class_names, card.class_colors),
                d / "det.gpkg",
                rule=rule,
                mean=card.mean,
                std=card.std,
                raw_input=raw,
                config=DetectionRunConfig(
                    tile_size=args.tile,
                    overlap=args.overlap,
                    batch_size=args.batch_size,
                    min_score=args.min_score,
                    progress=False,
                ),
                device=device,
            )
            return time.perf_counter() - t0, frame

        whole, frame = run_whole()
        for _ in range(args.repeat - 1):  # interleaved, best of each: a shared machine's load comes and goes
            bare = min(bare, run_bare()[0])
            whole = min(whole, run_whole()[0])
    print(f"scene {args.size}x{args.size}, {len(windows)} windows of {args.tile} px, device {device}")
    print(f"  bare detector     {bare:8.2f} s   ({n_boxes} window boxes)")
    print(f"  whole scene       {whole:8.2f} s   ({len(frame)} merged polygons written)")
    print(
        f"  merge alone       {merge:8.2f} s   ({len(merged.scores)} kept at NMS {iou:g}, {n_joined} joined "
        f"from cut parts; {merge / bare:.3f} of the bare time)"
    )
    print(f"  ratio             {whole / bare:8.3f}x   (goal <= 1.15x)")


if __name__ == "__main__":
    main()
