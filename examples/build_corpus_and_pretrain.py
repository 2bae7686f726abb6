"""Build an instruction corpus from a georeferenced scene and its labels, then pretrain on it.

The same two commands a user runs on their own data::

    vitp-geo build-instructions --image scene.tif --labels scene_objects.gpkg \
        --mask scene_mask.tif --classes names.yaml --tile-size 128 --out corpus/
    vitp-geo pretrain --data corpus/recipe.json --max-steps 3 --output run/

Here the scene comes from the seeded synthetic world (``vitp_geo.synthetic``), written as a
GeoTIFF, a class-mask GeoTIFF and a GeoPackage of object polygons. Runs on a CPU in well under a
minute with the tiny default model::

    python examples/build_corpus_and_pretrain.py --workdir /tmp/vitp_example
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from vitp_geo.cli.main import main as vitp_geo
from vitp_geo.synthetic.scene import CLASS_NAMES, generate_scene, write_scene


def run(workdir: Path, max_steps: int = 3, seed: int = 0) -> int:
    """Write the scene, build the corpus, pretrain; returns the first non-zero exit code, else 0."""
    scene = generate_scene(seed, 256, scene_class=0)
    paths = write_scene(scene, workdir / "scene")
    names = workdir / "scene" / "names.yaml"
    names.write_text("".join(f"{i}: {n}\n" for i, n in enumerate(CLASS_NAMES)), encoding="utf-8")
    corpus = workdir / "corpus"
    build = [
        "build-instructions",
        "--image",
        str(paths.image),
        "--labels",
        str(paths.objects),
        "--class-field",
        "class_name",
        "--mask",
        str(paths.mask),
        "--classes",
        str(names),
        "--tile-size",
        "128",
        "--overlap",
        "0.25",
        "--seed",
        str(seed),
        "--out",
        str(corpus),
        "--overwrite",
    ]
    print("$ vitp-geo " + " ".join(build), flush=True)
    rc = vitp_geo(build)
    if rc:
        return rc
    print("$ vitp-geo recipe stats " + str(corpus / "recipe.json"), flush=True)
    rc = vitp_geo(["recipe", "stats", str(corpus / "recipe.json")])
    if rc:
        return rc
    pretrain = [
        "pretrain",
        "--data",
        str(corpus / "recipe.json"),
        "--max-steps",
        str(max_steps),
        "--output",
        str(workdir / "run"),
    ]
    print("$ vitp-geo " + " ".join(pretrain), flush=True)
    return vitp_geo(pretrain)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, help="where to write scene, corpus and run (default: a temp dir)"
    )
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.workdir is not None:
        return run(args.workdir, args.max_steps, args.seed)
    with tempfile.TemporaryDirectory(prefix="vitp_example_") as tmp:
        return run(Path(tmp), args.max_steps, args.seed)


if __name__ == "__main__":
    sys.exit(main())
