"""``vitp-geo infer``: tiled inference over a GeoTIFF scene with QGIS-ready outputs.

Argument wiring only; the engine is ``vitp_geo.tiling.engine.segment_scene``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitp_geo.io.paths import check_output_paths, refuse_existing_outputs
from vitp_geo.tiling.blending import BlendMode

# torch, rasterio, geopandas and the engine are imported when a run starts, so that
# `vitp-geo infer --help` and argument errors answer at once.
if TYPE_CHECKING:
    import torch

    from vitp_geo.io.model_card import ModelCard
    from vitp_geo.tiling.distributed import RankInfo
    from vitp_geo.tiling.engine import InferenceSummary


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
        "--min-score", type=float, default=0.3, help="detection models: lowest score written (default 0.3)"
    )
    p.add_argument(
        "--probabilities", type=Path, default=None, help="also write per-class probabilities (COG)"
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
    p.add_argument("--resume", action="store_true", help="continue an interrupted run with the same settings")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    p.add_argument(
        "--stretch",
        action="store_true",
        help="a model trained on raw uint8 values: read a scene of another value type (uint16, float32) "
        "through the documented 3-band render rule (each band stretched from its 2-98 %% percentiles "
        "to 0-255, as build-instructions does) instead of refusing it",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        help="processes to shard windows over (one per GPU when CUDA is available, else CPU)",
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


class ModulePredictor:
    """Wrap an ``nn.Module`` as the engine's predictor on one device."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.module, self.device = module.to(device).eval(), device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            return self.module(x.to(self.device, non_blocking=True)).float().cpu()


def _run_rank(opts: dict[str, Any], rank: RankInfo) -> InferenceSummary | None:
    import torch

    from vitp_geo.io.qgis_styles import ClassStyle
    from vitp_geo.tasks.loading import load_inference_model
    from vitp_geo.tiling.engine import EngineConfig, SegmentationOutputs, segment_scene
    from vitp_geo.tiling.progress import report_phase

    ckpt: Path = opts["checkpoint"]
    if rank.is_writer:
        report_phase(opts["progress"], "load")
    module, card = load_inference_model(ckpt)
    if card.task == "detection":
        _run_detection(opts, module, card, rank)
        return None
    if opts["out"] is None:
        raise ValueError(f"{ckpt} is a {card.task} model: give the class map to write with --out")
    scenes = [opts["scene"]]
    if card.task == "change":
        if opts["after"] is None:
            raise ValueError(f"{ckpt} is a change model: give the second date with --after")
        scenes.append(opts["after"])
    elif opts["after"] is not None:
        raise ValueError(f"--after is only for change models; {ckpt} is a {card.task} model")
    bands = card.scene_bands(opts["bands"], str(ckpt))
    rule = card.render_rule(bands)
    # a clear band-count or value-type error before any work; raw band values or the render rule
    raw = all([card.check_scene(path, bands, ckpt.name, stretch=opts["stretch"]) for path in scenes])
    if torch.cuda.is_available():
        device = torch.device("cuda", rank.rank % torch.cuda.device_count())
    else:
        device = torch.device("cpu")
    cfg = EngineConfig(
        tile_size=card.tile_size if opts["tile_size"] is None else opts["tile_size"],
        overlap=opts["overlap"],
        batch_size=opts["batch_size"],
        blend=BlendMode(opts["blend"]),
        activation="softmax",
        progress=opts["progress"],
    )
    _check_window_fits(cfg.tile_size, (len(bands) if raw else 3) * len(scenes) + len(card.class_names), card)
    outputs = SegmentationOutputs(
        class_map=opts["out"],
        probabilities=opts["probabilities"],
        vector=opts["vector"],
        probability_dtype=opts["probability_dtype"],
        min_area_px=opts["min_area"],
    )
    st = ckpt.stat()
    return segment_scene(
        scenes,
        ModulePredictor(module, device),
        ClassStyle(card.class_names, card.class_colors),
        outputs,
        rule=rule,
        mean=card.mean,
        std=card.std,
        config=cfg,
        raw_input=raw,
        resume=opts["resume"],
        model_id=f"{ckpt.resolve()}:{st.st_size}:{st.st_mtime_ns}",
        rank=rank,
    )


def _check_window_fits(tile: int, values_per_pixel: int, card: ModelCard) -> None:
    """Refuse a window side whose arrays cannot be allocated, before any work file is started."""
    from vitp_geo.io.memory import check_fits

    check_fits(
        4 * values_per_pixel * tile * tile,
        f"--tile-size {tile}: one window",
        f"choose a smaller --tile-size (the checkpoint was trained on {card.tile_size})",
    )


def _run_detection(opts: dict[str, Any], module: torch.nn.Module, card: ModelCard, rank: RankInfo) -> None:
    """A detection checkpoint: windows → merged oriented polygons → styled GeoPackage."""
    from vitp_geo.io.qgis_styles import ClassStyle
    from vitp_geo.tiling.detection_outputs import DetectionRunConfig, detect_scene_to_vector

    ckpt: Path = opts["checkpoint"]
    if rank.world > 1:
        raise ValueError(f"{ckpt} is a detection model: detection inference runs on one device (--devices 1)")
    if opts["vector"] is None:
        raise ValueError(f"{ckpt} is a detection model: give the GeoPackage to write with --vector")
    for flag in ("out", "after", "probabilities"):
        if opts[flag] is not None:
            raise ValueError(f"--{flag} is not for detection models ({ckpt} writes --vector only)")
    for flag, given in (  # class-map settings a detection run would silently ignore
        ("--resume", opts["resume"]),
        ("--blend", opts["blend"] != BlendMode.COSINE.value),
        ("--min-area", opts["min_area"] != 0),
    ):
        if given:
            raise ValueError(f"{flag} is for segmentation and change models; {ckpt} is a detection model")
    bands = card.scene_bands(opts["bands"], str(ckpt))
    raw = card.check_scene(opts["scene"], bands, ckpt.name, stretch=opts["stretch"])
    _check_window_fits(card.tile_size if opts["tile_size"] is None else opts["tile_size"], len(bands), card)
    frame = detect_scene_to_vector(
        opts["scene"],
        module,
        ClassStyle(card.class_names, card.class_colors),
        opts["vector"],
        rule=card.render_rule(bands),
        mean=card.mean,
        std=card.std,
        raw_input=raw,
        config=DetectionRunConfig(
            tile_size=card.tile_size if opts["tile_size"] is None else opts["tile_size"],
            overlap=opts["overlap"],
            batch_size=opts["batch_size"],
            min_score=opts["min_score"],
            progress=opts["progress"],
        ),
    )
    counts = frame["class_name"].value_counts().to_dict() if len(frame) else {}
    print(f"{len(frame)} detections {counts} -> {opts['vector']}", file=sys.stderr)


def _spawned(opts: dict[str, Any], rank: RankInfo) -> None:
    from vitp_geo.tiling.progress import report_phase

    summary = _run_rank(opts, rank)
    if summary is not None:
        print("\n".join(summary.lines()), file=sys.stderr)
    if rank.is_writer:
        report_phase(opts["progress"], "done")


def run(args: argparse.Namespace) -> int:
    if _is_medical(args.scene, args.out):
        return _run_medical(args)
    if not args.scene.exists():
        raise FileNotFoundError(f"scene not found: {args.scene}")
    if args.out is not None and args.out.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"--out must be a .tif, got {args.out}")
    if args.out is None and args.vector is None:
        raise ValueError("give --out (class map, segmentation / change) or --vector (detections)")
    if not 0 <= args.min_score <= 1:  # NaN fails too
        raise ValueError(f"--min-score must be in [0, 1], got {args.min_score}")
    if args.vector is not None and args.vector.suffix.lower() != ".gpkg":
        raise ValueError(f"--vector must be a .gpkg, got {args.vector}")
    if args.devices < 1:
        raise ValueError(f"--devices must be >= 1, got {args.devices}")
    if args.tile_size is not None and args.tile_size < 1:
        raise ValueError(f"--tile-size must be >= 1, got {args.tile_size}")
    if not 0 <= args.overlap < 1:  # NaN fails too
        raise ValueError(f"--overlap must be in [0, 1), got {args.overlap}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.min_area < 0:
        raise ValueError(f"--min-area must be >= 0, got {args.min_area}")
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
        out=args.out,
        after=args.after,
        vector=args.vector,
        probabilities=args.probabilities,
        probability_dtype=args.probability_dtype,
        tile_size=args.tile_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        blend=args.blend,
        bands=_parse_bands(args.bands),
        min_area=args.min_area,
        min_score=args.min_score,
        resume=args.resume,
        stretch=args.stretch,
        progress="none" if args.no_progress else args.progress,
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
