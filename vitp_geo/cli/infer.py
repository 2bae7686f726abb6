"""``vitp-geo infer``: tiled inference over a GeoTIFF scene with QGIS-ready outputs.

Argument wiring only; one scene runs through ``vitp_geo.inference.infer_scene``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitp_geo.inference import InferSettings, SceneOutputs
from vitp_geo.io.paths import check_output_paths, refuse_existing_outputs
from vitp_geo.tiling.blending import BlendMode

# torch, rasterio, geopandas and the engine are imported when a run starts, so that
# `vitp-geo infer --help` and argument errors answer at once.
if TYPE_CHECKING:
    from vitp_geo.tiling.distributed import RankInfo


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "infer",
        help="tiled inference over a GeoTIFF scene, QGIS-ready outputs",
        description="Run a fine-tuned checkpoint over a whole GeoTIFF scene, streaming window by window, "
        "and write a Cloud-Optimized GeoTIFF class map (colour table, category names, QGIS .qml), "
        "optionally class probabilities and a styled GeoPackage of polygons.",
    )
    p.add_argument("scene", type=Path, help="input GeoTIFF (the 'before' image for change models)")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint written by `vitp-geo finetune`")
    p.add_argument(
        "--out", type=Path, default=None, help="class map COG to write (.tif; segmentation and change models)"
    )
    p.add_argument("--after", type=Path, default=None, help="the 'after' image (change models only)")
    p.add_argument(
        "--vector",
        type=Path,
        default=None,
        help="also write polygons to this GeoPackage (detection models: the output, oriented boxes)",
    )
    p.add_argument(
        "--probabilities", type=Path, default=None, help="also write per-class probabilities (COG)"
    )
    add_settings_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run with the same settings")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        help="processes to shard windows over (one per GPU when CUDA is available, else CPU)",
    )


def add_settings_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``InferSettings`` (shared by ``infer`` and ``infer-catalog``)."""
    p.add_argument(
        "--min-score", type=float, default=0.3, help="detection models: lowest score written (default 0.3)"
    )
    p.add_argument("--probability-dtype", choices=["float32", "float16"], default="float32")
    p.add_argument(
        "--tile-size", type=int, default=None, help="window side in pixels (default: the checkpoint's)"
    )
    p.add_argument("--overlap", type=float, default=0.25, help="fraction of a window shared with neighbours")
    p.add_argument("--batch-size", type=int, default=8, help="windows per model call (per device)")
    p.add_argument("--blend", choices=[m.value for m in BlendMode], default="cosine")
    p.add_argument(
        "--bands",
        type=str,
        default=None,
        help="1-based bands to read, e.g. 1,2,3 (default: the checkpoint's)",
    )
    p.add_argument("--min-area", type=int, default=0, help="drop polygons smaller than this many pixels")
    p.add_argument(
        "--stretch",
        action="store_true",
        help="a model trained on raw uint8 values: read a scene of another value type (uint16, float32) "
        "through the documented 3-band render rule (each band stretched from its 2-98 %% percentiles "
        "to 0-255, as build-instructions does) instead of refusing it",
    )
    p.add_argument(
        "--progress",
        choices=["bar", "jsonl", "none"],
        default="bar",
        help="bar: a progress bar on stderr; jsonl: one JSON object per line on stdout (phase, "
        "windows done / total, eta_s) for programs such as the QGIS plugin; none (default: bar)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (= --progress none)")


def _parse_bands(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        bands = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise ValueError(f"--bands must be comma-separated integers, got {text!r}") from None
    if not bands or min(bands) < 1:
        raise ValueError(f"--bands are 1-based and non-empty, got {text!r}")
    return bands


def settings_from_args(args: argparse.Namespace) -> InferSettings:
    """The ``infer`` flags shared with ``infer-catalog`` as checked ``InferSettings``."""
    settings = InferSettings(
        tile_size=args.tile_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        blend=args.blend,
        bands=_parse_bands(args.bands),
        min_area=args.min_area,
        min_score=args.min_score,
        probability_dtype=args.probability_dtype,
        stretch=args.stretch,
        progress="none" if args.no_progress else args.progress,
    )
    settings.check()
    return settings


def _spawned(opts: dict[str, Any], rank: RankInfo) -> None:
    from vitp_geo.inference import infer_scene
    from vitp_geo.tiling.progress import report_phase

    summary = infer_scene(
        opts["scene"],
        opts["checkpoint"],
        opts["outputs"],
        after=opts["after"],
        settings=opts["settings"],
        resume=opts["resume"],
        rank=rank,
    )
    if summary is not None:
        print("\n".join(summary.lines()), file=sys.stderr)
    if rank.is_writer:
        report_phase(opts["settings"].progress, "done")


def run(args: argparse.Namespace) -> int:
    if _is_medical(args.scene, args.out):
        return _run_medical(args)
    if not args.scene.exists():
        raise FileNotFoundError(f"scene not found: {args.scene}")
    if args.out is not None and args.out.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"--out must be a .tif, got {args.out}")
    if args.out is None and args.vector is None:
        raise ValueError("give --out (class map, segmentation / change) or --vector (detections)")
    if args.vector is not None and args.vector.suffix.lower() != ".gpkg":
        raise ValueError(f"--vector must be a .gpkg, got {args.vector}")
    if args.devices < 1:
        raise ValueError(f"--devices must be >= 1, got {args.devices}")
    settings = settings_from_args(args)
    check_output_paths(
        {"scene": args.scene, "--after": args.after, "--checkpoint": args.checkpoint},
        {"--out": args.out, "--probabilities": args.probabilities, "--vector": args.vector},
    )
    refuse_existing_outputs(
        {"--out": args.out, "--probabilities": args.probabilities, "--vector": args.vector}, args.overwrite
    )
    opts = dict(
        scene=args.scene,
        checkpoint=args.checkpoint,
        after=args.after,
        outputs=SceneOutputs(class_map=args.out, probabilities=args.probabilities, vector=args.vector),
        settings=settings,
        resume=args.resume,
    )
    from vitp_geo.tiling.distributed import RankInfo, env_rank_info, spawn_ranks

    env = env_rank_info()  # launched by torchrun
    if env is not None:
        _spawned(opts, env)
    elif args.devices > 1:
        spawn_ranks(functools.partial(_spawned, opts), args.devices)
    else:
        _spawned(opts, RankInfo())
    return 0


def _is_medical(scene: Path, out: Path | None) -> bool:
    """NIfTI / DICOM input (a file, or a folder of DICOM slices) or a NIfTI output: the volume path."""
    names = [scene.name.lower()] + ([out.name.lower()] if out is not None else [])
    return scene.is_dir() or any(n.endswith((".nii", ".nii.gz", ".dcm")) for n in names)


def _run_medical(args: argparse.Namespace) -> int:
    """``vitp-geo infer CASE.nii.gz|DICOM_DIR --checkpoint model.ckpt --out pred.nii.gz`` (see medical.inference)."""
    from vitp_geo.medical.inference import infer_case

    if args.scene.is_file() and args.scene.suffix.lower() in (".tif", ".tiff") and args.out is not None:
        raise ValueError(
            f"--out {args.out} names a NIfTI volume, but {args.scene} is a raster: a GeoTIFF scene gets a "
            f"class map (--out {args.out.name.split('.')[0]}.tif)"
        )
    for flag, given in (  # flags of the GeoTIFF path a volume would silently ignore
        ("--after", args.after is not None),
        ("--vector", args.vector is not None),
        ("--probabilities", args.probabilities is not None),
        ("--tile-size", args.tile_size is not None),
        ("--overlap", args.overlap != 0.25),
        ("--blend", args.blend != BlendMode.COSINE.value),
        ("--min-area", args.min_area != 0),
        ("--min-score", args.min_score != 0.3),
        ("--bands", args.bands is not None),
        ("--stretch", args.stretch),
        ("--resume", args.resume),
        ("--devices", args.devices != 1),
    ):
        if given:
            raise ValueError(
                f"{flag} is for GeoTIFF scenes; a medical volume gets a label NIfTI (--out) only"
            )
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_output_paths({"volume": args.scene, "--checkpoint": args.checkpoint}, {"--out": args.out})
    refuse_existing_outputs({"--out": args.out}, args.overwrite)
    out = infer_case(
        args.checkpoint,
        args.scene,
        args.out,
        batch_size=args.batch_size,
        progress=args.progress == "bar" and not args.no_progress,
    )
    print(f"wrote {out}", file=sys.stderr)
    return 0
