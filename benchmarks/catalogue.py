"""Catalogue inference, side by side: the driver against a plain loop, 1 against 2 workers, memory.

Three measurements on generated scenes and a tiny real checkpoint (``tests/tiny_checkpoints.py``):

1. **Driver overhead**: ``run_catalogue`` with the local engine and one worker (manifest,
   checksums, STAC collection, VRT mosaic) against the same scenes run one after another with
   ``infer_scene`` in one process, the model loaded once. Aim ≤ 1.10×.
2. **Workers**: scenes per minute with 1 and 2 workers (the local engine's process pool, and Ray
   actors when Ray is installed), once counted from the call (worker start-up and model loading
   included) and once from the first scene's start in a worker to the last scene's end (the
   manifest's timings). On a 2-core machine the ideal ratio is 2.0.
3. **Memory per worker**: the worker's peak resident memory (``peak_rss_mb`` in the manifest) for
   a small and a large scene (default 4096² and 16384²), each run in a fresh process. Flat
   means the ratio stays near 1.

Each measurement runs in its own subprocess. Run::

    .venv/bin/python benchmarks/catalogue.py --quick    # about 2-3 min on 2 CPU cores: 224² scenes, 1024²/2048² memory
    .venv/bin/python benchmarks/catalogue.py            # the full run: 12 scenes of 448², 4096² and 16384² (long)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TILE = 112


def _setup(work: Path, n: int, size: int) -> tuple[Path, Path]:
    sys.path.insert(0, str(REPO / "tests"))  # the tiny checkpoint writer
    from tiny_checkpoints import save_tiny_segmentation_checkpoint

    from vitp_geo.io.raster import write_geotiff
    from vitp_geo.synthetic.scene import generate_scene

    ckpt = save_tiny_segmentation_checkpoint(work / "tiny.ckpt", tile_size=TILE)
    folder = work / "scenes"
    folder.mkdir()
    for i in range(n):
        s = generate_scene(i, size, origin=(500000.0 + i * size, 5000000.0))
        write_geotiff(folder / f"scene_{i:03d}.tif", s.image, s.transform, s.crs)
    return ckpt, folder


def _child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import torch

    from vitp_geo.catalogue.runner import EngineChoice, run_catalogue
    from vitp_geo.catalogue.sources import read_source
    from vitp_geo.inference import InferSettings, SceneOutputs, infer_scene, load_model

    torch.set_num_threads(1)
    tasks = read_source(args.scenes)
    settings = InferSettings(batch_size=4)
    out = Path(args.out)
    t0 = time.perf_counter()
    if args.child == "loop":
        model = load_model(args.checkpoint)
        for t in tasks:
            (out / t.scene_id).mkdir(parents=True)
            infer_scene(
                t.scene, model, SceneOutputs(class_map=out / t.scene_id / "class_map.tif"), settings=settings
            )
        peak = steady = None
    else:
        engine, workers = args.child.split(":")
        if engine == "ray":
            import ray

            ray.init(num_cpus=int(workers), include_dashboard=False, log_to_driver=False)
            t0 = time.perf_counter()  # the cluster's own start-up is not the catalogue's
        run_catalogue(
            tasks,
            args.checkpoint,
            out,
            settings=settings,
            engine=EngineChoice(engine, int(workers), threads=1),
            progress=False,
        )
        records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        done = [r for r in records if r["status"] == "done"]
        peak = max(r.get("peak_rss_mb") or 0 for r in records)
        # steady state: from the first scene's start in a worker to the last scene's end
        steady = max(r["time"] for r in done) - min(r["started"] for r in done)
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - t0,
                "scenes": len(tasks),
                "peak_rss_mb": peak,
                "steady_s": steady,
            }
        )
    )


def _measure(kind: str, ckpt: Path, scenes: Path, work: Path) -> dict:
    out = work / f"out_{kind.replace(':', '_')}"
    res = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--checkpoint",
            str(ckpt),
            "--scenes",
            str(scenes),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
    )
    if res.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small scenes and sizes (a few minutes)")
    p.add_argument("--scenes-n", type=int, default=None, help="scenes for 1 and 2 (default 12; quick 6)")
    p.add_argument("--size", type=int, default=None, help="scene side for 1 and 2 (default 448; quick 224)")
    p.add_argument(
        "--small", type=int, default=None, help="memory: small scene side (default 4096; quick 1024)"
    )
    p.add_argument(
        "--large",
        type=int,
        default=None,
        help="memory: large scene side (default 16384; quick 2048; 0 skips)",
    )
    p.add_argument("--no-ray", action="store_true", help="skip the Ray runs")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    p.add_argument("--scenes", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    n = args.scenes_n or (6 if args.quick else 12)
    size = args.size or (224 if args.quick else 448)
    small = args.small or (1024 if args.quick else 4096)
    large = args.large if args.large is not None else (2048 if args.quick else 16384)
    try:
        import ray  # noqa: F401

        have_ray = not args.no_ray
    except ImportError:
        have_ray = False
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt, scenes = _setup(work, n, size)
        loop = _measure("loop", ckpt, scenes, work)
        local1 = _measure("local:1", ckpt, scenes, work)
        print(f"{n} scenes of {size}², tiny ViT, CPU, 1 torch thread per worker")
        print(f"1. driver overhead: catalogue {local1['seconds']:.1f} s / plain loop {loop['seconds']:.1f} s = "
              f"{local1['seconds'] / loop['seconds']:.2f}x (aim <= 1.10)")  # fmt: skip
        rows = [("local", local1, _measure("local:2", ckpt, scenes, work))]
        if have_ray:
            rows.append(("ray", _measure("ray:1", ckpt, scenes, work), _measure("ray:2", ckpt, scenes, work)))
        for engine, one, two in rows:
            spm1, spm2 = n / one["seconds"] * 60, n / two["seconds"] * 60
            st1, st2 = n / one["steady_s"] * 60, n / two["steady_s"] * 60
            print(f"2. {engine:5s}: {spm1:.1f} scenes/min with 1 worker, {spm2:.1f} with 2 = {spm2 / spm1:.2f}x "
                  f"(worker start-up included); once the workers are up: {st1:.1f} vs {st2:.1f} = {st2 / st1:.2f}x")  # fmt: skip
        if large:
            sys.path.insert(0, str(REPO / "benchmarks"))
            from scene_infer import write_big_scene

            peaks = {}
            for side in (small, large):
                folder = work / f"mem_{side}"
                folder.mkdir()
                write_big_scene(folder / f"big_{side}.tif", side)
                peaks[side] = _measure("local:1", ckpt, folder, work / f"m{side}")["peak_rss_mb"]
            print(f"3. worker peak memory: {peaks[small]:.0f} MB at {small}², {peaks[large]:.0f} MB at {large}² "
                  f"= {peaks[large] / peaks[small]:.2f}x (flat: ~1)")  # fmt: skip


if __name__ == "__main__":
    main()
