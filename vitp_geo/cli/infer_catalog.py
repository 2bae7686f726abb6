"""``vitp-geo infer-catalog``: one checkpoint over a catalogue of scenes (STAC, folder, list).

Argument wiring only; the run is ``vitp_geo.catalogue.runner.run_catalogue``.
Exit codes: 0 all scenes done, 1 some scenes failed (the summary lists them), 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitp_geo.cli.infer import add_settings_arguments, settings_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "infer-catalog",
        help="inference over a catalogue of scenes (STAC, folder, list), resumable, on Ray or locally",
        description="Run a fine-tuned checkpoint over many GeoTIFF scenes, one scene per task, the model "
        "loaded once per worker. Writes per scene what `vitp-geo infer` writes (under OUT_DIR/scenes/<id>/), "
        "a manifest (OUT_DIR/manifest.jsonl) that makes a rerun skip finished scenes and resume "
        "interrupted ones, a STAC collection of the outputs (OUT_DIR/stac/) and per CRS a VRT mosaic "
        "of the class maps or a merged GeoPackage of the detections (OUT_DIR/mosaics/).",
    )
    p.add_argument(
        "source",
        help="a STAC catalogue / collection / item JSON, a folder or glob of GeoTIFFs, a text file with one "
        "path per line, or (change models) a CSV with 'before' and 'after' columns",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint written by `vitp-geo finetune`")
    p.add_argument(
        "--out-dir", type=Path, required=True, help="the run's folder (created; reruns continue it)"
    )
    p.add_argument("--asset", default=None, help="STAC: the asset to read (default: the first GeoTIFF/COG)")
    p.add_argument("--after-asset", default=None, help="STAC, change models: the asset of the 'after' image")
    p.add_argument(
        "--probabilities", action="store_true", help="also write per-class probabilities per scene"
    )
    p.add_argument(
        "--vector", action="store_true", help="also write polygons per scene (segmentation, change)"
    )
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="local (no Ray) or ray")
    p.add_argument("--workers", type=int, default=1, help="workers, one scene and one loaded model each")
    p.add_argument("--address", default=None, help="--engine ray: cluster address ('auto': the running one)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="--engine ray: GPUs per worker")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per worker process (default: 1 with several workers or Ray, else torch's)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=float,
        default=60.0,
        help="seconds between a scene's resume states (0: after every row of windows; default 60)",
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="run scenes that failed in an earlier run again"
    )
    add_settings_arguments(p)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if not args.checkpoint_every >= 0:  # NaN fails too
        raise ValueError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    settings = replace(settings_from_args(args), checkpoint_every_s=args.checkpoint_every)
    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    from vitp_geo.catalogue.runner import EngineChoice, run_catalogue
    from vitp_geo.catalogue.sources import read_source

    tasks = read_source(args.source, asset=args.asset, after_asset=args.after_asset)
    threads = args.threads
    if threads is None and (args.engine == "ray" or args.workers > 1):
        threads = 1  # workers share the machine's cores
    summary = run_catalogue(
        tasks,
        args.checkpoint,
        args.out_dir,
        settings=settings,
        probabilities=args.probabilities,
        vector=args.vector,
        engine=EngineChoice(args.engine, args.workers, args.address, args.gpus_per_worker, threads),
        retry_failed=args.retry_failed,
        progress=settings.progress,
    )
    print("\n".join(summary.lines()), file=sys.stderr)
    if summary.failed:
        print(
            f"vitp-geo infer-catalog: {len(summary.failed)} of {summary.total} scenes failed", file=sys.stderr
        )
        return 1
    return 0
