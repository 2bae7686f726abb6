"""``vitp-geo build-instructions``: labelled rasters → instruction corpus (wiring only).

The sources are given as option groups (one or several in one call, all into one corpus)::

    vitp-geo build-instructions --image scene.tif --labels objects.gpkg --out corpus/
    vitp-geo build-instructions --image scene.tif --mask mask.tif --classes names.yaml --out corpus/
    vitp-geo build-instructions --folders scenes_by_class/ --out corpus/
    vitp-geo build-instructions --torchgeo EuroSAT --root data/eurosat --out corpus/
    vitp-geo build-instructions --before a.tif --after b.tif --change-mask m.tif --out corpus/
    vitp-geo build-instructions --volume CT.nii.gz --labels seg.nii.gz --classes dataset.json --out corpus/
    vitp-geo build-instructions --msd Task03_Liver/ --out corpus/            (imagesTr, labelsTr, dataset.json)
    vitp-geo build-instructions --xray "Infection Segmentation Data/Infection Segmentation Data" --out corpus/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vitp_geo.instruct.builders import (
    TORCHGEO_DATASETS,
    ChangeSource,
    ClassFolderSource,
    MaskSource,
    TorchGeoSource,
    VectorSource,
    build_corpus,
    load_class_names,
)
from vitp_geo.instruct.builders.corpus import Source
from vitp_geo.instruct.builders.raster_scene import MODALITIES
from vitp_geo.io.paths import check_output_folder
from vitp_geo.io.raster import RenderRule


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err


def _floats(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected LO,HI, got {text!r}") from err
    return lo, hi


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build-instructions",
        help="turn labelled rasters into instruction JSONL",
        description="Turn labelled rasters into an InternVL/LLaVA instruction corpus: DIR/images/, "
        "DIR/annotations.jsonl and DIR/recipe.json. Give one or more sources (option groups below).",
    )
    p.add_argument("--out", type=Path, required=True, help="corpus folder (must not exist or be empty)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed for template choice and option order (default 0)"
    )
    p.add_argument("--name", help="dataset name in recipe.json (default: the --out folder name)")
    p.add_argument("--repeat-time", type=float, default=1.0, help="repeat_time in recipe.json (default 1)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier corpus in --out (refused if it holds files a build does not write)",
    )

    g = p.add_argument_group("scene + vector labels / segmentation mask")
    g.add_argument("--image", type=Path, help="georeferenced raster (GeoTIFF, …)")
    g.add_argument("--labels", type=Path, help="vector labels in any format and CRS (GeoPackage, GeoJSON, …)")
    g.add_argument(
        "--class-field",
        help="label attribute holding the class name "
        "(default: class_name/class/label/category if present, else --default-class)",
    )
    g.add_argument("--default-class", default="object", help="class name when there is no class field")
    g.add_argument("--mask", type=Path, help="segmentation mask raster on the --image grid (class ids)")
    g.add_argument("--classes", type=Path, help="YAML: class id → name (or a list of names)")
    g.add_argument("--tile-size", type=int, default=448, help="tile side in pixels (default 448)")
    g.add_argument(
        "--overlap", type=float, default=0.25, help="tile overlap fraction in [0, 1) (default 0.25)"
    )
    g.add_argument(
        "--min-visible",
        type=float,
        default=0.5,
        help="keep an edge-cut object if at least this share of its area is in the tile (default 0.5)",
    )
    g.add_argument(
        "--min-valid",
        type=float,
        default=0.5,
        help="skip tiles with less than this share of valid (non-nodata) pixels (default 0.5)",
    )
    g.add_argument("--keep-empty", action="store_true", help="also write tiles without labelled objects")

    g = p.add_argument_group("scene classification")
    g.add_argument("--folders", type=Path, help="folder with one sub-folder of images per class")
    g.add_argument("--torchgeo", choices=sorted(TORCHGEO_DATASETS), help="torchgeo classification dataset")
    g.add_argument("--root", type=Path, help="where the torchgeo dataset lies (nothing is downloaded)")
    g.add_argument("--split", default="train", help="torchgeo split (default train)")
    g.add_argument("--limit-per-class", type=int, help="at most this many images per class")

    g = p.add_argument_group("change pairs")
    g.add_argument("--before", type=Path, help="image of the first date")
    g.add_argument("--after", type=Path, help="image of the second date, same grid")
    g.add_argument("--change-mask", type=Path, help="change mask raster (non-zero = changed), same grid")

    g = p.add_argument_group("medical volumes and radiographs (see vitp_geo.medical.instructions)")
    g.add_argument(
        "--volume",
        type=Path,
        nargs="+",
        help="image volume (NIfTI, DICOM file or series folder; one file per MRI sequence) with --labels seg.nii.gz",
    )
    g.add_argument("--msd", type=Path, help="MSD / nnU-Net folder (imagesTr/, labelsTr/, dataset.json)")
    g.add_argument(
        "--xray", type=Path, help="X-ray folder: images/ next to 'lung masks/', 'infection masks/'"
    )
    g.add_argument("--xray-split", help="only this split folder of --xray (e.g. Train)")
    g.add_argument(
        "--empty-fraction", type=float, default=0.1, help="share of label-free slices kept (default 0.1)"
    )
    g.add_argument(
        "--min-pixels", type=int, default=8, help="pixels for a structure to count as present (default 8)"
    )

    g = p.add_argument_group("rendering to 3 channels (see vitp_geo.io.raster)")
    g.add_argument("--bands", type=_ints, help="1-based bands to render, e.g. 4,3,2 (default: first three)")
    g.add_argument(
        "--percentiles", type=_floats, default=(2.0, 98.0), help="stretch range LO,HI (default 2,98)"
    )
    g.add_argument("--sar-db", action="store_true", help="treat real bands as SAR amplitude (rendered in dB)")
    g.add_argument("--modality", choices=MODALITIES, help="override the detected modality")


def sources_from_args(args: argparse.Namespace) -> list[Source]:
    """The sources the options describe; ValueError for incomplete groups."""
    rule = RenderRule(bands=args.bands, percentiles=tuple(args.percentiles), sar_db=args.sar_db)
    tiling = dict(tile_size=args.tile_size, overlap=args.overlap, min_valid=args.min_valid)
    sources: list[Source] = []
    if args.limit_per_class is not None and args.limit_per_class < 1:
        raise ValueError(f"--limit-per-class must be >= 1, got {args.limit_per_class}")
    sources += medical_sources_from_args(args)
    if (args.labels or args.mask) and not (args.image or args.volume):
        raise ValueError("--labels and --mask need --image (or --volume for a label NIfTI)")
    if args.image and not (args.labels or args.mask):
        raise ValueError("--image needs --labels (vector labels) or --mask with --classes")
    if args.labels and args.image:
        sources.append(
            VectorSource(
                args.image,
                args.labels,
                class_field=args.class_field,
                default_class=args.default_class,
                min_visible=args.min_visible,
                keep_empty=args.keep_empty,
                rule=rule,
                modality=args.modality,
                **tiling,
            )
        )
    if args.mask:
        if not args.classes:
            raise ValueError("--mask needs --classes names.yaml")
        sources.append(
            MaskSource(args.image, args.mask, args.classes, rule=rule, modality=args.modality, **tiling)
        )
    if args.folders:
        sources.append(
            ClassFolderSource(
                args.folders, rule=rule, modality=args.modality, limit_per_class=args.limit_per_class
            )
        )
    if args.torchgeo:
        if not args.root:
            raise ValueError("--torchgeo needs --root DIR")
        sources.append(
            TorchGeoSource(args.torchgeo, args.root, split=args.split, limit_per_class=args.limit_per_class)
        )
    change = (args.before, args.after, args.change_mask)
    if any(change):
        if not all(change):
            raise ValueError("change pairs need all of --before, --after and --change-mask")
        sources.append(
            ChangeSource(
                args.before, args.after, args.change_mask, rule=rule, modality=args.modality, **tiling
            )
        )
    return sources


def medical_sources_from_args(args: argparse.Namespace) -> list[Source]:
    """The ``--volume`` / ``--msd`` / ``--xray`` sources (vitp_geo.medical.instructions)."""
    if not (args.volume or args.msd or args.xray):
        return []
    from vitp_geo.medical.datasets import label_table_from_json
    from vitp_geo.medical.instructions import MSDSource, VolumeSource, XraySource

    if not 0 <= args.empty_fraction <= 1:
        raise ValueError(f"--empty-fraction must be in [0, 1], got {args.empty_fraction}")
    if args.min_pixels < 1:
        raise ValueError(f"--min-pixels must be >= 1, got {args.min_pixels}")
    slicing = dict(empty_fraction=args.empty_fraction, min_pixels=args.min_pixels, seed=args.seed)
    sources: list[Source] = []
    if args.volume:
        if args.image or not args.labels or not args.classes:
            raise ValueError("--volume needs --labels seg.nii.gz and --classes (dataset.json or names.yaml)")
        if args.classes.suffix.lower() == ".json":
            table = label_table_from_json(args.classes)
            classes = dict(zip(table.values, table.names, strict=True))
        else:
            classes = load_class_names(args.classes)
        modality = "ct" if len(args.volume) == 1 else "mri"
        sources.append(VolumeSource(args.volume, args.labels, classes, modality=modality, **slicing))  # type: ignore[arg-type]
    if args.msd:
        sources.append(MSDSource(args.msd, **slicing))  # type: ignore[arg-type]
    if args.xray:
        sources.append(XraySource(args.xray, split=args.xray_split, min_pixels=args.min_pixels))
    return sources


def input_paths(args: argparse.Namespace) -> dict[str, Path | list[Path] | None]:
    """Every file or folder the options read, by flag."""
    flags = ("image", "labels", "mask", "classes", "folders", "root", "before", "after", "change_mask")
    inputs: dict[str, Path | list[Path] | None] = {
        f"--{f.replace('_', '-')}": getattr(args, f) for f in flags
    }
    inputs.update({"--volume": args.volume, "--msd": args.msd, "--xray": args.xray})
    return inputs


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.seed <= 2**32 - 1:
        raise ValueError(f"--seed must be an integer in [0, {2**32 - 1}], got {args.seed}")
    if args.classes is not None and args.classes.is_dir():
        raise ValueError(
            f"--classes {args.classes} is a folder; give the class names file (names.yaml or dataset.json)"
        )
    # --overwrite replaces the folder as a whole: it must not hold (or lie in) what the run reads
    check_output_folder("--out", args.out, input_paths(args))
    result = build_corpus(
        args.out,
        sources_from_args(args),
        seed=args.seed,
        name=args.name,
        repeat_time=args.repeat_time,
        overwrite=args.overwrite,
        progress=True,
    )
    print(f"wrote {result.out_dir}")
    print(result.summary.format())
    print(f"recipe: {result.recipe}")
    return 0
