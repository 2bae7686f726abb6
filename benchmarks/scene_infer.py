"""Scene inference, side by side: our streaming engine vs the bare model vs MONAI.

One run prints three comparisons on generated scenes (the synthetic world, tiled block by block
into a big GeoTIFF so that no scene-sized array exists even while generating):

1. **Overhead** (default 2048² scene, a small 3-layer conv net): ``segment_scene`` (read, render, model, blend, write raw rows, COG) vs the bare
   model over the same windows (read + normalise + forward, nothing kept). Aim ≤ 1.15×.
2. **Memory vs scene size**: peak resident memory of the engine on a small and a large scene
   (default 4096² and 16384²), each in a fresh process, with a cheap 1×1-conv model so that the
   engine's own memory dominates. Aim: ratio ≤ 1.2.
3. **Peer baseline**: MONAI's ``sliding_window_inference`` on the same model, windows, overlap
   and scene (it needs the scene as one tensor and returns the full score volume), incl. the
   scene read and writing the class map, vs our engine: time and memory ratios.

Every measurement runs in its own subprocess (``ru_maxrss`` is a per-process peak); times
exclude Python/torch start-up. Run::

    .venv/bin/python benchmarks/scene_infer.py                     # ~3-5 min on 2 CPU cores
    .venv/bin/python benchmarks/scene_infer.py --large 32768       # bigger
    .venv/bin/python benchmarks/scene_infer.py --large 0           # skip the memory comparison
    .venv/bin/python benchmarks/scene_infer.py --compare 4096      # overhead/MONAI on a 4096² scene
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_CLASSES = 5


def build_model(kind: str = "conv"):  # noqa: ANN201 - torch imported lazily
    """``conv``: a small segmenter, 3 → 32 → 32 → K channels (3×3 convs); ``cheap``: one 1×1 conv."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if kind == "cheap":
        return nn.Conv2d(3, N_CLASSES, 1).eval()
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, N_CLASSES, 1),
    ).eval()


def write_big_scene(path: Path, size: int, block: int = 1024) -> None:
    """A size² tiled GeoTIFF written block by block from one generated 1024² synthetic scene."""
    import rasterio

    from vitp_geo.synthetic.scene import generate_scene

    base = generate_scene(0, block)
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs=base.crs,
        transform=base.transform,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        nodata=0,
        BIGTIFF="IF_SAFER",
    )
    img = np.maximum(base.image, 1)
    with rasterio.open(path, "w", **profile) as dst:
        for i, r in enumerate(range(0, size, block)):
            for j, c in enumerate(range(0, size, block)):
                h, w = min(block, size - r), min(block, size - c)
                tile = np.roll(img, (17 * i, 29 * j), axis=(1, 2))[:, :h, :w]
                dst.write(tile, window=((r, r + h), (c, c + w)))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(
    kind: str, scene: str, out: str, tile: int, overlap: float, batch: int, model_kind: str
) -> dict[str, float]:
    import torch

    torch.set_num_threads(2)
    from vitp_geo.io.qgis_styles import ClassStyle
    from vitp_geo.synthetic.scene import CLASS_COLORS, CLASS_NAMES
    from vitp_geo.tiling.engine import EngineConfig, segment_scene
    from vitp_geo.tiling.segmentation_outputs import SegmentationOutputs

    model = build_model(model_kind)
    base_mb = _peak_mb()
    t0, c0 = time.perf_counter(), _cpu_s()
    if kind == "engine":
        segment_scene(
            scene,
            model,
            ClassStyle(CLASS_NAMES, CLASS_COLORS),
            SegmentationOutputs(Path(out)),
            config=EngineConfig(tile_size=tile, overlap=overlap, batch_size=batch, progress=False),
        )
    elif kind == "bare":
        from vitp_geo.io.raster import RenderRule
        from vitp_geo.tiling.planner import plan_windows
        from vitp_geo.tiling.reader import SceneWindowReader

        reader = SceneWindowReader([scene], RenderRule(), (0.0,) * 3, (255.0,) * 3)
        plan = plan_windows(reader.height, reader.width, tile, overlap)
        wins = [(r, c) for r in plan.row_offsets for c in plan.col_offsets]
        with torch.inference_mode():
            for g in range(0, len(wins), batch):
                xs = [reader.read(r, c, tile, tile)[0] for r, c in wins[g : g + batch]]
                torch.softmax(model(torch.from_numpy(np.stack(xs))), 1).numpy()
    elif kind == "monai":
        import rasterio
        from monai.inferers import sliding_window_inference

        from vitp_geo.io.raster import write_geotiff

        with rasterio.open(scene) as src:
            img, transform, crs = src.read(), src.transform, src.crs
        x = torch.from_numpy(img).float()[None] / 255.0
        del img
        with torch.inference_mode():
            y = sliding_window_inference(x, (tile, tile), batch, model, overlap=overlap, mode="gaussian")
            cls = torch.softmax(y, 1).argmax(1).to(torch.uint8).numpy()
        write_geotiff(out, cls, transform, crs)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_s": _cpu_s() - c0,
        "peak_mb": _peak_mb(),
        "import_mb": base_mb,
    }


def measure(kind: str, scene: Path, work: Path, args: argparse.Namespace, model: str) -> dict[str, float]:
    out = work / f"{kind}_{scene.stem}.tif"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--scene",
        str(scene),
        "--out",
        str(out),
        "--tile",
        str(args.tile),
        "--overlap",
        str(args.overlap),
        "--batch",
        str(args.batch),
        "--model",
        model,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{kind} on {scene.name} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--compare",
        type=int,
        default=2048,
        help="side of the scene for engine vs bare model vs MONAI (small conv net); 0 skips",
    )
    p.add_argument("--small", type=int, default=4096, help="side of the small memory scene (cheap 1x1 model)")
    p.add_argument("--large", type=int, default=16384, help="side of the large memory scene; 0 skips both")
    p.add_argument("--monai-large", action="store_true", help="also run MONAI on the large scene (needs RAM)")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument(
        "--repeats", type=int, default=2, help="interleaved repeats of the small-scene runs (best kept)"
    )
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--model", default="conv", help=argparse.SUPPRESS)
    p.add_argument("--scene", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(
            json.dumps(
                child(args.child, args.scene, args.out, args.tile, args.overlap, args.batch, args.model)
            )
        )
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        sizes = sorted(
            {
                *((args.compare,) if args.compare > 0 else ()),
                *((args.small, args.large) if args.large > 0 else ()),
            }
        )
        scenes = {}
        for s in sizes:
            scenes[s] = work / f"scene_{s}.tif"
            t = time.perf_counter()
            write_big_scene(scenes[s], s)
            print(f"generated {s}x{s} scene (block by block) in {time.perf_counter() - t:.1f} s", flush=True)
        if args.compare > 0:
            small = scenes[args.compare]
            runs: dict[str, list[dict[str, float]]] = {"bare": [], "engine": [], "monai": []}
            for _ in range(args.repeats):  # interleaved, best of N: robust to other load on the machine
                for k in runs:
                    runs[k].append(measure(k, small, work, args, "conv"))
            r = {k: {m: min(v[m] for v in vs) for m in vs[0]} for k, vs in runs.items()}
            print(
                f"\n== {args.compare}² scene, small conv net, tile {args.tile}, overlap {args.overlap}, batch {args.batch}, 2 threads, "
                f"best of {args.repeats} =="
            )
            print(f"{'':22s}{'wall s':>9s}{'CPU s':>9s}{'peak MB':>10s}{'above import MB':>17s}")
            for k, label in (
                ("bare", "bare model (windows)"),
                ("engine", "vitp-geo engine"),
                ("monai", "MONAI sliding window"),
            ):
                v = r[k]
                print(
                    f"{label:22s}{v['seconds']:9.1f}{v['cpu_s']:9.1f}{v['peak_mb']:10.0f}{v['peak_mb'] - v['import_mb']:17.0f}"
                )
            e, b, m = r["engine"], r["bare"], r["monai"]
            print(
                f"overhead engine / bare model:       {e['seconds'] / b['seconds']:.3f}x wall, "
                f"{e['cpu_s'] / b['cpu_s']:.3f}x CPU  (aim <= 1.15)"
            )
            print(
                f"MONAI / engine time:                {m['seconds'] / e['seconds']:.2f}x wall, {m['cpu_s'] / e['cpu_s']:.2f}x CPU"
            )
            print(
                f"MONAI / engine peak memory:         {m['peak_mb'] / e['peak_mb']:.2f}x "
                f"(above import: {(m['peak_mb'] - m['import_mb']) / max(1.0, e['peak_mb'] - e['import_mb']):.2f}x)"
            )
        if args.large > 0:
            lo = measure("engine", scenes[args.small], work, args, "cheap")
            hi = measure("engine", scenes[args.large], work, args, "cheap")
            print("\n== engine peak memory vs scene size (cheap 1x1-conv model, so the engine dominates) ==")
            for size, v in ((args.small, lo), (args.large, hi)):
                print(
                    f"{size:>6d}²: peak {v['peak_mb']:6.0f} MB (import baseline {v['import_mb']:.0f} MB), "
                    f"{v['seconds']:.1f} s wall, {v['cpu_s']:.1f} s CPU"
                )
            print(
                f"ratio large / small peak memory:    {hi['peak_mb'] / lo['peak_mb']:.3f}  (aim <= 1.2; "
                f"{(args.large / args.small) ** 2:.0f}x the pixels; above import: "
                f"{(hi['peak_mb'] - hi['import_mb']) / max(1.0, lo['peak_mb'] - lo['import_mb']):.2f}x)"
            )
            if args.monai_large:
                mb = measure("monai", scenes[args.large], work, args, "cheap")
                print(f"MONAI {args.large}²: peak {mb['peak_mb']:.0f} MB ({mb['seconds']:.1f} s)")


if __name__ == "__main__":
    main()
