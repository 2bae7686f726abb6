"""Bad input at the command line, one table: each case exits non-zero with one error line that
names the bad value, and leaves every file as it was (no input overwritten, nothing written).

Covers ``infer``, ``finetune``, ``build-instructions`` and ``recipe`` (``pretrain`` has its own).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import timm
import torch
from tiny_checkpoints import save_tiny_checkpoint, save_tiny_segmentation_checkpoint

from vitp_geo.cli.main import main
from vitp_geo.io.raster import write_geotiff
from vitp_geo.medical.inputs import SliceInput
from vitp_geo.models.vit import export_backbone
from vitp_geo.synthetic.scene import generate_scene, write_scene

INFER = ["infer", "{w}/scene.tif", "--checkpoint", "{w}/tiny.ckpt", "--no-progress"]
FINETUNE = ["finetune", "segmentation", "--output", "{w}/run", "--no-progress"]
BUILD = ["build-instructions", "--image", "{w}/s/scene.tif", "--labels", "{w}/s/scene_objects.gpkg"]
BUILD += ["--out", "{w}/corpus", "--tile-size", "64"]

# (id, argv with {w} = the workspace, strings the one error line must contain)
CASES: list[tuple[str, list[str], list[str]]] = [
    # inputs that are also outputs: the scene / checkpoint would be destroyed
    ("infer-out-is-the-scene", [*INFER, "--out", "{w}/scene.tif"], ["--out", "{w}/scene.tif", "input"]),
    (
        "infer-out-is-the-scene-via-symlink",
        [*INFER, "--out", "{w}/link.tif"],
        ["--out", "{w}/link.tif", "scene"],
    ),
    (
        "infer-probabilities-is-the-class-map",
        [*INFER, "--out", "{w}/out/pred.tif", "--probabilities", "{w}/out/pred.tif"],
        ["--out", "--probabilities", "{w}/out/pred.tif"],
    ),
    (
        "infer-probabilities-and-class-map-share-a-style-file",
        [*INFER, "--out", "{w}/out/pred.tif", "--probabilities", "{w}/out/pred.tiff"],
        ["{w}/out/pred.qml"],
    ),
    # outputs that cannot be written: found before the job runs, not after
    ("infer-out-is-a-directory", [*INFER, "--out", "{w}/d.tif"], ["--out", "{w}/d.tif", "is a directory"]),
    (
        "infer-vector-under-a-file",
        [*INFER, "--out", "{w}/out/p.tif", "--vector", "{w}/scene.tif/objects.gpkg"],
        ["--vector", "{w}/scene.tif is a file"],
    ),
    # flag values
    ("infer-tile-size-0", [*INFER, "--out", "{w}/out/p.tif", "--tile-size", "0"], ["--tile-size", "0"]),
    (  # allocated first: a MemoryError traceback and a .partial.work left (issue 20)
        "infer-tile-size-beyond-memory",
        [*INFER, "--out", "{w}/out/p.tif", "--tile-size", "400000"],
        ["--tile-size 400000: one window needs at least", "is available; choose a smaller --tile-size"],
    ),
    ("infer-tile-size-negative", [*INFER, "--out", "{w}/out/p.tif", "--tile-size", "-112"], ["-112"]),
    ("infer-overlap-1", [*INFER, "--out", "{w}/out/p.tif", "--overlap", "1"], ["--overlap", "1"]),
    ("infer-overlap-nan", [*INFER, "--out", "{w}/out/p.tif", "--overlap", "nan"], ["--overlap", "nan"]),
    ("infer-batch-size-0", [*INFER, "--out", "{w}/out/p.tif", "--batch-size", "0"], ["--batch-size", "0"]),
    ("infer-min-area-negative", [*INFER, "--out", "{w}/out/p.tif", "--min-area", "-4"], ["--min-area", "-4"]),
    ("finetune-batch-size-0", [*FINETUNE, "--batch-size", "0"], ["--batch-size", "0"]),
    ("finetune-max-steps-minus-2", [*FINETUNE, "--max-steps", "-2"], ["--max-steps", "-2"]),
    ("finetune-max-steps-0", [*FINETUNE, "--max-steps", "0"], ["--max-steps", "0"]),
    ("finetune-max-epochs-0", [*FINETUNE, "--max-epochs", "0"], ["--max-epochs", "0"]),
    # non-finite weights: a NaN backbone trains a NaN model that paints every pixel class 0
    (
        "finetune-nan-backbone",
        [*FINETUNE, "--backbone", "{w}/nan/backbone.safetensors"],
        ["{w}/nan/backbone.safetensors", "non-finite", "blocks.1.mlp.fc1.weight"],
    ),
    (
        "finetune-inf-backbone",
        [*FINETUNE, "--backbone", "{w}/inf/backbone.safetensors"],
        ["{w}/inf/backbone.safetensors", "non-finite", "pos_embed"],
    ),
    (
        "infer-nan-bias-in-the-checkpoint",  # would give an all-class-0 map, exit 0
        ["infer", "{w}/scene.tif", "--checkpoint", "{w}/nan.ckpt", "--out", "{w}/out/p.tif"],
        ["{w}/nan.ckpt", "non-finite", "model.head.classifier.bias"],
    ),
    # one value-type rule for every model kind (detection cards had no dtype and took anything)
    (
        "infer-detection-trained-on-uint8-given-uint16",  # gave 0 detections instead of 13, exit 0
        ["infer", "{w}/scene16.tif", "--checkpoint", "{w}/det_raw.ckpt", "--vector", "{w}/out/d.gpkg"],
        ["{w}/scene16.tif holds uint16", "det_raw.ckpt was trained on raw uint8 values (its card records no value type: taken as uint8)", "--stretch"],
    ),
    (
        "infer-segmentation-trained-on-uint8-given-uint16",
        ["infer", "{w}/scene16.tif", "--checkpoint", "{w}/seg_raw.ckpt", "--out", "{w}/out/p.tif"],
        ["{w}/scene16.tif holds uint16", "seg_raw.ckpt was trained on raw uint8", "--stretch"],
    ),
    (
        "infer-stretch-cannot-serve-a-4-band-model",
        ["infer", "{w}/scene4.tif", "--checkpoint", "{w}/seg4.ckpt", "--out", "{w}/out/p.tif", "--stretch"],
        ["--stretch", "seg4.ckpt takes 4 raw uint8 band(s)", "{w}/scene4.tif (uint16)"],
    ),
    (
        "infer-medical-checkpoint-on-a-geotiff",  # wrote liver/spleen/kidney over a satellite scene
        ["infer", "{w}/scene.tif", "--checkpoint", "{w}/med.ckpt", "--out", "{w}/out/p.tif"],
        ["med.ckpt is a medical model", "not the raster {w}/scene.tif"],
    ),
    (  # a 1 kB .nii.gz declaring 4096³ voxels: allocated first, an allocation traceback
        "infer-volume-declares-more-voxels-than-memory",
        ["infer", "{w}/bomb.nii.gz", "--checkpoint", "{w}/med.ckpt", "--out", "{w}/out/p.nii.gz"],
        ["{w}/bomb.nii.gz: reading its 4096x4096x4096 float32 voxels needs at least 256.0 GiB"],
    ),
    (  # blamed the checkpoint ("not a medical segmentation model") instead of the output name
        "infer-nifti-out-for-a-geotiff",
        [*INFER, "--out", "{w}/out/pred.nii.gz"],
        ["--out {w}/out/pred.nii.gz names a NIfTI volume, but {w}/scene.tif is a raster", "--out pred.tif"],
    ),
    (  # said "the input input"
        "infer-volume-out-is-the-volume",
        ["infer", "{w}/bomb.nii.gz", "--checkpoint", "{w}/med.ckpt", "--out", "{w}/bomb.nii.gz"],
        ["--out {w}/bomb.nii.gz is the same file as the input volume {w}/bomb.nii.gz"],
    ),
    # flags that do not apply were silently ignored
    (
        "infer-medical-given-a-tile-size",
        ["infer", "{w}/bomb.nii.gz", "--checkpoint", "{w}/med.ckpt", "--out", "{w}/out/p.nii.gz"]
        + ["--tile-size", "224"],
        ["--tile-size is for GeoTIFF scenes; a medical volume gets a label NIfTI (--out) only"],
    ),
    (
        "infer-medical-given-a-min-score",
        ["infer", "{w}/bomb.nii.gz", "--checkpoint", "{w}/med.ckpt", "--out", "{w}/out/p.nii.gz"]
        + ["--min-score", "0.9"],
        ["--min-score is for GeoTIFF scenes; a medical volume gets a label NIfTI (--out) only"],
    ),
    (
        "infer-medical-given-resume",
        ["infer", "{w}/bomb.nii.gz", "--checkpoint", "{w}/med.ckpt", "--out", "{w}/out/p.nii.gz", "--resume"],
        ["--resume is for GeoTIFF scenes"],
    ),
    (
        "infer-detection-given-resume",
        ["infer", "{w}/scene.tif", "--checkpoint", "{w}/det_raw.ckpt", "--vector", "{w}/out/d.gpkg", "--resume"],
        ["--resume is for segmentation and change models; {w}/det_raw.ckpt is a detection model"],
    ),
    (
        "infer-detection-given-min-area",
        ["infer", "{w}/scene.tif", "--checkpoint", "{w}/det_raw.ckpt", "--vector", "{w}/out/d.gpkg"]
        + ["--min-area", "5"],
        ["--min-area is for segmentation and change models"],
    ),
    # a pickle that asks to call something: refused in one line, without torch's advice to
    # rerun with weights_only=False (which would run it)
    (
        "infer-checkpoint-pickle-calls-a-function",
        [*INFER[:2], "--checkpoint", "{w}/evil.ckpt", "--out", "{w}/out/p.tif"],
        ["{w}/evil.ckpt: refused", "(Unsupported global: GLOBAL print was not an allowed global by default)", "never loaded in a way that could run code"],
    ),
    (
        "finetune-backbone-pickle-calls-a-function",
        [*FINETUNE, "--backbone", "{w}/evil.pth"],
        ["{w}/evil.pth: refused", "GLOBAL print"],
    ),
    (
        "finetune-config-names-a-nan-backbone",
        [*FINETUNE, "--config", "{w}/nan_backbone.yaml"],
        ["nan/backbone.safetensors", "non-finite"],  # the config names the template's copy
    ),
    (
        "finetune-config-unknown-backbone",
        [*FINETUNE, "--config", "{w}/unknown_backbone.yaml"],
        ["unknown_backbone.yaml", "invalid configuration (model section)", "unknown backbone 'vitp_no_such_vit'"],
    ),
    # messages that named neither the flag nor the value ("expected non-negative integer",
    # "config not found" for a folder that exists, "[Errno 21] Is a directory")
    ("finetune-seed-minus-1", [*FINETUNE, "--seed", "-1"], ["--seed must be an integer in [0, 4294967295], got -1"]),
    ("finetune-config-is-a-folder", [*FINETUNE, "--config", "{w}/s"], ["--config {w}/s is a folder"]),
    ("pretrain-seed-minus-1", ["pretrain", "--seed", "-1"], ["--seed must be an integer in [0, 4294967295], got -1"]),
    ("pretrain-config-is-a-folder", ["pretrain", "--config", "{w}/s"], ["--config {w}/s is a folder"]),
    ("build-seed-minus-1", [*BUILD, "--seed", "-1"], ["--seed must be an integer in [0, 4294967295], got -1"]),
    ("build-classes-is-a-folder", [*BUILD, "--classes", "{w}/s"], ["--classes {w}/s is a folder"]),
    ("build-repeat-time-inf", [*BUILD, "--repeat-time", "inf"], ["--repeat-time", "inf"]),
    ("build-repeat-time-nan", [*BUILD, "--repeat-time", "nan"], ["--repeat-time", "nan"]),
    ("build-repeat-time-0", [*BUILD, "--repeat-time", "0"], ["--repeat-time", "0"]),
    (
        "build-limit-per-class-0",
        ["build-instructions", "--folders", "{w}/s", "--out", "{w}/corpus", "--limit-per-class", "0"],
        ["--limit-per-class", "0"],
    ),
    ("recipe-repeat-time-Infinity", ["recipe", "stats", "{w}/inf.json"], ["inf.json", "repeat_time", "inf"]),
    ("recipe-repeat-time-NaN", ["recipe", "stats", "{w}/nan.json"], ["nan.json", "repeat_time", "nan"]),
    ("recipe-repeat-time-yaml-inf", ["recipe", "stats", "{w}/inf.yaml"], ["inf.yaml", "repeat_time", "inf"]),
    (
        "recipe-merge-infinity",
        ["recipe", "merge", "{w}/good.json", "{w}/inf.json", "--out", "{w}/merged.json"],
        ["inf.json", "repeat_time"],
    ),
    # existing outputs: replaced only with --overwrite, the same rule for every command
    (
        "recipe-merge-out-exists",
        ["recipe", "merge", "{w}/good.json", "{w}/other.json", "--out", "{w}/merged_before.json"],
        ["--out", "{w}/merged_before.json", "exists", "--overwrite"],
    ),
    (
        "build-out-exists",
        ["build-instructions", "--folders", "{w}/s", "--out", "{w}/d.tif"],
        ["--out", "{w}/d.tif", "not empty", "--overwrite"],
    ),
    (
        "pretrain-output-holds-an-earlier-run",
        ["pretrain", "--output", "{w}/earlier", "--max-steps", "1"],
        ["--output", "{w}/earlier", "earlier run", "--resume last", "--overwrite"],
    ),
    (
        "infer-out-exists",
        [*INFER, "--out", "{w}/done/pred.tif"],
        ["--out", "{w}/done/pred.tif", "exists", "--overwrite"],
    ),
    (
        "infer-vector-exists",
        [*INFER, "--out", "{w}/out/p.tif", "--vector", "{w}/done/pred.gpkg"],
        ["--vector", "{w}/done/pred.gpkg", "exists"],
    ),
    (
        "finetune-output-holds-an-earlier-run",
        ["finetune", "segmentation", "--output", "{w}/done", "--no-progress"],
        ["--output", "{w}/done", "earlier run (model.ckpt)", "--overwrite"],
    ),
    # --overwrite replaces the output folder: never an input in it, never what a build did not write
    (
        "build-out-holds-its-volume-inputs",
        ["build-instructions", "--out", "{w}/bw", "--overwrite", "--volume", "{w}/bw/base.nii.gz"]
        + ["--labels", "{w}/bw/lab.nii.gz", "--classes", "{w}/bw/classes.yaml"],
        ["--out {w}/bw holds the input --labels {w}/bw/lab.nii.gz"],
    ),
    (
        "build-out-holds-its-scene",
        [*BUILD, "--out", "{w}/bw", "--overwrite", "--image", "{w}/bw/scene.tif"]
        + ["--labels", "{w}/bw/scene_objects.gpkg"],
        ["--out {w}/bw holds the input --image {w}/bw/scene.tif"],
    ),
    (
        "build-out-inside-an-input-folder",
        ["build-instructions", "--folders", "{w}/s", "--out", "{w}/s/corpus"],
        ["--out {w}/s/corpus lies inside the input folder --folders {w}/s"],
    ),
    (
        "build-overwrite-would-delete-a-file-it-did-not-write",
        [*BUILD, "--out", "{w}/d.tif", "--overwrite"],
        ["--out {w}/d.tif holds {w}/d.tif/keep.txt", "does not write"],
    ),
    (
        "recipe-merge-out-is-an-input",
        ["recipe", "merge", "{w}/good.json", "{w}/other.json", "--out", "{w}/good.json"],
        ["--out", "{w}/good.json", "input"],
    ),
]


class _Calls:
    """Pickles as a call of ``print`` (what a malicious checkpoint does with ``os.system``)."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("a checkpoint ran code",))


def _backbone(folder: Path, key: str, value: float) -> None:
    vit = timm.create_model("vitp_tiny_patch14_112", pretrained=False, num_classes=0)
    with torch.no_grad():
        vit.state_dict()[key].view(-1)[0] = value  # one bad number is enough
    export_backbone(vit, folder)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = tmp_path_factory.mktemp("workspace")
    scene = generate_scene(1, 112)
    write_geotiff(w / "scene.tif", scene.image, scene.transform, scene.crs)
    (w / "link.tif").symlink_to("scene.tif")
    (w / "d.tif").mkdir()
    (w / "d.tif" / "keep.txt").write_text("a folder that is not empty")
    (w / "merged_before.json").write_text("{}")
    (w / "done").mkdir()
    for name in ("pred.tif", "pred.gpkg", "model.ckpt"):
        (w / "done" / name).write_bytes(b"an earlier result")
    (w / "earlier" / "checkpoints").mkdir(parents=True)
    (w / "earlier" / "checkpoints" / "last.ckpt").write_bytes(b"an interrupted run")
    save_tiny_segmentation_checkpoint(w / "tiny.ckpt", tile_size=112)
    ckpt = torch.load(w / "tiny.ckpt", weights_only=True)
    ckpt["state_dict"]["model.head.classifier.bias"][0] = float("nan")
    torch.save(ckpt, w / "nan.ckpt")
    for name in ("evil.ckpt", "evil.pth"):  # harmless if it ever ran: it would print
        (w / name).write_bytes(pickle.dumps({"state_dict": _Calls(), "vitp_geo_card": {}}, protocol=2))
    write_geotiff(w / "scene16.tif", scene.image.astype(np.uint16) * 257, scene.transform, scene.crs)
    four = np.concatenate([scene.image, scene.image[:1]]).astype(np.uint16)
    write_geotiff(w / "scene4.tif", four, scene.transform, scene.crs)
    save_tiny_checkpoint(w / "det_raw.ckpt", task="detection", num_classes=2, render={"raw": True})  # no dtype
    save_tiny_checkpoint(w / "seg_raw.ckpt", render={"raw": True, "dtype": "uint8"})
    save_tiny_checkpoint(w / "seg4.ckpt", bands=(1, 2, 3, 4), render={"raw": True, "dtype": "uint8"})
    medical = {"raw": True, "medical": SliceInput().to_dict(), "modality": "CT", "label_values": [0, 1, 2, 3, 4]}
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((4096, 4096, 4096))
    (w / "bomb.nii.gz").write_bytes(gzip.compress(header.binaryblock + bytes(4 + 2**16)))
    save_tiny_checkpoint(w / "med.ckpt", class_names=["background", "liver", "spleen", "kidney", "other"], render=medical)
    _backbone(w / "nan", "blocks.1.mlp.fc1.weight", float("nan"))
    _backbone(w / "inf", "pos_embed", float("inf"))
    (w / "nan_backbone.yaml").write_text(
        "model:\n  class_path: vitp_geo.tasks.SegmentationTask\n  init_args:\n"
        f"    backbone: {{weights: {w}/nan/backbone.safetensors}}\n"
        "data:\n  class_path: vitp_geo.datamodules.geotiff.GeoTiffSegmentationDataModule\n"
        f"  init_args: {{images: {w}/s, labels: {w}/s}}\n"
    )
    (w / "unknown_backbone.yaml").write_text(
        "model:\n  class_path: vitp_geo.tasks.SegmentationTask\n  init_args:\n    backbone: {name: vitp_no_such_vit}\n"
        "data:\n  class_path: vitp_geo.datamodules.geotiff.GeoTiffSegmentationDataModule\n"
        f"  init_args: {{images: {w}/s, labels: {w}/s}}\n"
    )
    write_scene(generate_scene(2, 64, scene_class=0), w / "s")
    shutil.copytree(w / "s", w / "bw")  # a folder holding its own inputs and an unrelated file
    for name in ("base.nii.gz", "lab.nii.gz", "classes.yaml", "keep/notes.txt"):
        (w / "bw" / name).parent.mkdir(exist_ok=True)
        (w / "bw" / name).write_text("an input, or a file of the user's")
    (w / "ann.jsonl").write_text("")
    entry = {"root": ".", "annotation": "ann.jsonl"}
    (w / "good.json").write_text(json.dumps({"a": entry}))
    (w / "other.json").write_text(json.dumps({"b": entry}))
    (w / "inf.json").write_text('{"a": {"root": ".", "annotation": "ann.jsonl", "repeat_time": Infinity}}')
    (w / "nan.json").write_text('{"a": {"root": ".", "annotation": "ann.jsonl", "repeat_time": NaN}}')
    (w / "inf.yaml").write_text("a: {root: ., annotation: ann.jsonl, repeat_time: .inf}\n")
    return w


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file, folder and link under ``folder`` (hidden ones included) with its content hash."""

    def state(p: Path) -> str:
        if p.is_symlink():
            return f"link to {p.readlink()}"
        return "folder" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()

    return {str(p.relative_to(folder)): state(p) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_leaves_files_alone(
    argv: list[str], expected: list[str], template: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = tmp_path / "w"
    shutil.copytree(template, w, symlinks=True)
    before = _snapshot(w)
    try:
        code = main([a.format(w=w) for a in argv])
    except SystemExit as exit_:  # argparse rejects a value
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0, f"accepted: {argv}"
    assert len(lines) == 1 and lines[0].startswith(f"vitp-geo {argv[0]}: error: "), err
    for text in expected:
        assert text.format(w=w) in lines[0]
    assert _snapshot(w) == before  # no input replaced, no output, partial file or work folder started


@pytest.mark.parametrize("where", ["first", "last", "env"])
def test_debug_shows_the_traceback_behind_the_error_line(
    where: str, template: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    w = tmp_path / "w"
    shutil.copytree(template, w, symlinks=True)
    argv = [a.format(w=w) for a in [*FINETUNE, "--batch-size", "0"]]
    if where == "first":
        argv = ["--debug", *argv]
    elif where == "last":
        argv = [*argv, "--debug"]
    else:
        monkeypatch.setenv("VITP_GEO_DEBUG", "1")
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert lines[0].startswith("Traceback (most recent call last):"), err
    assert any("ValueError" in line for line in lines[1:-1]), err
    assert lines[-1].startswith("vitp-geo finetune: error: ") and "--batch-size" in lines[-1]
